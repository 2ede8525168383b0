"""train.py under the SageMaker container contract: outputs, metrics, resume, Debugger, failures."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

import checkpoints
import contract
import debugging
import image_folder
import job_config
import presets
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
    assert meta["mean"] == list(presets.IMAGENET_MEAN) and meta["std"] == list(presets.IMAGENET_STD)
    assert 0.0 <= meta["metrics"]["test_accuracy"] <= 1.0
    code = model_dir / "code"
    for name in ("inference.py", "backbones.py", "contract.py", "decoding.py", "image_folder.py", "presets.py",
                 "requirements.txt"):
        assert (code / name).is_file() and not (code / name).is_symlink(), name
    assert "efficientnet-lite-pytorch" in (code / "requirements.txt").read_text()


def test_metric_lines_parse_with_the_job_regexes(trained_job: Job) -> None:
    out = trained_job.result.stdout
    metrics = contract.parse_metrics(out)
    for name in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds",
                 "test_loss", "test_accuracy"):
        assert len(metrics[name]) == 1, name
    assert "epoch=1 valid_loss=" in out
    assert 0.0 <= metrics["test_accuracy"][0] <= 1.0
    assert "ignoring unknown arguments: --some_future_flag x" in out
    # Cached train/valid load in-process, the uncached test split in one worker (SM_NUM_CPUS=2).
    assert "loader workers: train=0, valid=0, test=1" in out
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


class Preempted(BaseException):
    """A spot interruption: the process ends right after a checkpoint is written (``main`` lets it pass)."""


def test_a_restart_of_the_same_job_resumes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small):
    """A restarted (spot) job picks up after its last finished epoch, from its own folder.

    Its first life stops after epoch 1 of 2; the second is the same job (name,
    hyperparameters, data), as SageMaker restarts it, with Debugger from the JSON config.
    """
    name = "breedline-digits-final"
    job = Job(base=tmp_path / "job", data=digits_small, environment={"TRAINING_JOB_NAME": name})
    job.config_dir.mkdir(parents=True)
    (job.config_dir / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    _paths(monkeypatch, job)
    record_epoch = checkpoints.record_epoch

    def record_then_stop(*args, **kwargs) -> None:
        record_epoch(*args, **kwargs)
        raise Preempted

    monkeypatch.setattr(checkpoints, "record_epoch", record_then_stop)
    with pytest.raises(Preempted):
        train.main(["--epochs", "2"])
    monkeypatch.setattr(checkpoints, "record_epoch", record_epoch)
    assert (job.checkpoint_dir / name / "checkpoint.pt").is_file()
    assert not (job.checkpoint_dir / "checkpoint.pt").exists()

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
    assert "ignoring checkpoint" not in result.stdout
    metrics = contract.parse_metrics(result.stdout)
    assert len(metrics["train_loss"]) == 1 and "epoch=2 train_loss=" in result.stdout
    assert "epoch=1 train_loss=" not in result.stdout
    assert (job.model_dir / "model.pt").is_file()
    assert json.loads((job.model_dir / "model_meta.json").read_text())["epochs_run"] == 2

    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(debug_dir))
    loss = trial.tensor(trial.tensor_names(collection="losses")[0])
    assert loss.steps(mode=modes.TRAIN) and loss.steps(mode=modes.EVAL)


# ----------------------------------------------------------------- in-process: contract details


def _paths(monkeypatch: pytest.MonkeyPatch, job: Job) -> None:
    monkeypatch.delenv("TRAINING_JOB_NAME", raising=False)
    for key, value in job.env().items():
        if key.startswith(("SM_", "BREEDLINE_", "TRAINING_JOB_NAME")):
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
    assert f'no images in "{data / "test"}"' in reason  # names are JSON-quoted in every message


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
    args = job_config.parse_args(["--epochs", '"7"', "--learning_rate", "0.01"], tmp_path)
    assert (args.batch_size, args.epochs, args.model, args.learning_rate) == (32, 7, "resnet50", 0.01)
    assert contract.unquote_hyperparameter('"\\"32\\""') == "32"
    assert contract.unquote_hyperparameter("plain") == "plain"
    assert contract.unquote_hyperparameter(3) == "3"
    with pytest.raises(ValueError, match="invalid hyperparameters"):
        job_config.parse_args(["--model", "alexnet"], tmp_path)


def test_training_survives_smdebug_failing_to_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "smdebug", None)
    monkeypatch.setitem(sys.modules, "smdebug.pytorch", None)
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path))
    args = argparse.Namespace(debug_out=str(tmp_path / "debug"), debug_save_interval=1)
    debugger = debugging.Debugger(job_config.Paths(), args)
    assert debugger.hook is None
    debugger.set_mode("train")  # no-ops, no errors
    debugger.register(None, None)
    out = capsys.readouterr().out
    assert out.count("smdebug unavailable") == 1


def test_worker_count_follows_the_cache_and_the_cpus(monkeypatch: pytest.MonkeyPatch, digits_small: Path) -> None:
    """Cached splits load in-process; uncached ones use half the cores; --num_workers overrides both."""
    for cpus in (1, 2, 16, 96):
        assert train.default_num_workers(cpus, cached=True) == 0
    assert [train.default_num_workers(c, cached=False) for c in (1, 2, 16, 96)] == [0, 1, 8, 8]
    # With a GPU, workers overlap the GPU's work even for a cached split.
    assert [train.default_num_workers(c, cached=True, cuda=True) for c in (1, 2, 16, 96)] == [0, 1, 8, 8]
    monkeypatch.setenv("SM_NUM_CPUS", "16")
    prep = presets.Preprocessing(image_size=28)
    split = image_folder.scan_split(digits_small / "valid", [str(i) for i in range(10)])
    cached = image_folder.CachedImageDataset(split, prep, train=False, cache=True)
    lazy = image_folder.CachedImageDataset(split, prep, train=False, cache=False)
    over_limit = image_folder.CachedImageDataset(split, prep, train=False, cache=True, cache_limit_bytes=1)
    trainer = train.Trainer(job_config.build_parser().parse_args(["--image_size", "28"]), None)
    assert [trainer.num_workers(ds) for ds in (cached, lazy, over_limit)] == [0, 8, 8]
    assert trainer.loader(cached, shuffle=True).num_workers == 0
    forced = train.Trainer(job_config.build_parser().parse_args(["--num_workers", "3"]), None)
    assert [forced.num_workers(ds) for ds in (cached, lazy)] == [3, 3]


def _trainer(*argv: str) -> train.Trainer:
    return train.Trainer(job_config.build_parser().parse_args(["--image_size", "28", "--batch_size", "8", *argv]), None)


def test_training_batches_equal_torchvision_random_crops(digits_small: Path) -> None:
    """The fast path (uint8 crops, normalised once per batch) == the plain per-item float path.

    Reference: torchvision's RandomCrop + ToTensor + Normalize on each cached
    square, drawn from the same seeds (same sampler order, same crop draws).
    Tolerance 1e-6: the only difference is float rounding of x/255.
    """
    import torch
    from PIL import Image
    from torchvision import transforms as T

    trainer = _trainer()
    prep = trainer.prep
    split = image_folder.scan_split(digits_small / "train")
    dataset = image_folder.CachedImageDataset(split, prep, train=True, cache=True)
    plain = T.Compose([T.RandomCrop(prep.image_size), T.ToTensor(), T.Normalize(prep.mean, prep.std)])

    class PlainSquares(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int):
            return plain(Image.fromarray(dataset.images[i])), dataset.samples[i][1]

    torch.manual_seed(7)
    loader = trainer.loader(dataset, shuffle=True)  # what train.py builds: in-process for a cached split
    assert loader.num_workers == 0
    fast = [(image_folder.batch_to_model_input(x, prep, trainer.device, trainer.channels_last), y, bad)
            for x, y, bad in loader]
    torch.manual_seed(7)
    generator = torch.Generator()
    generator.manual_seed(trainer.args.seed)
    reference = list(torch.utils.data.DataLoader(PlainSquares(), batch_size=8, shuffle=True, generator=generator))
    assert len(fast) == len(reference) == 10
    for (x, y, bad), (x_ref, y_ref) in zip(fast, reference):
        assert bad == 0 and torch.equal(y, y_ref)
        assert x.shape == x_ref.shape == (len(y), 3, 28, 28)
        assert float((x - x_ref).abs().max()) <= 1e-6
    # The crops really are random: two epochs differ.
    again = [image_folder.batch_to_model_input(x, prep) for x, _, _ in trainer.loader(dataset, shuffle=False)]
    once_more = [image_folder.batch_to_model_input(x, prep) for x, _, _ in trainer.loader(dataset, shuffle=False)]
    assert not all(torch.equal(a, b) for a, b in zip(again, once_more))


def test_uncached_split_through_workers_skips_and_counts_bad_images(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small: Path
) -> None:
    """The test split (cache=False) decodes in a worker; its uint8 batches equal the cached ones and
    bad files are dropped and counted exactly as before."""
    import torch

    monkeypatch.setenv("SM_NUM_CPUS", "2")
    data = tmp_path / "test"
    shutil.copytree(digits_small / "test", data)
    (data / "5" / "garbage.jpg").write_bytes(b"not a jpeg")
    split = image_folder.scan_split(data, [str(i) for i in range(10)])
    trainer = _trainer()
    lazy = image_folder.CachedImageDataset(split, trainer.prep, train=False, cache=False)
    loader = trainer.loader(lazy, shuffle=False)
    assert loader.num_workers == 1
    images, seen, skipped = [], 0, 0
    for x, y, bad in loader:
        skipped += bad
        seen += len(y)
        if len(y):
            images.append(image_folder.batch_to_model_input(x, trainer.prep))
    assert (seen, skipped) == (len(split) - 1, 1)
    cached = image_folder.CachedImageDataset(split, trainer.prep, train=False, cache=True)
    assert [Path(p).name for p in cached.skipped] == ["garbage.jpg"]
    expected = [image_folder.batch_to_model_input(x, trainer.prep) for x, _, _ in trainer.loader(cached, shuffle=False)]
    assert torch.equal(torch.cat(images), torch.cat(expected))


def test_learning_rate_schedule_is_a_function_of_the_epoch() -> None:
    """Resume-safe: the rate for epoch E does not depend on how many epochs this process ran."""
    factors = [train.cosine_factor(e, 4) for e in range(1, 5)]
    assert factors[0] == 1.0
    assert all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0


# Inductor compiles C++ on a cold cache (a fresh CI clone): 80+ s, so it runs with make test-e2e.
@pytest.mark.e2e
def test_compiled_training_steps_equal_the_plain_ones() -> None:
    """``--compile true``: train.py's own epoch loop gives the plain loop's losses and weights."""
    import torch
    from torch import nn

    def tiny() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    class NoDebugger:
        def set_mode(self, phase: str) -> None:
            pass

    trainer = train.Trainer(job_config.build_parser().parse_args(["--image_size", "16"]), paths=None)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=generator),
                torch.randint(0, 4, (6,), generator=generator), 0) for _ in range(3)]
    results = {}
    for name in ("plain", "compiled"):
        model = tiny()
        net = train.compiled(model) if name == "compiled" else model
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        fit = trainer.run_epoch(net, batches, "train", NoDebugger(), optimizer, scaler)
        evaluated = trainer.run_epoch(net, batches, "valid", NoDebugger())
        results[name] = (fit["loss"], evaluated["loss"], {k: v.clone() for k, v in model.state_dict().items()})
    plain, fast = results["plain"], results["compiled"]
    assert fast[0] == pytest.approx(plain[0], rel=1e-4)
    assert fast[1] == pytest.approx(plain[1], rel=1e-4)
    assert plain[2].keys() == fast[2].keys()  # model.pt keeps the plain key names
    for key, value in plain[2].items():
        torch.testing.assert_close(fast[2][key], value, rtol=1e-4, atol=1e-5)


def test_serving_requirements_pin_what_the_tests_run(requirement_pins) -> None:
    """The endpoint installs the onnx/onnxruntime this suite tested; without onnx the export fails."""
    root = Path(train.__file__).resolve().parent.parent
    serving = requirement_pins(root / "ml_scripts" / train.SERVING_REQUIREMENTS)
    dev = requirement_pins(root / "requirements.txt")
    for name in ("onnx", "onnxruntime", "efficientnet-lite-pytorch", "pillow-heif"):
        assert serving[name] == dev[name], name
