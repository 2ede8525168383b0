"""Section 13: data-parallel training (issue 18): 1 vs 2 processes on this machine, and the sync share.

Two measurements:

- the digits job itself: ``train.py`` on 1 process (batch 16) and under
  ``torchrun --nproc_per_node 2`` (batch 8 each, the same global batch and
  learning rate), images/s = (train + valid images) / ``epoch_seconds``,
  epochs after the first (which pays one-time costs);
- the communication share of one DDP step: 2 gloo processes time the same
  training step with DDP's gradient all-reduce and inside ``no_sync()`` (no
  all-reduce); share = (synced - unsynced) / synced.

On a CPU host both processes share the same cores, so 2 processes cannot beat
1 here; docs/scale.md says what the figures predict for multi-GPU instances.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent
ML = ROOT / "ml_scripts"
ARCH, SIZE = "efficientnet_lite0", 48


def _job_env(base: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "BREEDLINE_", "TRAINING_JOB_NAME"))}
    env.update({f"SM_CHANNEL_{s.upper()}": str(data / s) for s in ("train", "valid", "test")})
    env.update({"SM_MODEL_DIR": str(base / "model"), "SM_OUTPUT_DIR": str(base / "output"),
                "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"), "SM_INPUT_CONFIG_DIR": str(base / "config"),
                "SM_NUM_GPUS": "0", "BREEDLINE_CHECKPOINT_DIR": str(base / "checkpoints"),
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    return env


def job_rates(processes: int, data: Path, epochs: int, images: int, threads: int | None = None) -> list[float]:
    """Images/s of each epoch after the first, from the job's own ``epoch_seconds`` metric lines.

    ``threads``: torch threads per process (default: the cores shared out among the processes).
    """
    import contract

    batch = 16 // processes
    args = ["--epochs", str(epochs), "--patience", str(epochs), "--model", ARCH, "--image_size", str(SIZE),
            "--batch_size", str(batch), "--lr_reference_batch", "16", "--seed", "0"]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        env = _job_env(Path(tmp), data)
        # one process has every core; N processes share them, cores / N threads each
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 2) // processes))
        done = subprocess.run([*launcher, "train.py", *args], cwd=ML, env=env, capture_output=True, text=True,
                              timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"train.py on {processes} process(es) failed: {done.stderr[-1500:]}")
    seconds = list(contract.parse_metrics(done.stdout)["epoch_seconds"])[1:]
    return [images / s for s in seconds]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model(tiny: bool):
    """efficientnet_lite0 as the digits job builds it; ``tiny`` (``--quick``): one linear layer."""
    import torch

    import backbones

    if tiny:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 10))
    return backbones.build_model(ARCH, 10, image_size=SIZE, pretrained=True)


def _step_worker(rank: int, world: int, port: int, steps: int, batch: int, tiny: bool, out: dict) -> None:
    """One rank: median seconds of a synced DDP step and of a ``no_sync()`` step, same batch."""
    import statistics

    import torch
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _model(tiny)
    net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(batch, 3, SIZE, SIZE), torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(sync: bool) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        with (net.no_sync() if not sync else torch.enable_grad()):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
        optimizer.step()
        return time.perf_counter() - t0

    step(True)  # warm-up (DDP builds its buckets on the first backward)
    synced = [step(True) for _ in range(steps)]
    unsynced = [step(False) for _ in range(steps)]
    if rank == 0:
        out["synced"], out["unsynced"] = synced, unsynced
        out["median"] = (statistics.median(synced), statistics.median(unsynced))
    dist.destroy_process_group()


def step_share(steps: int, batch: int, tiny: bool = False) -> tuple[list[float], list[float]]:
    """Rank 0's synced and unsynced step seconds in a 2-process gloo group."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_step_worker, args=(2, _free_port(), steps, batch, tiny, out), nprocs=2, join=True)
        return list(out["synced"]), list(out["unsynced"])


def run(section: Section, quick: bool) -> None:
    """``--quick`` (the smoke test): only the step comparison, on a one-layer model; no train.py jobs."""
    from breedline import demo_digits

    if quick:
        synced, unsynced = step_share(2, batch=4, tiny=True)
        section.rows.append(Row("ddp", "one DDP step (quick: a linear layer), 2 gloo processes: "
                                "all-reduce vs no_sync()", Stats.of(synced), "s", baseline=Stats.of(unsynced),
                                note="the train.py jobs run only without --quick"))
        return
    per_class, epochs, steps = 60, 4, 15
    with tempfile.TemporaryDirectory(prefix="bench-ddp-data-") as tmp:
        counts = demo_digits.write_digits(Path(tmp), per_class=per_class, size=SIZE)
        images = counts["train"] + counts["valid"]
        one = job_rates(1, Path(tmp), epochs, images)
        one_thread = job_rates(1, Path(tmp), epochs, images, threads=1)
        two = job_rates(2, Path(tmp), epochs, images)
    cores = os.cpu_count() or 1
    job = f"digits job ({images} train+valid images, {ARCH}, {SIZE} px, global batch 16)"
    for name, baseline in ((f"1 process x {cores} threads", one), ("1 process x 1 thread", one_thread)):
        section.rows.append(Row(
            "ddp", f"{job}: 2 processes x {max(1, cores // 2)} thread(s) (torchrun, gloo) vs {name}",
            Stats.of(two), "img/s", baseline=Stats.of(baseline), higher_is_better=True,
            note=f"epochs 2-{epochs}; the processes share this machine's cores"))
    synced, unsynced = step_share(steps, batch=8)
    share = [(s - u) / s for s, u in zip(sorted(synced), sorted(unsynced))]
    section.rows.append(Row(
        "ddp", "one DDP step, 2 gloo processes, batch 8 each: with the gradient all-reduce vs no_sync()",
        Stats.of(synced), "s", baseline=Stats.of(unsynced),
        note=f"communication share {100 * Stats.of(share).median:.0f}% of a step "
        f"(median of {steps} sorted pairs, {100 * min(share):.0f}-{100 * max(share):.0f}%)"))
