"""Deployment: the quality gate on a finished final job, then model, endpoint config and endpoint.

A model goes live only when its metrics are sane, it beats the accuracy floor
and the majority-class baseline, keeps the live model's class list (or a
change is allowed) and beats the live model on the same test split
(:func:`chalicelib.decisions.quality_gate`). The first model creates the
endpoint; later ones update it blue/green (:mod:`chalicelib.sagemaker_requests`
builds the deployment guardrails). The live model's record in the state
table is what ``/status``, ``/labels`` and the next gate read.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from chalicelib import clients, naming
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.decisions import (
    ALREADY_LIVE, AWAITING_APPROVAL, GATE_REJECTED, STAGE_TRAINING, GateDecision, GatePolicy, LiveFigures, final_metric,
    headline_metrics, pipeline_tags, quality_gate, read_metrics, redrive_event, triggered_rules,
)
from chalicelib.observability import GATE_REJECTIONS, MODEL_ACCURACY, MODELS_DEPLOYED, TRAINING_COMPLETED, logger
from chalicelib.lambda_runtime import (
    NotYet, PipelineError, alert, client_error, count, idempotent, log_keys, settings, store,
)
from chalicelib.state import JobChange, StateStore
from contract import COMPLETED, DEBUGGER_HYPERPARAMETER

#: Tag stage value on models, endpoint configs and endpoints (jobs use tuning/training).
STAGE_SERVING = "serving"
#: Endpoint states in which UpdateEndpoint is refused; the deployment is retried.
_BUSY_ENDPOINT = {"Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed", "Deleting"}


def history_kept(job: str, status: str, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The answer when a state change was refused because the job's record is already further on.

    Why no alert: the refused event is a late or conflicting one (a tuning
    Failed after its Completed); alerting on it would tell operators the
    opposite of what happened. It is logged, with both statuses.
    """
    current = (recorded or {}).get("status", "")
    logger.warning(
        "job state change refused: the record is already further on",
        extra={"job": job, "event_status": status, "recorded_status": current},
    )
    return {"outcome": "ignored", "reason": f"{job} is already {current}; {status} not recorded", "job": job}


@idempotent("deploy-if-better")
def deploy_if_better(
    request: dict[str, Any], dataset: str, version: str, event_ms: int | None = None
) -> dict[str, Any]:
    """Quality gate on DescribeTrainingJob's metrics, then model, config and endpoint.

    A job whose record already says Failed or Stopped stays so (its alert was
    sent); the conflicting Completed is logged and deploys nothing.
    """
    s = settings()
    name = request["training_job"]
    described = clients.client("sagemaker").describe_training_job(**build.describe_training_job(name))
    if described.get("TrainingJobStatus") != COMPLETED:
        # a premature Completed: the genuine one must still deploy, so nothing is remembered
        said = described.get("TrainingJobStatus")
        raise NotYet({"outcome": "not_yet", "reason": f"DescribeTrainingJob says {said}", "training_job": name})
    state = store(s)
    metric_data = described.get("FinalMetricDataList") or []
    metrics = read_metrics(metric_data)
    accuracy = final_metric(metric_data)
    artifacts = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    change = state.record_job(
        name, stage=STAGE_TRAINING, dataset=dataset, version=version, status=COMPLETED, event_ms=event_ms
    )
    if change is JobChange.REFUSED:
        return history_kept(name, COMPLETED, state.job(name))
    count(TRAINING_COMPLETED)
    if accuracy is not None:
        count(MODEL_ACCURACY, accuracy, unit="None")
    live = state.live_model()
    live_accuracy = float(live["accuracy"]) if live and live.get("accuracy") is not None else None
    version_record = state.version(dataset, version) or {}
    decision = quality_gate(metrics, version_record.get("classes") or [], live_figures(live), gate_policy(s), job=name)
    if decision.deploy and not artifacts:
        decision = replace(decision, deploy=False, reason="no ModelArtifacts in DescribeTrainingJob", alert=True,
                           outcome=GATE_REJECTED)
    log_keys(dataset, model=naming.model_name(name))
    blocked = _report_rules(s, described, name, dataset)
    outcome = "rules_blocked" if decision.deploy and blocked else decision.outcome
    if decision.deploy and blocked:
        decision = replace(decision, deploy=False, reason=blocked)
    if not decision.deploy:
        return _not_deployed(state, decision, outcome, name=name, dataset=dataset, version=version, metrics=metrics,
                             version_record=version_record, live_accuracy=live_accuracy,
                             arn=str(described.get("TrainingJobArn") or ""))
    logger.info("quality gate passed", extra={"reason": decision.reason, "compared_with": decision.compared_with})
    return deploy(s, state, name=name, dataset=dataset, version=version, artifacts=str(artifacts),
                  accuracy=float(accuracy or 0), live=live, metrics=headline_metrics(metrics))


def gate_policy(s: Settings) -> GatePolicy:
    """The gate's settings (BREEDLINE_GATE_METRIC, its margins, the floor, BREEDLINE_ALLOW_CLASS_CHANGE)."""
    return GatePolicy(metric=s.gate_metric, margin=s.gate_margin, baseline_margin=s.baseline_margin,
                      accuracy_floor=s.accuracy_floor, allow_class_change=s.allow_class_change)


def live_figures(live: dict[str, Any] | None) -> LiveFigures | None:
    """What the gate needs of the live-model record; records from before issue 13 have no ``metrics``."""
    if not live:
        return None
    raw = live.get("metrics") if isinstance(live.get("metrics"), dict) else {}
    figures: dict[str, float] = {}
    for key, value in raw.items():
        try:
            figures[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    accuracy = live.get("accuracy")
    return LiveFigures(
        training_job=str(live.get("training_job") or ""),
        labels=tuple(str(label) for label in live.get("labels") or ()),
        metrics=figures,
        accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None,
    )


def _not_deployed(
    state: StateStore, decision: GateDecision, outcome: str, *, name: str, dataset: str, version: str,
    metrics: dict[str, float], version_record: dict[str, Any], live_accuracy: float | None, arn: str = "",
) -> dict[str, Any]:
    """Record why, count it, and alert when the model is broken or needs a person.

    A class change awaiting approval keeps no idempotency record (:class:`NotYet`):
    once ``BREEDLINE_ALLOW_CLASS_CHANGE=true`` is set, re-sending the job's
    Completed event (``redrive_event`` in the alert) runs the gate again and
    deploys. Its alert is sent once per job (``alerted`` on the job record),
    however often the event comes.
    """
    result = {"outcome": outcome, "reason": decision.reason, "training_job": name}
    if decision.outcome == ALREADY_LIVE:
        logger.info("quality gate: already live", extra={"reason": decision.reason})
        return result
    awaiting = decision.outcome == AWAITING_APPROVAL
    prefix = "awaiting approval" if awaiting else "not deployed"
    count(GATE_REJECTIONS)
    state.record_job(
        name, stage=STAGE_TRAINING, dataset=dataset, version=version, status=COMPLETED, reason=f"{prefix}: {decision.reason}"
    )
    logger.warning(f"quality gate: {prefix}", extra={"reason": decision.reason, "accuracy": decision.accuracy,
                                                     "live_accuracy": live_accuracy, "metrics": metrics})
    if decision.alert and (state.job(name) or {}).get("alerted") != outcome:
        details: dict[str, Any] = {"dataset": dataset, "version": version, "training_job": name,
                                   "reason": decision.reason, "metrics": headline_metrics(metrics)}
        if awaiting:
            tags = pipeline_tags(settings().name_prefix, STAGE_TRAINING, dataset, version)
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            details.update(class_change=dict(decision.class_change or {}),
                           class_counts=version_record.get("class_counts") or {},
                           what_to_do="to deploy it (/labels will change): set BREEDLINE_ALLOW_CLASS_CHANGE=true on the "
                                      "on_training_state_change function, then invoke it with redrive_event as the payload "
                                      "(aws lambda invoke --function-name <that function> --cli-binary-format "
                                      "raw-in-base64-out --payload file://redrive_event.json out.json; docs/app.md, "
                                      "section Quality gate)",
                           redrive_event=redrive_event(name, arn, tags, clients.region(), when))
            subject = f"model {name} changes the class list: awaiting approval"
        else:
            subject = f"model {name} rejected by the quality gate"
        alert(subject, details)
        state.mark_alerted(name, outcome)
    if awaiting:
        raise NotYet(result)
    return result


def _report_rules(s: Settings, described: dict[str, Any], name: str, dataset: str) -> str:
    """Alert and log each Debugger rule that found an issue; the reason not to deploy, or "" to go on.

    Why alert per rule: each names a different problem (a loss that does not
    fall, overfitting, vanishing gradients), and operators route on the
    subject. ``BREEDLINE_RULES_BLOCK_DEPLOY`` decides whether they also stop
    the deployment; by default they only alert.
    """
    rules = triggered_rules(described)
    mode = str((described.get("HyperParameters") or {}).get(DEBUGGER_HYPERPARAMETER, ""))
    for rule in rules:
        logger.warning("Debugger rule found an issue", extra={"rule": rule, "training_job": name, "debugger": mode})
        alert(f"Debugger rule {rule} found an issue in {name}", {
            "dataset": dataset, "training_job": name, "rule": rule, "debugger": mode,
            "blocks_deployment": s.rules_block_deploy,
        })
    if rules and s.rules_block_deploy:
        return f"Debugger rules found issues: {', '.join(rules)} (BREEDLINE_RULES_BLOCK_DEPLOY)"
    return ""


def _create_once(call: Callable[..., Any], request: dict[str, Any]) -> bool:
    """Create a model or endpoint config; an existing one of that name is fine (retries)."""
    try:
        call(**request)
    except client_error() as exc:
        if clients.error_code(exc) in ("ValidationException", "ResourceInUse") and "already exist" in clients.error_message(exc).lower():
            return False
        raise
    return True


def _not_found(exc: BaseException) -> bool:
    message = clients.error_message(exc).lower()
    return "could not find" in message or "not found" in message


def _point_endpoint(s: Settings, sm: Any, config_name: str, model: str, tags: list[dict[str, str]]) -> str:
    """CreateEndpoint, or a blue/green UpdateEndpoint to ``config_name``; returns what was done."""
    try:
        endpoint = sm.describe_endpoint(**build.describe_endpoint(s))
    except client_error() as exc:
        if not _not_found(exc):
            raise
        endpoint = None
    if endpoint is None:
        sm.create_endpoint(**build.create_endpoint(s, config_name=config_name, tags=tags))
        return "created"
    status = str(endpoint.get("EndpointStatus", ""))
    if endpoint.get("EndpointConfigName") == config_name:
        return "unchanged"
    if status in _BUSY_ENDPOINT:
        # Raising releases the idempotency record; Lambda's async retries try again later.
        raise PipelineError(f"endpoint {s.endpoint_name} is {status}; deployment of {model} will be retried")
    if status == "Failed":
        alert(f"endpoint {s.endpoint_name} is Failed", {"model": model, "what_to_do": "delete the endpoint; the next model recreates it"})
        raise PipelineError(f"endpoint {s.endpoint_name} is Failed")
    sm.update_endpoint(**build.update_endpoint(s, config_name=config_name))
    return "updated"


def deploy(
    s: Settings,
    state: StateStore,
    *,
    name: str,
    dataset: str,
    version: str,
    artifacts: str,
    accuracy: float,
    live: dict[str, Any] | None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """CreateModel, CreateEndpointConfig, then CreateEndpoint or a blue/green UpdateEndpoint.

    ``metrics``: the headline test figures (``/status``, and the next gate's fallback).
    """
    sm = clients.client("sagemaker")
    tags = pipeline_tags(s.name_prefix, STAGE_SERVING, dataset, version)
    model = naming.model_name(name)
    config_name = naming.endpoint_config_name(model, build.serverless(s))
    _create_once(sm.create_model, build.create_model(s, name=model, model_data_url=artifacts, region=clients.region(), tags=tags))
    _create_once(sm.create_endpoint_config, build.create_endpoint_config(s, name=config_name, model_name=model, tags=tags))
    action = _point_endpoint(s, sm, config_name, model, tags)
    version_record = state.version(dataset, version) or {}
    record = {
        "model": model,
        "training_job": name,
        "accuracy": accuracy,
        "metrics": dict(metrics or {}),
        "artifacts": artifacts,
        "labels": list(version_record.get("classes") or []),
        "dataset": dataset,
        "version": version,
        "endpoint": s.endpoint_name,
        "endpoint_config": config_name,
        "serverless": build.serverless(s),
        "deployed_at": int(time.time()),
    }
    previous = live.get("model") if live else None
    if not state.set_live_model(record, previous):
        logger.warning("live model changed while deploying; the record was not overwritten", extra={"model": model})
    count(MODELS_DEPLOYED)
    logger.info("model deployed", extra={"action": action, "accuracy": accuracy, "previous_model": previous})
    return {"outcome": "deployed", "action": action, "model": model, "endpoint_config": config_name, "accuracy": accuracy}
