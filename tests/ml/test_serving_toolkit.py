"""The trained model served through AWS's own serving toolkit, in process, without TorchServe.

``sagemaker_pytorch_serving_container.handler_service.HandlerService`` (2.0.25, the
toolkit the PyTorch 2.6 inference image pins) is what TorchServe calls in the
container. It imports ``code/inference.py`` from the model directory, and its
Transformer maps errors to statuses: only a ``sagemaker_inference`` toolkit error
keeps its own status, everything else is a 500. The body of an error is the
error's message, a newline and the trace, so its first line must be our JSON.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from breedline.local.serve_model import ServingContext, invoke
from ml_jobs import Job

pytest.importorskip("sagemaker_pytorch_serving_container")
from sagemaker_pytorch_serving_container.handler_service import HandlerService  # noqa: E402


@pytest.fixture
def service(trained_job: Job, monkeypatch):
    """A fresh HandlerService on the job's model dir, importing inference.py from its ``code/``."""
    code = trained_job.model_dir / "code"
    monkeypatch.syspath_prepend(str(code))
    for name in ("inference", "backbones", "contract", "decoding", "image_folder", "presets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    handler = HandlerService()
    handler.initialize(ServingContext(str(trained_job.model_dir)))
    assert sys.modules["inference"].__file__ == str(code / "inference.py")
    return handler


@pytest.fixture(scope="module")
def digit_jpeg(trained_job: Job) -> bytes:
    return next((trained_job.data / "test" / "4").glob("*.jpg")).read_bytes()


def _image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (16, 16)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    image = Image.fromarray(np.zeros(size[::-1], dtype=np.uint16)) if mode == "I;16" else Image.new(mode, size)
    image.save(out, fmt)
    return out.getvalue()


_MADE = {
    "GIF": lambda: _image("GIF"),
    "PNG": lambda: _image("PNG"),
    "BOMB16": lambda: _image("PNG", "I;16", (8900, 8900)),
    "TRUNCATED_PNG": lambda: _image("PNG", "RGB", (1, 100_000))[:-16],
}


def _call(service, trained_job: Job, body: bytes, content_type: str | None, accept: str = "*/*"):
    headers = {"Accept": accept}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return invoke(service, str(trained_job.model_dir), body, headers)


def test_a_good_image_is_answered_with_the_prediction(service, trained_job: Job, digit_jpeg: bytes) -> None:
    status, content_type, body = _call(service, trained_job, digit_jpeg, "image/jpeg")
    assert (status, content_type) == (200, "application/json")
    answer = json.loads(body)
    assert set(answer) - {"reason"} == {"label", "probability", "top_k", "abstained"}
    assert answer["top_k"][0]["label"] in [str(d) for d in range(10)]
    # ?abstain=false travels as an Accept parameter: the raw answer, top-1 as the label
    status, content_type, body = _call(service, trained_job, digit_jpeg, "image/jpeg", "application/json; abstain=false")
    raw = json.loads(body)
    assert (status, content_type) == (200, "application/json")
    assert raw["abstained"] is False and raw["label"] == raw["top_k"][0]["label"] == answer["top_k"][0]["label"]


@pytest.mark.parametrize(
    "name, body, content_type, accept, status, code",
    [
        ("text/plain", b"hello", "text/plain", "*/*", 415, "unsupported_media_type"),
        ("json body", b'{"a": 1}', "application/json", "*/*", 415, "unsupported_media_type"),
        ("no content type", b"\xff\xd8\xff", None, "*/*", 415, "unsupported_media_type"),
        ("garbage jpeg", b"\xff\xd8\xff" + b"not really a jpeg" * 20, "image/jpeg", "*/*", 400, "undecodable_image"),
        ("empty body", b"", "image/jpeg", "*/*", 400, "empty_body"),
        ("csv answer", "GOOD", "image/jpeg", "text/csv", 406, "not_acceptable"),
        ("too large", "LARGE", "image/jpeg", "*/*", 413, "payload_too_large"),
        # issue 15: other formats whatever the type says, mismatches, the decode budget, truncation
        ("gif as jpeg", "GIF", "image/jpeg", "*/*", 415, "unsupported_media_type"),
        ("eps as png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "image/png", "*/*", 415,
         "unsupported_media_type"),
        ("png as jpeg", "PNG", "image/jpeg", "*/*", 415, "content_type_mismatch"),
        ("8900 px 16-bit png", "BOMB16", "image/png", "*/*", 413, "image_too_large"),
        ("truncated png", "TRUNCATED_PNG", "image/png", "*/*", 400, "undecodable_image"),
    ],
)
def test_bad_requests_get_their_status_and_a_json_first_line(
    name, body, content_type, accept, status, code, service, trained_job: Job, digit_jpeg: bytes, monkeypatch
) -> None:
    if body == "GOOD":
        body = digit_jpeg
    elif body in _MADE:
        body = _MADE[body]()
    elif body == "LARGE":
        body = digit_jpeg
        monkeypatch.setenv("BREEDLINE_MAX_IMAGE_BYTES", str(len(digit_jpeg) - 1))
    got_status, _, answer = _call(service, trained_job, body, content_type, accept)
    assert got_status == status, (name, answer[:500])
    first_line, _, trace = answer.decode("utf-8").partition("\n")
    error = json.loads(first_line)
    assert error["code"] == code and error["status_code"] == status and error["message"]
    assert "Traceback" in trace  # the toolkit appends the trace: the client must read the first line only


def test_a_json_and_text_accept_list_is_answered(service, trained_job: Job, digit_jpeg: bytes) -> None:
    """Before: ``application/json, text/plain`` was refused with a 406 (only its first entry was read)."""
    status, content_type, body = _call(service, trained_job, digit_jpeg, "image/jpeg", "application/json, text/plain")
    assert (status, content_type) == (200, "application/json") and json.loads(body)["label"]


def test_an_unexpected_failure_is_a_500(service, trained_job: Job, digit_jpeg: bytes, monkeypatch) -> None:
    """The toolkit's own rule, for contrast: a plain exception is a server error."""
    monkeypatch.setattr(sys.modules["inference"], "_top_k", lambda: 1 / 0)
    status, _, answer = _call(service, trained_job, digit_jpeg, "image/jpeg")
    assert status == 500 and b"ZeroDivisionError" in answer


def test_the_container_codes_are_the_predict_api_codes() -> None:
    """The codes inference.py sends are the API's client-error codes, with the same status."""
    import inference
    from chalicelib.predict import ALL_ERRORS

    sent = set(inference.ERROR_CODES.items()) | {(400, "empty_body"), (400, "not_an_image"),
                                                 (413, inference.IMAGE_TOO_LARGE),
                                                 (415, inference.CONTENT_TYPE_MISMATCH)}
    assert sent <= {(status, code) for status, code in ALL_ERRORS if 400 <= status < 500}
