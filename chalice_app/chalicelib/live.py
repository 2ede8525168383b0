"""The live model is what the endpoint really serves (issue 15, item 1).

Why a module of its own: ``UpdateEndpoint`` returning says only that SageMaker
accepted the request. A blue/green update can still roll back (an alarm, a
failing health check) and the endpoint keeps serving the old config. So the
``LIVE`` record is written from DescribeEndpoint's answer alone: the record of
the config the endpoint serves (:meth:`chalicelib.state.StateStore.deployment`)
becomes LIVE, and a pending update to another config is a rollback, recorded
and alerted. Both the endpoint state-change handler
(:mod:`chalicelib.endpoint_events`) and the quality gate
(:func:`chalicelib.deployment.deploy_if_better`, before it compares) call
:func:`settle`, so the gate never compares against a model that is not served.
"""

from __future__ import annotations

import time
from typing import Any

from contract import COMPLETED

from chalicelib.config import Settings
from chalicelib.decisions import STAGE_TRAINING
from chalicelib.lambda_runtime import alert, count
from chalicelib.observability import DEPLOYMENTS_FAILED, MODELS_DEPLOYED, logger
from chalicelib.state import StateStore

#: Fields of a deployment record that are not part of the LIVE record.
_NOT_LIVE = ("pk", "sk", "deploy_status", "deploy_reason", "previous_model")


def settle(s: Settings, state: StateStore, endpoint: dict[str, Any]) -> dict[str, Any]:
    """DescribeEndpoint says InService: LIVE = the model of the served config; a pending other config rolled back.

    Idempotent: a duplicate or late event finds LIVE already on the served
    config and no pending update, and changes nothing.
    """
    served = str(endpoint.get("EndpointConfigName") or "")
    live = state.live_model()
    result: dict[str, Any] = {"outcome": "unchanged", "endpoint_config": served}
    served_model = str(live.get("model")) if live and live.get("endpoint_config") == served else ""
    if not served_model:
        record = state.deployment(served)
        if record is None:
            logger.warning(
                "the endpoint serves a config this pipeline has no record of; LIVE kept",
                extra={"endpoint_config": served, "live_model": (live or {}).get("model")},
            )
            result["outcome"] = "unknown_config"
        else:
            served_model = str(record["model"])
            previous = str(live["model"]) if live and live.get("model") else None
            fields = {k: v for k, v in record.items() if k not in _NOT_LIVE}
            if state.set_live_model({**fields, "live_since": int(time.time())}, previous):
                state.mark_deployment(served, "Live")
                _note_job(state, record, f"live on {s.endpoint_name}")
                count(MODELS_DEPLOYED)
                logger.info("model live", extra={"model": served_model, "previous_model": previous})
                result.update(outcome="live", model=served_model, previous_model=previous or "")
            else:
                logger.warning(
                    "LIVE changed while it was settled; left to the other writer",
                    extra={"model": served_model},
                )
    pending = state.pending()
    if pending and pending.get("endpoint_config") != served:
        result["rolled_back"] = _rolled_back(s, state, pending, served, served_model, endpoint)
    elif pending:
        state.clear_pending(served)
    return result


def _rolled_back(
    s: Settings,
    state: StateStore,
    pending: dict[str, Any],
    served: str,
    served_model: str,
    endpoint: dict[str, Any],
) -> str:
    """The pending update did not take: record the model's job, alert (naming both models), clear it."""
    config = str(pending["endpoint_config"])
    model = str(pending.get("model", ""))
    failure = str(endpoint.get("FailureReason") or "")
    reason = f"rolled back: {s.endpoint_name} still serves {served_model or served}, not {model}"
    if failure:
        reason += f" ({failure})"
    record = state.deployment(config)
    state.mark_deployment(config, "RolledBack", reason)
    if record:
        _note_job(state, record, reason)
    count(DEPLOYMENTS_FAILED)
    # the subject (cut at 100 characters) names the rolled-back model first; the message names both
    alert(
        f"rolled back: {model}, still serving {served_model or served}",
        {
            "endpoint": s.endpoint_name,
            "rolled_back_model": model,
            "rolled_back_config": config,
            "serving_model": served_model,
            "serving_config": served,
            "failure_reason": failure,
            "training_job": pending.get("training_job", ""),
        },
    )
    state.clear_pending(config)  # after the alert: a retry of a failed alert alerts again
    return model


def settle_failed(s: Settings, state: StateStore, endpoint: dict[str, Any]) -> dict[str, Any]:
    """DescribeEndpoint says Failed (or UpdateRollbackFailed): record the pending model's job and alert once."""
    status = str(endpoint.get("EndpointStatus") or "")
    failure = str(endpoint.get("FailureReason") or "")
    pending = state.pending()
    if not pending:
        logger.info("endpoint failure already handled", extra={"endpoint_status": status})
        return {"outcome": "ignored", "reason": f"{status}; no pending deployment"}
    config = str(pending["endpoint_config"])
    model = str(pending.get("model", ""))
    reason = f"endpoint {s.endpoint_name} is {status}: {failure or 'no FailureReason'}"
    record = state.deployment(config)
    state.mark_deployment(config, "Failed", reason)
    if record:
        _note_job(state, record, reason)
    count(DEPLOYMENTS_FAILED)
    alert(
        f"endpoint {s.endpoint_name} is {status}; {model} is not live",
        {
            "endpoint": s.endpoint_name,
            "model": model,
            "endpoint_config": config,
            "failure_reason": failure,
            "live_model": (state.live_model() or {}).get("model", ""),
            "what_to_do": "delete the endpoint; the next model recreates it",
        },
    )
    state.clear_pending(config)
    return {"outcome": "failed", "model": model, "reason": reason}


def _note_job(state: StateStore, record: dict[str, Any], reason: str) -> None:
    """The deployment's outcome as its training job's reason (/status shows it); the status stays Completed."""
    job = str(record.get("training_job") or "")
    if job:
        state.record_job(
            job,
            stage=STAGE_TRAINING,
            dataset=str(record.get("dataset", "")),
            version=str(record.get("version", "")),
            status=COMPLETED,
            reason=reason,
        )
