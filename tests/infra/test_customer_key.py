"""Issue 15, item 18: an optional customer KMS key, off by default, read from the packaged template."""

from __future__ import annotations

from typing import Any

from infra_helpers import as_list

from breedline.deploy.template import evaluate_conditions

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
LAMBDA_ROLES = {"ApiHandlerRole", "OnDatasetUploadRole", "CheckQuietDatasetsRole", "OnTuningStateChangeRole",
                "OnTrainingStateChangeRole", "OnEndpointStateChangeRole", "OnTransformStateChangeRole"}


def test_the_key_is_off_by_default_and_on_with_the_parameter(template: dict[str, Any]) -> None:
    assert template["Parameters"]["KmsKeyArn"]["Default"] == ""
    assert evaluate_conditions(template, {})["HasKmsKey"] is False
    assert evaluate_conditions(template, {"KmsKeyArn": KEY})["HasKmsKey"] is True


def test_the_bucket_and_the_topic_use_the_key_when_given(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    sse = resources["DataBucket"]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == {"Fn::If": ["HasKmsKey", "aws:kms", "AES256"]}
    assert sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
        "Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]}
    assert resources["AlertTopic"]["Properties"]["KmsMasterKeyId"] == {
        "Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]}


def test_the_app_gets_the_key_for_the_jobs_and_the_endpoint(expanded: dict[str, Any]) -> None:
    """chalicelib/sagemaker_requests.py puts BREEDLINE_KMS_KEY_ID into VolumeKmsKeyId, KmsKeyId (tests/app/test_requests.py)."""
    functions = [k for k, r in expanded["Resources"].items() if r["Type"] == "AWS::Lambda::Function"]
    assert len(functions) >= 5
    for logical_id in functions:
        resource = expanded["Resources"][logical_id]
        env = resource["Properties"]["Environment"]["Variables"]
        assert env["BREEDLINE_KMS_KEY_ID"] == {"Ref": "KmsKeyArn"}, logical_id


def test_every_role_that_touches_encrypted_data_may_use_only_that_key(template: dict[str, Any]) -> None:
    policy = template["Resources"]["CustomerKeyUse"]
    assert policy["Condition"] == "HasKmsKey"
    roles = {r["Ref"] for r in policy["Properties"]["Roles"]}
    assert roles == LAMBDA_ROLES | {"SageMakerExecutionRole"}
    assert LAMBDA_ROLES <= set(template["Resources"])
    for st in policy["Properties"]["PolicyDocument"]["Statement"]:
        assert st["Resource"] == {"Ref": "KmsKeyArn"}
        if "kms:CreateGrant" in as_list(st["Action"]):
            assert st["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    actions = {a for st in policy["Properties"]["PolicyDocument"]["Statement"] for a in as_list(st["Action"])}
    assert actions == {"kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey", "kms:CreateGrant"}


def test_a_stack_with_a_key_deploys_in_moto_with_the_bucket_and_topic_encrypted(
    monkeypatch: Any, tmp_path: Any, quiet_moto_warnings: None
) -> None:
    import boto3
    from moto import mock_aws

    from breedline import deploy
    from infra_helpers import bucket_policy_with_tls_condition, change_sets_refresh_outputs, expand_for_moto

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    bucket_policy_with_tls_condition(monkeypatch)
    change_sets_refresh_outputs(monkeypatch)
    with mock_aws():
        aws = boto3.session.Session(region_name="us-east-1")
        key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
        outputs = deploy.deploy("dev", region="us-east-1", session=aws, expand=expand_for_moto("us-east-1", set()),
                                overrides={"KmsKeyArn": key}, out_dir=tmp_path, log=lambda _msg: None)
        rules = aws.client("s3").get_bucket_encryption(Bucket=outputs["DataBucketName"])[
            "ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
        topic = aws.client("sns").get_topic_attributes(TopicArn=outputs["AlertTopicArn"])["Attributes"]
        assert topic["KmsMasterKeyId"] == key
        functions = aws.client("lambda").list_functions()["Functions"]
        assert {f["Environment"]["Variables"]["BREEDLINE_KMS_KEY_ID"] for f in functions} == {key}
