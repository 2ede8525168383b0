"""decoding.py and presets.py: every image mode to RGB, bad files, the fast path against the plain one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import decoding
import image_folder
import presets
from ml_jobs import (FAST_PATH_MEAN_TOLERANCE, FAST_PATH_P99_TOLERANCE, jpeg_bytes, photo_jpeg, png_bytes,
                     sample_photos)

PREP = presets.Preprocessing(image_size=224)


# ----------------------------------------------------------------- decoding


def test_every_mode_becomes_rgb() -> None:
    gray = Image.new("L", (20, 10), 77)
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 0))  # fully transparent
    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16))
    cases = {
        "gray": (jpeg_bytes(gray), (77, 77, 77), 3),
        "cmyk": (jpeg_bytes(cmyk), (255, 0, 0), 6),
        "rgba": (png_bytes(rgba), (255, 255, 255), 0),  # transparent -> white, not black
        "palette": (png_bytes(palette), (255, 255, 255), 0),
        "16-bit": (png_bytes(sixteen), (255, 255, 255), 0),
    }
    for name, (body, expected, tolerance) in cases.items():
        image = decoding.load_rgb(body)
        assert image.mode == "RGB", name
        assert image.size == (20, 10), name
        pixel = image.getpixel((5, 5))
        assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected)), (name, pixel)


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    body = jpeg_bytes(image, exif=exif.tobytes())
    for decoded in (decoding.load_rgb(body), decoding.decode_for_size(body, 8)):
        width, height = decoded.size
        assert height == 2 * width and width in (20, 10)  # portrait now; draft may halve it
        r, g, b = decoded.getpixel((width // 2, height // 16))  # the left band is now on top
        assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("body", [b"", b"definitely not an image", None])
def test_undecodable_bytes_raise(body) -> None:
    if body is None:
        body = jpeg_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:300]  # truncated
    with pytest.raises(decoding.ImageDecodeError):
        decoding.load_rgb(body)
    with pytest.raises(decoding.ImageDecodeError):
        decoding.load_resized_square(body, 32)


# ----------------------------------------------------------------- fast path == plain path


def _compare(body: bytes, prep: presets.Preprocessing) -> tuple[float, float]:
    plain = prep.plain_transform()(decoding.load_rgb(body))
    fast = prep.normalise_uint8(np.asarray(decoding.load_resized_square(body, prep.resize_size, prep.image_size)))
    assert plain.shape == fast.shape == (3, prep.image_size, prep.image_size)
    diff = (plain - fast).abs().flatten()
    return float(diff.mean()), float(diff.quantile(0.99))


def test_fast_path_matches_plain_path_on_photos() -> None:
    for name, photo in sample_photos().items():
        for size in (None, (4000, 3000)):  # data-set size and a 12 MP phone photo
            body = photo_jpeg(name, size)
            mean, p99 = _compare(body, PREP)
            assert mean <= FAST_PATH_MEAN_TOLERANCE and p99 <= FAST_PATH_P99_TOLERANCE, (name, size, mean, p99)
        mean, p99 = _compare(png_bytes(photo), PREP)  # no draft for PNG: only the fused resize differs
        assert mean <= 0.01, (name, mean)


def test_fast_path_matches_plain_path_on_digits(digits_small: Path) -> None:
    prep = presets.Preprocessing(image_size=28)
    for path in sorted(digits_small.rglob("*.jpg"))[:30]:
        mean, p99 = _compare(path.read_bytes(), prep)
        assert mean <= FAST_PATH_MEAN_TOLERANCE and p99 <= FAST_PATH_P99_TOLERANCE, (path, mean, p99)



def test_normalise_uint8_layouts_agree() -> None:
    """One image, an NHWC batch, an NCHW batch and either memory format: the same numbers."""
    prep = presets.Preprocessing(image_size=16)
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    reference = torch.stack(
        [(torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 - torch.tensor(prep.mean).view(3, 1, 1))
         / torch.tensor(prep.std).view(3, 1, 1) for im in nhwc]
    )
    singles = torch.stack([prep.normalise_uint8(im) for im in nhwc])
    batch = prep.normalise_uint8(torch.from_numpy(nhwc), memory_format=torch.contiguous_format)
    nchw = prep.normalise_uint8(torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous(), channels_first=True)
    channels_last = prep.normalise_uint8(torch.from_numpy(nhwc), memory_format=torch.channels_last)
    assert batch.is_contiguous() and channels_last.is_contiguous(memory_format=torch.channels_last)
    for other in (singles, nchw, channels_last):
        assert torch.equal(batch, other)
    assert float((batch - reference).abs().max()) <= 1e-6
    via_loader_path = image_folder.batch_to_model_input(torch.from_numpy(nhwc), prep, channels_last=True)
    assert torch.equal(via_loader_path, batch) and via_loader_path.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(image_folder.batch_to_model_input(reference, prep), reference)  # float input passes through
    with pytest.raises(TypeError, match="uint8"):
        prep.normalise_uint8(nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="3 colour channels"):
        prep.normalise_uint8(nhwc[..., :2])


