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

import pytest

from bench.core import Row, Stats
from bench.demo_bench import parse_jobs, parse_stages

ROOT = Path(__file__).resolve().parents[2]


# Every section's quick variant in one subprocess: 1-3 minutes as the sections grew (worker processes,
# cold starts, a capacity pool), so it runs with the end-to-end checks (make test-e2e, in CI too).
@pytest.mark.e2e
def test_quick_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    assert "This section failed" not in report
    for heading in ("## 1. Inference", "## 2. Predict route", "## 3. Training input pipeline",
                    "## 4. Training step", "## 5. Local pipeline", "## 9. Predict soak", "## 11. Cold start", "## 12. Capacity",
                    "## Machine and versions"):
        assert heading in report
    # Rows that carry the targets, each with a measured figure and a verdict.
    for case in ("top-1 agreement as shipped", "POST /predict handler", "cold import of chalice_app/app.py",
                 "whole 5-epoch job", "answers that were not the expected status and code", "5xx answers",
                 "peak req/s one ml.m5.large-sized instance holds"):
        line = next((ln for ln in report.splitlines() if case in ln), None)
        assert line is not None, case
        assert re.search(r"\b(NOT )?met\b", line), line
    assert "status 200" in report  # the stubbed predict request really succeeded
    # The soak answered every request as the contract promises: the verdicts must be "met", not just present.
    soak = report.split("## 9. Predict soak", 1)[1]
    for case in ("answers that were not the expected status and code", "5xx answers"):
        line = next(ln for ln in soak.splitlines() if case in ln)
        assert "0: met" in line, line


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


def test_readme_table_is_replaced_between_its_markers(tmp_path: Path) -> None:
    from bench.core import Section
    from bench.report import README_END, README_START, update_readme

    sec = Section("route", "2. Predict route")
    sec.rows.append(Row("route", "handler p50", Stats.of([0.001, 0.003]), "s", target="p50 <= 2 ms", met=True))
    sec.rows.append(Row("route", "no target here", Stats.of([1.0]), "s"))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nafter\n", encoding="utf-8")
    assert update_readme(readme, [sec])
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and text.startswith("intro\n") and text.endswith(f"{README_END}\nafter\n")
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| handler p50")]
    assert row.endswith("| met | `python -m bench --only route` |")
    assert "no target here" not in text
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n", encoding="utf-8")
    assert not update_readme(bare, [sec]) and bare.read_text(encoding="utf-8") == "no markers\n"


def test_precision_step_runs_both_ways_on_a_cpu() -> None:
    """The GPU comparison's step, run on this CPU (bfloat16 autocast), so it can't rot unseen."""
    from bench.gpu_check import precision_step_rates

    rates, peak = precision_step_rates("cpu", "efficientnet_lite0", 2, 32, 1, True, True, num_classes=3)
    assert len(rates) == 1 and rates[0] > 0 and peak == 0


def test_recorded_gpu_run_becomes_rows_against_its_fp32_baseline() -> None:
    """Without CUDA, section 4 reports the newest committed ``python -m bench.gpu_check`` result."""
    import json
    import statistics

    from bench import gpu_check
    from bench.core import Section

    path = gpu_check.latest_recorded()
    assert path is not None
    results = json.loads(path.read_text(encoding="utf-8"))
    section = Section("train_step", "4")
    gpu_check.add_rows(section, results, "recorded", recorded=True)
    rates = {(e["batch"], e["variant"]): e["rates"] for e in results["precision"] if "rates" in e}
    amp_rows = [row for row in section.rows if row.target == ">= 2x"]
    assert len(amp_rows) == len({batch for batch, _ in rates})
    for row in amp_rows:
        batch = int(row.case.split("batch ")[1].split(",")[0])
        expected = (statistics.median(rates[(batch, "AMP fp16 + channels-last")])
                    / statistics.median(rates[(batch, gpu_check.BASELINE)]))
        assert row.speedup == pytest.approx(expected)
        assert row.met == (expected >= 2.0)
        assert "recorded" in row.case and "peak memory" in row.note
    assert any("train.py on CUDA" in note and "exit 0" in note for note in section.notes)


def test_notes_only_swaps_the_hand_written_part() -> None:
    """``python -m bench --notes-only`` keeps the generated tables and replaces only the notes."""
    from bench.report import NOTES_HEADING, replace_notes

    report = f"# Benchmarks\n\n| table | 1 |\n\n{NOTES_HEADING}\n\nold notes\n"
    new = replace_notes(report, f"{NOTES_HEADING}\n\nnew notes\n")
    assert new == f"# Benchmarks\n\n| table | 1 |\n\n{NOTES_HEADING}\n\nnew notes\n"
    with pytest.raises(ValueError):
        replace_notes(report, "notes without the heading\n")


def test_interleaved_blocks_time_each_path_after_one_untimed_call() -> None:
    from bench.core import time_interleaved

    calls: list[str] = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=6,
                               warmup=1, block=3)
    assert [len(v) for v in samples.values()] == [6, 6]
    assert calls == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
    calls.clear()
    time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=2, warmup=0)
    assert calls == ["a", "b", "a", "b"]
