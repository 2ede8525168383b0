"""The job report's loss plot: one point per epoch, the same numbers as the job's metric lines.

Why per epoch: the numbers an operator reads (``train_loss``, ``valid_loss``,
``test_loss`` in the log and in DescribeTrainingJob) are per-epoch means. The
earlier plot drew the Debugger tensors on each mode's own step axis, so the
validation points sat at the far left of the training steps, did not equal
``valid_loss`` and a small data set gave two points. Here every per-epoch
point comes from ``model_meta.json``'s ``history`` (or, for older artifacts,
the ``epoch=N name=value`` lines of the job's log), and the x axis is the
epoch. The per-step train loss from the smdebug tensors is only a faint line
behind them, mapped onto the same axis as a fraction of an epoch, and only
when enough steps were saved to show more than the epoch means do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import parse_metrics

#: The loss tensor train.py's hook registers (``register_loss`` on CrossEntropyLoss).
LOSS_TENSOR_PATTERN = "CrossEntropyLoss"
#: Fewer saved train steps than this and the per-step line would add nothing to the epoch means.
MIN_STEPS_FOR_STEP_LINE = 20

_EPOCH = re.compile(r"\bepoch=(\d+)\b")
_TRAIN_COUNT = re.compile(r"^data: .*\btrain=(\d+)\b", re.MULTILINE)


@dataclass
class EpochSeries:
    """Per-epoch losses as the job reported them, and where they were read from."""

    epochs: list[int]
    train_loss: list[float]
    valid_loss: list[float]
    source: str
    test_loss: float | None = None
    #: Where the test marker sits: the epoch whose weights the test split was scored on.
    test_epoch: int | None = None
    #: The file the values were read from, when it is not inside the model (the job log).
    origin: str | None = None


@dataclass
class StepSeries:
    """Per-step train loss from the smdebug tensors, with the steps an epoch has."""

    steps: list[int]
    values: list[float]
    steps_per_epoch: float

    def epoch_x(self) -> list[float]:
        """Each step as a position on the epoch axis: epoch 1's steps fill (0, 1], epoch 2's (1, 2], ..."""
        return [(step + 1) / self.steps_per_epoch for step in self.steps]


@dataclass
class LossPlot:
    """What was drawn: ``series`` maps ``train``, ``valid``, ``test``, ``train per step`` to (x, y)."""

    png: Path
    epochs: EpochSeries
    steps: StepSeries | None
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _best_epoch(epochs: list[int], valid: list[float], best_epoch: Any) -> int | None:
    """The epoch train.py kept (``best_epoch``), else the one with the lowest valid loss, as train.py picks it."""
    if isinstance(best_epoch, int) and best_epoch in epochs:
        return best_epoch
    finite = [(v, e) for e, v in zip(epochs, valid) if math.isfinite(v)]
    return min(finite)[1] if finite else (epochs[-1] if epochs else None)


def epochs_from_meta(meta: dict[str, Any], test_loss: float | None = None) -> EpochSeries | None:
    """The ``history`` of ``model_meta.json``; None when it has none (artifacts older than the history)."""
    history = meta.get("history")
    if not isinstance(history, list):
        return None
    rows = sorted((h for h in history if isinstance(h, dict) and isinstance(h.get("epoch"), int)),
                  key=lambda h: h["epoch"])
    if not rows:
        return None
    epochs = [h["epoch"] for h in rows]
    valid = [_number(h.get("valid_loss")) for h in rows]
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    if test_loss is None and "test_loss" in metrics:
        test_loss = _number(metrics["test_loss"])
    return EpochSeries(epochs, [_number(h.get("train_loss")) for h in rows], valid, "model_meta.json history",
                       test_loss, _best_epoch(epochs, valid, meta.get("best_epoch")))


def epochs_from_log(text: str, origin: str) -> EpochSeries | None:
    """The ``epoch=N train_loss=...`` lines of a job's stdout, parsed with the contract's metric regexes.

    A line without ``epoch=`` carries a final value (``test_loss``). An epoch
    printed twice (a resumed job) keeps its last value, as SageMaker would.
    """
    per_epoch: dict[int, dict[str, float]] = {}
    test_loss: float | None = None
    for line in text.splitlines():
        found = parse_metrics(line)
        if not found:
            continue
        match = _EPOCH.search(line)
        if match:
            per_epoch.setdefault(int(match.group(1)), {}).update({k: v[-1] for k, v in found.items()})
        elif "test_loss" in found:
            test_loss = found["test_loss"][-1]
    epochs = sorted(e for e, values in per_epoch.items() if "train_loss" in values or "valid_loss" in values)
    if not epochs:
        return None
    valid = [per_epoch[e].get("valid_loss", float("nan")) for e in epochs]
    return EpochSeries(epochs, [per_epoch[e].get("train_loss", float("nan")) for e in epochs], valid,
                       "the job log's metric lines", test_loss, _best_epoch(epochs, valid, None), origin)


def steps_per_epoch_from_log(text: str, batch_size: Any) -> float | None:
    """``ceil(train images / batch size)`` from train.py's ``data: ... train=N`` line; None when unknown."""
    match = _TRAIN_COUNT.search(text)
    try:
        size = int(str(batch_size).strip('"'))
    except (TypeError, ValueError):
        return None
    if not match or size <= 0 or int(match.group(1)) == 0:
        return None
    return float(math.ceil(int(match.group(1)) / size))


def train_steps(trial_dir: Path, job_ended: bool) -> tuple[list[int], list[float]]:
    """The saved TRAIN-mode steps of the loss tensor and their values (smdebug), from a local copy of a trial.

    smdebug reads a trial as still being written until it finds
    ``training_job_end.ts``, and then waits for more steps (or, without a
    collections file, forever). Under SageMaker the hook never writes that
    file (smdebug leaves the end to the job's status), so for a job that has
    ended the marker is written into this downloaded copy; a running job's
    trial is refused, as is one without a collections file.
    """
    import os

    if not any((trial_dir / "collections").glob("*/*_collections.json")):
        raise ValueError(f"the smdebug trial in {trial_dir} has no collections file")
    end_marker = trial_dir / "training_job_end.ts"
    if not end_marker.is_file():
        if not job_ended:
            raise ValueError("the job is still running; its smdebug trial is incomplete")
        end_marker.write_text("")
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # keep smdebug's INFO lines out of the report
    from smdebug.core.modes import ModeKeys
    from smdebug.trials import create_trial

    trial = create_trial(str(trial_dir))
    names = trial.tensor_names(regex=LOSS_TENSOR_PATTERN)
    if not names:
        raise ValueError(f"no {LOSS_TENSOR_PATTERN} tensor in {trial_dir}")
    tensor = trial.tensor(names[0])
    steps = list(tensor.steps(mode=ModeKeys.TRAIN))
    return steps, [float(tensor.value(step, mode=ModeKeys.TRAIN)) for step in steps]


def step_series(steps: list[int], values: list[float], epochs: EpochSeries,
                steps_per_epoch: float | None) -> StepSeries | None:
    """The per-step line when there are enough saved steps; the epoch length is estimated when unknown.

    The estimate (last saved step + 1 over the epochs run) is off by at most
    one save interval over the whole run.
    """
    if len(steps) < MIN_STEPS_FOR_STEP_LINE:
        return None
    if not steps_per_epoch:
        steps_per_epoch = (max(steps) + 1) / max(1, len(epochs.epochs))
    return StepSeries(steps, values, steps_per_epoch)


def plot_losses(epochs: EpochSeries, steps: StepSeries | None, png: Path, title: str) -> LossPlot:
    """Draw the per-epoch losses (and the faint per-step line) into ``png``; return what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lines: dict[str, Any] = {}
    if steps is not None:
        (lines["train per step"],) = ax.plot(steps.epoch_x(), steps.values, color="tab:blue", alpha=0.25,
                                             linewidth=0.8, label="train loss per step (smdebug)")
    (lines["train"],) = ax.plot(epochs.epochs, epochs.train_loss, color="tab:blue", marker="o",
                                label="train loss (epoch mean)")
    (lines["valid"],) = ax.plot(epochs.epochs, epochs.valid_loss, color="tab:orange", marker="o",
                                label="valid loss")
    if epochs.test_loss is not None and epochs.test_epoch is not None:
        (lines["test"],) = ax.plot([epochs.test_epoch], [epochs.test_loss], color="tab:green", marker="*",
                                   markersize=14, linestyle="none",
                                   label=f"test loss (weights of epoch {epochs.test_epoch})")
    ax.set_xlabel("epoch" if steps is None else "epoch (the per-step line: each step at its fraction of an epoch)")
    ax.set_ylabel("CrossEntropyLoss")
    ax.set_xticks(epochs.epochs if len(epochs.epochs) <= 20 else ax.get_xticks())
    ax.set_xlim(0 if steps is not None else min(epochs.epochs) - 0.25, max(epochs.epochs) + 0.25)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, f"per-epoch values: {epochs.source}", fontsize=7, color="gray")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    series = {key: ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
              for key, line in lines.items()}
    return LossPlot(png, epochs, steps, series)
