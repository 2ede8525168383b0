"""train.py's side of issue 13's abstention: the model's outputs on each split, the fit, evaluation.json.

Apart from train.py (which must stay small, tests/test_layout.py) and from
:mod:`abstention` (which serving imports, numpy only). Not copied into ``code/``.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch
from torch import nn

import abstention
from backbones import FeatureTap
from image_folder import batch_to_model_input


def split_outputs(
    trainer: Any, model: nn.Module, tap: FeatureTap, loader: torch.utils.data.DataLoader
) -> abstention.SplitOutputs:
    """Logits, penultimate features and labels of every readable image of ``loader``, in eval mode."""
    model.eval()
    logits, features, labels = [], [], []
    with torch.no_grad(), trainer.autocast():
        for images, batch_labels, *_rest in loader:  # (images, labels, bad) or, indexed, (..., indices)
            if len(batch_labels) == 0:
                continue
            logits.append(
                model(batch_to_model_input(images, trainer.prep, trainer.device, trainer.channels_last))
                .float()
                .cpu()
                .numpy()
            )
            features.append(tap.take().float().cpu().numpy())
            labels.append(batch_labels.numpy())
    if not labels:
        return abstention.SplitOutputs(np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0, dtype=np.int64))
    return abstention.SplitOutputs(np.concatenate(logits), np.concatenate(features), np.concatenate(labels))


def fit_abstention(
    args: argparse.Namespace,
    trainer: Any,
    run: Any,
    datasets: dict[str, Any],
    loaders: dict[str, torch.utils.data.DataLoader],
    num_classes: int,
    temperature: float = 1.0,
) -> tuple[abstention.GaussianStats, dict[str, Any], dict[str, Any]]:
    """Issue 13's "I don't know" (:mod:`abstention`): the OOD score on train's centre crops, thresholds on valid.

    Costs one more forward pass over train, valid and test (no gradients), with
    the best weights already loaded. Train is read without augmentation.
    """
    plain_train = copy.copy(datasets["train"])
    plain_train.train = False  # centre crops: the features serving will see
    tap = FeatureTap(run.model, args.model)
    try:
        outputs = {
            "train": split_outputs(trainer, run.model, tap, trainer.loader(plain_train, shuffle=False)),
            "valid": split_outputs(trainer, run.model, tap, loaders["valid"]),
            "test": split_outputs(trainer, run.model, tap, loaders["test"]),
        }
    finally:
        tap.remove()
    stats, meta, evaluation = abstention.fit(
        outputs["train"], outputs["valid"], outputs["test"], num_classes, temperature
    )
    test = evaluation.get("test", {})
    print(
        f"abstention: {meta['method']} ood_threshold={meta['ood_threshold']:.6g} "
        f"confidence_threshold={meta['confidence_threshold']:.6g}; valid coverage "
        f"{evaluation['valid']['coverage']:.3f}, test abstained {test.get('abstained_share', float('nan')):.3f}",
        flush=True,
    )
    return stats, meta, evaluation
