"""Deployment: the quality gate on a finished final job, then model, endpoint config and endpoint.

A model goes live only when its metrics are sane, it beats the accuracy floor
and the majority-class baseline, keeps the live model's class list (or a
change is allowed) and beats the live model on the same test split
(:func:`chalicelib.decisions.quality_gate`). The first model creates the
endpoint; later ones update it blue/green (:mod:`chalicelib.sagemaker_requests`
builds the deployment guardrails). The live model's record in the state
table is what ``/status``, ``/labels`` and the next gate read; it is written
only from what DescribeEndpoint says the endpoint serves (:mod:`chalicelib.live`),
never when UpdateEndpoint returns. A busy endpoint queues the deployment, which
the endpoint's InService event re-drives (:mod:`chalicelib.endpoint_events`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from chalicelib import clients, naming
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.decisions import (
    ALREADY_LIVE, AWAITING_APPROVAL, ENDPOINT_BUSY, ENDPOINT_FAILED, ENDPOINT_IN_SERVICE, ENDPOINT_ROLLBACK_FAILED,
    GATE_REJECTED, RETRIABLE_ERROR_CODES, STAGE_TRAINING, GateDecision, GatePolicy, LiveFigures, busy_refusal,
    end_time_ms, endpoint_status, final_metric, headline_metrics, pipeline_tags, quality_gate, read_metrics,
    redrive_event, triggered_rules,
)
from chalicelib.live import settle
from chalicelib.observability import (
    DEPLOYMENTS_FAILED, DEPLOYMENTS_QUEUED, GATE_REJECTIONS, MODEL_ACCURACY, TRAINING_COMPLETED, logger,
)
from chalicelib.lambda_runtime import (
    NotYet, PipelineError, alert, client_error, count, idempotent, log_keys, settings, store,
)
from chalicelib.state import JobChange, StateStore
from contract import COMPLETED, DEBUGGER_HYPERPARAMETER

#: Tag stage value on models, endpoint configs and endpoints (jobs use tuning/training).
STAGE_SERVING = "serving"


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
    endpoint = describe_endpoint(s, clients.client("sagemaker"))
    if endpoint is not None and endpoint["EndpointStatus"] == ENDPOINT_IN_SERVICE:
        settle(s, state, endpoint)  # the gate compares against what the endpoint serves (its event may be late)
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
    order_ms = end_time_ms(described.get("TrainingEndTime")) or event_ms or int(time.time() * 1000)
    return deploy(
        s, state, name=name, dataset=dataset, version=version, artifacts=str(artifacts),
        accuracy=float(accuracy or 0), order_ms=order_ms, endpoint=endpoint, metrics=metrics,
    )


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


def describe_endpoint(s: Settings, sm: Any) -> dict[str, Any] | None:
    """DescribeEndpoint, or None when there is no endpoint yet; the status in the API's spelling."""
    try:
        endpoint = dict(sm.describe_endpoint(**build.describe_endpoint(s)))
    except client_error() as exc:
        if not _not_found(exc):
            raise
        return None
    endpoint["EndpointStatus"] = endpoint_status(endpoint.get("EndpointStatus"))
    return endpoint


def deploy(
    s: Settings,
    state: StateStore,
    *,
    name: str,
    dataset: str,
    version: str,
    artifacts: str,
    accuracy: float,
    order_ms: int,
    endpoint: dict[str, Any] | None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """CreateModel, CreateEndpointConfig, then CreateEndpoint or a blue/green UpdateEndpoint; LIVE waits for InService.

    ``endpoint`` is DescribeEndpoint's answer (None: no endpoint yet). A busy
    endpoint queues the deployment (:func:`_queue`), with ``metrics`` (the job's
    FinalMetricDataList, read) so its re-drive passes the same gate; a refusal that
    a retry cannot change is recorded and alerted (:func:`_refused`); throttling
    and SageMaker's own errors raise, for the Lambda's retries. The LIVE record
    it prepares keeps the headline figures (``/status``, the next gate's fallback).
    """
    model = naming.model_name(name)
    config_name = naming.endpoint_config_name(model, build.serverless(s))
    job = {"training_job": name, "model": model, "dataset": dataset, "version": version,
           "artifacts": artifacts, "accuracy": accuracy, "order_ms": int(order_ms), "metrics": dict(metrics or {})}
    status = str((endpoint or {}).get("EndpointStatus", ""))
    if endpoint is not None and endpoint.get("EndpointConfigName") == config_name:
        return {"outcome": "deployed", "action": "unchanged", "model": model, "endpoint_config": config_name}
    if status in ENDPOINT_BUSY:
        return _queue(s, state, job, f"endpoint {s.endpoint_name} is {status}")
    if status in (ENDPOINT_FAILED, ENDPOINT_ROLLBACK_FAILED):
        failure = str((endpoint or {}).get("FailureReason") or "no FailureReason")
        return _refused(s, state, job, f"endpoint {status}",
                        f"{s.endpoint_name} is {status} ({failure}); delete it, the next model recreates it")
    sm = clients.client("sagemaker")
    tags = pipeline_tags(s.name_prefix, STAGE_SERVING, dataset, version)
    version_record = state.version(dataset, version) or {}
    try:
        _create_once(sm.create_model, build.create_model(s, name=model, model_data_url=artifacts, region=clients.region(), tags=tags))
        _create_once(sm.create_endpoint_config, build.create_endpoint_config(s, name=config_name, model_name=model, tags=tags))
        state.save_deployment({
            "model": model, "training_job": name, "accuracy": accuracy,
            "metrics": headline_metrics(metrics or {}), "artifacts": artifacts,
            "labels": list(version_record.get("classes") or []), "dataset": dataset, "version": version,
            "endpoint": s.endpoint_name, "endpoint_config": config_name, "serverless": build.serverless(s),
            "deployed_at": int(time.time()),
        })
        if endpoint is None:
            sm.create_endpoint(**build.create_endpoint(s, config_name=config_name, tags=tags))
            action = "created"
        else:
            sm.update_endpoint(**build.update_endpoint(s, config_name=config_name))
            action = "updated"
    except client_error() as exc:
        code, message = clients.error_code(exc), clients.error_message(exc)
        operation = getattr(exc, "operation_name", "") or "SageMaker"
        if code in RETRIABLE_ERROR_CODES:
            raise PipelineError(f"{operation} for {model}: {code}: {message}; retried") from exc
        if busy_refusal(code, message):
            return _queue(s, state, job, f"{operation} refused: {message}")
        return _refused(s, state, job, code or "refused", f"{operation} refused: {code}: {message}")
    state.set_pending(config_name, model, name)
    state.record_job(name, stage=STAGE_TRAINING, dataset=dataset, version=version, status=COMPLETED,
                     reason=f"deploying: {s.endpoint_name} {action} to {config_name}; live when InService")
    logger.info("deployment requested; live when the endpoint is InService", extra={"action": action, "accuracy": accuracy})
    return {"outcome": "deployed", "action": action, "model": model, "endpoint_config": config_name, "accuracy": accuracy}


def _queue(s: Settings, state: StateStore, job: dict[str, Any], why: str) -> dict[str, Any]:
    """The endpoint can't take the deployment now: keep it (newest approved model wins) for InService's re-drive."""
    name = job["training_job"]
    queued, displaced = state.queue_deployment({**job, "queued_at": int(time.time())})
    common = {"stage": STAGE_TRAINING, "status": COMPLETED}
    if not queued:
        newer = (state.queued_deployment() or {}).get("training_job", "")
        reason = f"not deployed: {why}, and a newer approved model ({newer}) is queued"
        state.record_job(name, dataset=job["dataset"], version=job["version"], reason=reason, **common)
        logger.warning("deployment superseded by a newer queued one", extra={"queued": newer})
        return {"outcome": "superseded", "reason": reason, "training_job": name}
    if displaced:
        state.record_job(displaced["training_job"], dataset=str(displaced.get("dataset", "")),
                         version=str(displaced.get("version", "")), reason=f"not deployed: superseded by {name}", **common)
    reason = f"queued: {why}; deploys when it is InService"
    state.record_job(name, dataset=job["dataset"], version=job["version"], reason=reason, **common)
    count(DEPLOYMENTS_QUEUED)
    logger.warning("deployment queued", extra={"reason": why, "superseded": (displaced or {}).get("training_job", "")})
    return {"outcome": "queued", "reason": reason, "training_job": name, "model": job["model"]}


def _refused(s: Settings, state: StateStore, job: dict[str, Any], short: str, detail: str) -> dict[str, Any]:
    """A deployment that a retry cannot fix: the job's record says why, operators are told, nothing raises.

    ``short`` (an error code) leads the alert's subject, which SNS cuts at 100 characters.
    """
    name = job["training_job"]
    reason = f"not deployed: {detail}"
    state.record_job(name, stage=STAGE_TRAINING, dataset=job["dataset"], version=job["version"], status=COMPLETED, reason=reason)
    count(DEPLOYMENTS_FAILED)
    alert(f"deployment failed ({short}): {job['model']}", {
        "endpoint": s.endpoint_name, "model": job["model"], "training_job": name, "dataset": job["dataset"],
        "reason": reason, "live_model": (state.live_model() or {}).get("model", ""),
    })
    return {"outcome": "deploy_failed", "reason": reason, "training_job": name}
