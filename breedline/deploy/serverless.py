"""Serverless Inference: refuse, before anything is built, a memory size the model cannot serve in.

Why at deploy time: a serverless endpoint whose model runs out of memory while
loading only fails once the first model is trained and deployed, hours after
``make deploy``, as a failed endpoint with a container log to dig through. The
memory size and the architecture are both in the stage's settings, so the
deploy tool can refuse the pair with one line instead.

The payload side needs no check here: on a serverless stage the predict route's
body limit is ``BREEDLINE_MAX_IMAGE_BYTES`` or the 4,000,000-byte serverless
payload, whichever is smaller (``chalicelib.config.Settings.predict_body_limit``),
and the minima below include decoding the largest body that limit lets through.
"""

from __future__ import annotations

from typing import Any

from breedline.deploy.stage import DeployError

#: The smallest Serverless Inference memory size (MB) a model trained now serves in.
#: Measured with ``python -m bench.serving_memory`` (peak ``VmHWM`` of a worker that
#: runs ``inference.model_fn`` and answers a ~16 MP JPEG and a 16 MP PNG within the
#: 4 MB payload), for the two ways a new artifact can serve: the job's ``model.onnx``
#: with torch imported first (the serving toolkit's handler service imports it), and
#: torch alone (when the job found ONNX unfit). The larger, plus 512 MiB for the model
#: server, rounded up to a size AWS offers. Figures and rule: docs/aws.md, section 5 (which
#: also gives the larger sizes that a model trained before the job built ``model.onnx`` needs).
MODEL_MEMORY_MB: dict[str, int] = {
    "efficientnet_lite0": 2048,
    "resnet50": 2048,
    "vgg11": 3072,
}
def served_model(settings: Any) -> str:
    """The architecture the jobs train: ``BREEDLINE_MODEL``, unless the extra hyperparameters override it.

    ``settings`` is a :class:`chalicelib.config.Settings`; the static
    hyperparameters put ``model`` first and the extra ones over it.
    """
    return str(settings.extra_hyperparameters.get("model") or settings.model)


def check_serverless_memory(settings: Any) -> None:
    """Raise DeployError when a serverless stage's memory size is below its model's minimum."""
    memory = settings.serverless_memory_mb
    if memory <= 0:
        return
    model = served_model(settings)
    need = MODEL_MEMORY_MB.get(model)
    if need is None:
        raise DeployError(
            f"model {model!r} has no measured Serverless Inference memory size in "
            f"breedline/deploy/serverless.py; measure it with python -m bench.serving_memory {model}"
        )
    if memory < need:
        raise DeployError(
            f"BREEDLINE_SERVERLESS_MEMORY_MB={memory} is too small for model {model}: "
            f"it needs at least {need} MB to load on a serverless endpoint (docs/aws.md, section 5)"
        )
