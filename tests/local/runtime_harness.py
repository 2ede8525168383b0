"""Start ``python -m breedline up`` in a child process for a test, and talk to it with boto3.

Why a child process: the app reads its configuration at import (like a Lambda
cold start) and caches clients; the runtime also owns training and model-server
processes. A child keeps each test's app, environment and processes apart from
the rest of the test session, and exercises the real ``up`` command.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import boto3

from breedline.build.paths import REPO_ROOT
from breedline.demo import stop_runtime
from breedline.local.runtime import RuntimeInfo


@contextlib.contextmanager
def running_runtime(state_dir: Path, env: dict[str, str], timeout: float = 120.0) -> Iterator[RuntimeInfo]:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    log_path = state_dir / "logs" / "runtime.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("BREEDLINE_")}
    child_env.update(env)
    child_env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "breedline", "up", "--state-dir", str(state_dir), "--keep-state",
             "--schedule-seconds", "5"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            info = RuntimeInfo.read(state_dir)
            if info is not None and info.pid == child.pid:
                break
            if child.poll() is not None:
                raise AssertionError(f"runtime exited {child.returncode}: {log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        else:
            raise AssertionError(f"runtime did not start: {log_path.read_text()[-3000:]}")
        yield info
    finally:
        if not stop_runtime(child):
            raise AssertionError("the runtime did not stop within 60 s of SIGTERM")


@contextlib.contextmanager
def runtime_with_script(state_dir: Path, env: dict[str, str], train_py: str) -> Iterator[tuple[RuntimeInfo, dict]]:
    """A running runtime whose training script is ``train_py``, and its clients.

    Why: the pipeline-path tests (cost guard, failed final job, quiet period) need
    the real app and runtime but only a stand-in script, so each run takes
    seconds; the script goes over the runtime's own ``sourcedir.tar.gz``, the
    object every job it starts downloads.
    """
    from local_standins import tarball  # type: ignore[import-not-found]

    with running_runtime(state_dir, env) as info:
        c = clients(info)
        uri = info.env.get("BREEDLINE_SOURCEDIR_URI", f"s3://{info.bucket}/code/sourcedir.tar.gz")
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        c["s3"].put_object(Bucket=bucket, Key=key, Body=tarball({"train.py": train_py}))
        yield info, c


def clients(info: RuntimeInfo) -> dict[str, object]:
    creds = dict(region_name=info.region, aws_access_key_id="testing", aws_secret_access_key="testing")
    return {
        "s3": boto3.client("s3", endpoint_url=info.aws_url, **creds),
        "sqs": boto3.client("sqs", endpoint_url=info.aws_url, **creds),
        "sagemaker": boto3.client("sagemaker", endpoint_url=info.sagemaker_url, **creds),
    }


def upload_folder(s3, bucket: str, folder: Path, dataset: str) -> int:
    count = 0
    for path in sorted(folder.rglob("*.jpg")):
        s3.upload_file(str(path), bucket, f"datasets/{dataset}/{path.relative_to(folder).as_posix()}")
        count += 1
    s3.put_object(Bucket=bucket, Key=f"datasets/{dataset}/_READY", Body=b"")
    return count


def wait_for(check, timeout: float, interval: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def endpoint_in_service(sm, name: str = "breedline-classifier") -> dict | None:
    """The endpoint once InService (None before); a Failed endpoint fails the test with its reason."""
    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except sm.exceptions.ClientError:
        return None
    assert endpoint["EndpointStatus"] != "Failed", endpoint.get("FailureReason")
    return endpoint if endpoint["EndpointStatus"] == "InService" else None


@dataclass
class DigitsPipeline:
    """A local runtime that took a digits upload all the way to an InService endpoint."""

    started: float
    root: Path
    data: Path
    info: RuntimeInfo
    endpoint: dict
    #: time.monotonic() when the endpoint went InService: the pipeline's own time, whatever ran after it.
    in_service: float = 0.0


def wait_for_transform(sm, name: str, timeout: float = 300.0, interval: float = 0.5) -> dict:
    """DescribeTransformJob once the job has ended (Completed, Failed or Stopped)."""
    deadline = time.monotonic() + timeout
    while (job := sm.describe_transform_job(TransformJobName=name))["TransformJobStatus"] in ("InProgress", "Stopping"):
        assert time.monotonic() < deadline, f"transform job {name} did not finish within {timeout:.0f} s"
        time.sleep(interval)
    return job
