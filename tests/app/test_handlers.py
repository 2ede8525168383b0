"""Each handler driven by the sample events through chalice.test.Client, under moto.

S3, DynamoDB (state + idempotency) and SNS are moto's; SageMaker is the
strict fake from app_helpers (or botocore's Stubber), because moto's
SageMaker completes jobs at once with made-up results and lacks UpdateEndpoint.
"""

from __future__ import annotations

import copy
import random

import boto3
import pytest
from botocore.stub import ANY, Stubber

from app_helpers import completed_training, completed_tuning, load_event
from chalicelib import clients as aws_clients
from chalicelib import naming, lambda_runtime
from chalicelib.state import StateStore

TUNING_EVENT = load_event("tuning_completed.json")
TUNING = TUNING_EVENT["detail"]["HyperParameterTuningJobName"]
FINAL = naming.training_job_name(TUNING)
DATASET = "dog-breeds"
VERSION = TUNING_EVENT["detail"]["Tags"]["breedline:version"]
OLD = "2026-11-20T10:00:00Z"  # long before "now": the quiet period has passed


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def upload_event(key: str, time: str = OLD, etag: str = "0" * 32) -> dict:
    event = load_event("s3_object_created.json")
    event["detail"]["object"]["key"] = key
    event["detail"]["object"]["etag"] = etag
    event["time"] = time
    return event


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def run_quiet_check(client):
    return invoke(client, "check_quiet_datasets", client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]))


# ---------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------
def test_marker_starts_one_tuning_job(client, sagemaker, aws, env):
    aws.put_dataset(DATASET)
    result = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert result["outcome"] == "started"
    (request,) = sagemaker.requests("CreateHyperParameterTuningJob")
    assert request["HyperParameterTuningJobName"] == result["tuning_job"]
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags == {"breedline:pipeline": "breedline", "breedline:stage": "tuning", "breedline:dataset": DATASET, "breedline:version": result["version"]}
    channel = request["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert channel == f"s3://breedline-data/datasets/{DATASET}/train/"
    store = state(env)
    assert store.version(DATASET, result["version"])["classes"] == ["beagle", "corgi", "husky"]
    assert store.latest_jobs()["tuning"]["name"] == result["tuning_job"]
    assert store.uploads(DATASET)["pending"] is False
    # the marker event again (duplicate delivery): nothing new
    assert invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))["outcome"] == "started"
    assert len(sagemaker.requests("CreateHyperParameterTuningJob")) == 1


def test_thousand_shuffled_duplicated_uploads_start_exactly_one_tuning_job(client, sagemaker, aws, env):
    keys = aws.put_dataset(DATASET, classes={f"class{i}": 3 for i in range(4)})
    aws.s3.put_object(Bucket="breedline-data", Key=f"datasets/{DATASET}/_READY", Body=b"")
    keys.append(f"datasets/{DATASET}/_READY")
    rng = random.Random(1234)
    events = [upload_event(key, time=f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}Z") for i, key in enumerate(keys)]
    stream = events + [copy.deepcopy(rng.choice(events)) for _ in range(1000 - len(events))]
    rng.shuffle(stream)
    assert len(stream) == 1000
    outcomes = [invoke(client, "on_dataset_upload", event)["outcome"] for event in stream]
    # the debounce Lambda settling the same version shares the idempotency record (key_prefix)
    state(env)._update(f"DATASET#{DATASET}", "UPLOADS", "SET pending = :p", {":p": True})
    (again,) = run_quiet_check(client)
    assert again["outcome"] == "started" and again["tuning_job"] == sagemaker.requests("CreateHyperParameterTuningJob")[0]["HyperParameterTuningJobName"]
    assert len(sagemaker.created["CreateHyperParameterTuningJob"]) == 1
    assert len(sagemaker.requests("CreateHyperParameterTuningJob")) == 1
    assert outcomes.count("started") >= 1 and set(outcomes) <= {"recorded", "started"}
    assert aws.alerts() == []


def test_uploads_without_marker_start_after_the_quiet_period(client, sagemaker, aws, env, monkeypatch):
    keys = aws.put_dataset(DATASET)
    now = "2099-01-01T00:00:00Z"  # "just now" for the debounce: far in the future
    for key in keys:
        assert invoke(client, "on_dataset_upload", upload_event(key, time=now))["outcome"] == "recorded"
    assert run_quiet_check(client) == []
    assert sagemaker.calls == []
    for key in keys[:3]:  # duplicates of older events do not move the clock back
        invoke(client, "on_dataset_upload", upload_event(key, time=OLD))
    assert run_quiet_check(client) == []
    monkeypatch.setenv("BREEDLINE_QUIET_PERIOD_SECONDS", "1")
    store = state(env)
    store._update(f"DATASET#{DATASET}", "UPLOADS", "SET last_upload = :t", {":t": 1_000_000_000})
    (result,) = run_quiet_check(client)
    assert result["outcome"] == "started"
    assert len(sagemaker.requests("CreateHyperParameterTuningJob")) == 1
    assert run_quiet_check(client) == []  # settled: no longer pending


def test_new_uploads_after_a_start_make_a_new_version(client, sagemaker, aws, env):
    aws.put_dataset(DATASET)
    first = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    aws.s3.put_object(Bucket="breedline-data", Key=f"datasets/{DATASET}/train/beagle/new.jpg", Body=b"\xff\xd8\xffnew\xff\xd9")
    second = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert first["version"] != second["version"]
    assert len(sagemaker.created["CreateHyperParameterTuningJob"]) == 2


def test_rejected_dataset_alerts_once_and_starts_nothing(client, sagemaker, aws, env):
    aws.put_dataset(DATASET, splits=("train", "valid"), extra={"train/beagle/notes.txt": b"hello"})
    result = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert result["outcome"] == "rejected"
    assert any("split 'test' has no images" in r for r in result["reasons"])
    assert any("not images" in r for r in result["reasons"])
    invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))  # duplicate
    (alert,) = aws.alerts()
    assert DATASET in alert["subject"] and alert["message"]["reasons"] == result["reasons"]
    assert sagemaker.calls == []
    assert state(env).uploads(DATASET)["outcome"] == "rejected"


def test_rejection_is_logged_when_no_topic_is_configured(client, sagemaker, aws, env, monkeypatch, caplog):
    monkeypatch.setenv("BREEDLINE_ALERT_TOPIC_ARN", "")
    aws.put_dataset(DATASET, classes={"only": 3})
    assert invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))["outcome"] == "rejected"
    assert "ALERT: data set dog-breeds rejected" in caplog.messages
    assert "alert not sent: BREEDLINE_ALERT_TOPIC_ARN is empty" in caplog.messages
    assert aws.alerts() == []


def test_objects_outside_datasets_and_other_buckets_are_ignored(client, sagemaker, aws):
    assert invoke(client, "on_dataset_upload", load_event("s3_object_created_outside_datasets.json"))["outcome"] == "ignored"
    event = load_event("s3_ready_marker.json")
    event["detail"]["bucket"]["name"] = "someone-elses-bucket"
    assert invoke(client, "on_dataset_upload", event)["outcome"] == "ignored"
    assert sagemaker.calls == []


def test_sample_upload_event_is_recorded(client, sagemaker, aws, env):
    result = invoke(client, "on_dataset_upload", load_event("s3_object_created.json"))
    assert result == {"outcome": "recorded", "dataset": DATASET, "pending": True}
    assert state(env).uploads(DATASET)["last_key"] == load_event("s3_object_created.json")["detail"]["object"]["key"]


# ---------------------------------------------------------------------------
# tuning state changes
# ---------------------------------------------------------------------------
def test_tuning_completed_starts_the_final_training_job(client, sagemaker, aws, env):
    best = f"{TUNING}-002-9f8e7d6c"
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, best, {"learning_rate": "0.0031622776601683794", "batch_size": '"64"'})
    result = invoke(client, "on_tuning_state_change", TUNING_EVENT)
    assert result["outcome"] == "started" and result["training_job"] == FINAL
    assert [op for op, _ in sagemaker.calls] == ["DescribeHyperParameterTuningJob", "CreateTrainingJob"]
    (request,) = sagemaker.requests("CreateTrainingJob")
    assert request["HyperParameters"]["batch_size"] == "64"  # normalised from '"64"'
    assert request["HyperParameters"]["learning_rate"] == "0.0031622776601683794"
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["breedline:stage"] == "training"
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    # BREEDLINE_DEBUGGER's default, in_job: no Debugger service configuration, the system profiler off
    assert request["HyperParameters"]["debugger"] == "in_job"
    assert not {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"} & set(request)
    assert request["ProfilerConfig"] == {"DisableProfiler": True}
    assert request["EnableManagedSpotTraining"] and request["CheckpointConfig"]
    jobs = state(env).latest_jobs()
    assert jobs["training"]["name"] == FINAL and jobs["training"]["status"] == "InProgress"
    assert state(env).job(TUNING)["status"] == "Completed"
    # duplicate event: no second describe or create
    invoke(client, "on_tuning_state_change", TUNING_EVENT)
    assert len(sagemaker.calls) == 2


def test_tuning_completed_with_botocore_stubber(client, aws, env):
    """Same flow through a real botocore client: its serializer and Stubber's checks see the requests."""
    real = boto3.client("sagemaker", region_name="us-east-1")
    best = f"{TUNING}-001-0a1b2c3d"
    with Stubber(real) as stub:
        stub.add_response(
            "describe_hyper_parameter_tuning_job",
            {
                **{k: v for k, v in completed_tuning(TUNING, best, {"batch_size": '"\\"128\\""', "learning_rate": "0.01"}).items()},
                "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{TUNING}",
                "HyperParameterTuningJobConfig": {
                    "Strategy": "Bayesian",
                    "ResourceLimits": {"MaxParallelTrainingJobs": 2},
                },
                "CreationTime": "2026-11-25T17:52:40Z",
                "TrainingJobStatusCounters": {},
                "ObjectiveStatusCounters": {},
            },
            {"HyperParameterTuningJobName": TUNING},
        )
        stub.add_response(
            "create_training_job",
            {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{FINAL}"},
            {k: ANY for k in (
                "TrainingJobName", "HyperParameters", "AlgorithmSpecification", "RoleArn", "InputDataConfig",
                "OutputDataConfig", "ResourceConfig", "StoppingCondition", "ProfilerConfig",
                "Tags", "EnableManagedSpotTraining", "CheckpointConfig",
            )},
        )
        aws_clients.set_client("sagemaker", real)
        result = invoke(client, "on_tuning_state_change", TUNING_EVENT)
        stub.assert_no_pending_responses()
    assert result["hyperparameters"]["batch_size"] == "128"


def test_tuning_failed_alerts_and_starts_nothing(client, sagemaker, aws, env):
    event = load_event("tuning_failed.json")
    result = invoke(client, "on_tuning_state_change", event)
    assert result["outcome"] == "failed"
    invoke(client, "on_tuning_state_change", event)  # duplicate: one alert
    (alert,) = aws.alerts()
    assert TUNING in alert["subject"] and "No training job succeeded" in alert["message"]["reason"]
    assert sagemaker.calls == []
    assert state(env).job(TUNING)["status"] == "Failed"


def test_tuning_stopped_reads_the_reason(client, sagemaker, aws, env):
    event = load_event("tuning_failed.json")
    event["detail"]["HyperParameterTuningJobStatus"] = "Stopped"
    del event["detail"]["FailureReason"]
    sagemaker.tuning[TUNING] = {"HyperParameterTuningJobName": TUNING, "HyperParameterTuningJobStatus": "Stopped", "FailureReason": "Stopped by user"}
    assert invoke(client, "on_tuning_state_change", event)["outcome"] == "stopped"
    (alert,) = aws.alerts()
    assert alert["message"]["reason"] == "Stopped by user"
    assert "CreateTrainingJob" not in [op for op, _ in sagemaker.calls]


def test_tuning_completed_without_best_job_alerts(client, sagemaker, aws):
    sagemaker.tuning[TUNING] = {"HyperParameterTuningJobName": TUNING, "HyperParameterTuningJobStatus": "Completed"}
    assert invoke(client, "on_tuning_state_change", TUNING_EVENT)["outcome"] == "no_best_job"
    assert len(aws.alerts()) == 1 and not sagemaker.requests("CreateTrainingJob")


def test_foreign_and_untagged_tuning_jobs(client, sagemaker, aws):
    foreign = copy.deepcopy(TUNING_EVENT)
    foreign["detail"]["HyperParameterTuningJobName"] = "churn-tuning-1"
    foreign["detail"]["Tags"] = {}
    assert invoke(client, "on_tuning_state_change", foreign)["outcome"] == "ignored"
    untagged = copy.deepcopy(TUNING_EVENT)
    untagged["detail"]["Tags"] = {}
    arn = untagged["detail"]["HyperParameterTuningJobArn"]
    sagemaker.tags_by_arn[arn] = [{"Key": k, "Value": v} for k, v in TUNING_EVENT["detail"]["Tags"].items()]
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, f"{TUNING}-001-0a1b2c3d", {"batch_size": "32"})
    assert invoke(client, "on_tuning_state_change", untagged)["outcome"] == "started"
    assert [op for op, _ in sagemaker.calls][0] == "ListTags"


def test_start_training_failure_is_alerted_and_retried(client, sagemaker, aws, monkeypatch):
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, f"{TUNING}-001-0a1b2c3d", {"batch_size": "32"})
    from app_helpers import client_error

    original = sagemaker._answer

    def quota(operation, name_key, params):
        if operation == "CreateTrainingJob":
            raise client_error("ResourceLimitExceeded", "The account-level service limit for ml.g4dn.xlarge is 0", operation)
        return original(operation, name_key, params)

    monkeypatch.setattr(sagemaker, "_answer", quota)
    with pytest.raises(lambda_runtime.PipelineError):
        invoke(client, "on_tuning_state_change", TUNING_EVENT)
    assert "service limit" in aws.alerts()[0]["message"]["error"]
    monkeypatch.setattr(sagemaker, "_answer", original)  # quota raised: Lambda's retry succeeds
    assert invoke(client, "on_tuning_state_change", TUNING_EVENT)["outcome"] == "started"


# ---------------------------------------------------------------------------
# training state changes
# ---------------------------------------------------------------------------
def seed_version(env):
    state(env).save_version(DATASET, VERSION, ["beagle", "corgi", "husky"], 27, TUNING)


def test_training_completed_deploys_the_first_model(client, sagemaker, aws, env):
    seed_version(env)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "deployed" and result["action"] == "created"
    assert [op for op, _ in sagemaker.calls] == [
        "DescribeTrainingJob", "DescribeEndpoint", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
    ]
    (model,) = sagemaker.requests("CreateModel")
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://breedline-data/jobs/{FINAL}/output/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    (config,) = sagemaker.requests("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["VariantName"] == "AllTraffic"  # stable: autoscaling survives updates
    assert config["ProductionVariants"][0]["ModelName"] == FINAL
    assert state(env).live_model() is None  # Creating: not live until the endpoint says InService
    assert invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())["outcome"] == "live"
    live = state(env).live_model()
    assert live["model"] == FINAL and live["accuracy"] == pytest.approx(0.83)
    assert live["labels"] == ["beagle", "corgi", "husky"]
    # duplicate Completed event: nothing is deployed twice
    invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert len(sagemaker.requests("CreateEndpoint")) == 1 and len(sagemaker.calls) == 6


def _live(env, accuracy: float, model: str = "breedline-dog-breeds-00000000-final", config: str = "old-rt",
          labels=("beagle", "corgi", "husky")) -> None:
    """A live model from before issue 13 (no metrics, no artifacts), predicting ``labels``."""
    record = {"model": model, "accuracy": accuracy, "labels": list(labels), "training_job": model, "endpoint_config": config}
    assert state(env).set_live_model(record, None)


def test_better_model_updates_the_endpoint_blue_green(client, sagemaker, aws, env):
    seed_version(env)
    _live(env, 0.70)
    sagemaker.endpoint = {"EndpointName": "breedline-classifier", "EndpointConfigName": "old-rt", "EndpointStatus": "InService"}
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["action"] == "updated"
    (update,) = sagemaker.requests("UpdateEndpoint")
    assert update["EndpointConfigName"] == f"{FINAL}-rt"
    assert update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"][0]["AlarmName"] == "breedline-endpoint-5xx"
    assert state(env).live_model()["model"] == "breedline-dog-breeds-00000000-final"  # Updating: the old one serves
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    live = state(env).live_model()
    assert live["model"] == FINAL and live["previous_model"] == "breedline-dog-breeds-00000000-final"


def test_worse_model_is_not_deployed(client, sagemaker, aws, env, capsys):
    seed_version(env)
    _live(env, 0.90)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.85)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "gate_rejected" and "does not beat the live model" in result["reason"]
    assert [op for op, _ in sagemaker.calls] == ["DescribeTrainingJob", "DescribeEndpoint"]
    assert state(env).live_model()["accuracy"] == pytest.approx(0.90)
    assert '"GateRejections":[1.0]' in capsys.readouterr().out


def test_model_below_the_floor_is_not_deployed(client, sagemaker, aws, env):
    sagemaker.training[FINAL] = completed_training(FINAL, 0.40)
    assert invoke(client, "on_training_state_change", load_event("training_completed.json"))["outcome"] == "gate_rejected"
    assert state(env).live_model() is None
    assert not sagemaker.requests("CreateModel")


def test_trial_completed_deploys_nothing(client, sagemaker, aws, env):
    result = invoke(client, "on_training_state_change", load_event("training_completed_trial.json"))
    assert result["outcome"] == "ignored" and result["relevance"] == "trial"
    assert sagemaker.calls == []
    assert state(env).live_model() is None


def test_foreign_job_is_ignored(client, sagemaker, aws):
    result = invoke(client, "on_training_state_change", load_event("training_completed_foreign.json"))
    assert result["outcome"] == "ignored" and result["relevance"] == "foreign"
    assert sagemaker.calls == [] and aws.alerts() == []


def test_untagged_events_are_checked_with_list_tags(client, sagemaker, aws, env):
    event = load_event("training_completed.json")
    event["detail"]["Tags"] = {}
    arn = event["detail"]["TrainingJobArn"]
    # tags say: a trial, whatever its name says -> nothing deployed
    sagemaker.tags_by_arn[arn] = [{"Key": "breedline:pipeline", "Value": "breedline"}, {"Key": "breedline:stage", "Value": "tuning"}]
    assert invoke(client, "on_training_state_change", event)["outcome"] == "ignored"
    assert [op for op, _ in sagemaker.calls] == ["ListTags"]
    trial = load_event("training_completed_trial.json")
    trial["detail"]["Tags"] = {}
    assert invoke(client, "on_training_state_change", trial)["relevance"] == "trial"
    assert len(sagemaker.calls) == 1  # a trial-shaped name needs no lookup


def test_training_failed_alerts_once_and_deploys_nothing(client, sagemaker, aws, env):
    event = load_event("training_failed.json")
    assert invoke(client, "on_training_state_change", event)["outcome"] == "failed"
    invoke(client, "on_training_state_change", event)
    (alert,) = aws.alerts()
    assert FINAL in alert["subject"] and "CUDA out of memory" in alert["message"]["reason"]
    assert sagemaker.calls == []
    assert state(env).job(FINAL)["status"] == "Failed"


def test_serverless_deployment_updates_without_blue_green(client, sagemaker, aws, env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_SERVERLESS_MEMORY_MB", "2048")
    seed_version(env)
    sagemaker.endpoint = {"EndpointName": "breedline-classifier", "EndpointConfigName": "old-sl", "EndpointStatus": "InService"}
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    assert invoke(client, "on_training_state_change", load_event("training_completed.json"))["action"] == "updated"
    (config,) = sagemaker.requests("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["ServerlessConfig"]["MemorySizeInMB"] == 2048
    (update,) = sagemaker.requests("UpdateEndpoint")
    assert "DeploymentConfig" not in update


def test_busy_endpoint_queues_the_deployment_until_in_service(client, sagemaker, aws, env):
    """Issue 15 item 2: a deployment that finds the endpoint busy is queued, not raised three times and lost."""
    seed_version(env)
    _live(env, 0.70)
    sagemaker.endpoint = {"EndpointName": "breedline-classifier", "EndpointConfigName": "old-rt", "EndpointStatus": "Updating"}
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "queued" and "Updating" in result["reason"]
    assert not sagemaker.requests("UpdateEndpoint") and state(env).queued_deployment()["training_job"] == FINAL
    assert "queued" in state(env).job(FINAL)["reason"]
    # the endpoint reaches InService: the queued deployment is re-driven, through the gate again
    answer = invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    assert answer["queued"]["outcome"] == "deployed" and answer["queued"]["action"] == "updated"
    (update,) = sagemaker.requests("UpdateEndpoint")
    assert update["EndpointConfigName"] == f"{FINAL}-rt" and state(env).queued_deployment() is None
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    assert state(env).live_model()["model"] == FINAL


# ---------------------------------------------------------------------------
# status and labels
# ---------------------------------------------------------------------------
def test_status_and_labels_follow_the_pipeline(client, sagemaker, aws, env):
    empty = client.http.get("/status")
    assert empty.status_code == 200
    assert empty.json_body["live_model"] is None and empty.json_body["endpoint"]["status"] == "NotDeployed"
    assert client.http.get("/labels").json_body["code"] == "model_not_deployed"
    aws.put_dataset(DATASET)
    started = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    body = client.http.get("/status").json_body
    assert body["jobs"]["tuning"]["name"] == started["tuning_job"] and body["jobs"]["tuning"]["status"] == "InProgress"
    seed_version(env)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    invoke(client, "on_training_state_change", load_event("training_completed.json"))
    body = client.http.get("/status").json_body
    assert body["live_model"] is None and body["endpoint"]["status"] == "Creating"
    assert "deploying" in state(env).job(FINAL)["reason"]
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    body = client.http.get("/status").json_body
    assert body["live_model"]["model"] == FINAL and body["live_model"]["accuracy"] == pytest.approx(0.83)
    assert body["endpoint"]["status"] == "InService"
    labels = client.http.get("/labels")
    assert labels.status_code == 200 and labels.json_body == {"model": FINAL, "labels": ["beagle", "corgi", "husky"]}


def test_the_whole_chain_round_trips_names_and_tags(client, sagemaker, aws, env):
    """Events built from the app's own requests, the way SageMaker would emit them, reach a deployment."""
    aws.put_dataset("corgis-vs-beagles", classes={"corgi": 2, "beagle": 2})
    marker = load_event("s3_ready_marker.json")
    marker["detail"]["object"]["key"] = "datasets/corgis-vs-beagles/_READY"
    started = invoke(client, "on_dataset_upload", marker)
    (tuning_request,) = sagemaker.requests("CreateHyperParameterTuningJob")
    tuning_name = tuning_request["HyperParameterTuningJobName"]

    tuning_event = load_event("tuning_completed.json")
    tuning_event["detail"].update(
        HyperParameterTuningJobName=tuning_name,
        HyperParameterTuningJobArn=f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{tuning_name}",
        Tags={t["Key"]: t["Value"] for t in tuning_request["Tags"]},
    )
    sagemaker.tuning[tuning_name] = completed_tuning(tuning_name, f"{tuning_name}-004-abcdef01", {"batch_size": '"32"', "learning_rate": "0.02"})
    invoke(client, "on_tuning_state_change", tuning_event)
    (training_request,) = sagemaker.requests("CreateTrainingJob")
    final = training_request["TrainingJobName"]
    assert final == naming.training_job_name(tuning_name)

    # a trial of that tuning job finishing late changes nothing
    trial = load_event("training_completed_trial.json")
    trial["detail"].update(TrainingJobName=f"{tuning_name}-004-abcdef01", Tags=tuning_event["detail"]["Tags"])
    assert invoke(client, "on_training_state_change", trial)["outcome"] == "ignored"

    training_event = load_event("training_completed.json")
    training_event["detail"].update(TrainingJobName=final, Tags={t["Key"]: t["Value"] for t in training_request["Tags"]})
    sagemaker.training[final] = completed_training(final, 0.95)
    assert invoke(client, "on_training_state_change", training_event)["outcome"] == "deployed"
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    assert client.http.get("/labels").json_body == {"model": final, "labels": ["beagle", "corgi"]}
    status = client.http.get("/status").json_body
    assert status["live_model"]["dataset"] == "corgis-vs-beagles" and status["live_model"]["version"] == started["version"]
    assert status["jobs"]["tuning"]["status"] == "Completed" and status["jobs"]["training"]["status"] == "Completed"
