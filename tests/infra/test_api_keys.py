"""Issue 15, item 17: per-client API keys and usage plans, created and revoked by the deploy CLI (moto)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from breedline.deploy import api_keys
from breedline.deploy.api_keys import ClientLimits
from breedline.deploy.stage import DeployError

STACK = "breedline-dev"


@pytest.fixture
def apigw(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield boto3.client("apigateway", region_name="us-east-1")


def _api(apigw: Any) -> str:
    return apigw.create_rest_api(name=STACK)["id"]


def test_each_client_gets_its_own_key_and_plan_with_its_own_limits(apigw: Any) -> None:
    api = _api(apigw)
    a = api_keys.create_client_key(apigw, STACK, "acme", api, "api", ClientLimits(rate=2, burst=4, quota=100))
    b = api_keys.create_client_key(apigw, STACK, "globex", api, "api")
    assert a["value"] and a["value"] != b["value"] and a["usage_plan_id"] != b["usage_plan_id"]
    plan = apigw.get_usage_plan(usagePlanId=a["usage_plan_id"])
    assert plan["throttle"] == {"rateLimit": 2.0, "burstLimit": 4}
    assert plan["quota"]["limit"] == 100 and plan["apiStages"] == [{"apiId": api, "stage": "api"}]
    keys = apigw.get_usage_plan_keys(usagePlanId=a["usage_plan_id"])["items"]
    assert [k["id"] for k in keys] == [a["key_id"]]  # only acme's key shares acme's limits
    apigw.create_api_key(name="someone-else", enabled=True)  # not a client of this stack
    assert [c["client"] for c in api_keys.list_client_keys(apigw, STACK)] == ["acme", "globex"]


def test_revoke_deletes_the_key_and_the_plan_and_leaves_the_others(apigw: Any) -> None:
    api = _api(apigw)
    a = api_keys.create_client_key(apigw, STACK, "acme", api, "api")
    api_keys.create_client_key(apigw, STACK, "globex", api, "api")
    api_keys.revoke_client_key(apigw, STACK, "acme")
    assert [c["client"] for c in api_keys.list_client_keys(apigw, STACK)] == ["globex"]
    assert a["usage_plan_id"] not in {p["id"] for p in apigw.get_usage_plans()["items"]}
    with pytest.raises(DeployError, match="has no key"):
        api_keys.revoke_client_key(apigw, STACK, "acme")


def test_a_duplicate_or_badly_named_client_is_refused(apigw: Any) -> None:
    api = _api(apigw)
    api_keys.create_client_key(apigw, STACK, "acme", api, "api")
    with pytest.raises(DeployError, match="already has a key"):
        api_keys.create_client_key(apigw, STACK, "acme", api, "api")
    with pytest.raises(DeployError, match="lowercase"):
        api_keys.create_client_key(apigw, STACK, "Acme Corp", api, "api")
    assert len(apigw.get_usage_plans()["items"]) == 1  # nothing half-made


def test_the_api_stage_is_read_from_the_stack_output() -> None:
    class Cfn:
        def describe_stacks(self, StackName: str) -> dict[str, Any]:
            url = "https://abc123def4.execute-api.eu-west-1.amazonaws.com/api/"
            return {"Stacks": [{"Outputs": [{"OutputKey": "ApiUrl", "OutputValue": url}]}]}

    assert api_keys.api_stage(Cfn(), STACK) == ("abc123def4", "api")


def test_the_cli_creates_lists_and_revokes_a_client_key(apigw: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from breedline.deploy.cli import main

    api = _api(apigw)
    url = f"https://{api}.execute-api.us-east-1.amazonaws.com/api/"
    template = {"Resources": {"T": {"Type": "AWS::SNS::Topic"}}, "Outputs": {"ApiUrl": {"Value": url}}}
    boto3.client("cloudformation", region_name="us-east-1").create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    assert main(["api-key", "create", "--client", "acme", "--rate", "3", "--region", "us-east-1"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["client"] == "acme" and created["value"]
    assert apigw.get_usage_plan(usagePlanId=created["usage_plan_id"])["throttle"]["rateLimit"] == 3.0
    assert main(["api-key", "list", "--region", "us-east-1"]) == 0
    assert [c["client"] for c in json.loads(capsys.readouterr().out)] == ["acme"]
    assert main(["api-key", "revoke", "--client", "acme", "--region", "us-east-1"]) == 0
    capsys.readouterr()
    assert main(["api-key", "revoke", "--client", "acme", "--region", "us-east-1"]) == 2
    assert "has no key" in capsys.readouterr().err


def test_a_failed_key_creation_leaves_no_plan_behind(apigw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    api = _api(apigw)

    def refuse(**_kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "LimitExceededException", "Message": "too many keys"}}, "CreateApiKey")

    monkeypatch.setattr(apigw, "create_api_key", refuse)
    with pytest.raises(ClientError):
        api_keys.create_client_key(apigw, STACK, "acme", api, "api")
    assert apigw.get_usage_plans()["items"] == []
