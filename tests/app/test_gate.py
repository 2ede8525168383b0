"""Issue 13, app side: a gate that compares like with like.

Pure first (:func:`chalicelib.decisions.quality_gate` with plain inputs, the
majority baseline, metric sanity, class balance, the champion channel), then
the handlers under moto: the champion channel of the final job, the gate on a
real FinalMetricDataList, the class-change guard and its approval, the live
record's metrics on /status, and class counts on the data set notification.
"""

from __future__ import annotations

import math

import boto3
import pytest
from app_helpers import MAJORITY_3, completed_training, completed_tuning, load_event, validate_request
from chalicelib import naming
from chalicelib import sagemaker_requests as build
from chalicelib.class_balance import class_counts, imbalances
from chalicelib.config import Settings
from chalicelib.decisions import (
    ALREADY_LIVE,
    AWAITING_APPROVAL,
    DEPLOY,
    GatePolicy,
    LiveFigures,
    headline_metrics,
    majority_baseline,
    pipeline_tags,
    quality_gate,
    read_metrics,
)
from chalicelib.state import StateStore
from contract import CHAMPION_CHANNEL, CHANNELS

CLASSES = ("beagle", "corgi", "husky")
POLICY = GatePolicy()  # test_macro_f1, margin 0.01, baseline margin 0.05, floor 0.5
JOB = "breedline-dog-breeds-ee486b7b-final"
LIVE_JOB = "breedline-dog-breeds-00000000-final"


def good(**extra: float) -> dict[str, float]:
    """A sound 3-class model's lines: 0.83 on everything, the balanced 3-class majority baseline."""
    return {
        "test_accuracy": 0.83,
        "test_balanced_accuracy": 0.83,
        "test_macro_f1": 0.83,
        **MAJORITY_3,
        **extra,
    }


def live(labels=CLASSES, metrics=None, accuracy=0.70, job=LIVE_JOB) -> LiveFigures:
    return LiveFigures(training_job=job, labels=tuple(labels), metrics=metrics or {}, accuracy=accuracy)


# -- the pure gate --------------------------------------------------------------------------
def test_first_model_passes_on_floor_and_baseline():
    decision = quality_gate(good(), CLASSES, None, POLICY, JOB)
    assert decision.deploy and decision.outcome == DEPLOY and decision.compared_with == "no live model"
    assert "beats the majority baseline 0.1690" in decision.reason and not decision.alert


def test_an_always_majority_model_on_an_imbalanced_set_is_rejected_with_the_reason():
    """The issue's case: 91% of test is one class; the model always answers it."""
    metrics = {
        "test_accuracy": 0.91,
        "test_macro_f1": 0.48,
        "test_balanced_accuracy": 0.5,
        "test_majority_accuracy": 0.91,
    }
    decision = quality_gate(metrics, ("big", "small"), None, POLICY, JOB)
    assert not decision.deploy and decision.alert
    # derived from the majority share: 2 * 0.91 / 1.91 / 2 = 0.4764
    assert "does not beat the always-majority-class baseline 0.4764 by 0.0500" in decision.reason
    assert "test_accuracy 0.9100 vs the majority class's share 0.9100" in decision.reason
    # it passes the old gate's only check, the floor
    assert metrics["test_accuracy"] > POLICY.accuracy_floor
    # the printed baseline line wins over the derived one, with the same verdict
    printed = quality_gate({**metrics, "test_majority_macro_f1": 0.476}, ("big", "small"), None, POLICY, JOB)
    assert not printed.deploy and "baseline 0.4760" in printed.reason
    # a model that also finds the small class passes
    fine = quality_gate(
        {**metrics, "test_macro_f1": 0.81, "test_balanced_accuracy": 0.78},
        ("big", "small"),
        None,
        POLICY,
        JOB,
    )
    assert fine.deploy


def test_majority_baseline_per_metric():
    assert majority_baseline({"test_majority_accuracy": 0.5}, "test_accuracy", 2) == 0.5
    assert majority_baseline({}, "test_accuracy", 2) is None
    assert majority_baseline({"test_majority_accuracy": 0.5}, "test_macro_f1", 2) == pytest.approx(
        2 * 0.5 / 1.5 / 2
    )
    assert majority_baseline({}, "test_balanced_accuracy", 4) == pytest.approx(0.25)
    assert (
        majority_baseline({"test_majority_accuracy": 0.9, "test_majority_macro_f1": 0.3}, "test_macro_f1", 2)
        == 0.3
    )
    assert majority_baseline({}, "test_macro_f1", 3) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"test_accuracy": 99.0},  # the forged line of test_accuracy=99.jpg
        {"test_macro_f1": math.nan},
        {"test_balanced_accuracy": -0.1},
        {"champion_test_macro_f1": math.inf},
        {"test_majority_accuracy": 1.5},
        {"test_ece": math.nan},
    ],
)
def test_every_metric_it_reads_must_lie_in_0_1(bad):
    decision = quality_gate(good(**bad), CLASSES, live(), POLICY, JOB)
    assert not decision.deploy and decision.alert and decision.outcome == "gate_rejected"
    (name,) = bad
    assert "metrics outside [0, 1]" in decision.reason and name in decision.reason


def test_read_metrics_keeps_nan_and_turns_junk_into_nan():
    data = [
        {"MetricName": "test_accuracy", "Value": 0.8},
        {"MetricName": "test_macro_f1", "Value": "x"},
        {"MetricName": "test_accuracy", "Value": 0.1},
        {"Value": 3},
    ]
    found = read_metrics(data)
    assert found["test_accuracy"] == 0.8 and math.isnan(found["test_macro_f1"]) and len(found) == 2
    assert headline_metrics({**found, "valid_loss": 0.3, "champion_test_macro_f1": 0.7}) == {
        "test_accuracy": 0.8,
        "champion_test_macro_f1": 0.7,
    }


@pytest.mark.parametrize("missing", ["test_accuracy", "test_macro_f1"])
def test_missing_accuracy_or_gate_metric_rejects_and_alerts(missing):
    metrics = good()
    del metrics[missing]
    decision = quality_gate(metrics, CLASSES, None, POLICY, JOB)
    assert (
        not decision.deploy and decision.alert and f"no {missing} in FinalMetricDataList" in decision.reason
    )


@pytest.mark.parametrize("accuracy", [0.5, 0.4])
def test_the_floor_is_strict(accuracy):
    decision = quality_gate(good(test_accuracy=accuracy), CLASSES, None, POLICY, JOB)
    assert not decision.deploy and "does not beat the floor 0.5000" in decision.reason


@pytest.mark.parametrize(
    "champion, deploy",
    [
        (0.70, True),
        (0.815, True),  # 0.83 > 0.815 + 0.01
        (0.82, False),  # within the margin: retraining noise
        (0.83, False),
        (0.90, False),
    ],
)
def test_beats_the_champion_on_the_same_test_split_by_the_margin(champion, deploy):
    # the live record's own figure (its own, easier test split) would say otherwise: the champion line wins
    decision = quality_gate(
        good(champion_test_macro_f1=champion),
        CLASSES,
        live(metrics={"test_macro_f1": 0.99}, accuracy=0.99),
        POLICY,
        JOB,
    )
    assert decision.deploy is deploy
    assert decision.compared_with == "the live model on the same test split"
    if not deploy:
        assert not decision.alert and "does not beat the live model on the same test split" in decision.reason


def test_fallbacks_without_a_champion_line():
    own = quality_gate(good(), CLASSES, live(metrics={"test_macro_f1": 0.9}), POLICY, JOB)
    assert not own.deploy and own.compared_with.startswith("the live model's own test split")
    old = quality_gate(good(), CLASSES, live(accuracy=0.80), POLICY, JOB)
    assert old.deploy and "test_accuracy 0.8300 beats the live model's own test_accuracy" in old.reason
    worse = quality_gate(good(), CLASSES, live(accuracy=0.825), POLICY, JOB)
    assert not worse.deploy  # 0.83 <= 0.825 + 0.01
    nothing = quality_gate(good(), CLASSES, live(accuracy=None), POLICY, JOB)
    assert nothing.deploy and nothing.compared_with == "nothing: no live figure"


def test_a_different_class_list_awaits_approval_and_says_what_changed():
    decision = quality_gate(good(), ("beagle", "husky"), live(), POLICY, JOB)
    assert not decision.deploy and decision.outcome == AWAITING_APPROVAL and decision.alert
    assert decision.class_change["removed"] == ["corgi"] and decision.class_change["added"] == []
    assert "removed ['corgi']" in decision.reason and "(3 -> 2 classes)" in decision.reason
    assert "BREEDLINE_ALLOW_CLASS_CHANGE=true" in decision.reason
    # the same classes in another order also change what /labels means
    reordered = quality_gate(good(), ("husky", "beagle", "corgi"), live(), POLICY, JOB)
    assert reordered.outcome == AWAITING_APPROVAL
    allowed = quality_gate(
        good(champion_test_macro_f1=0.99),
        ("beagle", "husky"),
        live(),
        GatePolicy(allow_class_change=True),
        JOB,
    )
    assert allowed.deploy and allowed.compared_with == "nothing: class list changed"
    # a bad model never asks for approval: it is rejected first
    bad = quality_gate(good(test_accuracy=0.3), ("beagle", "husky"), live(), POLICY, JOB)
    assert bad.outcome == "gate_rejected"


def test_the_live_model_itself_and_unknown_classes():
    again = quality_gate(good(), CLASSES, live(job=JOB), POLICY, JOB)
    assert not again.deploy and again.outcome == ALREADY_LIVE and not again.alert
    unknown = quality_gate(good(), (), None, POLICY, JOB)
    assert not unknown.deploy and unknown.alert and "no class list" in unknown.reason


def test_the_gate_metric_is_configurable():
    policy = GatePolicy(metric="test_balanced_accuracy")
    metrics = good(test_balanced_accuracy=0.40, champion_test_balanced_accuracy=0.2)
    decision = quality_gate(metrics, CLASSES, live(), policy, JOB)  # baseline 1/3 + 0.05 = 0.3833
    assert decision.deploy and "test_balanced_accuracy 0.4000 beats the live model" in decision.reason
    near = quality_gate(good(test_balanced_accuracy=0.38), CLASSES, None, policy, JOB)
    assert not near.deploy and "baseline 0.3333" in near.reason
    on_accuracy = quality_gate(
        good(champion_test_accuracy=0.9), CLASSES, live(), GatePolicy(metric="test_accuracy"), JOB
    )
    assert not on_accuracy.deploy and "test_accuracy 0.8300 does not beat" in on_accuracy.reason


def test_gate_settings_parse_and_refuse_bad_values():
    s = Settings.from_env({})
    assert (s.gate_metric, s.gate_margin, s.baseline_margin, s.allow_class_change, s.imbalance_ratio) == (
        "test_macro_f1",
        0.01,
        0.05,
        False,
        3.0,
    )
    with pytest.raises(ValueError, match="BREEDLINE_GATE_METRIC"):
        Settings.from_env({"BREEDLINE_GATE_METRIC": "valid_loss"})
    with pytest.raises(ValueError, match="BREEDLINE_GATE_MARGIN"):
        Settings.from_env({"BREEDLINE_GATE_MARGIN": "5"})
    with pytest.raises(ValueError, match="BREEDLINE_IMBALANCE_RATIO"):
        Settings.from_env({"BREEDLINE_IMBALANCE_RATIO": "0.5"})


# -- class balance --------------------------------------------------------------------------
def test_imbalance_is_found_per_split_and_worded_with_the_counts():
    counts = {
        "train": {"big": 100, "small": 2},
        "valid": {"big": 6, "small": 2},
        "test": {"big": 5, "small": 5},
    }
    (found,) = imbalances(counts, 3.0)
    assert (found.split, found.largest, found.largest_count, found.smallest, found.smallest_count) == (
        "train",
        "big",
        100,
        "small",
        2,
    )
    assert found.ratio == 50.0
    assert "train: classes imbalanced 50.0x (more than 3x" in found.warning(
        3.0
    ) and "big has 100 images" in found.warning(3.0)
    assert [f.split for f in imbalances(counts, 2.5)] == ["train", "valid"]
    assert imbalances({"train": {"a": 3, "b": 1}}, 3.0) == []  # exactly 3x is not more than 3x
    assert imbalances({"train": {"a": 3, "b": 0}}, 3.0) == []  # an empty class is the layout rules' business
    assert class_counts({"train": {"b": 1, "a": 2}}) == {"train": {"a": 2, "b": 1}, "valid": {}, "test": {}}


# -- the champion channel -------------------------------------------------------------------
def _settings(**overrides: str) -> Settings:
    return Settings.from_env(
        {
            "BREEDLINE_TRAINING_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6.0-gpu-py312",
            "BREEDLINE_DEBUGGER_RULE_IMAGE": "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest",
            **overrides,
        }
    )


@pytest.mark.parametrize("mode", ["in_job", "service", "off"])
def test_the_final_job_gets_the_champion_channel_and_botocore_accepts_it(mode):
    s = _settings()
    uri = f"s3://{s.bucket}/jobs/{LIVE_JOB}/output/model.tar.gz"
    tags = pipeline_tags(s.name_prefix, "training", "dog-breeds", "0123456789abcdef")
    request = build.create_training_job(
        s,
        name=JOB,
        dataset="dog-breeds",
        region="us-east-1",
        hyperparameters={},
        tags=tags,
        debugger=mode,
        champion_uri=uri,
    )
    validate_request("sagemaker", "CreateTrainingJob", request)
    channels = request["InputDataConfig"]
    assert [c["ChannelName"] for c in channels] == [*CHANNELS, CHAMPION_CHANNEL]
    assert channels[-1] == {
        "ChannelName": "champion",
        "InputMode": "File",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
    plain = build.create_training_job(
        s, name=JOB, dataset="dog-breeds", region="us-east-1", hyperparameters={}, tags=tags
    )
    assert [c["ChannelName"] for c in plain["InputDataConfig"]] == list(CHANNELS)
    tuning = build.create_tuning_job(
        s, name="breedline-dog-breeds-ee486b7b", dataset="dog-breeds", region="us-east-1", tags=tags
    )
    assert CHAMPION_CHANNEL not in [
        c["ChannelName"] for c in tuning["TrainingJobDefinition"]["InputDataConfig"]
    ]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://another-bucket/jobs/x/output/model.tar.gz",
        "s3://breedline-data/jobs/x/output/",
        "s3://breedline-data/datasets/x/model.tar.gz",
    ],
)
def test_a_champion_outside_the_job_outputs_is_refused(uri):
    with pytest.raises(ValueError, match="champion model"):
        build.champion_channel(_settings(), uri)


# -- the handlers under moto ----------------------------------------------------------------
TUNING_EVENT = load_event("tuning_completed.json")
TUNING = TUNING_EVENT["detail"]["HyperParameterTuningJobName"]
FINAL = naming.training_job_name(TUNING)
DATASET = "dog-breeds"
VERSION = TUNING_EVENT["detail"]["Tags"]["breedline:version"]
LIVE_ARTIFACTS = f"s3://breedline-data/jobs/{LIVE_JOB}/output/model.tar.gz"


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def seed(
    env, classes=CLASSES, live_labels=CLASSES, artifacts: str | None = LIVE_ARTIFACTS, metrics=None
) -> None:
    state(env).save_version(
        DATASET,
        VERSION,
        list(classes),
        27,
        TUNING,
        class_counts={"train": dict.fromkeys(classes, 3), "valid": {}, "test": {}},
    )
    if live_labels is not None:
        record = {
            "model": LIVE_JOB,
            "training_job": LIVE_JOB,
            "accuracy": 0.70,
            "labels": list(live_labels),
            "metrics": metrics or {"test_macro_f1": 0.70},
        }
        if artifacts:
            record["artifacts"] = artifacts
        assert state(env).set_live_model(record, None)


def start_final(client, sagemaker) -> dict:
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, f"{TUNING}-002-9f8e7d6c", {"batch_size": '"64"'})
    result = invoke(client, "on_tuning_state_change", TUNING_EVENT)
    assert result["outcome"] == "started"
    (request,) = sagemaker.requests("CreateTrainingJob")
    return request


def test_the_final_job_evaluates_the_live_model_when_it_has_the_same_classes(client, sagemaker, aws, env):
    seed(env)
    request = start_final(client, sagemaker)
    champion = request["InputDataConfig"][-1]
    assert (
        champion["ChannelName"] == "champion"
        and champion["DataSource"]["S3DataSource"]["S3Uri"] == LIVE_ARTIFACTS
    )


def test_no_champion_channel_for_a_different_class_list(client, sagemaker, aws, env):
    seed(env, live_labels=("beagle", "corgi"))
    request = start_final(client, sagemaker)
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == list(CHANNELS)


def test_an_old_live_record_finds_its_artifacts_through_its_training_job(client, sagemaker, aws, env):
    seed(env, artifacts=None)
    sagemaker.training[LIVE_JOB] = completed_training(LIVE_JOB, 0.7)
    request = start_final(client, sagemaker)
    assert [op for op, _ in sagemaker.calls] == [
        "DescribeHyperParameterTuningJob",
        "DescribeTrainingJob",
        "CreateTrainingJob",
    ]
    assert request["InputDataConfig"][-1]["DataSource"]["S3DataSource"]["S3Uri"] == LIVE_ARTIFACTS


def test_the_gate_deploys_on_the_champion_line_and_stores_the_headline_metrics(client, sagemaker, aws, env):
    seed(env)
    sagemaker.training[FINAL] = completed_training(
        FINAL, 0.83, extra={"champion_test_macro_f1": 0.75, "test_ece": 0.04, "confidence_threshold": 0.31,
                            "test_abstained_share": 0.05}
    )
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "deployed"
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())  # LIVE once it serves (issue 15)
    live = state(env).live_model()
    assert live["artifacts"] == f"s3://breedline-data/jobs/{FINAL}/output/model.tar.gz"
    assert live["metrics"] == {
        "test_accuracy": 0.83,
        "test_balanced_accuracy": 0.83,
        "test_macro_f1": 0.83,
        "test_majority_accuracy": 0.34,
        "test_majority_macro_f1": 0.169,
        "test_ece": 0.04,
        "confidence_threshold": 0.31,
        "test_abstained_share": 0.05,
        "champion_test_macro_f1": 0.75,
    }
    body = client.http.get("/status").json_body
    assert body["live_model"]["metrics"]["test_macro_f1"] == pytest.approx(0.83)
    assert body["live_model"]["metrics"]["champion_test_macro_f1"] == pytest.approx(0.75)
    # the abstention's threshold and test share (issue 13: /status shows the live model's threshold)
    assert body["live_model"]["metrics"]["confidence_threshold"] == pytest.approx(0.31)
    assert body["live_model"]["metrics"]["test_abstained_share"] == pytest.approx(0.05)
    assert client.http.get("/labels").json_body["labels"] == list(CLASSES)
    assert aws.alerts() == []


def test_a_model_that_loses_to_the_champion_on_the_same_data_is_not_deployed(client, sagemaker, aws, env):
    # better than the live record's number from its own test split, worse than the live model on this one
    seed(env)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83, extra={"champion_test_macro_f1": 0.86})
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "gate_rejected" and "same test split, 0.8600" in result["reason"]
    assert state(env).live_model()["model"] == LIVE_JOB and not sagemaker.requests("CreateModel")
    assert aws.alerts() == []  # not better is not an incident
    assert state(env).job(FINAL)["reason"].startswith("not deployed: test_macro_f1 0.8300 does not beat")


def test_an_always_majority_model_is_rejected_and_alerted(client, sagemaker, aws, env):
    seed(env, classes=("big", "small"), live_labels=None)
    sagemaker.training[FINAL] = completed_training(
        FINAL,
        None,
        extra={
            "test_accuracy": 0.91,
            "test_macro_f1": 0.48,
            "test_balanced_accuracy": 0.5,
            "test_majority_accuracy": 0.91,
        },
    )
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "gate_rejected" and state(env).live_model() is None
    (alert,) = aws.alerts()
    assert alert["subject"] == f"Breedline: model {FINAL} rejected by the quality gate"
    assert "does not beat the always-majority-class baseline 0.4764" in alert["message"]["reason"]
    assert alert["message"]["metrics"]["test_accuracy"] == 0.91


def test_a_forged_metric_rejects_the_model_and_alerts(client, sagemaker, aws, env):
    seed(env)
    sagemaker.training[FINAL] = completed_training(FINAL, 99.0)
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "gate_rejected" and "test_accuracy=99.0" in result["reason"]
    (alert,) = aws.alerts()
    assert "metrics outside [0, 1]" in alert["message"]["reason"]
    assert state(env).live_model()["model"] == LIVE_JOB


def test_a_class_change_waits_for_approval_then_deploys_when_allowed(
    client, sagemaker, aws, env, monkeypatch
):
    seed(env, classes=("beagle", "corgi", "husky", "pug"))
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    event = load_event("training_completed.json")
    result = invoke(client, "on_training_state_change", event)
    assert result["outcome"] == AWAITING_APPROVAL and "added ['pug']" in result["reason"]
    (alert,) = aws.alerts()
    assert alert["subject"] == f"Breedline: model {FINAL} changes the class list: awaiting approval"
    message = alert["message"]
    assert message["class_change"]["added"] == ["pug"] and message["class_change"]["removed"] == []
    assert message["class_counts"]["train"] == {"beagle": 3, "corgi": 3, "husky": 3, "pug": 3}
    assert "BREEDLINE_ALLOW_CLASS_CHANGE=true" in message["what_to_do"]
    assert state(env).job(FINAL)["reason"].startswith("awaiting approval: class list differs")
    # a duplicate event changes nothing and does not alert again
    assert invoke(client, "on_training_state_change", event)["outcome"] == AWAITING_APPROVAL
    assert aws.alerts() == [] and not sagemaker.requests("CreateModel")
    assert client.http.get("/labels").json_body["labels"] == list(CLASSES)
    # approval: set the setting and invoke the function with the alert's event (nothing was remembered as done)
    redrive = message["redrive_event"]
    assert redrive["source"] == "aws.sagemaker" and redrive["detail"]["TrainingJobName"] == FINAL
    assert redrive["detail"]["Tags"]["breedline:version"] == VERSION
    monkeypatch.setenv("BREEDLINE_ALLOW_CLASS_CHANGE", "true")
    result = invoke(client, "on_training_state_change", redrive)
    assert result["outcome"] == "deployed"
    invoke(client, "on_endpoint_state_change", sagemaker.finish_endpoint())  # LIVE once it serves (issue 15)
    assert client.http.get("/labels").json_body["labels"] == ["beagle", "corgi", "husky", "pug"]


def test_an_imbalanced_data_set_is_accepted_with_a_warning_and_its_counts(client, sagemaker, aws, env):
    aws.put_dataset(DATASET, classes={"beagle": 10, "corgi": 2})
    result = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert result["outcome"] == "started"
    (alert,) = aws.alerts()
    assert alert["subject"] == f"Breedline: data set {DATASET} accepted, 0 files skipped, classes imbalanced"
    message = alert["message"]
    assert message["imbalanced_splits"] == ["train", "valid", "test"]
    assert any(w.startswith("train: classes imbalanced 5.0x") for w in message["warnings"])
    assert message["counts"]["test"] == {"beagle": 10, "corgi": 2}
    record = state(env).version(DATASET, result["version"])
    assert record["class_counts"] == {split: {"beagle": 10, "corgi": 2} for split in CHANNELS}


def test_a_balanced_data_set_is_accepted_silently_with_its_counts_recorded(client, sagemaker, aws, env):
    aws.put_dataset(DATASET, classes={"beagle": 3, "corgi": 2})
    result = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert result["outcome"] == "started" and aws.alerts() == []
    assert state(env).version(DATASET, result["version"])["class_counts"]["train"] == {
        "beagle": 3,
        "corgi": 2,
    }


def test_the_redrive_event_is_one_the_training_handler_takes_for_sagemakers():
    from chalicelib.decisions import Relevance, classify_training_job, redrive_event, tags_to_dict

    arn = f"arn:aws:sagemaker:eu-west-1:123456789012:training-job/{JOB}"
    tags = pipeline_tags("breedline", "training", "dog-breeds", "3f9a1c0d5e7b2a64")
    event = redrive_event(JOB, arn, tags, "eu-west-1", "2026-12-02T12:00:00Z")
    assert event["account"] == "123456789012" and event["resources"] == [arn]
    assert (
        event["detail-type"] == "SageMaker Training Job State Change"
        and event["detail"]["TrainingJobStatus"] == "Completed"
    )
    assert classify_training_job(JOB, tags_to_dict(event["detail"]["Tags"]), "breedline") is Relevance.OURS
