"""The three pictures of a job's ``evaluation.json``: confusion matrix, reliability diagram, mistakes grid.

Why matplotlib (Agg) on the operator's side: the training containers do not
have it. Each function draws one PNG from plain values and returns its path;
:mod:`breedline.job_evaluation` decides what to draw and notes what it cannot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Above this many classes the confusion matrix shows colours only (the counts would not fit).
MAX_ANNOTATED_CLASSES = 25
#: Thumbnails per row of the mistakes grid.
GRID_COLUMNS = 4


def number(value: Any) -> float | None:
    """A finite float, or None (a missing or malformed figure is shown as ``-``)."""
    if isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def fmt(value: Any, digits: int = 4) -> str:
    found = number(value)
    return "-" if found is None else f"{found:.{digits}f}"


def plain(text: Any) -> str:
    """``text`` as matplotlib shows it literally: a class named ``$x$`` is not mathtext."""
    return str(text).replace("$", r"\$")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(classes: list[str], matrix: list[list[int]], png: Path, title: str) -> Path:
    """The confusion matrix as a heat map, rows true and columns predicted, class names on both axes.

    Colour is the row's share (recall per true class), so a small class's
    errors show as strongly as a large one's; the counts are written in the
    cells while they fit.
    """
    plt = _plt()
    n = len(classes)
    shares = [[v / max(1, sum(row)) for v in row] for row in matrix]
    side = min(24.0, max(5.0, 0.32 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [plain(c if len(c) <= 18 else c[:17] + "…") for c in classes]
    size = 9 if n <= 15 else max(4, int(9 - n / 20))
    ax.set_xticks(range(n), labels, rotation=90 if n > 6 else 0, fontsize=size)
    ax.set_yticks(range(n), labels, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= MAX_ANNOTATED_CLASSES:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(
                        j,
                        i,
                        str(count),
                        ha="center",
                        va="center",
                        fontsize=size,
                        color="white" if shares[i][j] > 0.55 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test images")
    ax.set_title(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _bins(calibration: dict[str, Any]) -> list[dict[str, float]]:
    rows = []
    for b in calibration.get("bins") or []:
        if not isinstance(b, dict):
            continue
        values = {k: number(b.get(k)) for k in ("lower", "upper", "count", "confidence", "accuracy")}
        if values["lower"] is None or values["upper"] is None or values["count"] is None:
            continue
        rows.append(values)
    return rows  # type: ignore[return-value]


def reliability_png(calibration: dict[str, Any], png: Path, title: str) -> Path | None:
    """Accuracy against confidence per bin (after calibration, on test), the diagonal, and the bin counts."""
    bins = _bins(calibration)
    if not bins:
        return None
    plt = _plt()
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"] and b["accuracy"] is not None]
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.bar(
        [(b["lower"] + b["upper"]) / 2 for b in filled],
        [b["accuracy"] for b in filled],
        width=[b["upper"] - b["lower"] for b in filled],
        color="tab:blue",
        edgecolor="white",
        alpha=0.85,
        label="accuracy in the bin",
    )
    with_conf = [b for b in filled if b["confidence"] is not None]
    ax.plot(
        [b["confidence"] for b in with_conf],
        [b["accuracy"] for b in with_conf],
        marker="o",
        linestyle="none",
        color="tab:orange",
        label="(mean confidence, accuracy)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = f"ECE {fmt(calibration.get('ece_before'), 3)} before, {fmt(calibration.get('ece_after'), 3)} after"
    ax.set_title(f"{title}\ntemperature {fmt(calibration.get('temperature'), 3)}; {ece}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    counts.bar(
        [(b["lower"] + b["upper"]) / 2 for b in bins],
        [b["count"] for b in bins],
        width=[b["upper"] - b["lower"] for b in bins],
        color="tab:gray",
        edgecolor="white",
    )
    counts.set_xlabel("confidence (top-1 probability after calibration)")
    counts.set_ylabel("images")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _thumbnail(path: Path | None, size: int) -> Any:
    """The image as an RGB array of at most ``size`` px a side, or None when it does not decode."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            thumb = image.convert("RGB")
            thumb.thumbnail((size, size))
            import numpy as np

            return np.asarray(thumb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def mistakes_png(
    mistakes: list[dict[str, Any]], images: list[Path | None], png: Path, title: str, size: int = 128
) -> Path | None:
    """The most confident mistakes as one grid: each thumbnail with its true and predicted class and p."""
    if not mistakes:
        return None
    plt = _plt()
    columns = min(GRID_COLUMNS, len(mistakes))
    rows = -(-len(mistakes) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows + 0.5), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= len(mistakes):
            ax.axis("off")
            continue
        m = mistakes[index]
        thumb = _thumbnail(images[index] if index < len(images) else None, size)
        if thumb is None:
            ax.text(0.5, 0.5, "image\nnot available", ha="center", va="center", fontsize=8, color="gray")
        else:
            ax.imshow(thumb, interpolation="nearest" if max(thumb.shape[:2]) < 64 else "antialiased")
        ax.set_title(
            f"true {plain(str(m.get('true'))[:14])}\npredicted {plain(str(m.get('predicted'))[:14])}\n"
            f"p={fmt(m.get('probability'), 3)}",
            fontsize=8,
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
