"""What a training job is told, as SageMaker's script-mode container tells it: paths and hyperparameters.

Everything here comes from the environment or ``hyperparameters.json``
(see docs/ml.md for the full contract):

- channels (``contract.CHANNELS``) in ``SM_CHANNEL_<NAME>`` (folder per class);
- hyperparameters as CLI args and in ``$SM_INPUT_CONFIG_DIR/hyperparameters.json``
  (values may be JSON-quoted, ``sagemaker_*`` keys are the toolkit's, not ours);
- the model to ``SM_MODEL_DIR``, other output to ``SM_OUTPUT_DATA_DIR``,
  checkpoints to ``BREEDLINE_CHECKPOINT_DIR`` (``/opt/ml/checkpoints``);
- on failure the reason in ``$SM_OUTPUT_DIR/failure`` (:func:`write_failure`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from backbones import ARCHITECTURES, DEFAULT_ARCHITECTURE
from contract import CHANNELS, unquote_hyperparameter, unquote_hyperparameters


def env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


class Paths:
    """Every path the container contract defines, read once from the environment."""

    def __init__(self) -> None:
        #: One folder per channel, in ``contract.CHANNELS`` order.
        self.channels: dict[str, Path] = {
            name: env_path(f"SM_CHANNEL_{name.upper()}", f"/opt/ml/input/data/{name}") for name in CHANNELS
        }
        self.model_dir = env_path("SM_MODEL_DIR", "/opt/ml/model")
        self.output_dir = env_path("SM_OUTPUT_DIR", "/opt/ml/output")
        self.output_data_dir = env_path("SM_OUTPUT_DATA_DIR", str(self.output_dir / "data"))
        self.config_dir = env_path("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")
        self.checkpoint_dir = env_path("BREEDLINE_CHECKPOINT_DIR", "/opt/ml/checkpoints")


def _typed(kind: type) -> Any:
    def convert(text: str) -> Any:
        text = unquote_hyperparameter(text)
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(f"{text} is not a whole number")
            return int(number)
        return kind(text)

    convert.__name__ = kind.__name__
    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"invalid hyperparameters: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Fine-tune a pretrained CNN on a folder-per-class image data set.")
    p.add_argument("--learning_rate", type=_typed(float), default=1e-3)
    p.add_argument("--batch_size", type=_typed(int), default=32)
    p.add_argument("--epochs", type=_typed(int), default=5)
    p.add_argument("--model", type=_typed(str), default=DEFAULT_ARCHITECTURE, choices=ARCHITECTURES)
    p.add_argument("--pretrained_weights", type=_typed(str), default=None, help="local ImageNet weights file")
    p.add_argument("--image_size", type=_typed(int), default=224)
    p.add_argument("--patience", type=_typed(int), default=3, help="epochs without a better valid_loss")
    p.add_argument("--weight_decay", type=_typed(float), default=0.0)
    p.add_argument("--trainable_blocks", type=_typed(int), default=None, help="backbone stages to fine-tune")
    p.add_argument("--debug_out", type=_typed(str), default=None, help="smdebug output dir without a JSON config")
    p.add_argument("--debug_save_interval", type=_typed(int), default=10)
    p.add_argument("--profile_steps", type=_typed(int), default=0)
    p.add_argument("--num_workers", type=_typed(int), default=None)
    p.add_argument("--seed", type=_typed(int), default=42)
    p.add_argument(
        "--channels_last", type=_typed(str), default="auto", choices=("auto", "true", "false"),
        help="auto: only with CUDA; true also speeds up efficientnet_lite0 on a CPU",
    )
    p.add_argument(
        "--compile", type=_typed(str), default="false", choices=("false", "true"),
        help="torch.compile the model: faster GPU steps after compiling once per job (docs/ml.md); "
        "off by default",
    )
    return p


def hyperparameter_argv(config_dir: Path) -> list[str]:
    """hyperparameters.json as CLI args (``sagemaker_*`` keys dropped)."""
    path = config_dir / "hyperparameters.json"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        values = json.load(fh)
    argv: list[str] = []
    for key, value in unquote_hyperparameters(values).items():
        argv += [f"--{key}", value]
    return argv


def parse_args(argv: list[str], config_dir: Path) -> argparse.Namespace:
    """File first, CLI second: argparse keeps the last value, so the CLI wins."""
    args, unknown = build_parser().parse_known_args(hyperparameter_argv(config_dir) + argv)
    if unknown:
        print(f"ignoring unknown arguments: {' '.join(unknown)}", flush=True)
    for name in ("learning_rate", "batch_size", "epochs", "image_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"invalid hyperparameters: --{name} must be positive, got {getattr(args, name)}")
    return args


def cpu_count() -> int:
    """``SM_NUM_CPUS``, else this machine's cores."""
    return max(1, int(unquote_hyperparameter(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)))


def gpu_allowed() -> bool:
    """SageMaker says how many GPUs the job was given; ``"0"`` means use none even if CUDA shows one."""
    gpus = unquote_hyperparameter(os.environ.get("SM_NUM_GPUS") or "")
    return not gpus.strip() or int(float(gpus)) > 0


def write_failure(paths: Paths, reason: str) -> None:
    """The reason a job failed, where SageMaker reads it (``FailureReason``)."""
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        (paths.output_dir / "failure").write_text(reason + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"could not write the failure file: {exc}", file=sys.stderr)
