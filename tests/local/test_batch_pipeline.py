"""Batch predictions on the digits pipeline's live model, in the whole local runtime (e2e).

Two tests on the session's ``digits_pipeline`` (tests/local/conftest.py):

- the local service's transform job on the live model, requested as the app's
  contract says (a manifest, 2 instances, ``BREEDLINE_BATCH_ERRORS=lines``): one
  ``.out`` per image where AWS writes it, the corrupt file an error line, and
  the same top-1 as ``POST /predict`` gives for the same image (the same serving
  code under both);
- the operator's path, ``python -m breedline batch``'s upload under
  ``batch/<name>/`` + ``_READY``: the app starts the job and writes
  ``results.jsonl`` and ``summary.json`` (one line per file, the corrupt one an
  error line, the summary's counts equal to the lines).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
from runtime_harness import DigitsPipeline, clients, wait_for_transform  # type: ignore[import-not-found]

from breedline.batch_runner import run_batch

pytestmark = pytest.mark.e2e
CORRUPT = "corrupt.jpg"


def _batch_folder(pipeline: DigitsPipeline, dest: Path, per_class: int = 2) -> Path:
    """A few held-out digits (in class subfolders, as a user's folder might be) and one corrupt JPEG."""
    if dest.exists():
        shutil.rmtree(dest)
    for cls in sorted(p for p in (pipeline.data / "test").iterdir() if p.is_dir()):
        for image in sorted(cls.glob("*.jpg"))[:per_class]:
            (dest / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, dest / cls.name / image.name)
    (dest / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0" + b"this JPEG was cut off in the upload" * 8)
    return dest


def _live_model(sm, endpoint: dict) -> str:
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    return config["ProductionVariants"][0]["ModelName"]


def test_transform_job_on_the_live_model_matches_predict(digits_pipeline: DigitsPipeline) -> None:
    info = digits_pipeline.info
    c = clients(info)
    s3, sm = c["s3"], c["sagemaker"]
    folder = _batch_folder(digits_pipeline, digits_pipeline.root / "batch-direct")
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for rel in names:
        s3.upload_file(str(folder / rel), info.bucket, f"batch/direct/{rel}")
    base = "batch-results/direct/tj-direct"
    s3.put_object(Bucket=info.bucket, Key=f"{base}/manifest.json",
                  Body=json.dumps([{"prefix": f"s3://{info.bucket}/batch/direct/"}, *names]))
    sm.create_transform_job(
        TransformJobName="tj-direct", ModelName=_live_model(sm, digits_pipeline.endpoint),
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile",
                                                        "S3Uri": f"s3://{info.bucket}/{base}/manifest.json"}},
                        "ContentType": "application/x-image", "SplitType": "None", "CompressionType": "None"},
        BatchStrategy="SingleRecord", MaxPayloadInMB=6, MaxConcurrentTransforms=2,
        TransformOutput={"S3OutputPath": f"s3://{info.bucket}/{base}/output/", "Accept": "application/json",
                         "AssembleWith": "None"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 2},
        Environment={"BREEDLINE_BATCH_ERRORS": "lines"},
        ModelClientConfig={"InvocationsTimeoutInSeconds": 60, "InvocationsMaxRetries": 1})
    job = wait_for_transform(sm, "tj-direct")
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")

    listed = s3.list_objects_v2(Bucket=info.bucket, Prefix=f"{base}/output/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"{base}/output/{rel}.out" for rel in names]
    for rel in names:
        answer = json.loads(s3.get_object(Bucket=info.bucket, Key=f"{base}/output/{rel}.out")["Body"].read())
        if rel == CORRUPT:
            assert answer["error"]["code"] == "undecodable_image" and answer["error"]["status_code"] == 400
            continue
        online = requests.post(f"{info.api_url}/predict", data=(folder / rel).read_bytes(),
                               headers={"Content-Type": "image/jpeg"}, timeout=60).json()
        # the same model and serving code as the endpoint: the same top-1
        assert answer["top_k"][0]["label"] == online["top_k"][0]["label"], rel
        assert answer["top_k"][0]["probability"] == pytest.approx(online["top_k"][0]["probability"], abs=1e-4)


def test_uploaded_folder_gets_results_and_summary(digits_pipeline: DigitsPipeline) -> None:
    info = digits_pipeline.info
    s3 = clients(info)["s3"]
    folder = _batch_folder(digits_pipeline, digits_pipeline.root / "batch-upload")
    images = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    result = run_batch(s3, info.bucket, folder, "digits-upload", timeout=300, say=print)
    assert result is not None
    bucket, key = result.results_uri[5:].split("/", 1)
    lines = [json.loads(line) for line in
             s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines() if line.strip()]
    # One line per uploaded file, sorted, named by its path under batch/<name>/.
    assert [line["file"] for line in lines] == images
    by_file = {line["file"]: line for line in lines}
    assert by_file[CORRUPT]["error"]["code"] == "undecodable_image" and "label" not in by_file[CORRUPT]
    answered = [line for line in lines if "error" not in line]
    assert len(answered) == len(images) - 1
    assert all(line["label"] in {str(d) for d in range(10)} or line["abstained"] for line in answered)
    summary = result.summary
    assert summary["status"] == "Completed" and summary["total"] == len(images) and summary["failed"] == 1
    assert summary["predicted"] + summary["abstained"] + summary["failed"] == len(images)
    assert sum(summary["counts"].values()) == summary["predicted"]
    assert summary["counts"] == {label: sum(1 for line in answered if line["label"] == label and not line["abstained"])
                                 for label in summary["counts"]}
