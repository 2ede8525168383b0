"""Issue 14 in the app: ``auto`` falls back to in_job when Debugger is refused; triggered rules alert (or block).

The refusal comes back through a real botocore client and its Stubber, with
the error as AWS answers one (code, message, HTTP 400), so the app's error
handling sees exactly what it would see in an account without Debugger.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from app_helpers import completed_training, completed_tuning, load_event, validate_request
from chalicelib import clients as aws_clients
from chalicelib import lambda_runtime, naming
from chalicelib.decisions import debugger_refusal, triggered_rules
from chalicelib.state import StateStore
from contract import RULE_NAMES, rule_metric_name

TUNING_EVENT = load_event("tuning_completed.json")
TUNING = TUNING_EVENT["detail"]["HyperParameterTuningJobName"]
FINAL = naming.training_job_name(TUNING)
VERSION = TUNING_EVENT["detail"]["Tags"]["breedline:version"]
#: What an account opened after Debugger closed might plausibly be told (nobody knows the exact text).
CLOSED = "Amazon SageMaker Debugger is not available for new customers. Remove DebugHookConfig and DebugRuleConfigurations."


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


# -- the classifier --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ValidationException", CLOSED),
        ("ValidationException", "DebugHookConfig is not supported for this account"),
        ("ValidationException", "The value for RuleEvaluatorImage is not valid for the Debugger rule LossNotDecreasing"),
        ("ValidationException", "ProfilerConfig: SageMaker Profiler has been discontinued"),
        ("AccessDeniedException", "User is not authorized to use SageMaker Debugger rules"),
        ("AccessDeniedException", "Access denied for rule evaluation jobs"),
    ],
)
def test_debugger_refusals_are_recognised(code, message):
    assert debugger_refusal(code, message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ResourceLimitExceeded", "The account-level service limit 'ml.g4dn.xlarge for training job usage' is 0"),
        ("ResourceLimitExceeded", "Debugger rule instance limit reached"),  # a quota, not a refusal
        ("ValidationException", "Instance type ml.p9.xlarge is not supported"),
        ("AccessDeniedException", "User is not authorized to perform: iam:PassRole"),
        ("ThrottlingException", "Rate exceeded for the Debugger API"),
        ("ResourceInUse", "Training job breedline-x-final already exists"),
        ("ValidationException", ""),
    ],
)
def test_other_errors_are_not_debugger_refusals(code, message):
    assert not debugger_refusal(code, message)


# -- auto through a refusal --------------------------------------------------------------------
def _described_tuning() -> dict:
    best = f"{TUNING}-001-0a1b2c3d"
    return {
        **completed_tuning(TUNING, best, {"batch_size": "32", "learning_rate": "0.01"}),
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{TUNING}",
        "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
        "CreationTime": "2026-11-25T17:52:40Z",
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
    }


class Recorder:
    """Stubber's expected_params cannot look inside a request, so record each one as botocore serialises it."""

    def __init__(self, client) -> None:
        self.requests: list[dict] = []
        client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob", self.record)

    def record(self, params, **_) -> None:
        validate_request("sagemaker", "CreateTrainingJob", params)
        self.requests.append(params)


def _stubbed(monkeypatch, mode: str):
    monkeypatch.setenv("BREEDLINE_DEBUGGER", mode)
    real = boto3.client("sagemaker", region_name="us-east-1")
    stub = Stubber(real)
    stub.add_response("describe_hyper_parameter_tuning_job", _described_tuning(), {"HyperParameterTuningJobName": TUNING})
    return real, stub, Recorder(real)


def test_auto_retries_once_as_in_job_after_a_debugger_refusal_and_alerts_once(client, aws, env, monkeypatch):
    real, stub, recorder = _stubbed(monkeypatch, "auto")
    stub.add_client_error("create_training_job", service_error_code="ValidationException", service_message=CLOSED,
                          http_status_code=400)
    stub.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{FINAL}"})
    with stub:
        aws_clients.set_client("sagemaker", real)
        result = invoke(client, "on_tuning_state_change", TUNING_EVENT)
        stub.assert_no_pending_responses()
        # a duplicate event: the step is done, nothing is sent or alerted again
        invoke(client, "on_tuning_state_change", TUNING_EVENT)
    assert result["outcome"] == "started" and result["debugger"] == "in_job"
    first, second = recorder.requests
    assert first["HyperParameters"]["debugger"] == "service" and "DebugHookConfig" in first
    assert second["HyperParameters"]["debugger"] == "in_job"
    assert not {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"} & set(second)
    assert second["ProfilerConfig"] == {"DisableProfiler": True}
    assert {k: v for k, v in first.items() if k not in ("HyperParameters", "DebugHookConfig", "DebugRuleConfigurations",
                                                         "ProfilerConfig", "ProfilerRuleConfigurations")} == \
        {k: v for k, v in second.items() if k not in ("HyperParameters", "ProfilerConfig")}
    (alert,) = aws.alerts()
    assert FINAL in alert["subject"] and "in_job" in alert["subject"]
    assert alert["message"]["training_job"] == FINAL and alert["message"]["error"] == CLOSED
    assert alert["message"]["error_code"] == "ValidationException"
    record = state(env).job(FINAL)
    assert record["status"] == "InProgress" and record["debugger"] == "in_job"


def test_auto_without_a_refusal_runs_service_and_records_it(client, aws, env, monkeypatch):
    real, stub, recorder = _stubbed(monkeypatch, "auto")
    stub.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{FINAL}"})
    with stub:
        aws_clients.set_client("sagemaker", real)
        result = invoke(client, "on_tuning_state_change", TUNING_EVENT)
        stub.assert_no_pending_responses()
    assert result["debugger"] == "service" and len(recorder.requests) == 1
    assert state(env).job(FINAL)["debugger"] == "service"
    assert aws.alerts() == []


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [
        ("auto", "ResourceLimitExceeded", "The account-level service limit 'ml.g4dn.xlarge for spot training job usage' is 0"),
        ("auto", "ValidationException", "Instance type ml.g4dn.xlarge is not supported in this region"),
        ("service", "ValidationException", CLOSED),  # only auto falls back; service fails as configured
    ],
)
def test_other_refusals_do_not_retry(client, aws, env, monkeypatch, mode, code, message):
    real, stub, recorder = _stubbed(monkeypatch, mode)
    stub.add_client_error("create_training_job", service_error_code=code, service_message=message, http_status_code=400)
    with stub:
        aws_clients.set_client("sagemaker", real)
        with pytest.raises(lambda_runtime.PipelineError, match=message[:20]):
            invoke(client, "on_tuning_state_change", TUNING_EVENT)
        stub.assert_no_pending_responses()  # one CreateTrainingJob, no second
    assert len(recorder.requests) == 1
    (alert,) = aws.alerts()
    assert alert["subject"].startswith(f"Breedline: could not start training job {FINAL}")
    assert state(env).job(FINAL) is None


# -- rule results ------------------------------------------------------------------------------
def _with_rules(accuracy: float, issues: dict[str, float], statuses: list[dict] | None = None, mode: str = "in_job") -> dict:
    described = completed_training(FINAL, accuracy)
    described["FinalMetricDataList"] += [{"MetricName": rule_metric_name(r), "Value": v} for r, v in issues.items()]
    described["HyperParameters"] = {"debugger": mode}
    if statuses is not None:
        described["DebugRuleEvaluationStatuses"] = statuses
    return described


def test_triggered_rules_read_metric_lines_and_service_statuses():
    assert triggered_rules(_with_rules(0.9, {r: 0.0 for r in RULE_NAMES})) == []
    assert triggered_rules(_with_rules(0.9, {"Overfit": 1.0, "LossNotDecreasing": 1.0, "Overtraining": 0.0})) == [
        "LossNotDecreasing", "Overfit"]
    statuses = [
        {"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "IssuesFound"},
        {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "NoIssuesFound"},
        {"RuleConfigurationName": "PoorWeightInitialization", "RuleEvaluationStatus": "InProgress"},
    ]
    assert triggered_rules(_with_rules(0.9, {}, statuses, mode="service")) == ["VanishingGradient"]
    assert triggered_rules(completed_training(FINAL, 0.9)) == []  # an off job: nothing to read, nothing found


def _seed(env) -> None:
    state(env).save_version("dog-breeds", VERSION, ["beagle", "corgi", "husky"], 27, TUNING)


def test_triggered_rules_alert_each_rule_and_still_deploy_by_default(client, sagemaker, aws, env, caplog):
    _seed(env)
    sagemaker.training[FINAL] = _with_rules(0.83, {"LossNotDecreasing": 1.0, "Overfit": 1.0, "Overtraining": 0.0})
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "deployed"
    alerts = aws.alerts()
    assert sorted(a["message"]["rule"] for a in alerts) == ["LossNotDecreasing", "Overfit"]
    for alert in alerts:
        assert alert["message"]["rule"] in alert["subject"] and FINAL[:40] in alert["subject"]
        assert alert["message"]["training_job"] == FINAL and alert["message"]["blocks_deployment"] is False
    assert "Debugger rule found an issue" in caplog.text


def test_triggered_rules_block_the_deployment_when_configured(client, sagemaker, aws, env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_RULES_BLOCK_DEPLOY", "true")
    _seed(env)
    statuses = [{"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "IssuesFound"}]
    sagemaker.training[FINAL] = _with_rules(0.83, {}, statuses, mode="service")
    result = invoke(client, "on_training_state_change", load_event("training_completed.json"))
    assert result["outcome"] == "rules_blocked" and "VanishingGradient" in result["reason"]
    assert not sagemaker.requests("CreateModel") and state(env).live_model() is None
    record = state(env).job(FINAL)
    assert record["reason"].startswith("not deployed: Debugger rules found issues: VanishingGradient")
    (alert,) = aws.alerts()
    assert alert["message"]["rule"] == "VanishingGradient" and alert["message"]["blocks_deployment"] is True


def test_a_clean_job_deploys_with_the_block_setting_on(client, sagemaker, aws, env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_RULES_BLOCK_DEPLOY", "true")
    _seed(env)
    sagemaker.training[FINAL] = _with_rules(0.83, {r: 0.0 for r in RULE_NAMES})
    assert invoke(client, "on_training_state_change", load_event("training_completed.json"))["outcome"] == "deployed"
    assert aws.alerts() == []
