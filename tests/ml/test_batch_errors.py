"""BREEDLINE_BATCH_ERRORS=lines through AWS's own serving toolkit: a refused image is a 200 error line.

Why through the toolkit: whether a transform job survives a bad image depends on
the status the container answers, and that status is set by
``sagemaker_inference``'s Transformer from what ``inference.py`` raises or returns.
The same trained model answers an endpoint's 4xx without the setting.
"""

from __future__ import annotations

import inspect
import io
import json
import sys

import pytest

from breedline.local.serve_model import ServingContext, invoke
from ml_jobs import Job

pytest.importorskip("sagemaker_pytorch_serving_container")
from sagemaker_pytorch_serving_container.handler_service import HandlerService  # noqa: E402

SERVING_MODULES = ("inference", "batch_errors", "abstention", "onnx_serving", "backbones", "contract",
                   "decoding", "image_folder", "presets")


@pytest.fixture
def service(trained_job: Job, monkeypatch):
    """A fresh HandlerService importing the model archive's own ``code/inference.py``."""
    code = trained_job.model_dir / "code"
    assert (code / "batch_errors.py").is_file(), "final_job.SERVING_FILES must ship batch_errors.py"
    monkeypatch.syspath_prepend(str(code))
    for name in SERVING_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    monkeypatch.setenv("BREEDLINE_SERVING_BACKEND", "torch")
    handler = HandlerService()
    handler.initialize(ServingContext(str(trained_job.model_dir)))
    return handler


def _call(service, job: Job, body: bytes, content_type: str = "application/x-image"):
    return invoke(service, str(job.model_dir), body, {"Content-Type": content_type, "Accept": "application/json"})


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    return out.getvalue()


def test_refusals_become_error_lines_and_good_images_still_predict(service, trained_job: Job, monkeypatch) -> None:
    monkeypatch.setenv("BREEDLINE_BATCH_ERRORS", "lines")
    good = next((trained_job.data / "test" / "3").glob("*.jpg")).read_bytes()
    status, content_type, body = _call(service, trained_job, good)
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["top_k"][0]["label"] in [str(d) for d in range(10)]

    cases = {
        good[: len(good) // 3]: ("undecodable_image", 400),   # a JPEG cut short
        b"definitely not an image": ("not_an_image", 400),
        _gif(): ("unsupported_media_type", 415),
    }
    for bad, (code, status_code) in cases.items():
        status, content_type, body = _call(service, trained_job, bad)
        assert (status, content_type) == (200, "application/json"), body[:300]
        assert b"\n" not in body, "one line per record"
        error = json.loads(body)["error"]
        assert (error["code"], error["status_code"]) == (code, status_code)
        assert error["message"]

    monkeypatch.setenv("BREEDLINE_MAX_IMAGE_BYTES", str(len(good) - 1))
    status, _, body = _call(service, trained_job, good)
    assert status == 200 and json.loads(body)["error"]["status_code"] == 413


def test_without_the_setting_the_endpoint_still_refuses_with_4xx(service, trained_job: Job, monkeypatch) -> None:
    monkeypatch.delenv("BREEDLINE_BATCH_ERRORS", raising=False)
    status, _, body = _call(service, trained_job, b"definitely not an image")
    assert status == 400
    assert json.loads(body.split(b"\n", 1)[0])["code"] == "not_an_image"
    monkeypatch.setenv("BREEDLINE_BATCH_ERRORS", "something-else")
    assert _call(service, trained_job, _gif())[0] == 415


def test_the_wrapped_chain_keeps_the_signatures_the_toolkit_counts() -> None:
    """The toolkit passes its context to a handler with one parameter more than it calls with."""
    import inference

    assert list(inspect.signature(inference.input_fn).parameters) == ["body", "content_type"]
    assert list(inspect.signature(inference.predict_fn).parameters) == ["data", "model"]
    assert len(inspect.signature(inference.output_fn).parameters) == 2
