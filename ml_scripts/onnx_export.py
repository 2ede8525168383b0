"""torch -> ONNX: the training job's ``model.onnx`` (:func:`build_onnx_artifact`), and the in-memory export.

Why two users of one export: the job exports once, after evaluation, and checks
the file against torch on held-out images; an endpoint serving an artifact built
before that still exports in memory at load (:func:`onnx_session`, the old way,
checked on a seeded probe). Both use :func:`export` and :func:`parity`, so they
trace the same graph and accept it by the same tolerances
(``onnx_serving.ONNX_RTOL``/``ONNX_ATOL``). Imports torch: never on the
``model.onnx`` serving path. Copied into ``code/`` (``final_job.SERVING_FILES``)
for the old artifacts' in-memory export.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones import FeatureTap, LogitsAndFeatures
from onnx_serving import (
    ONNX_ATOL,
    ONNX_FEATURES,
    ONNX_FILE,
    ONNX_INPUT,
    ONNX_OK,
    ONNX_OPSET,
    ONNX_OUTPUT,
    ONNX_RTOL,
    first_line,
    open_session,
)


def export(module: nn.Module, image_size: int, target: str | os.PathLike[str] | io.BytesIO,
           tap: FeatureTap | None = None) -> list[str]:
    """Trace ``module`` (with ``tap``: logits and features) to ONNX at ``target``; returns the output names.

    Input policy: a dynamic batch axis, a fixed ``image_size`` square (the
    efficientnet convolutions' static padding is fixed by it anyway).
    """
    # eval(): the exporter restores the wrapper's mode afterwards, and a new module starts in training mode.
    exported = module if tap is None else LogitsAndFeatures(module, tap).eval()
    outputs = [ONNX_OUTPUT] if tap is None else [ONNX_OUTPUT, ONNX_FEATURES]
    sample = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notices
        torch.onnx.export(
            exported, sample, target if isinstance(target, io.BytesIO) else str(target),
            input_names=[ONNX_INPUT], output_names=outputs, opset_version=ONNX_OPSET,
            dynamic_axes={name: {0: "batch"} for name in [ONNX_INPUT, *outputs]}, dynamo=False,
        )
    return outputs


def torch_outputs(module: nn.Module, probe: torch.Tensor, tap: FeatureTap | None) -> list[np.ndarray]:
    """What torch answers on ``probe``: logits and, with ``tap``, the features (float32 numpy)."""
    with torch.inference_mode():
        logits = module(probe).float().numpy()
        return [logits] if tap is None else [logits, tap.take().float().numpy()]


def parity(session: Any, probe: torch.Tensor, expected: list[np.ndarray], outputs: list[str]) -> dict[str, Any]:
    """ONNX Runtime against torch on ``probe``: max |diff| per output, top-1 agreement, and the verdict.

    ``"ok"`` only when every output is within ``rtol``/``atol`` of torch's (the
    tolerance the in-memory export always had): a faster wrong answer is never served.
    """
    got = session.run(outputs, {ONNX_INPUT: probe.numpy()})
    figures: dict[str, Any] = {"probe_images": int(probe.shape[0]), "rtol": ONNX_RTOL, "atol": ONNX_ATOL}
    ok = True
    for name, a, b in zip(outputs, got, expected):
        same_shape = a.shape == b.shape
        figures[f"max_abs_diff_{name}"] = float(np.abs(a - b).max()) if same_shape else None
        ok = ok and same_shape and bool(np.allclose(a, b, rtol=ONNX_RTOL, atol=ONNX_ATOL))
    figures["top1_agreement"] = float((got[0].argmax(axis=1) == expected[0].argmax(axis=1)).mean())
    figures["ok"] = ok
    return figures


def _mismatch(figures: dict[str, Any], outputs: list[str]) -> str:
    diffs = ", ".join(f"{n} max |diff| {figures.get(f'max_abs_diff_{n}')}" for n in outputs)
    return (f"ONNX Runtime differs from torch on {figures['probe_images']} probe images ({diffs}; "
            f"rtol {ONNX_RTOL}, atol {ONNX_ATOL}; top-1 agreement {figures['top1_agreement']:.3f})")


def onnx_session(module: nn.Module, image_size: int, tap: FeatureTap | None = None) -> tuple[Any, str]:
    """Export ``module`` to ONNX in memory and open it in ONNX Runtime's CPU provider (artifacts without ``model.onnx``).

    Returns ``(session, "")``, or ``(None, reason)`` when onnxruntime is missing,
    the export fails, or the session's outputs differ from torch's on a seeded
    probe batch. With ``tap`` the graph has a second output, the penultimate features.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed"
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        outputs = export(module, image_size, buffer, tap)
        session = open_session(buffer.getvalue())
        figures = parity(session, probe, torch_outputs(module, probe, tap), outputs)
    except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure means: serve with torch
        return None, f"ONNX export or session failed: {type(exc).__name__}: {first_line(exc)}"
    if not figures["ok"]:
        return None, _mismatch(figures, outputs)
    return session, ""


def build_onnx_artifact(module: nn.Module, model_dir: str | os.PathLike[str], probe: Any,
                        tap: FeatureTap | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` into ``model_dir`` if it matches torch on ``probe``; return ``model_meta.json``'s ``"onnx"``.

    ``module`` is the CPU float32 network in eval mode; ``probe`` an NCHW float
    batch of real held-out images, preprocessed as serving does; ``tap`` (the
    module's :class:`backbones.FeatureTap`) adds the features output that
    abstention reads. Never raises: on any failure the file is removed and the
    section says ``"status": "failed"`` and why, and the endpoint serves with torch.
    """
    path = Path(model_dir) / ONNX_FILE
    probe = torch.as_tensor(np.asarray(probe, dtype=np.float32))
    image_size = int(probe.shape[-1])
    facts: dict[str, Any] = {
        "file": ONNX_FILE, "opset": ONNX_OPSET, "exporter": f"torch.onnx (TorchScript) {torch.__version__}",
        "input": {"name": ONNX_INPUT, "shape": ["batch", 3, image_size, image_size],
                  "policy": "dynamic batch, fixed height and width"},
    }
    try:
        import onnxruntime
    except ImportError:
        return {**facts, "status": "failed", "reason": "onnxruntime is not installed in the training container"}
    try:
        outputs = export(module.eval(), image_size, path, tap)
        session = open_session(str(path))
        figures = parity(session, probe, torch_outputs(module, probe, tap), outputs)
    except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure: ship without ONNX, say why
        path.unlink(missing_ok=True)
        return {**facts, "status": "failed", "reason": f"ONNX export failed: {type(exc).__name__}: {first_line(exc)}"}
    facts.update({"outputs": outputs, "onnxruntime": onnxruntime.__version__, "parity": figures})
    if not figures["ok"]:
        path.unlink(missing_ok=True)
        return {**facts, "status": "failed", "reason": _mismatch(figures, outputs)}
    return {**facts, "status": ONNX_OK, "bytes": path.stat().st_size}
