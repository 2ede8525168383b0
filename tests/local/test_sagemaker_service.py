"""The local SageMaker service: wire protocol, validation, real jobs and endpoints."""

from __future__ import annotations

import json
import threading
import time

import pytest
from botocore.exceptions import ClientError

from local_standins import BUCKET, runtime_client, sagemaker_client, training_request  # type: ignore[import-not-found]


def wait_for(check, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def script_command(root) -> list[str]:
    """The script's command line, from the training toolkit's own log ("Invoking script with ...")."""
    lines = (root / "logs" / "stderr.log").read_text().splitlines()
    start = lines.index("Invoking script with the following command:")
    return next(line for line in lines[start + 1:] if line.strip()).split()


def wait_training(sm, name, timeout=60.0):
    return wait_for(lambda: (d := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"]
                    in ("Completed", "Failed", "Stopped") and d, timeout)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: r.pop("RoleArn"), "RoleArn"),
        (lambda r: r.update(TrainingJobName="x" * 64), "TrainingJobName"),
        (lambda r: r.update(TrainingJobName="bad_name!"), "pattern"),
        (lambda r: r["ResourceConfig"].update(InstanceCount="one"), "InstanceCount"),
        (lambda r: r["ResourceConfig"].update(InstanceType="ml.banana.huge"), "InstanceType"),
    ],
)
def test_rejects_what_sagemaker_rejects(local_sagemaker, mutate, fragment):
    """Requests botocore's model rejects come back as ValidationException ClientErrors."""
    sm = sagemaker_client(local_sagemaker, validate=False)
    request = training_request("rejected-job")
    mutate(request)
    with pytest.raises(ClientError) as caught:
        sm.create_training_job(**request)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert fragment in caught.value.response["Error"]["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert local_sagemaker.backend.training_jobs == {}


def test_raw_wire_requests_get_sagemaker_errors(local_sagemaker):
    """Unknown members, bad JSON and unknown operations, sent as raw JSON 1.1 requests."""
    import requests

    headers = {"Content-Type": "application/x-amz-json-1.1"}
    body = training_request("raw-job")
    body["Unknown"] = 1
    answer = requests.post(local_sagemaker.url, data=json.dumps(body),
                           headers={**headers, "X-Amz-Target": "SageMaker.CreateTrainingJob"})
    assert answer.status_code == 400
    assert answer.json()["__type"] == "ValidationException" and "Unknown" in answer.json()["message"]
    answer = requests.post(local_sagemaker.url, data=b"{not json",
                           headers={**headers, "X-Amz-Target": "SageMaker.DescribeTrainingJob"})
    assert answer.json()["__type"] == "SerializationException"
    answer = requests.post(local_sagemaker.url, data=b"{}", headers={**headers, "X-Amz-Target": "SageMaker.Nope"})
    assert answer.json()["__type"] == "UnknownOperationException"


def test_tuning_name_limit_and_unknown_resources(local_sagemaker):
    sm = sagemaker_client(local_sagemaker, validate=False)
    with pytest.raises(ClientError) as caught:
        sm.describe_training_job(TrainingJobName="nope")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as caught:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="a" * 33)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as caught:
        sm.describe_endpoint(EndpointName="nope")
    assert caught.value.response["Error"]["Code"] == "ValidationException"


def test_training_job_runs_the_script_under_the_container_contract(local_sagemaker):
    sm = sagemaker_client(local_sagemaker)
    s3 = local_sagemaker.backend.s3
    sm.create_training_job(**training_request("unit-train-1", learning_rate="0.05", batch_size='"16"'))
    with pytest.raises(ClientError) as caught:
        sm.create_training_job(**training_request("unit-train-1"))
    assert caught.value.response["Error"]["Code"] == "ResourceInUse"
    job = wait_training(sm, "unit-train-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    secondary = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert secondary == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics["valid_loss"] == pytest.approx(0.4 + 0.5)  # |0.05-0.01|*10 + 1/2, last epoch wins
    assert metrics["test_accuracy"] == pytest.approx(0.9)
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/jobs/unit-train-1/output/model.tar.gz"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="jobs/")["Contents"]}
    assert "jobs/unit-train-1/output/model.tar.gz" in keys
    assert any(k.startswith("jobs/debug/unit-train-1/debug-output/events/") for k in keys)
    assert "jobs/profiler/unit-train-1/profiler-output/summary.json" in keys
    assert "jobs/checkpoints/unit-train-1/last.txt" in keys
    root = local_sagemaker.backend.state_dir / "jobs" / "unit-train-1"
    hyper = json.loads((root / "input" / "config" / "hyperparameters.json").read_text())
    assert hyper["batch_size"] == '"16"'  # as sent; the toolkit decodes it for the CLI
    assert json.loads((root / "logs" / "command.json").read_text())[-2:] == ["-m", "sagemaker_training.cli.train"]
    command = script_command(root)  # as the training toolkit built it from hyperparameters.json
    assert command[command.index("--batch_size") + 1] == "16"
    assert not any(arg.startswith("--sagemaker_") for arg in command)
    assert json.loads((root / "input" / "config" / "debughookconfig.json").read_text())["LocalPath"]
    events = [e for e in local_sagemaker.backend.emitted if e["detail"].get("TrainingJobName") == "unit-train-1"]
    assert [e["detail"]["SecondaryStatus"] for e in events][-1] == "Completed"
    assert events[-1]["detail"]["Tags"] == {"breedline:stage": "training"}
    # Epoch milliseconds as strings, as AWS's documented training-job event spells them.
    detail = events[-1]["detail"]
    for key in ("CreationTime", "TrainingStartTime", "TrainingEndTime", "LastModifiedTime"):
        assert isinstance(detail[key], str) and detail[key].isdigit(), (key, detail[key])
    assert all(isinstance(t["StartTime"], str) for t in detail["SecondaryStatusTransitions"])
    listed = sm.list_training_jobs(NameContains="unit-train")["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == ["unit-train-1"]


def test_failing_script_ends_failed_with_its_reason(local_sagemaker):
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**training_request("unit-fail-1", fail="yes"))
    job = wait_training(sm, "unit-fail-1")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: ValueError: train split has no images")
    # The script exited 3; the container (the toolkit) exits 1, as in AWS.
    assert job["FailureReason"].endswith("exit code: 1")
    assert job["SecondaryStatus"] == "Failed"


def test_stop_training_job_kills_the_process(local_sagemaker):
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**training_request("unit-stop-1", epochs="100", sleep="0.5"))
    wait_for(lambda: sm.describe_training_job(TrainingJobName="unit-stop-1")["SecondaryStatus"] == "Training")
    run = local_sagemaker.backend.runners["unit-stop-1"]
    wait_for(lambda: run.process is not None)
    sm.stop_training_job(TrainingJobName="unit-stop-1")
    job = wait_training(sm, "unit-stop-1", timeout=30)
    assert job["TrainingJobStatus"] == "Stopped"
    assert run.process.poll() is not None
    statuses = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert "Stopping" in statuses and statuses[-1] == "Stopped"


def tuning_request(name: str, strategy: str = "Bayesian", jobs: int = 3, parallel: int = 2) -> dict:
    base = training_request("unused")
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "valid_loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.1",
                                               "ScalingType": "Logarithmic"}],
                "CategoricalParameterRanges": [{"Name": "batch_size", "Values": ['"8"', '"16"']}],
            },
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {k: v for k, v in base["HyperParameters"].items()},
            "AlgorithmSpecification": base["AlgorithmSpecification"],
            "RoleArn": base["RoleArn"],
            "InputDataConfig": base["InputDataConfig"],
            "OutputDataConfig": base["OutputDataConfig"],
            "ResourceConfig": base["ResourceConfig"],
            "StoppingCondition": base["StoppingCondition"],
        },
        "Tags": [{"Key": "breedline:stage", "Value": "tuning"}],
    }


@pytest.mark.parametrize("strategy", ["Bayesian", "Random"])
def test_tuning_job_runs_trials_and_picks_the_best(local_sagemaker, strategy):
    sm = sagemaker_client(local_sagemaker)
    name = f"unit-tune-{strategy.lower()}"
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, strategy))
    peak = {"running": 0}

    def done():
        counters = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        peak["running"] = max(peak["running"], counters["TrainingJobStatusCounters"]["InProgress"])
        return counters["HyperParameterTuningJobStatus"] != "InProgress" and counters

    job = wait_for(done, timeout=90)
    assert job["HyperParameterTuningJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TrainingJobStatusCounters"]["Completed"] == 3
    assert peak["running"] <= 2
    trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue")["TrainingJobSummaries"]
    assert len(trials) == 3
    assert all(t["TrainingJobName"].startswith(f"{name}-0") for t in trials)
    values = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials]
    assert values == sorted(values)
    best = job["BestTrainingJob"]
    assert best["TrainingJobName"] == trials[0]["TrainingJobName"]
    lr = float(best["TunedHyperParameters"]["learning_rate"])
    assert 0.001 <= lr <= 0.1
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(abs(lr - 0.01) * 10 + 0.5,
                                                                                         rel=1e-4)
    assert best["TunedHyperParameters"]["batch_size"] in ('"8"', '"16"')
    trial_job = sm.describe_training_job(TrainingJobName=trials[0]["TrainingJobName"])
    assert trial_job["TuningJobArn"] == job["HyperParameterTuningJobArn"]
    kinds = {e["detail-type"] for e in local_sagemaker.backend.emitted}
    assert kinds == {"SageMaker HyperParameter Tuning Job State Change", "SageMaker Training Job State Change"}
    tuning_events = [e["detail"] for e in local_sagemaker.backend.emitted
                     if e["detail-type"].startswith("SageMaker HyperParameter")]
    assert tuning_events[-1]["HyperParameterTuningJobStatus"] == "Completed"
    assert "BestTrainingJob" not in tuning_events[-1]
    assert tuning_events[-1]["CreationTime"].isdigit()  # a string, as AWS's tuning-job example


def test_stop_tuning_job_stops_its_trials_and_emits_stopped(local_sagemaker):
    """The cost guard's StopHyperParameterTuningJob (issue 15, item 16), as the app builds it."""
    from chalicelib import sagemaker_requests as build

    sm = sagemaker_client(local_sagemaker)
    name = "unit-tune-stop"
    request = tuning_request(name, jobs=4, parallel=2)
    request["TrainingJobDefinition"]["StaticHyperParameters"].update(epochs="100", sleep="0.5")
    sm.create_hyper_parameter_tuning_job(**request)

    def training_trials():
        trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        names = [t["TrainingJobName"] for t in trials["TrainingJobSummaries"]]
        return names if names and all(
            sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] == "Training" for n in names) else None

    trials = wait_for(training_trials, timeout=60)
    sm.stop_hyper_parameter_tuning_job(**build.stop_tuning_job(name))
    job = wait_for(lambda: (d := sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name))[
        "HyperParameterTuningJobStatus"] in ("Completed", "Failed", "Stopped") and d, timeout=60)
    assert job["HyperParameterTuningJobStatus"] == "Stopped"
    assert [sm.describe_training_job(TrainingJobName=n)["TrainingJobStatus"] for n in trials] == ["Stopped"] * len(trials)
    assert job["TrainingJobStatusCounters"]["Stopped"] == len(trials) and "BestTrainingJob" not in job
    ended = [e["detail"] for e in local_sagemaker.backend.emitted
             if e["detail-type"].startswith("SageMaker HyperParameter") and e["detail"]["HyperParameterTuningJobName"] == name]
    assert ended[-1]["HyperParameterTuningJobStatus"] == "Stopped"
    # a second stop is refused as AWS refuses it: the app reads that as "not running any more"
    with pytest.raises(ClientError) as caught:
        sm.stop_hyper_parameter_tuning_job(**build.stop_tuning_job(name))
    assert caught.value.response["Error"]["Code"] == "ValidationException"


def deploy(sm, job_name: str, suffix: str, endpoint: str, update: bool = False):
    job = sm.describe_training_job(TrainingJobName=job_name)
    sm.create_model(ModelName=f"m-{suffix}", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": "local/pytorch-inference:2.6",
                                      "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"],
                                      "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}})
    sm.create_endpoint_config(EndpointConfigName=f"c-{suffix}", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"m-{suffix}", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    if update:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"c-{suffix}")
    else:
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"c-{suffix}",
                           Tags=[{"Key": "breedline:live-accuracy", "Value": "0.9"}])
    return wait_for(lambda: (d := sm.describe_endpoint(EndpointName=endpoint))["EndpointStatus"] != (
        "Updating" if update else "Creating") and d, timeout=60)


def test_endpoint_serves_maps_errors_and_swaps_without_dropping(local_sagemaker):
    sm = sagemaker_client(local_sagemaker)
    rt = runtime_client(local_sagemaker)
    sm.create_training_job(**training_request("unit-ep-a", learning_rate="0.01"))
    sm.create_training_job(**training_request("unit-ep-b", learning_rate="0.02"))
    assert wait_training(sm, "unit-ep-a")["TrainingJobStatus"] == "Completed"
    assert wait_training(sm, "unit-ep-b")["TrainingJobStatus"] == "Completed"

    with pytest.raises(ClientError) as caught:
        rt.invoke_endpoint(EndpointName="unit-ep", Body=b"x", ContentType="image/jpeg")
    assert caught.value.response["Error"]["Code"] == "ValidationError"

    endpoint = deploy(sm, "unit-ep-a", "a", "unit-ep")
    assert endpoint["EndpointStatus"] == "InService", endpoint.get("FailureReason")
    answer = rt.invoke_endpoint(EndpointName="unit-ep", Body=b"\xff\xd8\xff", ContentType="image/jpeg")
    body = json.loads(answer["Body"].read())
    assert body["label"] == "a" and body["lr"] == 0.01
    assert answer["InvokedProductionVariant"] == "AllTraffic"

    with pytest.raises(ClientError) as caught:
        rt.invoke_endpoint(EndpointName="unit-ep", Body=b"GIF89a", ContentType="image/gif")
    error = caught.value.response["Error"]
    assert error["Code"] == "ModelError"
    assert caught.value.response["OriginalStatusCode"] == 415
    assert "unsupported content type" in caught.value.response["OriginalMessage"]

    arn = endpoint["EndpointArn"]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "breedline:live-accuracy", "Value": "0.9"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "breedline:live-accuracy", "Value": "0.95"}])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "breedline:live-accuracy", "Value": "0.95"}]

    # Hammer the endpoint while it is updated: every request must be answered.
    results: list[object] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                reply = rt.invoke_endpoint(EndpointName="unit-ep", Body=b"\xff\xd8\xff", ContentType="image/jpeg")
                results.append(json.loads(reply["Body"].read())["lr"])
            except Exception as exc:  # noqa: BLE001 - any failure is a dropped request
                results.append(exc)

    worker = threading.Thread(target=hammer)
    worker.start()
    with pytest.raises(ClientError):  # cannot update while creating another: here it is InService, so OK below
        sm.update_endpoint(EndpointName="unit-ep", EndpointConfigName="c-missing")
    updated = deploy(sm, "unit-ep-b", "b", "unit-ep", update=True)
    time.sleep(0.5)
    stop.set()
    worker.join()
    assert updated["EndpointStatus"] == "InService" and updated["EndpointConfigName"] == "c-b"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert results[0] == 0.01 and results[-1] == 0.02
    statuses = [e["detail"]["EndpointStatus"] for e in local_sagemaker.backend.emitted
                if e["detail-type"] == "SageMaker Endpoint State Change"]
    assert statuses == ["CREATING", "IN_SERVICE", "UPDATING", "IN_SERVICE"]
    endpoint_events = [e["detail"] for e in local_sagemaker.backend.emitted
                       if e["detail-type"] == "SageMaker Endpoint State Change"]
    assert isinstance(endpoint_events[-1]["CreationTime"], int)  # a number, as AWS's endpoint example
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["unit-ep"]


def test_rollback_setting_keeps_the_old_config_serving_and_says_so(local_sagemaker):
    """BREEDLINE_LOCAL_ENDPOINT_ROLLBACK=1 (here the backend's flag): an update rolls back as SageMaker's does.

    The app's endpoint handler (issue 15, item 1) reads exactly this: the event
    stream UPDATING, ROLLING_BACK, IN_SERVICE on the old config, with a FailureReason.
    """
    sm = sagemaker_client(local_sagemaker)
    rt = runtime_client(local_sagemaker)
    sm.create_training_job(**training_request("unit-rb-a", learning_rate="0.01"))
    sm.create_training_job(**training_request("unit-rb-b", learning_rate="0.02"))
    assert wait_training(sm, "unit-rb-a")["TrainingJobStatus"] == "Completed"
    assert wait_training(sm, "unit-rb-b")["TrainingJobStatus"] == "Completed"
    assert deploy(sm, "unit-rb-a", "ra", "unit-rb")["EndpointStatus"] == "InService"
    local_sagemaker.backend.endpoint_rollback = True
    deploy(sm, "unit-rb-b", "rb", "unit-rb", update=True)
    endpoint = wait_for(lambda: (d := sm.describe_endpoint(EndpointName="unit-rb"))["EndpointStatus"] == "InService" and d)
    assert endpoint["EndpointConfigName"] == "c-ra" and "health check" in endpoint["FailureReason"]
    answer = rt.invoke_endpoint(EndpointName="unit-rb", Body=b"\xff\xd8\xff", ContentType="image/jpeg")
    assert json.loads(answer["Body"].read())["lr"] == 0.01  # the old model still answers
    events = [e["detail"] for e in local_sagemaker.backend.emitted if e["detail-type"] == "SageMaker Endpoint State Change"]
    assert [e["EndpointStatus"] for e in events] == ["CREATING", "IN_SERVICE", "UPDATING", "ROLLING_BACK", "IN_SERVICE"]
    assert events[-1]["EndpointConfigName"] == "c-ra" and "health check" in events[-1]["FailureReason"]


def test_rollback_setting_reads_zero_or_one(monkeypatch):
    from breedline.local.sagemaker_state import ENDPOINT_ROLLBACK_VARIABLE, endpoint_rollback_from_env

    monkeypatch.setenv(ENDPOINT_ROLLBACK_VARIABLE, "1")
    assert endpoint_rollback_from_env() is True
    monkeypatch.setenv(ENDPOINT_ROLLBACK_VARIABLE, "0")
    assert endpoint_rollback_from_env() is False
    monkeypatch.setenv(ENDPOINT_ROLLBACK_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match=ENDPOINT_ROLLBACK_VARIABLE):
        endpoint_rollback_from_env()


def test_shutdown_stops_every_child_process(local_sagemaker):
    """The Ctrl-C path: jobs end Stopped and no training or model-server process is left."""
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**training_request("unit-served", learning_rate="0.01"))
    assert wait_training(sm, "unit-served")["TrainingJobStatus"] == "Completed"
    deploy(sm, "unit-served", "s", "unit-shutdown")
    sm.create_training_job(**training_request("unit-long", epochs="1000", sleep="0.5"))
    run = local_sagemaker.backend.runners["unit-long"]
    wait_for(lambda: run.process is not None and run.process.poll() is None)
    server_process = local_sagemaker.backend.hosts["unit-shutdown"].servers["AllTraffic"].process
    assert server_process.poll() is None
    local_sagemaker.backend.shutdown()
    assert run.process.poll() is not None
    assert server_process.poll() is not None
    run.join(timeout=10)
    assert local_sagemaker.backend.training_jobs["unit-long"]["TrainingJobStatus"] == "Stopped"
