"""Issue 15, items 6 and 15: one least-privilege role per function; no failed event vanishes.

Read from the packaged template (what CloudFormation would create). The
expected calls below are written from the handlers' code, independently of
breedline/deploy/functions.py, so widening a row fails here; tests/app
records every call each handler makes under moto and fails on one its row
does not grant, so narrowing a row too far fails there.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from infra_helpers import as_list

from breedline import deploy
from breedline.deploy.functions import FUNCTIONS, by_name
from breedline.deploy.template import add_failure_queues, check_every_function_has_a_row

LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
STATE = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
IDEMPOTENCY = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
DATA_SETS = {"s3:ListBucket", "s3:GetObject"}
TUNING = {"sagemaker:CreateHyperParameterTuningJob", "sagemaker:AddTags", "iam:PassRole"}
#: The cost guard (chalicelib/budget.py): stop a superseded tuning job, ask about one whose end was lost.
COST_GUARD = {"sagemaker:DescribeHyperParameterTuningJob", "sagemaker:StopHyperParameterTuningJob"}
#: Deploying a model: the training handler after its gate, the endpoint handler re-driving the queue.
DEPLOY = {"sns:Publish", "iam:PassRole", "cloudwatch:DescribeAlarms", "dynamodb:DeleteItem"} | {
    "sagemaker:CreateModel",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:UpdateEndpoint",
    "sagemaker:DescribeEndpoint",
    "sagemaker:AddTags",
}
#: A batch's marker (chalicelib/batch_jobs.py): list it, write its manifest, start its transform job (no PassRole).
START_BATCH = {"s3:PutObject", "sagemaker:CreateTransformJob", "sagemaker:AddTags"}
#: What each handler's code calls (chalicelib/api.py, uploads.py, jobs.py, deployment.py, state.py,
#: lambda_runtime.py), plus its own log group and, for the event handlers, its failure queue.
EXPECTED = {
    "api_handler": {"sagemaker:InvokeEndpoint", "sagemaker:DescribeEndpoint", "dynamodb:GetItem"},
    "on_dataset_upload": DATA_SETS | STATE | IDEMPOTENCY | TUNING | COST_GUARD | START_BATCH | {"sns:Publish"},
    "check_quiet_datasets": DATA_SETS | STATE | {"dynamodb:Scan"} | IDEMPOTENCY | TUNING | COST_GUARD | {"sns:Publish"},
    "on_tuning_state_change": STATE
    | IDEMPOTENCY
    | TUNING
    | {"sns:Publish", "iam:PassRole"}
    | {
        "sagemaker:DescribeHyperParameterTuningJob",
        "sagemaker:ListTags",
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:AddTags",
    },
    "on_training_state_change": STATE
    | IDEMPOTENCY
    | DEPLOY
    | {"sagemaker:DescribeTrainingJob", "sagemaker:ListTags"},
    # LIVE from DescribeEndpoint; a queued deployment re-driven with the deployment's own calls
    "on_endpoint_state_change": STATE | {"dynamodb:DeleteItem"} | DEPLOY,
    # a transform job's end (chalicelib/batch_events.py): read its manifest and outputs, write the results
    "on_transform_state_change": STATE | IDEMPOTENCY | {"sns:Publish"} | {
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "sagemaker:DescribeTransformJob", "sagemaker:ListTags"},
}


def _packaged(template: dict[str, Any]) -> list[Any]:
    return [f for f in FUNCTIONS if f.logical_id in template["Resources"]]


def _statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [
        st
        for policy in template["Resources"][role]["Properties"]["Policies"]
        for st in as_list(policy["PolicyDocument"]["Statement"])
    ]


def _allowed(template: dict[str, Any], role: str) -> set[str]:
    return {a for st in _statements(template, role) if st["Effect"] == "Allow" for a in as_list(st["Action"])}


def test_every_function_has_its_own_role(template: dict[str, Any]) -> None:
    functions = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
    roles = [template["Resources"][fn]["Properties"]["Role"] for fn in functions]
    assert len(functions) >= 5 and len({str(r) for r in roles}) == len(functions)
    assert {r["Fn::GetAtt"][0] for r in roles} == {f.role for f in _packaged(template)}


def test_each_role_allows_exactly_the_calls_of_its_handler(template: dict[str, Any]) -> None:
    """(a) nothing beyond what the handler calls, (b) everything it calls."""
    assert set(EXPECTED) == {f.name for f in FUNCTIONS}
    for function in _packaged(template):
        queue = {"sqs:SendMessage"} if function.asynchronous else set()
        assert _allowed(template, function.role) == EXPECTED[function.name] | LOGS | queue, function.name


def test_the_api_reads_only_the_endpoint_and_the_live_model_and_job_items(template: dict[str, Any]) -> None:
    api = by_name()["api_handler"]
    statements = {st["Sid"]: st for st in _statements(template, api.role)}
    assert set(statements) == {"TheEndpoint", "ReadLiveModelAndLatestJobs", "OwnLogs"}
    endpoint = statements["TheEndpoint"]
    assert sorted(endpoint["Action"]) == ["sagemaker:DescribeEndpoint", "sagemaker:InvokeEndpoint"]
    assert endpoint["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
        "endpoint/${AWS::StackName}-classifier"
    }
    read = statements["ReadLiveModelAndLatestJobs"]
    assert read["Action"] == ["dynamodb:GetItem"]
    assert read["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
        "table/${AWS::StackName}-state"
    }
    # predict's model name and /labels read LIVE; /status LATEST and the JOB# items it names
    assert read["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["LIVE", "LATEST", "JOB#*"]}
    }


def test_every_event_handler_keeps_its_failures_in_its_own_encrypted_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    asynchronous = [f for f in _packaged(template) if f.asynchronous]
    assert {f.logical_id for f in asynchronous} >= {
        "OnDatasetUpload",
        "CheckQuietDatasets",
        "OnTuningStateChange",
        "OnTrainingStateChange",
        "OnTransformStateChange",
    }
    queues = {k for k, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    assert queues == {f.queue for f in asynchronous}
    for function in asynchronous:
        queue = resources[function.queue]["Properties"]
        assert queue["QueueName"] == {"Fn::Sub": "${AWS::StackName}-" + function.logical_id + "-failures"}
        assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert queue["KmsMasterKeyId"] == {
            "Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]
        }
        assert queue["SqsManagedSseEnabled"] == {"Fn::If": ["HasKmsKey", {"Ref": "AWS::NoValue"}, True]}
        invoke = resources[f"{function.logical_id}EventInvokeConfig"]["Properties"]
        assert invoke["FunctionName"] == {"Ref": function.logical_id} and invoke["Qualifier"] == "$LATEST"
        assert invoke["DestinationConfig"] == {
            "OnFailure": {"Destination": {"Fn::GetAtt": [function.queue, "Arn"]}}
        }
        assert invoke["MaximumRetryAttempts"] == 2
        (send,) = [
            st for st in _statements(template, function.role) if "sqs:SendMessage" in as_list(st["Action"])
        ]
        assert send["Resource"] == {
            "Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:"
            "${AWS::StackName}-" + function.logical_id + "-failures"
        }
    api = by_name()["api_handler"]
    assert f"{api.logical_id}EventInvokeConfig" not in resources  # synchronous: API Gateway gets the error


def test_a_message_in_any_failure_queue_raises_an_alarm_to_the_alert_topic(template: dict[str, Any]) -> None:
    for function in (f for f in _packaged(template) if f.asynchronous):
        alarm = template["Resources"][f"{function.queue}Alarm"]["Properties"]
        assert alarm["Namespace"] == "AWS/SQS" and alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert alarm["Dimensions"] == [
            {"Name": "QueueName", "Value": {"Fn::GetAtt": [function.queue, "QueueName"]}}
        ]
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
        assert alarm["Statistic"] == "Maximum" and alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
        assert f"redrive --handler {function.name}" in alarm["AlarmDescription"]


def test_the_handler_errors_alarm_watches_every_function_the_api_included(template: dict[str, Any]) -> None:
    metrics = template["Resources"]["HandlerErrorsAlarm"]["Properties"]["Metrics"]
    watched = {
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for m in metrics if "MetricStat" in m
    }
    functions = {k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert "APIHandler" in watched and watched == functions
    (total,) = [m for m in metrics if m.get("ReturnData")]
    assert all(f"FILL({m['Id']}, 0)" in total["Expression"] for m in metrics if "MetricStat" in m)


def test_every_lambda_role_may_use_the_customer_key(template: dict[str, Any]) -> None:
    roles = template["Resources"]["CustomerKeyUse"]["Properties"]["Roles"]
    assert {r["Ref"] for r in roles} == {"SageMakerExecutionRole"} | {f.role for f in _packaged(template)}


def test_a_function_without_a_row_is_refused(template: dict[str, Any]) -> None:
    extra = copy.deepcopy(template)
    extra["Resources"]["OnSomethingNew"] = {"Type": "AWS::Serverless::Function", "Properties": {}}
    with pytest.raises(deploy.DeployError, match="OnSomethingNew have no row"):
        check_every_function_has_a_row(extra)
    check_every_function_has_a_row(template)


def test_failure_queues_are_added_once() -> None:
    template = {
        "Resources": {
            "OnDatasetUpload": {"Type": "AWS::Serverless::Function", "Properties": {}},
            "OnDatasetUploadFailures": {"Type": "AWS::SQS::Queue"},
        }
    }
    with pytest.raises(deploy.DeployError, match="OnDatasetUploadFailures"):
        add_failure_queues(template)
