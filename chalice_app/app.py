"""Breedline's Lambda functions: thin edges over ``chalicelib``.

Every handler parses its event, calls one function of a domain module
(:mod:`chalicelib.uploads`, :mod:`chalicelib.jobs`, :mod:`chalicelib.api`),
logs and flushes metrics; the decisions live in pure modules. boto3 and the
Powertools event data classes are imported on first use only, so a cold
start of the predict route pays for chalice and Powertools' logger and
metrics, not for every AWS client.

Event patterns and the schedule are built from configuration when the app is
loaded (``chalice package`` loads it with the stage's environment), and the
local runtime reads them from ``app.event_sources`` to create the same rules.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from chalice import Chalice, IAMAuthorizer, Rate, Response

from chalicelib import api, batch_events, cors, endpoint_events, event_patterns, jobs, lambda_runtime, try_page, uploads
from chalicelib.config import Settings
from chalicelib.observability import flush, logger
from chalicelib.predict import CONTENT_TYPES, MULTIPART, NOT_FOUND, ORIGIN_NOT_ALLOWED, STATE_UNAVAILABLE, PredictError

app = Chalice(app_name="breedline")
# Binary: API Gateway then hands the Lambda these bodies base64-encoded, byte for byte.
for _type in (*CONTENT_TYPES, MULTIPART):
    if _type not in app.api.binary_types:
        app.api.binary_types.append(_type)

_BOOT = Settings.from_env()
if _BOOT.needs_make_deploy:
    raise RuntimeError(
        "BREEDLINE_NEEDS_MAKE_DEPLOY is set: this stage of chalice_app/.chalice/config.json is filled in "
        "by make deploy (the stack's bucket, role, tables, name prefix and image URIs), so a raw chalice "
        "package or chalice deploy would build a stack that cannot work. Run make deploy STAGE=<stage> "
        "(add DRY_RUN=1 to only package it)."
    )
_STATE_UNAVAILABLE = PredictError(STATE_UNAVAILABLE, "Pipeline state cannot be read right now")


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
    lambda_runtime.set_lambda_context(context)
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
        flush()


def _s3_event(event: Any) -> Any:
    """Chalice's event as Powertools' ``S3EventBridgeNotificationEvent`` (imported here, not at cold start)."""
    from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent

    return S3EventBridgeNotificationEvent(event.to_dict())


def _state_change(event: Any) -> Any:
    """Chalice's event as Powertools' ``EventBridgeEvent`` (imported here, not at cold start)."""
    from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

    return EventBridgeEvent(event.to_dict())


@app.on_cw_event(event_patterns.upload_pattern(_BOOT), name="on_dataset_upload")
def on_dataset_upload(event: Any) -> dict[str, Any]:
    """An object landed under the data prefix."""
    return _run("on_dataset_upload", event, uploads.handle_upload, _s3_event(event))


@app.schedule(Rate(_BOOT.quiet_check_minutes, unit=Rate.MINUTES), name="check_quiet_datasets")
def check_quiet_datasets(event: Any) -> list[dict[str, Any]]:
    """Debounce for uploads without a marker."""
    return _run("check_quiet_datasets", event, uploads.check_quiet)


@app.on_cw_event(event_patterns.tuning_pattern(_BOOT), name="on_tuning_state_change")
def on_tuning_state_change(event: Any) -> dict[str, Any]:
    return _run("on_tuning_state_change", event, jobs.handle_tuning_event, _state_change(event))


@app.on_cw_event(event_patterns.training_pattern(_BOOT), name="on_training_state_change")
def on_training_state_change(event: Any) -> dict[str, Any]:
    return _run("on_training_state_change", event, jobs.handle_training_event, _state_change(event))


@app.on_cw_event(event_patterns.endpoint_pattern(_BOOT), name="on_endpoint_state_change")
def on_endpoint_state_change(event: Any) -> dict[str, Any]:
    """The endpoint is InService or Failed: the live model follows what it serves; the queue is re-driven."""
    return _run(
        "on_endpoint_state_change", event, endpoint_events.handle_endpoint_event, _state_change(event)
    )


@app.on_cw_event(event_patterns.transform_pattern(_BOOT), name="on_transform_state_change")
def on_transform_state_change(event: Any) -> dict[str, Any]:
    """A batch's transform job ended: its outputs become results.jsonl and a summary, notified once."""
    return _run(
        "on_transform_state_change", event, batch_events.handle_transform_event, _state_change(event)
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body), status_code=status, headers={"Content-Type": "application/json"})


# content_types="*/*": the route itself answers 415 in our JSON shape instead of
# Chalice's own error body; the accepted types are checked in chalicelib.predict.
@app.route("/predict", methods=["POST"], content_types=["*/*"], **_auth(_BOOT.api_auth, private=False))
def predict() -> Response:
    """Classify one JPEG, PNG or HEIC image, sent as the body or as a form's one file."""
    request = app.current_request
    answer, status_code = api.answer_predict(request.to_original_event(), request.headers.get("content-type"))
    return _json(answer, status_code)


# content_types="*/*" on the GETs too: a stray Content-Type must not get Chalice's own 415 body.
@app.route("/status", methods=["GET"], content_types=["*/*"], **_auth(_BOOT.api_auth, private=True))
def status() -> Response:
    """The live model, its accuracy, and the latest jobs with their states."""
    try:
        return _json(api.status())
    except Exception:
        logger.exception("status failed")
        return _json(_STATE_UNAVAILABLE.body(), _STATE_UNAVAILABLE.status)


@app.route("/labels", methods=["GET"], content_types=["*/*"], **_auth(_BOOT.api_auth, private=True))
def labels() -> Response:
    """The class names the live model predicts."""
    try:
        return _json(api.labels())
    except PredictError as exc:
        return _json(exc.body(), exc.status)
    except Exception:
        logger.exception("labels failed")
        return _json(_STATE_UNAVAILABLE.body(), _STATE_UNAVAILABLE.status)


def _cors_origins() -> tuple[str, ...]:
    """BREEDLINE_CORS_ORIGINS, read per request (the local runtime adds its own origin after the app loads)."""
    try:
        return lambda_runtime.settings().cors_origins
    except Exception:  # noqa: BLE001 - a broken setting must not turn an answer into a 500; no CORS then
        logger.exception("BREEDLINE_CORS_ORIGINS cannot be read; answering without CORS headers")
        return ()


@app.middleware("http")
def cors_headers(event: Any, get_response: Callable[[Any], Response]) -> Response:
    """Every HTTP answer, errors included, names an allowed ``Origin`` (chalicelib.cors)."""
    response = get_response(event)
    headers = cors.answer_headers(event.headers.get("origin"), _cors_origins())
    response.headers.update(cors.merge_vary(response.headers, headers))
    return response


def _preflight(path: str) -> Response:
    """A browser's OPTIONS preflight: 204 with the allowed methods and headers, or 403 for another origin."""
    headers = cors.preflight_headers(path, app.current_request.headers.get("origin"), _cors_origins())
    if headers is None:
        error = PredictError(
            ORIGIN_NOT_ALLOWED, "This origin may not call the API from a browser (BREEDLINE_CORS_ORIGINS)"
        )
        return _json(error.body(), error.status)
    return Response(body="", status_code=204, headers=headers)


# Preflights carry no credentials, so these views have no auth in any mode; any Content-Type, so
# Chalice never answers one with its own 415 body (issue 16: schemathesis found that).
@app.route("/predict", methods=["OPTIONS"], content_types=["*/*"])
def predict_preflight() -> Response:
    return _preflight("/predict")


@app.route("/labels", methods=["OPTIONS"], content_types=["*/*"])
def labels_preflight() -> Response:
    return _preflight("/labels")


if _BOOT.try_page:

    @app.route("/try", methods=["GET"], content_types=["*/*"])
    def try_it() -> Response:
        """The try-it page (public: it holds no secret; the key is typed in the browser)."""
        body, headers = try_page.page()
        return Response(body=body, status_code=200, headers=headers)

    @app.route("/try/{name}", methods=["GET"], content_types=["*/*"])
    def try_asset(name: str) -> Response:
        found = try_page.asset(name)
        if found is None:
            error = PredictError(NOT_FOUND, f"No such file: {name}")
            return _json(error.body(), error.status)
        return Response(body=found[0], status_code=200, headers=found[1])
