"""The one training entry point: every tuning trial and the final training job run this.

It follows SageMaker's script-mode container contract byte for byte, so the
same file runs in AWS's PyTorch training containers and under the local
runtime (see docs/ml.md for the full contract; :mod:`job_config` reads it):

- channels ``contract.CHANNELS`` (``train``, ``valid``, ``test``) in ``SM_CHANNEL_*`` (folder per class),
  and optionally ``SM_CHANNEL_PRETRAINED`` with the ``--pretrained_weights`` file;
- hyperparameters as CLI args and in ``$SM_INPUT_CONFIG_DIR/hyperparameters.json``
  (values may be JSON-quoted, ``sagemaker_*`` keys are the toolkit's, not ours);
- the model to ``SM_MODEL_DIR``, other output to ``SM_OUTPUT_DATA_DIR``,
  checkpoints to ``BREEDLINE_CHECKPOINT_DIR/<job name>/`` (``/opt/ml/checkpoints``, :mod:`checkpoints`);
- metrics as ``name=value`` stdout lines (``contract.format_metric``);
- on failure a non-zero exit and the reason in ``$SM_OUTPUT_DIR/failure``.

The shape is torchvision's classification reference: :func:`train_one_epoch`,
:func:`evaluate` and :func:`main`, with the data set in :mod:`image_folder`,
the models in :mod:`backbones`, Debugger in :mod:`debugging` and the step
profiler in :mod:`profiling`. Launched by torchrun on several processes it
trains with DistributedDataParallel (:mod:`distributed`, docs/scale.md).

Imports are top-level (``import contract``) because SageMaker makes the unpacked
source dir the working directory and puts it on ``sys.path``; running
``python ml_scripts/train.py`` does the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import abstention
import checkpoints
import distributed
import evaluation
import final_job
from abstention_training import fit_abstention
from backbones import PretrainedWeightsError, build_model, count_parameters, parameter_groups, set_train_mode
from checkpoints import Progress
from contract import CHANNELS, EVALUATION_FILE, format_metric
from debugging import Debugger
from final_job import SERVING_FILES, SERVING_REQUIREMENTS, save_model  # noqa: F401 (train.SERVING_FILES)
from image_folder import (CachedImageDataset, DataSetError, Split, batch_to_model_input, collate_skip_bad,
                          scan_dataset)
from job_config import (Paths, cpu_count, gpu_allowed, parse_args, report_skipped, run_hyperparameters,
                        use_pretrained_channel, write_failure)
from loaders import build_loaders, default_num_workers, make_loader
from presets import Preprocessing
from profiling import StepProfiler, log_scalar

#: Per epoch in ``model_meta.json``'s ``history``: the epoch metric lines' values (None if a resumed
#: checkpoint's history predates the key).
HISTORY_KEYS: tuple[str, ...] = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                                 "valid_balanced_accuracy", "valid_macro_f1")


def metric(name: str, value: float, epoch: int | None = None) -> None:
    """One metric line (rank 0 only calls it under DDP: the lines appear once per job)."""
    print(format_metric(name, value, epoch), flush=True)
    log_scalar(name, value, epoch)  # a TensorBoard scalar too, when --profile_steps is on


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` of ``model`` (``--compile true``), which trains and evaluates exactly like it.

    Opt-in because its worth depends on the job: it speeds up GPU steps
    (docs/benchmarks.md, section 4), but each job pays the compilation again
    (train and eval modes, the last short batch), and it was not measured with
    the final job's Debugger hooks.
    ``tests/ml`` checks that a compiled step gives the plain step's loss and weights.
    """
    print("torch.compile: the model is compiled on its first batches", flush=True)
    return torch.compile(model)


class Trainer:
    """The device, loss and preprocessing of one job, its loaders, and the one loop over a split."""

    def __init__(self, args: argparse.Namespace, paths: Paths | None) -> None:
        self.args = args
        self.paths = paths
        self.cuda = torch.cuda.is_available() and gpu_allowed()
        #: Who this process is among those training together (one process without torchrun).
        self.cluster = distributed.start(self.cuda)
        self.device = distributed.device(self.cluster, self.cuda)
        self.channels_last = args.channels_last == "true" or (args.channels_last == "auto" and self.cuda)
        self.loss_fn = nn.CrossEntropyLoss()
        #: The model's class count (set by :func:`train` once the data is scanned).
        self.num_classes = 0
        #: How uint8 batches become model input (``image_folder.batch_to_model_input``).
        self.prep = Preprocessing(image_size=args.image_size)

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
        collect: bool = False,
        shared: bool = False,
    ) -> dict[str, Any]:
        """One pass over ``loader``: training steps when ``optimizer`` is given, else evaluation.

        An evaluation also returns ``balanced_accuracy`` and ``macro_f1``; with
        ``collect`` (a loader of ``image_folder.collate_indexed`` batches) it
        returns every image's float32 ``logits``, ``labels`` and dataset ``indices`` too.
        ``shared``: every rank ran its shard of the split, and the counts, sums and
        confusion matrix are added up over the ranks, so the result is the whole split's.
        """
        train = optimizer is not None
        if train:
            set_train_mode(model)
        else:
            model.eval()
        debugger.set_mode(phase)
        total_loss, correct, seen, skipped = 0.0, 0, 0, 0
        collector = None if train else evaluation.Collector(keep_logits=collect)
        grad = torch.enable_grad() if train else torch.no_grad()
        iterator = iter(loader)
        uneven = distributed.uneven_steps(model, self.cluster) if train else contextlib.nullcontext()
        with uneven:
            while True:
                t0 = time.perf_counter()
                try:
                    images, labels, bad, *indices = next(iterator)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                skipped += bad
                if len(labels) == 0:
                    continue
                # uint8 NHWC batches move as uint8 and are normalised on the device, once per batch.
                images = batch_to_model_input(images, self.prep, self.device, self.channels_last)
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
                if collector is not None:
                    collector.add(logits.detach(), labels, indices[0] if indices else None)
                if profiler is not None:
                    if self.cuda:
                        torch.cuda.synchronize()
                    profiler.record(t1 - t0, time.perf_counter() - t1)
        cluster = self.cluster if shared else distributed.Cluster()
        # plain floats (a checkpoint's history loads with weights_only=True, which refuses numpy scalars)
        total_loss, correct, seen, skipped = distributed.sum_across(cluster, [total_loss, correct, seen, skipped]).tolist()
        seen, skipped = int(seen), int(skipped)
        if seen == 0:
            raise DataSetError(f"no readable images in the {phase} split ({skipped} skipped)")
        result = {"loss": total_loss / seen, "accuracy": correct / seen, "skipped": skipped, "seen": seen}
        if collector is None:
            return result
        return {**result, **collector.result(self.num_classes, lambda a: distributed.sum_across(cluster, a))}

    def num_workers(self, dataset: torch.utils.data.Dataset) -> int:
        """``--num_workers`` if given, else :func:`default_num_workers` for this split."""
        if self.args.num_workers is not None:
            return max(0, self.args.num_workers)
        return default_num_workers(cpu_count(), cached=bool(getattr(dataset, "cached", False)), cuda=self.cuda)

    def loader(
        self, dataset: torch.utils.data.Dataset, shuffle: bool, workers: int | None = None,
        collate: Any = collate_skip_bad, sampler: Any = None,
    ) -> torch.utils.data.DataLoader:
        """:func:`loaders.make_loader` for this job; ``workers`` None: :meth:`num_workers`."""
        if workers is None:
            workers = self.num_workers(dataset)
        return make_loader(self.args, dataset, shuffle, workers, self.cuda, collate, sampler)


@dataclass
class Run:
    """What the epoch loop works on, built once per job by :func:`prepare_run`."""

    #: The module whose weights are checkpointed and saved, with their plain key names.
    model: nn.Module
    #: What runs the batches: ``model`` itself, or its compiled wrapper (which shares its parameters).
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    #: Each parameter group's rate before the cosine schedule (and before a resumed optimizer's).
    base_lrs: list[float]
    debugger: Debugger


def cosine_factor(epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (1-based): cosine from 1 down to near 0.

    A pure function of the epoch number, so a resumed job continues the same schedule.
    """
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(1, epochs)))


def train_one_epoch(
    trainer: Trainer, run: Run, loader: torch.utils.data.DataLoader, epoch: int, profiler: StepProfiler | None
) -> dict[str, float]:
    """One pass over the train split (this rank's shard, reshuffled per epoch) at this epoch's cosine rate."""
    for group, base in zip(run.optimizer.param_groups, run.base_lrs):
        group["lr"] = base * cosine_factor(epoch, trainer.args.epochs)
    if isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    return trainer.run_epoch(run.net, loader, "train", run.debugger, run.optimizer, run.scaler, profiler,
                             shared=True)


def evaluate(
    trainer: Trainer, run: Run, loader: torch.utils.data.DataLoader, phase: str, collect: bool = False,
    shared: bool = False,
) -> dict[str, Any]:
    """Loss, accuracy, balanced accuracy and macro-F1 on the valid or test split, without gradients.

    On the plain module, never the DDP wrapper: its forward would broadcast buffers,
    a collective that hangs when ranks hold shards of different lengths.
    """
    net = run.model if trainer.cluster.distributed else run.net
    return trainer.run_epoch(net, loader, phase, run.debugger, collect=collect, shared=shared)


def load_splits(args: argparse.Namespace, paths: Paths, cpus: int) -> dict[str, Split]:
    """Scan the channels (failing at once on a bad layout) and log what was found."""
    splits = scan_dataset(*paths.channels.values())
    counts = " ".join(f"{name}={len(splits[name])}" for name in CHANNELS)
    print(
        f"data: {len(splits['train'].class_names)} classes, {counts} images; model={args.model} "
        f"image_size={args.image_size} cpus={cpus}",
        flush=True,
    )
    return splits


def build_datasets(splits: dict[str, Split], prep: Preprocessing, cpus: int) -> dict[str, CachedImageDataset]:
    """Train and valid are read every epoch: decode them once into a uint8 cache; test decodes on demand."""
    t0 = time.perf_counter()
    datasets = {
        "train": CachedImageDataset(splits["train"], prep, train=True, cache=True, threads=cpus),
        "valid": CachedImageDataset(splits["valid"], prep, train=False, cache=True, threads=cpus),
        "test": CachedImageDataset(splits["test"], prep, train=False, cache=False),
    }
    print(f"decoded train+valid once in {time.perf_counter() - t0:.1f}s", flush=True)
    for name in ("train", "valid"):
        if len(datasets[name]) == 0:
            skipped = len(datasets[name].skipped)
            raise DataSetError(f"no readable images in {splits[name].root} ({skipped} skipped)")
    return datasets


def prepare_run(args: argparse.Namespace, paths: Paths, trainer: Trainer, model: nn.Module) -> Run:
    """The model on its device, Adam over the parameter groups, the GradScaler, Debugger, ``--compile``."""
    model = model.to(trainer.device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cluster = trainer.cluster
    lr = distributed.scaled_learning_rate(args.learning_rate, args.batch_size, cluster.world_size,
                                          args.lr_reference_batch)
    if lr != args.learning_rate and cluster.is_main:
        print(f"learning rate {lr:.6g}: {args.learning_rate:g} x global batch {args.batch_size * cluster.world_size}"
              f" / {args.lr_reference_batch or args.batch_size} (linear scaling rule)", flush=True)
    optimizer = torch.optim.Adam(parameter_groups(model, args.model, lr), weight_decay=args.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.cuda)
    debugger = Debugger(paths, args, main=cluster.is_main)
    debugger.register(model, trainer.loss_fn)
    # DDP and the compiled wrapper share the module's parameters: checkpoints, best_state
    # and model.pt still come from ``model`` and keep their plain key names.
    net = distributed.wrap(model, cluster, trainer.cuda)
    net = compiled(net) if args.compile == "true" else net
    return Run(model, net, optimizer, scaler, base_lrs, debugger)


def fit(
    args: argparse.Namespace, paths: Paths, trainer: Trainer, run: Run,
    loaders: dict[str, torch.utils.data.DataLoader], progress: Progress, signature: dict[str, Any],
) -> None:
    """The epochs: train, validate, log the metrics, checkpoint, stop early when valid_loss stalls.

    Under DDP every rank trains and validates its shard, the scores are the whole
    split's (``shared``), rank 0 alone logs and checkpoints, and its early-stopping
    decision is every rank's.
    """
    start, folder, cluster = progress.start_epoch, paths.job_checkpoint_dir(), trainer.cluster
    profiler = (
        StepProfiler(args.profile_steps, paths.output_data_dir / "profiler", trainer.cuda)
        if args.profile_steps > 0 and start <= args.epochs and not progress.finished and cluster.is_main
        else None
    )
    for epoch in range(start, args.epochs + 1):
        if progress.finished:
            break
        t_epoch = time.perf_counter()
        tr = train_one_epoch(trainer, run, loaders["train"], epoch, profiler)
        va = evaluate(trainer, run, loaders["valid"], "valid", shared=True)
        values = {"train_loss": tr["loss"], "train_accuracy": tr["accuracy"], "valid_loss": va["loss"],
                  "valid_accuracy": va["accuracy"], "valid_balanced_accuracy": va["balanced_accuracy"],
                  "valid_macro_f1": va["macro_f1"], "epoch_seconds": time.perf_counter() - t_epoch}
        if cluster.is_main:
            for name, value in values.items():
                metric(name, value, epoch)
        progress.history.append({"epoch": epoch, **values})
        checkpoints.record_epoch(folder, progress, epoch, va["loss"], run.model, run.optimizer, signature,
                                 save=cluster.is_main)
        run.debugger.after_epoch(epoch, args.epochs)
        if distributed.broadcast(cluster, progress.bad_epochs >= args.patience):
            print(f"early stopping after epoch {epoch}: no better valid_loss for {progress.bad_epochs} epochs",
                  flush=True)
            break
    if profiler is not None:
        profiler.finish()


def test_and_save(
    args: argparse.Namespace, paths: Paths, trainer: Trainer, run: Run,
    loaders: dict[str, torch.utils.data.DataLoader], datasets: dict[str, CachedImageDataset],
    splits: dict[str, Split], progress: Progress, weighting: tuple[bool, str],
) -> dict[str, float]:
    """The test split on the best weights, calibration, the champion, the model directory, evaluation.json."""
    class_names = splits["train"].class_names
    if progress.best_state is not None:
        run.model.load_state_dict(progress.best_state)
    if trainer.cluster.distributed:  # rank 0 alone: the abstention fit reads the whole valid split
        loaders = {**loaders, "valid": trainer.loader(datasets["valid"], shuffle=False)}
    te = evaluate(trainer, run, loaders["test"], "test", collect=True)
    metric("test_loss", te["loss"])
    metric("test_accuracy", te["accuracy"])
    run.debugger.close()
    best_state = progress.best_state or checkpoints.cpu_state(run.model)
    final = final_job.assess(args, paths, trainer, datasets, splits, te, best_state, weighting, metric)
    # on the calibrated probabilities, as serving computes them
    stats, abstention_meta, abstention_evaluation = fit_abstention(
        args, trainer, run, datasets, loaders, len(class_names), temperature=final.temperature
    )
    # metric lines too, so the app keeps them on the live record and /status shows them
    metric("confidence_threshold", float(abstention_meta["confidence_threshold"]))
    metric("test_abstained_share", float(abstention_evaluation.get("test", {}).get("abstained_share", 0.0)))
    counts = report_skipped(paths, {name: list(ds.skipped) for name, ds in datasets.items()}, te["skipped"])
    history, best_epoch = progress.history, progress.best_epoch
    metrics = {
        "best_valid_loss": progress.best_loss,
        "valid_accuracy": next((h["valid_accuracy"] for h in history if h["epoch"] == best_epoch), float("nan")),
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        **final.metrics,
    }
    save_model(
        paths, best_state, args, class_names, trainer.prep, metrics,
        {"best_epoch": best_epoch, "epochs_run": len(history), "skipped_images": counts,
         "temperature": final.temperature,
         "class_weighting": final.document["class_weighting"],
         "history": [{key: h.get(key) for key in HISTORY_KEYS} for h in history], "abstention": abstention_meta},
    )
    stats.save(paths.model_dir / abstention.STATS_FILE)
    final_job.ship_onnx(args, paths, len(class_names), trainer.prep, datasets, best_state)
    final_job.write_evaluation(paths, {**final.document, "abstention": abstention_evaluation})
    print(f"model saved to {paths.model_dir} (best epoch {best_epoch}); {EVALUATION_FILE} beside it and in "
          f"{paths.output_data_dir}", flush=True)
    return metrics


def train(args: argparse.Namespace, paths: Paths) -> dict[str, float]:
    """The whole job: data, model, epochs, test, model directory; returns the final metrics."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    cpus = cpu_count()
    splits = load_splits(args, paths, cpus)
    class_names = splits["train"].class_names
    trainer = Trainer(args, paths)
    trainer.num_classes = len(class_names)
    model = build_model(args.model, len(class_names), image_size=args.image_size,
                        pretrained_weights=args.pretrained_weights, trainable_blocks=args.trainable_blocks)
    trainable, total = count_parameters(model)
    print(f"model: {total:,} parameters, {trainable:,} trainable; device={trainer.device}", flush=True)
    datasets = build_datasets(splits, trainer.prep, cpus)
    weighting = evaluation.weigh_classes(args.class_weights, trainer, datasets["train"], class_names)
    loaders = build_loaders(args, trainer, datasets)
    run = prepare_run(args, paths, trainer, model)
    signature = checkpoints.signature(run_hyperparameters(args), splits, run.model, args.pretrained_weights)
    checkpoint_dir = paths.job_checkpoint_dir()
    progress = checkpoints.resume(checkpoint_dir, signature, run.model, run.optimizer, args.patience)
    checkpoints.agree(progress, distributed.broadcast(trainer.cluster, (progress.start_epoch, progress.finished)))
    if trainer.cluster.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fit(args, paths, trainer, run, loaders, progress, signature)
    if not trainer.cluster.is_main:  # the test, the evaluation and the model are rank 0's, over whole splits
        run.debugger.close()
        return {}
    return test_and_save(args, paths, trainer, run, loaders, datasets, splits, progress, weighting)


def main(argv: list[str] | None = None) -> int:
    paths = Paths()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, paths.config_dir)
        use_pretrained_channel(args, paths)
        train(args, paths)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure: exit non-zero with the reason last on stderr
        known = isinstance(exc, (DataSetError, PretrainedWeightsError, ValueError))
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if not known:
            traceback.print_exc()
        write_failure(paths, reason)
        sys.stdout.flush()
        print(reason, file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.stop()


if __name__ == "__main__":
    sys.exit(main())
