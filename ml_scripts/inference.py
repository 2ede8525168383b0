"""SageMaker serving entry point: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

The PyTorch serving container (and the local runtime's endpoint server) finds
this file as ``code/inference.py`` inside ``model.tar.gz`` and calls:

- ``model_fn(model_dir)`` once per process: the architecture, class names and
  preprocessing all come from ``model_meta.json``, the weights from ``model.pt``;
- ``input_fn(body, content_type)`` per request: bytes -> decoded RGB image;
- ``predict_fn(data, model)``: image -> top-k prediction;
- ``output_fn(prediction, accept)``: prediction -> JSON text.

Bad input raises :class:`InferenceInputError` with an HTTP ``status_code``
(415 unsupported type, 413 too large or a decompression bomb, 400 empty or
undecodable), never a wrong answer. Pillow's pixel limit stays on.

Environment: ``BREEDLINE_TOP_K`` (default 5), ``BREEDLINE_MAX_IMAGE_BYTES``
(default 6 MiB, SageMaker's real-time payload limit).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

import common

SUPPORTED_CONTENT_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "application/x-image"})
DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGE_BYTES = 6 * 1024 * 1024
#: Decode JPEGs at least this big before the model's own resize (raised by model_fn).
_draft_short_side = 256


class InferenceInputError(ValueError):
    """A request the endpoint refuses; ``status_code`` is the HTTP status to answer."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def to_json(self) -> str:
        return json.dumps({"error": self.message, "status_code": self.status_code})


@dataclass
class LoadedModel:
    """What predict_fn needs: the network, its class names and its preprocessing."""

    module: nn.Module
    class_names: list[str]
    prep: common.Preprocessing
    architecture: str
    device: torch.device


_models: dict[str, LoadedModel] = {}
_lock = threading.Lock()


def model_fn(model_dir: str) -> LoadedModel:
    """Load the model once per process (cached by directory), ready for inference."""
    global _draft_short_side
    key = str(Path(model_dir).resolve())
    with _lock:
        if key in _models:
            return _models[key]
        meta = common.read_meta(model_dir)
        prep = common.Preprocessing.from_meta(meta)
        module = common.build_model(
            meta["architecture"], int(meta["num_classes"]), image_size=prep.image_size, pretrained=False
        )
        state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = module.to(device).eval()
        loaded = LoadedModel(module, list(meta["class_names"]), prep, meta["architecture"], device)
        _draft_short_side = max(_draft_short_side, prep.resize_size)
        _models[key] = loaded
        return loaded


def _max_bytes() -> int:
    return int(os.environ.get("BREEDLINE_MAX_IMAGE_BYTES") or DEFAULT_MAX_IMAGE_BYTES)


def input_fn(body: bytes, content_type: str | None) -> Image.Image:
    """Validate and decode the request body to an upright RGB image.

    JPEGs decode at reduced size (libjpeg's DCT scaling) down to what the
    model's resize needs, never below it.
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
        raise InferenceInputError("the request body must be the raw image bytes", 400)
    if not body:
        raise InferenceInputError("empty request body: send the image bytes", 400)
    if len(body) > _max_bytes():
        raise InferenceInputError(f"image of {len(body)} bytes exceeds the {_max_bytes()} byte limit", 413)
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x Pillow's pixel limit Pillow only warns; we refuse.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return common.decode_for_size(body, _draft_short_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InferenceInputError(f"image has too many pixels (decompression bomb protection): {exc}", 413) from exc
    except common.ImageDecodeError as exc:
        raise InferenceInputError(f"could not decode the image: {exc}", 400) from exc


def _top_k() -> int:
    try:
        return max(1, int(os.environ.get("BREEDLINE_TOP_K") or DEFAULT_TOP_K))
    except ValueError:
        return DEFAULT_TOP_K


def preprocess(image: Image.Image, model: LoadedModel) -> torch.Tensor:
    """Fused resize + centre crop, then normalise: a (1, 3, S, S) float tensor."""
    import numpy as np

    prep = model.prep
    square = common.resize_crop(image, prep.resize_size, prep.image_size)
    return prep.normalise_uint8(np.asarray(square)).unsqueeze(0)


def predict_fn(data: Image.Image | torch.Tensor, model: LoadedModel) -> dict[str, Any]:
    """Classify one image (or an already preprocessed NCHW batch of one)."""
    batch = data if isinstance(data, torch.Tensor) else preprocess(data, model)
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    with torch.inference_mode():
        logits = model.module(batch.to(model.device))
        probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
    k = min(_top_k(), len(model.class_names))
    values, indices = torch.topk(probabilities, k)
    top = [
        {"label": model.class_names[int(i)], "probability": round(float(v), 6)}
        for v, i in zip(values.tolist(), indices.tolist())
    ]
    return {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}


def output_fn(prediction: dict[str, Any], accept: str | None = "application/json") -> str:
    """The prediction as JSON text (the only representation we serve)."""
    media_type = (accept or "").split(";", 1)[0].strip().lower()
    if media_type not in ("", "*/*", "application/json", "application/*"):
        raise InferenceInputError(f"cannot answer in {accept!r}; accept application/json", 406)
    return json.dumps(prediction)


def predict_bytes(body: bytes, content_type: str | None, model: LoadedModel) -> str:
    """The whole request path, as the serving container chains it."""
    return output_fn(predict_fn(input_fn(body, content_type), model), "application/json")
