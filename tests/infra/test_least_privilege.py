"""Issue 15, items 17 and 19: no grant reaches an overlapping stack; every log group expires; the API is throttled.

Read from the packaged template (what CloudFormation would create), and the
deploy tool's refusal of overlapping stack names checked against moto.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from typing import Any

import pytest
from infra_helpers import as_list, iam_statements

from breedline import deploy
from breedline.deploy.stack import breedline_stacks
from breedline.deploy.stage import STAGE_TAG, check_no_overlap, names_overlap
from breedline.deploy.template import LOG_RETENTION_PARAMETER, name_functions_and_log_groups

#: Values for the non-stack placeholders of the policies' ARNs.
PLACEHOLDERS = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
                "DataPrefix": "datasets/", "OutputPrefix": "jobs/"}


def _grants(template: dict[str, Any], stack: str) -> list[str]:
    """Every Allow resource ARN of every role, with ``${AWS::StackName}`` set to ``stack``."""
    values = {**PLACEHOLDERS, "AWS::StackName": stack}
    arns = []
    for _role, st in iam_statements(template):
        if st["Effect"] != "Allow":
            continue
        for resource in as_list(st.get("Resource", [])):
            if isinstance(resource, dict) and isinstance(resource.get("Fn::Sub"), str):
                arns.append(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], resource["Fn::Sub"]))
    return arns


def _reaches_across(template: dict[str, Any], mine: str, other: str) -> list[tuple[str, str]]:
    """(my grant, the other stack's resource) pairs where my grant's pattern matches a name of the other stack."""
    theirs = [arn.replace("*", "x") for arn in _grants(template, other)]  # concrete names of the other stack
    # Grants without the stack name (ECR images, SageMaker's own /aws/sagemaker/* log groups) are the same
    # for every stack by design; SageMaker names are guarded by the deploy tool's refusal instead.
    scoped = set(_grants(template, mine)) - set(_grants(template, other))
    return [(p, t) for p in sorted(scoped) for t in theirs
            if fnmatch.fnmatchcase(t, p) and ":sagemaker:" not in p]


def test_no_grant_outside_sagemaker_reaches_a_stack_named_with_a_dash_extension(template: dict[str, Any]) -> None:
    """Probe of item 19: breedline-prod's roles against breedline-prod-eu's tables, alarms, logs, topic, bucket, role."""
    assert _grants(template, "breedline-prod")
    assert _reaches_across(template, "breedline-prod", "breedline-prod-eu") == []
    assert _reaches_across(template, "breedline-prod-eu", "breedline-prod") == []


def test_the_probe_finds_a_stack_wide_wildcard(template: dict[str, Any]) -> None:
    """The probe is live: the old ``table/${AWS::StackName}-*`` grant is reported."""
    widened = copy.deepcopy(template)
    widened["Resources"]["ApiHandlerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": "dynamodb:GetItem",
         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${AWS::StackName}-*"}})
    found = _reaches_across(widened, "breedline-prod", "breedline-prod-eu")
    assert ("arn:aws:dynamodb:us-east-1:123456789012:table/breedline-prod-*",
            "arn:aws:dynamodb:us-east-1:123456789012:table/breedline-prod-eu-state") in found


@pytest.mark.parametrize("a, b, overlap", [
    ("breedline-prod", "breedline-prod-eu", True),
    ("breedline-prod-eu", "breedline-prod", True),
    ("breedline-prod", "breedline-prod-eu-2", True),
    ("breedline-prod", "breedline-prodeu", False),
    ("breedline-prod", "breedline-pro", False),
    ("breedline-prod", "breedline-prod", False),  # the same stack: an update
    ("breedline-dev", "breedline-prod", False),
])
def test_overlap_is_a_dash_extension_of_the_other_name(a: str, b: str, overlap: bool) -> None:
    assert names_overlap(a, b) is overlap


def test_an_overlapping_name_is_refused_with_the_clashing_stack() -> None:
    with pytest.raises(deploy.DeployError, match=r"'breedline-prod' overlaps the Breedline stack\(s\) breedline-prod-eu"):
        check_no_overlap("breedline-prod", ["breedline-dev", "breedline-prod-eu"])
    check_no_overlap("breedline-prod", ["breedline-prod", "breedline-prodeu"])


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield boto3.session.Session(region_name="us-east-1")


def test_deploy_refuses_a_name_overlapping_a_live_breedline_stack(aws: Any, tmp_path: Any) -> None:
    """Against moto: only stacks tagged by make deploy count, and the refusal comes before anything is built."""
    cfn = aws.client("cloudformation")
    body = '{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}'
    cfn.create_stack(StackName="breedline-dev-eu", TemplateBody=body, Tags=[{"Key": STAGE_TAG, "Value": "dev"}])
    cfn.create_stack(StackName="breedline-dev-other", TemplateBody=body)  # not Breedline's: ignored
    assert breedline_stacks(cfn) == ["breedline-dev-eu"]
    out = tmp_path / "out"
    with pytest.raises(deploy.DeployError, match="overlaps the Breedline stack"):
        deploy.deploy("dev", region="us-east-1", session=aws, out_dir=out, log=lambda _msg: None)
    assert not out.exists()


# --------------------------------------------------------------------------- item 17: logs and throttling


def _functions(template: dict[str, Any]) -> list[str]:
    return [k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]


def test_every_function_has_its_exact_name_and_a_log_group_with_the_retention(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert len(_functions(template)) >= 5
    for fn in _functions(template):
        assert resources[fn]["Properties"]["FunctionName"] == {"Fn::Sub": "${AWS::StackName}-" + fn}
        group = resources[f"{fn}LogGroup"]
        assert group["Properties"] == {"LogGroupName": {"Fn::Sub": "/aws/lambda/${AWS::StackName}-" + fn},
                                       "RetentionInDays": {"Ref": LOG_RETENTION_PARAMETER}}
        assert f"{fn}LogGroup" in resources[fn]["DependsOn"]  # no invocation can create it first


def test_the_lambdas_may_write_only_their_own_log_groups(template: dict[str, Any]) -> None:
    """Each function its own group, not the other functions' (one role per function, item 15)."""
    for fn in _functions(template):
        role = template["Resources"][fn]["Properties"]["Role"]["Fn::GetAtt"][0]
        role_only = {"Resources": {role: template["Resources"][role]}}
        logs = {a for a in _grants(role_only, "breedline-prod") if ":logs:" in a}
        assert logs == {f"arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/breedline-prod-{fn}:*"}, role
    actions = {a for role, st in iam_statements(template) if role.endswith("Role") and role != "SageMakerExecutionRole"
               for a in as_list(st["Action"])}
    assert "logs:CreateLogGroup" not in actions  # the stack creates them


def test_every_log_group_expires_after_the_parameter_30_days_by_default(template: dict[str, Any]) -> None:
    assert template["Parameters"][LOG_RETENTION_PARAMETER]["Default"] == 30
    groups = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert "ApiAccessLogGroup" in groups and len(groups) == len(_functions(template)) + 1
    for logical_id, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": LOG_RETENTION_PARAMETER}, logical_id


def test_the_api_stage_is_throttled_in_every_auth_mode_and_access_logged(expanded: dict[str, Any]) -> None:
    stages = [r for r in expanded["Resources"].values() if r["Type"] == "AWS::ApiGateway::Stage"]
    assert len(stages) == 1
    stage = stages[0]
    assert "Condition" not in stage
    (method,) = stage["Properties"]["MethodSettings"]
    assert method["ResourcePath"] == "/*" and method["HttpMethod"] == "*"
    assert method["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert method["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    access = stage["Properties"]["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert "$context.requestId" in access["Format"] and "$context.status" in access["Format"]


def test_the_account_logs_role_outlives_the_stack(template: dict[str, Any]) -> None:
    """Deleting API Gateway's account-wide role would stop every other API's logs: it is retained."""
    resources = template["Resources"]
    for logical_id in ("ApiGatewayCloudWatchRole", "ApiGatewayAccount"):
        assert resources[logical_id]["DeletionPolicy"] == "Retain"
        assert resources[logical_id]["Condition"] == "CreateApiGatewayLogsRole"
    assert "ApiLogsRoleReady" in as_list(resources["RestAPI"]["DependsOn"])


def test_a_template_that_already_has_the_log_group_id_is_refused() -> None:
    template = {"Resources": {"Fn": {"Type": "AWS::Serverless::Function", "Properties": {}},
                              "FnLogGroup": {"Type": "AWS::SNS::Topic"}}}
    with pytest.raises(deploy.DeployError, match="FnLogGroup"):
        name_functions_and_log_groups(template)
