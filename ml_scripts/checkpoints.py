"""Checkpoints of a training job: plain dicts in ``BREEDLINE_CHECKPOINT_DIR``, so a restarted job resumes.

``checkpoint.pt`` is rewritten atomically after every epoch (weights,
optimizer, early-stopping state, history, and the job's signature);
``best_model.pt`` holds the weights of the best ``valid_loss`` so far. A
restarted (spot) job with the same model, classes and image size picks up
after the last finished epoch; a checkpoint from another job is ignored.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "best_model.pt"


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


def signature(args: argparse.Namespace, class_names: list[str]) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this job."""
    return {"model": args.model, "class_names": class_names, "image_size": args.image_size}


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
    if state.get("signature") != job_signature:
        print(f"ignoring checkpoint {path}: it belongs to another model or data set", flush=True)
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
    # An early-stopped job stays stopped; one that ran out of epochs goes on if --epochs grew.
    progress.finished = progress.bad_epochs >= patience
    print(f"resumed from checkpoint: epoch={checkpoint['epoch']} best_epoch={progress.best_epoch}", flush=True)
    return progress


def record_epoch(
    checkpoint_dir: Path, progress: Progress, epoch: int, valid_loss: float, model: nn.Module,
    optimizer: torch.optim.Optimizer, job_signature: dict[str, Any],
) -> None:
    """Count the epoch for early stopping, keep the best weights, rewrite ``checkpoint.pt``."""
    if valid_loss < progress.best_loss:
        progress.best_loss, progress.best_epoch, progress.bad_epochs = valid_loss, epoch, 0
        progress.best_state = cpu_state(model)
        save_atomic(progress.best_state, checkpoint_dir / BEST_MODEL_FILE)
    else:
        progress.bad_epochs += 1
    save_atomic(
        {
            "epoch": epoch, "model": cpu_state(model), "optimizer": optimizer.state_dict(),
            "best_valid_loss": progress.best_loss, "best_epoch": progress.best_epoch,
            "bad_epochs": progress.bad_epochs, "history": progress.history, "signature": job_signature,
        },
        checkpoint_dir / CHECKPOINT_FILE,
    )
