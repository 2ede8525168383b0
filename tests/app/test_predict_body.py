"""The predict route's body decoding: byte for byte what Chalice's ``Request.raw_body`` gives.

``chalicelib.predict.decode_event_body`` replaces ``raw_body`` because the
stdlib base64 decode was most of the route's time for a 4 MB photo. Every
test here compares against Chalice's own ``Request`` on the same event, so a
difference in any byte, in any mode (pybase64, stdlib fallback, plain text
bodies) fails.
"""

from __future__ import annotations

import base64
import importlib.util
import random
import sys
from types import SimpleNamespace

import pybase64
import pytest
from chalice.app import Request

from app_helpers import ROOT, load_event
from chalicelib import predict
from chalicelib.predict import PredictError, decode_event_body

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def event(body, is_base64=True, *, with_flag=True) -> dict:
    """API Gateway's sample predict event with another body."""
    e = load_event("api_predict_jpeg.json")
    e["body"] = body
    if with_flag:
        e["isBase64Encoded"] = is_base64
    else:
        e.pop("isBase64Encoded", None)
    return e


def chalice_raw_body(e: dict) -> bytes:
    """What the route used to read: Chalice's own decoding of the same event."""
    return Request(e).raw_body


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(params=["pybase64", "stdlib"])
def mode(request, monkeypatch):
    """Run a test with the SIMD decoder and with the fallback a zip without pybase64 uses."""
    if request.param == "stdlib":
        monkeypatch.setattr(predict, "_fast_base64", None)
    else:
        assert predict._fast_base64 is pybase64
    return request.param


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 57, 1000, 65_537, 4 * 1024 * 1024 + 3])
def test_random_binary_bodies_are_byte_identical_to_raw_body(mode, size):
    data = random.Random(size).randbytes(size)
    e = event(encoded(data))
    got = decode_event_body(e)
    assert type(got) is bytes
    assert got == chalice_raw_body(e) == data


def test_bytes_body_flagged_base64_is_decoded_too(mode):
    data = random.Random(7).randbytes(3000)
    e = event(base64.b64encode(data))
    assert decode_event_body(e) == chalice_raw_body(e) == data


TEXT_BODIES = ["plain text body", "h\u00e9llo \u00fcnicode \u2603", "", b"\xff\xd8\xff raw bytes", b""]


@pytest.mark.parametrize("body", TEXT_BODIES)
@pytest.mark.parametrize("with_flag", [True, False])
def test_bodies_not_flagged_base64_are_not_decoded(mode, body, with_flag):
    # The local gateway (chalice.test, chalice local) passes non-binary bodies as bytes, unflagged.
    e = event(body, is_base64=False, with_flag=with_flag)
    assert decode_event_body(e) == chalice_raw_body(e)
    expected = body if isinstance(body, bytes) else body.encode("utf-8")
    assert decode_event_body(e) == expected


@pytest.mark.parametrize("is_base64", [True, False])
def test_no_body_or_an_empty_one_is_empty_bytes(mode, is_base64):
    for body in (None, ""):
        e = event(body, is_base64)
        assert decode_event_body(e) == chalice_raw_body(e) == b""


#: Base64 that is not canonical but that Chalice (stdlib, lenient) decodes: the
#: result must be the same bytes, never pybase64's own lenient reading.
LENIENT = [
    "YQ==\n",
    " YQ==",
    "Y Q==",
    "YQ===",
    "/9j/4A==garbage!!",  # decodes to a JPEG's magic bytes
    "AA==AA==",  # pybase64 (validate=False) reads three bytes here, the stdlib one
    "%%%%",
    "\n".join(encoded(bytes(range(256))) [i:i + 76] for i in range(0, 344, 76)),  # MIME line breaks
]


@pytest.mark.parametrize("body", LENIENT)
def test_non_canonical_base64_decodes_as_chalice_does(mode, body):
    e = event(body)
    assert decode_event_body(e) == chalice_raw_body(e)


@pytest.mark.parametrize("body", ["abc", "/9j/4A", "A", "YQ", "AA=A", "A==="])
def test_invalid_base64_is_a_400_not_an_image(mode, body):
    e = event(body)
    with pytest.raises(ValueError):  # what made the route answer 502 internal_error before
        chalice_raw_body(e)
    with pytest.raises(PredictError) as info:
        decode_event_body(e)
    assert (info.value.status, info.value.code) == (400, "not_an_image")
    assert "base64" in info.value.message


def test_non_ascii_text_flagged_base64_is_a_400(mode):
    with pytest.raises(PredictError) as info:
        decode_event_body(event("YQ==\u00e9"))
    assert info.value.status == 400


def test_random_strings_decode_like_chalice_or_fail_as_a_400(mode):
    """Fuzz: alphabet, padding and junk in any order; same bytes, or both refuse."""
    rng = random.Random(2026)
    pieces = list(ALPHABET) + ["="] * 8 + ["\n", " ", "!", "-", "_"]
    for _ in range(3000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 24)))
        e = event(body)
        try:
            expected = chalice_raw_body(e)
        except ValueError:
            with pytest.raises(PredictError):
                decode_event_body(e)
            continue
        assert decode_event_body(e) == expected, body


def test_canonical_bodies_take_the_simd_path_alone(monkeypatch):
    """A canonical body is decoded once, by pybase64: the stdlib is never called."""
    calls = []

    def spy(data, validate=False):
        calls.append(validate)
        return pybase64.b64decode(data, validate=validate)

    def refuse(*args, **kwargs):
        raise AssertionError("the stdlib decoder ran on a canonical body")

    monkeypatch.setattr(predict, "_fast_base64", SimpleNamespace(b64decode=spy))
    monkeypatch.setattr(predict, "base64", SimpleNamespace(b64decode=refuse))
    data = random.Random(1).randbytes(100_000)
    assert decode_event_body(event(encoded(data))) == data
    assert calls == [True]  # strict: a lenient pybase64 reading could differ from Chalice's


def test_without_pybase64_the_module_imports_and_decodes_with_the_stdlib(monkeypatch):
    """A Lambda zip built without pybase64: load a fresh copy of the module with the import failing."""
    monkeypatch.setitem(sys.modules, "pybase64", None)  # `import pybase64` raises ImportError
    spec = importlib.util.spec_from_file_location("predict_without_pybase64",
                                                  ROOT / "chalice_app" / "chalicelib" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._fast_base64 is None
    data = random.Random(3).randbytes(50_000)
    e = event(encoded(data))
    assert module.decode_event_body(e) == chalice_raw_body(e) == data
    with pytest.raises(module.PredictError) as info:
        module.decode_event_body(event("abc"))
    assert info.value.code == "not_an_image"


def test_the_lambda_zip_pins_the_same_pybase64_as_the_dev_environment(requirement_pins):
    """chalice package installs chalice_app/requirements.txt: the route must get the pybase64 tested here."""
    lambda_pin = requirement_pins(ROOT / "chalice_app" / "requirements.txt").get("pybase64")
    assert lambda_pin is not None and lambda_pin == requirement_pins(ROOT / "requirements.txt").get("pybase64")
    assert lambda_pin == pybase64.__version__
