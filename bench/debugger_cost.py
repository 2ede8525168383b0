"""Section 6: what ``--debugger in_job`` (the smdebug hook and the five rules in the job) costs per epoch.

Why a real job: the hook's cost is in train.py's loop (a forward hook on every
module, losses saved every step, gradients and activation inputs every
``--debug_save_interval`` steps and in the first ten), and the rules run on
the trial it wrote. So this runs train.py as SageMaker would (the container
contract's variables, a fresh /opt/ml-like folder per job) on the digits data,
``--debugger off`` against ``in_job``, and reads the ``epoch_seconds`` metric
lines and the "Debugger rules evaluated ... in X s" line.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent
_RULES_SECONDS = re.compile(r"Debugger rules evaluated after training in ([0-9.]+)s")


def run_job(base: Path, data: Path, mode: str, epochs: int, threads: int) -> tuple[list[float], float | None]:
    """One train.py job; its per-epoch seconds and the final rule evaluation's seconds (in_job only)."""
    from contract import parse_metrics

    own = ("SM_", "BREEDLINE_", "TRAINING_JOB_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env.update({f"SM_CHANNEL_{split.upper()}": str(data / split) for split in ("train", "valid", "test")})
    env.update({"SM_MODEL_DIR": str(base / "model"), "SM_OUTPUT_DIR": str(base / "output"),
                "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"), "SM_INPUT_CONFIG_DIR": str(base / "config"),
                "SM_NUM_GPUS": "0", "SM_NUM_CPUS": str(threads), "BREEDLINE_CHECKPOINT_DIR": str(base / "ckpt"),
                "OMP_NUM_THREADS": str(threads)})
    args = ["--debugger", mode, "--epochs", str(epochs), "--patience", str(epochs), "--model", "efficientnet_lite0",
            "--image_size", "32", "--batch_size", "16"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT / "ml_scripts", env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py --debugger {mode} failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    found = _RULES_SECONDS.search(proc.stdout)
    return parse_metrics(proc.stdout)["epoch_seconds"], float(found.group(1)) if found else None


def run(section: Section, quick: bool) -> None:
    from breedline import demo_digits

    per_class, epochs, repeats = (6, 1, 1) if quick else (20, 3, 3)
    threads = 1 if quick else min(2, os.cpu_count() or 1)
    epoch_s: dict[str, list[float]] = {"off": [], "in_job": []}
    rules_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-debugger-cost-") as tmp:
        data = Path(tmp) / "digits"
        counts = demo_digits.write_digits(data, per_class=per_class, size=32)
        for i in range(repeats):
            for mode in ("off", "in_job"):  # interleaved, so a change in machine load hits both
                seconds, rules = run_job(Path(tmp) / f"{mode}-{i}", data, mode, epochs, threads)
                epoch_s[mode].append(statistics.median(seconds))
                if rules is not None:
                    rules_s.append(rules)
    what = (f"digits {counts['train']} train / {counts['valid']} valid images, efficientnet_lite0 32 px, batch 16, "
            f"{epochs} epoch(s), {threads} thread(s)")
    section.rows.append(Row("debugger", f"epoch seconds with --debugger in_job (hook) vs off; {what}",
                            Stats.of(epoch_s["in_job"]), "s", baseline=Stats.of(epoch_s["off"]),
                            note=f"median epoch of each job, {repeats} job(s) per mode"))
    if rules_s:
        section.rows.append(Row("debugger", f"the five rules evaluated once at the end of the job; {what}",
                                Stats.of(rules_s), "s", note="per evaluation; --rules_every_epochs N adds one per N"))
