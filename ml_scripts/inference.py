"""SageMaker serving entry point: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

The PyTorch serving container (and the local runtime's endpoint server) finds
this file as ``code/inference.py`` inside ``model.tar.gz`` and calls:

- ``model_fn(model_dir)`` once per process: the architecture, class names,
  preprocessing and calibration temperature all come from ``model_meta.json``,
  the network from the job's ``model.onnx`` (or ``model.pt``), ``serving_model.load_model``;
- ``input_fn(body, content_type)`` per request: bytes -> decoded RGB image;
- ``predict_fn(data, model)``: image -> top-k prediction, ``softmax(logits / T)``;
- ``output_fn(prediction, accept)``: prediction -> JSON text, abstaining (``"label": null``,
  ``"abstained": true``, a ``"reason"``) when :mod:`abstention` says so, unless the Accept
  header carries ``abstain=false`` (``application/json; abstain=false``: the raw answer).

Bad input raises :class:`InferenceInputError` with an HTTP ``status_code``
(415 unsupported type, 413 too large or a decompression bomb, 400 empty or
undecodable, 406 an answer type other than JSON), never a wrong answer. In the
container it is a ``sagemaker_inference`` toolkit error, so the toolkit answers
that status with the JSON error body as the first line. Pillow's pixel limit stays on.

Environment: ``BREEDLINE_TOP_K`` (default 5), ``BREEDLINE_MAX_IMAGE_BYTES``
(default 6 MiB, SageMaker's real-time payload limit), ``BREEDLINE_SERVING_BACKEND``
(default ``auto``, see below), ``BREEDLINE_MAX_DECODE_MEGAPIXELS`` (default 16: the
decode budget checked on the header, :class:`decoding.DecodeBudget`).

Only JPEG and PNG are decoded, and only the one the Content-Type declares
(``application/x-image``: either): the magic bytes must show it, and Pillow is
asked to open that format alone, so GIF, BMP, TIFF, WebP, ICO, JPEG 2000 or EPS
bytes never reach a decoder (415). A PNG must be complete (every chunk's CRC, IEND).

Fast paths, each checked against the plain path (full PIL decode, torchvision
``Resize``/``CenterCrop``/``ToTensor``/``Normalize``, ``model(x)``) in
``tests/ml/test_inference.py`` and measured by ``make bench``:

- JPEGs decode at reduced size (libjpeg's DCT scaling, Pillow's ``draft``), to
  no less than :data:`JPEG_DRAFT_GAP` times the model's resize size;
- resize and centre crop are one antialiased ``Image.resize(box=...)``;
- on a CPU the network runs in ONNX Runtime (backend ``auto``), from the
  ``model.onnx`` the training job built and checked against torch: then torch is
  never imported (``serving_model``; the job's parity figures are in
  ``model_meta.json``'s ``"onnx"``). An artifact without it is exported in memory
  at load, as before; on a GPU, or with ``BREEDLINE_SERVING_BACKEND=torch``, torch
  runs it, channels-last under ``inference_mode`` (``torch_serving``). ``onnx``
  makes "no ONNX Runtime session" an error.

Imports are top-level (``import contract``): ``train.py`` copies this file and
the sibling modules it needs (``train.SERVING_FILES``) into ``code/``, which
the serving container puts on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import abstention
from contract import REFUSED_FORMATS, refused_format, sniff_image  # noqa: F401 (REFUSED_FORMATS: the serving contract's table)
from decoding import (
    HEIF_AVAILABLE,
    REQUEST_FORMATS,
    DecodeBudget,
    DecodeBudgetError,
    ImageDecodeError,
    check_png_complete,
    decode_for_size,
    resize_crop,
)
from onnx_serving import ONNX_ATOL, ONNX_FEATURES, ONNX_INPUT, ONNX_OUTPUT, ONNX_RTOL  # noqa: F401
from serving_errors import (  # noqa: F401 (re-exported: inference is where callers read them)
    CONTENT_TYPE_MISMATCH,
    ERROR_CODES,
    IMAGE_TOO_LARGE,
    InferenceInputError,
    ServingBackendError,
)
from serving_model import DEFAULT_BACKEND, LoadedModel, load_model, model_temperature  # noqa: F401

#: Each accepted Content-Type and the formats (decoding.REQUEST_FORMATS keys) its body may be.
CONTENT_TYPE_FORMATS: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("jpeg",),
    "image/png": ("png",),
    "image/heic": ("heif",),
    "image/heif": ("heif",),
    "application/x-image": ("jpeg", "png", "heif"),
}
SUPPORTED_CONTENT_TYPES: frozenset[str] = frozenset(CONTENT_TYPE_FORMATS)
DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGE_BYTES = 6 * 1024 * 1024
#: The decode budget when BREEDLINE_MAX_DECODE_MEGAPIXELS is unset (the Lambda's setting of that name passes it).
DEFAULT_MAX_DECODE_MEGAPIXELS = 16.0
#: JPEGs decode to a shorter side of at least this many times the model's resize
#: size: the smallest gap whose top-1 agrees with the full decode on over 99% of
#: photos from thumbnail to 12 MP, the project's target (docs/ml.md gives the
#: agreement at each gap). A 12 MP photo still decodes at 1/2 scale with it.
JPEG_DRAFT_GAP = 4
#: Decode JPEGs at least this big before the model's own resize (raised by model_fn).
_draft_short_side = 256 * JPEG_DRAFT_GAP
#: predict_fn's private key: why output_fn should abstain (None: answer). Never sent to the client.
ABSTAIN_REASON = abstention.ABSTAIN_REASON

_models: dict[str, LoadedModel] = {}
_lock = threading.Lock()


def model_fn(model_dir: str) -> LoadedModel:
    """Load the model once per process (cached by directory), ready for inference (``serving_model.load_model``)."""
    global _draft_short_side
    key = str(Path(model_dir).resolve())
    with _lock:
        if key in _models:
            return _models[key]
        loaded = load_model(model_dir)
        print(
            json.dumps({"message": "model loaded", "model_dir": key, "architecture": loaded.architecture,
                        "backend": loaded.backend, "onnx_source": _onnx_source(loaded),
                        "why_not_model_onnx": loaded.file_reason or None,
                        "why_not_onnx": loaded.backend_reason or None,
                        "temperature": loaded.temperature, "abstention": loaded.abstainer is not None}),
            flush=True,
        )
        _draft_short_side = max(_draft_short_side, loaded.prep.resize_size * JPEG_DRAFT_GAP)
        _models[key] = loaded
        return loaded


def _onnx_source(loaded: LoadedModel) -> str | None:
    """Where the ONNX graph came from: the job's ``model.onnx``, an export at load, or none (torch)."""
    if loaded.backend != "onnx":
        return None
    return "in-memory export" if loaded.module is not None else "model.onnx"


def _max_bytes() -> int:
    return int(os.environ.get("BREEDLINE_MAX_IMAGE_BYTES") or DEFAULT_MAX_IMAGE_BYTES)


def _decode_budget() -> DecodeBudget:
    raw = os.environ.get("BREEDLINE_MAX_DECODE_MEGAPIXELS") or str(DEFAULT_MAX_DECODE_MEGAPIXELS)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ServingBackendError(f"BREEDLINE_MAX_DECODE_MEGAPIXELS={raw!r}: use a positive number of megapixels")
    return DecodeBudget(value)


def declared_format(body: bytes, media_type: str) -> str:
    """The format to decode ``body`` as: its magic bytes, if the Content-Type allows them; else a refusal."""
    actual = sniff_image(body)
    if actual is None:
        name = refused_format(body)
        if name is not None:
            raise InferenceInputError(f"{name} images are not supported; send a JPEG, PNG or HEIC", 415)
        raise InferenceInputError("the body is not a JPEG, PNG or HEIC image (its first bytes say otherwise)", 400,
                                  "not_an_image")
    if actual not in CONTENT_TYPE_FORMATS[media_type]:
        raise InferenceInputError(f"Content-Type says {media_type} but the body is a {actual.upper()} image", 415,
                                  CONTENT_TYPE_MISMATCH)
    return actual


def input_fn(body: bytes, content_type: str | None) -> Image.Image:
    """Validate and decode the request body to an upright RGB image.

    JPEGs decode at reduced size (libjpeg's DCT scaling), to no less than
    :data:`JPEG_DRAFT_GAP` times the model's resize size. Only the declared
    format is opened, and the decode budget is checked on its header first.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in SUPPORTED_CONTENT_TYPES:
        raise InferenceInputError(
            f"unsupported content type {content_type!r}; send one of {', '.join(sorted(SUPPORTED_CONTENT_TYPES))}",
            415,
        )
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    if not isinstance(body, bytes):
        raise InferenceInputError("the request body must be the raw image bytes", 400, "not_an_image")
    if not body:
        raise InferenceInputError("empty request body: send the image bytes", 400, "empty_body")
    if len(body) > _max_bytes():
        raise InferenceInputError(f"image of {len(body)} bytes exceeds the {_max_bytes()} byte limit", 413)
    fmt = declared_format(body, media_type)
    if fmt == "heif" and not HEIF_AVAILABLE:
        raise InferenceInputError("this model container cannot decode HEIC/HEIF (pillow-heif is not installed)", 415)
    budget = _decode_budget()
    try:
        if fmt == "png":
            check_png_complete(body)
        with warnings.catch_warnings():
            # Between 1x and 2x Pillow's pixel limit Pillow only warns; we refuse.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return decode_for_size(body, _draft_short_side, formats=(REQUEST_FORMATS[fmt],), budget=budget)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InferenceInputError(f"image has too many pixels (decompression bomb protection): {exc}", 413) from exc
    except DecodeBudgetError as exc:
        raise InferenceInputError(str(exc), 413, IMAGE_TOO_LARGE) from exc
    except ImageDecodeError as exc:
        raise InferenceInputError(f"could not decode the image: {exc}", 400) from exc


def _top_k() -> int:
    try:
        return max(1, int(os.environ.get("BREEDLINE_TOP_K") or DEFAULT_TOP_K))
    except ValueError:
        return DEFAULT_TOP_K


def preprocess(image: Image.Image, model: LoadedModel) -> Any:
    """Fused resize + centre crop, then normalise: a (1, 3, S, S) float batch (numpy on ONNX, a tensor on torch)."""
    prep = model.prep
    square = resize_crop(image, prep.resize_size, prep.image_size)
    return model.runner.prepare(np.asarray(square), prep)


def predict_fn(data: Any, model: LoadedModel) -> dict[str, Any]:
    """Classify one image (or an already preprocessed NCHW batch of one: numpy or a tensor)."""
    batch = preprocess(data, model) if isinstance(data, Image.Image) else data
    if batch.ndim == 3:
        batch = batch[None]
    # The calibration temperature scales the logits of either backend (torch or ONNX Runtime) alike;
    # the abstention's confidence threshold was fitted on these calibrated probabilities (abstention.softmax).
    logits, features = model.forward_with_features(batch)
    probabilities = abstention.softmax(logits, model.temperature)[0]
    k = min(_top_k(), len(model.class_names))
    indices = np.argsort(-probabilities, kind="stable")[:k]
    top = [{"label": model.class_names[int(i)], "probability": round(float(probabilities[i]), 6)} for i in indices]
    answer: dict[str, Any] = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
    if model.abstainer is not None and features is not None:
        answer[ABSTAIN_REASON] = model.abstainer.reason(float(probabilities[indices[0]]), features[0])
    return answer


def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header lets us answer JSON: any of its ranges (q > 0) covers application/json.

    Why a list: ``application/json, text/plain`` is a client that takes JSON; only the
    first entry was read before, and it was refused with a 406.
    """
    if not accept or not accept.strip():
        return True
    for item in accept.split(","):
        media, *params = [part.strip() for part in item.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and media.lower() in ("application/json", "application/*", "*/*"):
            return True
    return False


#: The one representation we serve.
JSON = "application/json"


def output_fn(prediction: dict[str, Any], accept: str | None = JSON) -> str | tuple[str, str]:
    """The prediction as strict JSON text (the only representation we serve).

    ``allow_nan=False``: a NaN or infinite probability is a model failure (a 500,
    which the API answers as 502 ``model_error``), never ``NaN`` in a 200.
    When Accept is anything but ``application/json`` (a list such as
    ``application/json, text/plain``, or ``application/*``) the answer is
    ``(text, "application/json")``: the serving toolkit labels a plain answer
    with the Accept header itself, and a tuple's second item is its content type.
    """
    if not accepts_json(accept):
        raise InferenceInputError(f"cannot answer in {accept!r}; accept application/json", 406)
    try:  # abstain=false in Accept: the raw answer (issue 13)
        text = json.dumps(abstention.apply_abstention(prediction, abstention.abstain_allowed(accept)), allow_nan=False)
    except abstention.AbstainParameterError as exc:
        raise InferenceInputError(str(exc), 406) from exc
    if (accept or JSON).strip().lower() in (JSON, "*/*"):  # the toolkit turns */* into its default, JSON
        return text
    return text, JSON


def predict_bytes(body: bytes, content_type: str | None, model: LoadedModel) -> str:
    """The whole request path, as the serving container chains it."""
    answer = output_fn(predict_fn(input_fn(body, content_type), model), JSON)
    return answer if isinstance(answer, str) else answer[0]


# Batch transform jobs (BREEDLINE_BATCH_ERRORS=lines in their Environment): a refused image is
# answered as a 200 error line, so one bad image never fails the job (batch_errors.py says why).
import batch_errors  # noqa: E402

input_fn, predict_fn, output_fn = batch_errors.chain(input_fn, predict_fn, output_fn, InferenceInputError)
