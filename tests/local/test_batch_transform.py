"""Batch transform jobs of the local SageMaker service, on a real (untrained, tiny) model archive.

What it proves: CreateTransformJob / DescribeTransformJob / ListTransformJobs /
StopTransformJob answer as botocore's model of SageMaker says; the job runs the
model's own ``code/inference.py`` under AWS's serving toolkit on ``InstanceCount``
model servers; every input object gets ``<S3OutputPath><relative key>.out`` where
AWS writes it; ``BREEDLINE_BATCH_ERRORS=lines`` (the job's Environment) turns a
corrupt image into an error line; without it one bad image fails the job, as on
AWS, and the good images still have their output; each state change is put on
EventBridge as ``SageMaker Transform Job State Change``.

Cost: the first test and the refusals run in ``make test`` (one model server,
about ten seconds); two instances, the failing job and the stop start more
servers and are ``e2e``.
"""

from __future__ import annotations

import io
import json

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_restore import restore_state
from breedline.local.sagemaker_state import DETAIL_TRANSFORM
from local_standins import BUCKET, sagemaker_client  # type: ignore[import-not-found]
from runtime_harness import wait_for_transform  # type: ignore[import-not-found]
from test_serving_errors import tiny_model_archive  # type: ignore[import-not-found]

MODEL = "tiny-batch"


def transform_request(name: str, source: dict, output: str, instances: int = 1, concurrent: int = 2,
                      lines: bool = True) -> dict:
    """A request shaped as the app's contract sends it (one image per record, JSON out)."""
    request = {
        "TransformJobName": name, "ModelName": MODEL,
        "TransformInput": {"DataSource": {"S3DataSource": source}, "ContentType": "application/x-image",
                           "SplitType": "None", "CompressionType": "None"},
        "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 6, "MaxConcurrentTransforms": concurrent,
        "TransformOutput": {"S3OutputPath": output, "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": instances},
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 60, "InvocationsMaxRetries": 1},
        "Tags": [{"Key": "breedline:stage", "Value": "batch"}],
    }
    if lines:
        request["Environment"] = {"BREEDLINE_BATCH_ERRORS": "lines"}
    return request


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def wait_done(sm, name: str) -> dict:
    return wait_for_transform(sm, name, timeout=150.0, interval=0.3)


@pytest.fixture
def batch(local_sagemaker, moto_stack, tmp_path):
    """The tiny model, and a batch folder of 4 JPEGs (one in a subfolder), a corrupt JPEG and a GIF."""
    s3 = moto_stack.client("s3")
    s3.put_object(Bucket=BUCKET, Key="models/tiny-batch/model.tar.gz", Body=tiny_model_archive(tmp_path))
    sm = sagemaker_client(local_sagemaker)
    sm.create_model(ModelName=MODEL, ExecutionRoleArn="arn:aws:iam::123456789012:role/x", PrimaryContainer={
        "Image": "local/pytorch-inference:2.6", "ModelDataUrl": f"s3://{BUCKET}/models/tiny-batch/model.tar.gz",
        "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "BREEDLINE_SERVING_BACKEND": "torch"}})
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    images = {"a.jpg": _jpeg(10), "b.jpg": _jpeg(90), "c.jpg": _jpeg(170), "sub/d.jpg": _jpeg(250),
              "broken.jpg": b"\xff\xd8\xff" + b"not a JPEG at all" * 10, "anim.gif": gif.getvalue()}
    for rel, body in images.items():
        s3.put_object(Bucket=BUCKET, Key=f"batch/unit/{rel}", Body=body)
    return sm, s3, sorted(images)


def _outputs(s3, prefix: str) -> dict[str, dict]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
            for o in listed}


@pytest.mark.parametrize("instances", [
    pytest.param(1, id="one-instance"),
    pytest.param(2, id="two-instances", marks=pytest.mark.e2e),
])
def test_manifest_job_writes_one_out_per_image_and_error_lines(batch, local_sagemaker, tmp_path,
                                                               instances: int) -> None:
    sm, s3, names = batch
    manifest = [{"prefix": f"s3://{BUCKET}/batch/unit/"}, *names]
    s3.put_object(Bucket=BUCKET, Key="batch-results/unit/tj-1/manifest.json", Body=json.dumps(manifest))
    output = f"s3://{BUCKET}/batch-results/unit/tj-1/output/"
    arn = sm.create_transform_job(**transform_request(
        "tj-1", {"S3DataType": "ManifestFile", "S3Uri": f"s3://{BUCKET}/batch-results/unit/tj-1/manifest.json"},
        output, instances=instances))["TransformJobArn"]
    assert arn.endswith(":transform-job/tj-1")
    job = wait_done(sm, "tj-1")
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TransformStartTime"] <= job["TransformEndTime"]

    outputs = _outputs(s3, "batch-results/unit/tj-1/output/")
    assert sorted(outputs) == [f"{n}.out" for n in names]
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.jpg"):
        assert {t["label"] for t in outputs[f"{name}.out"]["top_k"]} == {"cat", "dog"}
    assert outputs["broken.jpg.out"]["error"]["code"] == "undecodable_image"
    assert outputs["anim.gif.out"]["error"] == {**outputs["anim.gif.out"]["error"], "status_code": 415}
    # each instance is a model server of its own
    logs = sorted((local_sagemaker.backend.state_dir / "transform-jobs" / "tj-1").glob("instance-*/server.log"))
    assert len(logs) == instances

    events = [e for e in local_sagemaker.backend.emitted if e["detail-type"] == DETAIL_TRANSFORM]
    assert [e["detail"]["TransformJobStatus"] for e in events] == ["InProgress", "Completed"]
    detail = events[-1]["detail"]
    assert detail["Tags"] == {"breedline:stage": "batch"} and detail["ModelName"] == MODEL
    assert detail["TransformOutput"]["S3OutputPath"] == output
    assert detail["CreationTime"].endswith("Z") and "T" in detail["CreationTime"]  # as AWS's example spells it

    listed = sm.list_transform_jobs(StatusEquals="Completed")["TransformJobSummaries"]
    assert [s["TransformJobName"] for s in listed] == ["tj-1"]
    # `up --keep-state` reloads the job from sagemaker.json; its answers still pass botocore's output shapes
    reloaded = SageMakerBackend(tmp_path / "reloaded", s3, None)
    restore_state(reloaded, local_sagemaker.backend.state_dir / "sagemaker.json")
    assert reloaded.call("DescribeTransformJob", {"TransformJobName": "tj-1"})["TransformJobStatus"] == "Completed"
    assert [s["TransformJobName"] for s in reloaded.call("ListTransformJobs", {})["TransformJobSummaries"]] == ["tj-1"]
    with pytest.raises(ClientError) as caught:
        sm.create_transform_job(**transform_request("tj-1", {"S3DataType": "S3Prefix", "S3Uri": output}, output))
    assert caught.value.response["Error"]["Code"] == "ValidationException"


@pytest.mark.e2e
def test_without_error_lines_a_bad_image_fails_the_job_but_not_the_others(batch, local_sagemaker) -> None:
    sm, s3, names = batch
    output = f"s3://{BUCKET}/batch-results/unit/tj-2/output"
    sm.create_transform_job(**transform_request(
        "tj-2", {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/unit/"}, output, lines=False))
    job = wait_done(sm, "tj-2")
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: 2 of 6 records failed")
    assert sorted(_outputs(s3, "batch-results/unit/tj-2/output/")) == [
        "a.jpg.out", "b.jpg.out", "c.jpg.out", "sub/d.jpg.out"]
    log = (local_sagemaker.backend.state_dir / "transform-jobs" / "tj-2" / "data-log.jsonl").read_text()
    assert "broken.jpg" in log and "anim.gif" in log


def test_requests_the_local_service_cannot_honour(local_sagemaker) -> None:
    sm = sagemaker_client(local_sagemaker)
    sm.create_model(ModelName=MODEL, ExecutionRoleArn="arn:aws:iam::123456789012:role/x", PrimaryContainer={
        "Image": "local/pytorch-inference:2.6", "ModelDataUrl": f"s3://{BUCKET}/models/none/model.tar.gz"})
    source = {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/unit/"}
    bad = transform_request("tj-3", source, f"s3://{BUCKET}/out/")
    bad["TransformInput"]["SplitType"] = "Line"
    with pytest.raises(ClientError, match="not supported locally"):
        sm.create_transform_job(**bad)
    with pytest.raises(ClientError, match="Could not find model"):
        sm.create_transform_job(**{**transform_request("tj-3", source, f"s3://{BUCKET}/out/"), "ModelName": "nope"})
    with pytest.raises(ClientError) as caught:
        sm.describe_transform_job(TransformJobName="never-made")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFound"
    assert local_sagemaker.backend.transform_jobs == {}


@pytest.mark.e2e
def test_stop_ends_the_job_stopped(local_sagemaker, batch) -> None:
    sm, _, _ = batch
    source = {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/unit/"}
    sm.create_transform_job(**transform_request("tj-4", source, f"s3://{BUCKET}/out/"))
    sm.stop_transform_job(TransformJobName="tj-4")
    assert sm.describe_transform_job(TransformJobName="tj-4")["TransformJobStatus"] in ("Stopping", "Stopped")
    assert wait_done(sm, "tj-4")["TransformJobStatus"] == "Stopped"
    statuses = [e["detail"]["TransformJobStatus"] for e in local_sagemaker.backend.emitted
                if e["detail-type"] == DETAIL_TRANSFORM]
    assert statuses == ["InProgress", "Stopping", "Stopped"]
