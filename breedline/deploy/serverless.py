"""Serverless Inference: refuse, before anything is built, a memory size the model cannot load in.

Why at deploy time: a serverless endpoint whose model runs out of memory while
loading only fails once the first model is trained and deployed, hours after
``make deploy``, as a failed endpoint with a container log to dig through. The
memory size and the architecture are both in the stage's settings, so the
deploy tool can refuse the pair with one line instead.
"""

from __future__ import annotations

from typing import Any

from breedline.deploy.stage import DeployError

#: The smallest Serverless Inference memory size (MB) each architecture loads in.
#: Measured with ``python -m bench.serving_memory`` (peak of ``inference.model_fn``
#: with the default serving backend, which exports the model to ONNX in memory),
#: plus room for the model server, rounded up to a size AWS offers. The figures
#: and the rule are in docs/aws.md, section 5; a new architecture needs a row.
MODEL_MEMORY_MB: dict[str, int] = {
    "efficientnet_lite0": 2048,
    "resnet50": 2048,
    "vgg11": 4096,
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
