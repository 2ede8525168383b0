"""Issue 13's "I don't know": the OOD score and thresholds fitted by train.py, measured on the digits fixture.

Out of distribution: crops of scikit-image's photos and noise images; in distribution: the test split.
Targets: AUROC >= 0.95, >= 90% of OOD abstained, <= 10% of in-distribution test abstained.
"""

from __future__ import annotations

import json

import abstention
import inference
import numpy as np
import pytest
from ml_jobs import Job
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "colorwheel")


def _ood_images() -> list[Image.Image]:
    from skimage import data

    rng = np.random.default_rng(0)
    images = []
    for name in PHOTOS:
        arr = np.asarray(getattr(data, name)())[..., :3].astype(np.uint8)
        for _ in range(3):
            h, w = arr.shape[:2]
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            images.append(Image.fromarray(np.ascontiguousarray(arr[y : y + ch, x : x + cw])))
    for _ in range(8):
        images.append(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        images.append(Image.fromarray(np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)))
    return images


@pytest.fixture(scope="module")
def model(trained_job: Job) -> inference.LoadedModel:
    return inference.model_fn(str(trained_job.model_dir))


def _scores(model: inference.LoadedModel, images: list[Image.Image]) -> tuple[np.ndarray, list[str | None]]:
    scores, reasons = [], []
    for image in images:
        prediction = inference.predict_fn(image, model)
        _, features = model.forward_with_features(inference.preprocess(image, model))
        scores.append(float(model.abstainer.stats.score(features)[0]))
        reasons.append(prediction[inference.ABSTAIN_REASON])
    return np.array(scores), reasons


def test_the_digits_model_says_i_dont_know_to_photos_and_noise(trained_job: Job, model) -> None:
    assert model.abstainer is not None
    in_images = [Image.open(p).convert("RGB") for p in sorted(trained_job.data.glob("test/*/*.jpg"))]
    in_scores, in_reasons = _scores(model, in_images)
    out_scores, out_reasons = _scores(model, _ood_images())
    auroc = abstention.auroc(in_scores, out_scores)
    in_share = sum(r is not None for r in in_reasons) / len(in_reasons)
    out_share = sum(r is not None for r in out_reasons) / len(out_reasons)
    print(f"AUROC {auroc:.3f}; abstained: OOD {out_share:.2f}, in-distribution test {in_share:.2f}")
    assert auroc >= 0.95
    assert out_share >= 0.90
    assert in_share <= 0.10


def test_thresholds_and_statistics_travel_with_the_model(trained_job: Job) -> None:
    meta = json.loads((trained_job.model_dir / "model_meta.json").read_text())
    section = meta["abstention"]
    assert section["method"] == "mahalanobis" and section["ood_threshold"] > 0
    assert 0.0 <= section["confidence_threshold"] <= 1.0
    assert (trained_job.model_dir / abstention.STATS_FILE).is_file()
    assert (trained_job.model_dir / "code" / "abstention.py").is_file()
    evaluation = json.loads((trained_job.model_dir / "evaluation.json").read_text())["abstention"]
    assert evaluation["valid"]["coverage"] >= 0.9 and evaluation["test"]["abstained_share"] <= 0.10
    assert (
        json.loads((trained_job.output_data_dir / "evaluation.json").read_text())["abstention"] == evaluation
    )


def test_onnx_and_torch_backends_give_the_same_decision(trained_job: Job, monkeypatch) -> None:
    images = (
        _ood_images()[:6]
        + [Image.open(p).convert("RGB") for p in sorted(trained_job.data.glob("test/*/*.jpg"))][:6]
    )
    served = {}
    for backend in ("onnx", "torch"):
        monkeypatch.setenv("BREEDLINE_SERVING_BACKEND", backend)
        monkeypatch.setattr(inference, "_models", {})
        served[backend] = inference.model_fn(str(trained_job.model_dir))
    assert served["onnx"].session is not None
    for image in images:
        fast, slow = (inference.predict_fn(image, served[b]) for b in ("onnx", "torch"))
        assert fast[inference.ABSTAIN_REASON] == slow[inference.ABSTAIN_REASON]


def test_output_fn_abstains_unless_asked_for_the_raw_answer() -> None:
    top = [{"label": "cat", "probability": 0.4}, {"label": "dog", "probability": 0.3}]
    prediction = {
        "label": "cat",
        "probability": 0.4,
        "top_k": top,
        inference.ABSTAIN_REASON: "low_confidence",
    }
    answer = json.loads(inference.output_fn(prediction, "application/json"))
    assert answer == {
        "label": None,
        "probability": None,
        "top_k": top,
        "abstained": True,
        "reason": "low_confidence",
    }
    text, content_type = inference.output_fn(prediction, "application/json; abstain=false")
    assert content_type == "application/json"
    assert json.loads(text) == {"label": "cat", "probability": 0.4, "top_k": top, "abstained": False}
    confident = {"label": "cat", "probability": 0.9, "top_k": top, inference.ABSTAIN_REASON: None}
    assert json.loads(inference.output_fn(confident))["abstained"] is False
    old = {"label": "cat", "probability": 0.9, "top_k": top}  # a model trained before abstention
    assert json.loads(inference.output_fn(old)) == {**old, "abstained": False}
    with pytest.raises(inference.InferenceInputError) as info:
        inference.output_fn(prediction, "application/json; abstain=maybe")
    assert info.value.status_code == 406


def test_a_model_without_abstention_still_serves(trained_job: Job, tmp_path, monkeypatch) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained_job.model_dir, old)
    meta = json.loads((old / "model_meta.json").read_text())
    del meta["abstention"]
    (old / "model_meta.json").write_text(json.dumps(meta))
    (old / abstention.STATS_FILE).unlink()
    monkeypatch.setenv("BREEDLINE_SERVING_BACKEND", "torch")
    served = inference.model_fn(str(old))
    assert served.abstainer is None and served.tap is None
    body = next((trained_job.data / "test" / "4").glob("*.jpg")).read_bytes()
    answer = json.loads(inference.predict_bytes(body, "image/jpeg", served))
    assert answer["abstained"] is False and answer["label"] == answer["top_k"][0]["label"]


def test_conformal_quantiles_and_auroc() -> None:
    scores = np.arange(1, 21, dtype=float)  # 20 valid scores
    assert abstention.conformal_upper(scores, 0.05) == 20.0  # ceil(21 * 0.95) = 20th
    assert abstention.conformal_upper(scores, 0.25) == 16.0  # ceil(21 * 0.75) = 16th
    assert abstention.conformal_lower(scores, 0.05) == 1.0  # floor(21 * 0.05) = 1st
    assert abstention.conformal_lower(scores[:10], 0.05) == 0.0  # too few: never abstain
    assert abstention.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert abstention.auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5


def test_mahalanobis_is_the_plain_formula_when_nothing_is_truncated() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 6)) + np.repeat(np.eye(6)[:2] * 3, 20, axis=0)
    labels = np.repeat([0, 1], 20)
    stats = abstention.fit_gaussian(features, labels, 2)
    x = abstention.normalise(features)
    z = x - stats.means[labels]
    cov = z.T @ z / len(z)
    a = stats.shrinkage
    precision = np.linalg.inv((1 - a) * cov + a * np.trace(cov) / 6 * np.eye(6))
    query = rng.normal(size=(3, 6))
    q = abstention.normalise(query)
    expected = np.array([min((r - m) @ precision @ (r - m) for m in stats.means) for r in q])
    assert np.allclose(stats.score(query), expected, rtol=1e-4)
