"""Checkpoints of a training job: plain dicts in the job's own folder, so a restarted job resumes.

The folder is ``<BREEDLINE_CHECKPOINT_DIR>/<training job name>/``
(``job_config.Paths.job_checkpoint_dir``): the trials of a tuning job share one
checkpoint prefix in S3. ``checkpoint.pt`` is rewritten atomically after every
epoch (weights, optimizer, early-stopping state, history, and the run's
:func:`signature`); ``best_model.pt`` holds the weights of the best
``valid_loss`` so far. A restarted (spot) job whose signature matches picks up
after the last finished epoch. A checkpoint with another signature (other
hyperparameters, data set, architecture or pretrained weights) is ignored with
one log line, and the job trains from the start.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from image_folder import Split

CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "best_model.pt"
#: Part of every signature: a checkpoint written before the signature took its present shape never matches.
SIGNATURE_VERSION = 2
#: How each part of a signature is named in the "ignoring checkpoint" line.
_PART_NAMES = {"dataset": "data set", "class_names": "classes", "pretrained_weights": "pretrained weights"}


@dataclass
class Progress:
    """Where a job stands between epochs: what a checkpoint holds besides the weights and the optimizer."""

    start_epoch: int = 1
    best_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    #: An early-stopped job stays stopped when it is restarted.
    finished: bool = False
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def dataset_version(splits: Mapping[str, Split]) -> str:
    """A digest of each split's classes and files: path below the channel, class index and size.

    Why names and sizes, not contents: a restart must not read the whole data
    set again, and a re-download gives the same names and sizes, while a new
    version adds, removes, renames, relabels or rewrites files. (A file
    replaced by one of exactly the same size is the one change it misses.)
    """
    digest = hashlib.sha256()
    for name in sorted(splits):
        split = splits[name]
        digest.update(json.dumps([name, split.class_names]).encode())
        for path, label in split.samples:
            entry = [os.path.relpath(path, split.root), label, os.path.getsize(path)]
            digest.update(json.dumps(entry).encode())
    return digest.hexdigest()


def architecture(model: nn.Module) -> str:
    """A digest of the model's shape: every weight's name, shape and dtype, and whether it trains."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(json.dumps([name, list(tensor.shape), str(tensor.dtype), name in trainable]).encode())
    return digest.hexdigest()


def weights_file(path: str | None) -> dict[str, Any] | None:
    """The pretrained weights file as a signature sees it: its name and size (None: the built-in source)."""
    if not path:
        return None
    file = Path(path)
    return {"name": file.name, "bytes": file.stat().st_size if file.is_file() else None}


def signature(
    hyperparameters: Mapping[str, Any], splits: Mapping[str, Split], model: nn.Module,
    pretrained_weights: str | None,
) -> dict[str, Any]:
    """Everything that makes one run differ from another; a checkpoint resumes only a run with the same.

    ``hyperparameters`` is ``job_config.run_hyperparameters(args)``: every
    argument that changes what is learned (learning rate, batch size, epochs,
    model, image size, seed, trainable blocks, ...).
    """
    return {
        "version": SIGNATURE_VERSION,
        "hyperparameters": dict(hyperparameters),
        "architecture": architecture(model),
        "pretrained_weights": weights_file(pretrained_weights),
        "class_names": list(splits["train"].class_names),
        "dataset": dataset_version(splits),
    }


def differences(found: Any, expected: Mapping[str, Any]) -> list[str]:
    """What differs between a checkpoint's signature and this run's: hyperparameter names, or parts."""
    if not isinstance(found, dict):
        return ["signature"]
    names: list[str] = []
    for part, value in expected.items():
        old = found.get(part)
        if old == value:
            continue
        if part == "hyperparameters" and isinstance(old, dict):
            names += sorted(k for k in set(old) | set(value) if old.get(k, None) != value.get(k, None))
        else:
            names.append(_PART_NAMES.get(part, part))
    return names


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU, contiguous: what ``model.pt`` and the checkpoints hold."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a killed job never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(checkpoint_dir: Path, job_signature: dict[str, Any]) -> dict[str, Any] | None:
    """The last checkpoint of this job (``best_state`` added from ``best_model.pt``), or None."""
    path = checkpoint_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn file from a killed job: start over, say so
        print(f"ignoring unreadable checkpoint {path}: {exc}", flush=True)
        return None
    if not isinstance(state, dict) or state.get("signature") != job_signature:
        found = state.get("signature") if isinstance(state, dict) else None
        print(f"ignoring checkpoint {path}: another run wrote it (different "
              f"{', '.join(differences(found, job_signature))}); training from the start", flush=True)
        return None
    best_path = checkpoint_dir / BEST_MODEL_FILE
    best = torch.load(best_path, map_location="cpu", weights_only=True) if best_path.is_file() else None
    state["best_state"] = best
    return state


def resume(
    checkpoint_dir: Path, job_signature: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
    patience: int,
) -> Progress:
    """Load this job's checkpoint into ``model`` and ``optimizer`` if there is one; where to go on from."""
    checkpoint = load_checkpoint(checkpoint_dir, job_signature)
    if checkpoint is None:
        return Progress()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    progress = Progress(
        start_epoch=int(checkpoint["epoch"]) + 1,
        best_loss=float(checkpoint["best_valid_loss"]),
        best_epoch=int(checkpoint["best_epoch"]),
        bad_epochs=int(checkpoint["bad_epochs"]),
        best_state=checkpoint["best_state"],
        history=list(checkpoint["history"]),
    )
    # An early-stopped job stays stopped; one that ran all its epochs goes straight to the test.
    progress.finished = progress.bad_epochs >= patience
    print(f"resumed from checkpoint: epoch={checkpoint['epoch']} best_epoch={progress.best_epoch}", flush=True)
    return progress


def agree(progress: Progress, main_view: tuple[int, bool]) -> None:
    """Fail unless this rank resumed where rank 0 did (``main_view``: its start epoch, finished).

    Every rank reads the checkpoint from its own host's copy (SageMaker copies
    the checkpoint prefix to every instance), so every rank's optimizer state
    is the saved one; a host without the copy must not train from another epoch.
    Why any world size works: the checkpoint holds the plain module's weights,
    the optimizer and the epoch, none of them per rank, and
    ``DistributedSampler.set_epoch(epoch)`` reshuffles from the epoch number alone.
    """
    mine = (progress.start_epoch, progress.finished)
    if tuple(main_view) != mine:
        raise ValueError(f"this rank resumed at epoch {mine[0]} but rank 0 at {main_view[0]}: "
                         f"every host needs the same checkpoint copy")


def record_epoch(
    checkpoint_dir: Path, progress: Progress, epoch: int, valid_loss: float, model: nn.Module,
    optimizer: torch.optim.Optimizer, job_signature: dict[str, Any], save: bool = True,
) -> None:
    """Count the epoch for early stopping, keep the best weights, rewrite ``checkpoint.pt``.

    ``save`` False (DDP ranks other than 0) only counts: one process writes the files.
    """
    better = valid_loss < progress.best_loss
    if better:
        progress.best_loss, progress.best_epoch, progress.bad_epochs = valid_loss, epoch, 0
    else:
        progress.bad_epochs += 1
    if not save:
        return
    if better:
        progress.best_state = cpu_state(model)
        save_atomic(progress.best_state, checkpoint_dir / BEST_MODEL_FILE)
    save_atomic(
        {
            "epoch": epoch, "model": cpu_state(model), "optimizer": optimizer.state_dict(),
            "best_valid_loss": progress.best_loss, "best_epoch": progress.best_epoch,
            "bad_epochs": progress.bad_epochs, "history": progress.history, "signature": job_signature,
        },
        checkpoint_dir / CHECKPOINT_FILE,
    )
