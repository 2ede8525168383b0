"""``--profile_steps N``: torch.profiler over the first N training steps, plus our own data/compute split.

Writes ``profiler/summary.json`` (steps, mean step time, mean data-loading
time, data-loading share, top 15 operators by self CPU time) and
``profiler/trace.json`` (a Chrome trace) under ``SM_OUTPUT_DATA_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class StepProfiler:
    """torch.profiler over the first N training steps, plus our own data/compute split."""

    def __init__(self, steps: int, out_dir: Path, cuda: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.steps = steps
        self.out_dir = out_dir
        self.data_s: list[float] = []
        self.step_s: list[float] = []
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.prof = profile(activities=activities, record_shapes=False)
        self.prof.__enter__()
        self.done = False

    def record(self, data_seconds: float, step_seconds: float) -> None:
        if self.done:
            return
        self.data_s.append(data_seconds)
        self.step_s.append(step_seconds)
        if len(self.step_s) >= self.steps:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        events = self.prof.key_averages()
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        total = sum(self.data_s) + sum(self.step_s)
        summary = {
            "steps": len(self.step_s),
            "step_time_mean_s": float(np.mean(self.step_s)) if self.step_s else None,
            "data_loading_time_mean_s": float(np.mean(self.data_s)) if self.data_s else None,
            "data_loading_share": (sum(self.data_s) / total) if total else None,
            "top_operators": [
                {
                    "name": e.key,
                    "calls": int(e.count),
                    "self_cpu_time_ms": e.self_cpu_time_total / 1000.0,
                    "cpu_time_total_ms": e.cpu_time_total / 1000.0,
                }
                for e in top
            ],
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self.prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        print(
            f"profiler: {summary['steps']} steps, step {summary['step_time_mean_s']:.4f}s, "
            f"data loading share {summary['data_loading_share']:.1%} -> {self.out_dir}",
            flush=True,
        )
