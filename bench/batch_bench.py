"""Section 14: batch predictions, a local Batch Transform job against a loop of ``POST /predict`` (issue 18).

What it does: starts the whole local runtime (``python -m breedline up`` in a
child, as the demo does), deploys one model, efficientnet_lite0 with its shipped
ImageNet weights in train.py's layout (``code/`` included), to the endpoint the
predict API calls, and uploads ``IMAGES`` 500 x 400 JPEGs (:mod:`bench.images`)
to S3. Then, in the same run and on the same model and images:

- baseline: one client calls ``POST /predict`` on the local API for each image in
  turn (the Chalice route, the local SageMaker runtime, the endpoint's model server);
- a transform job on the same model with ``InstanceCount`` 1 and 2 (each
  instance its own model server process, ``MaxConcurrentTransforms`` 1), reading
  the images from S3 and writing each ``.out`` back, as the app's request asks
  (``BREEDLINE_BATCH_ERRORS=lines``).

The transform's images/s is counted from ``TransformStartTime`` (its model
servers answer ``/ping``) to ``TransformEndTime``; the start-up before it (a
cold model server: imports, weights, the ONNX export) is given in the note, since
a job pays it once per instance. ``--quick`` starts nothing (the runtime alone
takes most of a minute): it only makes the images, so the section cannot rot.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from bench import images
from bench.core import Row, Section, Stats

IMAGES = 1000
QUICK_IMAGES = 8
REPEATS = 2
WORKERS = (1, 2)
MODEL = "bench-batch"
ENDPOINT_DEFAULT = "breedline-classifier"


def batch_images(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct 500 x 400 JPEGs: the sample photos, cropped, flipped and shaded differently."""
    rng = np.random.default_rng(seed)
    photos = list(images.sample_photos().values())
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = int(rng.integers(0, max(1, h // 5))), int(rng.integers(0, max(1, w // 5)))
        crop = photo[top: top + h * 4 // 5, left: left + w * 4 // 5]
        if i % 2:
            crop = crop[:, ::-1]
        shaded = np.clip(crop.astype(np.float32) * float(rng.uniform(0.8, 1.2)), 0, 255).astype(np.uint8)
        out.append(images.dataset_jpeg(shaded))
    return out


def model_archive(work: Path) -> Path:
    """``model.tar.gz`` as train.py leaves it, around the soak section's served model."""
    from bench.soak_bench import write_served_model

    model_dir = write_served_model(work)
    archive = work / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return archive


def _clients(info: Any) -> tuple[Any, Any]:
    import boto3

    creds = dict(region_name=info.region, aws_access_key_id="testing", aws_secret_access_key="testing")
    return boto3.client("s3", endpoint_url=info.aws_url, **creds), \
        boto3.client("sagemaker", endpoint_url=info.sagemaker_url, **creds)


def deploy(s3: Any, sm: Any, bucket: str, archive: Path, endpoint: str, timeout: float = 300.0) -> None:
    """The model, and the endpoint the predict API calls, InService."""
    s3.upload_file(str(archive), bucket, f"bench/{MODEL}/model.tar.gz")
    sm.create_model(ModelName=MODEL, ExecutionRoleArn="arn:aws:iam::123456789012:role/bench", PrimaryContainer={
        "Image": "local/pytorch-inference:2.6", "ModelDataUrl": f"s3://{bucket}/bench/{MODEL}/model.tar.gz",
        "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}})
    sm.create_endpoint_config(EndpointConfigName=MODEL, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": MODEL, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=MODEL)
    deadline = time.monotonic() + timeout
    while (status := sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]) == "Creating":
        if time.monotonic() > deadline:
            raise RuntimeError("the bench endpoint did not come up")
        time.sleep(1.0)
    if status != "InService":
        raise RuntimeError(f"the bench endpoint is {status}")


def predict_loop(api_url: str, bodies: list[bytes]) -> float:
    """Images per second of one client calling ``POST /predict`` on each image in turn."""
    with requests.Session() as session:
        session.trust_env = False  # loopback only
        start = time.perf_counter()
        for body in bodies:
            answer = session.post(f"{api_url}/predict", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120)
            if answer.status_code != 200:
                raise RuntimeError(f"POST /predict answered {answer.status_code}: {answer.text[:300]}")
        return len(bodies) / (time.perf_counter() - start)


def transform(s3: Any, sm: Any, bucket: str, name: str, count: int, workers: int) -> tuple[float, float]:
    """One transform job over ``batch/bench/``: (images/s while its servers served, start-up seconds)."""
    started = time.monotonic()
    sm.create_transform_job(
        TransformJobName=name, ModelName=MODEL,
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/batch/bench/"}},
                        "ContentType": "application/x-image", "SplitType": "None", "CompressionType": "None"},
        BatchStrategy="SingleRecord", MaxPayloadInMB=6, MaxConcurrentTransforms=1,
        TransformOutput={"S3OutputPath": f"s3://{bucket}/batch-results/bench/{name}/", "Accept": "application/json",
                         "AssembleWith": "None"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": workers},
        Environment={"BREEDLINE_BATCH_ERRORS": "lines"})
    while (job := sm.describe_transform_job(TransformJobName=name))["TransformJobStatus"] == "InProgress":
        if time.monotonic() - started > 1800:
            raise RuntimeError(f"transform job {name} did not finish in 30 minutes")
        time.sleep(0.5)
    if job["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"transform job {name}: {job['TransformJobStatus']}: {job.get('FailureReason')}")
    written = s3.list_objects_v2(Bucket=bucket, Prefix=f"batch-results/bench/{name}/").get("KeyCount", 0)
    if written < min(count, 1000):
        raise RuntimeError(f"transform job {name} wrote {written} of {count} outputs")
    serving = (job["TransformEndTime"] - job["TransformStartTime"]).total_seconds()
    return count / serving, (job["TransformStartTime"] - job["CreationTime"]).total_seconds()


def upload(s3: Any, bucket: str, bodies: list[bytes]) -> None:
    def put(item: tuple[int, bytes]) -> None:
        s3.put_object(Bucket=bucket, Key=f"batch/bench/{item[0]:04d}.jpg", Body=item[1], ContentType="image/jpeg")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(put, enumerate(bodies)))


def measure(work: Path, bodies: list[bytes], repeats: int) -> dict[str, Any]:
    """Runtime up, model deployed, images in S3; then the loop and the jobs, interleaved per repeat."""
    from breedline.demo import start_runtime, stop_runtime

    archive = model_archive(work)
    child, info = start_runtime(work / "state")
    try:
        s3, sm = _clients(info)
        deploy(s3, sm, info.bucket, archive, info.env.get("BREEDLINE_ENDPOINT_NAME", ENDPOINT_DEFAULT))
        upload(s3, info.bucket, bodies)
        predict_loop(info.api_url, bodies[:5])  # warm: the route's first call builds its clients
        rates: dict[str, list[float]] = {"predict": [], **{f"w{w}": [] for w in WORKERS}}
        startups: dict[str, list[float]] = {f"w{w}": [] for w in WORKERS}
        for r in range(repeats):
            rates["predict"].append(predict_loop(info.api_url, bodies))
            for w in WORKERS:
                rate, startup = transform(s3, sm, info.bucket, f"bench-{w}w-{r}", len(bodies), w)
                rates[f"w{w}"].append(rate)
                startups[f"w{w}"].append(startup)
        return {"rates": rates, "startups": startups, "per_record": per_record_lines(work / "state")}
    finally:
        stop_runtime(child)


def per_record_lines(state_dir: Path) -> list[str]:
    """Each job's median seconds per record (read, wait for a slot, invoke, write), from the runtime's log."""
    log_path = state_dir / "logs" / "runtime.log"
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    return [line.split("transform job ", 1)[1] for line in text.splitlines() if "median seconds per record" in line]


def run(section: Section, quick: bool) -> None:
    count = QUICK_IMAGES if quick else int(os.environ.get("BENCH_BATCH_IMAGES", IMAGES))
    bodies = batch_images(count)
    sizes = {Image.open(io.BytesIO(b)).size for b in bodies}
    if quick:
        section.notes.append(f"--quick made {count} JPEGs ({sorted(sizes)}) and started nothing: the local runtime "
                             "takes most of a minute. The full run measures.")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        result = measure(work, bodies, REPEATS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    add_rows(section, result, count)


def add_rows(section: Section, result: dict[str, Any], count: int) -> None:
    """The loop as the baseline row, each worker count against it."""
    baseline = Stats.of(result["rates"]["predict"])
    what = f"{count} JPEGs 500 x 400, efficientnet_lite0 (ImageNet), OMP 1 thread per model server"
    section.rows.append(Row(section.key, f"POST /predict loop, one client ({what})", baseline, "img/s",
                            higher_is_better=True))
    for w in WORKERS:
        startup = Stats.of(result["startups"][f"w{w}"])
        section.rows.append(Row(
            section.key, f"local transform job, {w} worker{'s' if w > 1 else ''} (InstanceCount {w})",
            Stats.of(result["rates"][f"w{w}"]), "img/s", baseline=baseline, higher_is_better=True,
            note=f"from TransformStartTime; start-up before it {startup.median:.1f} s (median)"))
    section.notes.append("Baseline and jobs take turns in each repeat, on the same runtime, model and images. "
                         + json.dumps({k: [round(v, 1) for v in vs] for k, vs in result["rates"].items()}))
    section.notes.extend(f"job {line}" for line in result.get("per_record", []))
