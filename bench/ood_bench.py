"""Section 10: "I don't know" (issue 13): the OOD score's AUROC and the share abstaining at the stored thresholds.

Two models, each trained by ``train.py`` as the container runs it (efficientnet_lite0, 32 px):

- a digits model (scikit-learn's digits); out of distribution: crops of scikit-image's
  photos and noise images;
- a photo model (crops of four scikit-image photos, one class each:
  ``bench.images.write_jpeg_dataset``'s kind of data); out of distribution: digits and noise.

In distribution: each model's own test split. Each row is one share or AUROC, served through
``inference.model_fn`` / ``predict_fn`` exactly as the endpoint does. Energy (Liu et al. 2020)
on the same logits is printed beside the chosen Mahalanobis score for comparison.
Targets: AUROC >= 0.95, >= 90% of OOD abstained, <= 10% of in-distribution test abstained.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core import Row, Section, Stats
from bench.profiler_cost import ML, _env

PHOTO_CLASSES = ("chelsea", "coffee", "astronaut", "rocket")
OOD_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "retina",
    "cat",
    "colorwheel",
)


def _crops(names: tuple[str, ...], per_photo: int, seed: int) -> list[Image.Image]:
    from skimage import data

    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        arr = np.asarray(getattr(data, name)())[..., :3].astype(np.uint8)
        h, w = arr.shape[:2]
        for _ in range(per_photo):
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out.append(Image.fromarray(np.ascontiguousarray(arr[y : y + ch, x : x + cw])))
    return out


def _noise(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    uniform = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count // 2)]
    gauss = [
        Image.fromarray(np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8))
        for _ in range(count - count // 2)
    ]
    return uniform + gauss


def write_photo_dataset(root: Path, per_class: int, seed: int = 0) -> None:
    """Folder-per-class train/valid/test of random crops, one class per photo (70/15/15)."""
    for c, name in enumerate(PHOTO_CLASSES):
        crops = _crops((name,), per_class, seed + c)
        for i, crop in enumerate(crops):
            split = "train" if i < per_class * 0.7 else "valid" if i < per_class * 0.85 else "test"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            crop.resize((96, 96), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", "JPEG", quality=90)


def train(base: Path, data: Path, epochs: int) -> Path:
    (base / "config").mkdir(parents=True)
    args = [
        "--epochs",
        str(epochs),
        "--model",
        "efficientnet_lite0",
        "--image_size",
        "32",
        "--batch_size",
        "16",
        "--patience",
        str(epochs + 1),
    ]
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        check=False,
        cwd=ML,
        env=_env(base, data),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"train.py failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    return base / "model"


def measure(
    section: Section, name: str, model_dir: Path, data: Path, ood: dict[str, list[Image.Image]]
) -> None:
    import abstention
    import inference

    model = inference.model_fn(str(model_dir))

    def scores(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, float]:
        maha, energy, abstained = [], [], 0
        for image in images:
            logits, features = model.forward_with_features(inference.preprocess(image, model))
            maha.append(float(model.abstainer.stats.score(features)[0]))
            energy.append(float(abstention.energy(np.asarray(logits))[0]))
            abstained += inference.predict_fn(image, model)[inference.ABSTAIN_REASON] is not None
        return np.array(maha), np.array(energy), abstained / max(1, len(images))

    test_images = [Image.open(p).convert("RGB") for p in sorted(data.glob("test/*/*.jpg"))]
    in_maha, in_energy, in_share = scores(test_images)
    section.rows.append(
        Row(
            section.key,
            f"{name}: in-distribution test ({len(test_images)} images) abstained",
            Stats.of([in_share * 100]),
            "%",
            target="<= 10",
            met=in_share <= 0.10,
        )
    )
    for kind, images in ood.items():
        maha, energy, share = scores(images)
        auc, auc_energy = abstention.auroc(in_maha, maha), abstention.auroc(in_energy, energy)
        section.rows.append(
            Row(
                section.key,
                f"{name} vs {kind} ({len(images)}): AUROC of the Mahalanobis score",
                Stats.of([auc]),
                "AUROC",
                target=">= 0.95",
                met=auc >= 0.95,
                higher_is_better=True,
                note=f"energy on the same logits: {auc_energy:.3f}",
            )
        )
        section.rows.append(
            Row(
                section.key,
                f"{name} vs {kind} ({len(images)}): abstained",
                Stats.of([share * 100]),
                "%",
                target=">= 90",
                met=share >= 0.90,
                higher_is_better=True,
            )
        )


def run(section: Section, quick: bool) -> None:
    from breedline import demo_digits

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits, photos = root / "digits", root / "photos"
        demo_digits.write_digits(digits, per_class=12 if quick else 60, size=32)
        write_photo_dataset(photos, per_class=12 if quick else 60)
        epochs = 1 if quick else 3
        digits_model = train(root / "digits_job", digits, epochs)
        photo_model = train(root / "photo_job", photos, epochs)
        digit_images = [Image.open(p).convert("RGB") for p in sorted(digits.glob("test/*/*.jpg"))]
        measure(
            section,
            "digits model",
            digits_model,
            digits,
            {"photo crops": _crops(OOD_PHOTOS, 1 if quick else 6, 7), "noise": _noise(4 if quick else 40, 3)},
        )
        measure(
            section,
            "photo model",
            photo_model,
            photos,
            {"digits": digit_images, "noise": _noise(4 if quick else 40, 5)},
        )
        section.notes.append(
            "Score: Mahalanobis distance of L2-normalised penultimate features, shrunk shared covariance fitted on "
            "train; thresholds: conformal 95% on valid (ml_scripts/abstention.py, docs/ml.md)."
        )
