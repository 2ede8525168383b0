"""What the operator sees while the demo runs: stage clock, job-by-job progress, alerts.

Why apart from :mod:`breedline.demo`: watching is read-only. It sees the
pipeline only through the SageMaker API, the app's ``GET /status`` and the
alert topic's SQS inbox, as an operator would in AWS, and prints every change
once, with the wall time since the demo started.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import requests
from contract import COMPLETED, IN_PROGRESS, TERMINAL_STATUSES


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
        """Print what changed since the last poll; return the endpoint and the app's view."""
        self._poll_tuning_jobs()
        self._poll_training_jobs()
        return {"endpoint": self._poll_endpoint(), "app": self.poll_app()}

    def _poll_tuning_jobs(self) -> None:
        tunings = self.sm.list_hyper_parameter_tuning_jobs(NameContains=self.prefix, SortBy="CreationTime",
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
                if t["HyperParameterTuningJobStatus"] != IN_PROGRESS and "tuning" not in self.stages_done:
                    self.stages_done.add("tuning")
                    self.clock.stage_done("tuning (all trials)")

    def _poll_training_jobs(self) -> None:
        sm = self.sm
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
                if not is_trial and job["TrainingJobStatus"] in TERMINAL_STATUSES:
                    if "training" not in self.stages_done:
                        self.stages_done.add("training")
                        self.clock.stage_done("final training job")
                        if job["TrainingJobStatus"] == COMPLETED:
                            say(self.clock, "STAGE 4  deployment: quality gate, model, endpoint config, endpoint")
            self._print_metrics(job, label)

    def _poll_endpoint(self) -> dict | None:
        endpoint = None
        try:
            endpoint = self.sm.describe_endpoint(EndpointName=self.endpoint)
        except Exception:
            pass
        if endpoint is not None:
            key = (endpoint["EndpointStatus"], endpoint["EndpointConfigName"])
            if self.seen.get(f"endpoint:{self.endpoint}") != key:
                self.seen[f"endpoint:{self.endpoint}"] = key
                say(self.clock, f"  endpoint {self.endpoint}: {endpoint['EndpointStatus']} "
                                f"(config {endpoint['EndpointConfigName']})")
        return endpoint

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


def print_try_it(api_url: str, image: Path | None, keep_running: bool) -> None:
    """The try-it page's URL and the exact curl command for the local API (docs/clients.md)."""
    example = shlex.quote(str(image)) if image else "photo.jpg"
    print("\nTry it with your own photo:")
    print(f"  in a browser:  {api_url}/try")
    print(f"  with curl:  curl -H 'Content-Type: image/jpeg' --data-binary @{example} {api_url}/predict")
    if not keep_running:
        print("  (the runtime stops now; make demo ARGS=--keep-running keeps it up for these)")


def print_wall_times(clock: Clock, state_dir: Path) -> None:
    """The demo's closing lines: seconds per stage, and where the run's files are."""
    print("\nWall time by stage:")
    for name, seconds in clock.stages:
        print(f"  {name:<36} {seconds:7.1f} s")
    print(f"  {'total':<36} {time.monotonic() - clock.start:7.1f} s")
    print(f"\nEverything this run left behind is under {state_dir}/ "
          "(runtime.json, sagemaker.json, jobs/, endpoints/, logs/app.log, report/).")
