"""``python -m bench --only SECTION --merge``: one section re-measured, every other figure kept."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bench.core import Row, Section, Stats
from bench.report import README_END, README_START, markdown, merge_readme, merge_report


def _section(key: str, title: str, figure: float) -> Section:
    sec = Section(key, title)
    sec.rows.append(Row(key, f"{key} latency", Stats.of([figure]), "s", target="<= 1 s", met=figure <= 1))
    sec.rows.append(Row(key, f"{key} detail", Stats.of([figure / 2]), "s"))
    return sec


def test_merge_replaces_one_section_and_its_target_rows(tmp_path: Path) -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    old = [_section("inference", "1. Inference", 2.0), _section("route", "2. Route", 0.5)]
    report = markdown(old, {"CPU": "x"}, "python -m bench", when, when)
    new = [_section("inference", "1. Inference", 0.25)]
    merged = merge_report(report, new, "python -m bench --only inference", when)
    inference = merged.split("## 1. Inference", 1)[1].split("\n## ", 1)[0]
    assert "2 s" not in inference and "250 ms" in inference and "125 ms" in inference
    assert merged.count("route latency") == 2 and "500 ms" in merged  # the other section, untouched
    assert merged.index("## 1. Inference") < merged.index("## 2. Route")
    targets = merged.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "inference latency: <= 1 s | 250 ms" in targets and "| met |" in targets and "NOT met" not in targets
    readme = tmp_path / "README.md"
    table = report.split("## Targets", 1)[1].split("\n## ", 1)[0].strip()
    readme.write_text(f"intro\n{README_START}\n{table}\n{README_END}\nafter\n", encoding="utf-8")
    assert merge_readme(readme, new)
    text = readme.read_text(encoding="utf-8")
    assert "inference latency: <= 1 s | 250 ms" in text and "route latency: <= 1 s | 500 ms" in text
    assert text.endswith(f"{README_END}\nafter\n")
