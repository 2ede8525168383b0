"""Issue 17: the training job builds ``model.onnx``; the endpoint serves it without importing torch.

On the session's one trained job (tests/ml/conftest.py): what the job wrote and
recorded, the same answers as the torch path (top-1 and abstention), no torch in
a process that serves ``model.onnx``, and older or broken artifacts still serving.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference
import onnx_export
import onnx_serving
import presets
from ml_jobs import Job, fresh_model, photo_jpeg, serve_in_bare_process

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "immunohistochemistry")


def _copy(trained_job: Job, tmp_path: Path) -> tuple[Path, dict]:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_job.model_dir, model_dir)
    return model_dir, json.loads((model_dir / "model_meta.json").read_text())


def _write_meta(model_dir: Path, meta: dict) -> None:
    (model_dir / "model_meta.json").write_text(json.dumps(meta))


def test_the_job_writes_model_onnx_and_records_its_parity(trained_job: Job) -> None:
    meta = json.loads((trained_job.model_dir / "model_meta.json").read_text())
    facts = meta["onnx"]
    assert facts["status"] == "ok" and facts["file"] == "model.onnx"
    assert facts["bytes"] == (trained_job.model_dir / "model.onnx").stat().st_size
    assert facts["opset"] == onnx_serving.ONNX_OPSET
    assert facts["input"]["shape"] == ["batch", 3, 32, 32] and "dynamic batch" in facts["input"]["policy"]
    assert facts["outputs"] == ["logits", "features"]  # abstention reads the features
    parity = facts["parity"]
    assert parity["ok"] and parity["probe_images"] == 32  # the fixture's 20 test images, then 12 of valid
    assert parity["top1_agreement"] == 1.0
    assert 0.0 <= parity["max_abs_diff_logits"] < 1e-2 and 0.0 <= parity["max_abs_diff_features"] < 1e-2
    assert "onnx: model.onnx written (opset 17" in trained_job.result.stdout


def test_numpy_normalisation_is_the_torch_one() -> None:
    prep = presets.Preprocessing(image_size=32)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    got = prep.normalise_numpy(pixels)
    assert got.shape == (1, 3, 32, 32) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got[0], prep.normalise_uint8(pixels).numpy())


def test_onnx_path_answers_as_the_torch_path_on_digits_and_photos(trained_job: Job, monkeypatch) -> None:
    """Issue 17's rule: the same top-1 at >= 99% on the digits test set and the resized photos; same abstention."""
    onnx_model = fresh_model(trained_job.model_dir, monkeypatch, None)
    torch_model = fresh_model(trained_job.model_dir, monkeypatch, "torch")
    assert (onnx_model.backend, onnx_model.module, torch_model.session) == ("onnx", None, None)
    digits = [p.read_bytes() for p in sorted(trained_job.data.glob("test/*/*.jpg"))]
    photos = [photo_jpeg(name, size) for name in PHOTOS for size in ((500, 400), (1600, 1200))]
    for name, bodies in (("digits", digits), ("photos", photos)):
        same_top1 = same_reason = 0
        for body in bodies:
            image = inference.input_fn(body, "image/jpeg")
            fast, slow = inference.predict_fn(image, onnx_model), inference.predict_fn(image, torch_model)
            same_top1 += fast["label"] == slow["label"]
            same_reason += fast[inference.ABSTAIN_REASON] == slow[inference.ABSTAIN_REASON]
        assert same_top1 / len(bodies) >= 0.99, f"{name}: top-1 {same_top1}/{len(bodies)}"
        assert same_reason == len(bodies), f"{name}: abstention {same_reason}/{len(bodies)}"


def test_serving_model_onnx_never_imports_torch(trained_job: Job, tmp_path: Path) -> None:
    """code/ alone, as the container runs it: model_fn + predict on model.onnx, and no torch module loaded."""
    script = (
        "import sys, json; import inference; "
        "m = inference.model_fn(sys.argv[1]); "
        "answer = json.loads(inference.predict_bytes(open(sys.argv[2], 'rb').read(), 'image/jpeg', m)); "
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'torchvision', 'backbones', "
        "'torch_serving', 'onnx_export', 'efficientnet_lite_pytorch')); "
        "print(json.dumps({'backend': m.backend, 'answer': answer, 'loaded': loaded}))"
    )
    image = tmp_path / "x.jpg"
    image.write_bytes(next((trained_job.data / "test" / "3").glob("*.jpg")).read_bytes())
    result = serve_in_bare_process(trained_job.model_dir, image, script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnx" and out["loaded"] == []
    assert out["answer"]["top_k"][0]["label"] in [str(i) for i in range(10)] and "abstained" in out["answer"]
    assert '"onnx_source": "model.onnx"' in result.stdout


def test_an_artifact_without_model_onnx_still_serves_the_old_way(trained_job: Job, tmp_path: Path,
                                                                  monkeypatch) -> None:
    model_dir, meta = _copy(trained_job, tmp_path)
    (model_dir / "model.onnx").unlink()
    del meta["onnx"]
    _write_meta(model_dir, meta)
    body = next((trained_job.data / "test" / "5").glob("*.jpg")).read_bytes()
    old = fresh_model(model_dir, monkeypatch, None)
    assert (old.backend, inference._onnx_source(old)) == ("onnx", "in-memory export")
    assert "has no model.onnx" in old.file_reason
    served_torch = fresh_model(model_dir, monkeypatch, "torch")
    assert served_torch.backend == "torch"
    for served in (old, served_torch):
        answer = json.loads(inference.predict_bytes(body, "image/jpeg", served))
        assert answer["top_k"][0]["label"] in served.class_names


def test_a_job_that_found_onnx_unfit_serves_with_torch(trained_job: Job, tmp_path: Path, monkeypatch) -> None:
    model_dir, meta = _copy(trained_job, tmp_path)
    (model_dir / "model.onnx").unlink()
    meta["onnx"] = {"status": "failed", "reason": "ONNX Runtime differs from torch on 20 probe images"}
    _write_meta(model_dir, meta)
    served = fresh_model(model_dir, monkeypatch, None)
    assert served.backend == "torch" and "differs from torch" in served.file_reason
    assert "found ONNX unfit" in served.backend_reason  # no second export at load
    with pytest.raises(inference.ServingBackendError, match="shipped no model.onnx: ONNX Runtime differs"):
        fresh_model(model_dir, monkeypatch, "onnx")


def test_a_truncated_model_onnx_is_not_served(trained_job: Job, tmp_path: Path, monkeypatch) -> None:
    model_dir, _meta = _copy(trained_job, tmp_path)
    data = (model_dir / "model.onnx").read_bytes()
    (model_dir / "model.onnx").write_bytes(data[: len(data) // 2])
    served = fresh_model(model_dir, monkeypatch, None)
    assert f"model.onnx has {len(data) // 2} bytes, model_meta.json says {len(data)}" == served.file_reason
    assert inference._onnx_source(served) == "in-memory export"  # re-exported from model.pt, checked at load


def test_build_onnx_artifact_reports_a_failure_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    probe = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    pool = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d((7, 7)))
    facts = onnx_export.build_onnx_artifact(pool, tmp_path, probe)
    assert facts["status"] == "failed" and facts["reason"].startswith("ONNX export failed:")
    assert "\n" not in facts["reason"] and not (tmp_path / "model.onnx").exists()

    class Drifts(torch.nn.Module):  # its output depends on Python state the trace freezes
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Drifts.calls += 1
            return x.mean(dim=(2, 3)) + float(Drifts.calls)

    facts = onnx_export.build_onnx_artifact(Drifts(), tmp_path, probe)
    assert facts["status"] == "failed" and "differs from torch on 4 probe images" in facts["reason"]
    assert facts["parity"]["ok"] is False and facts["parity"]["max_abs_diff_logits"] > 0.5
    assert not (tmp_path / "model.onnx").exists()
    ok = onnx_export.build_onnx_artifact(torch.nn.Conv2d(3, 4, 3), tmp_path, probe)
    assert ok["status"] == "ok" and ok["parity"]["top1_agreement"] == 1.0 and ok["outputs"] == ["logits"]


def test_the_onnx_probe_is_the_held_out_images(trained_job: Job) -> None:
    """Served pixels of real test images: the same batch serving would build for them."""
    import final_job

    class Split:
        samples = [(str(p), 0) for p in sorted(trained_job.data.glob("test/*/*.jpg"))[:3]]

    prep = presets.Preprocessing(image_size=32)
    probe = final_job.onnx_probe({"test": Split(), "valid": Split()}, prep)
    assert probe.shape == (6, 3, 32, 32)
    image = Image.open(Split.samples[0][0]).convert("RGB")
    expected = prep.normalise_numpy(np.asarray(inference.resize_crop(image, prep.resize_size, 32)))
    np.testing.assert_array_equal(probe[0], expected[0])


def test_the_training_container_installs_the_onnx_pins_the_tests_run(requirement_pins) -> None:
    root = Path(onnx_export.__file__).resolve().parent.parent
    training = requirement_pins(root / "ml_scripts" / "requirements.txt")
    dev = requirement_pins(root / "requirements.txt")
    for name in ("onnx", "onnxruntime"):
        assert training[name] == dev[name], name
