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
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A truncated file is an error we count, never a half-grey image we learn from.
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # HEIC/HEIF (iPhone photos): the serving container installs pillow-heif (serving_requirements.txt)
    from pillow_heif import register_heif_opener as _register_heif_opener
except ImportError:  # without it a HEIF body is refused as undecodable, never half-read
    _register_heif_opener = None
else:
    # Thumbnails on: decode_for_size's draft() may decode an embedded one that is big enough.
    _register_heif_opener(thumbnails=True)
#: Whether this process can decode HEIF (``"heif"`` in :data:`REQUEST_FORMATS` is only usable then).
HEIF_AVAILABLE = _register_heif_opener is not None


class ImageDecodeError(ValueError):
    """Bytes that are not a complete, decodable image."""


class DecodeBudgetError(ValueError):
    """An image whose header says it would cost more to decode than the budget allows (answered 413)."""


#: Pillow format names a request may declare, by the format its magic bytes show.
REQUEST_FORMATS: dict[str, str] = {"jpeg": "JPEG", "png": "PNG", "heif": "HEIF"}

#: Peak bytes per pixel while an image of each Pillow mode is decoded and made RGB by :func:`to_rgb`:
#: the decoded buffer plus the conversions' copies (measured by ``python -m bench --only decode_budget``,
#: docs/benchmarks.md). Why per mode: a 16-bit grey PNG costs about six times an RGB one per pixel.
PEAK_BYTES_PER_PIXEL: dict[str, int] = {
    "1": 5, "L": 5, "P": 9, "RGB": 4, "YCbCr": 8, "CMYK": 8, "RGBA": 20, "LA": 20, "PA": 20,
    "I;16": 23, "I;16B": 23, "I;16L": 23, "I;16N": 23, "I": 30, "F": 30,
}
#: A palette image with a transparent entry goes through RGBA (to_rgb), which costs this much more.
PALETTE_ALPHA_EXTRA = 12
#: An image any other mode: assume the costliest.
UNKNOWN_MODE_BYTES = 30
#: The budget in bytes is its megapixels times what an RGBA image costs per pixel (the costliest 8-bit mode).
BUDGET_BYTES_PER_PIXEL = PEAK_BYTES_PER_PIXEL["RGBA"]
#: A HEIF decodes through libheif's own planes (YUV, then interleaved RGB) before Pillow's copy:
#: counted on top of the mode's figure. An estimate from the buffers' sizes (1.5 + 3 bytes), not measured.
HEIF_EXTRA_BYTES_PER_PIXEL = 5


@dataclass(frozen=True)
class DecodeBudget:
    """How much one request may decode: at most ``megapixels`` decoded pixels, and their estimated bytes.

    Why from the header alone: the 8,900 x 8,900 PNGs of issue 15 are a few hundred KB but take
    1.8-2.1 GB to decode; the header says so before a single pixel is decoded.
    """

    megapixels: float

    @property
    def max_pixels(self) -> int:
        return int(self.megapixels * 1_000_000)

    @property
    def max_bytes(self) -> int:
        return self.max_pixels * BUDGET_BYTES_PER_PIXEL


def estimated_bytes(size: tuple[int, int], mode: str, has_transparency: bool = False) -> int:
    """Peak bytes to decode an image of ``size`` in ``mode`` and make it RGB (see :data:`PEAK_BYTES_PER_PIXEL`)."""
    per_pixel = PEAK_BYTES_PER_PIXEL.get(mode, UNKNOWN_MODE_BYTES)
    if mode == "P" and has_transparency:
        per_pixel += PALETTE_ALPHA_EXTRA
    return size[0] * size[1] * per_pixel


def check_budget(image: Image.Image, budget: DecodeBudget) -> None:
    """Raise :class:`DecodeBudgetError` if ``image`` (opened, not loaded) would exceed ``budget``.

    ``image.size`` is what will be decoded: after :meth:`PIL.Image.Image.draft` a JPEG's reduced size.
    """
    width, height = image.size
    pixels = width * height
    cost = estimated_bytes(image.size, image.mode, "transparency" in image.info)
    if image.format == "HEIF":
        cost += pixels * HEIF_EXTRA_BYTES_PER_PIXEL
    if pixels > budget.max_pixels or cost > budget.max_bytes:
        raise DecodeBudgetError(
            f"the image would decode to {width} x {height} pixels ({pixels / 1e6:.1f} MP, mode {image.mode}, "
            f"about {cost / 1e6:.0f} MB); the limit is {budget.megapixels:g} MP and {budget.max_bytes / 1e6:.0f} MB. "
            "Resize it and retry"
        )


def check_png_complete(data: bytes) -> None:
    """Refuse a PNG whose chunks do not all fit, check out (CRC) and end with IEND.

    Why: Pillow decodes a PNG whose pixel data is complete but whose last bytes (zlib
    checksum, IDAT CRC, IEND) are cut off, so a truncated upload would be answered.
    """
    offset = 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            break
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[offset + 4 : end - 4]) != crc:
            raise ImageDecodeError(f"not a decodable image: the PNG's {kind!r} chunk fails its CRC")
        if kind == b"IEND":
            return
        offset = end
    raise ImageDecodeError("not a decodable image: the PNG is truncated (it does not end with its IEND chunk)")


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


def _open(source: str | os.PathLike[str] | bytes, formats: tuple[str, ...] | None = None) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)), formats=formats)
        return Image.open(source, formats=formats)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def _finish(image: Image.Image) -> Image.Image:
    """Force the full decode (so truncation shows here), undo EXIF rotation, make RGB."""
    try:
        image.load()
        # In place: Pillow returns a whole copy of an upright image otherwise (4 bytes a pixel more).
        ImageOps.exif_transpose(image, in_place=True)
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


def decode_for_size(
    source: str | os.PathLike[str] | bytes,
    resize_size: int,
    *,
    formats: tuple[str, ...] | None = None,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode to RGB, upright, with the shorter side still >= ``resize_size`` where possible.

    JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``),
    never below the size we need: a 12-megapixel photo decodes to ~500 px
    instead of 4000 px, which is most of the cost of serving it. A HEIF has no
    such scaling in libheif; its ``draft`` (pillow-heif) picks an embedded
    thumbnail when one is at least that big, else it decodes in full, as other
    formats do. ``formats`` limits which Pillow decoders may open the bytes
    (serving: only the declared one); ``budget`` is checked on the header, after
    the draft, before any pixel is decoded. HEIF rotation (``irot``/``imir``, which
    pillow-heif writes from EXIF orientation) is applied by libheif while decoding.
    """
    image = _open(source, formats)
    width, height = image.size
    if image.format in ("JPEG", "HEIF") and min(width, height) > 0:
        # EXIF rotation swaps the sides but keeps the shorter one, so this is safe.
        scale = resize_size / min(width, height)
        request = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        try:
            image.draft("RGB", request)
        except (OSError, ValueError):
            pass  # draft is only an optimisation; the full decode is still right
    if budget is not None:
        check_budget(image, budget)
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
