"""Phone photos as phones send them (issue 16): multipart/form-data forms and HEIC/HEIF bodies on POST /predict.

The route forwards the image's own bytes (EXIF orientation included) to a real
botocore sagemaker-runtime client under Stubber, which checks them byte for
byte; the forwarded bytes are then decoded by the model's own decoder
(ml_scripts/decoding.py) to show the photo comes out upright.
"""

from __future__ import annotations

import io
import json

import pytest
from botocore.response import StreamingBody
from decoding import decode_for_size
from PIL import Image

ANSWER = {"label": "corgi", "probability": 0.9, "top_k": [{"label": "corgi", "probability": 0.9}]}
BOUNDARY = "----breedline-test-4f1c"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
#: EXIF orientation 6: the camera was turned; a viewer rotates the stored image 90 degrees clockwise.
ROTATED_CW = 6


def sideways_photo(fmt: str) -> bytes:
    """A 64 x 32 image stored sideways (left red, right blue) with EXIF orientation 6: upright, red is on top."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = ROTATED_CW
    out = io.BytesIO()
    image.save(out, fmt, exif=exif.tobytes(), quality=95)
    return out.getvalue()


def assert_upright(data: bytes) -> None:
    image = decode_for_size(data, 64)  # no smaller than the image: decoded whole
    assert image.size == (32, 64)  # portrait, as the phone showed it
    top, bottom = image.getpixel((16, 8)), image.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def form(*parts: tuple[list[str], bytes], close: bool = True) -> bytes:
    out = b""
    for headers, data in parts:
        out += (
            f"--{BOUNDARY}\r\n".encode()
            + "".join(f"{h}\r\n" for h in headers).encode()
            + b"\r\n"
            + data
            + b"\r\n"
        )
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def file_part(
    data: bytes, content_type: str | None = "image/jpeg", filename: str = "photo.jpg"
) -> tuple[list[str], bytes]:
    headers = [f'Content-Disposition: form-data; name="image"; filename="{filename}"']
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    return headers, data


@pytest.fixture
def http(env, tmp_path):
    import app as chalice_app
    from chalice.test import Client

    with Client(chalice_app.app, project_dir=str(tmp_path)) as client:
        yield client.http


def expect_invoke(runtime, data: bytes, content_type: str) -> None:
    runtime.add_response(
        "invoke_endpoint",
        {
            "Body": StreamingBody(io.BytesIO(json.dumps(ANSWER).encode()), len(json.dumps(ANSWER))),
            "InvokedProductionVariant": "m1",
        },
        {
            "EndpointName": "breedline-classifier",
            "Body": data,
            "ContentType": content_type,
            "Accept": "application/json",
        },
    )


def post(http, data: bytes, content_type: str) -> tuple[int, dict]:
    response = http.post("/predict", body=data, headers={"Content-Type": content_type})
    return response.status_code, json.loads(response.body)


def test_a_form_with_a_rotated_jpeg_is_forwarded_byte_for_byte_and_decodes_upright(http, runtime):
    photo = sideways_photo("JPEG")
    expect_invoke(runtime, photo, "image/jpeg")
    note = (['Content-Disposition: form-data; name="note"'], b"from my phone")  # a text field: ignored
    status, payload = post(http, form(note, file_part(photo)), FORM)
    assert status == 200 and payload["label"] == "corgi"
    runtime.assert_no_pending_responses()
    assert_upright(photo)


@pytest.mark.parametrize("declared", [None, "application/octet-stream"])
def test_a_part_without_an_image_type_is_decided_by_its_magic_bytes(http, runtime, declared):
    photo = sideways_photo("PNG")
    expect_invoke(runtime, photo, "image/png")
    assert post(http, form(file_part(photo, declared, "upload.bin")), FORM)[0] == 200
    runtime.assert_no_pending_responses()


def test_a_form_with_a_rotated_heic_is_forwarded_as_heic(http, runtime):
    photo = sideways_photo("HEIF")
    assert photo[4:12] == b"ftypheic"
    expect_invoke(runtime, photo, "image/heic")
    assert post(http, form(file_part(photo, "image/heic", "IMG_0001.HEIC")), FORM)[0] == 200
    runtime.assert_no_pending_responses()
    assert_upright(photo)


def _form_cases() -> list[tuple[bytes, str, int, str]]:
    photo = sideways_photo("JPEG")
    return [
        (form(file_part(photo), file_part(photo)), FORM, 400, "bad_multipart"),  # two files
        (
            form((['Content-Disposition: form-data; name="note"'], b"hi")),
            FORM,
            400,
            "bad_multipart",
        ),  # no file
        (
            form(file_part(b"", "application/octet-stream", "")),
            FORM,
            400,
            "bad_multipart",
        ),  # empty file input
        (form(file_part(photo), close=False), FORM, 400, "bad_multipart"),  # cut off
        (b"not a form at all", FORM, 400, "bad_multipart"),
        (form(file_part(photo)), "multipart/form-data", 400, "bad_multipart"),  # no boundary
        (b"", FORM, 400, "empty_body"),
        (form(file_part(photo, "image/png")), FORM, 415, "content_type_mismatch"),
        (form(file_part(b"GIF89a" + bytes(40), "image/gif", "a.gif")), FORM, 415, "unsupported_media_type"),
        (form(file_part(b"just text", "text/csv", "a.csv")), FORM, 415, "unsupported_media_type"),
        (form(file_part(b"\x00" * 64, "image/jpeg")), FORM, 400, "not_an_image"),
        (form(file_part(photo + bytes(5000))), FORM, 413, "payload_too_large"),
    ]


@pytest.mark.parametrize("data, content_type, status, code", _form_cases())
def test_bad_forms_are_json_errors_that_never_reach_the_endpoint(
    http, runtime, monkeypatch, data, content_type, status, code
):
    monkeypatch.setenv("BREEDLINE_MAX_IMAGE_BYTES", "4096")
    got_status, payload = post(http, data, content_type)
    assert (got_status, payload["code"]) == (status, code), payload
    assert payload["message"]
    runtime.assert_no_pending_responses()


@pytest.mark.parametrize("content_type", ["image/heic", "image/heif", "image/HEIC; charset=binary"])
def test_a_heic_body_is_accepted_as_heic_or_heif(http, runtime, content_type):
    photo = sideways_photo("HEIF")
    expect_invoke(runtime, photo, content_type.split(";")[0].lower())
    assert post(http, photo, content_type)[0] == 200
    runtime.assert_no_pending_responses()


def test_heif_brands_are_sniffed_and_avif_is_refused(http, runtime):
    photo = sideways_photo("HEIF")
    mif1 = photo[:8] + b"mif1" + photo[12:]  # the generic HEIF brand
    expect_invoke(runtime, mif1, "image/heif")
    assert post(http, mif1, "image/heif")[0] == 200
    status, payload = post(http, photo[:8] + b"avif" + photo[12:], "image/heic")
    assert (status, payload["code"]) == (415, "unsupported_media_type") and "AVIF" in payload["message"]
    status, payload = post(http, photo, "image/jpeg")
    assert (status, payload["code"]) == (415, "content_type_mismatch")
    runtime.assert_no_pending_responses()


def test_the_lambda_zip_pins_the_python_multipart_tested_here(requirement_pins):
    """chalice package installs chalice_app/requirements.txt: forms must be parsed by the version tested here."""
    import python_multipart
    from app_helpers import ROOT

    lambda_pin = requirement_pins(ROOT / "chalice_app" / "requirements.txt").get("python-multipart")
    assert lambda_pin is not None and lambda_pin == requirement_pins(ROOT / "requirements.txt").get(
        "python-multipart"
    )
    assert lambda_pin == python_multipart.__version__
    assert "pillow-heif" not in requirement_pins(
        ROOT / "chalice_app" / "requirements.txt"
    )  # the Lambda never decodes
