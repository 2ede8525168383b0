"""Orchestration: what each handler does, in terms of the pure modules and AWS calls.

Why a separate module: ``app.py`` stays a thin edge (parse, call, log) and
this module is where the AWS calls happen, each one built by
:mod:`chalicelib.sagemaker_requests`. Decisions come from
:mod:`chalicelib.datasets`, :mod:`chalicelib.decisions` and
:mod:`chalicelib.predict`.

Idempotency, two layers deep:

1. Powertools idempotency (DynamoDB) around each side-effecting step, keyed by
   what makes it unique (data set + version, tuning job, training job, job +
   status), with a ``key_prefix`` so the same step taken by two different
   Lambdas (marker event and quiet-period check) shares one record. Each step
   has its own persistence-layer instance.
2. Deterministic SageMaker names: a duplicate Create* fails with
   ResourceInUse, which is read as "already started", after any idempotency
   record has expired.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from typing import Any, Callable

from chalicelib import aws, naming
from chalicelib import sagemaker_requests as build
from chalicelib.config import VARIABLES, Settings
from chalicelib.datasets import ObjectRef, dataset_of_key, is_marker, quiet_period_elapsed, validate_layout
from chalicelib.decisions import (
    STAGE_TRAINING,
    STAGE_TUNING,
    TAG_DATASET,
    TAG_VERSION,
    Relevance,
    classify_training_job,
    classify_tuning_job,
    final_metric,
    normalise_hyperparameters,
    pipeline_tags,
    quality_gate,
    tags_to_dict,
)
from chalicelib.observability import (
    DATASETS_ACCEPTED,
    DATASETS_REJECTED,
    GATE_REJECTIONS,
    MODEL_ACCURACY,
    MODELS_DEPLOYED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
    TUNING_COMPLETED,
    TUNING_FAILED,
    TUNING_STARTED,
    UPLOADS_SEEN,
    logger,
    metrics,
    tracer,
)
from chalicelib.predict import (
    ENDPOINT_UNREACHABLE,
    MODEL_NOT_DEPLOYED,
    PredictError,
    error_status,
    map_invoke_error,
    shape_prediction,
    validate_image_request,
)
from chalicelib.state import StateStore

#: Tag stage value on models, endpoint configs and endpoints (jobs use tuning/training).
STAGE_SERVING = "serving"
#: Endpoint states in which UpdateEndpoint is refused; the deployment is retried.
_BUSY_ENDPOINT = {"Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed", "Deleting"}


class PipelineError(RuntimeError):
    """A step failed in a way worth a Lambda retry (the idempotency record is released)."""


# ---------------------------------------------------------------------------
# plumbing: settings, state, metrics, alerts, idempotency
# ---------------------------------------------------------------------------
_stores: dict[str, StateStore] = {}
_idempotent_cache: dict[tuple[str, str, int], tuple[Callable[..., Any], Any]] = {}
_lambda_context: Any = None


_settings_cache: dict[tuple[str | None, ...], Settings] = {}


def settings() -> Settings:
    """Settings for the current environment, parsed once per distinct environment.

    Read per invocation (the local runtime and tests change the environment),
    but parsed only when a value changed: the predict route's budget is ~2 ms.
    """
    key = tuple(os.environ.get(v.name) for v in VARIABLES)
    found = _settings_cache.get(key)
    if found is None:
        found = Settings.from_env()
        _settings_cache.clear()
        _settings_cache[key] = found
    return found


def store(s: Settings) -> StateStore:
    found = _stores.get(s.state_table)
    if found is None:
        found = StateStore(aws.client("dynamodb"), s.state_table)
        _stores[s.state_table] = found
    return found


def reset() -> None:
    """Forget clients, stores and idempotency layers (tests, endpoint changes)."""
    aws.reset()
    _stores.clear()
    _idempotent_cache.clear()
    _live_name.clear()


def set_lambda_context(context: Any) -> None:
    """Give idempotency the remaining time of the invocation (in-progress expiry)."""
    global _lambda_context
    _lambda_context = context


def count(name: str, value: float = 1, unit: str = "Count") -> None:
    metrics.add_metric(name=name, unit=unit, value=value)


def _subject(text: str) -> str:
    """SNS subjects: printable ASCII, one line, at most 100 characters."""
    return re.sub(r"[^ -~]", "?", text)[:100]


def alert(subject: str, details: dict[str, Any]) -> bool:
    """Tell operators (SNS) and the logs; returns whether a notification was sent."""
    s = settings()
    logger.error(f"ALERT: {subject}", extra={"alert": details})
    if not s.alert_topic_arn:
        logger.warning("alert not sent: BREEDLINE_ALERT_TOPIC_ARN is empty")
        return False
    aws.client("sns").publish(
        TopicArn=s.alert_topic_arn,
        Subject=_subject(f"Breedline: {subject}"),
        Message=json.dumps({"subject": subject, **details}, indent=1, default=str),
    )
    return True


def _idempotent(key_prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a step idempotent on its ``request`` keyword argument.

    Built lazily (importing the utility imports boto3) and one
    ``DynamoDBPersistenceLayer`` per step: sharing an instance between two
    decorated functions breaks them.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*, request: dict[str, Any], **kwargs: Any) -> Any:
            s = settings()
            cache_key = (key_prefix, s.idempotency_table, s.idempotency_ttl_seconds)
            entry = _idempotent_cache.get(cache_key)
            if entry is None:
                from aws_lambda_powertools.utilities.idempotency import (
                    DynamoDBPersistenceLayer,
                    IdempotencyConfig,
                    idempotent_function,
                )

                layer = DynamoDBPersistenceLayer(table_name=s.idempotency_table, boto3_client=aws.client("dynamodb"))
                config = IdempotencyConfig(expires_after_seconds=s.idempotency_ttl_seconds)
                wrapped = idempotent_function(
                    fn, data_keyword_argument="request", persistence_store=layer, config=config, key_prefix=key_prefix
                )
                entry = (wrapped, config)
                _idempotent_cache[cache_key] = entry
            wrapped, config = entry
            if _lambda_context is not None and hasattr(_lambda_context, "get_remaining_time_in_millis"):
                config.register_lambda_context(_lambda_context)
            from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

            try:
                return wrapped(request=request, **kwargs)
            except IdempotencyAlreadyInProgressError:
                logger.info("same step already in progress elsewhere; skipping", extra={"step": key_prefix})
                return {"outcome": "in_progress", "step": key_prefix}

        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call

    return decorate


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _event_epoch(event: dict[str, Any]) -> float:
    """EventBridge ``time`` (``2026-11-25T18:00:00Z``) as epoch seconds; now if absent."""
    raw = event.get("time")
    if isinstance(raw, str) and raw:
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _bind(dataset: str | None, **keys: str | None) -> None:
    """Log keys: the data set name is the correlation id across every Lambda."""
    present = {k: v for k, v in keys.items() if v}
    if dataset:
        logger.set_correlation_id(dataset)
        present["dataset"] = dataset
    if present:
        logger.append_keys(**present)


# ---------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------
@tracer.capture_method
def handle_upload(event: dict[str, Any]) -> dict[str, Any]:
    """S3 Object Created (via EventBridge): remember the upload; a marker settles the data set now."""
    s = settings()
    detail = event.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    key = (detail.get("object") or {}).get("key") or ""
    if bucket != s.bucket:
        logger.info("upload in another bucket ignored", extra={"bucket": bucket, "key": key})
        return {"outcome": "ignored", "reason": "other bucket"}
    dataset = dataset_of_key(key, s.data_prefix)
    if dataset is None:
        logger.info("object outside any data set ignored", extra={"key": key})
        return {"outcome": "ignored", "reason": "not in a data set folder"}
    _bind(dataset, key=key)
    count(UPLOADS_SEEN)
    reopened = store(s).record_upload(dataset, key, _event_epoch(event))
    if is_marker(key, s.data_prefix, s.ready_marker):
        logger.info("ready marker seen; settling data set now")
        return settle_dataset(dataset, trigger="marker")
    return {"outcome": "recorded", "dataset": dataset, "pending": reopened}


def list_dataset(s: Settings, dataset: str) -> list[ObjectRef]:
    """Every object under ``<data prefix><dataset>/`` (paginated)."""
    paginator = aws.client("s3").get_paginator("list_objects_v2")
    objects: list[ObjectRef] = []
    for page in paginator.paginate(Bucket=s.bucket, Prefix=f"{s.data_prefix}{dataset}/"):
        for obj in page.get("Contents", []):
            objects.append(ObjectRef(key=obj["Key"], size=int(obj.get("Size", 0)), etag=str(obj.get("ETag", ""))))
    return objects


@tracer.capture_method
def settle_dataset(dataset: str, trigger: str) -> dict[str, Any]:
    """List and validate the data set, then start tuning or reject it, once per version."""
    s = settings()
    listed_at = time.time()
    report = validate_layout(
        dataset,
        list_dataset(s, dataset),
        data_prefix=s.data_prefix,
        marker=s.ready_marker,
        image_extensions=s.image_extensions,
        min_images_per_class=s.min_images_per_class,
    )
    _bind(dataset, dataset_version=report.version)
    result = _settle_version(
        request={"dataset": dataset, "version": report.version},
        reasons=list(report.reasons),
        classes=list(report.classes),
        image_count=report.image_count,
        trigger=trigger,
    )
    store(s).settle(dataset, report.version, str(result.get("outcome")), listed_at, report.reasons)
    return result


@_idempotent("settle-dataset-version")
def _settle_version(
    request: dict[str, Any], reasons: list[str], classes: list[str], image_count: int, trigger: str
) -> dict[str, Any]:
    """Once per (data set, version): reject with an alert, or start one tuning job."""
    s = settings()
    dataset, version = request["dataset"], request["version"]
    if reasons:
        count(DATASETS_REJECTED)
        logger.warning("data set rejected", extra={"reasons": reasons, "trigger": trigger})
        alert(
            f"data set {dataset} rejected",
            {"dataset": dataset, "version": version, "reasons": reasons, "what_to_do": "fix the layout and upload again"},
        )
        return {"outcome": "rejected", "dataset": dataset, "version": version, "reasons": reasons}
    count(DATASETS_ACCEPTED)
    logger.info("data set accepted", extra={"classes": len(classes), "images": image_count, "trigger": trigger})
    return start_tuning(s, dataset, version, classes, image_count)


def start_tuning(s: Settings, dataset: str, version: str, classes: list[str], image_count: int) -> dict[str, Any]:
    """CreateHyperParameterTuningJob under a deterministic name; ResourceInUse means done already."""
    name = naming.tuning_job_name(s.name_prefix, dataset, version)
    _bind(dataset, tuning_job=name)
    state = store(s)
    state.save_version(dataset, version, classes, image_count, name)
    request = build.create_tuning_job(
        s, name=name, dataset=dataset, region=aws.region(), tags=pipeline_tags(s.name_prefix, STAGE_TUNING, dataset, version)
    )
    try:
        aws.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    except _client_error() as exc:
        if aws.error_code(exc) == "ResourceInUse":
            logger.info("tuning job already exists; nothing to start")
            return {"outcome": "already_started", "tuning_job": name, "dataset": dataset, "version": version}
        count(TUNING_FAILED)
        alert(f"could not start tuning job {name}", {"dataset": dataset, "error": aws.error_message(exc)})
        raise PipelineError(f"CreateHyperParameterTuningJob {name}: {aws.error_message(exc)}") from exc
    state.record_job(name, stage=STAGE_TUNING, dataset=dataset, version=version, status="InProgress")
    count(TUNING_STARTED)
    logger.info("tuning job started")
    return {"outcome": "started", "tuning_job": name, "dataset": dataset, "version": version}


@tracer.capture_method
def check_quiet(now: float | None = None) -> list[dict[str, Any]]:
    """Scheduled: settle every pending data set whose uploads have gone quiet."""
    s = settings()
    now = time.time() if now is None else now
    results: list[dict[str, Any]] = []
    for item in store(s).pending_datasets():
        last = item.get("last_upload")
        if last is None or not quiet_period_elapsed(float(last), now, s.quiet_period_seconds):
            continue
        dataset = item["dataset"]
        try:
            results.append(settle_dataset(dataset, trigger="quiet"))
        except Exception:  # one broken data set must not block the others
            logger.exception("settling data set failed", extra={"dataset": dataset})
            results.append({"outcome": "error", "dataset": dataset})
    return results


# ---------------------------------------------------------------------------
# SageMaker state changes
# ---------------------------------------------------------------------------
def _lookup_tags(arn: str | None) -> dict[str, str]:
    """ListTags, for events that came without tags."""
    if not arn:
        return {}
    response = aws.client("sagemaker").list_tags(**build.list_tags(arn))
    return tags_to_dict(response.get("Tags", []))


def _identify_job(
    detail: dict[str, Any], kind: str, classify: Any, name_prefix: str
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


@tracer.capture_method
def handle_tuning_event(event: dict[str, Any]) -> dict[str, Any]:
    """Tuning job state change: Completed starts the final job; Failed/Stopped alert."""
    s = settings()
    detail = event.get("detail") or {}
    name, status, tags, relevance = _identify_job(detail, "HyperParameterTuningJob", classify_tuning_job, s.name_prefix)
    if relevance is not Relevance.OURS:
        logger.info("tuning job is not ours; ignored", extra={"tuning_job": name})
        return {"outcome": "ignored", "relevance": relevance.value, "tuning_job": name}
    dataset, version = tags.get(TAG_DATASET, ""), tags.get(TAG_VERSION, "")
    _bind(dataset, tuning_job=name, dataset_version=version)
    if status == "Completed":
        return _start_final_training(request={"tuning_job": name}, dataset=dataset, version=version)
    if status in ("Failed", "Stopped"):
        reason = str(detail.get("FailureReason") or _tuning_failure_reason(name))
        return _job_ended_badly(
            request={"job": name, "status": status}, stage=STAGE_TUNING, dataset=dataset, version=version, reason=reason
        )
    return {"outcome": "ignored", "reason": f"status {status}", "tuning_job": name}


def _tuning_failure_reason(name: str) -> str:
    try:
        return str(aws.client("sagemaker").describe_hyper_parameter_tuning_job(**build.describe_tuning_job(name)).get("FailureReason", ""))
    except Exception:  # the alert matters more than its detail
        logger.exception("could not read the tuning job's failure reason")
        return ""


@_idempotent("start-final-training")
def _start_final_training(request: dict[str, Any], dataset: str, version: str) -> dict[str, Any]:
    """Read BestTrainingJob (never in the event) and start the final job with its hyperparameters."""
    s = settings()
    tuning = request["tuning_job"]
    sm = aws.client("sagemaker")
    described = sm.describe_hyper_parameter_tuning_job(**build.describe_tuning_job(tuning))
    state = store(s)
    best = described.get("BestTrainingJob") or {}
    if not best.get("TrainingJobName"):
        count(TUNING_FAILED)
        state.record_job(tuning, stage=STAGE_TUNING, dataset=dataset, version=version, status="Failed", reason="no best training job")
        alert(f"tuning job {tuning} completed without a best training job", {"dataset": dataset, "tuning_job": tuning})
        return {"outcome": "no_best_job", "tuning_job": tuning}
    tuned = normalise_hyperparameters(best.get("TunedHyperParameters") or {})
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    count(TUNING_COMPLETED)
    state.record_job(
        tuning,
        stage=STAGE_TUNING,
        dataset=dataset,
        version=version,
        status="Completed",
        reason=f"best {best['TrainingJobName']} {objective.get('MetricName', '')}={objective.get('Value', '')}",
    )
    name = naming.training_job_name(tuning)
    _bind(dataset, training_job=name, best_trial=best["TrainingJobName"])
    logger.info("starting final training job", extra={"hyperparameters": tuned, "objective": objective})
    request_body = build.create_training_job(
        s,
        name=name,
        dataset=dataset,
        region=aws.region(),
        hyperparameters=tuned,
        tags=pipeline_tags(s.name_prefix, STAGE_TRAINING, dataset, version),
    )
    try:
        sm.create_training_job(**request_body)
    except _client_error() as exc:
        if aws.error_code(exc) == "ResourceInUse":
            logger.info("final training job already exists")
            return {"outcome": "already_started", "training_job": name}
        count(TRAINING_FAILED)
        alert(f"could not start training job {name}", {"dataset": dataset, "error": aws.error_message(exc)})
        raise PipelineError(f"CreateTrainingJob {name}: {aws.error_message(exc)}") from exc
    state.record_job(name, stage=STAGE_TRAINING, dataset=dataset, version=version, status="InProgress")
    count(TRAINING_STARTED)
    return {"outcome": "started", "training_job": name, "hyperparameters": tuned}


@_idempotent("job-ended-badly")
def _job_ended_badly(request: dict[str, Any], stage: str, dataset: str, version: str, reason: str) -> dict[str, Any]:
    """Failed or Stopped: record, count, alert once; start nothing."""
    s = settings()
    job, status = request["job"], request["status"]
    store(s).record_job(job, stage=stage, dataset=dataset, version=version, status=status, reason=reason)
    count(TUNING_FAILED if stage == STAGE_TUNING else TRAINING_FAILED)
    alert(f"{stage} job {job} {status.lower()}", {"dataset": dataset, "job": job, "status": status, "reason": reason})
    return {"outcome": status.lower(), "job": job, "reason": reason}


@tracer.capture_method
def handle_training_event(event: dict[str, Any]) -> dict[str, Any]:
    """Training job state change: only our final jobs count; Completed goes to the quality gate."""
    s = settings()
    detail = event.get("detail") or {}
    name, status, tags, relevance = _identify_job(detail, "TrainingJob", classify_training_job, s.name_prefix)
    if relevance is not Relevance.OURS:
        logger.info("training job is not a final job of ours; ignored", extra={"training_job": name, "relevance": relevance.value})
        return {"outcome": "ignored", "relevance": relevance.value, "training_job": name}
    dataset, version = tags.get(TAG_DATASET, ""), tags.get(TAG_VERSION, "")
    _bind(dataset, training_job=name, dataset_version=version)
    if status == "Completed":
        return _deploy_if_better(request={"training_job": name}, dataset=dataset, version=version)
    if status in ("Failed", "Stopped"):
        return _job_ended_badly(
            request={"job": name, "status": status},
            stage=STAGE_TRAINING,
            dataset=dataset,
            version=version,
            reason=str(detail.get("FailureReason", "")),
        )
    return {"outcome": "ignored", "reason": f"status {status}", "training_job": name}


@_idempotent("deploy-if-better")
def _deploy_if_better(request: dict[str, Any], dataset: str, version: str) -> dict[str, Any]:
    """Quality gate on DescribeTrainingJob's metrics, then model, config and endpoint."""
    s = settings()
    name = request["training_job"]
    described = aws.client("sagemaker").describe_training_job(**build.describe_training_job(name))
    if described.get("TrainingJobStatus") != "Completed":
        return {"outcome": "ignored", "reason": f"DescribeTrainingJob says {described.get('TrainingJobStatus')}"}
    state = store(s)
    accuracy = final_metric(described.get("FinalMetricDataList") or [])
    artifacts = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    state.record_job(name, stage=STAGE_TRAINING, dataset=dataset, version=version, status="Completed")
    count(TRAINING_COMPLETED)
    if accuracy is not None:
        count(MODEL_ACCURACY, accuracy, unit="None")
    live = state.live_model()
    live_accuracy = float(live["accuracy"]) if live and live.get("accuracy") is not None else None
    decision = quality_gate(accuracy, live_accuracy, s.accuracy_floor)
    if decision.deploy and not artifacts:
        decision = type(decision)(False, "no ModelArtifacts in DescribeTrainingJob", accuracy)
    _bind(dataset, model=naming.model_name(name))
    if not decision.deploy:
        count(GATE_REJECTIONS)
        state.record_job(name, stage=STAGE_TRAINING, dataset=dataset, version=version, status="Completed", reason=f"not deployed: {decision.reason}")
        logger.warning("quality gate: not deployed", extra={"reason": decision.reason, "accuracy": accuracy, "live_accuracy": live_accuracy})
        return {"outcome": "gate_rejected", "reason": decision.reason, "training_job": name}
    logger.info("quality gate passed", extra={"reason": decision.reason})
    return deploy(s, state, name=name, dataset=dataset, version=version, artifacts=str(artifacts), accuracy=float(accuracy or 0), live=live)


def _create_once(call: Callable[..., Any], request: dict[str, Any]) -> bool:
    """Create a model or endpoint config; an existing one of that name is fine (retries)."""
    try:
        call(**request)
    except _client_error() as exc:
        if aws.error_code(exc) in ("ValidationException", "ResourceInUse") and "already exist" in aws.error_message(exc).lower():
            return False
        raise
    return True


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
) -> dict[str, Any]:
    """CreateModel, CreateEndpointConfig, then CreateEndpoint or a blue/green UpdateEndpoint."""
    sm = aws.client("sagemaker")
    tags = pipeline_tags(s.name_prefix, STAGE_SERVING, dataset, version)
    model = naming.model_name(name)
    config_name = naming.endpoint_config_name(model, build.serverless(s))
    _create_once(sm.create_model, build.create_model(s, name=model, model_data_url=artifacts, region=aws.region(), tags=tags))
    _create_once(sm.create_endpoint_config, build.create_endpoint_config(s, name=config_name, model_name=model, tags=tags))
    try:
        endpoint = sm.describe_endpoint(**build.describe_endpoint(s))
    except _client_error() as exc:
        if "could not find" not in aws.error_message(exc).lower() and "not found" not in aws.error_message(exc).lower():
            raise
        endpoint = None
    if endpoint is None:
        sm.create_endpoint(**build.create_endpoint(s, config_name=config_name, tags=tags))
        action = "created"
    else:
        status = str(endpoint.get("EndpointStatus", ""))
        if endpoint.get("EndpointConfigName") == config_name:
            action = "unchanged"
        elif status in _BUSY_ENDPOINT:
            # Raising releases the idempotency record; Lambda's async retries try again later.
            raise PipelineError(f"endpoint {s.endpoint_name} is {status}; deployment of {model} will be retried")
        elif status == "Failed":
            alert(f"endpoint {s.endpoint_name} is Failed", {"model": model, "what_to_do": "delete the endpoint; the next model recreates it"})
            raise PipelineError(f"endpoint {s.endpoint_name} is Failed")
        else:
            sm.update_endpoint(**build.update_endpoint(s, config_name=config_name))
            action = "updated"
    version_record = state.version(dataset, version) or {}
    record = {
        "model": model,
        "training_job": name,
        "accuracy": accuracy,
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


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------
def predict(body: bytes | None, content_type: str | None) -> dict[str, Any]:
    """Validate, InvokeEndpoint, shape the answer; every failure is a PredictError."""
    s = settings()
    kind = validate_image_request(content_type, body, s.max_image_bytes)
    client = aws.client("sagemaker-runtime")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = client.invoke_endpoint(**build.invoke_endpoint(s, body=body or b"", content_type=kind))
        payload = response["Body"].read()
    except ClientError as exc:
        original = error_status(exc.response) or error_status(exc.response.get("Error", {}))
        raise map_invoke_error(aws.error_code(exc), aws.error_message(exc), original) from exc
    except BotoCoreError as exc:
        raise PredictError(ENDPOINT_UNREACHABLE, f"The model endpoint did not answer ({type(exc).__name__})") from exc
    variant = str(response.get("InvokedProductionVariant") or "")
    model = variant if variant and variant != s.variant_name else live_model_name(s)
    return shape_prediction(payload, model, s.top_k)


#: How long the predict route trusts its copy of the live model's name.
LIVE_NAME_TTL_SECONDS = 60.0
_live_name: dict[str, tuple[float, str]] = {}


def live_model_name(s: Settings) -> str:
    """The live model's name for the ``model`` field when the variant name is fixed.

    Cached per table for a minute, so the route reads DynamoDB at most once a
    minute; after a deployment the name may lag by that long. Any failure
    answers the endpoint name: a prediction never fails over its label.
    """
    now = time.monotonic()
    cached = _live_name.get(s.state_table)
    if cached and cached[0] > now:
        return cached[1]
    try:
        live = store(s).live_model()
        name = str(live.get("model")) if live and live.get("model") else s.endpoint_name
    except Exception:
        logger.exception("could not read the live model's name")
        name = s.endpoint_name
    _live_name[s.state_table] = (now + LIVE_NAME_TTL_SECONDS, name)
    return name


def status() -> dict[str, Any]:
    """The live model, the latest tuning and training jobs, and the endpoint's state."""
    s = settings()
    state = store(s)
    live = state.live_model()
    endpoint: dict[str, Any] = {"name": s.endpoint_name, "status": "NotDeployed"}
    try:
        described = aws.client("sagemaker").describe_endpoint(**build.describe_endpoint(s))
        endpoint["status"] = described.get("EndpointStatus", "Unknown")
        endpoint["config"] = described.get("EndpointConfigName")
    except Exception as exc:  # /status must answer even when SageMaker does not
        if "not find" not in aws.error_message(exc).lower() and "not found" not in aws.error_message(exc).lower():
            endpoint["status"] = "Unknown"
            endpoint["error"] = aws.error_code(exc) or type(exc).__name__
    if live is not None:
        live = {k: v for k, v in live.items() if k not in ("pk", "sk", "labels")}
    return {"live_model": live, "jobs": state.latest_jobs(), "endpoint": endpoint}


def labels() -> dict[str, Any]:
    """The live model's class names, in the model's output order."""
    live = store(settings()).live_model()
    if not live:
        raise PredictError(MODEL_NOT_DEPLOYED, "No model is deployed yet, so there are no labels")
    return {"model": live.get("model"), "labels": list(live.get("labels") or [])}
