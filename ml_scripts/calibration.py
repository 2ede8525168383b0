"""Temperature scaling and calibration error: numpy only, so it runs in every container.

``train.py`` fits one temperature ``T`` on the ``valid`` split's logits of the
best weights (:func:`fit_temperature`), stores it in ``model_meta.json``, and
serving answers ``softmax(logits / T)`` (``inference.predict_fn``). Dividing
every logit by one positive number never changes the arg-max, so accuracy,
F1 and the confusion matrix stay exactly the same; only the probabilities
(what a client and the abstention threshold read) become honest.

The method is Guo et al., "On Calibration of Modern Neural Networks" (2017):
minimise the negative log-likelihood of ``valid`` over ``T``. The NLL of
``softmax(z / T)`` is convex in ``1 / T``, so it has one minimum along
``log T`` too; a bracketed golden-section search over ``log T`` finds it
without gradients, learning rates or a failure mode (LBFGS can step to a
negative or infinite ``T`` on a tiny, perfectly separated split).

Expected calibration error (:func:`expected_calibration_error`) uses the
usual 15 equal-width confidence bins; :func:`reliability_bins` gives the
same bins for the reliability diagram.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The temperatures searched: wide enough for any network seen here (an overconfident
#: one fits 1.5-3, an underconfident one below 1), and T stays finite and positive.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
#: A search that ends this close (in log T) to MIN_TEMPERATURE found no minimum: see fit_temperature.
UNIDENTIFIED_EDGE = 1e-3
#: Golden-section steps: each shrinks the bracket of log T by 0.618; 60 of them leave under 1e-12.
SEARCH_STEPS = 60
#: Confidence bins of the ECE and the reliability diagram (Guo et al. use 15).
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean ``-log p(true class)`` of ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    picked = z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]
    return float(np.mean(log_norm - picked))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`] that minimises ``valid``'s NLL.

    Returns 1.0 (no change) when there is nothing to fit: no images, logits
    that are not all finite, or a split the model gets all right by a wide
    margin, whose NLL only falls as T falls (no minimum to find).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits) or not np.isfinite(logits).all():
        return 1.0
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(SEARCH_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    best = (a + b) / 2.0
    # Never worse than no scaling: on a flat or tiny split the search may end anywhere in the flat part.
    if loss(best) > loss(0.0):
        return 1.0
    # On the lower edge the NLL has no minimum inside the bracket: every valid image is right, so
    # sharpening always lowers it. That says nothing about how sure the model should be on images it
    # has not seen (a small, easy valid split drove T to its bound and every answer to p=1.000), so
    # such a split leaves the probabilities as trained.
    if best - low < UNIDENTIFIED_EDGE:
        return 1.0
    return float(math.exp(best))


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Equal bins of the top-1 confidence: ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``.

    A bin holds the predictions with ``lower < confidence <= upper`` (the
    first also holds 0). An empty bin has ``confidence`` and ``accuracy`` None.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(probabilities) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i + 1]]; confidence 0 (impossible for a softmax) goes to the first.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        mask = index == i
        count = int(mask.sum())
        rows.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over :func:`reliability_bins`."""
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(row["count"] for row in rows)
    if total == 0:
        return 0.0
    return float(
        sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / total
    )


def calibrate(
    valid_logits: np.ndarray, valid_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray
) -> tuple[float, dict[str, Any]]:
    """Fit ``T`` on ``valid``; ``evaluation.json``'s ``calibration``: ECE before and after, on both splits.

    ``ece_before`` / ``ece_after`` are on ``split`` (``valid``, where ``T`` was
    fitted); ``test_ece_before`` / ``test_ece_after`` on the held-out test
    split, the honest figure; ``bins`` are the test split's after scaling
    (the reliability diagram).
    """
    temperature = fit_temperature(valid_logits, valid_labels)
    test_after = softmax(test_logits, temperature) if len(test_logits) else np.zeros((0, 0))
    test_before = softmax(test_logits) if len(test_logits) else np.zeros((0, 0))
    valid_before = softmax(valid_logits) if len(valid_logits) else np.zeros((0, 0))
    valid_after = softmax(valid_logits, temperature) if len(valid_logits) else np.zeros((0, 0))
    return temperature, {
        "method": "temperature scaling: NLL on valid, golden-section search over log T",
        "temperature": temperature,
        "split": "valid",
        "num_images": len(valid_labels),
        "ece_before": expected_calibration_error(valid_before, valid_labels),
        "ece_after": expected_calibration_error(valid_after, valid_labels),
        "nll_before": negative_log_likelihood(valid_logits, valid_labels) if len(valid_labels) else None,
        "nll_after": negative_log_likelihood(valid_logits, valid_labels, temperature)
        if len(valid_labels)
        else None,
        "test_ece_before": expected_calibration_error(test_before, test_labels),
        "test_ece_after": expected_calibration_error(test_after, test_labels),
        "num_bins": ECE_BINS,
        "bins": reliability_bins(test_after, test_labels),
    }
