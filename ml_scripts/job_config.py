"""What a training job is told, as SageMaker's script-mode container tells it: paths and hyperparameters.

Everything here comes from the environment or ``hyperparameters.json``
(see docs/ml.md for the full contract):

- channels (``contract.CHANNELS``) in ``SM_CHANNEL_<NAME>`` (folder per class), and the
  optional ``contract.PRETRAINED_CHANNEL`` with one weights file (:func:`use_pretrained_channel`);
- hyperparameters as CLI args and in ``$SM_INPUT_CONFIG_DIR/hyperparameters.json``
  (values may be JSON-quoted, ``sagemaker_*`` keys are the toolkit's, not ours);
- the model to ``SM_MODEL_DIR``, other output to ``SM_OUTPUT_DATA_DIR``,
  checkpoints under ``BREEDLINE_CHECKPOINT_DIR`` (``/opt/ml/checkpoints``), in a folder
  named after the training job (:meth:`Paths.job_checkpoint_dir`);
- on failure the reason in ``$SM_OUTPUT_DIR/failure`` (:func:`write_failure`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from backbones import ARCHITECTURES, DEFAULT_ARCHITECTURE
from contract import (CHAMPION_CHANNEL, CHANNELS, DEBUGGER_HYPERPARAMETER, PRETRAINED_CHANNEL, RULE_NAMES,
                      quote_name, unquote_hyperparameter, unquote_hyperparameters)

#: CreateTrainingJob's pattern for ``TrainingJobName``: the job's checkpoint folder is named after it.
JOB_NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
#: Arguments that change what a job records or how fast it runs, never what it learns:
#: a restarted job may differ in them and still resume (:func:`run_hyperparameters`).
RUN_NEUTRAL_ARGUMENTS: frozenset[str] = frozenset(
    {"debug_out", "debug_save_interval", "profile_steps", "num_workers", "channels_last", "compile",
     DEBUGGER_HYPERPARAMETER, "rules_every_epochs", "rule_parameters"}
)


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
        #: ``CheckpointConfig.LocalPath``: SageMaker copies the whole ``S3Uri`` prefix here at job start.
        self.checkpoint_dir = env_path("BREEDLINE_CHECKPOINT_DIR", "/opt/ml/checkpoints")
        #: The pretrained-weights channel's folder, or None when the job has no such channel.
        self.pretrained_dir: Path | None = _channel_if_present(PRETRAINED_CHANNEL)
        #: The champion channel's folder (the live model's ``model.tar.gz``), or None without one.
        self.champion_dir: Path | None = _channel_if_present(CHAMPION_CHANNEL)

    def job_checkpoint_dir(self) -> Path:
        """This job's own checkpoint folder: ``<checkpoint dir>/<training job name>/``.

        Why: every trial of a tuning job gets the same ``CheckpointConfig``
        (the tuning job's definition is one static request), so SageMaker
        copies all earlier trials' checkpoints into each new trial. In a folder
        of its own, a spot restart of a job resumes that job and never another
        trial. Outside a training job (no job name) it is the checkpoint dir itself.
        """
        name = training_job_name()
        return self.checkpoint_dir if name is None else self.checkpoint_dir / name


def _channel_if_present(name: str) -> Path | None:
    """``SM_CHANNEL_<NAME>`` (set for each channel of the job), else the default folder if it exists."""
    value = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    if value:
        return Path(value)
    default = Path(f"/opt/ml/input/data/{name}")
    return default if default.is_dir() else None


def training_job_name() -> str | None:
    """The training job's name, None outside a job.

    ``TRAINING_JOB_NAME`` is set by SageMaker in every training container (the
    training toolkit reads its ``job_name`` from it, and the local runtime sets
    it too). A spot restart keeps the name.
    """
    name = os.environ.get("TRAINING_JOB_NAME") or ""
    if not name:
        return None
    if not JOB_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"TRAINING_JOB_NAME={name!r} is not a SageMaker training job name")
    return name


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


def rule_parameters(text: str) -> dict[str, dict[str, Any]]:
    """``--rule_parameters``: a JSON object of rule name (``contract.RULE_NAMES``) to a parameter object."""
    try:
        value = json.loads(unquote_hyperparameter(text))
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"RuleName": {"parameter": value}, ...}')
    unknown = sorted(set(value) - set(RULE_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown rule(s) {unknown}; the rules are {list(RULE_NAMES)}")
    return value


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
    p.add_argument(
        f"--{DEBUGGER_HYPERPARAMETER}", type=_typed(str), default=None, choices=("in_job", "service", "off"),
        help="in_job: smdebug hook and the five rules in this job; service: SageMaker's hook config; off: none; "
        "absent: the hook config if SageMaker sent one, or --debug_out",
    )
    p.add_argument("--rules_every_epochs", type=_typed(int), default=0,
                   help="in_job: also evaluate the rules every N epochs (0: only at the end)")
    p.add_argument("--rule_parameters", type=rule_parameters, default={},
                   help='in_job: JSON, rule name to parameters over its defaults, e.g. {"Overfit": {"patience": 2}}')
    p.add_argument("--profile_steps", type=_typed(int), default=0)
    p.add_argument("--num_workers", type=_typed(int), default=None)
    p.add_argument("--seed", type=_typed(int), default=42)
    p.add_argument("--lr_reference_batch", type=_typed(int), default=None,
                   help="the batch --learning_rate was tuned at; the rate scales by global batch / this "
                   "(default --batch_size: unchanged on one process; docs/scale.md)")
    p.add_argument(
        "--class_weights", type=_typed(str), default="auto", choices=("auto", "on", "off"),
        help="class-weighted loss: auto means on when the biggest train class has over 3x the images "
        "of the smallest (docs/ml.md)",
    )
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


def run_hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """Every parsed argument that changes what the job learns, by name (for the checkpoint signature).

    Derived from the parser, so a new hyperparameter counts unless it is
    listed in :data:`RUN_NEUTRAL_ARGUMENTS`. ``pretrained_weights`` is a path;
    the signature identifies the file itself (:func:`checkpoints.weights_file`).
    """
    return {
        name: value for name, value in sorted(vars(args).items())
        if name not in RUN_NEUTRAL_ARGUMENTS and name != "pretrained_weights"
    }


def use_pretrained_channel(args: argparse.Namespace, paths: Paths) -> None:
    """``--pretrained_weights`` from the pretrained channel's one file, unless given explicitly.

    The channel comes from ``BREEDLINE_PRETRAINED_WEIGHTS_URI``: one S3 object,
    so the job needs no internet for vgg11's or resnet50's weights. The
    channel is an S3 key prefix, so more than one file means the URI also
    matched other keys; we refuse to guess.
    """
    if paths.pretrained_dir is None:
        return
    if args.pretrained_weights:
        print(f"--pretrained_weights {args.pretrained_weights} given: "
              f"the {PRETRAINED_CHANNEL} channel is unused", flush=True)
        return
    files = sorted(p for p in paths.pretrained_dir.rglob("*") if p.is_file())
    if len(files) != 1:
        found = ", ".join(quote_name(p.relative_to(paths.pretrained_dir)) for p in files[:5]) or "nothing"
        raise ValueError(
            f"the {PRETRAINED_CHANNEL} channel {quote_name(paths.pretrained_dir)} must hold exactly one "
            f"weights file, "
            f"found {len(files)} ({found}): point BREEDLINE_PRETRAINED_WEIGHTS_URI at one object "
            f"whose key is not the start of another key"
        )
    args.pretrained_weights = str(files[0])
    print(f"pretrained weights from the {PRETRAINED_CHANNEL} channel: {quote_name(files[0])}", flush=True)


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


def report_skipped(paths: Paths, skipped: dict[str, list[str]], test_skipped: int) -> dict[str, int]:
    """Log and write ``skipped_images.json``: the unreadable files of each split; returns their counts."""
    skipped = {**skipped, "test": [f"{test_skipped} file(s)"] if test_skipped else []}
    counts = {name: (len(v) if name != "test" else test_skipped) for name, v in skipped.items()}
    for name, count in counts.items():
        if count:
            # JSON-quoted names: an image named like a metric line can never start a log line.
            names = json.dumps(skipped[name][:10])
            print(f"skipped {count} unreadable image(s) in {name}: {names}", flush=True)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    (paths.output_data_dir / "skipped_images.json").write_text(
        json.dumps({"counts": counts, "files": skipped}, indent=2), encoding="utf-8"
    )
    return counts
