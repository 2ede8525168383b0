"""Container and Debugger rule image URIs for a region, from ``sagemaker-core``.

Why not a table: AWS publishes the deep-learning containers from a different
account in each region (and adds regions and versions over time). The
SageMaker SDK ships that mapping as JSON and keeps it current, so we ask it at
deploy time and write the answers into the stage's Lambda environment
(``BREEDLINE_TRAINING_IMAGE``, ``BREEDLINE_INFERENCE_IMAGE``,
``BREEDLINE_DEBUGGER_RULE_IMAGE``). ``sagemaker-core`` is never imported by the
Lambda; only this deploy-time module uses it, and it works offline.

Why PyTorch 2.6 / py312 by default: the SDK's bundled configuration lists
training images up to a newer PyTorch, but inference images only up to 2.6
(py312). A model that ``train.py`` saves in the training container is loaded
by the serving scripts in the inference container, so both run the same
version, the newest that has both; ``ml_scripts/`` therefore runs on torch 2.6
and torchvision 0.21 as well as on the torch the checkout pins.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

DEFAULT_FRAMEWORK_VERSION = "2.6"
DEFAULT_PY_VERSION = "py312"

#: Where each URI goes in the Lambda environment (see chalicelib/config.py).
ENV_NAMES = {
    "training": "BREEDLINE_TRAINING_IMAGE",
    "inference": "BREEDLINE_INFERENCE_IMAGE",
    "debugger_rule": "BREEDLINE_DEBUGGER_RULE_IMAGE",
}

# <account>.dkr.ecr.<region>.<domain>/<repository>:<tag>
_ECR_URI = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.(?P<domain>[a-z0-9.]+)/"
                      r"(?P<repository>[a-z0-9._/-]+):(?P<tag>[A-Za-z0-9._-]+)$")


@dataclass(frozen=True)
class ImageSet:
    """The three images one stage needs, all for the same region."""

    region: str
    training: str
    inference: str
    debugger_rule: str

    def as_env(self) -> dict[str, str]:
        """The images as the Lambda environment variables the app reads."""
        return {env: getattr(self, attr) for attr, env in ENV_NAMES.items()}

    def ecr_repository_arns(self, partition: str = "aws") -> list[str]:
        """ARNs of the ECR repositories the SageMaker execution role must pull from.

        Why: the execution role gets ``ecr:BatchGetImage`` on exactly these
        repositories instead of on ``*``.
        """
        arns = []
        for uri in (self.training, self.inference, self.debugger_rule):
            parts = parse_image_uri(uri)
            arn = f"arn:{partition}:ecr:{parts['region']}:{parts['account']}:repository/{parts['repository']}"
            if arn not in arns:
                arns.append(arn)
        return arns

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_image_uri(uri: str) -> dict[str, str]:
    """Split an ECR image URI into account, region, domain, repository and tag."""
    match = _ECR_URI.match(uri)
    if not match:
        raise ValueError(f"not an ECR image URI: {uri!r}")
    return match.groupdict()


def resolve_images(
    region: str,
    *,
    training_instance_type: str = "ml.g4dn.xlarge",
    endpoint_instance_type: str = "ml.m5.large",
    serverless_memory_mb: int = 0,
    framework_version: str = DEFAULT_FRAMEWORK_VERSION,
    py_version: str = DEFAULT_PY_VERSION,
) -> ImageSet:
    """Resolve the PyTorch training/inference images and the Debugger rule image.

    The processor (cpu/gpu) follows the instance type, as the SDK decides it;
    a Serverless Inference endpoint (``serverless_memory_mb > 0``) always gets
    the CPU inference image, because serverless endpoints have no GPU.
    Raises ``ValueError`` (from the SDK) for a region or version it does not know.
    """
    # Imported here so that importing this module (e.g. for ENV_NAMES) stays cheap.
    from sagemaker.core import image_uris
    from sagemaker.core.debugger.debugger import get_rule_container_image_uri

    pytorch = {"framework": "pytorch", "region": region, "version": framework_version, "py_version": py_version}
    training = image_uris.retrieve(**pytorch, instance_type=training_instance_type, image_scope="training")
    if serverless_memory_mb > 0:
        from sagemaker.core.serverless_inference_config import ServerlessInferenceConfig

        serverless = ServerlessInferenceConfig(memory_size_in_mb=serverless_memory_mb)
        inference = image_uris.retrieve(**pytorch, image_scope="inference", serverless_inference_config=serverless)
    else:
        inference = image_uris.retrieve(**pytorch, instance_type=endpoint_instance_type, image_scope="inference")
    # Every built-in rule (LossNotDecreasing, Overfit, ..., ProfilerReport) runs in
    # the same per-region rule image; the name only matters for the detailed profiler.
    rule = get_rule_container_image_uri("LossNotDecreasing", region)
    return ImageSet(region=region, training=training, inference=inference, debugger_rule=rule)
