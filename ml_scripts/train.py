"""The one training entry point: every tuning trial and the final training job run this.

It follows SageMaker's script-mode container contract byte for byte, so the
same file runs in AWS's PyTorch training containers and under the local
runtime (see docs/ml.md for the full contract):

- channels ``train``, ``valid``, ``test`` in ``SM_CHANNEL_*`` (folder per class);
- hyperparameters as CLI args and in ``$SM_INPUT_CONFIG_DIR/hyperparameters.json``
  (values may be JSON-quoted, ``sagemaker_*`` keys are the toolkit's, not ours);
- the model to ``SM_MODEL_DIR``, other output to ``SM_OUTPUT_DATA_DIR``,
  checkpoints to ``BREEDLINE_CHECKPOINT_DIR`` (``/opt/ml/checkpoints``);
- metrics as ``name=value`` stdout lines from ``metric_definitions``;
- on failure a non-zero exit and the reason in ``$SM_OUTPUT_DIR/failure``.

Imports are top-level (``import common``) because SageMaker makes the unpacked
source dir the working directory and puts it on ``sys.path``; running
``python ml_scripts/train.py`` does the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import common
import metric_definitions

HERE = Path(__file__).resolve().parent
#: Files copied into ``model/code/`` so ``model.tar.gz`` serves on its own.
SERVING_FILES: tuple[str, ...] = ("inference.py", "common.py", "metric_definitions.py")
SERVING_REQUIREMENTS = "serving_requirements.txt"


# --------------------------------------------------------------------------- contract


def env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


class Paths:
    """Every path the container contract defines, read once from the environment."""

    def __init__(self) -> None:
        self.train = env_path("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
        self.valid = env_path("SM_CHANNEL_VALID", "/opt/ml/input/data/valid")
        self.test = env_path("SM_CHANNEL_TEST", "/opt/ml/input/data/test")
        self.model_dir = env_path("SM_MODEL_DIR", "/opt/ml/model")
        self.output_dir = env_path("SM_OUTPUT_DIR", "/opt/ml/output")
        self.output_data_dir = env_path("SM_OUTPUT_DATA_DIR", str(self.output_dir / "data"))
        self.config_dir = env_path("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")
        self.checkpoint_dir = env_path("BREEDLINE_CHECKPOINT_DIR", "/opt/ml/checkpoints")


def normalise_value(value: Any) -> str:
    """Undo JSON quoting: ``'"\\"32\\""'`` -> ``'32'``.

    SageMaker's tuner hands categorical values back JSON-encoded, sometimes
    twice; hyperparameters.json holds every value as a JSON string.
    """
    while isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            break
    return value if isinstance(value, str) else json.dumps(value)


def _typed(kind: type) -> Any:
    def convert(text: str) -> Any:
        text = normalise_value(text)
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(f"{text} is not a whole number")
            return int(number)
        return kind(text)

    convert.__name__ = kind.__name__
    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"invalid hyperparameters: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Fine-tune a pretrained CNN on a folder-per-class image data set.")
    p.add_argument("--learning_rate", type=_typed(float), default=1e-3)
    p.add_argument("--batch_size", type=_typed(int), default=32)
    p.add_argument("--epochs", type=_typed(int), default=5)
    p.add_argument("--model", type=_typed(str), default=common.DEFAULT_ARCHITECTURE, choices=common.ARCHITECTURES)
    p.add_argument("--pretrained_weights", type=_typed(str), default=None, help="local ImageNet weights file")
    p.add_argument("--image_size", type=_typed(int), default=224)
    p.add_argument("--patience", type=_typed(int), default=3, help="epochs without a better valid_loss")
    p.add_argument("--weight_decay", type=_typed(float), default=0.0)
    p.add_argument("--trainable_blocks", type=_typed(int), default=None, help="backbone stages to fine-tune")
    p.add_argument("--debug_out", type=_typed(str), default=None, help="smdebug output dir without a JSON config")
    p.add_argument("--debug_save_interval", type=_typed(int), default=10)
    p.add_argument("--profile_steps", type=_typed(int), default=0)
    p.add_argument("--num_workers", type=_typed(int), default=None)
    p.add_argument("--seed", type=_typed(int), default=42)
    p.add_argument(
        "--channels_last", type=_typed(str), default="auto", choices=("auto", "true", "false"),
        help="auto: only with CUDA; true also helps on CPU (1.8x for efficientnet_lite0 here)",
    )
    p.add_argument(
        "--compile", type=_typed(str), default="false", choices=("false", "true"),
        help="torch.compile the model: 1.65x the steps/s of AMP + channels-last for vgg11 at batch 256 on an "
        "H200, after about 30 s of compiling per job (docs/benchmarks.md); off by default",
    )
    return p


def hyperparameter_argv(config_dir: Path) -> list[str]:
    """hyperparameters.json as CLI args (``sagemaker_*`` keys dropped)."""
    path = config_dir / "hyperparameters.json"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        values = json.load(fh)
    argv: list[str] = []
    for key, value in values.items():
        if not key.startswith("sagemaker_"):
            argv += [f"--{key}", normalise_value(value)]
    return argv


def parse_args(argv: list[str], config_dir: Path) -> argparse.Namespace:
    """File first, CLI second: argparse keeps the last value, so the CLI wins."""
    args, unknown = build_parser().parse_known_args(hyperparameter_argv(config_dir) + argv)
    if unknown:
        print(f"ignoring unknown arguments: {' '.join(unknown)}", flush=True)
    for name in ("learning_rate", "batch_size", "epochs", "image_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"invalid hyperparameters: --{name} must be positive, got {getattr(args, name)}")
    return args


def cpu_count() -> int:
    return max(1, int(normalise_value(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)))


def default_num_workers(cpus: int, cached: bool, cuda: bool = False) -> int:
    """DataLoader worker processes for one split when ``--num_workers`` is not given.

    A cached split (``CachedImageDataset.cached``: train and valid, decoded once
    per job) trained on the CPU gets 0: the main process loads in-process.
    Nothing is left to decode, an item is a uint8 crop (a memcpy), so a worker
    process only adds work on the same cores the model needs: collating into
    shared memory, pickling, waking the main process. Measured on 2 cores
    (bench section 3): in-process loading is 1.6-2x as fast as one worker.

    An uncached split (the test split, read once, or a data set over the
    cache limit) still decodes JPEGs per item, which parallelises; and with a
    GPU, loading in parallel overlaps the GPU's work, where in-process loading
    would add to every step (the loop waits for the GPU each step: GradScaler's
    inf check, the loss read-out). Both get half the cores, at most 8, the rest
    go to the main process.
    """
    if cached and not cuda:
        return 0
    return min(8, cpus // 2)


def metric(name: str, value: float, epoch: int | None = None) -> None:
    print(metric_definitions.format_metric(name, value, epoch), flush=True)


def write_failure(paths: Paths, reason: str) -> None:
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        (paths.output_dir / "failure").write_text(reason + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"could not write the failure file: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- debugger


class Debugger:
    """smdebug if it imports and starts; a no-op that said so once if not.

    smdebug is not in AWS's PyTorch 2.2+ containers and needs numpy<2; a broken
    install must never cost a training run.
    """

    def __init__(self, paths: Paths, args: argparse.Namespace) -> None:
        self.hook: Any = None
        self.modes: Any = None
        config = paths.config_dir / "debughookconfig.json"
        if not config.is_file() and not args.debug_out:
            return
        try:
            if int(np.__version__.split(".")[0]) >= 2:
                raise RuntimeError(f"smdebug 1.0.34 needs numpy<2, found numpy {np.__version__}")
            import smdebug.pytorch as smd

            if config.is_file():
                self.hook = smd.Hook.create_from_json_file(str(config))
                where = f"{config}"
            else:
                self.hook = smd.Hook(
                    out_dir=args.debug_out,
                    save_config=smd.SaveConfig(save_interval=max(1, args.debug_save_interval)),
                    include_collections=["losses"],
                )
                where = f"--debug_out {args.debug_out}"
            self.modes = smd.modes
            print(f"smdebug hook active ({where})", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure: train without it, say so once
            self.hook = None
            print(f"smdebug unavailable, training without Debugger tensors: {type(exc).__name__}: {exc}", flush=True)

    def register(self, model: nn.Module, loss_fn: nn.Module) -> None:
        if self.hook is None:
            return
        try:
            self.hook.register_module(model)
            self.hook.register_loss(loss_fn)
        except Exception as exc:  # noqa: BLE001
            print(f"smdebug could not register the model, training without it: {exc}", flush=True)
            self.hook = None

    def set_mode(self, phase: str) -> None:
        if self.hook is not None:
            self.hook.set_mode({"train": self.modes.TRAIN, "valid": self.modes.EVAL, "test": self.modes.PREDICT}[phase])

    def close(self) -> None:
        if self.hook is not None:
            with contextlib.suppress(Exception):
                self.hook.close()


# --------------------------------------------------------------------------- profiler


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


# --------------------------------------------------------------------------- training


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` of ``model`` (``--compile true``), which trains and evaluates exactly like it.

    Opt-in because its worth depends on the job: on an H200 it took vgg11's
    AMP + channels-last step from 11.5k to 19k img/s at batch 256, but each job
    pays the compilation again (about 30 s there: train and eval modes, the last
    short batch), and it was not measured with the final job's Debugger hooks.
    ``tests/ml`` checks that a compiled step gives the plain step's loss and weights.
    """
    print("torch.compile: the model is compiled on its first batches", flush=True)
    return torch.compile(model)


class Trainer:
    def __init__(self, args: argparse.Namespace, paths: Paths) -> None:
        self.args = args
        self.paths = paths
        gpus = normalise_value(os.environ.get("SM_NUM_GPUS") or "")
        # SageMaker says how many GPUs the job was given; "0" means use none even if CUDA shows one.
        self.cuda = torch.cuda.is_available() and (not gpus.strip() or int(float(gpus)) > 0)
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.channels_last = args.channels_last == "true" or (args.channels_last == "auto" and self.cuda)
        self.loss_fn = nn.CrossEntropyLoss()
        #: How uint8 batches become model input (``common.batch_to_model_input``).
        self.prep = common.Preprocessing(image_size=args.image_size)

    def autocast(self) -> Any:
        if self.cuda:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def run_epoch(
        self,
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        phase: str,
        debugger: Debugger,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        profiler: StepProfiler | None = None,
    ) -> dict[str, float]:
        train = optimizer is not None
        if train:
            common.set_train_mode(model)
        else:
            model.eval()
        debugger.set_mode(phase)
        total_loss, correct, seen, skipped = 0.0, 0, 0, 0
        grad = torch.enable_grad() if train else torch.no_grad()
        iterator = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                images, labels, bad = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            skipped += bad
            if len(labels) == 0:
                continue
            # uint8 NHWC batches move as uint8 and are normalised on the device, once per batch.
            images = common.batch_to_model_input(images, self.prep, self.device, self.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with grad, self.autocast():
                logits = model(images)
                loss = self.loss_fn(logits, labels)
            if train:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            n = len(labels)
            total_loss += float(loss.detach()) * n
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += n
            if profiler is not None:
                if self.cuda:
                    torch.cuda.synchronize()
                profiler.record(t1 - t0, time.perf_counter() - t1)
        if seen == 0:
            raise common.DataSetError(f"no readable images in the {phase} split ({skipped} skipped)")
        return {"loss": total_loss / seen, "accuracy": correct / seen, "skipped": skipped, "seen": seen}

    def num_workers(self, dataset: torch.utils.data.Dataset) -> int:
        """``--num_workers`` if given, else :func:`default_num_workers` for this split."""
        if self.args.num_workers is not None:
            return max(0, self.args.num_workers)
        return default_num_workers(cpu_count(), cached=bool(getattr(dataset, "cached", False)), cuda=self.cuda)

    def loader(
        self, dataset: torch.utils.data.Dataset, shuffle: bool, workers: int | None = None
    ) -> torch.utils.data.DataLoader:
        """Batches of (uint8 NHWC images, labels, bad-item count); ``workers`` None: :meth:`num_workers`."""
        if workers is None:
            workers = self.num_workers(dataset)
        generator = torch.Generator()
        generator.manual_seed(self.args.seed)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.args.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=common.collate_skip_bad,
            pin_memory=self.cuda,
            persistent_workers=workers > 0,
            generator=generator,
        )


def cosine_factor(epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (1-based): cosine from 1 down to near 0.

    A pure function of the epoch number, so a resumed job continues the same schedule.
    """
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(1, epochs)))


def _signature(args: argparse.Namespace, class_names: list[str]) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this job."""
    return {"model": args.model, "class_names": class_names, "image_size": args.image_size}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(paths: Paths, signature: dict[str, Any]) -> dict[str, Any] | None:
    path = paths.checkpoint_dir / "checkpoint.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn file from a killed job: start over, say so
        print(f"ignoring unreadable checkpoint {path}: {exc}", flush=True)
        return None
    if state.get("signature") != signature:
        print(f"ignoring checkpoint {path}: it belongs to another model or data set", flush=True)
        return None
    best_path = paths.checkpoint_dir / "best_model.pt"
    state["best_state"] = torch.load(best_path, map_location="cpu", weights_only=True) if best_path.is_file() else None
    return state


def save_model(
    paths: Paths,
    model_state: dict[str, torch.Tensor],
    args: argparse.Namespace,
    class_names: list[str],
    prep: common.Preprocessing,
    metrics: dict[str, float],
    extra: dict[str, Any],
) -> None:
    import torchvision

    model_dir = paths.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, model_dir / "model.pt")
    meta = {
        "architecture": args.model,
        "class_names": class_names,
        "num_classes": len(class_names),
        **prep.to_meta(),
        "metrics": metrics,
        "hyperparameters": {
            k: getattr(args, k) for k in ("learning_rate", "batch_size", "epochs", "image_size", "patience", "seed")
        },
        "framework": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        **extra,
    }
    (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    for name in SERVING_FILES:
        shutil.copyfile(HERE / name, code / name)  # copyfile follows symlinks: real files in the tarball
    shutil.copyfile(HERE / SERVING_REQUIREMENTS, code / "requirements.txt")


def train(args: argparse.Namespace, paths: Paths) -> dict[str, float]:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    cpus = cpu_count()

    splits = common.scan_dataset(paths.train, paths.valid, paths.test)
    class_names = splits["train"].class_names
    print(
        f"data: {len(class_names)} classes, train={len(splits['train'])} valid={len(splits['valid'])} "
        f"test={len(splits['test'])} images; model={args.model} image_size={args.image_size} cpus={cpus}",
        flush=True,
    )
    trainer = Trainer(args, paths)
    prep = trainer.prep
    model = common.build_model(
        args.model,
        len(class_names),
        image_size=args.image_size,
        pretrained_weights=args.pretrained_weights,
        trainable_blocks=args.trainable_blocks,
    )
    trainable, total = common.count_parameters(model)
    print(f"model: {total:,} parameters, {trainable:,} trainable; device={trainer.device}", flush=True)

    # Train and valid are read every epoch: decode them once into a uint8 cache.
    t0 = time.perf_counter()
    datasets = {
        "train": common.CachedImageDataset(splits["train"], prep, train=True, cache=True, threads=cpus),
        "valid": common.CachedImageDataset(splits["valid"], prep, train=False, cache=True, threads=cpus),
        "test": common.CachedImageDataset(splits["test"], prep, train=False, cache=False),
    }
    print(f"decoded train+valid once in {time.perf_counter() - t0:.1f}s", flush=True)
    skipped: dict[str, list[str]] = {name: list(ds.skipped) for name, ds in datasets.items()}
    for name in ("train", "valid"):
        if len(datasets[name]) == 0:
            raise common.DataSetError(f"no readable images in {splits[name].root} ({len(skipped[name])} skipped)")
    # On the CPU cached splits load in-process, the uncached test split with workers (default_num_workers).
    loaders = {name: trainer.loader(ds, shuffle=name == "train") for name, ds in datasets.items()}
    print("loader workers: " + ", ".join(f"{name}={loader.num_workers}" for name, loader in loaders.items())
          + ("" if args.num_workers is None else " (--num_workers)"), flush=True)

    model = model.to(trainer.device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        common.parameter_groups(model, args.model, args.learning_rate), weight_decay=args.weight_decay
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.cuda)
    debugger = Debugger(paths, args)
    debugger.register(model, trainer.loss_fn)
    # The compiled wrapper shares the module's parameters: checkpoints, best_state
    # and model.pt still come from ``model`` and keep their plain key names.
    net = compiled(model) if args.compile == "true" else model

    signature = _signature(args, class_names)
    start_epoch, best_loss, best_epoch, bad_epochs, finished = 1, float("inf"), 0, 0, False
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    checkpoint = load_checkpoint(paths, signature)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch = int(checkpoint["epoch"]) + 1
        best_loss, best_epoch = float(checkpoint["best_valid_loss"]), int(checkpoint["best_epoch"])
        bad_epochs = int(checkpoint["bad_epochs"])
        # An early-stopped job stays stopped; one that ran out of epochs goes on if --epochs grew.
        finished = bad_epochs >= args.patience
        best_state, history = checkpoint["best_state"], list(checkpoint["history"])
        print(f"resumed from checkpoint: epoch={checkpoint['epoch']} best_epoch={best_epoch}", flush=True)
    paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    profiler = (
        StepProfiler(args.profile_steps, paths.output_data_dir / "profiler", trainer.cuda)
        if args.profile_steps > 0 and start_epoch <= args.epochs and not finished
        else None
    )
    epoch = start_epoch
    for epoch in range(start_epoch, args.epochs + 1):
        if finished:
            break
        t_epoch = time.perf_counter()
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * cosine_factor(epoch, args.epochs)
        tr = trainer.run_epoch(net, loaders["train"], "train", debugger, optimizer, scaler, profiler)
        va = trainer.run_epoch(net, loaders["valid"], "valid", debugger)
        seconds = time.perf_counter() - t_epoch
        metric("train_loss", tr["loss"], epoch)
        metric("train_accuracy", tr["accuracy"], epoch)
        metric("valid_loss", va["loss"], epoch)
        metric("valid_accuracy", va["accuracy"], epoch)
        metric("epoch_seconds", seconds, epoch)
        history.append({"epoch": epoch, "train_loss": tr["loss"], "valid_loss": va["loss"],
                        "valid_accuracy": va["accuracy"], "epoch_seconds": seconds})
        if va["loss"] < best_loss:
            best_loss, best_epoch, bad_epochs = va["loss"], epoch, 0
            best_state = _cpu_state(model)
            _save_atomic(best_state, paths.checkpoint_dir / "best_model.pt")
        else:
            bad_epochs += 1
        _save_atomic(
            {
                "epoch": epoch, "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                "best_valid_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "history": history, "signature": signature,
            },
            paths.checkpoint_dir / "checkpoint.pt",
        )
        if bad_epochs >= args.patience:
            print(f"early stopping after epoch {epoch}: no better valid_loss for {bad_epochs} epochs", flush=True)
            break
    if profiler is not None:
        profiler.finish()

    if best_state is not None:
        model.load_state_dict(best_state)
    te = trainer.run_epoch(net, loaders["test"], "test", debugger)
    skipped["test"] = [f"{te['skipped']} file(s)"] if te["skipped"] else []
    metric("test_loss", te["loss"])
    metric("test_accuracy", te["accuracy"])
    debugger.close()

    counts = {name: (len(v) if name != "test" else te["skipped"]) for name, v in skipped.items()}
    for name, count in counts.items():
        if count:
            print(f"skipped {count} unreadable image(s) in {name}: {skipped[name][:10]}", flush=True)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    (paths.output_data_dir / "skipped_images.json").write_text(
        json.dumps({"counts": counts, "files": skipped}, indent=2), encoding="utf-8"
    )
    metrics = {
        "best_valid_loss": best_loss,
        "valid_accuracy": next((h["valid_accuracy"] for h in history if h["epoch"] == best_epoch), float("nan")),
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
    }
    save_model(
        paths, best_state or _cpu_state(model), args, class_names, prep, metrics,
        {"best_epoch": best_epoch, "epochs_run": len(history), "skipped_images": counts},
    )
    print(f"model saved to {paths.model_dir} (best epoch {best_epoch})", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    paths = Paths()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, paths.config_dir)
        train(args, paths)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure: exit non-zero with the reason last on stderr
        known = isinstance(exc, (common.DataSetError, common.PretrainedWeightsError, ValueError))
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if not known:
            traceback.print_exc()
        write_failure(paths, reason)
        sys.stdout.flush()
        print(reason, file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
