"""The cost guard (issue 15, item 16): a daily budget per data set, one tuning job running, newer versions supersede.

Driven through chalice.test.Client under moto (S3, DynamoDB, SNS) with the
strict SageMaker fake of app_helpers, which validates StopHyperParameterTuningJob
against botocore's model like every other request. Without chalicelib.budget
every one of these fails: each version started its own tuning job, at once,
without limit, and nothing was ever stopped or queued.
"""

from __future__ import annotations

import copy

import boto3
import pytest
from app_helpers import completed_tuning, load_event
from chalicelib import budget, naming, uploads
from chalicelib.state import StateStore
from contract import COMPLETED, STOPPED

DATASET = "dog-breeds"
DAY = 1_795_000_000.0  # 2026-11-18 09:46:40 UTC
CLASSES = ["beagle", "corgi", "husky"]


@pytest.fixture
def at_day(monkeypatch):
    """The cost guard's clock, fixed (``at_day(1)`` moves it one day on)."""

    def move(days: float = 0) -> None:
        monkeypatch.setattr(budget, "clock", lambda: DAY + days * 86400)

    move()
    return move


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def new_version(client, aws, n: int) -> dict:
    """One more image, then the marker: a new data set version settles."""
    aws.s3.put_object(
        Bucket="breedline-data",
        Key=f"datasets/{DATASET}/train/beagle/more_{n:03d}.jpg",
        Body=b"\xff\xd8\xff" + bytes([n]) * 40 + b"\xff\xd9",
    )
    return invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))


def tuning_event(result: dict, status: str) -> dict:
    """The tuning job state change of a job the app started (name, ARN, status and version tags of ``result``)."""
    event = copy.deepcopy(load_event("tuning_completed.json"))
    detail = event["detail"]
    name = result["tuning_job"]
    detail["HyperParameterTuningJobName"] = name
    detail["HyperParameterTuningJobArn"] = (
        f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{name}"
    )
    event["resources"] = [detail["HyperParameterTuningJobArn"]]
    detail["HyperParameterTuningJobStatus"] = status
    detail["Tags"]["breedline:version"] = result["version"]
    return event


def forget_idempotency(env) -> None:
    """What 24 h do: every idempotency record has expired."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    for row in ddb.scan(TableName=env["BREEDLINE_IDEMPOTENCY_TABLE"])["Items"]:
        ddb.delete_item(TableName=env["BREEDLINE_IDEMPOTENCY_TABLE"], Key={"id": row["id"]})


def created(sagemaker) -> list[str]:
    return [r["HyperParameterTuningJobName"] for r in sagemaker.requests("CreateHyperParameterTuningJob")]


# -- the daily budget ------------------------------------------------------------------------------
def test_a_version_over_the_daily_budget_is_rejected_with_one_alert(
    client, sagemaker, aws, env, monkeypatch, at_day, capsys
):
    monkeypatch.setenv("BREEDLINE_MAX_TUNING_JOBS_PER_DAY", "2")
    aws.put_dataset(DATASET)
    first, second = new_version(client, aws, 1), new_version(client, aws, 2)
    assert [first["outcome"], second["outcome"]] == ["started", "started"]
    assert aws.alerts() == []
    capsys.readouterr()
    third = new_version(client, aws, 3)
    assert third["outcome"] == "over_budget"
    assert (third["count"], third["limit"], third["frees_at"]) == (2, 2, "2026-11-19T00:00:00Z")
    assert created(sagemaker) == [first["tuning_job"], second["tuning_job"]]
    assert sagemaker.stopped == [first["tuning_job"]]  # the over-budget version stops nothing
    (sent,) = aws.alerts()
    assert sent["subject"] == f"Breedline: data set {DATASET} rejected: tuning budget spent"
    message = sent["message"]
    assert {k: message[k] for k in ("dataset", "version", "count", "limit", "frees_at")} == {
        "dataset": DATASET,
        "version": third["version"],
        "count": 2,
        "limit": 2,
        "frees_at": "2026-11-19T00:00:00Z",
    }
    assert "Upload datasets/dog-breeds/_READY again after 2026-11-19T00:00:00Z" in message["what_to_do"]
    assert "BREEDLINE_MAX_TUNING_JOBS_PER_DAY" in message["what_to_do"]
    assert '"TuningJobsOverBudget":[1.0]' in capsys.readouterr().out
    record = state(env).version(DATASET, third["version"])
    assert record["budget_status"] == "rejected" and "over budget: 2 of 2" in record["budget_note"]
    assert state(env).uploads(DATASET)["outcome"] == "over_budget"
    # nothing is lost: every object is still there, and a duplicate marker alerts nothing more
    assert aws.s3.head_object(Bucket="breedline-data", Key=f"datasets/{DATASET}/train/beagle/more_003.jpg")
    assert invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))["outcome"] == "over_budget"
    assert aws.alerts() == [] and len(created(sagemaker)) == 2


def test_the_next_utc_day_the_same_version_starts_on_a_new_marker(
    client, sagemaker, aws, env, monkeypatch, at_day
):
    monkeypatch.setenv("BREEDLINE_MAX_TUNING_JOBS_PER_DAY", "1")
    aws.put_dataset(DATASET)
    first = new_version(client, aws, 1)
    refused = new_version(client, aws, 2)
    assert refused["outcome"] == "over_budget" and len(aws.alerts()) == 1
    at_day(0.6)  # 00:10 UTC the next day: a new window, though not 24 h later
    retried = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert retried["outcome"] == "started" and retried["version"] == refused["version"]
    assert retried.get("superseded") == first["tuning_job"]
    item = state(env).budget(DATASET)
    assert (item["day"], item["started"], item["running"]) == ("2026-11-19", 1, retried["tuning_job"])
    assert aws.alerts() == []


# -- one running per data set ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["stop", "queue"])
def test_two_versions_settling_at_once_leave_one_running(sagemaker, aws, env, monkeypatch, at_day, mode):
    """Lambda A reads the empty budget, Lambda B does its whole admission, then A writes: A's write loses."""
    monkeypatch.setenv("BREEDLINE_SUPERSEDE", mode)
    from chalicelib import lambda_runtime

    s = lambda_runtime.settings()
    original = StateStore.put_budget
    raced: dict[str, dict] = {}

    def racing_put(self, dataset, item, expected_rev):
        if not raced:
            raced["b"] = {}
            raced["b"] = uploads.start_tuning(s, DATASET, "bbbbbbbbbbbbbbbb", CLASSES, 27)
        return original(self, dataset, item, expected_rev)

    monkeypatch.setattr(StateStore, "put_budget", racing_put)
    a = uploads.start_tuning(s, DATASET, "aaaaaaaaaaaaaaaa", CLASSES, 27)
    b = raced["b"]
    assert b["outcome"] == "started"
    item = state(env).budget(DATASET)
    if mode == "stop":  # A re-read, found B running, and superseded it
        assert a["outcome"] == "started" and a["superseded"] == b["tuning_job"]
        assert sagemaker.stopped == [b["tuning_job"]] and item["running"] == a["tuning_job"]
    else:  # A re-read, found B running, and waits for it
        assert a["outcome"] == "queued" and a["waits_for"] == b["tuning_job"]
        assert created(sagemaker) == [b["tuning_job"]] and sagemaker.stopped == []
        assert (item["running"], item["queued"]) == (b["tuning_job"], a["tuning_job"])
    assert item["started"] == 2


def test_a_newer_version_stops_the_running_one_whose_end_alerts_and_starts_nothing(
    client, sagemaker, aws, env, at_day
):
    aws.put_dataset(DATASET)
    old = new_version(client, aws, 1)
    new = new_version(client, aws, 2)
    assert new["outcome"] == "started" and new["superseded"] == old["tuning_job"]
    (stop,) = sagemaker.requests("StopHyperParameterTuningJob")
    assert stop == {"HyperParameterTuningJobName": old["tuning_job"]}
    assert state(env).job(old["tuning_job"])["superseded_by"] == new["version"]
    assert state(env).version(DATASET, old["version"])["budget_status"] == "superseded"
    # the stopped job's Stopped event: recorded with why, no alert, no failure metric, no final job
    ended = invoke(client, "on_tuning_state_change", tuning_event(old, STOPPED))
    assert ended == {
        "outcome": "superseded",
        "tuning_job": old["tuning_job"],
        "status": STOPPED,
        "superseded_by": new["version"],
    }
    record = state(env).job(old["tuning_job"])
    assert record["status"] == STOPPED and record["reason"] == f"superseded by version {new['version']}"
    assert aws.alerts() == [] and sagemaker.requests("CreateTrainingJob") == []
    assert state(env).budget(DATASET)["running"] == new["tuning_job"]  # the old job's end frees nothing
    # the newer job's Completed starts its final job and frees the slot
    best = f"{new['tuning_job']}-001-00000000"
    sagemaker.tuning[new["tuning_job"]] = completed_tuning(new["tuning_job"], best, {"learning_rate": "0.01"})
    assert invoke(client, "on_tuning_state_change", tuning_event(new, COMPLETED))["outcome"] == "started"
    assert [r["TrainingJobName"] for r in sagemaker.requests("CreateTrainingJob")] == [
        naming.training_job_name(new["tuning_job"])
    ]
    assert "running" not in state(env).budget(DATASET)


def test_a_superseded_job_that_completed_before_the_stop_starts_no_final_job(
    client, sagemaker, aws, env, at_day
):
    aws.put_dataset(DATASET)
    old = new_version(client, aws, 1)
    sagemaker.stopped.append(old["tuning_job"])  # SageMaker answers: not InProgress any more
    new = new_version(client, aws, 2)
    assert new["outcome"] == "started" and aws.alerts() == []
    sagemaker.tuning[old["tuning_job"]] = completed_tuning(
        old["tuning_job"], f"{old['tuning_job']}-001-0", {}
    )
    ended = invoke(client, "on_tuning_state_change", tuning_event(old, COMPLETED))
    assert ended["outcome"] == "superseded" and sagemaker.requests("CreateTrainingJob") == []
    assert state(env).job(old["tuning_job"])["status"] == COMPLETED


def test_queue_mode_starts_the_newest_waiting_version_when_the_running_one_ends(
    client, sagemaker, aws, env, monkeypatch, at_day
):
    monkeypatch.setenv("BREEDLINE_SUPERSEDE", "queue")
    aws.put_dataset(DATASET)
    running = new_version(client, aws, 1)
    older = new_version(client, aws, 2)
    newest = new_version(client, aws, 3)
    assert [older["outcome"], newest["outcome"]] == ["queued", "queued"]
    assert newest["dropped_version"] == older["version"] and newest["waits_for"] == running["tuning_job"]
    assert (
        created(sagemaker) == [running["tuning_job"]]
        and sagemaker.requests("StopHyperParameterTuningJob") == []
    )
    assert state(env).version(DATASET, older["version"])["budget_status"] == "dropped"
    assert state(env).budget(DATASET)["started"] == 2  # the dropped version took no budget of its own
    sagemaker.tuning[running["tuning_job"]] = completed_tuning(
        running["tuning_job"], f"{running['tuning_job']}-001-0", {}
    )
    done = tuning_event(running, COMPLETED)
    assert invoke(client, "on_tuning_state_change", done)["outcome"] == "started"  # its final job
    assert created(sagemaker) == [running["tuning_job"], newest["tuning_job"]]
    item = state(env).budget(DATASET)
    assert item["running"] == newest["tuning_job"] and "queued" not in item
    assert state(env).job(newest["tuning_job"])["status"] == "InProgress"
    # a duplicate of that event, after its idempotency record expired, starts nothing more
    forget_idempotency(env)
    invoke(client, "on_tuning_state_change", done)
    assert len(created(sagemaker)) == 2 and state(env).budget(DATASET)["running"] == newest["tuning_job"]


def test_a_refused_create_gives_the_slot_and_the_count_back(client, sagemaker, aws, env, monkeypatch, at_day):
    monkeypatch.setenv("BREEDLINE_MAX_TUNING_JOBS_PER_DAY", "1")
    aws.put_dataset(DATASET)
    from app_helpers import client_error

    def refuse(**params):
        raise client_error(
            "ResourceLimitExceeded",
            "The account-level service limit is exceeded",
            "CreateHyperParameterTuningJob",
        )

    monkeypatch.setattr(sagemaker, "create_hyper_parameter_tuning_job", refuse, raising=False)
    with pytest.raises(Exception, match="ResourceLimitExceeded|service limit"):
        invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    item = state(env).budget(DATASET)
    assert "running" not in item and item["started"] == 0
    monkeypatch.delattr(sagemaker, "create_hyper_parameter_tuning_job")
    assert invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))["outcome"] == "started"


# -- the pure rules --------------------------------------------------------------------------------
def test_plans_budget_before_slot_and_count_per_utc_day():
    full = {"day": "2026-11-18", "started": 3, "running": "j1", "running_version": "v1", "rev": 4}
    over = budget.plan_admission(full, job="j2", version="v2", now=DAY, limit=3, supersede="stop")
    assert over.action is budget.Action.OVER_BUDGET and over.item is None and over.holder == "j1"
    tomorrow = budget.plan_admission(full, job="j2", version="v2", now=DAY + 86400, limit=3, supersede="stop")
    assert (
        tomorrow.action is budget.Action.SUPERSEDE
        and tomorrow.item["started"] == 1
        and tomorrow.previous == "j1"
    )
    assert (
        budget.plan_admission(full, job="j1", version="v1", now=DAY, limit=3, supersede="stop").action
        is budget.Action.DUPLICATE
    )
    assert budget.plan_release(full, "j0").item is None  # a job that does not hold the slot frees nothing
    assert budget.plan_release(full, "j1").item["running"] is None
    assert budget.frees_at("2026-12-31") == "2027-01-01T00:00:00Z"


def test_content_that_was_tuned_before_stops_nothing_and_costs_nothing(client, sagemaker, aws, env, at_day):
    aws.put_dataset(DATASET)
    first = new_version(client, aws, 1)
    second = new_version(client, aws, 2)
    aws.s3.delete_object(Bucket="breedline-data", Key=f"datasets/{DATASET}/train/beagle/more_002.jpg")
    marker = load_event("s3_ready_marker.json")  # now with the first version's files again
    assert (
        invoke(client, "on_dataset_upload", marker) == first
    )  # within 24 h: Powertools replays its settlement
    forget_idempotency(env)  # later: settled afresh
    back = invoke(client, "on_dataset_upload", marker)
    assert back["version"] == first["version"] and back["outcome"] == "already_started"
    assert sagemaker.stopped == [first["tuning_job"]]  # the second version's job is not stopped for it
    item = state(env).budget(DATASET)
    assert (item["running"], item["started"]) == (second["tuning_job"], 2)


def test_queue_mode_frees_the_slot_of_a_job_whose_end_event_was_lost(
    client, sagemaker, aws, env, monkeypatch, at_day
):
    monkeypatch.setenv("BREEDLINE_SUPERSEDE", "queue")
    aws.put_dataset(DATASET)
    lost = new_version(client, aws, 1)
    waiting = new_version(client, aws, 2)
    assert waiting["outcome"] == "queued"  # SageMaker says the first job is InProgress
    sagemaker.tuning[lost["tuning_job"]] = {
        "HyperParameterTuningJobName": lost["tuning_job"],
        "HyperParameterTuningJobStatus": "Failed",
    }
    newest = new_version(client, aws, 3)  # the Failed event never came
    assert newest["outcome"] == "queued" and newest["waits_for"] == waiting["tuning_job"]
    assert created(sagemaker) == [lost["tuning_job"], waiting["tuning_job"]]  # the waiting one started
    (sent,) = aws.alerts()
    assert sent["subject"] == f"Breedline: tuning job {lost['tuning_job']} ended without its event"
    item = state(env).budget(DATASET)
    assert (item["running"], item["queued"]) == (waiting["tuning_job"], newest["tuning_job"])
