"""``python -m bench.gpu_check --out FILE``: the checks and figures that need a GPU, in one run.

This machine has no GPU and CI never has one; the device tool sometimes lends
one for a few minutes. That lease fits one prepared command, so everything that
needs CUDA is here and writes one JSON file, which is committed under
``bench/recorded/`` and shown by ``make bench`` next to the card it ran on:

1. VGG11 at 224 px training steps (``precision_step_rates``: train.py's step)
   at every tuning batch size in five variants, from fp32 channels-first to
   AMP + channels-last (what train.py does on CUDA), with peak GPU memory. The
   fp32 baseline is PyTorch's default, which lets cuDNN use TF32 on Ampere and
   later; "strict fp32" turns TF32 off, which is what a T4 (ml.g4dn, no TF32)
   does anyway.
2. ``train.py`` end to end on CUDA on the digits data: autocast, GradScaler,
   pinned memory, channels-last, the CUDA profiler, the model archive.
3. ``inference.py`` serving that archive on CUDA, its top-1 against the same
   weights on the CPU for every test image.

Only torch, torchvision, Pillow, numpy and scikit-learn are needed, which the
device machine's image holds; the pretrained VGG11 weights can't be fetched
there, so step 2 trains from a random-init weights file (the code path, not
the accuracy, is what is checked).

The ML modules are imported top-level (``import train``), as in the
containers: the editable install's .pth file puts ``ml_scripts/`` and
``chalice_app/`` on ``sys.path``. On a machine without the install, give them
in the environment instead, run from the repo root:
``PYTHONPATH=.:ml_scripts:chalice_app python -m bench.gpu_check --out FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent

RECORDED = Path(__file__).resolve().parent / "recorded"

@dataclass(frozen=True)
class Variant:
    """One way to run the same training step."""

    label: str
    mixed: bool = False
    channels_last: bool = False
    tf32: bool = True  # PyTorch's default for cuDNN convolutions
    cudnn_benchmark: bool = False  # PyTorch's default
    compiled: bool = False


#: The first is the issue's baseline (PyTorch defaults); train.py on CUDA runs the one named by TRAIN_PY.
VARIANTS: tuple[Variant, ...] = (
    Variant("fp32, channels-first"),
    Variant("strict fp32 (no TF32), channels-first", tf32=False),
    Variant("AMP fp16, channels-first", mixed=True),
    Variant("fp32, channels-last", channels_last=True),
    Variant("AMP fp16 + channels-last", mixed=True, channels_last=True),
    Variant("fp32, channels-first, cudnn.benchmark", cudnn_benchmark=True),
    Variant("AMP fp16 + channels-last + cudnn.benchmark", mixed=True, channels_last=True, cudnn_benchmark=True),
)
BASELINE = VARIANTS[0].label
#: Only with --compile: each batch size compiles VGG11 again.
COMPILED = Variant("AMP fp16 + channels-last + cudnn.benchmark + torch.compile", mixed=True, channels_last=True,
                   cudnn_benchmark=True, compiled=True)


def training_step(device: str, arch: str, image_size: int, mixed: bool, channels_last: bool, *,
                  compiled: bool = False, num_classes: int = 133, lr: float = 1e-3,
                  dropout: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """train.py's training step as a function of one batch, returning its (detached) loss.

    The model as ``backbones.build_model`` makes it, frozen BatchNorm statistics,
    cross-entropy, Adam, a GradScaler. ``mixed`` runs the forward pass under
    autocast (float16 on CUDA, bfloat16 on a CPU, where float16 autocast is not
    what anyone trains with); ``channels_last`` converts the model and each batch
    to NHWC memory order; ``compiled`` wraps the model with ``train.compiled``;
    ``dropout=False`` zeroes dropout (compiled dropout draws other random masks).
    The seed is fixed, so two steps built alike start from the same weights.
    """
    import backbones
    import train

    torch.manual_seed(0)
    dev = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = backbones.build_model(arch, num_classes, image_size=image_size, pretrained=False)
    model = model.to(dev, memory_format=memory_format)
    backbones.set_train_mode(model)
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    forward = train.compiled(model) if compiled else model
    cuda = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=mixed and cuda)
    dtype = torch.float16 if cuda else torch.bfloat16
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(dev, memory_format=memory_format), y.to(dev)  # no copy when already there
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=mixed):
            loss = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def precision_step_rates(device: str, arch: str, batch: int, image_size: int, steps: int, mixed: bool,
                         channels_last: bool, num_classes: int = 133,
                         compiled: bool = False) -> tuple[list[float], int]:
    """Images/s of ``steps`` of :func:`training_step` on one resident batch, and the peak device memory
    in bytes (0 off CUDA). The warm-up step pays for cuDNN autotuning, allocator growth and compiling."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    step = training_step(device, arch, image_size, mixed, channels_last, compiled=compiled,
                         num_classes=num_classes)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, image_size, image_size, device=dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    step(x, y)
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, y)
        if cuda:
            torch.cuda.synchronize(dev)
        rates.append(batch / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(dev) if cuda else 0
    del step
    if cuda:
        torch.cuda.empty_cache()
    return rates, peak


@contextlib.contextmanager
def backend_flags(variant: Variant) -> Iterator[None]:
    """The variant's TF32 and cuDNN autotuning switches, restored afterwards."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = variant.tf32
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def facts(device: str) -> dict[str, str]:
    """The card and the software, so the figures are tied to what produced them."""
    out = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    return out


def precision(device: str, batch_sizes: list[int], image_size: int, steps: int,
              compiled: bool) -> list[dict[str, Any]]:
    """Every variant at every batch size; an out-of-memory is a result, not a crash."""
    results = []
    runs = [(batch, variant) for batch in batch_sizes for variant in VARIANTS]
    if compiled:
        runs += [(batch, COMPILED) for batch in batch_sizes]
    for batch, variant in runs:
        entry: dict[str, Any] = {"batch": batch, "variant": variant.label, "image_size": image_size}
        try:
            with backend_flags(variant):
                rates, peak = precision_step_rates(device, "vgg11", batch, image_size, steps, variant.mixed,
                                                   variant.channels_last, compiled=variant.compiled)
            entry.update(rates=rates, peak_bytes=peak)
            print(f"batch {batch:>4} {variant.label:<60} {Stats.of(rates).median:8.0f} img/s  "
                  f"peak {peak / 2**20:7.0f} MiB", flush=True)
        except torch.OutOfMemoryError:
            entry["error"] = "out of memory"
            torch.cuda.empty_cache()
        results.append(entry)
    return results


def compile_agreement(device: str, batch: int, image_size: int, steps: int) -> dict[str, Any]:
    """train.py's CUDA step (AMP + channels-last) on VGG11, plain against ``train.compiled``: the losses per step."""
    cuda = device.startswith("cuda")
    losses: dict[str, list[float]] = {}
    for name in ("plain", "compiled"):
        step = training_step(device, "vgg11", image_size, mixed=cuda, channels_last=True,
                             compiled=name == "compiled", lr=1e-4, dropout=False)
        generator = torch.Generator().manual_seed(1)
        losses[name] = []
        for _ in range(steps):
            x = torch.randn(batch, 3, image_size, image_size, generator=generator)
            y = torch.randint(0, 133, (batch,), generator=generator)
            losses[name].append(float(step(x, y)))
        del step
    worst = max(abs(a - b) / abs(a) for a, b in zip(losses["plain"], losses["compiled"]))
    print(f"compiled vs plain losses over {steps} steps: worst relative difference {worst:.2e}", flush=True)
    return {"batch": batch, "image_size": image_size, "losses": losses, "worst_relative_difference": worst}


def run_train(work: Path, device: str, epochs: int, image_size: int, extra: list[str]) -> dict[str, Any]:
    """train.py as SageMaker runs it, on the digits data, with the GPU visible."""
    from torchvision import models

    from breedline import demo_digits

    work.mkdir(parents=True, exist_ok=True)
    data = work.parent / "digits"
    if not data.is_dir():
        demo_digits.main(["digits", str(data), "--per-class", "40", "--size", "64"])
    weights = work.parent / "vgg11-random.pt"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save(models.vgg11(weights=None).state_dict(), weights)
    env = dict(os.environ)
    env.update({
        "SM_CHANNEL_TRAIN": str(data / "train"), "SM_CHANNEL_VALID": str(data / "valid"),
        "SM_CHANNEL_TEST": str(data / "test"), "SM_MODEL_DIR": str(work / "model"),
        "SM_OUTPUT_DIR": str(work / "output"), "SM_OUTPUT_DATA_DIR": str(work / "output" / "data"),
        "SM_INPUT_CONFIG_DIR": str(work / "config"), "BREEDLINE_CHECKPOINT_DIR": str(work / "checkpoints"),
        "SM_NUM_GPUS": "1" if device.startswith("cuda") else "0",
    })
    argv = [sys.executable, str(ROOT / "ml_scripts" / "train.py"), "--model", "vgg11", "--pretrained_weights",
            str(weights), "--epochs", str(epochs), "--batch_size", "32", "--image_size", str(image_size),
            "--learning_rate", "0.0005", "--profile_steps", "3", "--patience", "5", *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).splitlines()
    from contract import parse_metrics  # the ML modules are on sys.path (see the module docstring)

    metrics = {name: values[-1] for name, values in parse_metrics("\n".join(lines)).items()
               if name.startswith("test_")}
    return {"argv": argv[2:], "returncode": proc.returncode, "seconds": round(seconds, 1), "metrics": metrics,
            "tail": lines[-40:],
            "model_dir": str(work / "model"), "test_dir": str(data / "test"),
            "profiler_files": sorted(p.name for p in (work / "output" / "data").rglob("*") if p.is_file())[:20]}


def run_inference(model_dir: Path, test_dir: Path) -> dict[str, Any]:
    """inference.py on the archive train.py wrote: CUDA serving against the same weights on the CPU."""
    import backbones
    import inference

    unpacked = model_dir  # what SageMaker tars into model.tar.gz and unpacks on the endpoint
    served = inference.model_fn(str(unpacked))
    meta = backbones.read_meta(str(unpacked))
    cpu = backbones.build_model(meta["architecture"], int(meta["num_classes"]),
                             image_size=served.prep.image_size, pretrained=False)
    cpu.load_state_dict(torch.load(unpacked / "model.pt", map_location="cpu", weights_only=True))
    cpu.eval()
    agree = total = 0
    latencies = []
    for path in sorted(test_dir.rglob("*.jpg")):
        body = path.read_bytes()
        start = time.perf_counter()
        answer = json.loads(inference.predict_bytes(body, "image/jpeg", served))
        latencies.append(time.perf_counter() - start)
        image = inference.input_fn(body, "image/jpeg")
        with torch.inference_mode():
            logits = cpu(inference.preprocess(image, served).to("cpu", memory_format=torch.contiguous_format))
        total += 1
        agree += int(served.class_names[int(logits.argmax(1))] == answer["label"])
    return {"device": str(served.device), "backend": served.backend, "images": total,
            "top1_agreement_with_cpu": agree / total if total else None,
            "latency_ms_median": 1e3 * Stats.of(latencies).median if latencies else None}


def latest_recorded() -> Path | None:
    """The newest committed result of this script (file names sort by date)."""
    files = sorted(RECORDED.glob("gpu-*.json"), key=lambda path: path.name.rsplit("-", 3)[-3:])
    return files[-1] if files else None


def add_rows(section: Section, results: dict[str, Any], source: str, recorded: bool) -> None:
    """Section 4's GPU rows and notes from one result of :func:`precision` (and the checks, if run).

    One row per batch size for the issue's comparison (AMP + channels-last
    against fp32 + channels-first, target 2x) and, where measured, one for
    ``torch.compile`` on top of it, each against the same fp32 baseline.
    """
    device = results["facts"]["device"]
    tag = f"{device} (recorded {results['facts']['date'][:10]})" if recorded else device
    by_key = {(entry["batch"], entry["variant"]): entry for entry in results["precision"]}
    strict, amp_cl = VARIANTS[1].label, VARIANTS[4].label
    for batch in sorted({entry["batch"] for entry in results["precision"]}):
        base = by_key.get((batch, BASELINE))
        if base is None or "rates" not in base:
            section.notes.append(f"{device}: vgg11 at batch {batch} does not fit in GPU memory ({source}).")
            continue
        base_stats = Stats.of(base["rates"])
        for label, target in ((amp_cl, ">= 2x"), (COMPILED.label, "")):
            fast = by_key.get((batch, label))
            if fast is None or "rates" not in fast:
                continue
            note = f"peak memory {fast['peak_bytes'] / 2**20:.0f} MiB vs {base['peak_bytes'] / 2**20:.0f} MiB"
            if label == amp_cl and "rates" in by_key.get((batch, strict), {}):
                vs_strict = Stats.of(fast["rates"]).median / Stats.of(by_key[(batch, strict)]["rates"]).median
                note += f"; {vs_strict:.2f}x strict fp32 (no TF32, as on a T4)"
            row = Row("train_step", f"{tag}: vgg11, batch {batch}, {fast['image_size']} px, {label} vs "
                      f"{BASELINE}", Stats.of(fast["rates"]), "img/s", baseline=base_stats,
                      higher_is_better=True, target=target, note=note,
                      reproduce=f"{results['command']} --out FILE (on a GPU)" if recorded else "")
            if target:
                row.met = (row.speedup or 0.0) >= 2.0
            section.rows.append(row)
    facts = results["facts"]
    section.notes.append(
        f"GPU rows: {device}, driver {facts.get('driver', '?')}, torch {facts['torch']}, CUDA {facts['cuda']}, "
        f"cuDNN {facts['cudnn']}, {facts['date']}; {source}. The fp32 baseline is PyTorch's default, in which "
        "cuDNN runs fp32 convolutions as TF32 on this card; a T4 (ml.g4dn, the training default) has no TF32, "
        "so its fp32 is the strict-fp32 variant. The fastest AMP steps (the max column) are most likely the first "
        "ones, where GradScaler skips the optimizer step while it finds its scale (the fp32 rows have no such "
        "outliers): compare medians.")
    agreement = results.get("compile_agreement")
    if agreement:
        section.notes.append(
            f"torch.compile gives train.py's CUDA step's losses: {len(agreement['losses']['plain'])} AMP + "
            f"channels-last steps of vgg11 at batch {agreement['batch']}, worst relative difference "
            f"{agreement['worst_relative_difference']:.1e} (dropout off: compiled dropout draws other masks).")
    for key, label in (("train", "train.py on CUDA"), ("train_compiled", "train.py --compile true on CUDA")):
        run = results.get(key)
        if run:
            epochs = [line for line in run["tail"] if "epoch_seconds=" in line]
            section.notes.append(
                f"{label} (digits, vgg11 from a random-init weights file, 64 px): exit {run['returncode']}, "
                f"{run['seconds']} s, {run['metrics']}; {'; '.join(epochs)}.")
    served = results.get("inference")
    if served:
        section.notes.append(
            f"inference.py on {served['device']} ({served['backend']}): top-1 equal to the same weights on the CPU "
            f"for {served['top1_agreement_with_cpu']:.0%} of {served['images']} test images, "
            f"{served['latency_ms_median']:.1f} ms per request (median).")


def report(section: Section, quick: bool) -> None:
    """Section 4's GPU part: measured here when CUDA is present, else the newest recorded run."""
    if torch.cuda.is_available():
        from chalicelib.config import Settings

        sizes = [int(b) for b in Settings.from_env().batch_sizes]
        steps, image_size = (2, 64) if quick else (10, 224)
        results = {"facts": facts("cuda"),
                   "precision": precision("cuda", sizes[:1] if quick else sizes, image_size, steps, not quick)}
        add_rows(section, results, "measured in this run", recorded=False)
        return
    path = latest_recorded()
    if path is None:
        section.notes.append("GPU comparison: not measured (no GPU here and no recorded run in bench/recorded/).")
        return
    results = json.loads(path.read_text(encoding="utf-8"))
    add_rows(section, results, f"recorded on a GPU machine lent by the device tool: `{results['command']}` "
                               f"wrote bench/recorded/{path.name}", recorded=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs, not figures")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile (compiles at each batch size) and train.py --compile true")
    args = parser.parse_args(argv)

    from chalicelib.config import Settings

    batch_sizes = [int(b) for b in Settings.from_env().batch_sizes]
    steps, image_size = (2, 32) if args.quick else (20, 224)
    if args.quick:
        batch_sizes = batch_sizes[:1]
    command = "python -m bench.gpu_check" + (" --compile" if args.compile else "")
    results: dict[str, Any] = {"facts": facts(args.device), "command": command,
                               "steps": steps}
    results["precision"] = precision(args.device, batch_sizes, image_size, steps, args.compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")  # kept if what follows dies
    if args.compile:
        results["compile_agreement"] = compile_agreement(args.device, 32, image_size, 5)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        epochs, size = (1, 32) if args.quick else (3, 64)
        train = run_train(Path(tmp) / "plain", args.device, epochs, size, [])
        results["train"] = {k: v for k, v in train.items() if k not in ("model_dir", "test_dir")}
        print("\n".join(train["tail"][-8:]), flush=True)
        if train["returncode"] == 0:
            results["inference"] = run_inference(Path(train["model_dir"]), Path(train["test_dir"]))
            print(json.dumps(results["inference"]), flush=True)
        if args.compile:
            fast = run_train(Path(tmp) / "compiled", args.device, epochs, size, ["--compile", "true"])
            results["train_compiled"] = {k: v for k, v in fast.items() if k not in ("model_dir", "test_dir")}
            print("\n".join(fast["tail"][-4:]), flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    failed = train["returncode"] != 0 or results.get("train_compiled", {}).get("returncode", 0) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
