"""The network in ONNX Runtime, from the ``model.onnx`` the training job built: no torch at import or at load.

Why apart from ``inference.py``: which ONNX file may serve, and how its session
is opened, is one concern. The job (``final_job.ship_onnx`` ->
``onnx_export.build_onnx_artifact``) exports the model, checks it against torch
on held-out images and records what it did in ``model_meta.json``'s ``"onnx"``;
this module trusts that record only when the file on disk still matches it.
numpy and onnxruntime only (onnxruntime imported when a session opens), so an
endpoint serving ``model.onnx`` never imports torch (``serving_model``).
Copied into ``code/`` with the other serving modules (``final_job.SERVING_FILES``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"
ONNX_FEATURES = "features"  # the second output of a model that abstains: the head's input
#: ONNX Runtime is used only if its logits (and features) match torch's this closely on the probe.
ONNX_RTOL = 1e-3
ONNX_ATOL = 1e-4
#: The file the job writes beside ``model.pt``.
ONNX_FILE = "model.onnx"
#: The opset the job exports with: one that torch 2.6's exporter (the containers) and ONNX Runtime 1.26 both know.
ONNX_OPSET = 17
#: ``model_meta.json``'s ``"onnx"`` ``status`` when ``model.onnx`` passed the parity check.
ONNX_OK = "ok"


def session_options() -> Any:
    """ONNX Runtime's options for every session here (in-memory export or the job's file).

    ORT's worker threads spin after each run by default, which slows its own calls
    and a torch call in the same process after it on a small machine (docs/benchmarks.md).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model: str | bytes) -> Any:
    """An ONNX Runtime CPU session on a model file path or serialised bytes."""
    import onnxruntime

    return onnxruntime.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])


def job_onnx_state(meta: dict[str, Any]) -> str:
    """What the training job did about ONNX: ``"none"`` (built before it did), ``"ok"`` or ``"failed"``."""
    section = meta.get("onnx")
    if not isinstance(section, dict):
        return "none"
    return ONNX_OK if section.get("status") == ONNX_OK else "failed"


def open_job_onnx(model_dir: str | os.PathLike[str], meta: dict[str, Any], image_size: int,
                  need_features: bool) -> tuple[Any, str]:
    """The session on the job's ``model.onnx``, or ``(None, why not)`` in one line.

    Checked without torch: the job recorded a passed parity check, the file is
    there with the recorded size (a truncated copy never loads), its input size is
    the model's, and it has the features output when the model abstains. The
    parity itself was checked by the job on held-out images (``"onnx"."parity"``).
    """
    state = job_onnx_state(meta)
    if state == "none":
        return None, f"the model directory has no {ONNX_FILE} (built before the job exported one)"
    section = meta["onnx"]
    if state != ONNX_OK:
        return None, f"the training job shipped no {ONNX_FILE}: {section.get('reason') or 'no reason recorded'}"
    path = Path(model_dir) / str(section.get("file") or ONNX_FILE)
    if not path.is_file():
        return None, f"model_meta.json names {path.name}, but it is not in the model directory"
    if section.get("bytes") is not None and path.stat().st_size != int(section["bytes"]):
        return None, f"{path.name} has {path.stat().st_size} bytes, model_meta.json says {section['bytes']}"
    shape = (section.get("input") or {}).get("shape") or []
    if len(shape) == 4 and shape[2:] != [image_size, image_size]:
        return None, f"{path.name} takes {shape[2]}x{shape[3]} images, the model's preprocessing {image_size}"
    outputs = list(section.get("outputs") or [ONNX_OUTPUT])
    if need_features and ONNX_FEATURES not in outputs:
        return None, f"{path.name} has no {ONNX_FEATURES} output, which the model's abstention needs"
    try:
        import onnxruntime  # noqa: F401 - only to say why, when it is missing
    except ImportError:
        return None, "onnxruntime is not installed"
    try:
        session = open_session(str(path))
    except Exception as exc:  # noqa: BLE001 - an unreadable file: torch serves, and the log says why
        return None, f"ONNX Runtime could not open {path.name}: {type(exc).__name__}: {first_line(exc)}"
    names = [o.name for o in session.get_outputs()]
    if session.get_inputs()[0].name != ONNX_INPUT or names[: len(outputs)] != outputs:
        return None, f"{path.name} has inputs/outputs {session.get_inputs()[0].name}/{names}, not {ONNX_INPUT}/{outputs}"
    return session, ""


def first_line(exc: BaseException) -> str:
    """The first line of an error, at most 300 characters: the exporter appends whole graphs to its messages."""
    return (str(exc).strip().splitlines() or [""])[0][:300]
