"""What ``inference.model_fn`` loads: the model directory's network behind one numpy interface, either backend.

Which backend runs the network (``BREEDLINE_SERVING_BACKEND``):

- ``onnx``, or ``auto`` on an instance without a GPU: the job's ``model.onnx`` in
  ONNX Runtime (``onnx_serving.open_job_onnx``). **torch is not imported**: the
  meta is JSON, the abstention numpy, the preprocessing Pillow and numpy.
- otherwise (``torch``, a GPU, no usable ``model.onnx``): ``torch_serving``, imported
  only then. On a CPU it still exports an artifact without ``model.onnx`` in memory,
  the old way; an artifact whose job found ONNX unfit serves with torch.

A GPU is seen without torch: the NVIDIA device nodes (``/dev/nvidia0`` ...) that
the container runtime passes in only when the instance has one.
Copied into ``code/`` (``final_job.SERVING_FILES``).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import abstention
from contract import SERVING_BACKENDS
from onnx_serving import ONNX_FEATURES, ONNX_INPUT, ONNX_OUTPUT, job_onnx_state, open_job_onnx
from presets import Preprocessing
from serving_errors import ServingBackendError

DEFAULT_BACKEND = "auto"


class OnnxRunner:
    """Runs the job's ``model.onnx`` in ONNX Runtime: numpy in, numpy out."""

    backend = "onnx"
    module = None
    tap = None
    device = "cpu"
    reason = ""

    def __init__(self, session: Any, abstains: bool) -> None:
        self.session = session
        self.outputs = [ONNX_OUTPUT, ONNX_FEATURES] if abstains else [ONNX_OUTPUT]

    def prepare(self, pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
        """uint8 HWC pixels -> the (1, 3, S, S) float32 batch, numpy only."""
        return prep.normalise_numpy(pixels)

    def run(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and (when the model abstains) features of an NCHW float batch (numpy, or a CPU tensor)."""
        feed = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
        got = self.session.run(self.outputs, {ONNX_INPUT: feed})
        return got[0], (got[1] if len(got) > 1 else None)


@dataclass
class LoadedModel:
    """What predict_fn needs: the runner of the network, its class names and its preprocessing."""

    #: An :class:`OnnxRunner` or a ``torch_serving.TorchRunner``: ``prepare`` pixels, ``run`` a batch.
    runner: Any
    class_names: list[str]
    prep: Preprocessing
    architecture: str
    #: ``model_meta.json``'s calibration temperature: answers are ``softmax(logits / T)`` (1: as trained).
    temperature: float = 1.0
    #: When to answer "I don't know" (:mod:`abstention`); None for a model trained without it.
    abstainer: abstention.Abstainer | None = None
    #: Why the job's ``model.onnx`` does not serve, when it does not (logged by model_fn).
    file_reason: str = ""

    @property
    def backend(self) -> str:
        """"torch" or "onnx": what runs the network in predict_fn."""
        return self.runner.backend

    @property
    def backend_reason(self) -> str:
        """Why ONNX Runtime is not used, when it is not."""
        return self.runner.reason

    @property
    def session(self) -> Any:
        """The ONNX Runtime session when ``backend`` is "onnx" (the job's file or the in-memory export)."""
        return self.runner.session

    @property
    def module(self) -> Any:
        """The torch module on the torch path; None when ``model.onnx`` serves (torch is not loaded)."""
        return self.runner.module

    @property
    def device(self) -> Any:
        return self.runner.device

    @property
    def tap(self) -> Any:
        return self.runner.tap

    def forward(self, batch: Any) -> np.ndarray:
        """Logits (numpy float32) for an NCHW float batch, by whichever backend was chosen."""
        return self.forward_with_features(batch)[0]

    def forward_with_features(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and, when the model abstains, its penultimate features (else None), as numpy."""
        return self.runner.run(batch)


def backend_setting() -> str:
    """``BREEDLINE_SERVING_BACKEND``, checked: one of ``contract.SERVING_BACKENDS``."""
    value = (os.environ.get("BREEDLINE_SERVING_BACKEND") or DEFAULT_BACKEND).strip().lower()
    if value not in SERVING_BACKENDS:
        raise ServingBackendError(f"BREEDLINE_SERVING_BACKEND={value!r}: use one of {', '.join(SERVING_BACKENDS)}")
    return value


def gpu_present() -> bool:
    """Whether the container was given an NVIDIA GPU (its device nodes), known without importing torch."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def model_temperature(meta: dict[str, Any]) -> float:
    """The calibration temperature ``train.py`` fitted on ``valid`` (``calibration.py``); 1 for older models.

    A temperature that is present but not a finite positive number is a broken
    model directory: refusing to load it beats serving probabilities it never had.
    """
    value = meta.get("temperature", 1.0)
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        temperature = float("nan")
    if isinstance(value, bool) or not (0.0 < temperature < float("inf")):
        raise ValueError(f"model_meta.json temperature {value!r} is not a positive number")
    return temperature


def read_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``model_meta.json`` (what ``backbones.read_meta`` reads, without importing backbones' torch)."""
    return json.loads((Path(model_dir) / "model_meta.json").read_text(encoding="utf-8"))


def load_model(model_dir: str | os.PathLike[str]) -> LoadedModel:
    """The model directory ready to serve: the job's ``model.onnx`` without torch when it may, else torch."""
    meta = read_meta(model_dir)
    prep = Preprocessing.from_meta(meta)
    temperature = model_temperature(meta)
    abstainer = abstention.load(model_dir, meta)
    backend = backend_setting()
    file_reason = "BREEDLINE_SERVING_BACKEND=torch"
    if backend == "onnx" or (backend == "auto" and not gpu_present()):
        session, file_reason = open_job_onnx(model_dir, meta, prep.image_size, abstainer is not None)
        if session is not None:
            runner: Any = OnnxRunner(session, abstainer is not None)
            return LoadedModel(runner, list(meta["class_names"]), prep, meta["architecture"], temperature, abstainer)
    elif backend == "auto":
        file_reason = "a GPU is present: torch runs the model on it"
    state = job_onnx_state(meta)
    if backend == "onnx" and state == "failed":
        raise ServingBackendError(f"BREEDLINE_SERVING_BACKEND=onnx, but {file_reason}")
    from torch_serving import load_torch_runner  # torch: only on this path

    runner = load_torch_runner(model_dir, meta, prep, backend, abstainer is not None, export=state != "failed")
    if runner.session is None and backend == "onnx":
        raise ServingBackendError(f"BREEDLINE_SERVING_BACKEND=onnx, but {runner.reason}")
    return LoadedModel(runner, list(meta["class_names"]), prep, meta["architecture"], temperature, abstainer,
                       file_reason)
