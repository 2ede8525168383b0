"""What the final job knows about its model: the test split's metrics, ``evaluation.json``, the champion.

``train.py`` calls this after training, on the best weights:

- :func:`classification_metrics` -- accuracy, balanced accuracy, macro-F1,
  per-class precision / recall / F1 / support and the confusion matrix, from
  predicted and true class indices (numpy only: the training containers have
  no scikit-learn; ``tests/ml`` checks every number against it);
- :func:`majority_baseline` -- the model that always answers the train
  split's biggest class, scored on the same test images;
- :func:`worst_mistakes` -- the most confident wrong answers, with their file
  paths below the test channel (for the report's thumbnails);
- :func:`class_weighting` -- whether the loss weighs classes (``--class_weights``);
- :func:`evaluation_document` -- all of it as ``evaluation.json`` (schema 1).

Definitions follow scikit-learn's defaults, so the numbers mean what a reader
expects: balanced accuracy is the mean recall over the classes present in the
test split; macro-F1 averages F1 over the classes that are present or
predicted, with 0 where a precision or recall is 0/0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


#: Schema version of ``evaluation.json``.
SCHEMA = 1
#: How many of the most confident mistakes ``evaluation.json`` lists.
WORST_MISTAKES = 16
#: ``--class_weights auto`` weighs the loss when the biggest train class has more than this many
#: times the images of the smallest (issue 13's rule of thumb; docs/ml.md says why).
IMBALANCE_RATIO = 3.0


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true][predicted]`` counts, classes in model order."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix."""
    k = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return metrics_from_confusion(confusion_matrix(labels, predictions, k), class_names)


def metrics_from_confusion(matrix: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """:func:`classification_metrics` from a ``[true][predicted]`` count matrix.

    Why from counts: under DDP each rank counts its shard of a split, and the
    ranks' matrices add up to the whole split's (``distributed.sum_across``).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _ratio(true_positive, predicted.astype(np.float64))
    recall = _ratio(true_positive, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    scored = present | (predicted > 0)
    total = int(support.sum())
    return {
        "num_images": total,
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[scored].mean()) if scored.any() else 0.0,
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": matrix.tolist(),
    }


def majority_class(train_labels: np.ndarray, num_classes: int) -> int:
    """The train split's biggest class (the first in model order on a tie): a know-nothing model's answer."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    return int(np.argmax(counts))


def majority_baseline(labels: np.ndarray, majority: int, class_names: list[str]) -> dict[str, Any]:
    """The always-``majority`` model on the test labels: its class, accuracy and macro-F1.

    Why the train split's majority, not the test split's: a real baseline
    cannot look at the test labels.
    """
    scores = classification_metrics(labels, np.full(len(labels), majority), class_names)
    return {"class": class_names[majority], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


def worst_mistakes(
    probabilities: np.ndarray,
    labels: np.ndarray,
    files: list[str],
    class_names: list[str],
    limit: int = WORST_MISTAKES,
) -> list[dict[str, Any]]:
    """The wrong answers with the highest predicted probability, most confident first."""
    predictions = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    return [
        {
            "file": files[i],
            "true": class_names[int(labels[i])],
            "predicted": class_names[int(predictions[i])],
            "probability": round(float(confidence[i]), 6),
        }
        for i in order
    ]


def class_weighting(setting: str, counts: list[int]) -> tuple[bool, str]:
    """Whether the loss weighs classes (``--class_weights auto|on|off``), and why, from the train counts."""
    smallest, biggest = min(counts), max(counts)
    ratio = biggest / smallest if smallest else float("inf")
    seen = f"biggest train class {biggest} images, smallest {smallest} ({ratio:.1f}x)"
    if setting == "on":
        return True, f"--class_weights on; {seen}"
    if setting == "off":
        return False, f"--class_weights off; {seen}"
    if ratio > IMBALANCE_RATIO:
        return True, f"auto: {seen}, over {IMBALANCE_RATIO:g}x"
    return False, f"auto: {seen}, not over {IMBALANCE_RATIO:g}x"


def class_weights(counts: list[int]) -> torch.Tensor:
    """Per-class loss weights ``n / (k * n_c)`` (scikit-learn's "balanced"): every class weighs the same."""
    counts_t = torch.tensor([max(1, c) for c in counts], dtype=torch.float32)
    return counts_t.sum() / (len(counts) * counts_t)


def weigh_classes(setting: str, trainer: Any, train_set: Any, class_names: list[str]) -> tuple[bool, str]:
    """``--class_weights``: weigh the loss by inverse class frequency when on (or ``auto`` finds imbalance).

    The weights are ``n / (k * n_c)`` over the readable train images, in every
    phase's loss (so ``valid_loss``, which early stopping and tuning read,
    weighs each class the same as training does). docs/ml.md says why.
    """
    counts = np.bincount([label for _, label in train_set.samples], minlength=len(class_names)).tolist()
    enabled, reason = class_weighting(setting, counts)
    if enabled:
        trainer.loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(counts).to(trainer.device))
    print(f"class weighting: {'on' if enabled else 'off'} ({reason})", flush=True)
    return enabled, reason


def relative_files(paths: list[str], root: Path) -> list[str]:
    """Each file's path below its channel folder, with ``/`` separators (what ``evaluation.json`` lists)."""
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


class Collector:
    """What an evaluation pass keeps per batch: arg-max and labels (and logits and indices if asked)."""

    def __init__(self, keep_logits: bool) -> None:
        self.keep_logits = keep_logits
        self.predicted: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []
        #: The logits' width, the class count when none is given.
        self.classes = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None) -> None:
        self.classes = logits.shape[1]
        self.predicted.append(logits.argmax(1).cpu())
        self.labels.append(labels.cpu())
        if self.keep_logits:
            if indices is None:
                raise ValueError("keeping logits needs image_folder.collate_indexed batches (their indices)")
            self.logits.append(logits.float().cpu())
            self.indices.append(indices)

    def result(
        self, num_classes: int = 0, add_up: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> dict[str, Any]:
        """The scalar scores; with ``keep_logits`` also ``logits``, ``labels`` and ``indices``.

        ``add_up`` sums the confusion matrix over the ranks that each saw a shard
        (``distributed.sum_across``), so the scores are the whole split's.
        """
        num_classes = num_classes or self.classes
        labels = torch.cat(self.labels).numpy() if self.labels else np.zeros(0, dtype=np.int64)
        predicted = torch.cat(self.predicted).numpy() if self.predicted else np.zeros(0, dtype=np.int64)
        matrix = confusion_matrix(labels, predicted, num_classes)
        if add_up is not None:
            matrix = add_up(matrix).round().astype(np.int64)
        scores = metrics_from_confusion(matrix, [str(i) for i in range(num_classes)])
        out: dict[str, Any] = {
            "balanced_accuracy": scores["balanced_accuracy"],
            "macro_f1": scores["macro_f1"],
        }
        if self.keep_logits:
            out.update(
                logits=torch.cat(self.logits).numpy(), labels=labels, indices=torch.cat(self.indices).numpy()
            )
        return out


@torch.no_grad()
def predict_logits(
    module: nn.Module,
    loader: torch.utils.data.DataLoader,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable[[], Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 logits, labels and dataset indices of every readable image the loader yields.

    The loader's batches are ``image_folder.collate_indexed``'s
    ``(images, labels, bad, indices)``; ``to_input`` turns the uint8 batch into model input.
    """
    module.eval()
    logits, labels, indices = [], [], []
    for images, batch_labels, _bad, batch_indices in loader:
        if len(batch_labels) == 0:
            continue
        with autocast():
            out = module(to_input(images))
        logits.append(out.float().cpu().numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(indices)


def evaluation_document(
    *,
    class_names: list[str],
    scores: dict[str, Any],
    baseline: dict[str, Any],
    calibration: dict[str, Any],
    weighting: tuple[bool, str],
    mistakes: list[dict[str, Any]],
    champion: dict[str, float] | None,
) -> dict[str, Any]:
    """``evaluation.json`` (schema 1): test metrics, baseline, calibration, weighting, mistakes, champion."""
    return {
        "schema": SCHEMA,
        "split": "test",
        "classes": list(class_names),
        "num_images": scores["num_images"],
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "macro_f1": scores["macro_f1"],
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "majority_baseline": baseline,
        "calibration": calibration,
        "class_weighting": {"enabled": weighting[0], "reason": weighting[1]},
        "worst_mistakes": mistakes,
        "champion": champion,
    }


@dataclass
class FinalEvaluation:
    """The final job's evaluation: ``evaluation.json``, the metric lines to print, the temperature."""

    document: dict[str, Any]
    metrics: dict[str, float]
    temperature: float


def final_evaluation(
    *,
    class_names: list[str],
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    test_files: list[str],
    valid_logits: np.ndarray,
    valid_labels: np.ndarray,
    train_labels: np.ndarray,
    weighting: tuple[bool, str],
    champion: dict[str, float] | None,
) -> FinalEvaluation:
    """Score the best weights' test logits, calibrate on valid's, and compare with the majority baseline.

    ``test_files[i]`` is the path below the test channel of ``test_logits[i]``'s image.
    """
    import calibration

    k = len(class_names)
    predictions = test_logits.argmax(axis=1) if len(test_logits) else np.zeros(0, dtype=np.int64)
    scores = classification_metrics(test_labels, predictions, class_names)
    baseline = majority_baseline(test_labels, majority_class(train_labels, k), class_names)
    temperature, calibrated = calibration.calibrate(valid_logits, valid_labels, test_logits, test_labels)
    probabilities = calibration.softmax(test_logits, temperature) if len(test_logits) else np.zeros((0, k))
    mistakes = worst_mistakes(probabilities, test_labels, test_files, class_names)
    metrics = {
        "test_balanced_accuracy": scores["balanced_accuracy"],
        "test_macro_f1": scores["macro_f1"],
        "test_majority_accuracy": baseline["accuracy"],
        "test_majority_macro_f1": baseline["macro_f1"],
        "test_ece": calibrated["test_ece_after"],
    }
    if champion is not None:
        metrics.update(
            {f"champion_test_{key}": champion[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
        )
    document = evaluation_document(
        class_names=class_names,
        scores=scores,
        baseline=baseline,
        calibration=calibrated,
        weighting=weighting,
        mistakes=mistakes,
        champion=champion,
    )
    return FinalEvaluation(document, metrics, temperature)
