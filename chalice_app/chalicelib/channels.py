"""The input channels of the training and tuning requests (InputDataConfig entries).

Why apart from :mod:`chalicelib.sagemaker_requests`: which S3 objects a job may
read (the data set's splits, one pretrained weights file, the live model as
champion) is its own set of rules; the request module imports these and is
still the one place each request is built.
"""

from __future__ import annotations

from typing import Any

from contract import CHAMPION_CHANNEL, CHANNELS, PRETRAINED_CHANNEL

from chalicelib.config import Settings


def s3_uri(settings: Settings, key: str) -> str:
    return f"s3://{settings.bucket}/{key}"


def _file_channel(name: str, uri: str) -> dict[str, Any]:
    """A File-mode channel: SageMaker copies every object under ``uri`` to ``/opt/ml/input/data/<name>``."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def pretrained_channel(settings: Settings) -> dict[str, Any] | None:
    """The ``pretrained`` channel with the one file of ``BREEDLINE_PRETRAINED_WEIGHTS_URI``; None when unset.

    Why a channel: SageMaker copies it into the container before train.py
    starts (which uses it as ``--pretrained_weights``), so a job without
    internet access (a VPC without NAT, network isolation) still has its
    weights. It must be in the data bucket, outside the data sets: the
    execution role reads only that bucket, and a key under the data prefix
    would be taken for a data set upload.
    """
    uri = settings.pretrained_weights_uri
    if not uri:
        return None
    bucket = f"s3://{settings.bucket}/"
    key = uri[len(bucket):] if uri.startswith(bucket) else ""
    if not key or key.endswith("/") or key.startswith(settings.data_prefix):
        raise ValueError(
            f"BREEDLINE_PRETRAINED_WEIGHTS_URI={uri!r} must name one object in the data bucket outside "
            f"{settings.data_prefix}, e.g. {bucket}code/weights/<file>"
        )
    return _file_channel(PRETRAINED_CHANNEL, uri)


def input_channels(settings: Settings, dataset: str) -> list[dict[str, Any]]:
    """One channel per split, named as train.py reads them (SM_CHANNEL_TRAIN ...), and the pretrained one if set."""
    channels = [
        _file_channel(split, s3_uri(settings, f"{settings.data_prefix}{dataset}/{split}/")) for split in CHANNELS
    ]
    pretrained = pretrained_channel(settings)
    if pretrained is not None:
        channels.append(pretrained)
    return channels


def champion_channel(settings: Settings, model_uri: str) -> dict[str, Any]:
    """The ``champion`` channel: the live model's ``model.tar.gz``, for the final job to evaluate on its test split.

    Why: the gate compares like with like only when both models are scored on
    the same images (``champion_*`` metric lines). An S3Prefix naming one
    object copies just that object, to
    ``/opt/ml/input/data/champion/model.tar.gz`` (SM_CHANNEL_CHAMPION); it must
    be a job output in the data bucket, which the execution role reads.
    """
    bucket = f"s3://{settings.bucket}/"
    if not model_uri.startswith(bucket) or model_uri.endswith("/") or model_uri[len(bucket):].startswith(settings.data_prefix):
        raise ValueError(f"champion model {model_uri!r} must be one object in {bucket} outside {settings.data_prefix}")
    return _file_channel(CHAMPION_CHANNEL, model_uri)
