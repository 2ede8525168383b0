"""The DataLoaders of a training job: how many worker processes, and under DDP which shard each rank reads.

Apart from train.py (tests/test_layout.py keeps modules small). ``Trainer.loader``
and :func:`build_loaders` are the only places a job builds a loader.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import distributed
from image_folder import CachedImageDataset, Indexed, collate_indexed, collate_skip_bad


def default_num_workers(cpus: int, cached: bool, cuda: bool = False) -> int:
    """DataLoader worker processes for one split when ``--num_workers`` is not given.

    A cached split (``CachedImageDataset.cached``: train and valid, decoded once
    per job) trained on the CPU gets 0: the main process loads in-process.
    Nothing is left to decode, an item is a uint8 crop (a memcpy), so a worker
    process only adds work on the same cores the model needs: collating into
    shared memory, pickling, waking the main process. Bench section 3
    (docs/benchmarks.md) compares in-process loading with one worker.

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


def make_loader(
    args: argparse.Namespace, dataset: torch.utils.data.Dataset, shuffle: bool, workers: int, cuda: bool,
    collate: Any = collate_skip_bad, sampler: Any = None,
) -> torch.utils.data.DataLoader:
    """Batches of (uint8 NHWC images, labels, bad count[, indices]) of ``--batch_size`` (per process).

    ``sampler`` (a DDP rank's shard, :mod:`distributed`) replaces ``shuffle``;
    the seeded generator makes one process's shuffle the same in every run.
    """
    generator = torch.Generator()
    generator.manual_seed(args.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        generator=generator,
    )


def build_loaders(
    args: argparse.Namespace, trainer: Any, datasets: dict[str, CachedImageDataset]
) -> dict[str, torch.utils.data.DataLoader]:
    """One loader per split: on the CPU cached splits load in-process, the test split with workers.

    Under DDP train and valid are this rank's shards; the test split is whole (rank 0 alone tests).

    The test split's batches carry each image's index (``image_folder.Indexed``): its
    evaluation names the files of the worst mistakes.
    """
    cluster = trainer.cluster
    loaders = {
        "train": trainer.loader(datasets["train"], shuffle=True,
                                sampler=distributed.train_sampler(cluster, datasets["train"], args.seed)),
        "valid": trainer.loader(datasets["valid"], shuffle=False,
                                sampler=distributed.eval_sampler(cluster, datasets["valid"])),
    }
    loaders["test"] = trainer.loader(Indexed(datasets["test"]), shuffle=False, collate=collate_indexed)
    print("loader workers: " + ", ".join(f"{name}={loader.num_workers}" for name, loader in loaders.items())
          + ("" if args.num_workers is None else " (--num_workers)"), flush=True)
    return loaders
