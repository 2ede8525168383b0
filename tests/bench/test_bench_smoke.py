"""Keep the benchmark suite from rotting: ``python -m bench --quick`` must run every section.

Benchmarks print figures and are never pass/fail on speed; this test only
checks that each section still runs against the current code and reports the
rows it promises, and that the parts that interpret results are right.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.core import Row, Stats
from bench.demo_bench import parse_jobs, parse_stages

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    assert "This section failed" not in report
    for heading in ("## 1. Inference", "## 2. Predict route", "## 3. Training input pipeline",
                    "## 4. Training step", "## 5. Local pipeline", "## Machine and versions"):
        assert heading in report
    # Rows that carry the targets, each with a measured figure and a verdict.
    for case in ("top-1 agreement as shipped", "POST /predict handler", "cold import of chalice_app/app.py",
                 "whole 5-epoch job"):
        line = next((ln for ln in report.splitlines() if case in ln), None)
        assert line is not None, case
        assert re.search(r"\b(NOT )?met\b", line), line
    assert "status 200" in report  # the stubbed predict request really succeeded


def test_speedup_direction() -> None:
    fast, slow = Stats.of([1.0, 1.0]), Stats.of([3.0, 3.0])
    assert Row("x", "latency", fast, "s", baseline=slow).speedup == 3.0
    assert Row("x", "rate", slow, "img/s", baseline=fast, higher_is_better=True).speedup == 3.0
    assert Stats.of(range(100)).p99 == 98


def test_demo_output_parsing() -> None:
    text = "\n".join([
        "[  10.5s]   trial breedline-x-001: InProgress / Starting (batch_size=32)",
        "[  50.5s]   trial breedline-x-001: Completed / Completed",
        "[  60.0s]   final job breedline-f: InProgress / Training",
        "",
        "Wall time by stage:",
        "  runtime start                           3.2 s",
        "  total                                  99.0 s",
        "",
    ])
    assert parse_stages(text) == [("runtime start", 3.2), ("total", 99.0)]
    jobs = parse_jobs(text)
    assert jobs["breedline-x-001"]["end"] == 50.5 and jobs["breedline-x-001"]["status"] == "Completed"
    assert jobs["breedline-f"]["end"] is None
