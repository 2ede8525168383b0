"""The packaged template: lint-clean, with the resources issue 5 asks for."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint

from breedline import deploy
from chalicelib.state import TABLE_DEFINITIONS, TTL_ATTRIBUTES

LINT_REGIONS = ["us-east-1", "eu-west-1"]


def _lint(template: dict[str, Any]) -> list[str]:
    return [f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})" for m in lint(json.dumps(template), regions=LINT_REGIONS)]


def test_cfn_lint_passes_on_the_full_packaged_template(template: dict[str, Any]) -> None:
    assert _lint(template) == []


def test_cfn_lint_would_catch_a_broken_merge(template: dict[str, Any]) -> None:
    """Proves the lint above is live: a dangling Ref and a bad property are reported."""
    broken = copy.deepcopy(template)
    broken["Resources"]["AlertTopic"]["Properties"]["TopicName"] = {"Ref": "NoSuchThing"}
    broken["Resources"]["DataBucket"]["Properties"]["NotificationConfiguration"]["EventBridgeConfiguration"] = {
        "EventBridgeEnabled": "maybe"
    }
    errors = _lint(broken)
    assert any("NoSuchThing" in e for e in errors)
    assert any("EventBridgeEnabled" in e or "maybe" in e for e in errors)


def test_the_merge_template_is_merged_into_the_chalice_app(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    # Chalice's own resources ...
    for chalice_id in ("APIHandler", "RestAPI", "OnDatasetUpload", "OnTuningStateChange", "OnTrainingStateChange", "CheckQuietDatasets"):
        assert chalice_id in resources
    # ... and ours, in one template.
    types = {r["Type"] for r in resources.values()}
    for wanted in (
        "AWS::S3::Bucket",
        "AWS::S3::BucketPolicy",
        "AWS::DynamoDB::Table",
        "AWS::SNS::Topic",
        "AWS::SNS::Subscription",
        "AWS::CloudWatch::Dashboard",
        "AWS::CloudWatch::Alarm",
        "AWS::ApiGateway::UsagePlan",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
    ):
        assert wanted in types, wanted
    assert resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"], "the merge must not replace Chalice's Swagger"


def test_data_bucket_is_private_encrypted_tls_only_and_sends_events(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["DataBucket"]
    props = bucket["Properties"]
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    assert bucket["DeletionPolicy"] == "Retain"  # destroy keeps the data unless asked
    policy = template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    deny = [s for s in policy if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny[0]["Action"] == "s3:*" and deny[0]["Principal"] == "*"


def test_tables_are_generated_from_the_apps_definitions(template: dict[str, Any]) -> None:
    for key, logical_id in deploy.TABLE_RESOURCES.items():
        props = template["Resources"][logical_id]["Properties"]
        wanted = TABLE_DEFINITIONS[key]
        assert props["KeySchema"] == wanted["KeySchema"]
        assert sorted(props["AttributeDefinitions"], key=str) == sorted(wanted["AttributeDefinitions"], key=str)
        assert props["BillingMode"] == wanted.get("BillingMode", "PAY_PER_REQUEST")
        if key in TTL_ATTRIBUTES:
            assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTES[key], "Enabled": True}
    assert set(TABLE_DEFINITIONS) == set(deploy.TABLE_RESOURCES)


def test_table_generation_refuses_what_it_cannot_map() -> None:
    with pytest.raises(deploy.DeployError, match="cannot map"):
        deploy.table_resources({"state_table": {"KeySchema": [], "AttributeDefinitions": [], "Bogus": 1}})
    with pytest.raises(deploy.DeployError, match="infra knows"):
        deploy.table_resources({"other_table": {"KeySchema": []}})


def test_lambda_environment_points_at_the_stacks_resources(template: dict[str, Any], packaged: deploy.Package) -> None:
    glob = template["Globals"]["Function"]["Environment"]["Variables"]
    assert glob["BREEDLINE_ROLE_ARN"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert glob["BREEDLINE_STATE_TABLE"] == {"Ref": "StateTable"}
    assert glob["BREEDLINE_IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert glob["BREEDLINE_ALERT_TOPIC_ARN"] == {"Ref": "AlertTopic"}
    assert glob["BREEDLINE_ROLLBACK_ALARMS"] == {"Fn::Sub": "${EndpointServerErrorsAlarm},${EndpointModelLatencyAlarm}"}
    for fn in ("APIHandler", "OnDatasetUpload"):
        env = template["Resources"][fn]["Properties"]["Environment"]["Variables"]
        # function-level values win over Globals in SAM: none may shadow a stack value wrongly
        for name in set(env) & set(glob):
            assert env[name] == deploy.stack_value(name, "breedline-dev", "123456789012", "us-east-1", packaged.stage), name
        assert env["BREEDLINE_TRAINING_IMAGE"] == packaged.images.training
        assert env["BREEDLINE_INFERENCE_IMAGE"] == packaged.images.inference
        assert env["BREEDLINE_DEBUGGER_RULE_IMAGE"] == packaged.images.debugger_rule
    # The S3 rule matches the stack's bucket (baked in when Chalice loaded app.py).
    pattern = template["Resources"]["OnDatasetUpload"]["Properties"]["Events"]["OnDatasetUploadEvent"]["Properties"]["Pattern"]
    assert pattern["detail"]["bucket"]["name"] == ["breedline-dev-data-123456789012-us-east-1"]


def test_api_auth_api_key_mode_and_status_never_public(template: dict[str, Any], packaged: deploy.Package) -> None:
    assert packaged.parameters["ApiAuth"] == "api_key"
    paths = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    assert paths["/predict"]["post"]["security"] == [{"api_key": []}]
    for path, methods in paths.items():
        for method, op in methods.items():
            assert op.get("security"), f"{method.upper()} {path} is public"
    assert paths["/status"]["get"]["security"] == [{"sigv4": []}]
    plan = template["Resources"]["UsagePlan"]
    assert plan["Condition"] == "UseApiKey"
    assert plan["Properties"]["Throttle"] == {"RateLimit": {"Ref": "ApiThrottleRateLimit"}, "BurstLimit": {"Ref": "ApiThrottleBurstLimit"}}
    assert plan["Properties"]["Quota"]["Limit"] == {"Ref": "ApiQuotaLimit"}


def test_api_auth_iam_mode(template: dict[str, Any]) -> None:
    t = deploy.apply_api_auth(copy.deepcopy(template), "iam")
    paths = t["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    assert {json.dumps(op["security"]) for m in paths.values() for op in m.values()} == {json.dumps([{"sigv4": []}])}
    with pytest.raises(deploy.DeployError):
        deploy.apply_api_auth(copy.deepcopy(template), "none")


def test_a_stage_with_an_open_api_or_a_generated_policy_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / ".chalice").mkdir(parents=True)
    base = {"version": "2.0", "app_name": "breedline", "autogen_policy": False,
            "stages": {"open": {"environment_variables": {"BREEDLINE_API_AUTH": "none"}}, "ok": {}}}
    (app / ".chalice" / "config.json").write_text(json.dumps(base))
    with pytest.raises(deploy.DeployError, match="BREEDLINE_API_AUTH"):
        deploy.load_stage("open", app)
    deploy.check_policy_prefixes(deploy.load_stage("ok", app), app)
    base["autogen_policy"] = True
    (app / ".chalice" / "config.json").write_text(json.dumps(base))
    with pytest.raises(deploy.DeployError, match="autogen_policy"):
        deploy.check_policy_prefixes(deploy.load_stage("ok", app), app)
    with pytest.raises(deploy.DeployError, match="stage 'nope'"):
        deploy.load_stage("nope", app)


@pytest.mark.parametrize("name", ["Breedline-dev", "breedline-production-eu", "a--b", "-x", "x" * 21])
def test_stack_names_that_cannot_prefix_sagemaker_names_are_refused(name: str) -> None:
    with pytest.raises(deploy.DeployError):
        deploy.check_stack_name(name)


def test_outputs_give_the_api_url_and_the_bucket(template: dict[str, Any], expanded: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert "ApiUrl" in outputs and "DataBucketName" in outputs and "ApiKeyId" in outputs
    assert "execute-api" in json.dumps(outputs["ApiUrl"]["Value"])
    assert outputs["DataBucketName"]["Value"] == template["Resources"]["DataBucket"]["Properties"]["BucketName"]
    # After the SAM transform the Globals reach every function (function-level values win).
    for logical_id, resource in expanded["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            env = resource["Properties"]["Environment"]["Variables"]
            assert env["BREEDLINE_ROLE_ARN"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}, logical_id
            assert env["BREEDLINE_STATE_TABLE"] == {"Ref": "StateTable"}, logical_id
    assert "ApiUrl" in expanded["Outputs"]


def test_alarms_feed_the_endpoint_rollback_and_notify(template: dict[str, Any]) -> None:
    alarms = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"PipelineFailuresAlarm", "PredictServerErrorsAlarm", "PredictLatencyAlarm", "EndpointServerErrorsAlarm",
            "EndpointModelLatencyAlarm"} <= set(alarms)
    for logical_id, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}], logical_id
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching", logical_id
    rollback = template["Globals"]["Function"]["Environment"]["Variables"]["BREEDLINE_ROLLBACK_ALARMS"]["Fn::Sub"]
    assert all(f"${{{a}}}" in rollback for a in ("EndpointServerErrorsAlarm", "EndpointModelLatencyAlarm"))


def test_autoscaling_targets_invocations_per_instance(template: dict[str, Any]) -> None:
    policy = template["Resources"]["EndpointScalingPolicy"]
    spec = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    target = template["Resources"]["EndpointScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert policy["Condition"] == template["Resources"]["EndpointScalableTarget"]["Condition"] == "ScaleEndpoint"


def test_autoscaling_is_switched_on_only_for_an_existing_instance_endpoint(packaged: deploy.Package) -> None:
    stage = packaged.stage
    kwargs = dict(images=packaged.images, sourcedir_key="code/x/sourcedir.tar.gz", partition="aws")
    assert deploy.build_parameters(stage, **kwargs)["EnableEndpointAutoscaling"] == "false"
    on = deploy.build_parameters(stage, endpoint_variant="AllTraffic", **kwargs)
    assert on["EnableEndpointAutoscaling"] == "true" and on["EndpointVariantName"] == "AllTraffic"
    # A variant named per model would be removed by the next model's UpdateEndpoint, which
    # SageMaker refuses while it is registered for autoscaling: off unless forced.
    per_model = deploy.build_parameters(stage, endpoint_variant="breedline-dev-abc-final", **kwargs)
    assert per_model["EnableEndpointAutoscaling"] == "false"
    forced = deploy.build_parameters(stage, endpoint_variant="breedline-dev-abc-final",
                                     overrides={"EnableEndpointAutoscaling": "true"}, **kwargs)
    assert forced["EnableEndpointAutoscaling"] == "true" and forced["EndpointVariantName"] == "breedline-dev-abc-final"
    serverless = copy.deepcopy(stage)
    serverless.environment["BREEDLINE_SERVERLESS_MEMORY_MB"] = "2048"
    assert deploy.build_parameters(serverless, endpoint_variant="v", **kwargs)["EnableEndpointAutoscaling"] == "false"


def _chalice_sam(packaged: deploy.Package) -> dict[str, Any]:
    """``chalice package``'s own template, before the stage's auth and CORS were applied to it."""
    return json.loads((packaged.out_dir / "chalice" / "sam.json").read_text())


def test_a_stage_without_cors_origins_has_no_open_preflight(template: dict[str, Any]) -> None:
    api = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    assert all("options" not in methods for methods in api["paths"].values())
    assert "x-amazon-apigateway-gateway-responses" not in api


@pytest.mark.parametrize("origins", [("https://app.example.com",), ("https://app.example.com", "http://localhost:8000")])
def test_cors_origins_open_the_preflights_and_name_the_origin_on_gateway_errors(
    packaged: deploy.Package, origins: tuple[str, ...]
) -> None:
    """The app's OPTIONS views become unauthenticated Lambda methods; API Gateway's own errors carry the origin."""
    t = _chalice_sam(packaged)
    deploy.apply_api_auth(t, "api_key")
    deploy.apply_cors(t, origins)
    deploy.point_code_at(t, "artifacts-bucket", "lambda.zip")
    api = t["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    for path in ("/predict", "/labels"):
        preflight = api["paths"][path]["options"]
        assert "security" not in preflight  # browsers send preflights without the key
        assert preflight["x-amazon-apigateway-integration"]["type"] == "aws_proxy"
    assert "options" not in api["paths"]["/status"]
    assert api["paths"]["/predict"]["post"]["security"] == [{"api_key": []}]
    responses = api["x-amazon-apigateway-gateway-responses"]
    assert set(responses) == {"DEFAULT_4XX", "DEFAULT_5XX"}
    for response in responses.values():
        params = response["responseParameters"]
        assert params["gatewayresponse.header.Vary"] == "'Origin'"
        if len(origins) == 1:
            assert params["gatewayresponse.header.Access-Control-Allow-Origin"] == "'https://app.example.com'"
        else:  # a static header cannot choose among several origins: none rather than a wrong one
            assert "gatewayresponse.header.Access-Control-Allow-Origin" not in params
    expanded = deploy.sam_to_cloudformation(t, packaged.parameters, "us-east-1")
    rest = next(r for r in expanded["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi")
    assert "options" in rest["Properties"]["Body"]["paths"]["/predict"]
