"""Demo data: scikit-learn's bundled digits written as a folder-per-class JPEG data set.

No dog photos ship in any package and nothing can be downloaded here, so the
1,797 real 8x8 digit scans from ``sklearn.datasets.load_digits`` are the small
real data set for tests, the local pipeline (``breedline demo``) and benchmarks.
They are written in exactly the layout the pipeline expects
(``{train,valid,test}/<class>/*.jpg``, the splits being ``contract.CHANNELS``),
as RGB JPEGs upscaled to ``size`` pixels, dark ink on white paper.

Usage (both work)::

    python -m breedline.demo_digits digits OUT_DIR [--per-class N] [--size PX]
    python breedline/demo_digits.py digits OUT_DIR [--per-class N] [--size PX]

It lives with the demo, not in ``ml_scripts/``: nothing in a training job needs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from contract import CHANNELS

#: Fractions of each class going to train / valid / test.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_SIZE = 64


def _split_indices(labels: np.ndarray, per_class: int | None, seed: int) -> dict[str, list[int]]:
    """Stratified and deterministic: per class, a seeded shuffle cut 70/15/15."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in CHANNELS}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        if per_class is not None:
            idx = idx[:per_class]
        n = len(idx)
        n_valid = max(1, int(round(n * SPLIT_FRACTIONS[1])))
        n_test = max(1, int(round(n * SPLIT_FRACTIONS[2])))
        n_train = n - n_valid - n_test
        if n_train < 1:
            raise ValueError(f"per_class={per_class} leaves no training image for class {label}; use >= 3")
        out["train"] += sorted(idx[:n_train].tolist())
        out["valid"] += sorted(idx[n_train : n_train + n_valid].tolist())
        out["test"] += sorted(idx[n_train + n_valid :].tolist())
    return out


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """One 8x8 digit (values 0..16, 16 = ink) -> an RGB image of size x size, ink dark.

    The scans fill their 8x8 box edge to edge; a one-cell white margin (as MNIST
    pads its digits) keeps the ink inside the centre crop that every model's
    preprocessing takes (224/256 of the side), so no class loses its strokes.
    """
    ink = (255.0 - pixels.reshape(8, 8) * (255.0 / 16.0)).clip(0, 255)
    gray = np.full((10, 10), 255.0)
    gray[1:9, 1:9] = ink
    return Image.fromarray(gray.astype(np.uint8), "L").resize((size, size), Image.BILINEAR).convert("RGB")


def write_digits(
    out_dir: str | Path, per_class: int | None = None, size: int = DEFAULT_SIZE, seed: int = 0, quality: int = 95
) -> dict[str, int]:
    """Write the digits data set under ``out_dir``; return the image count per split.

    ``per_class`` caps the images taken per class before the split (None: all
    ~180). The same arguments always give byte-identical files.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    digits = load_digits()
    out = Path(out_dir)
    counts: dict[str, int] = {}
    for split, indices in _split_indices(digits.target, per_class, seed).items():
        for i in indices:
            folder = out / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            digit_image(digits.data[i], size).save(folder / f"digit_{i:04d}.jpg", "JPEG", quality=quality)
        counts[split] = len(indices)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m breedline.demo_digits", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="name", required=True)
    digits = sub.add_parser("digits", help="scikit-learn's digits as JPEG files")
    digits.add_argument("out_dir")
    digits.add_argument("--per-class", type=int, default=None, help="images per class before the split")
    digits.add_argument("--size", type=int, default=DEFAULT_SIZE, help="side of each JPEG in pixels")
    digits.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_digits(args.out_dir, per_class=args.per_class, size=args.size, seed=args.seed)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), "->", args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
