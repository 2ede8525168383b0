"""Issue 18: the digits final job on 2 local processes against the same job on 1 (needs the DDP train.py).

The 1-process job is the shared pipeline's final job (``digits_pipeline``). The
2-process job is what the app sends with ``BREEDLINE_TRAINING_INSTANCE_COUNT=2``
(``chalicelib.sagemaker_requests.create_training_job``), with the first job's
hyperparameters and Debugger mode, the same seed and the same global batch (half
the per-process ``batch_size`` on each of the two ranks, ``lr_reference_batch`` at
the first job's batch, so train.py's linear scaling rule keeps its learning rate),
to the same local SageMaker: two toolkit processes, torchrun, gloo. It must end
with the same class list, a test accuracy within :data:`ACCURACY_TOLERANCE` of the
1-process job's, and the same metric lines as the 1-process job, once (only rank
0 prints them).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from runtime_harness import DigitsPipeline, clients, wait_for  # type: ignore[import-not-found]

pytestmark = pytest.mark.e2e

#: Two ranks see the same data in another order (DistributedSampler) and average their gradients:
#: on 200 training images at 32 px for 2 epochs, test accuracy moves by this much (absolute) at most.
ACCURACY_TOLERANCE = 0.15
TOOLKIT_KEYS = ("sagemaker_program", "sagemaker_submit_directory", "sagemaker_region",
                "sagemaker_container_log_level", "sagemaker_torch_distributed_enabled")


def model_meta(s3, uri: str) -> dict:
    bucket, key = uri[len("s3://"):].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = next(m for m in tar.getmembers() if Path(m.name).name == "model_meta.json")
        return json.loads(tar.extractfile(member).read())


def metric_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("#breedline-metric")]


def metric_names(lines: list[str]) -> Counter:
    """How often each metric name is printed (values differ between the runs; the lines must not)."""
    return Counter(part.split("=", 1)[0] for line in lines for part in line.split()[1:] if "=" in part)


@pytest.mark.timeout(600)  # the 2-host job alone takes about 2 minutes on 2 shared cores
def test_two_processes_learn_what_one_does(digits_pipeline: DigitsPipeline) -> None:
    from chalicelib import sagemaker_requests as build
    from chalicelib.config import Settings

    info = digits_pipeline.info
    c = clients(info)
    s3, sm = c["s3"], c["sagemaker"]
    finals = [j for j in sm.list_training_jobs()["TrainingJobSummaries"] if j["TrainingJobName"].endswith("-final")]
    one = sm.describe_training_job(TrainingJobName=finals[0]["TrainingJobName"])
    assert one["ResourceConfig"]["InstanceCount"] == 1

    settings = Settings.from_env({**info.env, "BREEDLINE_TRAINING_INSTANCE_COUNT": "2"})
    tuned = {k: v for k, v in one["HyperParameters"].items() if k not in TOOLKIT_KEYS}
    batch = int(tuned["batch_size"])
    tuned.update(batch_size=str(batch // 2), lr_reference_batch=str(batch))  # the same global batch and rate
    request = build.create_training_job(settings, name="breedline-digits-two-hosts", dataset="digits",
                                        region=info.region, hyperparameters=tuned, tags=[],
                                        debugger=one["HyperParameters"]["debugger"])
    assert request["ResourceConfig"]["InstanceCount"] == 2
    sm.create_training_job(**request)
    two = wait_for(lambda: (lambda j: j if j["TrainingJobStatus"] in ("Completed", "Failed", "Stopped") else None)(
        sm.describe_training_job(TrainingJobName="breedline-digits-two-hosts")), timeout=420, what="2-host job end")
    assert two["TrainingJobStatus"] == "Completed", two.get("FailureReason")

    assert model_meta(s3, two["ModelArtifacts"]["S3ModelArtifacts"])["class_names"] == \
        model_meta(s3, one["ModelArtifacts"]["S3ModelArtifacts"])["class_names"]
    metrics = {job["TrainingJobName"]: {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
               for job in (one, two)}
    accuracy_one, accuracy_two = (metrics[j["TrainingJobName"]]["test_accuracy"] for j in (one, two))
    assert abs(accuracy_two - accuracy_one) <= ACCURACY_TOLERANCE, (accuracy_one, accuracy_two)

    jobs = Path(info.state_dir) / "jobs"
    first_host = metric_lines(jobs / two["TrainingJobName"] / "logs" / "stdout.log")
    assert first_host
    assert metric_names(first_host) == metric_names(metric_lines(jobs / one["TrainingJobName"] / "logs" / "stdout.log"))
    assert metric_lines(jobs / two["TrainingJobName"] / "hosts" / "algo-2" / "logs" / "stdout.log") == []
    logs = jobs / two["TrainingJobName"] / "logs"
    log = (logs / "stdout.log").read_text() + (logs / "stderr.log").read_text()
    assert log.count("world_size=2") == 1, "the log says once how many processes train together"
