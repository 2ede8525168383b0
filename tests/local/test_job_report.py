"""The job report on synthetic artifacts: the per-epoch loss plot, the rule table, the profiler links.

No training runs here: each test writes what a final job leaves behind
(``model.tar.gz`` with ``model_meta.json``, ``output.tar.gz`` with
``rules.json``, smdebug tensors and the profiler folder, the local runtime's
``stdout.log``) into moto's S3 and a state folder, and hands ``job_report``
a DescribeTrainingJob answer. The loss plot's numbers are checked against
the job's metric lines, parsed here independently of the report's parser.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contract import (
    METRIC_LINE_PREFIX,
    PROFILER_DIR,
    PROFILER_REPORT_FILE,
    RULE_NAMES,
    RULES_FILE,
    TENSORS_DIR,
    format_metric,
    rule_metric_name,
)
from local_standins import BUCKET  # type: ignore[import-not-found]

from breedline import job_report

LOSS = "CrossEntropyLoss_output_0"
HISTORY = [
    {"epoch": 1, "train_loss": 2.104567891, "train_accuracy": 0.31, "valid_loss": 1.873456789, "valid_accuracy": 0.42},
    {"epoch": 2, "train_loss": 1.452345678, "train_accuracy": 0.55, "valid_loss": 1.212345678, "valid_accuracy": 0.61},
    {"epoch": 3, "train_loss": 0.981234567, "train_accuracy": 0.70, "valid_loss": 1.301234567, "valid_accuracy": 0.58},
]
TEST_LOSS = 1.234567891
#: 160 train images at batch size 8: 20 steps an epoch, 60 in all; every 2nd step saved (30 points).
TRAIN_IMAGES, BATCH_SIZE, SAVE_EVERY = 160, 8, 2


class FakeSageMaker:
    """DescribeTrainingJob only: it is all ``job_report`` asks SageMaker."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        assert TrainingJobName == self.job["TrainingJobName"]
        return self.job


def job_log(history: list[dict], test_loss: float) -> str:
    """A job's stdout as train.py prints it: the data line, one metric line per value, the test lines."""
    lines = [f"data: 10 classes, train={TRAIN_IMAGES} valid=40 test=40 images; model=x image_size=32 cpus=1"]
    for h in history:
        lines += [format_metric(k, h[k], h["epoch"]) for k in ("train_loss", "train_accuracy", "valid_loss",
                                                               "valid_accuracy")]
    lines += [format_metric("test_loss", test_loss), format_metric("test_accuracy", 0.6)]
    return "\n".join(lines) + "\n"


def metric_lines_per_epoch(log: str) -> dict[str, dict[int, float]]:
    """``epoch=N name=value`` lines read the plain way (the last line of an epoch wins), for comparison."""
    found: dict[str, dict[int, float]] = {}
    for line in log.splitlines():
        line = line.removeprefix(METRIC_LINE_PREFIX + " ")
        words = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if line.startswith("epoch=") and len(words) == 2:
            name = next(k for k in words if k != "epoch")
            found.setdefault(name, {})[int(words["epoch"])] = float(words[name])
    return found


def final_value(log: str, name: str) -> float:
    return float([line for line in log.splitlines() if line.startswith(f"{METRIC_LINE_PREFIX} {name}=")][-1]
                 .split("=")[1])


def write_trial(folder: Path, train_values: list[float], eval_values: list[float]) -> None:
    """An smdebug trial as the hook leaves it: collections, one event file per saved step, the end marker."""
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")
    from smdebug.core.collection_manager import CollectionManager
    from smdebug.core.modes import ModeKeys
    from smdebug.core.writer import FileWriter

    collections = CollectionManager()
    collections.add("losses")
    collections.get("losses").add_tensor_name(LOSS)
    collections.set_num_workers(1)
    collections.export(str(folder), "worker_0_collections.json")
    step = 0
    for mode, values in ((ModeKeys.TRAIN, train_values), (ModeKeys.EVAL, eval_values)):
        for i, value in enumerate(values):
            mode_step = i * SAVE_EVERY if mode == ModeKeys.TRAIN else i
            with FileWriter(trial_dir=str(folder), worker="worker_0", step=step) as writer:
                writer.write_tensor(tdata=np.array(value, dtype=np.float32), tname=LOSS, mode=mode,
                                    mode_step=mode_step)
            step += 1
    (folder / "training_job_end.ts").write_text("")


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> tuple[Path, list[float]]:
    """One smdebug trial for the module (writing and reading smdebug files takes seconds)."""
    folder = tmp_path_factory.mktemp("trial")
    train_values = [2.5 - 0.05 * i for i in range(30)]
    write_trial(folder, train_values, [9.0, 9.5, 9.9])
    return folder, train_values


def tarball(members: dict[str, bytes | Path]) -> bytes:
    """A ``.tar.gz`` of files (bytes) and folders (a Path, added with everything under it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def described(name: str, prefix: str, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    """DescribeTrainingJob's answer for a completed job whose files lie under ``s3://BUCKET/prefix``."""
    return {
        "TrainingJobName": name,
        "TrainingJobStatus": "Completed",
        "HyperParameters": {"batch_size": f'"{BATCH_SIZE}"', "epochs": "3", "sagemaker_program": '"train.py"'},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/{prefix}"},
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/{prefix}/{name}/output/model.tar.gz"},
        "FinalMetricDataList": [{"MetricName": k, "Value": v} for k, v in metrics.items()],
        **extra,
    }


def put_job(s3, name: str, prefix: str, model: dict[str, bytes | Path] | None,
            output: dict[str, bytes | Path] | None) -> None:
    if model is not None:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}/output/model.tar.gz", Body=tarball(model))
    if output is not None:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}/output/output.tar.gz", Body=tarball(output))


def meta(**extra: Any) -> bytes:
    return json.dumps({"class_names": ["a", "b"], "metrics": {"test_loss": TEST_LOSS}, **extra}).encode()


def write_stdout(state: Path, name: str, text: str) -> None:
    logs = state / "jobs" / name / "logs"
    logs.mkdir(parents=True)
    (logs / "stdout.log").write_text(text)


def assert_plot_equals_metric_lines(plot, log: str) -> None:
    lines = metric_lines_per_epoch(log)
    for series, metric in (("train", "train_loss"), ("valid", "valid_loss")):
        xs, ys = plot.series[series]
        assert xs == [float(e) for e in sorted(lines[metric])]
        assert ys == pytest.approx([lines[metric][e] for e in sorted(lines[metric])], abs=1e-6)
    assert plot.series["test"][1] == pytest.approx([final_value(log, "test_loss")], abs=1e-6)


def test_loss_plot_is_per_epoch_equal_to_the_metric_lines_with_a_faint_step_line(moto_stack, tmp_path, trial):
    s3, name, prefix = moto_stack.client("s3"), "job-history", "t-history"
    folder, train_values = trial
    log = job_log(HISTORY, TEST_LOSS)
    put_job(s3, name, prefix, {"model_meta.json": meta(history=HISTORY, best_epoch=2)}, {TENSORS_DIR: folder})
    write_stdout(tmp_path / "state", name, log)
    sm = FakeSageMaker(described(name, prefix, {"test_loss": final_value(log, "test_loss")}))

    report = job_report.job_report(sm, s3, name, tmp_path / "report", state_dir=tmp_path / "state")

    plot = report.loss_plot
    assert plot is not None and plot.png.stat().st_size > 1000
    assert plot.epochs.source == "model_meta.json history"
    assert_plot_equals_metric_lines(plot, log)
    assert plot.series["test"][0] == [2.0]  # the best epoch's weights were tested
    # The per-step line: TRAIN values only (no EVAL point), on the epoch axis at 20 steps an epoch.
    xs, ys = plot.series["train per step"]
    assert ys == pytest.approx(train_values)
    assert xs == pytest.approx([(i * SAVE_EVERY + 1) / (TRAIN_IMAGES / BATCH_SIZE) for i in range(30)])
    assert 0 < min(xs) and max(xs) <= 3
    text = job_report.format_job(report)
    assert "loss plot" in text and "3 epochs of train and valid loss, test loss at epoch 2, 30 train steps" in text


def test_loss_plot_falls_back_to_the_log_and_skips_a_short_step_line(moto_stack, tmp_path):
    s3, name, prefix = moto_stack.client("s3"), "job-old", "t-old"
    folder = tmp_path / "few"
    folder.mkdir()
    write_trial(folder, [2.0, 1.5, 1.2], [1.9])
    # A resumed job prints epoch 2 twice; the later line is the one SageMaker keeps.
    interrupted = "".join(format_metric(k, 9.9, 2) + "\n" for k in ("train_loss", "valid_loss"))
    log = interrupted + job_log(HISTORY, TEST_LOSS)
    put_job(s3, name, prefix, {"model_meta.json": meta()}, {TENSORS_DIR: folder})  # no "history": an older model
    write_stdout(tmp_path / "state", name, log)

    report = job_report.job_report(FakeSageMaker(described(name, prefix, {})), s3, name, tmp_path / "report",
                                   state_dir=tmp_path / "state")

    plot = report.loss_plot
    assert plot is not None and plot.epochs.source == "the job log's metric lines"
    assert plot.epochs.origin == str(tmp_path / "state" / "jobs" / name / "logs" / "stdout.log")
    assert_plot_equals_metric_lines(plot, log)
    assert plot.series["valid"][1][1] == pytest.approx(HISTORY[1]["valid_loss"], abs=1e-6)
    assert plot.series["test"][0] == [2.0]  # lowest valid loss, as train.py picks the weights it tests
    assert "train per step" not in plot.series and plot.steps is None


def test_rule_table_from_rules_json_reads_an_error_rule_and_missing_keys(moto_stack, tmp_path):
    s3, name, prefix = moto_stack.client("s3"), "job-rules", "t-rules"
    rules = {"rules": [
        {"rule": "LossNotDecreasing", "parameters": {"num_steps": 10}, "steps_examined": list(range(40)),
         "issue_found": True, "issue_count": 4,
         "issues": [{"step": s, "message": f"loss rose at {s}"} for s in (12, 18, 24, 30)], "error": None},
        {"rule": "Overfit", "parameters": {}, "steps_examined": list(range(40)), "issue_found": False, "issue_count": 0,
         "issues": [], "error": None},
        {"rule": "VanishingGradient", "error": "no gradients collection in the trial"},
        {"rule": "Overtraining"},
        "garbage",
    ]}
    put_job(s3, name, prefix, None, {RULES_FILE: json.dumps(rules).encode()})
    metrics = {rule_metric_name("LossNotDecreasing"): 1.0, "test_loss": 0.5}

    report = job_report.job_report(FakeSageMaker(described(name, prefix, metrics)), s3, name, tmp_path / "r")

    table = report.rule_table
    assert table is not None and table.source == f"{RULES_FILE} in s3://{BUCKET}/{prefix}/{name}/output/output.tar.gz"
    rows = {r.rule: r for r in table.rows}
    assert rows["LossNotDecreasing"].issue_found == "yes"
    assert rows["LossNotDecreasing"].where == "step 12: loss rose at 12; step 18: loss rose at 18; " \
                                              "step 24: loss rose at 24; (+1 more)"
    assert (rows["Overfit"].issue_found, rows["Overfit"].where) == ("no", "40 steps examined")
    assert (rows["VanishingGradient"].issue_found, rows["VanishingGradient"].where) == \
        ("error", "no gradients collection in the trial")
    assert rows["Overtraining"].issue_found == "unknown" and rows["?"].issue_found == "unknown"
    assert report.rules[0] == {"rule": "LossNotDecreasing", "issue_found": "yes", "where": rows["LossNotDecreasing"].where,
                               "source": table.source}
    text = job_report.format_job(report)
    assert f"Debugger rules  (source: {RULES_FILE} in s3://" in text
    assert "rule_LossNotDecreasing" not in text.split("metrics", 1)[1].split("\n", 1)[0]  # the table shows it
    assert "none evaluated" not in text and "loss plot unavailable" in text  # no history, no log: a note


def test_rule_table_from_the_metrics_when_rules_json_is_unreadable(moto_stack, tmp_path):
    s3, name, prefix = moto_stack.client("s3"), "job-metrics", "t-metrics"
    put_job(s3, name, prefix, None, {RULES_FILE: b"{not json"})
    metrics = {rule_metric_name(r): float(r == "Overfit") for r in RULE_NAMES}

    report = job_report.job_report(FakeSageMaker(described(name, prefix, metrics)), s3, name, tmp_path / "r")

    assert report.rule_table is not None and report.rule_table.source.startswith("rule_* metrics")
    assert [(r.rule, r.issue_found) for r in report.rule_table.rows] == \
        [(r, "yes" if r == "Overfit" else "no") for r in RULE_NAMES]
    assert any(RULES_FILE in note and "unreadable" in note for note in report.notes)


def test_service_mode_reads_rule_statuses_and_tensors_from_debug_hook_config(moto_stack, tmp_path, trial):
    s3, name, prefix = moto_stack.client("s3"), "job-service", "t-service"
    folder, train_values = trial
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "training_job_end.ts":  # under SageMaker the hook never writes it
            s3.upload_file(str(path), BUCKET, f"{prefix}/debug/{name}/debug-output/{path.relative_to(folder)}")
    put_job(s3, name, prefix, {"model_meta.json": meta(history=HISTORY)}, None)
    job = described(name, prefix, {}, DebugHookConfig={"S3OutputPath": f"s3://{BUCKET}/{prefix}/debug"},
                    DebugRuleEvaluationStatuses=[
                        {"RuleConfigurationName": "LossNotDecreasing", "RuleEvaluationStatus": "IssuesFound",
                         "StatusDetails": "loss did not decrease over 10 steps"},
                        {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "NoIssuesFound"},
                        {"RuleConfigurationName": "Overtraining", "RuleEvaluationStatus": "Error",
                         "StatusDetails": "ClientError: no tensors"}])

    report = job_report.job_report(FakeSageMaker(job), s3, name, tmp_path / "r")

    assert report.rule_table is not None and report.rule_table.source.startswith("DebugRuleEvaluationStatuses")
    assert [(r.rule, r.issue_found, r.where) for r in report.rule_table.rows] == [
        ("LossNotDecreasing", "yes", "loss did not decrease over 10 steps"), ("Overfit", "no", "-"),
        ("Overtraining", "error", "ClientError: no tensors")]
    # Without the log the epoch length is estimated from the last saved step (58 + 1 over 3 epochs).
    xs, ys = report.loss_plot.series["train per step"]
    assert ys == pytest.approx(train_values) and max(xs) == pytest.approx(3.0)
    assert report.artifacts["debugger tensors"] == f"s3://{BUCKET}/{prefix}/debug/{name}/debug-output"


def test_report_links_the_html_profiler_report_and_the_tensorboard_folder(moto_stack, tmp_path):
    s3, name, prefix = moto_stack.client("s3"), "job-profiler", "t-profiler"
    board = tmp_path / "board"
    board.mkdir()
    (board / "events.out.tfevents.1.host").write_bytes(b"\x00")
    summary = {"steps": 3, "step_time_mean_s": 0.1, "data_loading_share": 0.02,
               "top_operators": [{"name": "aten::convolution", "self_cpu_time_ms": 5.0, "calls": 3}]}
    put_job(s3, name, prefix, None, {f"{PROFILER_DIR}/summary.json": json.dumps(summary).encode(),
                                     f"{PROFILER_DIR}/{PROFILER_REPORT_FILE}": b"<html><body>report</body></html>",
                                     "tensorboard": board})

    report = job_report.job_report(FakeSageMaker(described(name, prefix, {})), s3, name, tmp_path / "r")

    html = (tmp_path / "r" / name / "output" / PROFILER_DIR / PROFILER_REPORT_FILE).resolve()
    assert report.links["profiler report"] == html.as_uri() and html.read_text().startswith("<html>")
    assert report.links["profiler report in S3"] == \
        f"s3://{BUCKET}/{prefix}/{name}/output/output.tar.gz (member {PROFILER_DIR}/{PROFILER_REPORT_FILE})"
    board_out = (tmp_path / "r" / name / "output" / "tensorboard").resolve()
    assert report.links["tensorboard"] == f"tensorboard --logdir {board_out}"
    text = job_report.format_job(report)
    assert html.as_uri() in text and "tensorboard --logdir" in text and "aten::convolution" in text


def test_a_job_without_any_of_these_files_still_reports(moto_stack, tmp_path):
    s3, name = moto_stack.client("s3"), "job-bare"
    job = described(name, "t-bare", {"valid_loss": 0.4})
    del job["ModelArtifacts"]

    report = job_report.job_report(FakeSageMaker(job), s3, name, tmp_path / "r", state_dir=tmp_path / "nothing")

    text = job_report.format_job(report)
    assert report.loss_plot is None and report.rule_table is None and not report.links
    assert "Debugger rules  none evaluated" in text and "loss plot unavailable" in text
    assert "valid_loss=0.4000" in text


def test_a_running_jobs_trial_costs_only_the_step_line(moto_stack, tmp_path, trial):
    """Without ``training_job_end.ts`` smdebug would wait for a running job: refused at once, nothing written."""
    s3, name, prefix = moto_stack.client("s3"), "job-running", "t-running"
    copy = tmp_path / "copy"
    shutil.copytree(trial[0], copy, ignore=shutil.ignore_patterns("training_job_end.ts"))
    put_job(s3, name, prefix, {"model_meta.json": meta(history=HISTORY)}, {TENSORS_DIR: copy})
    job = described(name, prefix, {}, TrainingJobStatus="InProgress")

    report = job_report.job_report(FakeSageMaker(job), s3, name, tmp_path / "r")

    assert report.loss_plot is not None and report.loss_plot.steps is None
    assert report.loss_plot.series["valid"][1] == pytest.approx([h["valid_loss"] for h in HISTORY])
    assert any("still running" in note for note in report.notes)
    assert not (tmp_path / "r" / name / "output" / TENSORS_DIR / "training_job_end.ts").exists()


def test_the_demos_final_report_reads_the_job_log_and_links_the_html_report(moto_stack, tmp_path, capsys):
    from types import SimpleNamespace

    from breedline.demo import print_report

    s3, name, prefix = moto_stack.client("s3"), "job-demo", "t-demo"
    put_job(s3, name, prefix, {"model_meta.json": meta()},
            {f"{PROFILER_DIR}/{PROFILER_REPORT_FILE}": b"<html><body>report</body></html>"})
    log = job_log(HISTORY, TEST_LOSS)
    write_stdout(tmp_path / "state", name, log)

    print_report(FakeSageMaker(described(name, prefix, {})), s3, SimpleNamespace(tuning_name=None, final_name=name),
                 tmp_path / "state", None)

    printed = capsys.readouterr().out
    html = (tmp_path / "state" / "report" / name / "output" / PROFILER_DIR / PROFILER_REPORT_FILE).resolve()
    assert "Open in a browser or viewer" in printed and f"profiler report  {html.as_uri()}" in printed
    assert "per-epoch values from the job log's metric lines (" in printed and str(tmp_path / "state" / "report" / name) in printed
    # The card of a job without evaluation.json (older jobs): written, uploaded, linked; the report says why it is thin.
    card = tmp_path / "state" / "report" / name / "model_card.html"
    assert f"model card       {card.resolve().as_uri()}" in printed and "no evaluation.json" in printed
    uploaded = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}/output/model_card.html")
    assert uploaded["ContentType"].startswith("text/html") and uploaded["Body"].read() == card.read_bytes()
