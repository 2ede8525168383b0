"""Reload a local SageMaker service's record from ``sagemaker.json`` (``python -m breedline up --keep-state``).

Why: the service keeps every resource in memory and writes ``sagemaker.json``
after each change, so a run can be inspected afterwards. Without a reload, a
runtime started again on the same state folder answered ``ListTrainingJobs``
with nothing, and ``status`` and ``report`` had nothing to show once the demo
had ended.

What comes back, and what cannot:

- training and tuning jobs, models, endpoint configs and tags, as Describe*
  returned them; timestamps go back to ``datetime`` by botocore's own output
  shapes (the snapshot writes them as epoch seconds);
- a tuning job's trials (``ListTrainingJobsForHyperParameterTuningJob``): the
  training jobs whose ``TuningJobArn`` names it, with their tuned
  hyperparameters and the objective metric's final value;
- a job that was still running when its runtime died cannot resume: its
  process is gone. It is recorded ``Stopped``, with the reason in
  ``FailureReason``, so nothing waits on it forever;
- endpoints are not restored: their model servers ended with the old runtime,
  and the model data they served lay in that runtime's S3 (moto keeps it in
  memory). The app deploys afresh on the next upload.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from botocore.model import Shape
from contract import IN_PROGRESS, STOPPED, STOPPING, TERMINAL_STATUSES

from .validation import operation

log = logging.getLogger("runtime.restore")

#: The reason a job that was running when its runtime stopped is recorded with.
INTERRUPTED_REASON = "the local runtime stopped while this job ran; a restored job cannot resume"

#: Each collection of the snapshot and the Describe* call whose output shape it keeps.
COLLECTIONS: dict[str, str] = {
    "training_jobs": "DescribeTrainingJob",
    "tuning_jobs": "DescribeHyperParameterTuningJob",
    "models": "DescribeModel",
    "endpoint_configs": "DescribeEndpointConfig",
    "transform_jobs": "DescribeTransformJob",
}


def revive(value: Any, shape: Shape | None) -> Any:
    """``value`` with every number botocore's ``shape`` calls a timestamp turned back into a UTC datetime."""
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if kind == "structure" and isinstance(value, dict):
        return {k: revive(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [revive(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: revive(v, shape.value) for k, v in value.items()}
    return value


class RestoredTuning:
    """Stands in for a finished :class:`.tuning.TuningRun`: answers ``summaries()`` from the restored trials."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name

    def __repr__(self) -> str:
        return f"RestoredTuning({self.name})"

    def stop(self, quiet: bool = False) -> None:
        """Nothing runs: a restored tuning job launches no trial."""

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for."""

    def summaries(self) -> list[dict]:
        """``HyperParameterTrainingJobSummary`` of each restored trial (caller holds the lock)."""
        tuning = self.backend.tuning_jobs[self.name]
        config = tuning["HyperParameterTuningJobConfig"]
        objective = config["HyperParameterTuningJobObjective"]
        tuned_names = {r["Name"] for ranges in config.get("ParameterRanges", {}).values() for r in ranges}
        out = []
        for name, trial in sorted(self.backend.training_jobs.items()):
            if trial.get("TuningJobArn") != tuning["HyperParameterTuningJobArn"]:
                continue
            summary = {
                "TrainingJobName": name,
                "TrainingJobArn": trial["TrainingJobArn"],
                "TuningJobName": self.name,
                "CreationTime": trial["CreationTime"],
                "TrainingJobStatus": trial["TrainingJobStatus"],
                "TunedHyperParameters": {k: v for k, v in trial.get("HyperParameters", {}).items()
                                         if k in tuned_names},
            }
            for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
                if key in trial:
                    summary[key] = trial[key]
            values = [m["Value"] for m in trial.get("FinalMetricDataList", [])
                      if m.get("MetricName") == objective["MetricName"]]
            if values and trial["TrainingJobStatus"] == "Completed":
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": float(values[-1])}
                summary["ObjectiveStatus"] = "Succeeded"
            else:
                summary["ObjectiveStatus"] = "Failed"
            out.append(summary)
        return out


def _interrupt(item: dict, status_key: str, now: dt.datetime) -> bool:
    """Record a job that was running as ``Stopped`` (its process is gone); True when it was running."""
    if item.get(status_key) not in (IN_PROGRESS, STOPPING):
        return False
    item[status_key] = STOPPED
    item["FailureReason"] = INTERRUPTED_REASON
    item["LastModifiedTime"] = now
    if "SecondaryStatus" in item:
        item["SecondaryStatus"] = STOPPED
    return True


def restore_state(backend: Any, snapshot: Path) -> dict[str, int]:
    """Load ``snapshot`` into ``backend`` (before its server starts); return how many of each were restored.

    A missing snapshot restores nothing. A snapshot that is not JSON raises
    ``ValueError`` naming the file: starting empty would silently hide the run.
    """
    if not snapshot.is_file():
        return {}
    try:
        data = json.loads(snapshot.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{snapshot} is not valid JSON ({exc}); move it away to start without it") from exc
    now = dt.datetime.now(dt.UTC)
    counts: dict[str, int] = {}
    with backend.lock:
        for collection, op_name in COLLECTIONS.items():
            shape = operation("sagemaker", op_name).output_shape
            items = {name: revive(item, shape) for name, item in (data.get(collection) or {}).items()}
            getattr(backend, collection).update(items)
            counts[collection] = len(items)
        interrupted = sum(_interrupt(job, "TrainingJobStatus", now) for job in backend.training_jobs.values())
        interrupted += sum(_interrupt(job, "HyperParameterTuningJobStatus", now)
                           for job in backend.tuning_jobs.values())
        interrupted += sum(_interrupt(job, "TransformJobStatus", now) for job in backend.transform_jobs.values())
        for name, job in backend.tuning_jobs.items():
            if job["HyperParameterTuningJobStatus"] in TERMINAL_STATUSES:
                backend.runners.setdefault(name, RestoredTuning(backend, name))
        endpoint_arns = {e.get("EndpointArn") for e in (data.get("endpoints") or {}).values()}
        backend.tags.update({arn: tags for arn, tags in (data.get("tags") or {}).items() if arn not in endpoint_arns})
    counts["interrupted"] = interrupted
    counts["endpoints_dropped"] = len(endpoint_arns - {None})
    log.info("restored the local SageMaker record from %s: %s", snapshot, counts)
    return counts
