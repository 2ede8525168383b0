"""Helpers shared by the infra tests (imported as ``infra_helpers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from breedline import deploy

REPO = Path(__file__).resolve().parents[2]


def iam_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (resource id, statement) of every inline role policy in a template."""
    found = []
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            statements = policy["PolicyDocument"]["Statement"]
            for st in statements if isinstance(statements, list) else [statements]:
                found.append((logical_id, st))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- moto


# Resource types of the expanded template that moto's CloudFormation cannot
# create or check, and why. docs/aws.md lists the same types (a test compares).
MOTO_CANNOT_CREATE = {
    # moto builds a RestApi without importing its Swagger Body, so the API has
    # no methods and the Deployment (and so the Stage) fail to create.
    "AWS::ApiGateway::Deployment": "moto ignores the RestApi Body (Swagger), so the API has no methods to deploy",
}


def bucket_policy_with_tls_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluate ``aws:SecureTransport`` in bucket policies the way S3 does for boto3's HTTPS calls.

    moto evaluates bucket policies but ignores their Conditions, so the
    TLS-only Deny would deny every request. boto3 always uses TLS here, so a
    statement conditioned on ``aws:SecureTransport = false`` does not apply.
    """
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self: Any, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        doc = json.loads(self.policy)
        statements = [
            s for s in as_list(doc["Statement"]) if s.get("Condition") != {"Bool": {"aws:SecureTransport": "false"}}
        ]
        if not statements:
            return PermissionResult.NEUTRAL
        doc["Statement"] = statements
        return IAMPolicy(json.dumps(doc)).is_action_permitted(action, resource)

    monkeypatch.setattr(FakeBucket, "get_permission", get_permission)


def expand_for_moto(region: str, unsupported: set[str]) -> Any:
    """SAM transform, then leave out what moto cannot create (recorded in ``unsupported``)."""
    from moto.cloudformation.parsing import get_model_map

    known = set(get_model_map())

    def expand(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
        out = deploy.sam_to_cloudformation(template, parameters, region)
        types = {r["Type"] for r in out["Resources"].values()}
        unsupported.update(t for t in types if t not in known or t in MOTO_CANNOT_CREATE)
        drop = {k for k, r in out["Resources"].items() if r["Type"] in MOTO_CANNOT_CREATE}
        # The Stage needs the Deployment; references to it become the stage name.
        drop |= {k for k, r in out["Resources"].items() if r["Type"] == "AWS::ApiGateway::Stage"}

        def sub(node: Any) -> Any:
            if isinstance(node, dict):
                if node.get("Ref") in drop:
                    return "api"
                if isinstance(node.get("Fn::Sub"), str):
                    text = node["Fn::Sub"]
                    for logical_id in drop:
                        text = text.replace(f"${{{logical_id}}}", "api")
                    return {"Fn::Sub": text}
                return {k: sub(v) for k, v in node.items()}
            if isinstance(node, list):
                return [sub(v) for v in node]
            return node

        out["Resources"] = {k: sub(v) for k, v in out["Resources"].items() if k not in drop}
        for resource in out["Resources"].values():
            deps = resource.get("DependsOn")
            if deps is not None:
                kept = [d for d in as_list(deps) if d not in drop]
                if kept:
                    resource["DependsOn"] = kept
                else:
                    del resource["DependsOn"]
        out["Outputs"] = sub(out.get("Outputs", {}))
        return out

    return expand



def change_sets_refresh_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto refreshes a stack's Outputs on UpdateStack but not on ExecuteChangeSet; do it there too."""
    from moto.cloudformation.models import CloudFormationBackend

    original = CloudFormationBackend.execute_change_set

    def execute_change_set(self: Any, change_set_name: str, stack_name: str | None = None) -> None:
        original(self, change_set_name, stack_name)
        for stack in self.stacks.values():
            if stack_name in (stack.name, stack.stack_id):
                stack._parse_template()
                stack.output_map = stack._create_output_map()

    monkeypatch.setattr(CloudFormationBackend, "execute_change_set", execute_change_set)
