"""deploy -> redeploy -> destroy -> deploy again -> destroy, against moto's CloudFormation.

moto has no SAM transform, so the test expands SAM locally with the same
``aws-sam-translator`` AWS runs, then lets moto create every resource type it
supports. The types it cannot create are recorded (and listed in docs/aws.md).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from breedline import deploy
from infra_helpers import (
    MOTO_CANNOT_CREATE,
    REPO,
    bucket_policy_with_tls_condition,
    change_sets_refresh_outputs,
    expand_for_moto,
)

REGION = "eu-west-1"
STACK = "breedline-dev"
ACCOUNT = "123456789012"
DATA_BUCKET = f"{STACK}-data-{ACCOUNT}-{REGION}"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    bucket_policy_with_tls_condition(monkeypatch)
    change_sets_refresh_outputs(monkeypatch)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def _resources(session: Any) -> dict[str, dict[str, Any]]:
    cfn = session.client("cloudformation")
    return {r["LogicalResourceId"]: r for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}


def _pipeline_made_an_endpoint(session: Any) -> None:
    """What the Lambda does after a good model: model, endpoint config, endpoint (plus a foreign one)."""
    sm = session.client("sagemaker")
    role = f"arn:aws:iam::{ACCOUNT}:role/{STACK}-sagemaker"
    for name in (f"{STACK}-digits-1a2b3c4d-final", "someone-elses-model"):
        sm.create_model(ModelName=name, ExecutionRoleArn=role,
                        PrimaryContainer={"Image": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"})
        sm.create_endpoint_config(EndpointConfigName=f"{name}-cfg", ProductionVariants=[
            {"VariantName": name, "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=f"{STACK}-classifier", EndpointConfigName=f"{STACK}-digits-1a2b3c4d-final-cfg")
    sm.create_endpoint(EndpointName="someone-elses-endpoint", EndpointConfigName="someone-elses-model-cfg")


def test_deploy_redeploy_destroy_in_moto(aws: Any, tmp_path: Path, quiet_moto_warnings: None) -> None:
    unsupported: set[str] = set()
    expand = expand_for_moto(REGION, unsupported)
    logs: list[str] = []

    outputs = deploy.deploy("dev", region=REGION, session=aws, expand=expand, out_dir=tmp_path / "a", log=logs.append)

    cfn = aws.client("cloudformation")
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    assert outputs["DataBucketName"] == DATA_BUCKET
    assert re.match(rf"https://\w+\.execute-api\.{REGION}\.amazonaws\.com/api/", outputs["ApiUrl"])
    resources = _resources(aws)

    # Data bucket: encrypted; the code is uploaded. (moto's CloudFormation applies only
    # BucketEncryption and Tags of AWS::S3::Bucket: EventBridge notifications, the public
    # access block, ownership and lifecycle are checked in the template and by cfn-lint.)
    s3 = aws.client("s3")
    assert s3.get_bucket_encryption(Bucket=DATA_BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    code = [o["Key"] for o in s3.list_objects_v2(Bucket=DATA_BUCKET, Prefix="code/")["Contents"]]
    assert len(code) == 1 and code[0].endswith("/sourcedir.tar.gz")

    # Tables with the app's keys.
    ddb = aws.client("dynamodb")
    state = ddb.describe_table(TableName=f"{STACK}-state")["Table"]
    assert [k["AttributeName"] for k in state["KeySchema"]] == ["pk", "sk"]
    assert ddb.describe_table(TableName=f"{STACK}-idempotency")["Table"]["KeySchema"][0]["AttributeName"] == "id"

    # Lambdas get the stack's names and the resolved images.
    lam = aws.client("lambda")
    env = lam.get_function_configuration(FunctionName=resources["OnDatasetUpload"]["PhysicalResourceId"])["Environment"]["Variables"]
    assert env["BREEDLINE_BUCKET"] == DATA_BUCKET
    assert env["BREEDLINE_ROLE_ARN"] == f"arn:aws:iam::{ACCOUNT}:role/{STACK}-sagemaker"
    assert env["BREEDLINE_STATE_TABLE"] == f"{STACK}-state"
    assert env["BREEDLINE_NAME_PREFIX"] == STACK
    assert env["BREEDLINE_SOURCEDIR_URI"] == f"s3://{DATA_BUCKET}/{code[0]}"
    assert env["BREEDLINE_ALERT_TOPIC_ARN"] == f"arn:aws:sns:{REGION}:{ACCOUNT}:{STACK}-alerts"
    assert env["BREEDLINE_TRAINING_IMAGE"].startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:")

    # The S3 rule is on the default bus and matches our bucket's uploads.
    events = aws.client("events")
    rule = events.describe_rule(Name=resources["OnDatasetUploadOnDatasetUploadEvent"]["PhysicalResourceId"])
    pattern = json.loads(rule["EventPattern"])
    assert pattern["detail"]["bucket"]["name"] == [DATA_BUCKET]
    # Deliver two events through the stack's own rule (to an extra SQS target): ours matches, a foreign bucket's not.
    sqs = aws.client("sqs")
    queue = sqs.create_queue(QueueName="probe")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lambda_targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"] for t in lambda_targets] == [
        lam.get_function_configuration(FunctionName=resources["OnDatasetUpload"]["PhysicalResourceId"])["FunctionArn"]]
    # moto cannot invoke Lambda targets (it also offers every event to the schedule rule):
    # detach them and give our rule a queue to see what its pattern lets through.
    for other in events.list_rules()["Rules"]:
        targets = events.list_targets_by_rule(Rule=other["Name"])["Targets"]
        events.remove_targets(Rule=other["Name"], Ids=[t["Id"] for t in targets])
    events.put_targets(Rule=rule["Name"], Targets=[{"Id": "probe", "Arn": queue_arn}])
    for bucket in ("someone-else", DATA_BUCKET):
        detail = {"bucket": {"name": bucket}, "object": {"key": "datasets/dogs/train/a/1.jpg"}}
        events.put_events(Entries=[{"Source": "aws.s3", "DetailType": "Object Created", "Detail": json.dumps(detail)}])
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["detail"]["bucket"]["name"] for m in received] == [DATA_BUCKET]

    # Issues 15.17/15.19: every Lambda has its exact name and a stack-owned log group with the retention.
    for fn in ("APIHandler", "OnDatasetUpload", "OnTuningStateChange", "OnTrainingStateChange", "CheckQuietDatasets"):
        assert resources[fn]["PhysicalResourceId"] == f"{STACK}-{fn}"
    groups = {g["logGroupName"]: g.get("retentionInDays") for g in aws.client("logs").describe_log_groups()["logGroups"]}
    assert groups[f"/aws/lambda/{STACK}-OnDatasetUpload"] == 30
    assert groups[f"/aws/apigateway/{STACK}/access"] == 30

    # Execution role exists with its trust policy; the topic exists.
    iam = aws.client("iam")
    trust = iam.get_role(RoleName=f"{STACK}-sagemaker")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert aws.client("sns").get_topic_attributes(TopicArn=env["BREEDLINE_ALERT_TOPIC_ARN"])

    # Issue 15.6: each event handler's failure queue keeps its records 14 days.
    for fn in ("OnDatasetUpload", "OnTuningStateChange", "OnTrainingStateChange", "CheckQuietDatasets"):
        url = sqs.get_queue_url(QueueName=f"{STACK}-{fn}-failures")["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    # Issue 15.15: the API Lambda's role is its own and may only read.
    api_role = lam.get_function_configuration(FunctionName=f"{STACK}-APIHandler")["Role"].rsplit("/", 1)[1]
    upload_role = lam.get_function_configuration(FunctionName=f"{STACK}-OnDatasetUpload")["Role"].rsplit("/", 1)[1]
    assert api_role != upload_role
    (policy,) = iam.list_role_policies(RoleName=api_role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=api_role, PolicyName=policy)["PolicyDocument"]
    # moto stores what CloudFormation gave it, a Python dict written as text
    document = ast.literal_eval(document) if isinstance(document, str) else document
    actions = {a for st in document["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert actions == {"sagemaker:InvokeEndpoint", "sagemaker:DescribeEndpoint", "dynamodb:GetItem",
                       "logs:CreateLogStream", "logs:PutLogEvents"}

    # What moto could not check, recorded for the README.
    assert unsupported == {
        "AWS::ApiGateway::Account",
        "AWS::ApiGateway::ApiKey",
        "AWS::ApiGateway::Deployment",
        "AWS::ApiGateway::Stage",
        "AWS::ApiGateway::UsagePlan",
        "AWS::ApiGateway::UsagePlanKey",
        "AWS::ApplicationAutoScaling::ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        "AWS::CloudFormation::WaitConditionHandle",
        "AWS::CloudWatch::Alarm",
        "AWS::Lambda::EventInvokeConfig",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::Subscription",
    }
    docs = (REPO / "docs" / "aws.md").read_text()
    for resource_type in unsupported:
        assert resource_type in docs, f"docs/aws.md should say moto could not check {resource_type}"
    assert set(MOTO_CANNOT_CREATE) <= unsupported

    # Same code, same config: the second deploy finds nothing to change.
    logs.clear()
    deploy.deploy("dev", region=REGION, session=aws, expand=expand, out_dir=tmp_path / "a", log=logs.append)
    assert "no changes to deploy" in logs

    # Destroy: our endpoint, configs and models go, others' stay; the data bucket stays.
    _pipeline_made_an_endpoint(aws)
    done = deploy.destroy("dev", region=REGION, session=aws, log=logs.append)
    assert done["endpoints"] == [f"{STACK}-classifier"]
    assert done["models"] == [f"{STACK}-digits-1a2b3c4d-final"]
    assert done["endpoint_configs"] == [f"{STACK}-digits-1a2b3c4d-final-cfg"]
    sm = aws.client("sagemaker")
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["someone-elses-endpoint"]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["someone-elses-model"]
    buckets = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert buckets == {DATA_BUCKET}
    assert not [s for s in cfn.describe_stacks()["Stacks"] if s["StackName"] == STACK and s["StackStatus"] != "DELETE_COMPLETE"]

    # Deploying again reuses the kept bucket instead of failing on its name.
    deploy.deploy("dev", region=REGION, session=aws, expand=expand, out_dir=tmp_path / "a", log=logs.append)
    params = {p["ParameterKey"]: p["ParameterValue"] for p in cfn.describe_stacks(StackName=STACK)["Stacks"][0]["Parameters"]}
    assert params["DataBucketExists"] == "true"
    assert "DataBucket" not in _resources(aws)

    # Destroy with --delete-bucket removes the data too.
    deploy.destroy("dev", region=REGION, session=aws, delete_bucket=True, log=logs.append)
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_dry_run_is_offline_and_prints_the_change_set(tmp_path: Path) -> None:
    """``make deploy STAGE=dev --dry-run`` (make's own flag) packages and prints, with AWS unreachable.

    Only the package registry may be asked (for the Lambda's dependencies, and
    only when chalice's cache lacks them); every AWS endpoint points nowhere.
    """
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_DEFAULT_REGION="ap-southeast-2",
        AWS_ACCESS_KEY_ID="invalid",
        AWS_SECRET_ACCESS_KEY="invalid",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # any AWS call would fail here
        DEPLOY_ARGS=f"--out-dir {tmp_path}",
    )
    proc = subprocess.run(["make", "--no-print-directory", "deploy", "STAGE=dev", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.index("{")
    change_set, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    assert change_set["StackName"] == STACK and change_set["ChangeSetType"] == "CREATE"
    assert change_set["Region"] == "ap-southeast-2"
    added = {c["ResourceType"] for c in change_set["Changes"]}
    # expanded (post-SAM) types, as CloudFormation's change set lists them
    assert {"AWS::Lambda::Function", "AWS::Events::Rule", "AWS::ApiGateway::RestApi", "AWS::DynamoDB::Table",
            "AWS::S3::Bucket", "AWS::CloudWatch::Dashboard", "AWS::ApiGateway::UsagePlan"} <= added
    assert "AWS::ApplicationAutoScaling::ScalingPolicy" not in added  # no endpoint yet
    assert "AWS::SNS::Subscription" not in added  # no e-mail given
    params = {p["ParameterKey"]: p["ParameterValue"] for p in change_set["Parameters"]}
    assert params["ApiAuth"] == "api_key"
    assert "ap-southeast-2" in change_set["Images"]["BREEDLINE_TRAINING_IMAGE"]
    assert (tmp_path / "template.json").exists() and (tmp_path / "chalice" / "deployment.zip").exists()
    assert "nothing was sent to AWS" in proc.stderr


def test_a_rolled_back_stack_is_explained_not_updated(aws: Any, tmp_path: Path) -> None:
    """A first deploy that failed leaves ROLLBACK_COMPLETE; deploy says what to do instead of a traceback."""
    from moto.cloudformation.models import cloudformation_backends

    cfn = aws.client("cloudformation")
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(
        {"Resources": {"T": {"Type": "AWS::SNS::Topic"}}}))
    for stack in cloudformation_backends[ACCOUNT][REGION].stacks.values():
        stack.status = "ROLLBACK_COMPLETE"
    with pytest.raises(deploy.DeployError, match="ROLLBACK_COMPLETE.*make destroy"):
        deploy.deploy("dev", region=REGION, session=aws, out_dir=tmp_path, log=lambda _m: None)


def test_failure_events_name_the_failed_resources() -> None:
    from botocore.stub import Stubber

    cfn = boto3.client("cloudformation", region_name=REGION)
    events = [
        {"StackId": "s", "EventId": "1", "StackName": STACK, "Timestamp": "2026-11-25T18:00:00Z",
         "LogicalResourceId": "DataBucket", "ResourceType": "AWS::S3::Bucket", "ResourceStatus": "CREATE_FAILED",
         "ResourceStatusReason": "breedline-dev-data-... already exists"},
        {"StackId": "s", "EventId": "2", "StackName": STACK, "Timestamp": "2026-11-25T17:59:00Z",
         "LogicalResourceId": "AlertTopic", "ResourceType": "AWS::SNS::Topic", "ResourceStatus": "CREATE_COMPLETE"},
    ]
    with Stubber(cfn) as stub:
        stub.add_response("describe_stack_events", {"StackEvents": events}, {"StackName": STACK})
        lines = deploy.failure_events(cfn, STACK)
    assert lines == ["  DataBucket (AWS::S3::Bucket): breedline-dev-data-... already exists"]


def test_a_dry_run_without_a_region_packages_for_the_documented_default(monkeypatch, tmp_path: Path, capsys) -> None:
    """The README's ``make deploy STAGE=dev --dry-run`` names no region; a machine with none configured still works.

    A real deploy without a region is still refused: it would create a stack somewhere nobody chose.
    """
    from breedline.deploy import cli

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))

    assert cli._region(None, dry_run=True) == cli.DRY_RUN_REGION == "us-east-1"
    assert "no region configured" in capsys.readouterr().err
    assert cli._region("eu-west-1", dry_run=True) == "eu-west-1"
    with pytest.raises(deploy.DeployError, match="no region"):
        cli._region(None)
