"""The REST API's work: POST /predict (with its metrics), GET /status and GET /labels.

Why apart from the pipeline steps: these run in the API handler, on every
request, so they read settings and state through the per-process caches of
:mod:`chalicelib.lambda_runtime` and never import boto3 before a request needs it.
Every predict failure is a :class:`chalicelib.predict.PredictError` with a
stable code; ``app.py`` turns it into the JSON answer.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from chalicelib import clients, lambda_runtime
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.lambda_runtime import settings, store
from chalicelib.observability import (
    ERROR_CODE_DIMENSION,
    PREDICT_ERRORS,
    PREDICT_LATENCY,
    PREDICT_REQUESTS,
    flush,
    logger,
    metrics,
    report_failure,
)
from chalicelib.predict import (
    ENDPOINT_TIMEOUT,
    ENDPOINT_UNREACHABLE,
    INTERNAL_ERROR,
    MODEL_NOT_DEPLOYED,
    MULTIPART,
    PredictError,
    abstain_parameter,
    decode_event_body,
    error_original_message,
    error_status,
    map_invoke_error,
    media_type,
    shape_prediction,
    validate_image_request,
)

#: How long the predict route trusts its copy of the live model's name.
LIVE_NAME_TTL_SECONDS = 60.0


def answer_predict(event: dict[str, Any], content_type: str | None) -> tuple[dict[str, Any], int]:
    """POST /predict's JSON body and status, with its metrics and log line; never a 500.

    ``event`` is the API Gateway proxy event: its body is decoded here, not
    through Chalice's ``raw_body``, whose stdlib base64 decode would be most of
    the route's time.
    """
    started = time.perf_counter()
    code = "ok"
    try:
        answer, status = predict(decode_event_body(event), content_type, abstain_parameter(event)), 200
    except PredictError as exc:
        code, answer, status = exc.code, exc.body(), exc.status
    except Exception as exc:  # noqa: BLE001 - never a 500: an unexpected failure is still a JSON error
        try:
            logger.exception("predict failed unexpectedly")
        except Exception:  # noqa: BLE001 - the logger itself failed: stderr gets the original error
            report_failure("predict failed unexpectedly", exc)
        error = PredictError(INTERNAL_ERROR, "The prediction failed unexpectedly; retry later")
        code, answer, status = error.code, error.body(), error.status
    observe_predict(code, status, (time.perf_counter() - started) * 1000)
    return answer, status


def observe_predict(code: str, status: int, elapsed_ms: float) -> None:
    """The request's metrics and, for an error, its log line; never raises (issue 15, item 11).

    Why guarded: the answer is already decided, and a metrics or logging failure
    (a missing namespace, a broken stdout) must not turn it into a 500.
    """
    try:
        metrics.add_metric(name=PREDICT_REQUESTS, unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=PREDICT_LATENCY, unit=MetricUnit.Milliseconds, value=elapsed_ms)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        report_failure("predict metrics failed", exc)
    flush()
    if code == "ok":
        return
    try:
        with single_metric(
            name=PREDICT_ERRORS, unit=MetricUnit.Count, value=1, namespace=metrics.namespace
        ) as metric:
            metric.add_dimension(name=ERROR_CODE_DIMENSION, value=code)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        report_failure("predict error metric failed", exc)
    try:
        logger.warning("predict error", extra={"code": code, "status": status, "ms": round(elapsed_ms, 2)})
    except Exception as exc:  # noqa: BLE001 - see the docstring
        report_failure("predict error log failed", exc)


def predict(body: bytes | None, content_type: str | None, abstain: bool = True) -> dict[str, Any]:
    """Validate, InvokeEndpoint, shape the answer; every failure is a PredictError.

    A ``multipart/form-data`` body is a form with one image part
    (:mod:`chalicelib.multipart`): that part is checked and forwarded as a plain upload would be.
    ``abstain=False`` (``?abstain=false``) asks the model for its raw answer (issue 13).
    """
    s = settings()
    if media_type(content_type) == MULTIPART:
        from chalicelib.multipart import form_image

        body, content_type = form_image(body, content_type, s.image_limit())
    kind = validate_image_request(content_type, body, s.image_limit(), s.max_decode_megapixels)
    client = clients.client("sagemaker-runtime", s.invoke_timeout_seconds)
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

    try:
        response = client.invoke_endpoint(**build.invoke_endpoint(s, body=body or b"", content_type=kind,
                                                                  abstain=abstain))
        payload = response["Body"].read()
    except ClientError as exc:
        original = error_status(exc.response) or error_status(exc.response.get("Error", {}))
        text = error_original_message(exc.response) or error_original_message(exc.response.get("Error", {}))
        raise map_invoke_error(clients.error_code(exc), clients.error_message(exc), original, text) from exc
    except (ReadTimeoutError, ConnectTimeoutError) as exc:
        message = f"The model endpoint did not answer within {s.invoke_timeout_seconds:g} s; retry later"
        raise PredictError(ENDPOINT_TIMEOUT, message) from exc
    except BotoCoreError as exc:
        raise PredictError(ENDPOINT_UNREACHABLE, f"The model endpoint did not answer ({type(exc).__name__})") from exc
    variant = str(response.get("InvokedProductionVariant") or "")
    model = variant if variant and variant != s.variant_name else live_model_name(s)
    return shape_prediction(payload, model, s.top_k)


def live_model_name(s: Settings) -> str:
    """The live model's name for the ``model`` field when the variant name is fixed.

    Cached per table for a minute (:data:`chalicelib.lambda_runtime.live_names`), so
    the route reads DynamoDB at most once a minute; after a deployment the
    name may lag by that long. Any failure answers the endpoint name: a
    prediction never fails over its label.
    """
    now = time.monotonic()
    cached = lambda_runtime.live_names.get(s.state_table)
    if cached and cached[0] > now:
        return cached[1]
    try:
        live = store(s).live_model()
        name = str(live.get("model")) if live and live.get("model") else s.endpoint_name
    except Exception:
        logger.exception("could not read the live model's name")
        name = s.endpoint_name
    lambda_runtime.live_names[s.state_table] = (now + LIVE_NAME_TTL_SECONDS, name)
    return name


def status() -> dict[str, Any]:
    """The live model, the latest tuning and training jobs, and the endpoint's state."""
    s = settings()
    state = store(s)
    live = state.live_model()
    endpoint: dict[str, Any] = {"name": s.endpoint_name, "status": "NotDeployed"}
    try:
        described = clients.client("sagemaker").describe_endpoint(**build.describe_endpoint(s))
        endpoint["status"] = described.get("EndpointStatus", "Unknown")
        endpoint["config"] = described.get("EndpointConfigName")
    except Exception as exc:  # /status must answer even when SageMaker does not
        message = clients.error_message(exc).lower()
        if "not find" not in message and "not found" not in message:
            endpoint["status"] = "Unknown"
            endpoint["error"] = clients.error_code(exc) or type(exc).__name__
    if live is not None:
        live = {k: v for k, v in live.items() if k not in ("pk", "sk", "labels")}
    # the update not yet confirmed by an InService event, and the model waiting for the endpoint (issue 15)
    waiting = {
        name: {k: v for k, v in (item or {}).items() if k not in ("pk", "sk", "artifacts")} or None
        for name, item in (("pending", state.pending()), ("queued", state.queued_deployment()))
    }
    return {"live_model": live, "jobs": state.latest_jobs(), "endpoint": endpoint, "deployments": waiting}


def labels() -> dict[str, Any]:
    """The live model's class names, in the model's output order."""
    live = store(settings()).live_model()
    if not live:
        raise PredictError(MODEL_NOT_DEPLOYED, "No model is deployed yet, so there are no labels")
    return {"model": live.get("model"), "labels": list(live.get("labels") or [])}
