"""``python -m bench [--quick] [--only SECTION ...] [--out FILE]``: run the benchmark suite.

Benchmarks print figures; they never fail because a machine is slow. The exit
code is non-zero only when a section crashed, which is what the smoke test in
``tests/bench`` checks with ``--quick`` (tiny inputs, a few seconds), so the
suite cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The code roots (the repo, ml_scripts/, chalice_app/) are on sys.path through the editable
# install's .pth file (pyproject.toml), so ``import train`` and ``import chalicelib`` work here.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Breedline")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "breedline")

from bench.core import Section, loadavg, machine_facts  # noqa: E402
from bench.report import (  # noqa: E402
    NOTES_FILE,
    markdown,
    merge_readme,
    merge_report,
    replace_notes,
    text_table,
    update_readme,
)

SECTIONS: dict[str, str] = {
    "inference": "1. Inference per image (input_fn -> predict_fn -> output_fn, batch 1)",
    "route": "2. Predict route (Chalice handler, cold import, deployment zip)",
    "pipeline": "3. Training input pipeline (images/s)",
    "train_step": "4. Training step throughput (images/s)",
    "demo": "5. Local pipeline (make demo) by stage",
    "decode_budget": "6. Decode budget (largest accepted image, issue 15's 8,900 px PNGs refused)",
    "profiler": "7. Profiler cost per epoch (--profile_steps, train.py on digits)",
    "debugger": "8. In-job Debugger (--debugger in_job: smdebug hook and the five rules) per epoch",
    "soak": "9. Predict soak (local API on loopback, bounded)",
    "ood": "10. \"I don't know\": OOD AUROC and abstained shares (digits and photo models, issue 13)",
    "cold_start": "11. Cold start and worker memory (model.onnx built in the job vs export at load, issue 17)",
    "capacity": "12. Capacity of one endpoint instance (req/s, p50/p99) and the autoscaling target",
    "ddp": "13. Data-parallel training: 1 vs 2 processes (torchrun, gloo) and the sync share of a step",
    "batch": "14. Batch predictions (local transform job, 1 and 2 workers, vs a POST /predict loop; issue 18)",
}


def _runner(key: str):
    if key == "inference":
        from bench import inference_bench as mod
    elif key == "route":
        from bench import route_bench as mod
    elif key == "pipeline":
        from bench import pipeline_bench as mod
    elif key == "train_step":
        from bench import train_step_bench as mod
    elif key == "decode_budget":
        from bench import decode_budget as mod
    elif key == "profiler":
        from bench import profiler_cost as mod
    elif key == "debugger":
        from bench import debugger_cost as mod
    elif key == "soak":
        from bench import soak_bench as mod
    elif key == "ood":
        from bench import ood_bench as mod
    elif key == "cold_start":
        from bench import cold_start as mod
    elif key == "capacity":
        from bench import capacity as mod
    elif key == "ddp":
        from bench import ddp_bench as mod
    elif key == "batch":
        from bench import batch_bench as mod
    else:
        from bench import demo_bench as mod
    return mod.run


def _merge(report: Path, sections: list[Section], command: str, finished: dt.datetime, failed: bool) -> None:
    """``--merge``: only the measured sections (and their README target rows) change."""
    report.write_text(merge_report(report.read_text(encoding="utf-8"), sections, command, finished), encoding="utf-8")
    merged = not failed and merge_readme(ROOT / "README.md", sections)
    print(f"\nmerged {', '.join(s.key for s in sections)} into {report}" + (" and README.md" if merged else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs and few repeats: a smoke run, not figures")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown report path (default: docs/benchmarks.md for a full run, none for --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, one per core; --quick uses 1)")
    parser.add_argument("--demo-log", type=Path, default=None,
                        help="read section 5 from this earlier `python -m breedline demo` output instead of running it")
    parser.add_argument("--demo-state", type=Path, default=None, help="that run's --state-dir (for per-job logs)")
    parser.add_argument("--notes-only", action="store_true",
                        help="measure nothing: put the current bench/notes.md into the existing report")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace just those sections (and their README target rows) in the report")
    args = parser.parse_args(argv)
    if args.notes_only:
        report = args.out or ROOT / "docs" / "benchmarks.md"
        report.write_text(replace_notes(report.read_text(encoding="utf-8"), NOTES_FILE.read_text(encoding="utf-8")),
                          encoding="utf-8")
        print(f"rewrote the notes in {report}")
        return 0
    out = args.out if args.out is not None else (None if args.quick else ROOT / "docs" / "benchmarks.md")
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")

    if args.demo_log:
        os.environ["BENCH_DEMO_LOG"] = str(args.demo_log.resolve())
        command += f" --demo-log {args.demo_log}"
    if args.demo_state:
        os.environ["BENCH_DEMO_STATE"] = str(args.demo_state.resolve())

    import torch

    torch.manual_seed(0)
    # On a shared, busy machine torch's OpenMP threads can stall each other badly (docs/benchmarks.md);
    # the smoke run stays predictable with one thread.
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
        command += f" --threads {threads}" if args.threads else ""
    started = dt.datetime.now(dt.timezone.utc)
    facts = machine_facts()
    facts["load average at start"] = str(loadavg())
    print(f"{command}: {facts['CPU']}, {facts['logical cores']} cores, torch {facts['torch']}, "
          f"load {facts['load average at start']}", flush=True)
    sections: list[Section] = []
    failed = False
    for key in args.only or list(SECTIONS):
        sec = Section(key, SECTIONS[key])
        sec.load_before = loadavg()
        t0 = time.perf_counter()
        print(f"-- {sec.title} ...", flush=True)
        try:
            _runner(key)(sec, args.quick)
        except Exception as exc:  # noqa: BLE001 - report the crash, go on with the next section
            failed = True
            sec.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        sec.seconds = time.perf_counter() - t0
        sec.load_after = loadavg()
        sections.append(sec)
        print(text_table([sec]), flush=True)
    finished = dt.datetime.now(dt.timezone.utc)
    facts["load average at end"] = str(loadavg())
    print("\n==== summary ====" + text_table(sections))
    if args.merge and args.only and not args.quick:
        _merge(args.out or ROOT / "docs" / "benchmarks.md", sections, command, finished, failed)
        return 1 if failed else 0
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(sections, facts, command, started, finished), encoding="utf-8")
        print(f"\nwrote {out}")
    # Only a full run on the default report path speaks for the README's performance table.
    if not args.quick and not args.only and args.out is None and not failed:
        if update_readme(ROOT / "README.md", sections):
            print(f"updated the performance table in {ROOT / 'README.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
