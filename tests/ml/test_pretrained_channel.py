"""The ``pretrained`` input channel: train.py takes its one file as ``--pretrained_weights`` (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

import backbones
import contract
import job_config
import train
from ml_jobs import HYPERPARAMETERS, Job

#: A value no ImageNet stem weight has: seen in model.pt, it proves the channel's file was loaded.
MARK = 0.125


def _marked_weights(folder: Path) -> Path:
    """efficientnet_lite0's ImageNet weights with the (frozen) stem convolution set to :data:`MARK`."""
    import torch

    state = torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert not torch.all(state["_conv_stem.weight"] == MARK)
    state["_conv_stem.weight"] = torch.full_like(state["_conv_stem.weight"], MARK)
    folder.mkdir(parents=True)
    path = folder / "efficientnet-lite0-marked.pth"
    torch.save(state, path)
    return path


def test_the_pretrained_channel_supplies_the_weights(tmp_path: Path, digits_small: Path) -> None:
    import torch

    channel = tmp_path / "input" / "data" / contract.PRETRAINED_CHANNEL
    weights = _marked_weights(channel)
    job = Job(base=tmp_path / "job", data=digits_small, environment={
        f"SM_CHANNEL_{contract.PRETRAINED_CHANNEL.upper()}": str(channel),
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),  # no cached hub weights to fall back on
    })
    result = job.run(["--epochs", "1"], hyperparameters=HYPERPARAMETERS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    state = torch.load(job.model_dir / "model.pt", map_location="cpu", weights_only=True)
    assert torch.all(state["_conv_stem.weight"] == MARK)  # the frozen stem is the channel file's, not the package's
    assert f'pretrained weights from the pretrained channel: "{weights}"' in result.stdout


def test_an_explicit_flag_wins_over_the_channel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    channel = tmp_path / "pretrained"
    channel.mkdir()
    (channel / "vgg11-8a719046.pth").write_bytes(b"weights")
    monkeypatch.setenv("SM_CHANNEL_PRETRAINED", str(channel))
    args = job_config.build_parser().parse_args([])
    job_config.use_pretrained_channel(args, job_config.Paths())
    assert args.pretrained_weights == str(channel / "vgg11-8a719046.pth")
    args = job_config.build_parser().parse_args(["--pretrained_weights", "/elsewhere/w.pth"])
    job_config.use_pretrained_channel(args, job_config.Paths())
    assert args.pretrained_weights == "/elsewhere/w.pth"
    paths = job_config.Paths()
    paths.pretrained_dir = None  # a job without the channel
    args = job_config.build_parser().parse_args([])
    job_config.use_pretrained_channel(args, paths)
    assert args.pretrained_weights is None


def test_a_channel_with_more_than_one_file_fails_the_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_small: Path
) -> None:
    """An S3 prefix also matches longer keys (``w.pth`` and ``w.pth.bak``): refuse to guess, say why."""
    channel = tmp_path / "pretrained"
    channel.mkdir()
    (channel / "w.pth").write_bytes(b"a")
    (channel / "w.pth.bak").write_bytes(b"b")
    job = Job(base=tmp_path / "job", data=digits_small, environment={"SM_CHANNEL_PRETRAINED": str(channel)})
    monkeypatch.delenv("TRAINING_JOB_NAME", raising=False)
    for key, value in job.env().items():
        if key.startswith(("SM_", "BREEDLINE_")):
            monkeypatch.setenv(key, value)
    assert train.main(["--epochs", "1"]) == 1
    reason = (job.output_dir / "failure").read_text()
    assert 'must hold exactly one weights file, found 2 ("w.pth", "w.pth.bak")' in reason
    assert "BREEDLINE_PRETRAINED_WEIGHTS_URI" in reason
