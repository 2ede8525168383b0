"""The live model follows what the endpoint serves; busy or refused deployments are never lost (issue 15, items 1 and 2).

Driven through chalice.test.Client under moto (state, idempotency, SNS), with
the strict SageMaker fake of app_helpers, whose UpdateEndpoint keeps the old
config serving until :meth:`FakeSageMaker.finish_endpoint` ends the update
(or rolls it back) and returns the state-change event SageMaker sends. Without
the fix: LIVE was written when UpdateEndpoint returned (a rolled-back B stayed
"live"), and a busy endpoint or a refused UpdateEndpoint raised, three retries
and no alert later the model was gone.
"""

from __future__ import annotations

import datetime as dt

import boto3
import pytest
from app_helpers import client_error, completed_training, endpoint_event, load_event
from chalicelib import api, lambda_runtime
from chalicelib.decisions import endpoint_event_spellings, endpoint_status
from chalicelib.event_patterns import endpoint_pattern
from chalicelib.state import StateStore

DATASET = "dog-breeds"
A, B, C = (f"breedline-dog-breeds-{x * 8}-final" for x in "abc")
#: C predicts B's classes, so the gate compares C with B (like with like) when B is live.
CLASSES = {A: ["beagle", "corgi"], B: ["beagle", "corgi", "husky", "pug"], C: ["beagle", "corgi", "husky", "pug"]}


@pytest.fixture(autouse=True)
def _class_changes_allowed(env, monkeypatch):
    """A, B and C predict different classes, so /labels shows which one is live; the gate's
    class-change guard (tests/app/test_gate.py) would hold B and C for approval."""
    monkeypatch.setenv("BREEDLINE_ALLOW_CLASS_CHANGE", "true")


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def completed(client, sagemaker, env, job: str, accuracy: float, minute: int = 0) -> dict:
    """The final job ``job`` ends (at 19:``minute``) with ``accuracy``; its Completed event is handled."""
    version = job.split("-")[-2]
    state(env).save_version(DATASET, version, CLASSES.get(job, ["beagle"]), 10, f"tuning-{version}")
    end = dt.datetime(2026, 11, 25, 19, minute, tzinfo=dt.UTC)
    sagemaker.training[job] = {**completed_training(job, accuracy), "TrainingEndTime": end}
    event = load_event("training_completed.json")
    event["detail"].update(
        TrainingJobName=job,
        TrainingJobArn=f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{job}",
        LastModifiedTime=str(int(end.timestamp() * 1000)),
        Tags={**event["detail"]["Tags"], "breedline:version": version},
    )
    return invoke(client, "on_training_state_change", event)


def in_service(client, sagemaker, **kwargs) -> dict:
    return invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint(**kwargs))


# -- item 1: LIVE is what the endpoint serves ---------------------------------------------
def test_rolled_back_update_keeps_the_served_model_live_and_alerts(client, sagemaker, aws, env):
    """The issue's probe: B rolled back; /status, /labels, predict's model and the next gate all say A."""
    assert completed(client, sagemaker, env, A, 0.80)["action"] == "created"
    assert in_service(client, sagemaker)["model"] == A
    assert completed(client, sagemaker, env, B, 0.95, minute=10)["action"] == "updated"
    assert state(env).live_model()["model"] == A  # Updating: A still serves
    answer = in_service(client, sagemaker, roll_back=True, failure="Alarm breedline-endpoint-5xx went off")
    assert answer["rolled_back"] == B
    live = state(env).live_model()
    assert live["model"] == A and live["endpoint_config"] == f"{A}-rt"
    assert client.http.get("/labels").json_body == {"model": A, "labels": CLASSES[A]}
    assert client.http.get("/status").json_body["live_model"]["model"] == A
    lambda_runtime.live_names.clear()
    assert api.live_model_name(lambda_runtime.settings()) == A  # predict's ``model`` field
    (alert,) = aws.alerts()
    assert "rolled back" in alert["subject"] and B in alert["subject"]
    assert alert["message"]["rolled_back_model"] == B and alert["message"]["serving_model"] == A
    assert alert["message"]["failure_reason"] == "Alarm breedline-endpoint-5xx went off"
    assert "rolled back" in state(env).job(B)["reason"] and state(env).job(B)["status"] == "Completed"
    assert state(env).pending() is None
    # C beats A but not B: it is compared against A, the model that really serves
    result = completed(client, sagemaker, env, C, 0.90, minute=20)
    assert result["outcome"] == "deployed" and result["action"] == "updated"
    in_service(client, sagemaker)
    assert state(env).live_model()["model"] == C
    assert client.http.get("/labels").json_body["labels"] == CLASSES[C]


@pytest.mark.parametrize("spelling", ["IN_SERVICE", "InService"])
def test_both_status_spellings_make_the_first_model_live(client, sagemaker, aws, env, spelling):
    completed(client, sagemaker, env, A, 0.80)
    assert state(env).live_model() is None  # Creating
    sagemaker.finish_endpoint()
    event = endpoint_event(f"{A}-rt")
    event["detail"]["EndpointStatus"] = spelling
    assert invoke(client, "on_endpoint_state_change", event)["outcome"] == "live"
    assert state(env).live_model()["model"] == A and aws.alerts() == []


def test_duplicate_and_late_events_change_nothing(client, sagemaker, aws, env):
    completed(client, sagemaker, env, A, 0.80)
    event = sagemaker.finish_endpoint()
    invoke(client, "on_endpoint_state_change", event)
    before = state(env).live_model()
    assert invoke(client, "on_endpoint_state_change", event)["outcome"] == "unchanged"
    assert state(env).live_model() == before
    completed(client, sagemaker, env, B, 0.95, minute=10)
    # a late IN_SERVICE naming B while the update is still running: DescribeEndpoint says Updating
    late = invoke(client, "on_endpoint_state_change", endpoint_event(f"{B}-rt"))
    assert late["outcome"] == "ignored" and "Updating" in late["reason"]
    assert state(env).live_model() == before and state(env).pending()["model"] == B
    # a foreign endpoint's event is not even described
    calls = len(sagemaker.calls)
    assert (
        invoke(client, "on_endpoint_state_change", endpoint_event("x", name="someone-else"))["outcome"]
        == "ignored"
    )
    assert len(sagemaker.calls) == calls and aws.alerts() == []


def test_failed_first_endpoint_is_recorded_and_alerted(client, sagemaker, aws, env):
    completed(client, sagemaker, env, A, 0.80)
    event = sagemaker.finish_endpoint(status="Failed", failure="CannotStartContainerError")
    assert invoke(client, "on_endpoint_state_change", event)["outcome"] == "failed"
    assert (
        invoke(client, "on_endpoint_state_change", event)["outcome"] == "ignored"
    )  # a duplicate: alerted once
    (alert,) = aws.alerts()
    assert "Failed" in alert["subject"] and alert["message"]["failure_reason"] == "CannotStartContainerError"
    assert state(env).live_model() is None and "CannotStartContainerError" in state(env).job(A)["reason"]


# -- item 2: a deployment that can't run now is queued; a refused one is recorded and alerted ---------
def test_busy_endpoint_queues_and_the_newest_approved_model_wins(client, sagemaker, aws, env):
    completed(client, sagemaker, env, A, 0.80)
    in_service(client, sagemaker)
    j1, j2, j3 = (f"breedline-dog-breeds-{x * 8}-final" for x in "123")
    completed(client, sagemaker, env, B, 0.85, minute=5)  # the update B: the endpoint is busy for a while
    # j2 ended at 19:20 and arrives first; j1 ended earlier and arrives late; j3 is the newest
    assert completed(client, sagemaker, env, j2, 0.86, minute=20)["outcome"] == "queued"
    late = completed(client, sagemaker, env, j1, 0.99, minute=10)
    assert late["outcome"] == "superseded" and j2 in late["reason"]
    assert completed(client, sagemaker, env, j3, 0.87, minute=30)["outcome"] == "queued"
    assert "superseded by" in state(env).job(j2)["reason"] and "queued" in state(env).job(j3)["reason"]
    assert len(sagemaker.requests("UpdateEndpoint")) == 1 and aws.alerts() == []
    # B goes live; the queue is re-driven with j3, through the gate against B
    answer = in_service(client, sagemaker)
    assert (
        answer["model"] == B and answer["queued"]["model"] == j3 and answer["queued"]["action"] == "updated"
    )
    assert state(env).queued_deployment() is None
    assert in_service(client, sagemaker)["model"] == j3


def test_queued_model_that_no_longer_beats_the_live_one_is_not_deployed(client, sagemaker, aws, env):
    completed(client, sagemaker, env, A, 0.80)
    in_service(client, sagemaker)
    completed(client, sagemaker, env, B, 0.95, minute=5)
    assert completed(client, sagemaker, env, C, 0.90, minute=10)["outcome"] == "queued"  # beats A, not B
    answer = in_service(client, sagemaker)
    assert answer["model"] == B and answer["queued"]["outcome"] == "gate_rejected"
    assert (
        "not deployed (queued)" in state(env).job(C)["reason"]
        and len(sagemaker.requests("UpdateEndpoint")) == 1
    )


def _refuse_update(sagemaker, monkeypatch, code: str, message: str) -> None:
    original = sagemaker._answer

    def refuse(operation, name_key, params):
        if operation == "UpdateEndpoint":
            raise client_error(code, message, operation)
        return original(operation, name_key, params)

    monkeypatch.setattr(sagemaker, "_answer", refuse)


def test_refused_update_is_recorded_and_alerted_without_raising(client, sagemaker, aws, env, monkeypatch):
    completed(client, sagemaker, env, A, 0.80)
    in_service(client, sagemaker)
    _refuse_update(
        sagemaker,
        monkeypatch,
        "ResourceLimitExceeded",
        "The account-level service limit for ml.m5.large is 1",
    )
    result = completed(client, sagemaker, env, B, 0.95, minute=5)
    assert result["outcome"] == "deploy_failed"
    job = state(env).job(B)
    assert (
        job["status"] == "Completed"
        and "ResourceLimitExceeded" in job["reason"]
        and "service limit" in job["reason"]
    )
    (alert,) = aws.alerts()
    assert B in alert["subject"] and "ResourceLimitExceeded" in alert["subject"]
    assert state(env).live_model()["model"] == A and state(env).pending() is None


def test_throttled_update_raises_for_a_retry(client, sagemaker, aws, env, monkeypatch):
    completed(client, sagemaker, env, A, 0.80)
    in_service(client, sagemaker)
    _refuse_update(sagemaker, monkeypatch, "ThrottlingException", "Rate exceeded")
    with pytest.raises(lambda_runtime.PipelineError, match="ThrottlingException"):
        completed(client, sagemaker, env, B, 0.95, minute=5)
    assert aws.alerts() == []


def test_update_refused_as_in_progress_is_queued(client, sagemaker, aws, env, monkeypatch):
    """DescribeEndpoint said InService, UpdateEndpoint a moment later found it busy: queued, not failed."""
    completed(client, sagemaker, env, A, 0.80)
    in_service(client, sagemaker)
    _refuse_update(sagemaker, monkeypatch, "ValidationException", 'Cannot update in-progress endpoint "x".')
    assert completed(client, sagemaker, env, B, 0.95, minute=5)["outcome"] == "queued"
    assert aws.alerts() == [] and state(env).queued_deployment()["training_job"] == B
    deployments = client.http.get("/status").json_body["deployments"]
    assert deployments["queued"]["model"] == B and deployments["pending"] is None


# -- the pure parts ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "event_spelling, api_spelling",
    [
        ("IN_SERVICE", "InService"),
        ("InService", "InService"),
        ("FAILED", "Failed"),
        ("UPDATING", "Updating"),
        ("UPDATE_ROLLBACK_FAILED", "UpdateRollbackFailed"),
        ("SYSTEM_UPDATING", "SystemUpdating"),
        ("", ""),
    ],
)
def test_endpoint_status_has_one_spelling(event_spelling, api_spelling):
    assert endpoint_status(event_spelling) == api_spelling


def test_endpoint_rule_matches_both_spellings_of_our_endpoint_only(env):
    pattern = endpoint_pattern(lambda_runtime.settings())
    assert pattern["detail"]["EndpointName"] == ["breedline-classifier"]
    assert {"IN_SERVICE", "InService", "FAILED", "Failed"} <= set(pattern["detail"]["EndpointStatus"])
    assert "UPDATING" not in endpoint_event_spellings(["InService", "Failed"])
