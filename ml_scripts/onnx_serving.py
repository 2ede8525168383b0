"""The network in ONNX Runtime: exported in memory at load time, served only if it matches torch.

Why apart from ``inference.py``: the export, its probe and its tolerances are
one concern (and the serving script stays within the layout's module size).
Copied into ``code/`` with the other serving modules (``final_job.SERVING_FILES``).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones import FeatureTap, LogitsAndFeatures

ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"
ONNX_FEATURES = "features"  # the second output of a model that abstains: the head's input
#: ONNX Runtime is used only if its logits match torch's this closely on the probe batch.
ONNX_RTOL = 1e-3
ONNX_ATOL = 1e-4


def onnx_session(module: nn.Module, image_size: int, tap: FeatureTap | None = None) -> tuple[Any, str]:
    """Export ``module`` to ONNX in memory and open it in ONNX Runtime's CPU provider.

    Returns ``(session, "")``, or ``(None, reason)`` when onnxruntime is missing,
    the export fails, or the session's logits differ from torch's on a seeded
    probe batch: a faster wrong answer is never served. With ``tap`` the graph
    has a second output, the penultimate features, checked the same way.
    """
    try:
        import onnxruntime
    except ImportError:
        return None, "onnxruntime is not installed"
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    # eval(): the exporter restores the wrapper's mode afterwards, and a new module starts in training mode.
    exported = module if tap is None else LogitsAndFeatures(module, tap).eval()
    outputs = [ONNX_OUTPUT] if tap is None else [ONNX_OUTPUT, ONNX_FEATURES]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notices
            torch.onnx.export(
                exported, probe[:1], buffer, input_names=[ONNX_INPUT], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [ONNX_INPUT, *outputs]}, dynamo=False,
            )
        options = onnxruntime.SessionOptions()
        # ORT's worker threads spin after each run by default, which slows its own calls
        # and a torch call in the same process after it on a small machine (docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        got_all = session.run(None, {ONNX_INPUT: probe.numpy()})
    except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure means: serve with torch
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]  # the exporter appends whole graphs
        return None, f"ONNX export or session failed: {type(exc).__name__}: {first_line}"
    with torch.inference_mode():
        expected_all = [t.float().numpy() for t in exported(probe)] if tap is not None else [module(probe).float().numpy()]
    for name, got, expected in zip(outputs, got_all, expected_all):
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL):
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            return None, f"ONNX Runtime {name} differ from torch's (max |diff| {diff:.2g})"
    return session, ""
