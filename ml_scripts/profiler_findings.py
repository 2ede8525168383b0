"""ProfilerReport-style findings, computed from our own measurements (``profiler/summary.json``).

Why our own: SageMaker's ``ProfilerReport`` rule needs the Debugger service
(closed to new accounts since 2026-07-30). These five checks follow its rules
of the same names, on what :mod:`profiling` and :mod:`resource_sampler`
measured inside the job, so they work on every account and on the local runtime.

Each finding says its threshold, whether it triggered and the numbers it
looked at. A GPU check on a CPU job says "no GPU" rather than triggering, and
one whose input was not measured (GPU utilisation without pynvml) says so.
Pure functions of a summary dict: the tests feed them synthetic measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TRIGGERED = "triggered"
OK = "ok"
NO_GPU = "no GPU"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Thresholds:
    """The defaults follow SageMaker's ProfilerReport rules (docs/ml.md, Profiler)."""

    #: LowGPUUtilization: the 95th percentile of GPU utilisation under this (%).
    gpu_utilization_p95: float = 70.0
    #: CPUBottleneck / Dataloader: data loading over this share of step time (data + compute).
    data_loading_share: float = 0.3
    #: StepOutlier: a step longer than this multiple of the median step.
    step_outlier_factor: float = 3.0
    #: BatchSize: GPU utilisation p95 and GPU memory p95 (share of the device) both under these.
    batch_size_gpu_p95: float = 70.0
    batch_size_memory_p95: float = 0.7
    #: GPUMemoryIncrease: allocated memory grows by more than this share of the device's memory.
    gpu_memory_increase: float = 0.05


@dataclass
class Finding:
    rule: str
    description: str
    threshold: str
    status: str
    numbers: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    @property
    def triggered(self) -> bool:
        return self.status == TRIGGERED


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def low_gpu_utilization(summary: dict[str, Any], th: Thresholds) -> Finding:
    res = summary.get("resources") or {}
    finding = Finding("LowGPUUtilization", "GPU utilisation stays low: the GPU waits for work",
                      f"p95 of GPU utilisation < {th.gpu_utilization_p95:g}%", OK)
    if not summary.get("cuda"):
        finding.status = NO_GPU
    elif not res.get("gpu_percent"):
        finding.status, finding.numbers = NOT_MEASURED, {"why": res.get("gpu_percent_note") or "no samples"}
    else:
        p95 = _p95(res["gpu_percent"])
        finding.numbers = {"gpu_percent_p95": round(p95, 1), "samples": len(res["gpu_percent"])}
        if p95 < th.gpu_utilization_p95:
            finding.status = TRIGGERED
            finding.advice = "feed the GPU faster (more loader workers, bigger batches) or use a smaller instance"
    return finding


def cpu_bottleneck(summary: dict[str, Any], th: Thresholds) -> Finding:
    run = summary.get("run") or {}
    data, compute = float(sum(run.get("data_s") or [])), float(sum(run.get("step_s") or []))
    finding = Finding("CPUBottleneck", "Dataloader: the step waits for its batch",
                      f"data loading > {th.data_loading_share:.0%} of step time", OK)
    if data + compute <= 0:
        finding.status, finding.numbers = NOT_MEASURED, {"why": "no steps recorded"}
        return finding
    share = data / (data + compute)
    finding.numbers = {"data_loading_share": round(share, 4), "data_loading_s": round(data, 4),
                       "compute_s": round(compute, 4), "steps": len(run.get("step_s") or [])}
    if share > th.data_loading_share:
        finding.status = TRIGGERED
        finding.advice = "decode less per step (the decoded-once cache), or add loader workers (--num_workers)"
    return finding


def step_outlier(summary: dict[str, Any], th: Thresholds) -> Finding:
    """Steps over a multiple of the median; the first step and the profiled window are left out.

    Why left out: the first step pays one-time costs (allocations, lazy init)
    and steps under torch.profiler are slowed by the profiler itself, so both
    would report the measurement, not the training. With no other steps, all count.
    """
    run = summary.get("run") or {}
    totals = [d + s for d, s in zip(run.get("data_s") or [], run.get("step_s") or [])]
    skip = max(1, int(summary.get("steps") or 0))
    considered = list(enumerate(totals))[skip:] or list(enumerate(totals))
    finding = Finding("StepOutlier", "some steps take far longer than the median step",
                      f"step > {th.step_outlier_factor:g} x median", OK)
    if not considered:
        finding.status, finding.numbers = NOT_MEASURED, {"why": "no steps recorded"}
        return finding
    median = float(np.median([t for _, t in considered]))
    outliers = [i for i, t in considered if t > th.step_outlier_factor * median]
    finding.numbers = {"median_step_s": round(median, 5), "max_step_s": round(max(t for _, t in considered), 5),
                       "outliers": len(outliers), "outlier_steps": outliers[:20],
                       "steps_considered": len(considered)}
    if outliers:
        finding.status = TRIGGERED
        finding.advice = "look for periodic work in the loop (checkpoints, evaluation, garbage collection)"
    return finding


def batch_size(summary: dict[str, Any], th: Thresholds) -> Finding:
    res = summary.get("resources") or {}
    finding = Finding("BatchSize", "memory headroom and low utilisation: a bigger batch would fit",
                      f"GPU p95 < {th.batch_size_gpu_p95:g}% and GPU memory p95 < {th.batch_size_memory_p95:.0%}", OK)
    if not summary.get("cuda"):
        finding.status = NO_GPU
        return finding
    total, reserved = res.get("gpu_total_mb"), res.get("gpu_reserved_mb") or []
    if not res.get("gpu_percent") or not total or not reserved:
        finding.status, finding.numbers = NOT_MEASURED, {"why": res.get("gpu_percent_note") or "no samples"}
        return finding
    util, memory = _p95(res["gpu_percent"]), _p95(reserved) / total
    finding.numbers = {"gpu_percent_p95": round(util, 1), "gpu_memory_p95_share": round(memory, 3)}
    if util < th.batch_size_gpu_p95 and memory < th.batch_size_memory_p95:
        finding.status = TRIGGERED
        finding.advice = "raise --batch_size (and the learning rate with it), or pick a smaller instance"
    return finding


def gpu_memory_increase(summary: dict[str, Any], th: Thresholds) -> Finding:
    """Mean allocated memory of the last tenth of the samples against the first tenth after warm-up."""
    res = summary.get("resources") or {}
    finding = Finding("GPUMemoryIncrease", "GPU memory keeps growing during training (a leak, or growing tensors)",
                      f"allocated memory grows > {th.gpu_memory_increase:.0%} of the GPU's memory", OK)
    if not summary.get("cuda"):
        finding.status = NO_GPU
        return finding
    allocated, total = res.get("gpu_allocated_mb") or [], res.get("gpu_total_mb")
    if len(allocated) < 4 or not total:
        finding.status, finding.numbers = NOT_MEASURED, {"why": f"{len(allocated)} memory samples"}
        return finding
    window = max(1, len(allocated) // 10)
    first = float(np.mean(allocated[window:2 * window]))  # the first window is warm-up: the model moves in
    last = float(np.mean(allocated[-window:]))
    increase = (last - first) / total
    finding.numbers = {"allocated_first_mb": round(first, 1), "allocated_last_mb": round(last, 1),
                       "gpu_total_mb": round(total, 1), "increase_share": round(increase, 4)}
    if increase > th.gpu_memory_increase:
        finding.status = TRIGGERED
        finding.advice = "look for tensors kept across steps (losses stored without .item(), growing lists)"
    return finding


RULES = (low_gpu_utilization, cpu_bottleneck, step_outlier, batch_size, gpu_memory_increase)


def evaluate(summary: dict[str, Any], thresholds: Thresholds | None = None) -> list[Finding]:
    """Every finding of a summary, in the order the report shows them."""
    th = thresholds or Thresholds()
    return [rule(summary, th) for rule in RULES]


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [{**asdict(f), "triggered": f.triggered} for f in findings]
