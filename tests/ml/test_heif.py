"""HEIC/HEIF in the serving script (issue 16): decoded upright, under the same budget, at reduced size where it can be.

The photos are real HEIC files encoded here by pillow-heif (libheif + x265), the
library the serving container installs (ml_scripts/serving_requirements.txt).
"""

from __future__ import annotations

import io
import json

import decoding
import inference
import pytest
from ml_jobs import Job
from PIL import Image


def heic(image: Image.Image, orientation: int | None = None, thumbnails: tuple[int, ...] = ()) -> bytes:
    """``image`` as a HEIC file, with an EXIF orientation and embedded thumbnails (boxes of those sides)."""
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "HEIF", exif=exif.tobytes(), quality=90, thumbnails=list(thumbnails))
    return out.getvalue()


def sideways() -> Image.Image:
    """Stored landscape, left red and right blue: with orientation 6, upright is portrait with red on top."""
    image = Image.new("RGB", (96, 48), (255, 0, 0))
    image.paste((0, 0, 255), (48, 0, 96, 48))
    return image


@pytest.mark.parametrize("content_type", ["image/heic", "image/heif", "application/x-image"])
def test_a_rotated_heic_decodes_upright(content_type):
    image = inference.input_fn(heic(sideways(), orientation=6), content_type)
    assert image.mode == "RGB" and image.size == (48, 96)
    top, bottom = image.getpixel((24, 10)), image.getpixel((24, 86))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_heic_refusals_use_the_serving_contracts_codes():
    body = heic(sideways())
    with pytest.raises(inference.InferenceInputError) as caught:
        inference.input_fn(body, "image/jpeg")
    assert (caught.value.status_code, caught.value.code) == (415, "content_type_mismatch")
    with pytest.raises(inference.InferenceInputError) as caught:
        inference.input_fn(body[: len(body) // 2], "image/heic")  # a cut-off upload
    assert caught.value.status_code == 400


def test_the_decode_budget_is_checked_on_the_heif_header_before_decoding(monkeypatch):
    """1,600 x 1,200 = 1.92 MP; at 1 MP the header alone refuses it, 413 image_too_large."""
    body = heic(Image.new("RGB", (1600, 1200), (10, 120, 30)))
    monkeypatch.setenv("BREEDLINE_MAX_DECODE_MEGAPIXELS", "1")
    loads = []
    monkeypatch.setattr(decoding, "_finish", lambda image: loads.append(image) or image)
    with pytest.raises(inference.InferenceInputError) as caught:
        inference.input_fn(body, "image/heic")
    assert (caught.value.status_code, caught.value.code) == (413, "image_too_large")
    assert loads == []  # nothing was decoded
    cost = decoding.estimated_bytes((1600, 1200), "RGB") + 1600 * 1200 * decoding.HEIF_EXTRA_BYTES_PER_PIXEL
    assert cost / (1600 * 1200) > decoding.PEAK_BYTES_PER_PIXEL["RGB"]


def test_an_embedded_thumbnail_big_enough_is_decoded_instead_of_the_full_image():
    body = heic(Image.new("RGB", (1024, 768), (200, 30, 30)), thumbnails=(512, 96))
    # 512 x 384 is the smallest thumbnail whose shorter side still covers 300: it is decoded, not 1024 x 768.
    assert decoding.decode_for_size(body, 300).size == (512, 384)
    # Too small a thumbnail is never used: the full image is decoded.
    assert decoding.decode_for_size(body, 500).size == (1024, 768)


def test_a_heic_photo_is_classified_like_the_same_photo_as_png(trained_job: Job):
    """End to end in the serving script: the model answers a HEIC, with the label its PNG twin gets."""
    model = inference.model_fn(str(trained_job.model_dir))
    digit = Image.open(next((trained_job.data / "test" / "4").glob("*.jpg"))).convert("RGB").resize((96, 96))
    png = io.BytesIO()
    digit.save(png, "PNG")
    from_heic = json.loads(inference.predict_bytes(heic(digit), "image/heic", model))
    from_png = json.loads(inference.predict_bytes(png.getvalue(), "image/png", model))
    assert from_heic["label"] == from_png["label"]
    assert abs(from_heic["probability"] - from_png["probability"]) < 0.1
