"""Section 5: ``make demo``'s wall time by stage, and where each job's time goes.

The demo (``python -m breedline demo``) prints a "Wall time by stage" table and
a timestamped line for every job state change; the local runtime keeps each
training job's stdout under ``<state dir>/jobs/<job>/logs/stdout.log``. This
section runs the demo in a state folder of its own (so it never touches a
``.breedline/`` someone else is using) and reads those, or, with
``--demo-log FILE [--demo-state DIR]``, reads a run made earlier.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 1500

_STAGE = re.compile(r"^\s{2}(.+?)\s+([0-9.]+) s\s*$")
_STAMPED = re.compile(r"^\[\s*([0-9.]+)s\]\s+(.*)$")
_JOB = re.compile(r"^(trial|final job) (\S+): (\w+) / (\w+)")


def parse_stages(text: str) -> list[tuple[str, float]]:
    """The rows of the demo's "Wall time by stage:" table, total included."""
    rows: list[tuple[str, float]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("Wall time by stage"):
            inside, rows = True, []
            continue
        if inside:
            m = _STAGE.match(line)
            if not m:
                if rows:
                    break
                continue
            rows.append((m.group(1).strip(), float(m.group(2))))
    return rows


def parse_jobs(text: str) -> dict[str, dict[str, object]]:
    """Per job: kind, first time seen, time it reached a terminal state, final status."""
    jobs: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        m = _STAMPED.match(line.strip())
        if not m:
            continue
        t, rest = float(m.group(1)), m.group(2).strip()
        j = _JOB.match(rest)
        if not j:
            continue
        kind, name, status = j.group(1), j.group(2), j.group(3)
        job = jobs.setdefault(name, {"kind": kind, "first": t, "end": None, "status": status})
        job["status"] = status
        if status in ("Completed", "Failed", "Stopped") and job["end"] is None:
            job["end"] = t
    return jobs


def parse_phases(text: str) -> dict[str, dict[str, float]]:
    """Per job: seconds spent in each secondary status (Downloading, Training, Uploading, ...).

    Read from the demo's timestamped ``<job>: <status> / <secondary>`` lines, so
    each figure is as the demo's watcher saw it (it polls once a second): a
    status starts when its line is printed and ends at the job's next line.
    """
    seen: dict[str, list[tuple[float, str]]] = {}
    for line in text.splitlines():
        m = _STAMPED.match(line.strip())
        if not m:
            continue
        j = _JOB.match(m.group(2).strip())
        if j:
            seen.setdefault(j.group(2), []).append((float(m.group(1)), j.group(4)))
    phases: dict[str, dict[str, float]] = {}
    for name, steps in seen.items():
        spent: dict[str, float] = {}
        for (t, status), (t_next, _) in zip(steps, steps[1:]):
            spent[status] = spent.get(status, 0.0) + (t_next - t)
        phases[name] = spent
    return phases


def job_log_facts(state_dir: Path) -> dict[str, dict[str, float]]:
    """From each job's stdout: one-off decode time and the per-epoch seconds train.py printed."""
    facts: dict[str, dict[str, float]] = {}
    for log in sorted(state_dir.glob("jobs/*/logs/stdout.log")):
        text = log.read_text(encoding="utf-8", errors="replace")
        name = log.parent.parent.name
        f: dict[str, float] = {}
        m = re.search(r"decoded train\+valid once in ([0-9.]+)s", text)
        if m:
            f["decode_s"] = float(m.group(1))
        epochs = [float(v) for v in re.findall(r"\bepoch_seconds=([0-9.]+)", text)]
        if epochs:
            f["epochs"] = len(epochs)
            f["epoch_s_total"] = sum(epochs)
            f["epoch_s_median"] = sorted(epochs)[len(epochs) // 2]
        facts[name] = f
    return facts


def record(section: Section, text: str, state_dir: Path | None, wall: float | None) -> None:
    stages = parse_stages(text)
    if not stages:
        raise RuntimeError("the demo's output has no 'Wall time by stage' table (did it finish?)")
    for name, seconds in stages:
        section.rows.append(Row("demo", f"stage: {name}", Stats.of([seconds]), "s"))
    facts = job_log_facts(state_dir) if state_dir else {}
    for name, job in parse_jobs(text).items():
        if job["end"] is None:
            continue
        took = float(job["end"]) - float(job["first"])  # type: ignore[arg-type]
        f = facts.get(name, {})
        inside = ""
        if f:
            inside = (f"inside the job: one-off decode {f.get('decode_s', 0):.1f} s, "
                      f"{int(f.get('epochs', 0))} epoch(s) {f.get('epoch_s_total', 0):.1f} s")
        section.rows.append(Row("demo", f"{job['kind']} {name} ({job['status']}), seen->terminal as the demo polls",
                                Stats.of([took]), "s", note=inside))
    jobs = parse_jobs(text)
    for kind in ("trial", "final job"):
        names = [n for n, j in jobs.items() if j["kind"] == kind and j["end"] is not None]
        per_job = [p for n, p in parse_phases(text).items() if n in names]
        for status in ("Starting", "Downloading", "Training", "Uploading"):
            values = [p[status] for p in per_job if status in p]
            if values:
                section.rows.append(Row("demo", f"{kind}s: time in {status} (per job, as the demo polls)",
                                        Stats.of(values), "s"))
    if wall is not None:
        section.notes.append(f"`python -m breedline demo` took {wall:.0f} s wall in this run, runtime start included.")
    overhead = [(n, s) for n, s in stages if n not in ("total",)]
    if facts and overhead:
        in_epochs = sum(f.get("epoch_s_total", 0.0) for f in facts.values())
        decode = sum(f.get("decode_s", 0.0) for f in facts.values())
        total = next((s for n, s in stages if n == "total"), sum(s for _, s in overhead))
        section.notes.append(
            f"Of the {total:.0f} s total, training epochs inside all jobs add up to {in_epochs:.0f} s and one-off "
            f"image decoding to {decode:.0f} s (jobs run in parallel where tuning allows, so these can overlap); "
            "the rest is process start-up (Python + torch import per job, model build, test pass, model save), "
            "polling intervals, endpoint start and the runtime itself.")


def run(section: Section, quick: bool, log_file: Path | None = None, state_dir: Path | None = None) -> None:
    log_file = log_file or (Path(os.environ["BENCH_DEMO_LOG"]) if os.environ.get("BENCH_DEMO_LOG") else None)
    if log_file is not None:
        state = state_dir or (Path(os.environ["BENCH_DEMO_STATE"]) if os.environ.get("BENCH_DEMO_STATE") else None)
        if state is None and (log_file.parent / "demo-state").is_dir():
            state = log_file.parent / "demo-state"
        section.notes.append(f"Read from an earlier demo run's output ({log_file.name}).")
        record(section, log_file.read_text(encoding="utf-8", errors="replace"), state, None)
        return
    if quick:
        section.notes.append("--quick does not run the demo (minutes of training); the full run does.")
        return
    out_dir = ROOT / "build" / "bench"  # build/ is git-ignored
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "demo.log"
    state = out_dir / "demo-state"  # the demo wipes and recreates it
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "breedline", "demo", "--state-dir", str(state)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=DEMO_TIMEOUT_S)
    wall = time.perf_counter() - t0
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        section.notes.append(f"`python -m breedline demo` exited {proc.returncode}; its log is {log_path}.")
    section.notes.append(f"The demo's output is kept in {log_path.relative_to(ROOT)}; rerun this section from it "
                         f"with `python -m bench --only demo --demo-log {log_path.relative_to(ROOT)}`.")
    record(section, text, state, wall)
