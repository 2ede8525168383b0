"""Predict API: request validation, endpoint error mapping and response shape.

Why here: a client must always get a JSON error with a stable ``code`` it can
switch on, never a 500, and every check must be cheap (the handler's own time
budget is about 2 ms for a 4 MB photo), so nothing here decodes the image:
the magic bytes say what it is, the model decodes it.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any, Mapping

from contract import ABSTAIN_REASONS, REFUSED_FORMATS, refused_format, sniff_image  # noqa: F401 (REFUSED_FORMATS: the route's table)

try:  # SIMD base64, far faster than the stdlib on a multi-megabyte body (see decode_event_body)
    import pybase64 as _fast_base64
except ImportError:  # a Lambda zip built without it still works, at the stdlib's speed
    _fast_base64 = None

#: Content types the route accepts, mapped to the format their magic bytes must show.
CONTENT_TYPES: dict[str, str] = {"image/jpeg": "jpeg", "image/png": "png", "image/heic": "heif", "image/heif": "heif"}
#: A form upload: one image part, whose own Content-Type (or magic bytes) is one of CONTENT_TYPES.
MULTIPART = "multipart/form-data"
#: Peak decode bytes per pixel of the Pillow mode each PNG (colour type, bit depth) opens as: the same
#: figures as ml_scripts/decoding.py's PEAK_BYTES_PER_PIXEL (a test keeps them equal). A palette is
#: counted without transparency, so the route's estimate never exceeds the model's.
PNG_PEAK_BYTES_PER_PIXEL: dict[tuple[int, int], int] = {
    (0, 1): 5, (0, 2): 5, (0, 4): 5, (0, 8): 5, (0, 16): 23,
    (2, 8): 4, (2, 16): 4,
    (3, 1): 9, (3, 2): 9, (3, 4): 9, (3, 8): 9,
    (4, 8): 20, (4, 16): 20,
    (6, 8): 20, (6, 16): 20,
}
#: The decode budget in bytes is its megapixels times an RGBA pixel's peak (decoding.BUDGET_BYTES_PER_PIXEL).
BUDGET_BYTES_PER_PIXEL = 20
#: libjpeg's smallest DCT scale: the model may decode a JPEG at 1/8 of each side, never less.
JPEG_MAX_REDUCTION = 8

# Stable error codes: (HTTP status, code). Clients and the dashboard depend on them.
UNSUPPORTED_MEDIA_TYPE = (415, "unsupported_media_type")
CONTENT_TYPE_MISMATCH = (415, "content_type_mismatch")
PAYLOAD_TOO_LARGE = (413, "payload_too_large")
IMAGE_TOO_LARGE = (413, "image_too_large")
EMPTY_BODY = (400, "empty_body")
INVALID_PARAMETER = (400, "invalid_parameter")
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
ENDPOINT_TIMEOUT = (504, "endpoint_timeout")
INTERNAL_ERROR = (502, "internal_error")
BAD_MULTIPART = (400, "bad_multipart")

ALL_ERRORS: tuple[tuple[int, str], ...] = (
    UNSUPPORTED_MEDIA_TYPE,
    CONTENT_TYPE_MISMATCH,
    PAYLOAD_TOO_LARGE,
    IMAGE_TOO_LARGE,
    EMPTY_BODY,
    INVALID_PARAMETER,
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
    ENDPOINT_TIMEOUT,
    INTERNAL_ERROR,
    BAD_MULTIPART,
)
#: The other routes' errors (GET /status and /labels, the CORS preflights); :data:`ROUTE_ERRORS` says which route answers which.
STATE_UNAVAILABLE = (503, "state_unavailable")
ORIGIN_NOT_ALLOWED = (403, "origin_not_allowed")
NOT_FOUND = (404, "not_found")
#: Every error each route answers, by (path, method): the one table docs/openapi.yaml is checked
#: against (tests/app/test_openapi.py), in both directions.
ROUTE_ERRORS: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {
    ("/predict", "post"): ALL_ERRORS,
    ("/predict", "options"): (ORIGIN_NOT_ALLOWED,),
    ("/labels", "get"): (MODEL_NOT_DEPLOYED, STATE_UNAVAILABLE),
    ("/labels", "options"): (ORIGIN_NOT_ALLOWED,),
    ("/status", "get"): (STATE_UNAVAILABLE,),
    ("/try", "get"): (),
    ("/try/{name}", "get"): (NOT_FOUND,),
}


class PredictError(Exception):
    """An error the API answers as ``{"code", "message"}`` with ``status``."""

    def __init__(self, error: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.status, self.code = error
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def abstain_parameter(event: Mapping[str, Any]) -> bool:
    """``?abstain=true`` (the default) or ``?abstain=false`` (the raw answer); anything else is a 400.

    Repeated with different values (``?abstain=true&abstain=false``) is refused too: the
    client must say what it means. Other query parameters are ignored.
    """
    values = list((event.get("multiValueQueryStringParameters") or {}).get("abstain") or [])
    single = (event.get("queryStringParameters") or {}).get("abstain")
    if single is not None and not values:
        values = [single]
    chosen = {str(v).strip().lower() for v in values}
    if not chosen:
        return True
    if len(chosen) > 1 or not chosen <= {"true", "false"}:
        shown = ", ".join(repr(v) for v in values)
        raise PredictError(INVALID_PARAMETER, f"abstain={shown}: use abstain=true or abstain=false")
    return chosen == {"true"}


def media_type(header: str | None) -> str:
    """``"Image/JPEG; q=1"`` -> ``"image/jpeg"``."""
    return (header or "").split(";", 1)[0].strip().lower()


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


#: A PNG's last chunk, always these 12 bytes (length 0, type, fixed CRC).
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def png_header(body: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, bit depth, colour type)`` from a PNG's IHDR chunk, or None if it is not there."""
    if len(body) < 33 or body[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", body[16:26])
    return width, height, depth, colour


def jpeg_size(body: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header (the first SOF marker), or None if none comes first."""
    offset = 2
    while offset + 4 <= len(body):
        if body[offset] != 0xFF:
            return None
        marker = body[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            offset += 2
            continue
        if marker in _JPEG_SOF:
            if offset + 9 > len(body):
                return None
            height, width = struct.unpack(">HH", body[offset + 5 : offset + 9])
            return width, height
        if marker == 0xDA:  # a scan before any frame header
            return None
        (length,) = struct.unpack(">H", body[offset + 2 : offset + 4])
        offset += 2 + length
    return None


def check_decode_budget(body: bytes, fmt: str, max_megapixels: float) -> None:
    """Refuse, from the header alone, what the model's decode budget refuses (413 ``image_too_large``).

    Why a lower bound: the model decides (ml_scripts/decoding.py); the route only saves it the
    request when even the cheapest reading of the header is over budget. A JPEG is counted at
    libjpeg's 1/8 scale and 4 bytes a pixel, a palette PNG without transparency. A PNG whose
    IHDR is missing or whose IEND is missing (a truncated upload) is a 400.
    """
    max_pixels = int(max_megapixels * 1_000_000)
    if fmt == "png":
        header = png_header(body)
        if header is None or header[:2] == (0, 0) or (header[3], header[2]) not in PNG_PEAK_BYTES_PER_PIXEL:
            raise PredictError(UNDECODABLE_IMAGE, "The PNG has no valid IHDR header")
        if body.rfind(PNG_IEND) < 0:
            raise PredictError(UNDECODABLE_IMAGE, "The PNG is truncated (it does not end with its IEND chunk)")
        width, height, depth, colour = header
        pixels, per_pixel = width * height, PNG_PEAK_BYTES_PER_PIXEL[(colour, depth)]
    elif fmt == "heif":
        return  # its size is deep in the meta box; the model checks it on the header before decoding
    else:
        size = jpeg_size(body)
        if size is None:
            return  # the model reads the frame header (or refuses the bytes) itself
        width, height = size
        pixels, per_pixel = math.ceil(width / JPEG_MAX_REDUCTION) * math.ceil(height / JPEG_MAX_REDUCTION), 4
    if pixels > max_pixels or pixels * per_pixel > max_pixels * BUDGET_BYTES_PER_PIXEL:
        raise PredictError(
            IMAGE_TOO_LARGE,
            f"The image is {width} x {height} pixels; it would cost about {pixels * per_pixel / 1e6:.0f} MB to "
            f"decode, over the {max_megapixels:g}-megapixel budget. Resize it and retry",
        )


def validate_image_request(
    content_type: str | None, body: bytes | None, max_bytes: int, max_megapixels: float | None = None
) -> str:
    """Check a predict request; return the media type to forward, or raise PredictError.

    Order matters for clients: the type first (415), then emptiness (400),
    then size (413), then what the bytes really are (400/415), then the
    decode budget read from the header (413 ``image_too_large``, when
    ``max_megapixels`` is given).
    """
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        allowed = ", ".join((*CONTENT_TYPES, MULTIPART))
        raise PredictError(UNSUPPORTED_MEDIA_TYPE, f"Content-Type {kind or '(none)'!r} is not supported; send {allowed}")
    if not body:
        raise PredictError(EMPTY_BODY, "The request body is empty; send the image bytes as the body")
    if len(body) > max_bytes:
        raise PredictError(
            PAYLOAD_TOO_LARGE, f"The image is {len(body)} bytes; the limit is {max_bytes} bytes. Resize it and retry"
        )
    actual = sniff_image(body)
    if actual is None:
        refused = refused_format(body)
        if refused is not None:
            raise PredictError(UNSUPPORTED_MEDIA_TYPE, f"The body is a {refused} image; send a JPEG, PNG or HEIC")
        raise PredictError(NOT_AN_IMAGE, "The body is not a JPEG, PNG or HEIC image (its first bytes say otherwise)")
    if actual != CONTENT_TYPES[kind]:
        raise PredictError(
            CONTENT_TYPE_MISMATCH, f"Content-Type says {kind} but the body is a {actual.upper()} image"
        )
    if max_megapixels is not None:
        check_decode_budget(body, actual, max_megapixels)
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
    if code in ("ValidationError", "ValidationException"):
        return map_validation_error(message)
    if code == "ModelNotReadyException":
        return PredictError(ENDPOINT_NOT_READY, "The model is still loading; retry shortly")
    if code in ("ThrottlingException", "ServiceUnavailable", "ServiceUnavailableException"):
        return PredictError(ENDPOINT_BUSY, "The model endpoint is busy; retry with backoff")
    return PredictError(MODEL_ERROR, f"The model endpoint failed ({code})")


#: Words of an InvokeEndpoint ValidationError, in the order they are tried, and what each means for the client.
_VALIDATION_ERRORS: tuple[tuple[tuple[str, ...], tuple[int, str], str], ...] = (
    (("not found", "could not find"), MODEL_NOT_DEPLOYED,
     "No model is deployed yet; upload a data set and wait for training"),
    (("not in service", "inservice", "creating", "updating", "state"), ENDPOINT_NOT_READY,
     "The model endpoint is not in service yet; retry in a few minutes"),
    (("too large", "payload"), PAYLOAD_TOO_LARGE, "The model endpoint refused the image as too large"),
)


def map_validation_error(message: str) -> PredictError:
    """An InvokeEndpoint ValidationError, decided by what it says (docs/app.md, "Endpoint errors").

    A missing endpoint is ``model_not_deployed`` and one that is not InService yet
    ``endpoint_not_ready`` (both 503: retrying later helps); a body SageMaker finds
    too large is the client's 413. Anything else is a request of ours SageMaker
    refuses, which retrying cannot fix: a 502 ``model_error`` with its message.
    """
    lowered = message.lower()
    for words, error, text in _VALIDATION_ERRORS:
        if any(word in lowered for word in words):
            return PredictError(error, text)
    return PredictError(MODEL_ERROR, f"The model endpoint refused the request (ValidationError: {message[:200]})")


class _NotFinite(ValueError):
    """A number in the model's answer that JSON cannot carry (NaN, Infinity, 1e999)."""


def _finite(value: str) -> float:
    """``json.loads``' parse_float: ``1e999`` would be infinity, which is not JSON's."""
    number = float(value)
    if not math.isfinite(number):
        raise _NotFinite(f"non-finite number {value}")
    return number


def _no_constant(name: str) -> float:
    """``json.loads``' parse_constant: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise _NotFinite(f"{name} is not a JSON number")


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is not a number in [0, 1]")
    return float(value)


def shape_prediction(payload: bytes, model: str, top_k: int) -> dict[str, Any]:
    """Build ``{label, probability, top_k, abstained[, reason], model}`` from the serving contract's JSON.

    Parsed strictly. Something that is not a prediction is ``bad_model_response``; a prediction whose
    probabilities are NaN, infinite or outside [0, 1] is the model failing: ``model_error``.
    The model's abstention (issue 13) passes through as it is: ``label`` and ``probability``
    null, ``"abstained": true`` and a ``reason``. A model served by older code, which says
    nothing of abstention, answers ``"abstained": false``.
    """
    try:
        data = json.loads(payload, parse_float=_finite, parse_constant=_no_constant)
        abstained = data.get("abstained", False)
        if abstained not in (True, False) or isinstance(abstained, int) and not isinstance(abstained, bool):
            raise KeyError(f"abstained {abstained!r} is not true or false")
        items = [(str(item["label"]), item["probability"]) for item in data.get("top_k", [])]
        if abstained:
            if data.get("reason") not in ABSTAIN_REASONS or data.get("label") is not None:
                raise ValueError(f"an abstention with reason {data.get('reason')!r} and label {data.get('label')!r}")
        else:
            label = str(data["label"])
            raw = data["probability"]
    except _NotFinite as exc:
        raise PredictError(MODEL_ERROR, f"The model answered an invalid probability ({exc})") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise PredictError(BAD_MODEL_RESPONSE, f"The model answered something that is not a prediction ({exc})")
    try:
        probability = None if abstained else _probability(raw)
        ranked = [{"label": name, "probability": _probability(value)} for name, value in items][: max(top_k, 1)]
    except ValueError as exc:
        raise PredictError(MODEL_ERROR, f"The model answered an invalid probability ({exc})") from exc
    if abstained:
        return {"label": None, "probability": None, "top_k": ranked, "abstained": True, "reason": data["reason"],
                "model": model}
    return {"label": label, "probability": probability, "top_k": ranked, "abstained": False, "model": model}


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
