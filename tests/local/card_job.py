"""A real tiny final job for the report and model card tests: a softmax regression on the digits JPEGs.

Why a model of our own and not ``train.py``: the report reads what a final
job leaves behind (``model_meta.json`` with its history, ``evaluation.json``,
metric lines), and these tests must stay fast on a 2-core machine. This file
is both a test helper and, packed as ``train.py`` with ``contract.py`` into a
source dir, the training script the local SageMaker service runs under the
container contract. Its ``evaluation.json`` follows issue 13's schema and is
computed from the model's real predictions on the test split; the
``abstention`` part is a max-softmax stand-in for the out-of-distribution
score (the real one is ``train.py``'s), only so the report has figures to show.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "valid", "test")
FEATURE_SIDE = 8
BINS = 10
WORST = 16


def load_split(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Pixels (8x8 grey, 0-1), label indices, class names and each image's ``<class>/<file>`` path."""
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    rows, labels, files = [], [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as image:
                rows.append(
                    np.asarray(
                        image.convert("L").resize((FEATURE_SIDE, FEATURE_SIDE)), dtype=np.float64
                    ).ravel()
                    / 255.0
                )
            labels.append(index)
            files.append(f"{name}/{path.name}")
    return np.array(rows), np.array(labels), classes, files


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    p = softmax(logits)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature with the lowest NLL on these logits (a grid on a log scale)."""
    grid = np.exp(np.linspace(math.log(0.2), math.log(10.0), 80))
    return float(min(grid, key=lambda t: nll(logits / t, labels)))


def calibration_bins(probs: np.ndarray, labels: np.ndarray) -> tuple[list[dict[str, float]], float]:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    bins, ece = [], 0.0
    for i in range(BINS):
        lower, upper = i / BINS, (i + 1) / BINS
        inside = (
            (confidence > lower) & (confidence <= upper)
            if i
            else (confidence >= lower) & (confidence <= upper)
        )
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else 0.0
        acc = float((predicted[inside] == labels[inside]).mean()) if count else 0.0
        ece += count / len(labels) * abs(acc - conf)
        bins.append({"lower": lower, "upper": upper, "count": count, "confidence": conf, "accuracy": acc})
    return bins, ece


def f1_scores(labels: np.ndarray, predicted: np.ndarray, n: int) -> list[dict[str, float]]:
    rows = []
    for c in range(n):
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": int((labels == c).sum())})
    return rows


def evaluation(
    classes: list[str],
    train_labels: np.ndarray,
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, list[str]],
) -> dict[str, Any]:
    """``evaluation.json`` (issue 13's schema) from valid and test logits."""
    valid_logits, valid_labels = valid
    test_logits, test_labels, test_files = test
    n = len(classes)
    temperature = fit_temperature(valid_logits, valid_labels)
    _, ece_before = calibration_bins(softmax(valid_logits), valid_labels)
    probs = softmax(test_logits / temperature)
    bins, ece_after = calibration_bins(probs, test_labels)
    _, ece_valid_after = calibration_bins(softmax(valid_logits / temperature), valid_labels)
    predicted = probs.argmax(axis=1)
    rows = f1_scores(test_labels, predicted, n)
    matrix = [[int(((test_labels == t) & (predicted == p)).sum()) for p in range(n)] for t in range(n)]
    majority = int(np.bincount(train_labels, minlength=n).argmax())
    base = f1_scores(test_labels, np.full_like(test_labels, majority), n)
    wrong = [i for i in range(len(test_labels)) if predicted[i] != test_labels[i]]
    wrong.sort(key=lambda i: -probs[i].max())
    valid_probs = softmax(valid_logits / temperature)
    threshold = 0.5
    kept = valid_probs.max(axis=1) >= threshold
    counts = np.bincount(train_labels, minlength=n)
    ratio = float(counts.max() / max(1, counts.min()))
    return {
        "schema": 1,
        "split": "test",
        "classes": classes,
        "num_images": len(test_labels),
        "accuracy": float((predicted == test_labels).mean()),
        "balanced_accuracy": float(np.mean([r["recall"] for r in rows])),
        "macro_f1": float(np.mean([r["f1"] for r in rows])),
        "per_class": [{"class": c, **r} for c, r in zip(classes, rows)],
        "confusion_matrix": matrix,
        "majority_baseline": {
            "class": classes[majority],
            "accuracy": float((test_labels == majority).mean()),
            "macro_f1": float(np.mean([r["f1"] for r in base])),
        },
        "calibration": {
            "temperature": temperature,
            "ece_before": ece_before,
            "ece_after": ece_valid_after,
            "split": "valid",
            "bins": bins,
            "test_ece": ece_after,
        },
        "class_weighting": {
            "enabled": ratio > 3,
            "reason": f"largest/smallest train class {ratio:.2f} (limit 3)",
        },
        "worst_mistakes": [
            {
                "file": test_files[i],
                "true": classes[int(test_labels[i])],
                "predicted": classes[int(predicted[i])],
                "probability": float(probs[i].max()),
            }
            for i in wrong[:WORST]
        ],
        "abstention": {
            "method": "max_softmax",
            "score": "top-1 probability after temperature scaling (test stand-in)",
            "confidence_threshold": threshold,
            "ood_threshold": threshold,
            "valid": {
                "coverage": float(kept.mean()),
                "accuracy": float((valid_probs.argmax(axis=1)[kept] == valid_labels[kept]).mean())
                if kept.any()
                else 0.0,
            },
            "test": {"abstained_share": float((probs.max(axis=1) < threshold).mean())},
        },
        "champion": None,
    }


def train(data: dict[str, Path], epochs: int, c: float, emit: Any) -> tuple[dict, dict]:
    """Fit epoch by epoch (``warm_start``); return (model_meta, evaluation) as the final job writes them."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    warnings.simplefilter("ignore", ConvergenceWarning)
    (xt, yt, classes, _), (xv, yv, _, _), (xs, ys, _, files) = (load_split(data[s]) for s in SPLITS)
    model = LogisticRegression(C=c, max_iter=3, warm_start=True)
    history = []
    for epoch in range(1, epochs + 1):
        model.fit(xt, yt)
        row = {
            "epoch": epoch,
            "train_loss": nll(model.decision_function(xt), yt),
            "train_accuracy": float(model.score(xt, yt)),
            "valid_loss": nll(model.decision_function(xv), yv),
            "valid_accuracy": float(model.score(xv, yv)),
        }
        history.append(row)
        for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            emit(key, row[key], epoch)
    found = evaluation(
        classes, yt, (model.decision_function(xv), yv), (model.decision_function(xs), ys, files)
    )
    metrics = {"test_loss": nll(model.decision_function(xs), ys), "test_accuracy": found["accuracy"]}
    for key, value in metrics.items():
        emit(key, value, None)
    meta = {
        "architecture": "softmax_regression_8x8",
        "class_names": classes,
        "num_classes": len(classes),
        "metrics": metrics,
        "history": history,
        "best_epoch": epochs,
        "epochs_run": epochs,
        "temperature": found["calibration"]["temperature"],
    }
    return meta, found


def main() -> int:
    """The job: SageMaker's channels in, model dir and output out, metric lines on stdout."""
    import argparse

    import contract  # packed next to this file as the source dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=3)
    args, _ = parser.parse_known_args()
    data = {s: Path(os.environ[f"SM_CHANNEL_{s.upper()}"]) for s in SPLITS}
    meta, found = train(
        data,
        args.epochs,
        args.learning_rate,
        lambda k, v, e: print(contract.format_metric(k, v, e), flush=True),
    )
    for folder in (Path(os.environ["SM_MODEL_DIR"]), Path(os.environ["SM_OUTPUT_DATA_DIR"])):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evaluation.json").write_text(json.dumps(found, indent=1))
    (Path(os.environ["SM_MODEL_DIR"]) / "model_meta.json").write_text(json.dumps(meta))
    return 0


def sourcedir() -> bytes:
    """This file as ``train.py`` with the real ``contract.py``: the job's ``sourcedir.tar.gz``."""
    root = Path(__file__).resolve().parents[2]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(Path(__file__), arcname="train.py")
        tar.add(root / "ml_scripts" / "contract.py", arcname="contract.py")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
