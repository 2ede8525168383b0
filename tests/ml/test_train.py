"""train.py under the SageMaker container contract: outputs, metrics, resume, Debugger, failures."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

import common
import metric_definitions
import train
from ml_jobs import HYPERPARAMETERS, Job


def test_model_dir_serves_on_its_own(trained_job: Job) -> None:
    model_dir = trained_job.model_dir
    assert (model_dir / "model.pt").is_file()
    meta = json.loads((model_dir / "model_meta.json").read_text())
    assert meta["architecture"] == "efficientnet_lite0"
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["image_size"] == 32  # from hyperparameters.json
    assert meta["hyperparameters"]["batch_size"] == 16  # JSON-quoted twice, normalised
    assert meta["mean"] == list(common.IMAGENET_MEAN) and meta["std"] == list(common.IMAGENET_STD)
    assert 0.0 <= meta["metrics"]["test_accuracy"] <= 1.0
    code = model_dir / "code"
    for name in ("inference.py", "common.py", "metric_definitions.py", "requirements.txt"):
        assert (code / name).is_file() and not (code / name).is_symlink(), name
    assert "efficientnet-lite-pytorch" in (code / "requirements.txt").read_text()


def test_metric_lines_parse_with_the_job_regexes(trained_job: Job) -> None:
    out = trained_job.result.stdout
    metrics = metric_definitions.parse_metrics(out)
    for name in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds",
                 "test_loss", "test_accuracy"):
        assert len(metrics[name]) == 1, name
    assert "epoch=1 valid_loss=" in out
    assert 0.0 <= metrics["test_accuracy"][0] <= 1.0
    assert "ignoring unknown arguments: --some_future_flag x" in out
    assert "sagemaker_program" not in out


def test_profiler_summary_and_trace(trained_job: Job) -> None:
    folder = trained_job.output_data_dir / "profiler"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["step_time_mean_s"] > 0
    assert 0.0 <= summary["data_loading_share"] <= 1.0
    assert summary["top_operators"] and summary["top_operators"][0]["self_cpu_time_ms"] > 0
    trace = json.loads((folder / "trace.json").read_text())
    assert trace["traceEvents"]


def test_debugger_tensors_read_back(trained_job: Job) -> None:
    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(trained_job.base / "debug"))
    losses = trial.tensor_names(collection="losses")
    assert losses
    loss = trial.tensor(losses[0])
    train_steps = loss.steps(mode=modes.TRAIN)
    eval_steps = loss.steps(mode=modes.EVAL)
    # 80 train images / batch 16 = 5 steps, 20 valid images = 2 steps; save_interval 1.
    assert len(train_steps) == 5 and len(eval_steps) == 2
    value = float(loss.value(train_steps[0], mode=modes.TRAIN))
    assert 0.0 < value < 20.0


def test_second_run_resumes_from_the_checkpoint(trained_job: Job, tmp_path: Path) -> None:
    """A restarted (spot) job picks up after the last finished epoch; Debugger from the JSON config."""
    job = Job(base=tmp_path / "job", data=trained_job.data)
    shutil.copytree(trained_job.checkpoint_dir, job.checkpoint_dir)
    job.config_dir.mkdir(parents=True)
    debug_dir = tmp_path / "debug-from-json"
    (job.config_dir / "debughookconfig.json").write_text(json.dumps({
        "LocalPath": str(debug_dir),
        "S3OutputPath": "s3://bucket/debug",
        "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {}}],
    }))
    result = job.run(["--epochs", "2"], hyperparameters=HYPERPARAMETERS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint: epoch=1" in result.stdout
    metrics = metric_definitions.parse_metrics(result.stdout)
    assert len(metrics["train_loss"]) == 1 and "epoch=2 train_loss=" in result.stdout
    assert "epoch=1 train_loss=" not in result.stdout
    assert (job.model_dir / "model.pt").is_file()

    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(debug_dir))
    loss = trial.tensor(trial.tensor_names(collection="losses")[0])
    assert loss.steps(mode=modes.TRAIN) and loss.steps(mode=modes.EVAL)


# ----------------------------------------------------------------- in-process: contract details


def _paths(monkeypatch: pytest.MonkeyPatch, job: Job) -> None:
    for key, value in job.env().items():
        if key.startswith(("SM_", "BREEDLINE_")):
            monkeypatch.setenv(key, value)


def test_failure_names_the_folder_of_a_class_missing_from_train(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small: Path, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_small, data)
    shutil.move(str(data / "valid" / "3"), str(data / "valid" / "cat"))
    job = Job(base=tmp_path / "job", data=data)
    _paths(monkeypatch, job)
    assert train.main(["--model", "efficientnet_lite0", "--epochs", "1"]) == 1
    reason = (job.output_dir / "failure").read_text().strip()
    assert "cat" in reason and str(data / "valid") in reason and "missing from the train split" in reason
    assert capsys.readouterr().err.strip().splitlines()[-1] == reason


def test_failure_on_an_empty_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_small, data)
    for image in (data / "test").rglob("*.jpg"):
        image.unlink()
    job = Job(base=tmp_path / "job", data=data)
    _paths(monkeypatch, job)
    assert train.main(["--model", "efficientnet_lite0"]) == 1
    reason = (job.output_dir / "failure").read_text()
    assert f"no images in {data / 'test'}" in reason


def test_failure_without_pretrained_weights_names_the_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small: Path, capsys
) -> None:
    """vgg11 is the default; its weights cannot be downloaded here, so the run must stop."""
    job = Job(base=tmp_path / "job", data=digits_small)
    _paths(monkeypatch, job)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached copy
    assert train.main(["--epochs", "1"]) == 1
    reason = (job.output_dir / "failure").read_text()
    assert "--pretrained_weights" in reason and "vgg11" in reason and "from scratch" in reason
    assert not (job.model_dir / "model.pt").exists()
    assert train.main(["--epochs", "1", "--pretrained_weights", str(tmp_path / "nope.pth")]) == 1
    assert "--pretrained_weights" in (job.output_dir / "failure").read_text()


def test_bad_hyperparameter_fails_with_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small) -> None:
    job = Job(base=tmp_path / "job", data=digits_small)
    _paths(monkeypatch, job)
    assert train.main(["--batch_size", "lots"]) == 1
    assert "invalid hyperparameters" in (job.output_dir / "failure").read_text()


def test_hyperparameters_json_quoted_and_cli_precedence(tmp_path: Path) -> None:
    (tmp_path / "hyperparameters.json").write_text(json.dumps({
        "batch_size": '"\\"32\\""', "epochs": "4", "model": '"resnet50"', "sagemaker_region": '"us-east-1"',
    }))
    args = train.parse_args(["--epochs", '"7"', "--learning_rate", "0.01"], tmp_path)
    assert (args.batch_size, args.epochs, args.model, args.learning_rate) == (32, 7, "resnet50", 0.01)
    assert train.normalise_value('"\\"32\\""') == "32"
    assert train.normalise_value("plain") == "plain"
    assert train.normalise_value(3) == "3"
    with pytest.raises(ValueError, match="invalid hyperparameters"):
        train.parse_args(["--model", "alexnet"], tmp_path)


def test_training_survives_smdebug_failing_to_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "smdebug", None)
    monkeypatch.setitem(sys.modules, "smdebug.pytorch", None)
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path))
    args = argparse.Namespace(debug_out=str(tmp_path / "debug"), debug_save_interval=1)
    debugger = train.Debugger(train.Paths(), args)
    assert debugger.hook is None
    debugger.set_mode("train")  # no-ops, no errors
    debugger.register(None, None)
    out = capsys.readouterr().out
    assert out.count("smdebug unavailable") == 1


def test_worker_count_follows_the_cpus() -> None:
    assert train.default_num_workers(1) == 0
    assert train.default_num_workers(2) == 1
    assert train.default_num_workers(16) == 8
    assert train.default_num_workers(96) == 8


def test_learning_rate_schedule_is_a_function_of_the_epoch() -> None:
    """Resume-safe: the rate for epoch E does not depend on how many epochs this process ran."""
    factors = [train.cosine_factor(e, 4) for e in range(1, 5)]
    assert factors[0] == 1.0
    assert all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0
