"""Test images made on the spot from photos that scikit-image ships.

Why generated: no package ships dog photos or phone pictures, and a benchmark
must run on a fresh clone with no downloads. Upscaling a real photo and adding
sensor-like noise gives a JPEG with a phone's pixel count *and* a phone's file
size (noise is what makes real 12 MP photos 3-5 MB; a smooth upscale would
compress to a fraction of that and flatter the decoder).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: skimage sample photos that are real colour photographs shipped in the wheel.
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "retina")

PHONE_SIZE = (4032, 3024)  # a 12-megapixel 4:3 phone sensor
DATASET_SIZE = (500, 400)


def sample_photos() -> dict[str, np.ndarray]:
    """The bundled colour photos as HxWx3 uint8 arrays (missing ones skipped)."""
    import skimage.data

    photos = {}
    for name in PHOTO_NAMES:
        try:
            arr = np.asarray(getattr(skimage.data, name)())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - a sample that needs a download (pytest.skip under pytest) is not used
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            photos[name] = np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    if not photos:
        raise RuntimeError("scikit-image ships none of the sample photos " + ", ".join(PHOTO_NAMES))
    return photos


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def phone_jpeg(photo: np.ndarray, size: tuple[int, int] = PHONE_SIZE, noise_sigma: float = 5.0,
               quality: int = 95, seed: int = 0) -> bytes:
    """A phone-like JPEG: ``size`` pixels, sensor noise, saved at phone quality (3-5 MB at 12 MP)."""
    img = Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, noise_sigma, arr.shape).astype(np.float32)
    noisy = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return jpeg_bytes(noisy, quality=quality)


def dataset_jpeg(photo: np.ndarray, size: tuple[int, int] = DATASET_SIZE, quality: int = 90) -> bytes:
    """A typical data-set JPEG: about 500x400 at quality 90."""
    return jpeg_bytes(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC), quality=quality)


def photo_variants(count: int, seed: int = 0, max_side: int = 4032) -> list[tuple[str, bytes]]:
    """``count`` JPEGs of varied size, crop and flip from the sample photos.

    Used for top-1 agreement: the fast path must pick the same class as the
    plain path on ordinary photos of every size, from thumbnail to 12 MP.
    """
    rng = np.random.default_rng(seed)
    photos = list(sample_photos().items())
    out = []
    for i in range(count):
        name, arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = arr[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        longer = min(max_side, int(rng.choice([300, 500, 640, 1024, 2048, 4032])))
        scale = longer / max(ch, cw)
        size = (max(32, int(cw * scale)), max(32, int(ch * scale)))
        img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BICUBIC)
        out.append((f"{name}-{i}-{size[0]}x{size[1]}", jpeg_bytes(img, quality=int(rng.integers(80, 96)))))
    return out


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path  # holds train/<class>/*.jpg
    images: int
    classes: int


def write_jpeg_dataset(root: Path, images: int, seed: int = 0) -> GeneratedDataset:
    """Write ``images`` ~500x400 JPEGs in folder-per-class layout under ``root/train``.

    One class per sample photo; each image is a random crop resized to about
    500x400, so decoding cost matches a typical data set's.
    """
    rng = np.random.default_rng(seed)
    photos = list(sample_photos().items())
    for i in range(images):
        name, arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        size = (int(DATASET_SIZE[0] * rng.uniform(0.9, 1.1)), int(DATASET_SIZE[1] * rng.uniform(0.9, 1.1)))
        img = Image.fromarray(np.ascontiguousarray(arr[y : y + ch, x : x + cw])).resize(size, Image.Resampling.BICUBIC)
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(jpeg_bytes(img, quality=90))
    return GeneratedDataset(root, images, len(photos))
