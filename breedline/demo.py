"""``python -m breedline demo``: the whole pipeline on this machine, driven by one upload.

Why the runtime runs in a child process: the demo is an operator watching from
outside, exactly as in AWS. The child (``python -m breedline up``) hosts moto,
the local SageMaker service, the app's handlers and its API; this process only
uploads the data set, watches the jobs through the SageMaker API, calls
``POST /predict`` and prints the report. Ctrl-C stops the child, which stops
every training and model-server process it started.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from breedline.local.runtime import DEFAULT_STATE_DIR, RuntimeInfo
from breedline.packaging import REPO_ROOT

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
#: boto3's default multipart threshold: below it one PutObject is what upload_file would send too.
SINGLE_PUT_BYTES = 8 * 1024 * 1024
UPLOAD_THREADS = 4


class Clock:
    """Wall time since the demo started, and per stage, for the summary."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: list[tuple[str, float]] = []
        self.last = self.start

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.start:6.1f}s]"

    def stage_done(self, name: str) -> None:
        now = time.monotonic()
        self.stages.append((name, now - self.last))
        self.last = now


def say(clock: Clock, text: str) -> None:
    print(f"{clock.stamp()} {text}", flush=True)


def start_runtime(state_dir: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, RuntimeInfo]:
    """Start ``python -m breedline up`` and wait until it has written ``runtime.json``."""
    if state_dir.exists():
        shutil.rmtree(state_dir)
    (state_dir / "logs").mkdir(parents=True)
    log = open(state_dir / "logs" / "runtime.log", "w")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-m", "breedline", "up", "--state-dir", str(state_dir), "--keep-state"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = RuntimeInfo.read(state_dir)
        if info is not None and info.pid == child.pid:
            return child, info
        if child.poll() is not None:
            tail = (state_dir / "logs" / "runtime.log").read_text()[-3000:]
            raise RuntimeError(f"the local runtime exited with {child.returncode}:\n{tail}")
        time.sleep(0.3)
    stop_runtime(child)
    raise RuntimeError("the local runtime did not start in time; see .breedline/logs/runtime.log")


def stop_runtime(child: subprocess.Popen, timeout: float = 60) -> bool:
    """SIGTERM the runtime (it stops its jobs and servers), SIGKILL its group after ``timeout``.

    Returns False when it had to be killed, so tests can insist on a clean stop.
    """
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            return False
    return True


def upload_dataset(s3: Any, bucket: str, data_dir: Path, name: str, marker: str = "_READY") -> int:
    """Upload ``{train,valid,test}/<class>/*`` under ``datasets/<name>/``, then the marker.

    Why ``put_object`` for small files: ``upload_file`` builds a transfer
    manager (and its threads) per call, which costs more client CPU than the
    PutObject itself for a 1 kB image; the object and its ``Object Created``
    event are the same. Files above the multipart threshold still go through
    ``upload_file``. The marker goes last, once every image is in.
    """
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in sorted(data_dir.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]

    def upload(path: Path) -> None:
        key = f"datasets/{name}/{path.relative_to(data_dir).as_posix()}"
        if path.stat().st_size < SINGLE_PUT_BYTES:
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        else:
            s3.upload_file(str(path), bucket, key)

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(upload, files))
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/{marker}", Body=b"")
    return len(files)


class Watcher:
    """Polls the SageMaker API and prints every change, stage by stage and job by job."""

    def __init__(self, sm: Any, clock: Clock, prefix: str, endpoint: str, api_url: str | None = None) -> None:
        self.sm = sm
        self.api_url = api_url
        self.app_view: dict[str, Any] = {}
        self.clock = clock
        self.prefix = prefix
        self.endpoint = endpoint
        self.seen: dict[str, tuple] = {}
        self.metrics_seen: dict[str, dict[str, float]] = {}
        self.tuning_name: str | None = None
        self.final_name: str | None = None
        self.stages_done: set[str] = set()

    def _print_metrics(self, job: dict, label: str) -> None:
        current = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        before = self.metrics_seen.get(job["TrainingJobName"], {})
        changed = {k: v for k, v in current.items() if before.get(k) != v and k != "epoch_seconds"}
        if changed and ("valid_loss" in changed or "test_accuracy" in changed):
            text = ", ".join(f"{k}={v:.4f}" for k, v in sorted(changed.items()))
            say(self.clock, f"    {label} {job['TrainingJobName']}: {text}")
        self.metrics_seen[job["TrainingJobName"]] = current

    def poll(self) -> dict[str, Any]:
        sm = self.sm
        tunings = sm.list_hyper_parameter_tuning_jobs(NameContains=self.prefix, SortBy="CreationTime",
                                                      SortOrder="Descending")["HyperParameterTuningJobSummaries"]
        for t in reversed(tunings):
            key = (t["HyperParameterTuningJobStatus"],)
            if self.seen.get(t["HyperParameterTuningJobName"]) != key:
                self.seen[t["HyperParameterTuningJobName"]] = key
                if self.tuning_name is None:
                    self.tuning_name = t["HyperParameterTuningJobName"]
                    self.clock.stage_done("upload -> tuning job created")
                    say(self.clock, f"STAGE 2  tuning: {t['HyperParameterTuningJobName']} "
                                    f"({t['Strategy']}, {t['ResourceLimits']['MaxNumberOfTrainingJobs']} trials, "
                                    f"{t['ResourceLimits']['MaxParallelTrainingJobs']} at a time)")
                say(self.clock, f"  tuning job {t['HyperParameterTuningJobName']}: {t['HyperParameterTuningJobStatus']}")
                if t["HyperParameterTuningJobStatus"] != "InProgress" and "tuning" not in self.stages_done:
                    self.stages_done.add("tuning")
                    self.clock.stage_done("tuning (all trials)")
        jobs = sm.list_training_jobs(NameContains=self.prefix, SortBy="CreationTime",
                                     SortOrder="Ascending")["TrainingJobSummaries"]
        for summary in jobs:
            name = summary["TrainingJobName"]
            job = sm.describe_training_job(TrainingJobName=name)
            is_trial = "TuningJobArn" in job
            label = "trial" if is_trial else "final job"
            key = (job["TrainingJobStatus"], job["SecondaryStatus"])
            if self.seen.get(name) != key:
                if not is_trial and self.final_name is None:
                    self.final_name = name
                    say(self.clock, f"STAGE 3  final training with the best hyperparameters: {name}")
                self.seen[name] = key
                hp = {k: v.strip('"') for k, v in job["HyperParameters"].items()
                      if k in ("learning_rate", "batch_size")}
                extra = f" ({', '.join(f'{k}={v}' for k, v in sorted(hp.items()))})" \
                    if job["SecondaryStatus"] == "Starting" else ""
                reason = f": {job['FailureReason']}" if job.get("FailureReason") else ""
                say(self.clock, f"  {label} {name}: {job['TrainingJobStatus']} / {job['SecondaryStatus']}{extra}{reason}")
                if not is_trial and job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                    if "training" not in self.stages_done:
                        self.stages_done.add("training")
                        self.clock.stage_done("final training job")
                        if job["TrainingJobStatus"] == "Completed":
                            say(self.clock, "STAGE 4  deployment: quality gate, model, endpoint config, endpoint")
            self._print_metrics(job, label)
        endpoint = None
        try:
            endpoint = sm.describe_endpoint(EndpointName=self.endpoint)
        except Exception:
            pass
        if endpoint is not None:
            key = (endpoint["EndpointStatus"], endpoint["EndpointConfigName"])
            if self.seen.get(f"endpoint:{self.endpoint}") != key:
                self.seen[f"endpoint:{self.endpoint}"] = key
                say(self.clock, f"  endpoint {self.endpoint}: {endpoint['EndpointStatus']} "
                                f"(config {endpoint['EndpointConfigName']})")
        return {"endpoint": endpoint, "app": self.poll_app()}

    def poll_app(self) -> dict[str, Any]:
        """The app's own view (``GET /status``): its decisions, e.g. the quality gate's verdict."""
        if not self.api_url:
            return {}
        try:
            view = requests.get(f"{self.api_url}/status", timeout=10).json()
        except (requests.RequestException, ValueError):
            return self.app_view
        for stage in ("tuning", "training"):
            job = (view.get("jobs") or {}).get(stage) or {}
            key = f"app:{stage}"
            summary = (job.get("name"), job.get("status"), job.get("reason"))
            if job and self.seen.get(key) != summary:
                self.seen[key] = summary
                if job.get("reason"):
                    say(self.clock, f"  app ({stage}): {job.get('name')} {job.get('status')}: {job['reason']}")
        live = view.get("live_model")
        if live and self.seen.get("app:live") != str(live):
            self.seen["app:live"] = str(live)
            say(self.clock, f"  app: live model {json.dumps(live, default=str)}")
        self.app_view = view
        return view


def drain_alerts(sqs: Any, queue: str) -> list[dict]:
    alerts = []
    answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    for message in answer.get("Messages", []):
        body = json.loads(message["Body"])
        alerts.append({"subject": body.get("Subject", ""), "message": body.get("Message", "")})
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return alerts


def pick_test_images(data_dir: Path, count: int, seed: int = 7) -> list[tuple[Path, str]]:
    """A few held-out test images, spread over the classes."""
    test = data_dir / "test"
    by_class = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                for d in sorted(test.iterdir()) if d.is_dir()}
    rng = random.Random(seed)
    classes = sorted(by_class)
    rng.shuffle(classes)
    picked = []
    for cls in classes[:count]:
        if by_class[cls]:
            picked.append((rng.choice(by_class[cls]), cls))
    return picked


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


#: Digits per class in the demo data set (of ~180): sized for < 5 minutes on 2 cores.
DEMO_PER_CLASS = 100


def run_demo(data: Path | None, dataset: str, state_dir: Path = DEFAULT_STATE_DIR, predictions: int = 6,
             timeout: float = 900.0, keep_running: bool = False, per_class: int | None = DEMO_PER_CLASS) -> int:
    """The demo; returns the process exit code."""
    import boto3

    clock = Clock()
    state_dir = Path(state_dir).resolve()
    # `timeout`, CI and process managers send SIGTERM: treat it as Ctrl-C so the runtime is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background with SIGINT ignored
    print("Breedline local demo: S3 upload -> EventBridge -> tuning -> training -> deployment -> /predict",
          flush=True)
    say(clock, "STAGE 0  starting the local AWS stand-ins, SageMaker service, app handlers and API ...")
    child, info = start_runtime(state_dir)
    try:
        say(clock, f"  moto (S3, EventBridge, SQS, SNS, DynamoDB)  {info.aws_url}")
        say(clock, f"  local SageMaker + runtime                    {info.sagemaker_url}")
        say(clock, f"  predict API (chalice local)                  {info.api_url}")
        setting = lambda name: info.env.get(name) or os.environ.get(name)  # noqa: E731
        say(clock, f"  settings: model={setting('BREEDLINE_MODEL')}, epochs={setting('BREEDLINE_EPOCHS')}, "
                   f"trials={setting('BREEDLINE_MAX_JOBS')} ({setting('BREEDLINE_MAX_PARALLEL_JOBS')} at a time), "
                   f"extra hyperparameters={setting('BREEDLINE_EXTRA_HYPERPARAMETERS')}")
        clock.stage_done("runtime start")

        if data is None:
            from breedline.demo_digits import write_digits

            data = state_dir / "demo-data" / dataset
            counts = write_digits(data, per_class=per_class, size=48)
            say(clock, f"STAGE 1  wrote scikit-learn digits as JPEGs to {data}: {counts}")
        else:
            say(clock, f"STAGE 1  using your data set {data}")
        kw = dict(endpoint_url=info.aws_url, region_name=info.region,
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        s3 = boto3.client("s3", **kw)
        sqs = boto3.client("sqs", **kw)
        sm = boto3.client("sagemaker", endpoint_url=info.sagemaker_url, region_name=info.region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        count = upload_dataset(s3, info.bucket, Path(data), dataset)
        say(clock, f"  uploaded {count} images to s3://{info.bucket}/datasets/{dataset}/ and the _READY marker;"
                   " from here on, events drive everything")
        clock.stage_done("write + upload data")

        prefix = os.environ.get("BREEDLINE_NAME_PREFIX", "breedline")
        endpoint_name = os.environ.get("BREEDLINE_ENDPOINT_NAME", "breedline-classifier")
        watcher = Watcher(sm, clock, prefix, endpoint_name, info.api_url)
        deadline = time.monotonic() + timeout
        upload_done = time.monotonic()
        alerts_seen = 0
        ok = False
        while time.monotonic() < deadline:
            state = watcher.poll()
            for alert in drain_alerts(sqs, info.alert_queue_url):
                say(clock, f"  ALERT (SNS): {alert['subject']}: {alert['message'][:400]}")
                alerts_seen += 1
            if alerts_seen and watcher.tuning_name is None and time.monotonic() - upload_done > 20:
                say(clock, "  the app rejected the data set (see the alert); nothing was started")
                break
            endpoint = state["endpoint"]
            if endpoint is not None and endpoint["EndpointStatus"] == "InService":
                ok = True
                break
            if endpoint is not None and endpoint["EndpointStatus"] == "Failed":
                say(clock, f"  endpoint failed: {endpoint.get('FailureReason')}")
                break
            if child.poll() is not None:
                say(clock, "  the local runtime died; see .breedline/logs/runtime.log")
                break
            if _pipeline_failed(sm, watcher):
                break
            training = ((state["app"] or {}).get("jobs") or {}).get("training") or {}
            if training.get("name") == watcher.final_name and str(training.get("reason", "")).startswith(
                    "not deployed"):
                say(clock, "  the quality gate kept the model out; nothing to predict with")
                break
            time.sleep(1.0)
        else:
            say(clock, f"  timed out after {timeout:.0f} s")
        if not ok:
            if watcher.tuning_name:  # still show what was trained and why it stopped there
                print_report(sm, s3, watcher, state_dir, clock)
            say(clock, f"the pipeline did not deploy; logs: {state_dir / 'logs'}, jobs: {state_dir / 'jobs'}")
            return 1
        clock.stage_done("deployment (endpoint InService)")

        say(clock, f"STAGE 5  predictions through POST {info.api_url}/predict (held-out test images)")
        correct = 0
        picked = pick_test_images(Path(data), predictions)
        for path, true_label in picked:
            answer = requests.post(f"{info.api_url}/predict", data=path.read_bytes(),
                                   headers={"Content-Type": CONTENT_TYPES[path.suffix.lower()]}, timeout=60)
            body = answer.json()
            if answer.status_code == 200:
                mark = "ok" if body["label"] == true_label else "WRONG"
                correct += body["label"] == true_label
                say(clock, f"  {path.name:<22} true={true_label:<6} predicted={body['label']:<6} "
                           f"p={body['probability']:.3f}  {mark}")
            else:
                say(clock, f"  {path.name:<22} HTTP {answer.status_code}: {body}")
        say(clock, f"  {correct}/{len(picked)} correct")
        clock.stage_done("predictions")

        print_report(sm, s3, watcher, state_dir, clock)
        print("\nWall time by stage:")
        for name, seconds in clock.stages:
            print(f"  {name:<36} {seconds:7.1f} s")
        print(f"  {'total':<36} {time.monotonic() - clock.start:7.1f} s")
        print(f"\nEverything this run left behind is under {state_dir}/ "
              "(runtime.json, sagemaker.json, jobs/, endpoints/, logs/app.log, report/).")
        if keep_running:
            print(f"The runtime keeps running (API {info.api_url}); "
                  "try `python -m breedline status` or `predict IMAGE`. Ctrl-C stops it.")
            child.wait()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the runtime and every job and model server ...", flush=True)
        return 130
    finally:
        stop_runtime(child)


def _pipeline_failed(sm: Any, watcher: Watcher) -> bool:
    """Stop waiting once the app cannot deploy anything any more."""
    if watcher.tuning_name:
        t = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=watcher.tuning_name)
        if t["HyperParameterTuningJobStatus"] in ("Failed", "Stopped"):
            say(watcher.clock, f"  tuning ended {t['HyperParameterTuningJobStatus']}: {t.get('FailureReason', '')}")
            return True
    if watcher.final_name:
        j = sm.describe_training_job(TrainingJobName=watcher.final_name)
        if j["TrainingJobStatus"] in ("Failed", "Stopped"):
            return True
    return False


def print_report(sm: Any, s3: Any, watcher: Watcher, state_dir: Path, clock: Clock) -> None:
    from breedline import report

    print("\n" + "=" * 100)
    print("REPORT")
    if watcher.tuning_name:
        job, rows = report.tuning_trials(sm, watcher.tuning_name)
        objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        print(f"\nTuning job {watcher.tuning_name} ({job['HyperParameterTuningJobConfig']['Strategy']}, "
              f"objective: {objective['Type']} {objective['MetricName']}), trials best first:")
        print(report.format_trials(rows, objective["MetricName"]))
    if watcher.final_name:
        print(f"\nFinal training job {watcher.final_name}:")
        print(report.format_job(report.job_report(sm, s3, watcher.final_name, state_dir / "report")))
    print("=" * 100)
