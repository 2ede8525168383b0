"""Least privilege, read from the packaged template (what CloudFormation would create)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name

from infra_helpers import REPO, as_list, iam_statements

from breedline.deploy.functions import FUNCTIONS, policy_document
from chalicelib.batch import BATCH_PREFIX, RESULTS_PREFIX

#: Actions with no resource-level permissions in IAM: "*" is the narrowest resource there is.
NO_RESOURCE_LEVEL = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",  # scoped by the cloudwatch:namespace condition instead
}
#: SageMaker needs AddTags to create any resource with Tags (every Create* of the app tags).
IMPLIED_SAGEMAKER = {"sagemaker:AddTags"}
#: Every Lambda role the function table can make (a row without an app function makes none).
LAMBDA_ROLES = tuple(f.role for f in FUNCTIONS)


def _text(value: Any) -> str:
    """An ARN as written: a literal or the string inside Fn::Sub."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return json.dumps(value) if isinstance(value, dict) else str(value)


def test_no_wildcard_actions_anywhere(template: dict[str, Any]) -> None:
    statements = iam_statements(template)
    assert statements, "no IAM statements found"
    for role, st in statements:
        for action in as_list(st["Action"]):
            assert action != "*", (role, st)
            service, _, name = action.partition(":")
            assert "*" not in name, f"{role}: wildcard action {action}"
            assert action != "sagemaker:*"


def test_resource_star_only_where_nothing_narrower_exists(template: dict[str, Any]) -> None:
    for role, st in iam_statements(template):
        if st["Effect"] != "Allow":
            continue
        if "*" in as_list(st.get("Resource", [])):
            extra = set(as_list(st["Action"])) - NO_RESOURCE_LEVEL
            assert not extra, f"{role}: Resource '*' for {extra}"
        if "cloudwatch:PutMetricData" in as_list(st["Action"]):
            assert st["Condition"]["StringLike"]["cloudwatch:namespace"] == "/aws/sagemaker/*"


def test_lambda_roles_carry_their_rows_policy(template: dict[str, Any]) -> None:
    """Each function's role has exactly the policy its row of breedline/deploy/functions.py writes."""
    packaged = [f for f in FUNCTIONS if f.logical_id in template["Resources"]]
    assert len(packaged) >= 5
    for function in packaged:
        role = template["Resources"][function.role]
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        assert documents == [policy_document(function, "datasets/")], function.name
        assert "ManagedPolicyArns" not in role["Properties"], function.name


def test_pass_role_only_the_execution_role_only_to_sagemaker(template: dict[str, Any]) -> None:
    found = 0
    for role, st in iam_statements(template):
        if "iam:PassRole" not in as_list(st["Action"]):
            continue
        found += 1
        assert as_list(st["Action"]) == ["iam:PassRole"], role
        resources = [_text(r) for r in as_list(st["Resource"])]
        assert resources == ["arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AWS::StackName}-sagemaker"]
        assert st["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    # only the functions that create SageMaker jobs or models pass the role
    assert found == len({"OnDatasetUploadRole", "CheckQuietDatasetsRole", "OnTuningStateChangeRole", "OnEndpointStateChangeRole",
                         "OnTrainingStateChangeRole"})
    # ... and that role is the one the template creates and hands to the app.
    execution = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    assert execution["RoleName"] == {"Fn::Sub": "${AWS::StackName}-sagemaker"}
    trust = execution["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]


def _is_constant(node: ast.AST) -> bool:
    """``_WORDS.search(...)`` is a module constant's (a compiled regex) method, never a boto3 client's."""
    return isinstance(node, ast.Name) and node.id.lstrip("_").isupper()


def _sagemaker_operations_the_code_uses() -> set[str]:
    """IAM actions of every SageMaker (and runtime) operation named in app.py and chalicelib/."""
    session = botocore.session.get_session()
    operations: dict[str, str] = {}
    for service in ("sagemaker", "sagemaker-runtime"):
        for op in session.get_service_model(service).operation_names:
            operations[xform_name(op)] = op
    used = set()
    files = [REPO / "chalice_app" / "app.py", *sorted((REPO / "chalice_app" / "chalicelib").glob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in operations and not _is_constant(node.value):
                used.add(f"sagemaker:{operations[node.attr]}")
    return used


def test_lambda_gets_exactly_the_sagemaker_actions_it_calls(template: dict[str, Any]) -> None:
    used = _sagemaker_operations_the_code_uses()
    assert "sagemaker:CreateHyperParameterTuningJob" in used and "sagemaker:InvokeEndpoint" in used
    granted = {
        a
        for role, st in iam_statements(template)
        if role in LAMBDA_ROLES
        for a in as_list(st["Action"])
        if a.startswith("sagemaker:")
    }
    assert granted == used | IMPLIED_SAGEMAKER


def test_sagemaker_resources_are_scoped_to_the_name_prefix(template: dict[str, Any]) -> None:
    for role, st in iam_statements(template):
        if not any(a.startswith("sagemaker:") for a in as_list(st["Action"])):
            continue
        for resource in as_list(st["Resource"]):
            arn = _text(resource)
            assert arn.startswith("arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"), arn
            assert arn.split(":", 5)[5].split("/", 1)[1].startswith("${AWS::StackName}-"), arn


BUCKET_ARN = "arn:${AWS::Partition}:s3:::${AWS::StackName}-data-${AWS::AccountId}-${AWS::Region}"


def _s3_grants(template: dict[str, Any], roles: tuple[str, ...]) -> dict[str, set[str]]:
    grants: dict[str, set[str]] = {}
    for role, st in iam_statements(template):
        if role not in roles:
            continue
        for action in as_list(st["Action"]):
            if action.startswith("s3:"):
                for resource in as_list(st["Resource"]):
                    grants.setdefault(action, set()).add(_text(resource))
                if action == "s3:ListBucket":
                    assert st["Condition"]["StringLike"]["s3:prefix"], role
    return grants


def test_lambda_s3_access_is_limited_to_the_data_prefix(template: dict[str, Any]) -> None:
    """Data sets are only read; batches are listed, and only their results folder is read and written."""
    grants = _s3_grants(template, LAMBDA_ROLES)
    assert grants == {
        "s3:ListBucket": {BUCKET_ARN},
        "s3:GetObject": {f"{BUCKET_ARN}/datasets/*", f"{BUCKET_ARN}/{RESULTS_PREFIX}*"},
        "s3:PutObject": {f"{BUCKET_ARN}/{RESULTS_PREFIX}*"},
    }
    prefixes = {p for role, st in iam_statements(template) if role in LAMBDA_ROLES and "s3:ListBucket" in as_list(st["Action"])
                for p in st["Condition"]["StringLike"]["s3:prefix"]}
    assert prefixes == {"datasets/*", f"{BATCH_PREFIX}*", f"{RESULTS_PREFIX}*"}


def test_the_grants_name_the_apps_batch_prefixes() -> None:
    from breedline.deploy import functions

    assert (functions.BATCH_PREFIX, functions.BATCH_RESULTS_PREFIX) == (BATCH_PREFIX, RESULTS_PREFIX)


def test_execution_role_reads_data_writes_output_logs_and_nothing_else(template: dict[str, Any]) -> None:
    grants = _s3_grants(template, ("SageMakerExecutionRole",))
    assert grants["s3:GetObject"] == {f"{BUCKET_ARN}/${{DataPrefix}}*", f"{BUCKET_ARN}/code/*", f"{BUCKET_ARN}/${{OutputPrefix}}*",
                                      f"{BUCKET_ARN}/{BATCH_PREFIX}*", f"{BUCKET_ARN}/{RESULTS_PREFIX}*"}
    assert grants["s3:PutObject"] == grants["s3:AbortMultipartUpload"] == {
        f"{BUCKET_ARN}/${{OutputPrefix}}*", f"{BUCKET_ARN}/{RESULTS_PREFIX}*"}
    assert set(grants) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    actions = {a for role, st in iam_statements(template) if role == "SageMakerExecutionRole" for a in as_list(st["Action"])}
    services = {a.split(":")[0] for a in actions}
    # logs + S3, plus pulling the three resolved images and the job metrics SageMaker publishes for the job.
    assert services == {"s3", "logs", "ecr", "cloudwatch"}
    for role, st in iam_statements(template):
        if role == "SageMakerExecutionRole" and "ecr:BatchGetImage" in as_list(st["Action"]):
            assert st["Resource"] == {"Ref": "EcrRepositoryArns"}
        if role == "SageMakerExecutionRole" and any(a.startswith("logs:") for a in as_list(st["Action"])):
            assert _text(st["Resource"]).endswith(":log-group:/aws/sagemaker/*")


def test_function_policies_use_only_pseudo_parameters() -> None:
    """So that the app packages and lints with or without the merge template."""
    import re

    for function in FUNCTIONS:
        text = json.dumps(policy_document(function, "datasets/"))
        names = re.findall(r"\$\{([^}]+)\}", text)
        assert names and all(name.startswith("AWS::") for name in names), function.name


def test_iam_check_would_catch_a_wildcard(template: dict[str, Any]) -> None:
    """The checks above are live: a widened copy of the policy fails them."""
    import copy

    import pytest

    widened = copy.deepcopy(template)
    widened["Resources"]["ApiHandlerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}
    )
    with pytest.raises(AssertionError):
        test_no_wildcard_actions_anywhere(widened)
    with pytest.raises(AssertionError):
        test_resource_star_only_where_nothing_narrower_exists(widened)


def test_sagemaker_operation_scan_sees_calls_by_reference() -> None:
    """``_create_once(sm.create_model, ...)`` passes the method without calling it: still found."""
    used = _sagemaker_operations_the_code_uses()
    assert {"sagemaker:CreateModel", "sagemaker:CreateEndpointConfig"} <= used




def test_dynamodb_actions_are_the_ones_the_state_store_and_powertools_call(template: dict[str, Any]) -> None:
    """StateStore's own calls (read from chalicelib/state.py) plus Powertools' idempotency persistence."""
    import aws_lambda_powertools.utilities.idempotency.persistence.dynamodb as powertools_ddb

    session = botocore.session.get_session()
    operations = {xform_name(op): op for op in session.get_service_model("dynamodb").operation_names}
    used = set()
    for path in (REPO / "chalice_app" / "chalicelib" / "state.py", Path(powertools_ddb.__file__)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in operations and node.attr != "exceptions":
                used.add(f"dynamodb:{operations[node.attr]}")
    granted = {a for role, st in iam_statements(template) if role in LAMBDA_ROLES for a in as_list(st["Action"])
               if a.startswith("dynamodb:")}
    assert granted == used, (granted - used, used - granted)
