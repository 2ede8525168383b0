"""What a training or tuning job did: metrics, loss curve, profiler summary, rule results.

Why it reads only through boto3 (DescribeTrainingJob, S3): the same report
works on a local run and on a real account. The loss curve comes from the
Debugger tensors (``CrossEntropyLoss_output_0`` in TRAIN and EVAL mode) read
with ``smdebug.trials``, as the seed's notebook plotted them.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breedline.local.s3_transfers import download_prefix, split_s3_uri

LOSS_TENSOR = "CrossEntropyLoss_output_0"


@dataclass
class TrialRow:
    name: str
    status: str
    objective: float | None
    hyperparameters: dict[str, str]
    seconds: float | None


@dataclass
class JobReport:
    """Everything ``report JOB`` prints, and where each artifact lies."""

    name: str
    status: str
    failure_reason: str | None
    metrics: dict[str, float]
    hyperparameters: dict[str, str]
    seconds: float | None
    artifacts: dict[str, str] = field(default_factory=dict)
    loss_curve: Path | None = None
    loss_points: dict[str, int] = field(default_factory=dict)
    profiler: dict[str, Any] | None = None
    rules: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tuning_trials(sm: Any, tuning_name: str) -> tuple[dict, list[TrialRow]]:
    """The tuning job and its trials, best objective first (failed trials last)."""
    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_name)
    summaries: list[dict] = []
    kwargs: dict[str, Any] = {"HyperParameterTuningJobName": tuning_name, "MaxResults": 100}
    while True:
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        summaries += page["TrainingJobSummaries"]
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    minimize = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Minimize"
    rows = []
    for s in summaries:
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric")
        seconds = None
        if s.get("TrainingStartTime") and s.get("TrainingEndTime"):
            seconds = (s["TrainingEndTime"] - s["TrainingStartTime"]).total_seconds()
        rows.append(TrialRow(s["TrainingJobName"], s["TrainingJobStatus"], metric["Value"] if metric else None,
                             dict(s.get("TunedHyperParameters", {})), seconds))
    rows.sort(key=lambda r: (r.objective is None, (r.objective or 0.0) * (1 if minimize else -1)))
    return job, rows


def _download(s3: Any, uri: str, target: Path) -> Path | None:
    bucket, key = split_s3_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(bucket, key, str(target))
    except Exception:
        return None
    return target


def plot_loss(debug_dir: Path, png: Path, title: str) -> dict[str, int]:
    """Plot train and valid CrossEntropyLoss from Debugger tensors; return the points per mode."""
    import os

    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # keep smdebug's INFO lines out of the report
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from smdebug.core.modes import ModeKeys
    from smdebug.trials import create_trial

    trial = create_trial(str(debug_dir))
    names = trial.tensor_names(regex="CrossEntropyLoss")
    if not names:
        raise ValueError(f"no CrossEntropyLoss tensor in {debug_dir}")
    tensor = trial.tensor(names[0])
    fig, ax = plt.subplots(figsize=(7, 4))
    points: dict[str, int] = {}
    for mode, label in ((ModeKeys.TRAIN, "train"), (ModeKeys.EVAL, "valid")):
        steps = tensor.steps(mode=mode)
        values = [float(tensor.value(step, mode=mode)) for step in steps]
        points[label] = len(steps)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=f"{label} CrossEntropyLoss")
    ax.set_xlabel("step (per mode)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return points


def job_report(sm: Any, s3: Any, name: str, out_dir: Path) -> JobReport:
    """Collect metrics, artifacts, loss curve and profiler summary of one training job."""
    job = sm.describe_training_job(TrainingJobName=name)
    seconds = None
    if job.get("TrainingStartTime") and job.get("TrainingEndTime"):
        seconds = (job["TrainingEndTime"] - job["TrainingStartTime"]).total_seconds()
    report = JobReport(
        name=name,
        status=job["TrainingJobStatus"],
        failure_reason=job.get("FailureReason"),
        metrics={m["MetricName"]: float(m["Value"]) for m in job.get("FinalMetricDataList", [])},
        hyperparameters={k: v for k, v in job.get("HyperParameters", {}).items() if not k.startswith("sagemaker_")},
        seconds=seconds,
        rules=[{"rule": r.get("RuleConfigurationName", ""), "status": r.get("RuleEvaluationStatus", "")}
               for r in job.get("DebugRuleEvaluationStatuses", []) + job.get("ProfilerRuleEvaluationStatuses", [])],
    )
    out = out_dir / name
    model = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        report.artifacts["model"] = model
    output_uri = job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output/output.tar.gz"
    report.artifacts["output data"] = output_uri
    debug = job.get("DebugHookConfig")
    if debug:
        debug_uri = debug["S3OutputPath"].rstrip("/") + f"/{name}/debug-output"
        report.artifacts["debugger tensors"] = debug_uri
        local_debug = out / "debug-output"
        try:
            count = download_prefix(s3, debug_uri, local_debug)
            if count:
                report.loss_points = plot_loss(local_debug, out / "loss.png", f"{name}: CrossEntropyLoss")
                report.loss_curve = out / "loss.png"
            else:
                report.notes.append(f"no Debugger tensors under {debug_uri}")
        except Exception as exc:
            report.notes.append(f"loss curve unavailable: {exc}")
    # The script's own profiler summary travels in output.tar.gz (SM_OUTPUT_DATA_DIR/profiler).
    archive = _download(s3, output_uri, out / "output.tar.gz")
    if archive is not None:
        with tarfile.open(archive) as tar:
            tar.extractall(out / "output", filter="data")
        summary = out / "output" / "profiler" / "summary.json"
        if summary.is_file():
            report.profiler = json.loads(summary.read_text())
            report.artifacts["profiler summary"] = str(summary)
            trace = out / "output" / "profiler" / "trace.json"
            if trace.is_file():
                report.artifacts["profiler trace (chrome://tracing)"] = str(trace)
    if job.get("ProfilerConfig", {}).get("S3OutputPath"):
        report.artifacts["profiler output"] = job["ProfilerConfig"]["S3OutputPath"].rstrip("/") + \
            f"/{name}/profiler-output"
    if job.get("CheckpointConfig"):
        report.artifacts["checkpoints"] = job["CheckpointConfig"]["S3Uri"]
    if report.loss_curve:
        report.artifacts["loss curve"] = str(report.loss_curve)
    return report


def format_trials(rows: list[TrialRow], metric: str) -> str:
    if not rows:
        return "  (no trials)"
    names = sorted({k for r in rows for k in r.hyperparameters})
    header = ["#", "trial job", "status", metric] + names + ["seconds"]
    lines = [header]
    for i, r in enumerate(rows, 1):
        lines.append([str(i), r.name, r.status, "-" if r.objective is None else f"{r.objective:.4f}"]
                     + [r.hyperparameters.get(n, "").strip('"') for n in names]
                     + ["-" if r.seconds is None else f"{r.seconds:.0f}"])
    widths = [max(len(row[c]) for row in lines) for c in range(len(header))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines)


def format_job(report: JobReport) -> str:
    lines = [f"  job        {report.name}  ({report.status}"
             + (f", {report.seconds:.0f} s)" if report.seconds else ")")]
    if report.failure_reason:
        lines.append(f"  failure    {report.failure_reason}")
    if report.hyperparameters:
        lines.append("  hyperparameters  " + ", ".join(f"{k}={v.strip(chr(34))}"
                                                       for k, v in sorted(report.hyperparameters.items())))
    if report.metrics:
        lines.append("  metrics    " + ", ".join(f"{k}={v:.4f}" for k, v in report.metrics.items()))
    if report.loss_curve:
        lines.append(f"  loss curve {report.loss_curve}  (train points: {report.loss_points.get('train', 0)}, "
                     f"valid points: {report.loss_points.get('valid', 0)})")
    if report.profiler:
        p = report.profiler
        lines.append(f"  profiler   {p.get('steps')} steps, mean step {p.get('step_time_mean_s', 0):.3f} s, "
                     f"data loading {100 * p.get('data_loading_share', 0):.1f}% of step time")
        for op in p.get("top_operators", [])[:5]:
            lines.append(f"             {op['name']:<32} {op.get('self_cpu_time_ms', 0):9.1f} ms self CPU "
                         f"({op.get('calls')} calls)")
    if report.rules:
        lines.append("  Debugger rules  " + ", ".join(f"{r['rule']}: {r['status']}" for r in report.rules))
    else:
        lines.append("  Debugger rules  none evaluated (the local runtime does not run rule containers)")
    for note in report.notes:
        lines.append(f"  note       {note}")
    lines.append("  artifacts")
    for what, where in report.artifacts.items():
        lines.append(f"    {what:<34} {where}")
    return "\n".join(lines)
