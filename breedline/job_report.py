"""What a training or tuning job did: metrics, loss plot, profiler summary and report, rule results.

Why it reads only through boto3 (DescribeTrainingJob, S3): the same report
works on a local run and on a real account. The final job's output
(``output.tar.gz``) carries the in-job rule results, the smdebug tensors and
the profiler's folder; ``model.tar.gz`` carries ``model_meta.json`` with the
per-epoch history the loss plot draws (:mod:`breedline.loss_plot`). The rule
table comes from :mod:`breedline.job_rules`. A job without any of these
files still gets a report: each missing part becomes a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import (
    PROFILER_DIR,
    PROFILER_REPORT_FILE,
    RULE_METRIC_NAMES,
    RULES_FILE,
    TERMINAL_STATUSES,
)

from breedline import job_artifacts, job_evaluation, loss_plot
from breedline.job_rules import RuleTable, format_rules, rule_table

#: Where the profiler's TensorBoard trace and scalars lie inside the job's output
#: (``SM_OUTPUT_DATA_DIR/tensorboard``); ``tensorboard --logdir`` reads it after download.
TENSORBOARD_DIR = "tensorboard"


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
    loss_plot: loss_plot.LossPlot | None = None
    profiler: dict[str, Any] | None = None
    #: ``profiler report`` (the HTML file on disk), ``profiler report in S3``, ``tensorboard`` (a folder).
    links: dict[str, str] = field(default_factory=dict)
    rule_table: RuleTable | None = None
    #: ``evaluation.json`` and the pictures drawn from it (None for jobs without one).
    evaluation: job_evaluation.EvaluationReport | None = None
    #: ``model_card.html`` (:mod:`breedline.model_card`): ``path``, ``s3_uri``, ``dataset``, ``version``,
    #: ``class_counts`` and the quality ``gate``'s decision; None until a card is written.
    model_card: dict[str, Any] | None = None
    #: Files per split the job could not read and left out (``model_meta.json``'s ``skipped_images``).
    skipped_images: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def loss_curve(self) -> Path | None:
        """The loss plot's PNG, when one was drawn."""
        return self.loss_plot.png if self.loss_plot else None

    @property
    def rules(self) -> list[dict[str, str]]:
        """The rule table as plain rows (``rule``, ``issue_found``, ``where``, ``source``), for machine readers."""
        if self.rule_table is None:
            return []
        return [{"rule": r.rule, "issue_found": r.issue_found, "where": r.where, "source": self.rule_table.source}
                for r in self.rule_table.rows]

    @property
    def loss_points(self) -> dict[str, int]:
        """How many points each drawn series has (``train``, ``valid``, ``test``, ``train per step``)."""
        return {key: len(x) for key, (x, _) in self.loss_plot.series.items()} if self.loss_plot else {}


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


def _epochs(report: JobReport, meta: dict[str, Any], log: tuple[str, str] | None) -> loss_plot.EpochSeries | None:
    """Per-epoch losses from the model's history, else from the job log's metric lines (older artifacts)."""
    epochs = loss_plot.epochs_from_meta(meta)
    if epochs is None and log is not None:
        epochs = loss_plot.epochs_from_log(*log)
    if epochs is not None and epochs.test_loss is None:
        epochs.test_loss = report.metrics.get("test_loss")
    return epochs


def _plot(report: JobReport, meta: dict[str, Any], log: tuple[str, str] | None, tensors: Path | None,
          out: Path) -> None:
    """The per-epoch loss plot, with the per-step line when the tensors hold enough steps."""
    epochs = _epochs(report, meta, log)
    if epochs is None:
        report.notes.append("loss plot unavailable: no history in model_meta.json and no job log with "
                            "epoch metric lines")
        return
    steps = None
    if tensors is not None:
        try:
            values = loss_plot.train_steps(tensors, job_ended=report.status in TERMINAL_STATUSES)
            per_epoch = loss_plot.steps_per_epoch_from_log(log[0], report.hyperparameters.get("batch_size")) \
                if log else None
            steps = loss_plot.step_series(*values, epochs, per_epoch)
        except Exception as exc:  # noqa: BLE001 - unreadable tensors cost only the faint per-step line
            report.notes.append(f"per-step train loss unavailable: {exc}")
    report.loss_plot = loss_plot.plot_losses(epochs, steps, out / "loss.png", f"{report.name}: loss per epoch")
    report.artifacts["loss plot"] = str(out / "loss.png")


def _profiler(report: JobReport, output: Path, output_uri: str) -> None:
    """The script's profiler summary, its HTML report and the TensorBoard folder, when the output has them."""
    folder = output / PROFILER_DIR
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            report.profiler = json.loads(summary.read_text())
        except ValueError as exc:
            report.notes.append(f"profiler summary unreadable ({summary}): {exc}")
        report.artifacts["profiler summary"] = str(summary)
    if (folder / "trace.json").is_file():
        report.artifacts["profiler trace (chrome://tracing)"] = str(folder / "trace.json")
    html = folder / PROFILER_REPORT_FILE
    if html.is_file():
        report.links["profiler report"] = html.resolve().as_uri()
        report.links["profiler report in S3"] = f"{output_uri} (member {PROFILER_DIR}/{PROFILER_REPORT_FILE})"
    if (output / TENSORBOARD_DIR).is_dir():
        report.links["tensorboard"] = f"tensorboard --logdir {(output / TENSORBOARD_DIR).resolve()}"


def _evaluation(report: JobReport, job: dict[str, Any], s3: Any, members: dict[str, dict[str, Any]],
                model: str | None, output: Path | None, out: Path) -> None:
    """``evaluation.json`` and its pictures; a job without it gets one note."""
    evaluation = job_evaluation.read_evaluation(members, model, output, report.notes)
    if evaluation is None:
        return
    try:
        job_evaluation.draw(evaluation, s3, job, out)
    except Exception as exc:  # noqa: BLE001 - a malformed file costs the pictures, not the report
        evaluation.notes.append(f"pictures from {job_evaluation.EVALUATION_FILE} not drawn: {exc}")
    report.notes += evaluation.notes
    report.evaluation = evaluation


def _rules(report: JobReport, job: dict[str, Any], output: Path | None, output_uri: str) -> None:
    """The rule table from ``rules.json`` (in_job), the service's statuses or the ``rule_*`` metrics."""
    data = None
    path = output / RULES_FILE if output is not None else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            report.notes.append(f"{RULES_FILE} unreadable ({path}): {exc}")
        report.artifacts["rule results"] = str(path)
    report.rule_table = rule_table(data, output_uri, report.metrics, job)


def job_report(sm: Any, s3: Any, name: str, out_dir: Path, state_dir: Path | None = None) -> JobReport:
    """Collect metrics, artifacts, loss plot, profiler summary and rule results of one training job.

    ``state_dir`` is the local runtime's folder: the job's stdout there is the
    loss plot's fallback source when ``model_meta.json`` has no history.
    """
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
    )
    out = out_dir / name
    model = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        report.artifacts["model"] = model
    output_uri = job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output/output.tar.gz"
    report.artifacts["output data"] = output_uri
    output = job_artifacts.extract_output(s3, output_uri, out, report.notes)
    if output is not None:
        _profiler(report, output, output_uri)
    tensors = job_artifacts.tensors_dir(s3, job, output, out, report.notes, report.artifacts)
    members = job_artifacts.model_members(s3, model, out, ("model_meta.json", job_evaluation.EVALUATION_FILE),
                                          report.notes)
    _plot(report, members.get("model_meta.json", {}), job_artifacts.job_log(state_dir, name), tensors, out)
    skipped = members.get("model_meta.json", {}).get("skipped_images") or {}
    report.skipped_images = {str(k): int(v) for k, v in skipped.items() if isinstance(v, int) and v > 0}
    _evaluation(report, job, s3, members, model, output, out)
    _rules(report, job, output, output_uri)
    if job.get("ProfilerConfig", {}).get("S3OutputPath"):
        report.artifacts["profiler output"] = job["ProfilerConfig"]["S3OutputPath"].rstrip("/") + \
            f"/{name}/profiler-output"
    if job.get("CheckpointConfig"):
        report.artifacts["checkpoints"] = job["CheckpointConfig"]["S3Uri"]
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


def format_loss_plot(plot: loss_plot.LossPlot) -> list[str]:
    """Where the plot is, what it shows and where its numbers come from."""
    e = plot.epochs
    shown = f"{len(e.epochs)} epochs of train and valid loss"
    if "test" in plot.series:
        shown += f", test loss at epoch {e.test_epoch}"
    if plot.steps is not None:
        shown += f", {len(plot.steps.steps)} train steps (faint)"
    origin = f" ({e.origin})" if e.origin else ""
    return [f"  loss plot  {plot.png}", f"             {shown}; per-epoch values from {e.source}{origin}"]


def format_job(report: JobReport) -> str:
    """The report of one training job, as ``report JOB`` and the demo print it."""
    lines = [f"  job        {report.name}  ({report.status}"
             + (f", {report.seconds:.0f} s)" if report.seconds else ")")]
    if report.failure_reason:
        lines.append(f"  failure    {report.failure_reason}")
    if report.hyperparameters:
        lines.append("  hyperparameters  " + ", ".join(f"{k}={v.strip(chr(34))}"
                                                       for k, v in sorted(report.hyperparameters.items())))
    if report.metrics:
        lines.append("  metrics    " + ", ".join(f"{k}={v:.4f}" for k, v in report.metrics.items()
                                                   if k not in RULE_METRIC_NAMES))
    if report.loss_plot:
        lines += format_loss_plot(report.loss_plot)
    lines += job_evaluation.format_evaluation(report.evaluation)
    if report.profiler:
        p = report.profiler
        lines.append(f"  profiler   {p.get('steps')} steps, mean step {p.get('step_time_mean_s', 0):.3f} s, "
                     f"data loading {100 * p.get('data_loading_share', 0):.1f}% of step time")
        for op in p.get("top_operators", [])[:5]:
            lines.append(f"             {op.get('name', '?'):<32} {op.get('self_cpu_time_ms', 0):9.1f} ms self CPU "
                         f"({op.get('calls')} calls)")
    for what in ("profiler report", "profiler report in S3", "tensorboard"):
        if what in report.links:
            lines.append(f"  {what:<22} {report.links[what]}")
    lines += format_rules(report.rule_table)
    if report.model_card:
        card = report.model_card
        lines.append(f"  model card  {card['path']}")
        if card["s3_uri"]:
            lines.append(f"              in S3: {card['s3_uri']}")
        lines.append(f"  quality gate  {card['gate']['decision']}: {card['gate']['reason']}")
    for note in report.notes:
        lines.append(f"  note       {note}")
    lines.append("  artifacts")
    for what, where in report.artifacts.items():
        lines.append(f"    {what:<34} {where}")
    return "\n".join(lines)
