"""The profiler report: a real train.py run's outputs, the findings on synthetic measurements, chromium rendering.

The real run is conftest's session ``trained_job`` (one epoch on the digits
slice, ``--profile_steps 2``), so this module adds no training of its own.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest

import contract
import profiler_findings
import profiler_report
import profiling
from headless_browser import render
from ml_jobs import Job

#: 80 train images / batch 16 in conftest's job.
TRAIN_STEPS = 5


def _profiler_dir(job: Job) -> Path:
    return job.output_data_dir / contract.PROFILER_DIR


def test_summary_covers_the_whole_run_and_the_split(trained_job: Job) -> None:
    summary = json.loads((_profiler_dir(trained_job) / "summary.json").read_text())
    assert summary["steps"] == 2  # profiled
    run = summary["run"]
    assert run["steps"] == TRAIN_STEPS and len(run["step_s"]) == len(run["data_s"]) == TRAIN_STEPS
    assert run["epoch_ends"] == [TRAIN_STEPS]
    split = summary["split"]
    assert split["steps"] == 2
    assert split["backward_s"] > 0 and split["optimizer_s"] > 0 and split["forward_s"] > 0
    # The four parts add up to the two profiled steps' measured time.
    parts = split["data_s"] + split["forward_s"] + split["backward_s"] + split["optimizer_s"]
    assert parts == pytest.approx(sum(run["step_s"][:2]) + sum(run["data_s"][:2]), rel=1e-6)
    assert summary["resources"]["t_s"] and summary["resources"]["cpu_percent"]
    assert summary["cuda"] is False
    assert [f["rule"] for f in summary["findings"]] == [
        "LowGPUUtilization", "CPUBottleneck", "StepOutlier", "BatchSize", "GPUMemoryIncrease"]
    gpu_rules = {f["rule"]: f["status"] for f in summary["findings"]}
    assert gpu_rules["LowGPUUtilization"] == gpu_rules["BatchSize"] == gpu_rules["GPUMemoryIncrease"] == "no GPU"


def test_html_report_has_every_section_and_fetches_nothing(trained_job: Job) -> None:
    page = (_profiler_dir(trained_job) / contract.PROFILER_REPORT_FILE).read_text()
    for section_id, title in profiler_report.SECTIONS:
        assert f'<section id="{section_id}">' in page and title in page
    assert "aten::" in page  # the top operators
    assert page.count("<svg") >= 4 and "<polyline" in page
    # Self-contained: nothing is loaded from anywhere (the SVG namespace is a name, not a fetch).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert 'data-rule="CPUBottleneck"' in page


def test_tensorboard_folder_has_the_trace_and_the_scalars(trained_job: Job) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = trained_job.output_data_dir / profiling.TENSORBOARD_DIR
    traces = list(folder.glob(f"{profiling.TRACE_WORKER}.*.pt.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "valid_loss", "test_loss", "step/compute_ms", "step/data_loading_ms",
            "system/cpu_percent"} <= tags
    assert len(events.Scalars("step/compute_ms")) == TRAIN_STEPS
    out = trained_job.result.stdout
    logged = float(re.search(r"epoch=1 train_loss=([0-9.e+-]+)", out).group(1))
    assert events.Scalars("train_loss")[0].value == pytest.approx(logged, rel=1e-5)


def test_the_report_renders_in_chromium(trained_job: Job, tmp_path: Path) -> None:
    page = _profiler_dir(trained_job) / contract.PROFILER_REPORT_FILE
    rendered = render(page, tmp_path / "report.png")
    assert "Profiler report" in rendered.dom and 'id="top-operators"' in rendered.dom
    assert rendered.dom.count("<polyline") >= 3
    assert rendered.ink > 0.02


def test_a_blank_page_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body style='background:#fff'></body></html>")
    with pytest.raises(AssertionError, match="blank"):
        render(page, tmp_path / "blank.png")


# -- findings on synthetic measurements --------------------------------------------------

def synthetic(steps: int = 60, step_s: float = 0.05, data_s: float = 0.005, cuda: bool = False) -> dict:
    """A summary like StepProfiler's: steady steps, a profiled window of 5, optional GPU samples."""
    summary = {"steps": 5, "cuda": cuda,
               "run": {"steps": steps, "step_s": [step_s] * steps, "data_s": [data_s] * steps, "epoch_ends": [steps]},
               "resources": {"t_s": [i * 0.5 for i in range(40)], "cpu_percent": [50.0] * 40, "rss_mb": [900.0] * 40,
                             "gpu_percent": [], "gpu_allocated_mb": [], "gpu_reserved_mb": [], "gpu_total_mb": None,
                             "gpu_percent_note": "no GPU"}}
    if cuda:
        summary["resources"].update(gpu_percent=[95.0] * 40, gpu_allocated_mb=[8000.0] * 40,
                                    gpu_reserved_mb=[30000.0] * 40, gpu_total_mb=40000.0, gpu_percent_note="")
    return summary


def by_rule(summary: dict) -> dict[str, profiler_findings.Finding]:
    return {f.rule: f for f in profiler_findings.evaluate(summary)}


def test_a_healthy_cpu_run_triggers_nothing_and_gpu_rules_say_no_gpu() -> None:
    found = by_rule(synthetic())
    assert not any(f.triggered for f in found.values())
    assert {found[r].status for r in ("LowGPUUtilization", "BatchSize", "GPUMemoryIncrease")} == {"no GPU"}
    assert found["CPUBottleneck"].numbers["data_loading_share"] == pytest.approx(0.005 / 0.055, abs=1e-4)


def test_a_slow_data_loader_triggers_cpu_bottleneck() -> None:
    found = by_rule(synthetic(data_s=0.04))
    assert found["CPUBottleneck"].triggered
    assert found["CPUBottleneck"].numbers["data_loading_share"] == pytest.approx(0.04 / 0.09, abs=1e-4)


def test_an_outlier_step_triggers_step_outlier_but_the_profiled_window_does_not() -> None:
    summary = synthetic()
    summary["run"]["step_s"][2] = 1.0  # inside the profiled window: the profiler's own cost
    assert not by_rule(summary)["StepOutlier"].triggered
    summary["run"]["step_s"][40] = 1.0
    finding = by_rule(summary)["StepOutlier"]
    assert finding.triggered and finding.numbers["outlier_steps"] == [40]


def test_gpu_rules_on_synthetic_gpu_samples() -> None:
    busy = by_rule(synthetic(cuda=True))
    assert not any(busy[r].triggered for r in ("LowGPUUtilization", "BatchSize", "GPUMemoryIncrease"))
    idle = synthetic(cuda=True)
    idle["resources"].update(gpu_percent=[20.0] * 40, gpu_reserved_mb=[4000.0] * 40)
    found = by_rule(idle)
    assert found["LowGPUUtilization"].triggered and found["BatchSize"].triggered
    leaking = synthetic(cuda=True)
    leaking["resources"]["gpu_allocated_mb"] = [2000.0 + 200.0 * i for i in range(40)]
    assert by_rule(leaking)["GPUMemoryIncrease"].triggered
    unmeasured = synthetic(cuda=True)
    unmeasured["resources"].update(gpu_percent=[], gpu_percent_note="pynvml not installed")
    assert by_rule(unmeasured)["LowGPUUtilization"].status == "not measured"


def test_report_renders_gpu_series_and_escapes_operator_names() -> None:
    summary = copy.deepcopy(synthetic(cuda=True))
    summary["top_operators"] = [{"name": "<script>x</script>", "calls": 3, "self_cpu_time_ms": 1.0,
                                 "cpu_time_total_ms": 2.0, "self_cuda_time_ms": 0.5}]
    summary["split"] = {"steps": 5, "data_s": 0.1, "forward_s": 0.2, "backward_s": 0.3, "optimizer_s": 0.05}
    page = profiler_report.render(summary)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "GPU utilisation, %" in page and "self CUDA ms" in page


def test_downsampling_keeps_the_outlier() -> None:
    ys = [1.0] * 10_000
    ys[5_555] = 9.0
    xs, kept = profiler_report.downsample(list(range(10_000)), ys, limit=100)
    assert len(kept) <= 100 and 9.0 in kept and 5_555 in xs


def test_missing_tensorboard_skips_the_scalars_with_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert profiling.open_writer(tmp_path) is None
    assert capsys.readouterr().out.count("tensorboard: no scalar logs") == 1


def test_without_chromium_a_browser_test_skips_locally_and_fails_under_ci(monkeypatch, tmp_path: Path) -> None:
    import headless_browser

    monkeypatch.setattr(headless_browser, "CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.setattr(headless_browser.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        headless_browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium not found"):
        headless_browser.require_chromium()


def test_step_profiler_in_process_keeps_timing_after_the_window_and_marks_resumed_epochs(tmp_path: Path) -> None:
    """A resumed job (epochs 3 and 4): 6 profiled of 12 steps, epoch ends at 6 and 12, test scalar at epoch 4."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    out = tmp_path / "data" / contract.PROFILER_DIR
    profiler = profiling.StepProfiler(6, out, cuda=False)
    try:
        for epoch in (3, 4):
            for _ in range(6):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                profiler.record(0.001, 0.01)
            profiling.log_scalar("train_loss", float(loss.detach()), epoch)
            profiling.log_scalar("valid_loss", float(loss.detach()), epoch)
        profiler.finish()
        profiling.log_scalar("test_loss", 0.5)
    finally:
        profiling._active = None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["run"]["steps"] == 12 and summary["run"]["epoch_ends"] == [6, 12]
    assert summary["split"]["optimizer_s"] > 0 and summary["split"]["backward_s"] > 0
    assert (out / contract.PROFILER_REPORT_FILE).is_file() and (out / "trace.json").is_file()
    events = EventAccumulator(str(tmp_path / "data" / profiling.TENSORBOARD_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [3, 4]
    assert [(e.step, e.value) for e in events.Scalars("test_loss")] == [(4, 0.5)]
    assert len(events.Scalars("step/compute_ms")) == 12
