"""The endpoint's state changes: settle the live model, alert on a rollback or a failure, re-drive the queue.

Why DescribeEndpoint and not the event's own fields: events arrive late and
duplicated (a late ``IN_SERVICE`` of an older config), and SageMaker spells the
status differently in events (``IN_SERVICE``) and in the API (``InService``).
The event only says "look now"; DescribeEndpoint says what is served, and
:func:`chalicelib.live.settle` writes LIVE from that. Once the endpoint is
InService the queued deployment (the newest approved model that found the
endpoint busy) is taken off the queue and sent through the quality gate again,
against the model that now really serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contract import COMPLETED

from chalicelib import clients
from chalicelib.decisions import (
    ENDPOINT_IN_SERVICE,
    ENDPOINT_SETTLED,
    STAGE_TRAINING,
    endpoint_status,
    quality_gate,
)
from chalicelib.deployment import deploy, describe_endpoint, gate_policy, live_figures
from chalicelib.lambda_runtime import count, log_keys, settings, store
from chalicelib.live import settle, settle_failed
from chalicelib.observability import GATE_REJECTIONS, logger
from chalicelib.state import StateStore

if TYPE_CHECKING:  # imported by app.py on first use, as in chalicelib.jobs
    from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

    from chalicelib.config import Settings


def handle_endpoint_event(event: EventBridgeEvent) -> dict[str, Any]:
    """An endpoint state change: only ours, only settled states; the truth comes from DescribeEndpoint."""
    s = settings()
    try:
        detail = event.detail or {}
    except KeyError:
        detail = {}
    name = str(detail.get("EndpointName", ""))
    said = endpoint_status(detail.get("EndpointStatus"))
    if name != s.endpoint_name:
        logger.info("endpoint is not ours; ignored", extra={"endpoint": name})
        return {"outcome": "ignored", "reason": "not our endpoint", "endpoint": name}
    if said not in ENDPOINT_SETTLED:
        return {"outcome": "ignored", "reason": f"status {said}", "endpoint": name}
    log_keys(None, endpoint=name, endpoint_config=str(detail.get("EndpointConfigName", "")))
    state = store(s)
    endpoint = describe_endpoint(s, clients.client("sagemaker"))
    if endpoint is None:
        return {"outcome": "ignored", "reason": "the endpoint no longer exists", "endpoint": name}
    status = endpoint["EndpointStatus"]
    if status == ENDPOINT_IN_SERVICE:
        result = settle(s, state, endpoint)
        redriven = redrive_queued(s, state, endpoint)
        if redriven is not None:
            result["queued"] = redriven
        return result
    if status in ENDPOINT_SETTLED:
        return settle_failed(s, state, endpoint)
    # the event is older than the endpoint's state (another update started since)
    logger.info(
        "late endpoint event; DescribeEndpoint says otherwise",
        extra={"event_status": said, "endpoint_status": status},
    )
    return {
        "outcome": "ignored",
        "reason": f"event says {said}, DescribeEndpoint says {status}",
        "endpoint": name,
    }


def redrive_queued(s: Settings, state: StateStore, endpoint: dict[str, Any]) -> dict[str, Any] | None:
    """Take the queued deployment (if any) and deploy it, if it still beats the model that really serves.

    The conditional delete (:meth:`~chalicelib.state.StateStore.claim_queued`)
    makes one handler the owner when two InService events race; a failure that
    raises (throttling) puts it back for the retry.
    """
    queued = state.queued_deployment()
    if not queued:
        return None
    name = str(queued["training_job"])
    log_keys(str(queued.get("dataset", "")), training_job=name)
    if not state.claim_queued(queued):
        return {"outcome": "claimed_elsewhere", "training_job": name}
    dataset, version = str(queued.get("dataset", "")), str(queued.get("version", ""))
    metrics = {str(k): float(v) for k, v in (queued.get("metrics") or {}).items()}
    accuracy = float(queued.get("accuracy") or 0)
    if not metrics:  # queued before issue 13's metrics were kept: the accuracy is all there is
        metrics = {"test_accuracy": accuracy}
    classes = (state.version(dataset, version) or {}).get("classes") or []
    decision = quality_gate(metrics, classes, live_figures(state.live_model()), gate_policy(s), job=name)
    if not decision.deploy:
        count(GATE_REJECTIONS)
        state.record_job(
            name,
            stage=STAGE_TRAINING,
            dataset=str(queued.get("dataset", "")),
            version=str(queued.get("version", "")),
            status=COMPLETED,
            reason=f"not deployed (queued): {decision.reason}",
        )
        logger.warning("queued deployment no longer beats the live model", extra={"reason": decision.reason})
        return {"outcome": "gate_rejected", "reason": decision.reason, "training_job": name}
    try:
        return deploy(
            s,
            state,
            name=name,
            dataset=str(queued.get("dataset", "")),
            version=str(queued.get("version", "")),
            artifacts=str(queued["artifacts"]),
            accuracy=accuracy,
            order_ms=int(queued["order_ms"]),
            endpoint=endpoint,
            metrics=metrics,
        )
    except Exception:
        state.queue_deployment(queued)  # the retry finds it again (unless a newer one came meanwhile)
        raise
