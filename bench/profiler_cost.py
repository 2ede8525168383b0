"""Section 6: what ``--profile_steps`` costs per epoch, through ``train.py`` as the container runs it.

The same digits job runs with ``--profile_steps 0`` (the baseline: no
profiler, no sampler, no TensorBoard writer) and with ``--profile_steps N``,
alternately, several times. Each epoch's ``epoch_seconds`` metric line is the
figure: the first epoch carries the torch.profiler window (N steps), later
epochs only the cheap per-step timings, the resource sampler thread and the
scalar writes. The job's wall time also carries writing the summary, the HTML
report and the traces at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent
ML = ROOT / "ml_scripts"
EPOCH_SECONDS = re.compile(r"^#breedline-metric epoch=(\d+) epoch_seconds=([0-9.]+)$", re.MULTILINE)


def _env(base: Path, data: Path) -> dict[str, str]:
    """The script-mode variables train.py reads, as SageMaker (and the local runtime) set them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "BREEDLINE_", "TRAINING_JOB_NAME"))}
    env.update({f"SM_CHANNEL_{name.upper()}": str(data / name) for name in ("train", "valid", "test")})
    env.update({"SM_MODEL_DIR": str(base / "model"), "SM_OUTPUT_DIR": str(base / "output"),
                "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"), "SM_INPUT_CONFIG_DIR": str(base / "config"),
                "SM_NUM_GPUS": "0", "SM_NUM_CPUS": str(os.cpu_count() or 1),
                "BREEDLINE_CHECKPOINT_DIR": str(base / "checkpoints"), "PYTHONUNBUFFERED": "1"})
    return env


def run_job(base: Path, data: Path, epochs: int, profile_steps: int) -> tuple[list[float], float]:
    """(each epoch's seconds, the job's wall seconds) of one train.py run."""
    (base / "config").mkdir(parents=True)
    args = ["--epochs", str(epochs), "--model", "efficientnet_lite0", "--image_size", "32", "--batch_size", "16",
            "--patience", str(epochs + 1), "--profile_steps", str(profile_steps)]
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "train.py", *args], check=False, cwd=ML, env=_env(base, data),
                            capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"train.py failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    epochs_s = [float(s) for _, s in sorted((int(e), s) for e, s in EPOCH_SECONDS.findall(result.stdout))]
    return epochs_s, wall


def tiny_loop(out: Path | None, steps: int = 20, profile_steps: int = 5) -> float:
    """Seconds of a tiny in-process training loop, under ``profiling.StepProfiler`` when ``out`` is given.

    The ``--quick`` smoke run: the same StepProfiler calls train.py makes, without a train.py start-up.
    """
    import torch

    import profiling

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    profiler = profiling.StepProfiler(profile_steps, out, cuda=False) if out is not None else None
    t0 = time.perf_counter()
    for _ in range(steps):
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if profiler is not None:
            profiler.record(0.0, time.perf_counter() - t1)
    if profiler is not None:
        profiler.finish()
    return time.perf_counter() - t0


def run(section: Section, quick: bool) -> None:
    if quick:
        with tempfile.TemporaryDirectory(prefix="bench-profiler-") as tmp:
            plain = tiny_loop(None)
            profiled = tiny_loop(Path(tmp) / "output" / "profiler")
        section.rows.append(Row("profiler", "quick: 20 steps of a tiny MLP, StepProfiler (5 profiled steps, report) "
                                "vs none", Stats.of([profiled]), "s", baseline=Stats.of([plain])))
        return
    record_cost(section)
    train_jobs(section)


def record_cost(section: Section, calls: int = 2000) -> None:
    """What each training step pays after the profiled window: ``StepProfiler.record`` (timings, two scalars).

    Timed in-process over many calls, so it resolves microseconds where the job figures carry the machine's load.
    """
    import profiling

    with tempfile.TemporaryDirectory(prefix="bench-profiler-") as tmp:
        profiler = profiling.StepProfiler(1, Path(tmp) / "output" / "profiler", cuda=False)
        profiler.record(0.0, 0.0)  # ends the torch.profiler window
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                profiler.record(0.001, 0.01)
            samples.append((time.perf_counter() - t0) / calls)
        t0 = time.perf_counter()
        profiler.finish()
        finish_s = time.perf_counter() - t0
        profiling._active = None
    section.rows.append(Row("profiler", f"StepProfiler.record per step after the window ({calls} calls x 5)",
                            Stats.of(samples), "s"))
    section.rows.append(Row("profiler", f"StepProfiler.finish (summary, findings, HTML) after {5 * calls + 1} steps",
                            Stats.of([finish_s]), "s"))


def train_jobs(section: Section) -> None:
    """The figures: train.py on digits, ``--profile_steps 0`` and ``--profile_steps 5``, alternating."""
    from breedline import demo_digits

    per_class, epochs, repeats, steps = 20, 3, 3, 5
    with tempfile.TemporaryDirectory(prefix="bench-profiler-") as tmp:
        data = Path(tmp) / "data"
        demo_digits.write_digits(data, per_class=per_class, size=32)
        train_images = sum(1 for _ in (data / "train").rglob("*.jpg"))
        runs: dict[int, list[tuple[list[float], float]]] = {0: [], steps: []}
        for i in range(repeats):  # alternating, so a load spike hits both alike
            for profile in (0, steps):
                runs[profile].append(run_job(Path(tmp) / f"job-{profile}-{i}", data, epochs, profile))
    job = f"digits {train_images} train images, efficientnet_lite0 32 px, batch 16, {epochs} epochs"
    profiled, plain = runs[steps], runs[0]
    section.rows.append(Row("profiler", f"{job}: epoch 1 with --profile_steps {steps} vs 0",
                            Stats.of([e[0] for e, _ in profiled]), "s", baseline=Stats.of([e[0] for e, _ in plain])))
    section.rows.append(Row("profiler", f"{job}: later epochs (timings, sampler, scalars only) vs 0",
                            Stats.of([s for e, _ in profiled for s in e[1:]]), "s",
                            baseline=Stats.of([s for e, _ in plain for s in e[1:]])))
    section.rows.append(Row("profiler", f"{job}: whole job wall time (start-up and the report included) vs 0",
                            Stats.of([w for _, w in profiled]), "s", baseline=Stats.of([w for _, w in plain])))
    section.notes.append(f"{repeats} runs of each, alternating; a ratio under 1.00x is the profiler's cost. "
                         "The figure of an epoch is its epoch_seconds metric line (train and validation).")
