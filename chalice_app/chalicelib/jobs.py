"""SageMaker job state changes: a tuning job's end starts the final training job; its end goes to the gate.

Only jobs this pipeline launched count (tags decide, :mod:`chalicelib.decisions`);
trials of our tuning jobs and foreign jobs are ignored. A Completed final
training job is handed to :func:`chalicelib.deployment.deploy_if_better`;
Failed or Stopped jobs are recorded and alerted once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from chalicelib import budget, clients, naming, uploads
from chalicelib import sagemaker_requests as build
from chalicelib.decisions import (
    STAGE_TRAINING,
    STAGE_TUNING,
    TAG_DATASET,
    TAG_VERSION,
    Relevance,
    classify_training_job,
    classify_tuning_job,
    debugger_refusal,
    event_time_ms,
    pipeline_tags,
    tags_to_dict,
)
from chalicelib.deployment import deploy_if_better, history_kept
from chalicelib.observability import TRAINING_FAILED, TRAINING_STARTED, TUNING_COMPLETED, TUNING_FAILED, logger
from chalicelib.lambda_runtime import PipelineError, alert, client_error, count, idempotent, log_keys, settings, store
from chalicelib.config import Settings
from chalicelib.state import JobChange
from contract import COMPLETED, FAILED, IN_PROGRESS, STOPPED, TERMINAL_STATUSES, unquote_hyperparameters

if TYPE_CHECKING:  # imported by app.py on first use: the data classes cost the predict route's cold start
    from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent


def _detail(event: EventBridgeEvent) -> dict[str, Any]:
    """The event's ``detail``; an event without one has nothing to identify."""
    try:
        return event.detail or {}
    except KeyError:
        return {}


def _lookup_tags(arn: str | None) -> dict[str, str]:
    """ListTags, for events that came without tags."""
    if not arn:
        return {}
    response = clients.client("sagemaker").list_tags(**build.list_tags(arn))
    return tags_to_dict(response.get("Tags", []))


def _identify_job(
    detail: dict[str, Any], kind: str, classify: Callable[..., Relevance], name_prefix: str
) -> tuple[str, str, dict[str, str], Relevance]:
    """Name, status, tags and relevance of the job in a SageMaker state-change event.

    ``kind`` is the field stem (``TrainingJob`` or ``HyperParameterTuningJob``). Tags
    come from the event; only when they can't decide (``LOOKUP``) is ListTags called.
    """
    name = str(detail.get(f"{kind}Name", ""))
    status = str(detail.get(f"{kind}Status", ""))
    tags = tags_to_dict(detail.get("Tags"))
    relevance = classify(name, tags, name_prefix)
    if relevance is Relevance.LOOKUP:
        tags = _lookup_tags(detail.get(f"{kind}Arn"))
        relevance = classify(name, tags, name_prefix)
    return name, status, tags, relevance


# -- tuning jobs ------------------------------------------------------------------------
def handle_tuning_event(event: EventBridgeEvent) -> dict[str, Any]:
    """Tuning job state change: Completed starts the final job; Failed/Stopped alert.

    Any end first frees the data set's cost-guard slot (:mod:`chalicelib.budget`);
    the end of a superseded job then only records it.
    """
    s = settings()
    detail = _detail(event)
    name, status, tags, relevance = _identify_job(detail, "HyperParameterTuningJob", classify_tuning_job, s.name_prefix)
    if relevance is not Relevance.OURS:
        logger.info("tuning job is not ours; ignored", extra={"tuning_job": name})
        return {"outcome": "ignored", "relevance": relevance.value, "tuning_job": name}
    dataset, version = tags.get(TAG_DATASET, ""), tags.get(TAG_VERSION, "")
    log_keys(dataset, tuning_job=name, dataset_version=version)
    event_ms = event_time_ms(_event_time(event), detail)
    if status in TERMINAL_STATUSES:
        _free_budget_slot(s, dataset, name)
        later = budget.superseded_by(name)
        if later:
            return _superseded_end(name, status, dataset, version, later, event_ms)
    if status == COMPLETED:
        return _start_final_training(request={"tuning_job": name}, dataset=dataset, version=version, event_ms=event_ms)
    if status in (FAILED, STOPPED):
        reason = str(detail.get("FailureReason") or _tuning_failure_reason(name))
        return _job_ended_badly(
            request={"job": name, "status": status},
            stage=STAGE_TUNING,
            dataset=dataset,
            version=version,
            reason=reason,
            event_ms=event_ms,
        )
    return {"outcome": "ignored", "reason": f"status {status}", "tuning_job": name}


def _free_budget_slot(s: Settings, dataset: str, name: str) -> None:
    """The tuning job ended: give its data set's slot to the waiting version, if any, and start that one.

    First, before anything else the event does, so a failure further on
    cannot keep the slot taken. A job that does not hold the slot (superseded,
    or a duplicate event after the slot moved on) frees nothing. A queued
    start that SageMaker refuses is alerted and gives the slot back
    (:func:`chalicelib.uploads.create_tuning_job`); this event goes on.
    """
    freed = budget.release(s, dataset, name)
    if not freed.next_job:
        return
    try:
        uploads.start_queued(s, dataset, freed.next_version, freed.next_job)
    except PipelineError:
        logger.exception("the queued version's tuning job could not start", extra={"queued": freed.next_job})


def _superseded_end(name: str, status: str, dataset: str, version: str, later: str, event_ms: int | None) -> dict[str, Any]:
    """A superseded tuning job's end: recorded with why, no alert, no failure metric, no final job."""
    state = store(settings())
    reason = f"superseded by version {later}"
    if state.record_job(name, stage=STAGE_TUNING, dataset=dataset, version=version, status=status, reason=reason,
                        event_ms=event_ms) is JobChange.REFUSED:
        return history_kept(name, status, state.job(name))
    logger.info("superseded tuning job ended; nothing started", extra={"status": status, "superseded_by": later})
    return {"outcome": "superseded", "tuning_job": name, "status": status, "superseded_by": later}


def _tuning_failure_reason(name: str) -> str:
    try:
        described = clients.client("sagemaker").describe_hyper_parameter_tuning_job(**build.describe_tuning_job(name))
        return str(described.get("FailureReason", ""))
    except Exception:  # the alert matters more than its detail
        logger.exception("could not read the tuning job's failure reason")
        return ""


def _event_time(event: EventBridgeEvent) -> str | None:
    """EventBridge's ``time``; None when the event lacks it."""
    try:
        return event.time
    except KeyError:
        return None


@idempotent("start-final-training")
def _start_final_training(
    request: dict[str, Any], dataset: str, version: str, event_ms: int | None = None
) -> dict[str, Any]:
    """Read BestTrainingJob (never in the event) and start the final job with its hyperparameters."""
    s = settings()
    tuning = request["tuning_job"]
    sm = clients.client("sagemaker")
    described = sm.describe_hyper_parameter_tuning_job(**build.describe_tuning_job(tuning))
    state = store(s)
    best = described.get("BestTrainingJob") or {}
    if not best.get("TrainingJobName"):
        if state.record_job(
            tuning, stage=STAGE_TUNING, dataset=dataset, version=version, status=FAILED,
            reason="no best training job", event_ms=event_ms,
        ) is JobChange.REFUSED:
            return history_kept(tuning, FAILED, state.job(tuning))
        count(TUNING_FAILED)
        alert(f"tuning job {tuning} completed without a best training job", {"dataset": dataset, "tuning_job": tuning})
        return {"outcome": "no_best_job", "tuning_job": tuning}
    tuned = unquote_hyperparameters(best.get("TunedHyperParameters") or {})
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    if state.record_job(
        tuning,
        stage=STAGE_TUNING,
        dataset=dataset,
        version=version,
        status=COMPLETED,
        reason=f"best {best['TrainingJobName']} {objective.get('MetricName', '')}={objective.get('Value', '')}",
        event_ms=event_ms,
    ) is JobChange.REFUSED:
        return history_kept(tuning, COMPLETED, state.job(tuning))
    count(TUNING_COMPLETED)
    name = naming.training_job_name(tuning)
    log_keys(dataset, training_job=name, best_trial=best["TrainingJobName"])
    logger.info("starting final training job", extra={"hyperparameters": tuned, "objective": objective})
    tags = pipeline_tags(s.name_prefix, STAGE_TRAINING, dataset, version)
    champion = _champion_model(sm, state, dataset, version)
    try:
        mode = _create_final_job(sm, name=name, dataset=dataset, hyperparameters=tuned, tags=tags, champion=champion)
    except client_error() as exc:
        if clients.error_code(exc) == "ResourceInUse":
            logger.info("final training job already exists")
            return {"outcome": "already_started", "training_job": name}
        count(TRAINING_FAILED)
        alert(f"could not start training job {name}", {"dataset": dataset, "error": clients.error_message(exc)})
        raise PipelineError(f"CreateTrainingJob {name}: {clients.error_message(exc)}") from exc
    state.record_job(name, stage=STAGE_TRAINING, dataset=dataset, version=version, status=IN_PROGRESS, debugger=mode)
    count(TRAINING_STARTED)
    return {"outcome": "started", "training_job": name, "hyperparameters": tuned, "debugger": mode, "champion": champion}


def _champion_model(sm: Any, state: Any, dataset: str, version: str) -> str | None:
    """The live model's model.tar.gz URI when it predicts the new version's class list, else None.

    Why only then: train.py can score the champion on the new test split only
    when both models name the same classes in the same order; a different list
    goes to the class-change guard instead. A live record from before issue 13
    has no ``artifacts``: DescribeTrainingJob of its job says where they are.
    """
    live = state.live_model()
    if not live:
        return None
    classes = list((state.version(dataset, version) or {}).get("classes") or [])
    if not classes or list(live.get("labels") or []) != classes:
        logger.info("no champion channel: the class list differs from the live model's",
                    extra={"live_labels": live.get("labels"), "classes": classes})
        return None
    uri = live.get("artifacts")
    if not uri and live.get("training_job"):
        try:
            described = sm.describe_training_job(**build.describe_training_job(str(live["training_job"])))
        except client_error():
            logger.exception("no champion channel: the live model's training job could not be described")
            return None
        uri = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if not uri:
        return None
    try:
        build.champion_channel(settings(), str(uri))
    except ValueError:
        logger.warning("no champion channel: the live model's artifacts are outside the data bucket", extra={"uri": uri})
        return None
    return str(uri)


def _create_final_job(
    sm: Any, *, name: str, dataset: str, hyperparameters: dict[str, str], tags: list[dict[str, str]],
    champion: str | None = None,
) -> str:
    """CreateTrainingJob in the configured Debugger mode; returns the mode the job really runs with.

    ``auto`` sends ``service`` first. Refused for a Debugger reason
    (:func:`chalicelib.decisions.debugger_refusal`), it alerts once, naming the
    job and AWS's answer, and sends the same job as ``in_job``. Any other error,
    and any error of the retry, propagates unchanged.
    """
    s = settings()
    first = build.request_debugger_mode(s.debugger)

    def request(mode: str) -> dict[str, Any]:
        return build.create_training_job(
            s, name=name, dataset=dataset, region=clients.region(), hyperparameters=hyperparameters, tags=tags,
            debugger=mode, champion_uri=champion,
        )

    try:
        sm.create_training_job(**request(first))
        return first
    except client_error() as exc:
        code, message = clients.error_code(exc), clients.error_message(exc)
        if s.debugger != "auto" or not debugger_refusal(code, message):
            raise
        logger.warning("SageMaker refused the Debugger service; retrying in_job", extra={"error_code": code, "error": message})
        alert(
            f"{name}: in_job, Debugger refused",
            {"dataset": dataset, "training_job": name, "error_code": code, "error": message,
             "what_to_do": "set BREEDLINE_DEBUGGER=in_job for this account (docs/aws.md, section 4.2)"},
        )
    sm.create_training_job(**request("in_job"))
    return "in_job"


# -- training jobs and both kinds' bad ends ---------------------------------------------
def handle_training_event(event: EventBridgeEvent) -> dict[str, Any]:
    """Training job state change: only our final jobs count; Completed goes to the quality gate."""
    s = settings()
    detail = _detail(event)
    name, status, tags, relevance = _identify_job(detail, "TrainingJob", classify_training_job, s.name_prefix)
    if relevance is not Relevance.OURS:
        logger.info("training job is not a final job of ours; ignored", extra={"training_job": name, "relevance": relevance.value})
        return {"outcome": "ignored", "relevance": relevance.value, "training_job": name}
    dataset, version = tags.get(TAG_DATASET, ""), tags.get(TAG_VERSION, "")
    log_keys(dataset, training_job=name, dataset_version=version)
    event_ms = event_time_ms(_event_time(event), detail)
    if status == COMPLETED:
        return deploy_if_better(request={"training_job": name}, dataset=dataset, version=version, event_ms=event_ms)
    if status in (FAILED, STOPPED):
        return _job_ended_badly(
            request={"job": name, "status": status},
            stage=STAGE_TRAINING,
            dataset=dataset,
            version=version,
            reason=str(detail.get("FailureReason", "")),
            event_ms=event_ms,
        )
    return {"outcome": "ignored", "reason": f"status {status}", "training_job": name}


@idempotent("job-ended-badly")
def _job_ended_badly(
    request: dict[str, Any], stage: str, dataset: str, version: str, reason: str, event_ms: int | None = None
) -> dict[str, Any]:
    """Failed or Stopped: record, count, alert once; start nothing. A job already ended otherwise is left as it is."""
    s = settings()
    job, status = request["job"], request["status"]
    state = store(s)
    change = state.record_job(
        job, stage=stage, dataset=dataset, version=version, status=status, reason=reason, event_ms=event_ms
    )
    if change is JobChange.REFUSED:
        return history_kept(job, status, state.job(job))
    if change is JobChange.SAME and (state.job(job) or {}).get("alerted") == status:
        # a duplicate after the idempotency record expired: recorded and alerted already
        logger.info("duplicate job state change; already recorded and alerted", extra={"job": job, "status": status})
        return {"outcome": "duplicate", "job": job, "status": status}
    count(TUNING_FAILED if stage == STAGE_TUNING else TRAINING_FAILED)
    alert(f"{stage} job {job} {status.lower()}", {"dataset": dataset, "job": job, "status": status, "reason": reason})
    state.mark_alerted(job, status)  # after the alert: a retry of a failed alert alerts again
    return {"outcome": status.lower(), "job": job, "reason": reason}
