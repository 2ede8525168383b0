"""The Batch Transform requests (CreateTransformJob, DescribeTransformJob), as plain dicts.

Why apart from :mod:`chalicelib.sagemaker_requests`: that module re-exports
these (``build.create_transform_job``), so it stays the one place every
request is found, while each file stays small. Nothing here talks to AWS;
tests validate the dicts against botocore's service model.
"""

from __future__ import annotations

from typing import Any

from chalicelib.batch import MANIFEST_FILE, MAX_PAYLOAD_MB, OUTPUT_FOLDER, results_folder
from chalicelib.channels import s3_uri
from chalicelib.config import Settings
from contract import BATCH_ERRORS_LINES, BATCH_ERRORS_VARIABLE

#: What the serving code reads to answer an undecodable image as a 200 error line, not a 4xx
#: (a 4xx from the container fails the whole transform job).
#: What each image is sent as: the container sniffs the real format from its bytes (contract.IMAGE_MAGIC).
IMAGE_CONTENT_TYPE = "application/x-image"
JSON = "application/json"


def manifest_uri(settings: Settings, batch_job: str, transform_job: str) -> str:
    return s3_uri(settings, results_folder(batch_job, transform_job) + MANIFEST_FILE)


def output_uri(settings: Settings, batch_job: str, transform_job: str) -> str:
    """Where SageMaker writes ``<rel>.out`` for each manifest entry ``<rel>``."""
    return s3_uri(settings, results_folder(batch_job, transform_job) + OUTPUT_FOLDER)


def create_transform_job(
    settings: Settings, *, name: str, batch_job: str, model_name: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """CreateTransformJob on the live model over the batch's manifest: one image per request.

    ``SplitType None`` and ``BatchStrategy SingleRecord`` send each image
    whole as one invocation; ``AssembleWith None`` keeps one ``.out`` per image.
    ``InvocationsMaxRetries 0``: a retry of an image that failed to decode
    would fail the same way (the serving code answers it as an error line).
    No RoleArn: the job runs with the model's execution role.
    """
    output: dict[str, Any] = {
        "S3OutputPath": output_uri(settings, batch_job, name),
        "Accept": JSON,
        "AssembleWith": "None",
    }
    resources: dict[str, Any] = {
        "InstanceType": settings.batch_instance_type,
        "InstanceCount": settings.batch_instance_count,
    }
    if settings.kms_key_id:
        output["KmsKeyId"] = settings.kms_key_id
        resources["VolumeKmsKeyId"] = settings.kms_key_id
    return {
        "TransformJobName": name,
        "ModelName": model_name,
        "MaxConcurrentTransforms": settings.batch_max_concurrent_transforms,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": settings.batch_invocation_timeout_seconds,
            "InvocationsMaxRetries": 0,
        },
        "MaxPayloadInMB": MAX_PAYLOAD_MB,
        "BatchStrategy": "SingleRecord",
        "Environment": {BATCH_ERRORS_VARIABLE: BATCH_ERRORS_LINES},
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri(settings, batch_job, name)}
            },
            "ContentType": IMAGE_CONTENT_TYPE,
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": output,
        "TransformResources": resources,
        "Tags": tags,
    }


def describe_transform_job(name: str) -> dict[str, Any]:
    return {"TransformJobName": name}
