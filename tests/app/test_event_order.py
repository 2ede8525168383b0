"""Late, premature and duplicated job events never rewrite what happened (issue 15, items 3 and 5).

Each test drives the handlers through chalice.test.Client under moto (state,
idempotency, SNS), with the strict SageMaker fake of app_helpers, and would
fail without its fix: a premature Completed used to be stored by idempotency
as "ignored" for 24 h; a late Failed used to flip a Completed record and alert.
"""

from __future__ import annotations

import boto3
import pytest

from app_helpers import completed_training, completed_tuning, load_event
from chalicelib import naming
from chalicelib.decisions import event_time_ms
from chalicelib.state import JobChange, StateStore

TUNING_EVENT = load_event("tuning_completed.json")
TUNING = TUNING_EVENT["detail"]["HyperParameterTuningJobName"]
FINAL = naming.training_job_name(TUNING)
DATASET = "dog-breeds"
VERSION = TUNING_EVENT["detail"]["Tags"]["breedline:version"]


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def idempotency_keys(env) -> list[str]:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    return [item["id"]["S"] for item in ddb.scan(TableName=env["BREEDLINE_IDEMPOTENCY_TABLE"])["Items"]]


def forget_idempotency(env) -> None:
    """What 24 h do: every idempotency record has expired."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    for key in idempotency_keys(env):
        ddb.delete_item(TableName=env["BREEDLINE_IDEMPOTENCY_TABLE"], Key={"id": {"S": key}})


def seed_version(env) -> None:
    state(env).save_version(DATASET, VERSION, ["beagle", "corgi", "husky"], 27, TUNING)


# -- item 3: a premature Completed is not remembered ----------------------------------------
def test_premature_completed_then_the_real_one_deploys(client, sagemaker, aws, env):
    seed_version(env)
    event = load_event("training_completed.json")
    sagemaker.training[FINAL] = {**completed_training(FINAL, 0.83), "TrainingJobStatus": "InProgress"}
    early = invoke(client, "on_training_state_change", event)
    assert early["outcome"] == "not_yet" and "InProgress" in early["reason"]
    assert not any("deploy-if-better" in key for key in idempotency_keys(env))
    assert not sagemaker.requests("CreateModel") and state(env).live_model() is None
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    real = invoke(client, "on_training_state_change", event)  # the genuine Completed, minutes later
    assert real["outcome"] == "deployed" and real["action"] == "created"
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    assert state(env).live_model()["model"] == FINAL
    assert state(env).job(FINAL)["status"] == "Completed"
    # that outcome is final: it is remembered, and a duplicate deploys nothing more
    assert any("deploy-if-better" in key for key in idempotency_keys(env))
    invoke(client, "on_training_state_change", event)
    assert len(sagemaker.requests("CreateEndpoint")) == 1 and len(sagemaker.requests("DescribeTrainingJob")) == 2


# -- item 5: state only moves forward -------------------------------------------------------
def test_tuning_completed_then_late_failed_changes_nothing_and_alerts_nothing(client, sagemaker, aws, env):
    best = f"{TUNING}-002-9f8e7d6c"
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, best, {"learning_rate": "0.01"})
    assert invoke(client, "on_tuning_state_change", TUNING_EVENT)["outcome"] == "started"
    before = state(env).job(TUNING)
    late = load_event("tuning_failed.json")
    assert late["detail"]["HyperParameterTuningJobName"] == TUNING
    result = invoke(client, "on_tuning_state_change", late)
    assert result["outcome"] == "ignored" and "already Completed" in result["reason"]
    assert state(env).job(TUNING) == before
    assert aws.alerts() == []
    jobs = state(env).latest_jobs()
    assert jobs["training"]["name"] == FINAL and jobs["training"]["status"] == "InProgress"


def test_training_completed_then_late_failed_keeps_the_deployment(client, sagemaker, aws, env):
    seed_version(env)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    assert invoke(client, "on_training_state_change", load_event("training_completed.json"))["outcome"] == "deployed"
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())
    assert invoke(client, "on_training_state_change", load_event("training_failed.json"))["outcome"] == "ignored"
    assert state(env).job(FINAL)["status"] == "Completed"
    assert state(env).live_model()["model"] == FINAL
    assert aws.alerts() == []


def test_training_failed_then_conflicting_completed_deploys_nothing(client, sagemaker, aws, env):
    """The first terminal status stands: operators were told Failed, so a later Completed is logged, not acted on."""
    seed_version(env)
    assert invoke(client, "on_training_state_change", load_event("training_failed.json"))["outcome"] == "failed"
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "ignored" and "already Failed" in result["reason"]
    assert state(env).job(FINAL)["status"] == "Failed"
    assert not sagemaker.requests("CreateModel") and state(env).live_model() is None
    assert len(aws.alerts()) == 1  # the Failed one only


def test_duplicate_failed_after_idempotency_expired_changes_nothing(client, sagemaker, aws, env):
    event = load_event("training_failed.json")
    assert invoke(client, "on_training_state_change", event)["outcome"] == "failed"
    before = state(env).job(FINAL)
    forget_idempotency(env)
    assert invoke(client, "on_training_state_change", event)["outcome"] == "duplicate"
    after = state(env).job(FINAL)
    assert {k: after[k] for k in ("status", "reason", "alerted")} == {k: before[k] for k in ("status", "reason", "alerted")}
    assert len(aws.alerts()) == 1


def test_a_failed_alert_is_sent_by_the_retry(client, sagemaker, aws, env, monkeypatch):
    """The alert mark is set after the alert: an SNS failure's retry still alerts (same status, not yet alerted)."""
    from chalicelib import jobs

    sent = jobs.alert

    def broken(*args, **kwargs):
        raise RuntimeError("SNS is down")

    monkeypatch.setattr(jobs, "alert", broken)
    with pytest.raises(RuntimeError, match="SNS is down"):
        invoke(client, "on_training_state_change", load_event("training_failed.json"))
    monkeypatch.setattr(jobs, "alert", sent)
    assert invoke(client, "on_training_state_change", load_event("training_failed.json"))["outcome"] == "failed"
    assert len(aws.alerts()) == 1 and state(env).job(FINAL)["alerted"] == "Failed"


def test_store_never_moves_a_terminal_job_back(env, aws):
    store = state(env)
    kwargs = {"stage": "training", "dataset": DATASET, "version": VERSION}
    assert store.record_job("job-a", status="InProgress", event_ms=1_000, **kwargs) is JobChange.MOVED
    assert store.record_job("job-a", status="Failed", reason="oom", event_ms=2_000, **kwargs) is JobChange.MOVED
    before = store.job("job-a")
    # a late InProgress, even one claiming a newer time
    assert store.record_job("job-a", status="InProgress", event_ms=9_000, **kwargs) is JobChange.REFUSED
    assert store.record_job("job-a", status="Stopped", event_ms=9_000, **kwargs) is JobChange.REFUSED
    assert store.record_job("job-a", status="Completed", **kwargs) is JobChange.REFUSED
    assert store.job("job-a") == before
    assert store.record_job("job-a", status="Failed", reason="oom", event_ms=2_000, **kwargs) is JobChange.SAME
    # a refused InProgress does not make an old job the stage's latest
    assert store.record_job("job-b", status="InProgress", event_ms=3_000, **kwargs) is JobChange.MOVED
    assert store.record_job("job-a", status="InProgress", **kwargs) is JobChange.REFUSED
    assert store.latest_jobs()["training"]["name"] == "job-b"


def test_store_orders_non_terminal_updates_by_event_time(env, aws):
    store = state(env)
    kwargs = {"stage": "tuning", "dataset": DATASET, "version": VERSION}
    assert store.record_job("job-c", status="InProgress", reason="newer", event_ms=5_000, **kwargs) is JobChange.MOVED
    assert store.record_job("job-c", status="InProgress", reason="older", event_ms=4_000, **kwargs) is JobChange.REFUSED
    assert store.job("job-c")["reason"] == "newer" and store.job("job-c")["event_ms"] == 5_000
    assert store.record_job("job-c", status="Completed", event_ms=4_500, **kwargs) is JobChange.MOVED  # terminal wins


@pytest.mark.parametrize(
    ("event_time", "detail", "expected"),
    [
        ("2025-11-25T18:05:11Z", {}, 1764093911000),
        ("2025-11-25T18:05:11Z", {"LastModifiedTime": "1764097440000"}, 1764097440000),
        (None, {"LastModifiedTime": 1764097440000}, 1764097440000),
        (None, {"LastModifiedTime": 1764097440.5}, 1764097440500),  # seconds, as botocore's numbers
        ("2025-11-25T18:05:11Z", {"LastModifiedTime": "garbage"}, 1764093911000),
        ("not a time", {"LastModifiedTime": True}, None),
        (None, {}, None),
    ],
)
def test_event_time_ms_reads_every_spelling(event_time, detail, expected):
    assert event_time_ms(event_time, detail) == expected
