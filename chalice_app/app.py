"""Breedline's Lambda functions: thin edges over ``chalicelib``.

Every handler parses its event, calls :mod:`chalicelib.pipeline`, logs and
flushes metrics; the decisions live in pure modules. boto3 is imported on
first use only, so a cold start of the predict route pays for chalice and
Powertools, not for every AWS client.

Event patterns and the schedule are built from configuration when the app is
loaded (``chalice package`` loads it with the stage's environment), and the
local runtime reads them from ``app.event_sources`` to create the same rules.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from chalice import Chalice, IAMAuthorizer, Rate, Response

from chalicelib import pipeline
from chalicelib.config import Settings
from chalicelib.decisions import TERMINAL_STATUSES
from chalicelib.observability import (
    ERROR_CODE_DIMENSION,
    PREDICT_ERRORS,
    PREDICT_LATENCY,
    PREDICT_REQUESTS,
    logger,
    metrics,
)
from chalicelib.predict import CONTENT_TYPES, INTERNAL_ERROR, PredictError, decode_event_body

app = Chalice(app_name="breedline")
for _type in CONTENT_TYPES:
    if _type not in app.api.binary_types:
        app.api.binary_types.append(_type)

_BOOT = Settings.from_env()

#: S3 "Object Created" through EventBridge, for the data bucket's data prefix only.
UPLOAD_PATTERN = {
    "source": ["aws.s3"],
    "detail-type": ["Object Created"],
    "detail": {
        "bucket": {"name": [_BOOT.bucket]},
        "object": {"key": [{"prefix": _BOOT.data_prefix}]},
    },
}
#: Terminal states of tuning jobs named with our prefix (tags are checked in the handler).
TUNING_PATTERN = {
    "source": ["aws.sagemaker"],
    "detail-type": ["SageMaker HyperParameter Tuning Job State Change"],
    "detail": {
        "HyperParameterTuningJobStatus": list(TERMINAL_STATUSES),
        "HyperParameterTuningJobName": [{"prefix": f"{_BOOT.name_prefix}-"}],
    },
}
#: Terminal states of training jobs named with our prefix: final jobs and trials;
#: the handler tells them apart (tags), and ignores everything that is not a final job.
TRAINING_PATTERN = {
    "source": ["aws.sagemaker"],
    "detail-type": ["SageMaker Training Job State Change"],
    "detail": {
        "TrainingJobStatus": list(TERMINAL_STATUSES),
        "TrainingJobName": [{"prefix": f"{_BOOT.name_prefix}-"}],
    },
}


def _auth(mode: str, *, private: bool) -> dict[str, Any]:
    """Route auth kwargs for BREEDLINE_API_AUTH; ``private`` routes are never open."""
    if mode == "iam" or (mode == "none" and private):
        return {"authorizer": IAMAuthorizer()}
    if mode == "api_key":
        return {"api_key_required": True}
    return {}


def _run(handler: str, event: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Common frame of every event handler: fresh log keys, context, metrics flushed."""
    logger.clear_state()
    logger.append_keys(handler=handler)
    context = getattr(event, "context", None)
    pipeline.set_lambda_context(context)
    if context is not None and getattr(context, "aws_request_id", None):
        logger.append_keys(request_id=context.aws_request_id)
    try:
        result = fn(*args)
        logger.info("handled", extra={"result": result if isinstance(result, dict) else {"items": result}})
        return result
    except Exception:
        logger.exception("handler failed; the event will be retried")
        raise
    finally:
        _flush()


def _flush() -> None:
    if metrics.metric_set:
        metrics.flush_metrics()


@app.on_cw_event(UPLOAD_PATTERN, name="on_dataset_upload")
def on_dataset_upload(event: Any) -> dict[str, Any]:
    """An object landed under the data prefix."""
    return _run("on_dataset_upload", event, pipeline.handle_upload, event.to_dict())


@app.schedule(Rate(_BOOT.quiet_check_minutes, unit=Rate.MINUTES), name="check_quiet_datasets")
def check_quiet_datasets(event: Any) -> list[dict[str, Any]]:
    """Debounce for uploads without a marker."""
    return _run("check_quiet_datasets", event, pipeline.check_quiet)


@app.on_cw_event(TUNING_PATTERN, name="on_tuning_state_change")
def on_tuning_state_change(event: Any) -> dict[str, Any]:
    return _run("on_tuning_state_change", event, pipeline.handle_tuning_event, event.to_dict())


@app.on_cw_event(TRAINING_PATTERN, name="on_training_state_change")
def on_training_state_change(event: Any) -> dict[str, Any]:
    return _run("on_training_state_change", event, pipeline.handle_training_event, event.to_dict())


def _json(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body), status_code=status, headers={"Content-Type": "application/json"})


# content_types="*/*": the route itself answers 415 in our JSON shape instead of
# Chalice's own error body; the accepted types are checked in chalicelib.predict.
@app.route("/predict", methods=["POST"], content_types=["*/*"], **_auth(_BOOT.api_auth, private=False))
def predict() -> Response:
    """Classify one JPEG or PNG image."""
    started = time.perf_counter()
    request = app.current_request
    code = "ok"
    try:
        # Not request.raw_body: Chalice's stdlib base64 decode would be most of the route's time.
        body = decode_event_body(request.to_original_event())
        answer = pipeline.predict(body, request.headers.get("content-type"))
        response = _json(answer)
    except PredictError as exc:
        code = exc.code
        response = _json(exc.body(), exc.status)
    except Exception:  # never a 500: an unexpected failure is still a JSON error
        logger.exception("predict failed unexpectedly")
        error = PredictError(INTERNAL_ERROR, "The prediction failed unexpectedly; retry later")
        code = error.code
        response = _json(error.body(), error.status)
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name=PREDICT_REQUESTS, unit=MetricUnit.Count, value=1)
    metrics.add_metric(name=PREDICT_LATENCY, unit=MetricUnit.Milliseconds, value=elapsed_ms)
    _flush()
    if code != "ok":
        with single_metric(name=PREDICT_ERRORS, unit=MetricUnit.Count, value=1) as metric:
            metric.add_dimension(name=ERROR_CODE_DIMENSION, value=code)
        logger.warning("predict error", extra={"code": code, "status": response.status_code, "ms": round(elapsed_ms, 2)})
    return response


@app.route("/status", methods=["GET"], **_auth(_BOOT.api_auth, private=True))
def status() -> Response:
    """The live model, its accuracy, and the latest jobs with their states."""
    try:
        return _json(pipeline.status())
    except Exception:
        logger.exception("status failed")
        return _json({"code": "state_unavailable", "message": "Pipeline state cannot be read right now"}, 503)


@app.route("/labels", methods=["GET"], **_auth(_BOOT.api_auth, private=True))
def labels() -> Response:
    """The class names the live model predicts."""
    try:
        return _json(pipeline.labels())
    except PredictError as exc:
        return _json(exc.body(), exc.status)
    except Exception:
        logger.exception("labels failed")
        return _json({"code": "state_unavailable", "message": "Pipeline state cannot be read right now"}, 503)
