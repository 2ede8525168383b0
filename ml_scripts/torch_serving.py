"""The torch serving path: ``model.pt`` in the architecture's module, on a GPU, or on a CPU for old artifacts.

Why its own module: everything that needs torch at serving time is here, and
``serving_model`` imports it only when the job's ``model.onnx`` cannot serve
(``BREEDLINE_SERVING_BACKEND=torch``, a GPU, an artifact built before the job
exported ONNX, or an unusable file). On a CPU, with the backend not ``torch``,
the module is still exported to ONNX in memory as before
(``onnx_export.onnx_session``), and used only if it matches torch.
Copied into ``code/`` (``final_job.SERVING_FILES``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones import FeatureTap, load_saved_model
from onnx_export import onnx_session
from onnx_serving import ONNX_INPUT
from presets import Preprocessing


class TorchRunner:
    """Runs the network with torch (channels-last, ``inference_mode``), or the in-memory ONNX session."""

    def __init__(self, module: nn.Module, device: torch.device, tap: FeatureTap | None, session: Any,
                 reason: str) -> None:
        self.module = module
        self.device = device
        self.tap = tap
        self.session = session
        self.reason = reason
        self.backend = "onnx" if session is not None else "torch"

    def prepare(self, pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
        """uint8 HWC pixels -> the (1, 3, S, S) float tensor, as the torch path always made it."""
        return prep.normalise_uint8(pixels).unsqueeze(0)

    def run(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and (when the model abstains) penultimate features of an NCHW float batch, as numpy."""
        batch = torch.as_tensor(batch)
        if self.session is not None:
            outputs = self.session.run(None, {ONNX_INPUT: batch.contiguous().numpy()})
            return outputs[0], (outputs[1] if len(outputs) > 1 else None)
        with torch.inference_mode():
            x = batch.to(self.device, memory_format=torch.channels_last)
            logits = self.module(x).float().cpu().numpy()
            features = self.tap.take().float().cpu().numpy() if self.tap is not None else None
        return logits, features


def load_torch_runner(model_dir: str | os.PathLike[str], meta: dict[str, Any], prep: Preprocessing,
                      backend: str, abstains: bool, export: bool) -> TorchRunner:
    """``model.pt`` in its module; on a CPU with ``export``, the in-memory ONNX session beside it if it matches.

    ``backend`` is the setting (``auto``/``torch``/``onnx``); ``export`` False when
    the job already said ONNX fails for this model (no second try at load).
    """
    module = load_saved_model(model_dir, meta)
    tap = FeatureTap(module, meta["architecture"]) if abstains else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    session, reason = None, "BREEDLINE_SERVING_BACKEND=torch"
    if backend != "torch":
        if device.type == "cuda":
            reason = "a GPU is present: torch runs the model on it"
        elif export:
            session, reason = onnx_session(module, prep.image_size, tap)
        else:
            reason = "the training job found ONNX unfit for this model (model_meta.json onnx.reason)"
    # channels-last: the same numbers, faster convolutions (measured by make bench).
    module = module.to(device, memory_format=torch.channels_last)
    return TorchRunner(module, device, tap, session, reason)
