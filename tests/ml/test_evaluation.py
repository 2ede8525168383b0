"""Issue 13, training side: evaluation.json, calibration, class weighting, metric lines, the champion.

The metric functions are checked against scikit-learn (which the containers do
not have, so ``ml_scripts`` cannot use it). Two real jobs: the session's
``trained_job`` and one ``challenger`` job on an imbalanced copy of its data
that holds images named like metric lines and gets the first job's
``model.tar.gz`` as its champion channel.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import calibration
import contract
import evaluation
import final_job
import inference
from ml_jobs import HYPERPARAMETERS, Job

# A training, validation and test image each, named like metric lines (the old regex read 99 from the first).
FORGED_NAMES = (
    "test_accuracy=99.jpg",
    f"{contract.METRIC_LINE_PREFIX} test_accuracy=99.jpg",
    f"x\n{contract.METRIC_LINE_PREFIX} test_accuracy=0.99\n.jpg",
)


# --------------------------------------------------------------------------- metrics against scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learns(seed: int) -> None:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix.

    Class 5 is never in the labels but is predicted, class 6 neither: the
    corner cases where the averaging rules differ.
    """
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(7)]
    labels = rng.choice([0, 1, 2, 3, 4], size=60, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    predictions = np.where(rng.random(60) < 0.6, labels, rng.choice([0, 1, 2, 3, 4, 5], size=60))
    got = evaluation.classification_metrics(labels, predictions, names)
    assert got["num_images"] == 60
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predictions))
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predictions, average="macro", zero_division=0)
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=list(range(7)), zero_division=0
    )
    assert [row["class"] for row in got["per_class"]] == names
    assert [row["precision"] for row in got["per_class"]] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in got["per_class"]] == pytest.approx(recall.tolist())
    assert [row["f1"] for row in got["per_class"]] == pytest.approx(f1.tolist())
    assert [row["support"] for row in got["per_class"]] == support.tolist()
    assert (
        got["confusion_matrix"] == skm.confusion_matrix(labels, predictions, labels=list(range(7))).tolist()
    )


def test_majority_baseline_answers_the_train_splits_biggest_class() -> None:
    from sklearn import metrics as skm

    names = ["big", "small", "tiny"]
    train_labels = np.array([0] * 100 + [1] * 2 + [2] * 2)
    test_labels = np.array([0] * 9 + [1, 2])
    majority = evaluation.majority_class(train_labels, 3)
    assert majority == 0
    baseline = evaluation.majority_baseline(test_labels, majority, names)
    always = np.zeros(len(test_labels), dtype=int)
    assert baseline == {
        "class": "big",
        "accuracy": pytest.approx(9 / 11),
        "macro_f1": pytest.approx(skm.f1_score(test_labels, always, average="macro", zero_division=0)),
    }


def test_class_weighting_auto_turns_on_over_three_times() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    assert evaluation.class_weighting("auto", [30, 10, 10])[0] is False  # exactly 3x: not over
    on, reason = evaluation.class_weighting("auto", [31, 10, 10])
    assert on and "3.1x" in reason and "auto" in reason
    assert evaluation.class_weighting("on", [10, 10])[0] is True
    assert evaluation.class_weighting("off", [100, 2])[0] is False
    counts = [100, 2, 7]
    labels = np.repeat([0, 1, 2], counts)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels)
    assert evaluation.class_weights(counts).tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_worst_mistakes_are_the_most_confident_wrong_answers() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 0, 0])
    files = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "a/4.jpg", "a/5.jpg"]
    worst = evaluation.worst_mistakes(probabilities, labels, files, ["a", "b"])
    assert [m["file"] for m in worst] == ["a/4.jpg", "a/2.jpg", "b/3.jpg"]
    assert worst[0] == {"file": "a/4.jpg", "true": "a", "predicted": "b", "probability": 0.95}
    assert len(evaluation.worst_mistakes(probabilities, labels, files, ["a", "b"], limit=1)) == 1


# --------------------------------------------------------------------------- calibration


def _digits_logits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An overfitted classifier's logits on scikit-learn's digits: an MLP trained to near-zero training loss.

    Such a network is overconfident on held-out images, the case temperature scaling is for.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, valid_idx, test_idx = order[:300], order[300:800], order[800:1300]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[train_idx]), y[train_idx])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        valid, test = net(x[valid_idx]).numpy(), net(x[test_idx]).numpy()
    return valid, y[valid_idx].numpy(), test, y[test_idx].numpy()


def test_temperature_scaling_lowers_the_ece_on_digits() -> None:
    valid, valid_labels, test, test_labels = _digits_logits()
    temperature, summary = calibration.calibrate(valid, valid_labels, test, test_labels)
    assert temperature > 1.2  # overconfident: the fit softens it
    assert summary["ece_after"] < summary["ece_before"] * 0.7, summary
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["test_ece_after"] < summary["test_ece_before"]  # and on images it was not fitted on
    # The search found the NLL's minimum: no nearby temperature does better.
    best = calibration.negative_log_likelihood(valid, valid_labels, temperature)
    for other in (temperature * 0.97, temperature * 1.03):
        assert best <= calibration.negative_log_likelihood(valid, valid_labels, other)
    # The arg-max never moves, so accuracy is the same at any temperature.
    assert (calibration.softmax(test, temperature).argmax(1) == test.argmax(1)).all()
    bins = summary["bins"]
    assert len(bins) == calibration.ECE_BINS and sum(b["count"] for b in bins) == len(test_labels)
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0


def test_ece_and_bins_by_hand() -> None:
    probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    bins = calibration.reliability_bins(probabilities, labels, bins=10)
    filled = {round(b["upper"], 1): (b["count"], b["confidence"], b["accuracy"]) for b in bins if b["count"]}
    assert filled == {
        1.0: (1, 0.95, 1.0),
        0.9: (1, pytest.approx(0.9), 0.0),
        0.6: (2, pytest.approx(0.575), 1.0),
    }
    expected = (abs(1 - 0.95) + abs(0 - 0.9) + 2 * abs(1 - 0.575)) / 4
    assert calibration.expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(expected)


def test_temperature_fit_is_robust_to_degenerate_inputs() -> None:
    assert calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0)) == 1.0
    assert calibration.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])) == 1.0
    # Perfectly separated: NLL falls as T falls, no minimum inside the bracket: left as trained.
    t = calibration.fit_temperature(np.array([[50.0, -50.0], [-50.0, 50.0]]), np.array([0, 1]))
    assert t == 1.0
    t = calibration.fit_temperature(np.array([[3.0, -3.0], [-2.0, 2.0], [4.0, 0.0]]), np.array([0, 1, 0]))
    assert t == 1.0
    # One error among confident right answers: a real minimum, away from the bound.
    logits = np.array([[2.0, 0.0]] * 9 + [[2.0, 0.0]])
    t = calibration.fit_temperature(logits, np.array([0] * 9 + [1]))
    assert calibration.MIN_TEMPERATURE * 1.01 < t and t != 1.0
    # Always wrong: the fit flattens towards uniform, T grows to its bound, never infinite.
    t = calibration.fit_temperature(np.array([[5.0, -5.0], [-5.0, 5.0]]), np.array([1, 0]))
    assert 1.0 < t <= calibration.MAX_TEMPERATURE


# --------------------------------------------------------------------------- the session's job


def test_evaluation_json_in_the_model_and_the_output(trained_job: Job) -> None:
    model_copy = json.loads((trained_job.model_dir / contract.EVALUATION_FILE).read_text())
    output_copy = json.loads((trained_job.output_data_dir / contract.EVALUATION_FILE).read_text())
    assert model_copy == output_copy
    doc = model_copy
    names = [str(i) for i in range(10)]
    assert doc["schema"] == 1 and doc["split"] == "test" and doc["classes"] == names
    assert doc["num_images"] == 20 and sum(map(sum, doc["confusion_matrix"])) == 20
    assert [row["class"] for row in doc["per_class"]] == names
    assert (
        [row["support"] for row in doc["per_class"]] == [sum(r) for r in doc["confusion_matrix"]] == [2] * 10
    )
    diagonal = sum(doc["confusion_matrix"][i][i] for i in range(10))
    assert doc["accuracy"] == pytest.approx(diagonal / 20)
    assert doc["majority_baseline"] == {
        "class": "0",
        "accuracy": 0.1,
        "macro_f1": pytest.approx(2 * 0.1 / 1.1 / 10),
    }
    assert doc["class_weighting"]["enabled"] is False and "1.0x" in doc["class_weighting"]["reason"]
    cal = doc["calibration"]
    assert cal["split"] == "valid" and cal["temperature"] > 0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert sum(b["count"] for b in cal["bins"]) == 20
    for mistake in doc["worst_mistakes"]:
        assert (trained_job.data / "test" / mistake["file"]).is_file()
        assert mistake["true"] != mistake["predicted"] and mistake["file"].startswith(mistake["true"] + "/")
    probabilities = [m["probability"] for m in doc["worst_mistakes"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert len(doc["worst_mistakes"]) == min(16, 20 - diagonal)
    assert doc["champion"] is None

    meta = json.loads((trained_job.model_dir / "model_meta.json").read_text())
    assert meta["temperature"] == cal["temperature"]
    assert meta["history"][0]["valid_macro_f1"] is not None


def test_metric_lines_carry_the_evaluation(trained_job: Job) -> None:
    out = trained_job.result.stdout
    metrics = contract.parse_metrics(out)
    doc = json.loads((trained_job.model_dir / contract.EVALUATION_FILE).read_text())
    expected = {
        "test_accuracy": doc["accuracy"],
        "test_balanced_accuracy": doc["balanced_accuracy"],
        "test_macro_f1": doc["macro_f1"],
        "test_majority_accuracy": doc["majority_baseline"]["accuracy"],
        "test_majority_macro_f1": doc["majority_baseline"]["macro_f1"],
        "test_ece": doc["calibration"]["test_ece_after"],
    }
    for name, value in expected.items():
        assert metrics[name] == [pytest.approx(value, abs=1e-6)], name
    assert len(metrics["valid_macro_f1"]) == len(metrics["valid_balanced_accuracy"]) == 1
    assert not any(name.startswith("champion_") for name in metrics)
    # Every metric line is one of ours: the prefix, then one name=value.
    lines = [line for line in out.splitlines() if line.startswith(contract.METRIC_LINE_PREFIX)]
    assert len(lines) == sum(len(v) for v in metrics.values())


def test_serving_applies_the_temperature_on_both_backends(
    trained_job: Job, tmp_path: Path, monkeypatch
) -> None:
    """softmax(logits / T), with T from model_meta.json, whichever backend runs the network."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_job.model_dir, model_dir)
    meta = json.loads((model_dir / "model_meta.json").read_text())
    meta["temperature"] = 3.5
    (model_dir / "model_meta.json").write_text(json.dumps(meta))
    body = next((trained_job.data / "test" / "4").glob("*.jpg")).read_bytes()
    for backend in ("torch", "onnx"):
        monkeypatch.setattr(inference, "_models", {})
        monkeypatch.setenv("BREEDLINE_SERVING_BACKEND", backend)
        model = inference.model_fn(str(model_dir))
        assert model.backend == backend and model.temperature == 3.5
        batch = inference.preprocess(inference.input_fn(body, "image/jpeg"), model)
        expected = torch.softmax(torch.as_tensor(model.forward(batch))[0] / 3.5, dim=0)  # numpy on either backend
        answer = inference.predict_fn(batch, model)
        assert answer["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert answer["label"] == model.class_names[int(expected.argmax())]
    meta["temperature"] = -1
    (model_dir / "model_meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(inference, "_models", {})
    with pytest.raises(ValueError, match="temperature -1 is not a positive number"):
        inference.model_fn(str(model_dir))


# --------------------------------------------------------------------------- the challenger job


def model_tarball(model_dir: Path, target: Path) -> Path:
    """``model.tar.gz`` as SageMaker packs ``SM_MODEL_DIR`` (members relative to it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(model_dir.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return target


@pytest.fixture(scope="module")
def challenger(tmp_path_factory, digits_small: Path, trained_job: Job) -> Job:
    """A second job: class 1 cut to 2 train images (8 for the others, so class weighting turns on),
    unreadable images named like metric lines in every split, and the first job's model as its champion."""
    base = tmp_path_factory.mktemp("challenger")
    data = base / "data"
    shutil.copytree(digits_small, data)
    for extra in sorted((data / "train" / "1").glob("*.jpg"))[2:]:
        extra.unlink()
    for split in ("train", "valid", "test"):
        for name in FORGED_NAMES:
            (data / split / "0" / name).write_bytes(b"not an image")
    champion = model_tarball(trained_job.model_dir, base / "champion" / "model.tar.gz").parent
    job = Job(base=base / "job", data=data, environment={"SM_CHANNEL_CHAMPION": str(champion)})
    result = job.run(["--epochs", "1"], hyperparameters=HYPERPARAMETERS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job


def test_file_names_cannot_forge_a_metric_line(challenger: Job) -> None:
    out = challenger.result.stdout
    # The forged names are in the log, after the real line: the old regex (``\btest_accuracy=``) read them.
    old = [float(v) for v in re.findall(r"\btest_accuracy=([-+]?[0-9]*\.?[0-9]+)", out)]
    assert 99.0 in old and old[-1] in (99.0, 0.99)
    assert "skipped 3 unreadable image(s) in train" in out
    real = json.loads((challenger.model_dir / contract.EVALUATION_FILE).read_text())["accuracy"]
    metrics = contract.parse_metrics(out)
    assert metrics["test_accuracy"] == [pytest.approx(real, abs=1e-6)]
    assert real <= 1.0
    # Quoted, no name starts a line: every line with the prefix is a metric line.
    for line in out.splitlines():
        if line.startswith(contract.METRIC_LINE_PREFIX):
            assert re.fullmatch(r"#breedline-metric (epoch=\d+ )?[A-Za-z0-9_]+=[0-9.e+-]+", line), line


def test_the_local_runtime_parses_with_the_apps_metric_definitions(challenger: Job) -> None:
    """The local SageMaker service's FinalMetricDataList for this log, parsed line by line as it streams."""
    from chalicelib import sagemaker_requests
    from chalicelib.config import Settings

    from breedline.local.training import TrainingRun

    registry = "763104351884.dkr.ecr.us-east-1.amazonaws.com"
    settings = Settings.from_env(
        {
            "BREEDLINE_TRAINING_IMAGE": f"{registry}/pytorch-training:2.6.0-gpu-py312",
            "BREEDLINE_INFERENCE_IMAGE": f"{registry}/pytorch-inference:2.6.0-cpu-py312",
        }
    )
    request = sagemaker_requests.create_training_job(
        settings, name="breedline-x-final", dataset="d", region="us-east-1", hyperparameters={}, tags=[]
    )
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert definitions == contract.METRIC_DEFINITIONS
    backend = SimpleNamespace(
        lock=threading.Lock(),
        training_jobs={"j": {"AlgorithmSpecification": request["AlgorithmSpecification"]}},
        job_dir=lambda name: challenger.base / "local-run",
    )
    run = TrainingRun(backend, "j")
    for line in (challenger.result.stdout + challenger.result.stderr).splitlines(keepends=True):
        run._parse_metrics(line, definitions)
    real = json.loads((challenger.model_dir / contract.EVALUATION_FILE).read_text())
    assert run.metric("test_accuracy") == pytest.approx(real["accuracy"], abs=1e-6)
    assert run.metric("champion_test_macro_f1") == pytest.approx(real["champion"]["macro_f1"], abs=1e-6)


def test_champion_is_evaluated_on_the_same_test_images(challenger: Job, trained_job: Job) -> None:
    first = contract.parse_metrics(trained_job.result.stdout)
    second = contract.parse_metrics(challenger.result.stdout)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert second[f"champion_test_{key}"] == [pytest.approx(first[f"test_{key}"][0], abs=1e-6)], key
    doc = json.loads((challenger.model_dir / contract.EVALUATION_FILE).read_text())
    assert doc["champion"]["accuracy"] == pytest.approx(first["test_accuracy"][0], abs=1e-6)
    assert (
        doc["champion"]["num_images"] == doc["num_images"] == 20
    )  # the forged test image is skipped by both
    assert "champion: the champion channel's model (efficientnet_lite0) evaluated on 20 test images" in (
        challenger.result.stdout
    )


def test_class_weighting_turns_on_for_the_imbalanced_set(challenger: Job) -> None:
    doc = json.loads((challenger.model_dir / contract.EVALUATION_FILE).read_text())
    assert doc["class_weighting"] == {
        "enabled": True,
        "reason": "auto: biggest train class 8 images, smallest 2 (4.0x), over 3x",
    }
    assert "class weighting: on (auto:" in challenger.result.stdout
    meta = json.loads((challenger.model_dir / "model_meta.json").read_text())
    assert meta["class_weighting"]["enabled"] is True
    # Majority baseline: the train split's biggest class (a tie of eights: the first, "0").
    assert doc["majority_baseline"]["class"] == "0"


def test_a_champion_with_other_classes_is_not_evaluated(trained_job: Job, tmp_path: Path, capsys) -> None:
    """One log line saying why, and no champion metrics."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_job.model_dir, model_dir)
    meta = json.loads((model_dir / "model_meta.json").read_text())
    meta["class_names"] = [f"breed {i}" for i in range(10)]
    (model_dir / "model_meta.json").write_text(json.dumps(meta))
    channel = model_tarball(model_dir, tmp_path / "champion" / "model.tar.gz").parent
    split = SimpleNamespace(samples=[], class_names=[str(i) for i in range(10)])
    paths = SimpleNamespace(champion_dir=channel)
    assert final_job.evaluate_champion(paths, None, split, [str(i) for i in range(10)]) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("champion: not evaluated, its classes differ")
    assert '\\"breed 0\\"' in lines[0] and not contract.parse_metrics(lines[0])

    (channel / "model.tar.gz").write_bytes(b"not a tarball")
    assert final_job.evaluate_champion(paths, None, split, [str(i) for i in range(10)]) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "could not be loaded" in lines[0]
