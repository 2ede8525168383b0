"""Deterministic SageMaker names within the service's limits.

Why deterministic: a second CreateHyperParameterTuningJob or CreateTrainingJob
with the same name fails with ResourceInUse, so the name itself is a
single-flight guard that outlives any idempotency record. Why short: tuning job
names are at most 32 characters (SageMaker appends ``-NNN-xxxxxxxx`` for its
trials), training job, model and endpoint-config names at most 63.
"""

from __future__ import annotations

import hashlib
import re

TUNING_NAME_MAX = 32
TRAINING_NAME_MAX = 63
MODEL_NAME_MAX = 63
ENDPOINT_CONFIG_NAME_MAX = 63
TRANSFORM_NAME_MAX = 63
#: The prefix must leave room for ``-<slug>-<8 hex>`` in 32 characters.
PREFIX_MAX = 20
FINAL_SUFFIX = "-final"

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_HASH_LEN = 8


def slug(text: str) -> str:
    """Lowercase letters and digits joined by single hyphens (``Dog_Breeds`` -> ``dog-breeds``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def check_prefix(prefix: str) -> str:
    """Fail early on a prefix that cannot start every name (IAM policies are scoped to it)."""
    if not prefix or slug(prefix) != prefix or len(prefix) > PREFIX_MAX:
        raise ValueError(
            f"BREEDLINE_NAME_PREFIX={prefix!r} must be 1-{PREFIX_MAX} lowercase letters, digits and single hyphens"
        )
    return prefix


def short_hash(*parts: str) -> str:
    """8 hex characters that tell data set versions apart."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:_HASH_LEN]


def tuning_job_name(prefix: str, dataset: str, version: str) -> str:
    """``<prefix>-<dataset slug, truncated>-<hash>``, at most 32 characters.

    The hash covers the full data set name and its content version, so
    truncating the slug never makes two versions collide.
    """
    check_prefix(prefix)
    digest = short_hash(dataset, version)
    room = TUNING_NAME_MAX - len(prefix) - len(digest) - 2
    part = slug(dataset)[: max(room, 0)].strip("-")
    name = f"{prefix}-{part}-{digest}" if part else f"{prefix}-{digest}"
    assert len(name) <= TUNING_NAME_MAX and NAME_PATTERN.match(name), name
    return name


def training_job_name(tuning_name: str) -> str:
    """The final job of a tuning job: ``<tuning name>-final``.

    SageMaker names trials ``<tuning name>-NNN-<8 hex>``, so this name can never
    be a trial's.
    """
    name = f"{tuning_name}{FINAL_SUFFIX}"
    if len(name) > TRAINING_NAME_MAX or not NAME_PATTERN.match(name):
        raise ValueError(f"invalid training job name {name!r}")
    return name


def model_name(training_name: str) -> str:
    """One model per final training job; also used as the production variant name."""
    if len(training_name) > MODEL_NAME_MAX:
        raise ValueError(f"model name too long: {training_name!r}")
    return training_name


def endpoint_config_name(model: str, serverless: bool) -> str:
    """One endpoint config per model and hosting kind (instances or serverless)."""
    name = f"{model}-{'sl' if serverless else 'rt'}"
    if len(name) > ENDPOINT_CONFIG_NAME_MAX:
        raise ValueError(f"endpoint config name too long: {name!r}")
    return name


def transform_job_name(prefix: str, batch_job: str, *version: str) -> str:
    """``<prefix>-batch-<batch slug, truncated>-<hash>``, at most 63 characters.

    The hash covers the full batch name and ``version`` (the ``_READY``
    marker's version id or ETag, the images' listing digest and the live
    model), so a duplicate marker event names the same job (SageMaker
    answers ResourceInUse) while a new marker, changed images or a new live
    model name a new one.
    """
    check_prefix(prefix)
    digest = short_hash(batch_job, *version)
    head = f"{prefix}-batch"
    room = TRANSFORM_NAME_MAX - len(head) - len(digest) - 2
    part = slug(batch_job)[: max(room, 0)].strip("-")
    name = f"{head}-{part}-{digest}" if part else f"{head}-{digest}"
    assert len(name) <= TRANSFORM_NAME_MAX and NAME_PATTERN.match(name), name
    return name
