"""Checkpoints belong to one run: trials sharing a prefix, data set versions, signatures, job folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import checkpoints
import contract
import image_folder
import job_config
from ml_jobs import HYPERPARAMETERS, Job

#: Trial names as a tuning job gives them: ``<tuning job>-<trial number>-<8 hex>``.
TRIAL_A, TRIAL_B = "breedline-digits-0f3c-001-1a2b3c4d", "breedline-digits-0f3c-002-5e6f7a8b"


def _ignored_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("ignoring checkpoint")]


def test_trials_sharing_a_checkpoint_prefix_each_train_from_scratch(tmp_path: Path, digits_small) -> None:
    """Two trials of one tuning job, different learning rates, one ``CheckpointConfig.S3Uri``.

    SageMaker copies the whole prefix into ``/opt/ml/checkpoints`` when a job
    starts and syncs the folder back while it runs; ``prefix`` plays that S3
    prefix. Trial B must not resume trial A's epochs or report A's metrics.
    """
    prefix = tmp_path / "s3" / "jobs" / "tuning" / "checkpoints"
    prefix.mkdir(parents=True)
    runs = {}
    for name, learning_rate in ((TRIAL_A, "0.003"), (TRIAL_B, "0.03")):
        job = Job(base=tmp_path / name, data=digits_small, environment={"TRAINING_JOB_NAME": name})
        shutil.copytree(prefix, job.checkpoint_dir)
        result = job.run(["--epochs", "1", "--learning_rate", learning_rate], hyperparameters=HYPERPARAMETERS)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        shutil.copytree(job.checkpoint_dir, prefix, dirs_exist_ok=True)
        runs[name] = (job, result, learning_rate)
    valid_losses = []
    for job, result, learning_rate in runs.values():
        assert "resumed from checkpoint" not in result.stdout
        metrics = contract.parse_metrics(result.stdout)
        assert len(metrics["train_loss"]) == 1 and "epoch=1 train_loss=" in result.stdout
        meta = json.loads((job.model_dir / "model_meta.json").read_text())
        assert meta["hyperparameters"]["learning_rate"] == float(learning_rate)
        assert meta["metrics"]["best_valid_loss"] == pytest.approx(metrics["valid_loss"][0], abs=1e-6)
        valid_losses.append(metrics["valid_loss"][0])
    assert valid_losses[0] != valid_losses[1]
    assert sorted(p.name for p in prefix.iterdir()) == [TRIAL_A, TRIAL_B]  # one folder per trial


def test_a_checkpoint_from_another_data_set_version_is_ignored(
    tmp_path: Path, digits_small: Path, trained_job: Job
) -> None:
    """Same job, hyperparameters and classes, one training image gone: train from the start, say so once.

    ``trained_job`` also ran with ``--debug_out``, ``--profile_steps`` and an
    unknown flag: they change nothing that is learned, so only the data differs.
    """
    data = tmp_path / "data-v2"
    shutil.copytree(digits_small, data)
    next((data / "train" / "4").glob("*.jpg")).unlink()
    job = Job(base=tmp_path / "job", data=data)
    shutil.copytree(trained_job.checkpoint_dir, job.checkpoint_dir)
    result = job.run(["--epochs", "1", "--model", "efficientnet_lite0"], hyperparameters=HYPERPARAMETERS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = _ignored_lines(result.stdout)
    assert "different data set)" in line and str(job.checkpoint_dir / "checkpoint.pt") in line
    assert "resumed from checkpoint" not in result.stdout
    assert "epoch=1 train_loss=" in result.stdout


# ----------------------------------------------------------------- in-process: signatures and folders


def _args(*argv: str):
    return job_config.build_parser().parse_args(["--model", "efficientnet_lite0", *argv])


def test_the_run_hyperparameters_are_every_argument_that_changes_training() -> None:
    """Derived from the parser: each training argument changes them, the recording ones do not."""
    base = job_config.run_hyperparameters(_args())
    changes = {
        "learning_rate": "0.01", "batch_size": "8", "epochs": "9", "model": "resnet50", "image_size": "64",
        "seed": "1", "trainable_blocks": "1", "weight_decay": "0.1", "patience": "5",
    }
    for name, value in changes.items():
        changed = job_config.run_hyperparameters(_args(f"--{name}", value))
        assert [k for k in base if base[k] != changed[k]] == [name], name
    neutral = ["--debug_out", "/tmp/d", "--debug_save_interval", "1", "--profile_steps", "3",
               "--num_workers", "4", "--channels_last", "true", "--compile", "true",
               "--pretrained_weights", "/x/w.pth", "--debugger", "in_job", "--rules_every_epochs", "2",
               "--rule_parameters", '{"Overfit": {"patience": 2}}']
    assert job_config.run_hyperparameters(_args(*neutral)) == base
    every = {action.dest for action in job_config.build_parser()._actions if action.dest != "help"}
    assert every == set(base) | job_config.RUN_NEUTRAL_ARGUMENTS | {"pretrained_weights"}


def _tiny():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def test_a_foreign_checkpoint_is_ignored_with_one_log_line(tmp_path: Path, digits_small, capsys) -> None:
    import torch

    splits = image_folder.scan_dataset(*(digits_small / name for name in contract.CHANNELS))
    model, optimizer = _tiny()
    mine = checkpoints.signature(job_config.run_hyperparameters(_args()), splits, model, None)
    progress = checkpoints.Progress()
    checkpoints.record_epoch(tmp_path, progress, 1, 0.5, model, optimizer, mine)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    other_model, other_optimizer = _tiny()
    with torch.no_grad():
        other_model[1].weight.add_(1.0)
    other_args = _args("--learning_rate", "0.03", "--batch_size", "8")
    theirs = checkpoints.signature(job_config.run_hyperparameters(other_args), splits, other_model, None)
    capsys.readouterr()
    fresh = checkpoints.resume(tmp_path, theirs, other_model, other_optimizer, patience=3)
    out = capsys.readouterr().out
    assert fresh.start_epoch == 1 and fresh.history == [] and fresh.best_state is None
    assert not torch.equal(other_model[1].weight, saved["1.weight"])  # nothing loaded into it
    assert out.count("\n") == 1 and out.startswith(f"ignoring checkpoint {tmp_path / 'checkpoint.pt'}: ")
    assert "different batch_size, learning_rate)" in out

    resumed = checkpoints.resume(tmp_path, mine, other_model, other_optimizer, patience=3)
    assert resumed.start_epoch == 2 and torch.equal(other_model[1].weight, saved["1.weight"])
    assert "resumed from checkpoint: epoch=1" in capsys.readouterr().out


def test_a_signature_tells_data_sets_architectures_and_weights_apart(tmp_path: Path, digits_small) -> None:
    from torch import nn

    def version(root: Path) -> str:
        splits = image_folder.scan_dataset(*(root / name for name in contract.CHANNELS))
        return checkpoints.dataset_version(splits)

    copy = tmp_path / "copy"
    shutil.copytree(digits_small, copy)
    assert version(copy) == version(digits_small)  # a re-download elsewhere: the same version
    image = next((copy / "train" / "3").glob("*.jpg"))
    before = version(copy)
    image.rename(image.with_name("renamed.jpg"))
    assert version(copy) != before
    renamed = version(copy)
    shutil.move(str(copy / "train" / "3" / "renamed.jpg"), str(copy / "train" / "5" / "renamed.jpg"))
    assert version(copy) != renamed  # relabelled
    relabelled = version(copy)
    (copy / "valid" / "5" / "renamed.jpg").write_bytes((copy / "train" / "5" / "renamed.jpg").read_bytes())
    assert version(copy) != relabelled  # added

    model, _ = _tiny()
    frozen, _ = _tiny()
    frozen[1].bias.requires_grad = False
    wider = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    assert checkpoints.architecture(model) == checkpoints.architecture(_tiny()[0])
    assert len({checkpoints.architecture(m) for m in (model, frozen, wider)}) == 3

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x" * 10)
    assert checkpoints.weights_file(str(weights)) == {"name": "w.pth", "bytes": 10}
    assert checkpoints.weights_file(None) is None


def test_each_job_keeps_its_checkpoints_in_a_folder_named_after_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("BREEDLINE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.delenv("TRAINING_JOB_NAME", raising=False)
    monkeypatch.delenv("SM_TRAINING_ENV", raising=False)
    assert job_config.Paths().job_checkpoint_dir() == tmp_path  # outside a training job
    monkeypatch.setenv("TRAINING_JOB_NAME", TRIAL_A)
    assert job_config.Paths().job_checkpoint_dir() == tmp_path / TRIAL_A  # what SageMaker sets wins
    monkeypatch.setenv("TRAINING_JOB_NAME", "../elsewhere")
    with pytest.raises(ValueError, match="is not a SageMaker training job name"):
        job_config.Paths().job_checkpoint_dir()
