"""inference.py: the serving contract on a model trained by train.py, every bad input, the fast path."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import abstention
import backbones
import decoding
import inference
import onnx_export
from ml_jobs import Job, fresh_model, photo_jpeg, serve_in_bare_process


@pytest.fixture(scope="module")
def model(trained_job: Job) -> inference.LoadedModel:
    return inference.model_fn(str(trained_job.model_dir))


@pytest.fixture(scope="module")
def digit_jpeg(trained_job: Job) -> bytes:
    return next((trained_job.data / "test" / "4").glob("*.jpg")).read_bytes()


def _png(image: Image.Image, mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    image.convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _check_answer(text: str, class_names: list[str], k: int = 5) -> dict:
    answer = json.loads(text)
    if answer["abstained"]:  # issue 13: "I don't know" keeps the candidates
        assert set(answer) == {"label", "probability", "top_k", "abstained", "reason"}
        assert answer["label"] is None and answer["probability"] is None
        assert answer["reason"] in ("low_confidence", "out_of_distribution")
        answer = {**answer, "label": answer["top_k"][0]["label"], "probability": answer["top_k"][0]["probability"]}
    else:
        assert set(answer) == {"label", "probability", "top_k", "abstained"}
    assert answer["label"] in class_names and 0.0 <= answer["probability"] <= 1.0
    assert len(answer["top_k"]) == k
    assert answer["top_k"][0] == {"label": answer["label"], "probability": answer["probability"]}
    probabilities = [item["probability"] for item in answer["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    return answer


def test_round_trip_on_jpeg_and_png(model, digit_jpeg: bytes) -> None:
    for content_type in ("image/jpeg", "application/x-image", "image/jpeg; charset=binary"):
        data = inference.input_fn(digit_jpeg, content_type)
        jpeg_answer = _check_answer(inference.output_fn(inference.predict_fn(data, model), "application/json"),
                                    model.class_names)
    png = _png(Image.open(io.BytesIO(digit_jpeg)))  # RGBA PNG of the same pixels
    png_answer = _check_answer(inference.predict_bytes(png, "image/png", model), model.class_names)
    assert png_answer["label"] == jpeg_answer["label"]
    assert png_answer["probability"] == pytest.approx(jpeg_answer["probability"], abs=1e-4)


def test_model_is_loaded_once(trained_job: Job, model) -> None:
    assert inference.model_fn(str(trained_job.model_dir)) is model
    assert (model.backend, model.module) == ("onnx", None)  # the job's model.onnx: no torch module at all


def test_top_k_is_configurable(model, digit_jpeg: bytes, monkeypatch) -> None:
    monkeypatch.setenv("BREEDLINE_TOP_K", "3")
    _check_answer(inference.predict_bytes(digit_jpeg, "image/jpeg", model), model.class_names, k=3)
    monkeypatch.setenv("BREEDLINE_TOP_K", "50")  # capped at the number of classes
    _check_answer(inference.predict_bytes(digit_jpeg, "image/jpeg", model), model.class_names, k=10)


def _bomb_png() -> bytes:
    """225 megapixels (over 2x Pillow's limit) in a ~30 KB PNG."""
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, "PNG")
    return buf.getvalue()


def _warning_png() -> bytes:
    """100 megapixels: over Pillow's limit but under 2x, where Pillow only warns."""
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, body, content_type, status",
    [
        ("unsupported type", b"\xff\xd8\xff", "text/plain", 415),
        ("no type", b"\xff\xd8\xff", None, 415),
        ("gif claimed", b"GIF89a", "image/gif", 415),
        ("empty", b"", "image/jpeg", 400),
        ("garbage", b"this is not an image" * 10, "image/jpeg", 400),
        ("text body", "a string", "image/png", 400),
        ("truncated", "TRUNCATED", "image/jpeg", 400),
        ("bomb", "BOMB", "image/png", 413),
        ("over the pixel limit", "WARNING", "image/png", 413),
    ],
)
def test_bad_input_raises_with_status(name, body, content_type, status, digit_jpeg: bytes) -> None:
    if body == "TRUNCATED":
        body = digit_jpeg[: len(digit_jpeg) // 2]
    elif body == "BOMB":
        body = _bomb_png()
    elif body == "WARNING":
        body = _warning_png()
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(body, content_type)
    assert info.value.status_code == status, name
    assert json.loads(info.value.to_json())["status_code"] == status
    assert Image.MAX_IMAGE_PIXELS is not None  # the limit stays on


def test_input_errors_are_toolkit_errors_with_a_json_body() -> None:
    """In the container the toolkit answers a refusal's status only for its own error class."""
    errors = pytest.importorskip("sagemaker_inference.errors")
    error = inference.InferenceInputError("could not decode the image: x", 400)
    assert isinstance(error, errors.BaseInferenceToolkitError) and isinstance(error, ValueError)
    assert (error.status_code, error.phrase, str(error)) == (400, "Bad Request", "could not decode the image: x")
    assert json.loads(error.message) == {"code": "undecodable_image", "message": "could not decode the image: x",
                                         "status_code": 400}
    assert json.loads(inference.InferenceInputError("no", 415).to_json())["code"] == "unsupported_media_type"


def test_input_errors_work_without_the_toolkit(tmp_path: Path) -> None:
    """Where sagemaker_inference is not installed (a plain venv, the bench) the same error still works."""
    import subprocess

    script = (
        "import sys, json; sys.modules['sagemaker_inference'] = None; import inference; "
        "e = inference.InferenceInputError('too big', 413); "
        "print(json.dumps([e.status_code, e.phrase, json.loads(e.to_json()), str(e), "
        "type(e).__mro__[1].__module__]))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(inference.__file__).parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    status, phrase, body, text, base_module = json.loads(result.stdout.strip().splitlines()[-1])
    assert (status, phrase, text, base_module) == (413, "Request Entity Too Large", "too big", "serving_errors")
    assert body == {"code": "payload_too_large", "message": "too big", "status_code": 413}


def test_body_size_limit(monkeypatch, digit_jpeg: bytes) -> None:
    monkeypatch.setenv("BREEDLINE_MAX_IMAGE_BYTES", str(len(digit_jpeg) - 1))
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(digit_jpeg, "image/jpeg")
    assert info.value.status_code == 413


def test_non_json_accept_is_refused(model, digit_jpeg: bytes) -> None:
    prediction = inference.predict_fn(inference.input_fn(digit_jpeg, "image/jpeg"), model)
    answer = abstention.apply_abstention(prediction)
    assert json.loads(inference.output_fn(prediction, "*/*")) == answer
    assert json.loads(inference.output_fn(prediction, None)) == answer
    assert json.loads(inference.output_fn(prediction, "")) == answer
    with pytest.raises(inference.InferenceInputError) as info:
        inference.output_fn(prediction, "text/csv")
    assert info.value.status_code == 406


@pytest.fixture(scope="module")
def plain_module(trained_job: Job) -> torch.nn.Module:
    """The job's weights in a plain torch module: the reference the served answers are checked against."""
    return backbones.load_saved_model(trained_job.model_dir)


def _plain_top1(body: bytes, model: inference.LoadedModel, module: torch.nn.Module) -> int:
    x = model.prep.plain_transform()(decoding.load_rgb(body)).unsqueeze(0)
    with torch.inference_mode():
        return int(module(x).argmax())


def test_fast_path_top1_agrees_with_plain_path(trained_job: Job, model, plain_module) -> None:
    """Issue 6's rule: the fast path ships only if top-1 agrees with the plain path (>= 99%)."""
    bodies = [p.read_bytes() for p in sorted(trained_job.data.rglob("*.jpg"))]
    bodies += [photo_jpeg(name, (500, 400)) for name in ("chelsea", "astronaut", "coffee", "rocket")]
    bodies += [photo_jpeg(name, (4000, 3000)) for name in ("chelsea", "astronaut", "coffee")]
    agree = 0
    for body in bodies:
        fast = model.class_names.index(inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)["label"])
        agree += fast == _plain_top1(body, model, plain_module)
    assert agree / len(bodies) >= 0.99, f"{agree}/{len(bodies)}"


def test_model_tarball_code_dir_serves_on_its_own(trained_job: Job, digit_jpeg: bytes, tmp_path: Path) -> None:
    """code/ is importable without the repo's ml_scripts on sys.path (as in the serving container)."""
    # As the serving container does: code/ comes from PYTHONPATH. ``-S`` skips site-packages' .pth
    # files (the editable install's would add the checkout's ml_scripts/), so the installed
    # packages are given on PYTHONPATH after code/.
    script = (
        "import sys, json; import inference; "
        "m = inference.model_fn(sys.argv[1]); "
        "print(inference.predict_bytes(open(sys.argv[2], 'rb').read(), 'image/jpeg', m))"
    )
    image = tmp_path / "x.jpg"
    image.write_bytes(digit_jpeg)
    result = serve_in_bare_process(trained_job.model_dir, image, script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["label"] in [str(i) for i in range(10)]


# --------------------------------------------------------------------------- backends


def test_auto_backend_serves_with_onnx_runtime_and_agrees_with_torch(trained_job: Job, monkeypatch) -> None:
    """The ONNX fast path (the job's model.onnx) gives torch's answer: same top-1, probabilities within 1e-4."""
    onnx_model = fresh_model(trained_job.model_dir, monkeypatch, None)
    torch_model = fresh_model(trained_job.model_dir, monkeypatch, "torch")
    assert (onnx_model.backend, onnx_model.backend_reason, onnx_model.file_reason) == ("onnx", "", "")
    assert inference._onnx_source(onnx_model) == "model.onnx"
    assert torch_model.backend == "torch" and torch_model.session is None
    bodies = [p.read_bytes() for p in sorted(trained_job.data.glob("test/*/*.jpg"))][:40]
    bodies.append(photo_jpeg("chelsea", (4000, 3000)))
    for body in bodies:
        image = inference.input_fn(body, "image/jpeg")
        fast, slow = inference.predict_fn(image, onnx_model), inference.predict_fn(image, torch_model)
        assert fast["label"] == slow["label"]
        for a, b in zip(fast["top_k"], slow["top_k"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_torch_backend_is_the_plain_model_call(trained_job: Job, monkeypatch) -> None:
    """channels-last + inference_mode changes no logit beyond float rounding."""
    served = fresh_model(trained_job.model_dir, monkeypatch, "torch")
    plain = backbones.build_model("efficientnet_lite0", len(served.class_names), image_size=served.prep.image_size,
                               pretrained=False)
    plain.load_state_dict(torch.load(trained_job.model_dir / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(3, 3, served.prep.image_size, served.prep.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = plain.eval()(x)
    assert torch.allclose(torch.from_numpy(served.forward(x)), expected, rtol=1e-4, atol=1e-5)


def test_backend_setting_is_checked(trained_job: Job, monkeypatch) -> None:
    with pytest.raises(inference.ServingBackendError, match="use one of auto, torch, onnx"):
        fresh_model(trained_job.model_dir, monkeypatch, "tensorrt")


def test_missing_onnxruntime_falls_back_or_fails_as_asked(trained_job: Job, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    served = fresh_model(trained_job.model_dir, monkeypatch, "auto")
    assert (served.backend, served.backend_reason) == ("torch", "onnxruntime is not installed")
    with pytest.raises(inference.ServingBackendError, match="onnxruntime is not installed"):
        fresh_model(trained_job.model_dir, monkeypatch, "onnx")


class _CountsCalls(torch.nn.Module):
    """Its output depends on Python state that an ONNX trace freezes: export and torch disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean(dim=(2, 3)) + float(self.calls)


def test_onnx_session_is_refused_when_it_disagrees_with_torch() -> None:
    session, reason = onnx_export.onnx_session(_CountsCalls(), 8)
    assert session is None and "differs from torch" in reason
    session, reason = onnx_export.onnx_session(torch.nn.Conv2d(3, 4, 3), 8)
    assert session is not None and reason == ""
    # Idle ORT threads must not spin: on a small instance they slow the next request (bench notes).
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_onnx_export_failure_is_a_one_line_reason() -> None:
    """vgg11 below 224 px can't export (adaptive pooling up to 7x7); the exporter's graph dump stays out of the log line."""
    pool = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d((7, 7)))
    session, reason = onnx_export.onnx_session(pool, 8)
    assert session is None and reason.startswith("ONNX export or session failed:")
    assert "\n" not in reason and len(reason) < 400


def test_large_jpeg_decodes_to_the_draft_gap(model) -> None:
    """A 12 MP photo decodes at reduced size, but never below JPEG_DRAFT_GAP x the resize size."""
    image = inference.input_fn(photo_jpeg("astronaut", (4032, 3024)), "image/jpeg")
    need = model.prep.resize_size * inference.JPEG_DRAFT_GAP
    assert need <= min(image.size) < 3024


# ----------------------------------------------------------------- issue 15, items 7, 9, 10, 12 (container side)


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (16, 16)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "ICO", "JPEG2000", "EPS"])
@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/x-image"])
def test_other_formats_are_refused_whatever_the_content_type(fmt: str, content_type: str, monkeypatch) -> None:
    """Before, input_fn decoded anything Pillow can (EPS reaches Ghostscript); now none is even opened."""
    try:
        data = _encoded(fmt)
    except (OSError, KeyError) as exc:
        pytest.skip(f"Pillow cannot write {fmt}: {exc}")
    opened: list = []
    monkeypatch.setattr(decoding.Image, "open", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(data, content_type)
    assert (info.value.status_code, info.value.code) == (415, "unsupported_media_type")
    assert not opened


def test_the_magic_bytes_must_match_the_declared_type(digit_jpeg: bytes) -> None:
    png = _png(Image.open(io.BytesIO(digit_jpeg)), "RGB")
    for body, content_type in ((png, "image/jpeg"), (digit_jpeg, "image/png")):
        with pytest.raises(inference.InferenceInputError) as info:
            inference.input_fn(body, content_type)
        assert (info.value.status_code, info.value.code) == (415, "content_type_mismatch")
    assert inference.input_fn(png, "application/x-image").mode == "RGB"  # "some image": JPEG or PNG
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(b"\x00" * 64, "image/png")
    assert (info.value.status_code, info.value.code) == (400, "not_an_image")


def test_a_pillow_opener_is_asked_for_the_declared_format_only(digit_jpeg: bytes) -> None:
    """Even bytes that pass the magic check are opened by the one decoder the type names."""
    with pytest.raises(decoding.ImageDecodeError):
        decoding.decode_for_size(_encoded("GIF"), 256, formats=("PNG",))
    assert decoding.decode_for_size(digit_jpeg, 256, formats=("JPEG",)).mode == "RGB"


def _sized_png(mode: str, size: tuple[int, int]) -> bytes:
    if mode == "I;16":
        image = Image.fromarray(np.zeros(size[::-1], dtype=np.uint16))
    else:
        image = Image.new(mode, size)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_issue_15s_8900_px_pngs_are_refused_from_the_header(mode: str, monkeypatch) -> None:
    """Before: 4-9 s and 1.8-2.1 GB each. Now a 413 before any pixel is decoded."""
    data = _sized_png(mode, (8900, 8900))
    assert len(data) < 400_000
    monkeypatch.setattr(decoding, "_finish", lambda image: pytest.fail("pixels were decoded"))
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(data, "image/png")
    assert (info.value.status_code, info.value.code) == (413, "image_too_large")
    assert "8900 x 8900" in str(info.value)


def test_the_decode_budget_counts_mode_and_jpeg_draft(monkeypatch) -> None:
    """12 MP RGBA passes; 14.4 MP passes in RGB, not in 16-bit grey (23 bytes a pixel); a 27 MP JPEG decodes at 1/4."""
    assert inference.input_fn(_sized_png("RGBA", (4032, 3024)), "image/png").size == (4032, 3024)
    assert inference.input_fn(_sized_png("RGB", (4000, 3600)), "image/png").size == (4000, 3600)
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(_sized_png("I;16", (4000, 3600)), "image/png")
    assert info.value.code == "image_too_large"
    image = inference.input_fn(photo_jpeg("astronaut", (6000, 4500)), "image/jpeg")
    assert min(image.size) < 4500
    monkeypatch.setenv("BREEDLINE_MAX_DECODE_MEGAPIXELS", "1")
    with pytest.raises(inference.InferenceInputError) as info:
        inference.input_fn(_sized_png("RGB", (1200, 1000)), "image/png")
    assert info.value.code == "image_too_large"
    monkeypatch.setenv("BREEDLINE_MAX_DECODE_MEGAPIXELS", "-3")
    with pytest.raises(inference.ServingBackendError, match="BREEDLINE_MAX_DECODE_MEGAPIXELS"):
        inference.input_fn(_sized_png("RGB", (10, 10)), "image/png")


def test_a_truncated_tall_png_is_refused() -> None:
    """Before: a 1 x 100,000 PNG missing its last bytes was answered 200."""
    data = _sized_png("RGB", (1, 100_000))
    assert inference.input_fn(data, "image/png").size == (1, 100_000)
    for cut in range(1, 22):
        with pytest.raises(inference.InferenceInputError) as info:
            inference.input_fn(data[:-cut], "image/png")
        assert (info.value.status_code, info.value.code) == (400, "undecodable_image"), cut
    broken = bytearray(data)
    broken[40] ^= 0xFF  # inside IDAT: its CRC no longer checks out
    with pytest.raises(inference.InferenceInputError, match="CRC"):
        inference.input_fn(bytes(broken), "image/png")


@pytest.mark.parametrize(
    "accept, ok",
    [
        ("application/json, text/plain", True),
        ("text/plain, application/json;q=0.5", True),
        ("text/html, */*;q=0.1", True),
        ("application/*", True),
        ("text/plain", False),
        ("application/json;q=0, text/plain", False),
        ("text/csv", False),
    ],
)
def test_accept_lists_are_read_whole(accept: str, ok: bool) -> None:
    prediction = {"label": "4", "probability": 0.9, "top_k": [{"label": "4", "probability": 0.9}]}
    if ok:
        text, content_type = inference.output_fn(prediction, accept)  # labelled JSON, whatever Accept listed
        assert json.loads(text) == {**prediction, "abstained": False} and content_type == "application/json"
    else:
        with pytest.raises(inference.InferenceInputError) as info:
            inference.output_fn(prediction, accept)
        assert info.value.status_code == 406


def test_a_non_finite_probability_is_never_serialised() -> None:
    with pytest.raises(ValueError):
        inference.output_fn({"label": "4", "probability": float("nan"), "top_k": []}, "application/json")
