"""Predict API: request validation, endpoint error mapping and response shape.

Why here: a client must always get a JSON error with a stable ``code`` it can
switch on, never a 500, and every check must be cheap (the handler's own time
budget is about 2 ms for a 4 MB photo), so nothing here decodes the image:
the magic bytes say what it is, the model decodes it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

try:  # SIMD base64, far faster than the stdlib on a multi-megabyte body (see decode_event_body)
    import pybase64 as _fast_base64
except ImportError:  # a Lambda zip built without it still works, at the stdlib's speed
    _fast_base64 = None

#: Content types the route accepts, mapped to the format their magic bytes must show.
CONTENT_TYPES: dict[str, str] = {"image/jpeg": "jpeg", "image/png": "png"}
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
)

# Stable error codes: (HTTP status, code). Clients and the dashboard depend on them.
UNSUPPORTED_MEDIA_TYPE = (415, "unsupported_media_type")
CONTENT_TYPE_MISMATCH = (415, "content_type_mismatch")
PAYLOAD_TOO_LARGE = (413, "payload_too_large")
EMPTY_BODY = (400, "empty_body")
NOT_AN_IMAGE = (400, "not_an_image")
UNDECODABLE_IMAGE = (400, "undecodable_image")
NOT_ACCEPTABLE = (406, "not_acceptable")
MODEL_REJECTED_REQUEST = (400, "model_rejected_request")
MODEL_NOT_DEPLOYED = (503, "model_not_deployed")
ENDPOINT_NOT_READY = (503, "endpoint_not_ready")
ENDPOINT_BUSY = (503, "endpoint_busy")
MODEL_ERROR = (502, "model_error")
BAD_MODEL_RESPONSE = (502, "bad_model_response")
ENDPOINT_UNREACHABLE = (502, "endpoint_unreachable")
INTERNAL_ERROR = (502, "internal_error")

ALL_ERRORS: tuple[tuple[int, str], ...] = (
    UNSUPPORTED_MEDIA_TYPE,
    CONTENT_TYPE_MISMATCH,
    PAYLOAD_TOO_LARGE,
    EMPTY_BODY,
    NOT_AN_IMAGE,
    UNDECODABLE_IMAGE,
    NOT_ACCEPTABLE,
    MODEL_REJECTED_REQUEST,
    MODEL_NOT_DEPLOYED,
    ENDPOINT_NOT_READY,
    ENDPOINT_BUSY,
    MODEL_ERROR,
    BAD_MODEL_RESPONSE,
    ENDPOINT_UNREACHABLE,
    INTERNAL_ERROR,
)


class PredictError(Exception):
    """An error the API answers as ``{"code", "message"}`` with ``status``."""

    def __init__(self, error: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.status, self.code = error
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def media_type(header: str | None) -> str:
    """``"Image/JPEG; q=1"`` -> ``"image/jpeg"``."""
    return (header or "").split(";", 1)[0].strip().lower()


def sniff(body: bytes) -> str | None:
    """The image format the first bytes announce, or None."""
    for magic, fmt in _MAGIC:
        if body.startswith(magic):
            return fmt
    return None


def decode_event_body(event: Mapping[str, Any]) -> bytes:
    """The body of an API Gateway proxy event, byte for byte what Chalice's ``Request.raw_body`` gives.

    Why not ``raw_body``: Chalice decodes with the stdlib's ``base64.b64decode``,
    which is most of the route's time for a multi-megabyte photo (API Gateway
    sends binary bodies base64-encoded; figures in docs/benchmarks.md). pybase64
    decodes canonical base64, the only kind API Gateway produces, far faster.
    Anything it rejects goes to the stdlib's lenient decoder, as in Chalice (it
    drops characters outside the alphabet), so the bytes never differ; what
    neither can decode is a 400 ``not_an_image``, not an unexpected failure.
    """
    body = event.get("body")
    if body is None:
        return b""
    if not event.get("isBase64Encoded", False):
        return body if isinstance(body, bytes) else body.encode("utf-8")
    if not body:
        return b""
    if _fast_base64 is not None:
        try:
            return _fast_base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error: not canonical; the stdlib decides below, as Chalice would
            pass
    try:
        return base64.b64decode(body.encode("ascii") if isinstance(body, str) else body)
    except ValueError as exc:  # binascii.Error (bad padding) or non-ASCII text
        message = f"The body is not valid base64 ({exc}); send the image bytes as the body"
        raise PredictError(NOT_AN_IMAGE, message) from exc


def validate_image_request(content_type: str | None, body: bytes | None, max_bytes: int) -> str:
    """Check a predict request; return the media type to forward, or raise PredictError.

    Order matters for clients: the type first (415), then emptiness (400),
    then size (413), then what the bytes really are (400/415).
    """
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        allowed = ", ".join(CONTENT_TYPES)
        raise PredictError(UNSUPPORTED_MEDIA_TYPE, f"Content-Type {kind or '(none)'!r} is not supported; send {allowed}")
    if not body:
        raise PredictError(EMPTY_BODY, "The request body is empty; send the image bytes as the body")
    if len(body) > max_bytes:
        raise PredictError(
            PAYLOAD_TOO_LARGE, f"The image is {len(body)} bytes; the limit is {max_bytes} bytes. Resize it and retry"
        )
    actual = sniff(body)
    if actual is None:
        raise PredictError(NOT_AN_IMAGE, "The body is not a JPEG or PNG image (its first bytes say otherwise)")
    if actual != CONTENT_TYPES[kind]:
        raise PredictError(
            CONTENT_TYPE_MISMATCH, f"Content-Type says {kind} but the body is a {actual.upper()} image"
        )
    return kind


#: The model container's refusals by status, when its body names no code of ours.
_MODEL_REFUSALS: dict[int, tuple[tuple[int, str], str]] = {
    400: (UNDECODABLE_IMAGE, "The model could not decode the image"),
    406: (NOT_ACCEPTABLE, "The model cannot answer in the requested type"),
    413: (PAYLOAD_TOO_LARGE, "The model refused the image as too large"),
    415: (UNSUPPORTED_MEDIA_TYPE, "The model refused the image type"),
}


def model_refusal(original_status: int, original_message: str | None) -> PredictError:
    """A model container's 4xx as the API's 4xx: the client's bad image, never a 502.

    The serving toolkit answers an error's message, a newline, then the trace;
    our inference.py makes that first line ``{"code", "message", "status_code"}``.
    Its ``code`` is kept when it is one of the API's client-error codes (and its
    message with it); otherwise the status alone decides.
    """
    first_line = (original_message or "").split("\n", 1)[0]
    try:
        sent = json.loads(first_line)
    except ValueError:
        sent = None
    if isinstance(sent, dict):
        known = {code: (status, code) for status, code in ALL_ERRORS if 400 <= status < 500}
        error = known.get(str(sent.get("code")))
        if error is not None:
            return PredictError(error, str(sent.get("message") or error[1]))
    error, message = _MODEL_REFUSALS.get(original_status, (MODEL_REJECTED_REQUEST, ""))
    return PredictError(error, message or f"The model refused this request ({original_status})")


def map_invoke_error(
    code: str, message: str, original_status: int | None = None, original_message: str | None = None
) -> PredictError:
    """Turn an InvokeEndpoint ClientError into the API's error.

    A ModelError carries the container's own status and body (``OriginalStatusCode``,
    ``OriginalMessage``): a 4xx is the client's request refused by our inference
    code (:func:`model_refusal`), anything else the model does wrong is a 502.
    """
    if code == "ModelError":
        if original_status is not None and 400 <= original_status < 500:
            return model_refusal(original_status, original_message)
        return PredictError(MODEL_ERROR, f"The model failed on this request ({original_status or 'no status'})")
    lowered = message.lower()
    if code in ("ValidationError", "ValidationException"):
        if "not found" in lowered or "could not find" in lowered:
            return PredictError(MODEL_NOT_DEPLOYED, "No model is deployed yet; upload a data set and wait for training")
        return PredictError(ENDPOINT_NOT_READY, "The model endpoint is not in service yet; retry in a few minutes")
    if code == "ModelNotReadyException":
        return PredictError(ENDPOINT_NOT_READY, "The model is still loading; retry shortly")
    if code in ("ThrottlingException", "ServiceUnavailable", "ServiceUnavailableException"):
        return PredictError(ENDPOINT_BUSY, "The model endpoint is busy; retry with backoff")
    return PredictError(MODEL_ERROR, f"The model endpoint failed ({code})")


def shape_prediction(payload: bytes, model: str, top_k: int) -> dict[str, Any]:
    """Build ``{label, probability, top_k, model}`` from the serving contract's JSON."""
    try:
        data = json.loads(payload)
        label = str(data["label"])
        probability = float(data["probability"])
        ranked = [
            {"label": str(item["label"]), "probability": float(item["probability"])}
            for item in data.get("top_k", [])
        ][: max(top_k, 1)]
    except (ValueError, TypeError, KeyError) as exc:
        raise PredictError(BAD_MODEL_RESPONSE, f"The model answered something that is not a prediction ({exc})")
    return {"label": label, "probability": probability, "top_k": ranked, "model": model}


def error_status(error: Mapping[str, Any]) -> int | None:
    """``OriginalStatusCode`` of a botocore ModelError response, if any."""
    try:
        return int(error.get("OriginalStatusCode"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def error_original_message(error: Mapping[str, Any]) -> str | None:
    """``OriginalMessage`` of a botocore ModelError response (the container's body), if any."""
    value = error.get("OriginalMessage")
    return value if isinstance(value, str) else None
