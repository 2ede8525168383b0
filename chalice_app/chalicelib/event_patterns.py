"""The EventBridge patterns of the event-driven Lambdas, built from configuration.

Why built, not written: the bucket, data prefix and name prefix differ per
stage, and ``chalice package`` loads ``app.py`` with the stage's environment,
so the rules it creates match only this stage's objects and jobs. The local
runtime reads the same patterns from ``app.event_sources``.
"""

from __future__ import annotations

from typing import Any

from chalicelib.batch import BATCH_PREFIX
from chalicelib.config import Settings
from chalicelib.decisions import ENDPOINT_SETTLED, endpoint_event_spellings
from contract import TERMINAL_STATUSES


def upload_pattern(s: Settings) -> dict[str, Any]:
    """S3 "Object Created" through EventBridge, for the data prefix and the batch prefix only.

    The batch prefix's objects reach the same handler: only a batch's
    ``_READY`` marker does anything there (:mod:`chalicelib.batch_jobs`).
    """
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {
            "bucket": {"name": [s.bucket]},
            "object": {"key": [{"prefix": s.data_prefix}, {"prefix": BATCH_PREFIX}]},
        },
    }


def tuning_pattern(s: Settings) -> dict[str, Any]:
    """Terminal states of tuning jobs named with our prefix (tags are checked in the handler)."""
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker HyperParameter Tuning Job State Change"],
        "detail": {
            "HyperParameterTuningJobStatus": list(TERMINAL_STATUSES),
            "HyperParameterTuningJobName": [{"prefix": f"{s.name_prefix}-"}],
        },
    }


def training_pattern(s: Settings) -> dict[str, Any]:
    """Terminal states of training jobs named with our prefix: final jobs and trials.

    The handler tells them apart (tags), and ignores everything that is not a final job.
    """
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Training Job State Change"],
        "detail": {
            "TrainingJobStatus": list(TERMINAL_STATUSES),
            "TrainingJobName": [{"prefix": f"{s.name_prefix}-"}],
        },
    }


def endpoint_pattern(s: Settings) -> dict[str, Any]:
    """Our endpoint reaching InService, Failed or UpdateRollbackFailed, in both spellings.

    AWS's documented event writes ``IN_SERVICE``; the API (and some events) ``InService``.
    """
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Endpoint State Change"],
        "detail": {
            "EndpointName": [s.endpoint_name],
            "EndpointStatus": endpoint_event_spellings(ENDPOINT_SETTLED),
        },
    }


def transform_pattern(s: Settings) -> dict[str, Any]:
    """Terminal states of transform jobs named with our prefix (tags are checked in the handler)."""
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Transform Job State Change"],
        "detail": {
            "TransformJobStatus": list(TERMINAL_STATUSES),
            "TransformJobName": [{"prefix": f"{s.name_prefix}-"}],
        },
    }
