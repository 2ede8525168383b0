"""Per-client API keys: each client gets its own key and its own usage plan (issue 15, item 17).

Why one plan per client: a usage plan's throttle and quota are shared by the
keys in it, so with one plan one client could exhaust the limits for all.
A client's key and plan are named ``<stack>-client-<client>`` so that ``list``
and ``revoke`` find exactly this stack's clients; the stack's own shared key
(``<stack>-predict``) is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from breedline.deploy.stage import DeployError

_CLIENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class ClientLimits:
    """One client's throttle (requests/s, burst) and quota (requests per period)."""

    rate: float = 5.0
    burst: int = 10
    quota: int = 5000
    period: str = "DAY"


def client_name(stack: str, client: str) -> str:
    if not _CLIENT.match(client):
        raise DeployError(f"client {client!r} must be 1-32 lowercase letters, digits and hyphens")
    return f"{stack}-client-{client}"


def api_stage(cfn: Any, stack: str) -> tuple[str, str]:
    """The stack's REST API id and stage name, read from its ``ApiUrl`` output."""
    stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    match = re.match(r"^https://([a-z0-9]+)\.execute-api\.[^/]+/([^/]+)/$", outputs.get("ApiUrl", ""))
    if not match:
        raise DeployError(f"stack {stack} has no ApiUrl output: deploy it first (make deploy)")
    return match.group(1), match.group(2)


def create_client_key(apigw: Any, stack: str, client: str, api_id: str, stage: str,
                      limits: ClientLimits = ClientLimits()) -> dict[str, str]:
    """A new key in a new usage plan for one client; returns its id and value (shown once)."""
    name = client_name(stack, client)
    if _find_key(apigw, name):
        raise DeployError(f"client {client!r} already has a key ({name}): revoke it first to replace it")
    plan = apigw.create_usage_plan(
        name=name,
        description=f"Breedline client {client} of {stack}",
        apiStages=[{"apiId": api_id, "stage": stage}],
        throttle={"rateLimit": limits.rate, "burstLimit": limits.burst},
        quota={"limit": limits.quota, "period": limits.period},
        tags={"breedline:stack": stack, "breedline:client": client},
    )
    try:
        key = apigw.create_api_key(name=name, description=f"Breedline client {client}", enabled=True,
                                   tags={"breedline:stack": stack, "breedline:client": client})
    except Exception:
        _delete_plan(apigw, plan)  # leave nothing half-made
        raise
    apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    return {"client": client, "key_id": key["id"], "value": key["value"], "usage_plan_id": plan["id"]}


def revoke_client_key(apigw: Any, stack: str, client: str) -> None:
    """Delete the client's key and its usage plan: the next request with that key gets 403."""
    name = client_name(stack, client)
    key = _find_key(apigw, name)
    if key is None:
        raise DeployError(f"client {client!r} has no key in stack {stack}")
    apigw.delete_api_key(apiKey=key["id"])
    for plan in _pages(apigw, "get_usage_plans"):
        if plan["name"] == name:
            _delete_plan(apigw, plan)


def _delete_plan(apigw: Any, plan: dict[str, Any]) -> None:
    """API Gateway refuses to delete a plan that is still attached to a stage: detach it first."""
    ops = [{"op": "remove", "path": "/apiStages", "value": f"{s['apiId']}:{s['stage']}"}
           for s in plan.get("apiStages", [])]
    if ops:
        apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
    apigw.delete_usage_plan(usagePlanId=plan["id"])


def list_client_keys(apigw: Any, stack: str) -> list[dict[str, Any]]:
    """This stack's clients: name, key id, enabled, and their plan's limits."""
    prefix = f"{stack}-client-"
    plans = {p["name"]: p for p in _pages(apigw, "get_usage_plans")}
    clients = []
    for key in _pages(apigw, "get_api_keys"):
        if key["name"].startswith(prefix):
            plan = plans.get(key["name"], {})
            clients.append({"client": key["name"][len(prefix):], "key_id": key["id"], "enabled": key["enabled"],
                            "throttle": plan.get("throttle", {}), "quota": plan.get("quota", {})})
    return sorted(clients, key=lambda c: c["client"])


def _find_key(apigw: Any, name: str) -> dict[str, Any] | None:
    found = [k for k in _pages(apigw, "get_api_keys", nameQuery=name) if k["name"] == name]
    return found[0] if found else None


def _pages(apigw: Any, operation: str, **kwargs: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in apigw.get_paginator(operation).paginate(**kwargs):
        items.extend(page.get("items", []))
    return items
