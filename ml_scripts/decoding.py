"""Image bytes or files -> upright RGB ``PIL`` images, fast where JPEG allows, never half-decoded.

Training (building the uint8 cache) and serving (``input_fn``) decode with the
same functions, so a model sees the same pixels in both. Copied into
``model.tar.gz``'s ``code/`` next to ``inference.py``.
"""

from __future__ import annotations

import io
import math
import os
import struct

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A truncated file is an error we count, never a half-grey image we learn from.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """Bytes that are not a complete, decodable image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, 16-bit and alpha images -> plain RGB.

    Transparent pixels become white: that is what a person sees in a viewer,
    and black would invent a dark background the class never had.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0.0
        scale = 255.0 / (65535.0 if peak > 255 else 255.0)
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def _open(source: str | os.PathLike[str] | bytes) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)))
        return Image.open(source)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def _finish(image: Image.Image) -> Image.Image:
    """Force the full decode (so truncation shows here), undo EXIF rotation, make RGB."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def load_rgb(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Decode a whole image to RGB, upright. The plain path.

    Raises :class:`ImageDecodeError` for garbage or truncated bytes and lets
    ``PIL.Image.DecompressionBombError`` through so callers can answer 413.
    """
    return _finish(_open(source))


def decode_for_size(source: str | os.PathLike[str] | bytes, resize_size: int) -> Image.Image:
    """Decode to RGB, upright, with the shorter side still >= ``resize_size`` where possible.

    JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``),
    never below the size we need: a 12-megapixel photo decodes to ~500 px
    instead of 4000 px, which is most of the cost of serving it. Other formats
    decode in full.
    """
    image = _open(source)
    width, height = image.size
    if image.format == "JPEG" and min(width, height) > 0:
        # EXIF rotation swaps the sides but keeps the shorter one, so this is safe.
        scale = resize_size / min(width, height)
        request = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        try:
            image.draft("RGB", request)
        except (OSError, ValueError):
            pass  # draft is only an optimisation; the full decode is still right
    return _finish(image)


def resize_crop(image: Image.Image, resize_size: int, out_size: int) -> Image.Image:
    """``Resize(resize_size)`` then ``CenterCrop(out_size)`` as one ``Image.resize(box=...)``.

    Only the pixels inside the crop are resampled, in one antialiased pass.
    """
    width, height = image.size
    # torchvision's Resize(int): shorter side -> resize_size, longer side truncated.
    if width >= height:
        new_w, new_h = int(resize_size * width / height), resize_size
    else:
        new_w, new_h = resize_size, int(resize_size * height / width)
    # CenterCrop's offsets on that resized image, mapped back to source pixels.
    left = int(round((new_w - out_size) / 2.0))
    top = int(round((new_h - out_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + out_size) * sx, (top + out_size) * sy)
    return image.resize((out_size, out_size), Image.BILINEAR, box=box)


def load_resized_square(
    source: str | os.PathLike[str] | bytes, resize_size: int, out_size: int | None = None
) -> Image.Image:
    """The fast path for what ``Resize(resize_size)`` + ``CenterCrop(out_size)`` gives.

    ``out_size`` defaults to ``resize_size``: the centre square that the
    training cache keeps, so random crops stay possible.
    """
    return resize_crop(decode_for_size(source, resize_size), resize_size, out_size or resize_size)
