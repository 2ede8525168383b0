"""``--profile_steps N``: torch.profiler over the first N training steps, cheap timings over all of them.

Why in the job: SageMaker's own profiler needs the Debugger service (closed to
new accounts, discontinued in 2027); this works on every account and locally,
with nothing but torch, numpy and psutil. Under ``SM_OUTPUT_DATA_DIR`` it writes:

- ``profiler/summary.json``: the profiled steps' mean step and data-loading
  times, the data-loading share and the top 15 operators (as before), plus every
  training step's data and compute time, the profiled steps' split into data
  loading, forward, backward and optimizer, the resource samples of
  :mod:`resource_sampler` and the findings of :mod:`profiler_findings`;
- ``profiler/profiler-report.html`` (:mod:`profiler_report`) and ``profiler/trace.json``
  (the Chrome trace);
- ``tensorboard/``: the same trace for TensorBoard's profiler plugin
  (``torch.profiler.tensorboard_trace_handler``) and scalar event files (the
  metric lines, the step times, CPU/GPU use), so ``tensorboard --logdir`` works
  on a downloaded job (the step times are written between epochs, never inside a step). Without the ``tensorboard`` package the scalars are
  skipped with one log line; training never fails for them.

The split comes from the profiler's own events, so ``train.py`` needs no
markers: backward is the autograd engine's ``evaluate_function`` events,
optimizer the ``Optimizer.step#...`` and ``Optimizer.zero_grad#...`` events,
forward what remains of the compute time (model, loss and the loop's own work).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

import profiler_findings
import profiler_report
from contract import PROFILER_REPORT_FILE
from resource_sampler import ResourceSampler

TENSORBOARD_DIR = "tensorboard"
#: The trace's worker name: TensorBoard's profiler plugin lists it as the run's worker.
TRACE_WORKER = "train"
BACKWARD_PREFIX = "autograd::engine::evaluate_function"
OPTIMIZER_PREFIXES = ("Optimizer.step#", "Optimizer.zero_grad#")
#: At most this many step-time scalars per epoch and series (each bucket's slowest step): a scalar
#: costs 0.1-0.2 ms with smdebug's protobuf 3.20 (docs/benchmarks.md, section 7).
MAX_STEP_SCALARS = 500

#: The profiler of this process, if any: :func:`log_scalar` writes through its writer.
_active: StepProfiler | None = None


def log_scalar(name: str, value: float, epoch: int | None = None) -> None:
    """A metric line as a TensorBoard scalar (when a profiler with a writer is active) and an epoch marker."""
    if _active is not None:
        _active.scalar(name, value, epoch)


def open_writer(folder: Path) -> Any:
    """A ``SummaryWriter`` on ``folder``, or None (one log line) when ``tensorboard`` cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a tensorboard built for another protobuf
        print(f"tensorboard: no scalar logs ({type(exc).__name__}: {exc})", flush=True)
        return None
    writer = SummaryWriter(log_dir=str(folder))
    atexit.register(writer.close)
    return writer


def time_split(events: Any, compute_s: float, data_s: float, steps: int) -> dict[str, Any]:
    """Data loading, forward, backward and optimizer seconds of the profiled steps, from the profiler's events.

    Only the outermost event of each kind counts, so nested calls are not counted twice.
    """
    def outermost(match: Any) -> float:
        total_us = 0.0
        for event in events:
            if not match(event.name):
                continue
            parent = event.cpu_parent
            while parent is not None and not match(parent.name):
                parent = parent.cpu_parent
            if parent is None:
                total_us += event.time_range.elapsed_us()
        return total_us / 1e6

    backward = outermost(lambda name: name.startswith(BACKWARD_PREFIX))
    optimizer = outermost(lambda name: name.startswith(OPTIMIZER_PREFIXES))
    return {
        "steps": steps,
        "data_s": data_s,
        "forward_s": max(0.0, compute_s - backward - optimizer),
        "backward_s": backward,
        "optimizer_s": optimizer,
        "method": "backward: autograd engine events; optimizer: Optimizer.step/zero_grad events; forward: the "
                  "rest of the compute time (model, loss, the loop's own work); data loading: the loop's timer. "
                  "On a GPU the times are host-side, the step ending in a synchronize.",
    }


def top_operators(prof: Any, cuda: bool, count: int = 15) -> list[dict[str, Any]]:
    """The ``count`` operators with the most self CPU time in the profiled steps."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    rows = []
    for e in events:
        row = {"name": e.key, "calls": int(e.count), "self_cpu_time_ms": e.self_cpu_time_total / 1000.0,
               "cpu_time_total_ms": e.cpu_time_total / 1000.0}
        if cuda:
            row["self_cuda_time_ms"] = getattr(e, "self_device_time_total", 0.0) / 1000.0
        rows.append(row)
    return rows


class StepProfiler:
    """torch.profiler over the first ``steps`` training steps; step timings and resource samples over the run."""

    def __init__(self, steps: int, out_dir: Path, cuda: bool, tensorboard_dir: Path | None = None) -> None:
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        global _active
        self.steps = steps
        self.out_dir = out_dir
        self.cuda = cuda
        self.tensorboard_dir = tensorboard_dir or out_dir.parent / TENSORBOARD_DIR
        self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        self.data_s: list[float] = []
        self.step_s: list[float] = []
        #: The step count at the end of each epoch (from its metric lines), for the step-time chart.
        self.epoch_ends: list[int] = []
        self._last_epoch: int | None = None
        self._scalar_steps = 0
        self.profiled: dict[str, Any] = {}
        self.writer = open_writer(self.tensorboard_dir)
        self.sampler = ResourceSampler(cuda)
        self.sampler.start()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        handler = tensorboard_trace_handler(str(self.tensorboard_dir), worker_name=TRACE_WORKER)
        self.prof = profile(activities=activities, record_shapes=False, on_trace_ready=handler)
        self.prof.__enter__()
        self.profiling = True
        self.done = False
        _active = self

    def record(self, data_seconds: float, step_seconds: float) -> None:
        """One training step's data-loading and compute seconds; ends the profiled window after ``steps``."""
        if self.done:
            return
        self.data_s.append(data_seconds)
        self.step_s.append(step_seconds)
        if self.profiling and len(self.step_s) >= self.steps:
            self._stop_torch_profiler()

    def scalar(self, name: str, value: float, epoch: int | None) -> None:
        """A metric line: a scalar at its epoch (the last epoch for test metrics); a new epoch marks its end."""
        if epoch is not None and epoch != self._last_epoch and not self.done:
            self._last_epoch = epoch
            self.epoch_ends.append(len(self.step_s))
            self._step_scalars()
        if self.writer is not None:
            self.writer.add_scalar(name, value, epoch if epoch is not None else (self._last_epoch or 1))
            self.writer.flush()

    def _step_scalars(self) -> None:
        """The steps' times since the last call as scalars: written between epochs, so no step pays for them."""
        if self.writer is None:
            return
        steps = list(range(self._scalar_steps + 1, len(self.step_s) + 1))
        for tag, values in (("step/compute_ms", self.step_s), ("step/data_loading_ms", self.data_s)):
            xs, ys = profiler_report.downsample(steps, [v * 1000 for v in values[self._scalar_steps:]],
                                                MAX_STEP_SCALARS)
            for step, value in zip(xs, ys):
                self.writer.add_scalar(tag, value, step)
        self._scalar_steps = len(self.step_s)

    def _stop_torch_profiler(self) -> None:
        """Stop torch.profiler (its handler writes the TensorBoard trace) and keep what the summary needs."""
        before = set(self.tensorboard_dir.glob("*.pt.trace.json"))
        self.profiling = False
        self.prof.__exit__(None, None, None)
        n = len(self.step_s)
        self.profiled = {
            "steps": n,
            "top_operators": top_operators(self.prof, self.cuda),
            "split": time_split(self.prof.events(), sum(self.step_s), sum(self.data_s), n),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        written = sorted(set(self.tensorboard_dir.glob("*.pt.trace.json")) - before)
        if written:
            shutil.copyfile(written[-1], self.out_dir / "trace.json")

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds (the report and the findings read nothing else)."""
        import torch

        n = self.profiled.get("steps", 0)
        data, step = self.data_s[:n], self.step_s[:n]
        total = sum(data) + sum(step)
        return {
            "steps": n,
            "step_time_mean_s": float(np.mean(step)) if step else None,
            "data_loading_time_mean_s": float(np.mean(data)) if data else None,
            "data_loading_share": (sum(data) / total) if total else None,
            "top_operators": self.profiled.get("top_operators", []),
            "split": self.profiled.get("split", {}),
            "run": {"steps": len(self.step_s), "step_s": self.step_s, "data_s": self.data_s,
                    "epoch_ends": self.epoch_ends},
            "job": os.environ.get("TRAINING_JOB_NAME"),
            "cuda": self.cuda,
            "gpu_name": torch.cuda.get_device_name() if self.cuda else None,
            "torch_version": torch.__version__,
            "resources": self.sampler.samples.as_dict(),
        }

    def finish(self) -> None:
        """Write summary.json, the HTML report and the resource scalars; the scalar writer stays open."""
        if self.done:
            return
        if self.profiling:
            self._stop_torch_profiler()
        self.done = True
        self.sampler.stop()
        self._step_scalars()
        t0 = time.perf_counter()
        summary = self.summary()
        findings = profiler_findings.evaluate(summary)
        summary["findings"] = profiler_findings.as_dicts(findings)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (self.out_dir / PROFILER_REPORT_FILE).write_text(profiler_report.render(summary, findings), encoding="utf-8")
        self._resource_scalars(summary["resources"])
        triggered = [f.rule for f in findings if f.triggered]
        share = summary["data_loading_share"]
        print(
            f"profiler: {summary['steps']} profiled of {len(self.step_s)} steps, step "
            f"{summary['step_time_mean_s'] or 0:.4f}s, data loading share {share or 0:.1%}, findings triggered: "
            f"{', '.join(triggered) or 'none'} -> {self.out_dir} (report in {time.perf_counter() - t0:.2f}s)",
            flush=True,
        )

    def _resource_scalars(self, res: dict[str, Any]) -> None:
        if self.writer is None:
            return
        series = {"system/cpu_percent": res["cpu_percent"], "system/rss_mb": res["rss_mb"],
                  "gpu/percent": res["gpu_percent"], "gpu/allocated_mb": res["gpu_allocated_mb"]}
        for tag, values in series.items():
            for t, value in zip(res["t_s"], values):
                self.writer.add_scalar(tag, value, int(t * 1000), walltime=None)
        self.writer.flush()
