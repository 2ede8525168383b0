"""The five built-in Debugger rules, evaluated inside the training job on its own smdebug trial.

Why our own code: smdebug on PyPI ships only the rule interface
(``smdebug.rules.Rule``, ``RequiredTensors``, ``invoke_rule``); AWS's
implementations of LossNotDecreasing, Overfit, Overtraining, VanishingGradient
and PoorWeightInitialization live only in its closed rule container image. So
each rule here is a ``smdebug.rules.Rule`` subclass with the parameters and
defaults AWS documents for the built-in rule of that name, run by smdebug's own
``invoke_rule`` over the steps the hook saved (docs/ml.md, "Debugger", says
how each one reads its parameters).

Each rule records the global steps it examined and every issue (step and
message) instead of stopping at the first one, so ``rules.json`` can say where.
:func:`evaluate` runs all five and never raises: a rule that cannot run gets
an error text instead of a result.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import TensorUnavailable, TensorUnavailableForStep
from smdebug.rules import Rule, invoke_rule
from smdebug.trials import create_trial

from contract import RULE_NAMES
from debugging import unevaluated

#: Issues kept per rule in ``rules.json``; ``issue_count`` says how many there were in all.
MAX_ISSUES = 20


class RecordingRule(Rule):
    """A rule that keeps every step it looked at and every issue it found, with its parameters."""

    def __init__(self, base_trial: Any, **parameters: Any) -> None:
        super().__init__(base_trial, action_str="")
        self.parameters = parameters
        self.steps_examined: list[int] = []
        self.issues: list[dict[str, Any]] = []

    def issue(self, step: int, message: str) -> bool:
        self.issues.append({"step": int(step), "message": message})
        return True

    def examined(self, step: int) -> None:
        if not self.steps_examined or self.steps_examined[-1] != step:
            self.steps_examined.append(int(step))

    def mode_of(self, step: int) -> Any:
        return self.base_trial.mode_modestep(step)[0]

    def values_at(self, names: list[str], step: int) -> dict[str, np.ndarray]:
        """Each named tensor's value at this global step, for those saved at it."""
        found = {}
        for name in names:
            try:
                found[name] = np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
            except (TensorUnavailableForStep, TensorUnavailable):
                continue
        return found

    def loss_names(self, tensor_regex: str | None = None, collections: list[str] | None = None,
                   use_losses: bool = True) -> list[str]:
        names: set[str] = set()
        if use_losses:
            names.update(self.base_trial.tensor_names(collection="losses"))
        for collection in collections or []:
            names.update(self.base_trial.tensor_names(collection=collection))
        if tensor_regex:
            names.update(self.base_trial.tensor_names(regex=tensor_regex))
        return sorted(names)

    def finish(self) -> None:
        """Called once after the last step; rules with an open window judge it here."""


class LossNotDecreasing(RecordingRule):
    """The loss must fall by ``diff_percent`` % every ``num_steps`` steps, and never rise over
    ``increase_threshold_percent`` % above its lowest.

    The loss at a check is the mean over the ``num_steps`` steps since the last
    check (a single batch's loss is too noisy on small data sets); a loss
    that is not finite (a diverged run) is an issue. ``mode`` None: EVAL steps
    if any were saved, else TRAIN, else GLOBAL, in AWS's order.
    """

    def __init__(self, base_trial: Any, collection_names: list[str] | None = None, tensor_regex: str | None = None,
                 use_losses_collection: bool = True, num_steps: int = 10, diff_percent: float = 0.1,
                 increase_threshold_percent: float = 5, mode: str | None = None) -> None:
        super().__init__(base_trial, collection_names=collection_names, tensor_regex=tensor_regex,
                         use_losses_collection=use_losses_collection, num_steps=num_steps, diff_percent=diff_percent,
                         increase_threshold_percent=increase_threshold_percent, mode=mode)
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.names = self.loss_names(tensor_regex, collection_names, use_losses_collection)
        if not self.names:
            raise ValueError("no loss tensors saved (losses collection, collection_names, tensor_regex)")
        self.mode = ModeKeys[mode.upper()] if mode else next(
            (m for m in (ModeKeys.EVAL, ModeKeys.TRAIN) if base_trial.steps(mode=m)), ModeKeys.GLOBAL)
        self.window: dict[str, list[float]] = {name: [] for name in self.names}
        self.previous: dict[str, float] = {}
        self.lowest: dict[str, float] = {}

    def invoke_at_step(self, step: int) -> bool:
        if self.mode != ModeKeys.GLOBAL and self.mode_of(step) != self.mode:
            return False
        found = False
        for name, value in self.values_at(self.names, step).items():
            window = self.window[name]
            window.append(float(value.mean()))
            if len(window) >= self.parameters["num_steps"]:
                found = self.check(name, step, float(np.mean(window))) or found
                window.clear()
        return found

    def check(self, name: str, step: int, mean: float) -> bool:
        self.examined(step)
        previous, lowest = self.previous.get(name), self.lowest.get(name)
        self.previous[name] = mean
        if not math.isfinite(mean):
            return self.issue(step, f"{name}: the loss is not finite ({mean})")
        self.lowest[name] = mean if lowest is None else min(lowest, mean)
        rise = self.parameters["increase_threshold_percent"]
        if lowest is not None and mean > lowest * (1 + rise / 100):
            return self.issue(step, f"{name}: mean loss {mean:.4g} is over {rise}% above its lowest {lowest:.4g}")
        drop = self.parameters["diff_percent"]
        if previous is not None and math.isfinite(previous) and mean > previous * (1 - drop / 100):
            return self.issue(step, f"{name}: mean loss {mean:.4g} over the last {self.parameters['num_steps']} "
                              f"steps did not fall {drop}% below {previous:.4g}")
        return False


class PhaseMeans:
    """Mean loss per contiguous run of TRAIN or EVAL steps (one epoch's training, one validation pass)."""

    def __init__(self) -> None:
        self.mode: Any = None
        self.values: list[float] = []

    def add(self, mode: Any, value: float) -> tuple[Any, float, int] | None:
        """Add one step's loss; returns the (mode, mean, steps) of the phase it closed, if any."""
        closed = self.close() if mode != self.mode else None
        self.mode = mode
        self.values.append(value)
        return closed

    def close(self) -> tuple[Any, float, int] | None:
        if not self.values:
            return None
        closed = (self.mode, float(np.mean(self.values)), len(self.values))
        self.values = []
        return closed


class PhaseRule(RecordingRule):
    """A rule judged on phase means: each training epoch's and each validation pass's mean loss.

    Subclasses set ``self.names`` (the loss tensor) and implement ``judge``, which
    gets each closed phase as ``(mode, mean, steps)``. Steps before the rule's
    ``start_step`` parameter (0 when it has none) are not looked at.
    """

    def invoke_at_step(self, step: int) -> bool:
        mode = self.mode_of(step)
        if step < self.parameters.get("start_step", 0):
            return False
        if mode not in (ModeKeys.TRAIN, ModeKeys.EVAL):  # the test (PREDICT) ends the validation pass before it
            return self.judge(self.phases.close(), self.step)
        values = self.values_at(self.names, step)
        if not values:
            return False
        found = self.judge(self.phases.add(mode, float(next(iter(values.values())).mean())), self.step)
        self.step = step
        return found

    def finish(self) -> None:
        self.judge(self.phases.close(), self.step)

    def judge(self, closed: tuple[Any, float, int] | None, step: int) -> bool:
        raise NotImplementedError


class Overfit(PhaseRule):
    """Validation loss over training loss: ``(valid - train) / train > ratio_threshold`` for
    ``patience`` validation passes in a row.

    Each validation pass's mean loss (the job's ``valid_loss``) is compared
    with the mean loss of the training steps just before it, from ``start_step`` on.
    """

    def __init__(self, base_trial: Any, tensor_regex: str | None = None, start_step: int = 0, patience: int = 1,
                 ratio_threshold: float = 0.1) -> None:
        super().__init__(base_trial, tensor_regex=tensor_regex, start_step=start_step, patience=patience,
                         ratio_threshold=ratio_threshold)
        self.names = self.loss_names(tensor_regex)[:1]
        if not self.names:
            raise ValueError("no loss tensor saved (losses collection or tensor_regex)")
        self.phases = PhaseMeans()
        self.train_mean: float | None = None
        self.over = 0
        self.step = 0

    def judge(self, closed: tuple[Any, float, int] | None, step: int) -> bool:
        if closed is None:
            return False
        mode, mean, _ = closed
        if mode == ModeKeys.TRAIN:
            self.train_mean = mean
            return False
        if self.train_mean is None or self.train_mean <= 0:
            return False
        self.examined(step)
        ratio = (mean - self.train_mean) / self.train_mean
        self.over = self.over + 1 if ratio > self.parameters["ratio_threshold"] else 0
        if self.over >= self.parameters["patience"]:
            return self.issue(step, f"validation loss {mean:.4g} is {ratio:.1%} above the training loss "
                              f"{self.train_mean:.4g} for {self.over} validation pass(es)")
        return False


class Overtraining(PhaseRule):
    """Training loss not improving by ``delta`` for ``patience_train`` TRAIN steps, or validation
    loss for ``patience_validation`` EVAL steps: training has gone past its best.

    Judged on phase means (each epoch's training loss, each validation pass's
    loss: the metric lines' numbers), so one lucky batch cannot set a best that
    healthy training then "fails" to beat; a phase that does not improve adds
    its step count to the steps without improvement.
    """

    def __init__(self, base_trial: Any, tensor_regex: str | None = None, patience_train: int = 5,
                 patience_validation: int = 10, delta: float = 0.01) -> None:
        super().__init__(base_trial, tensor_regex=tensor_regex, patience_train=patience_train,
                         patience_validation=patience_validation, delta=delta)
        self.names = self.loss_names(tensor_regex)[:1]
        if not self.names:
            raise ValueError("no loss tensor saved (losses collection or tensor_regex)")
        self.phases = PhaseMeans()
        self.best: dict[Any, float] = {}
        self.stale: dict[Any, int] = {ModeKeys.TRAIN: 0, ModeKeys.EVAL: 0}
        self.step = 0

    def judge(self, closed: tuple[Any, float, int] | None, step: int) -> bool:
        if closed is None:
            return False
        mode, mean, count = closed
        self.examined(step)
        best = self.best.get(mode)
        if best is None or mean < best - self.parameters["delta"]:
            self.best[mode], self.stale[mode] = mean, 0
            return False
        self.stale[mode] += count
        train = mode == ModeKeys.TRAIN
        patience = self.parameters["patience_train" if train else "patience_validation"]
        if self.stale[mode] >= patience:
            return self.issue(step, f"{'training' if train else 'validation'} loss {mean:.4g} has not improved by "
                              f"{self.parameters['delta']} on its best {best:.4g} for {self.stale[mode]} steps")
        return False


class VanishingGradient(RecordingRule):
    """A gradient whose mean absolute value is under ``threshold``."""

    def __init__(self, base_trial: Any, threshold: float = 0.0000001) -> None:
        super().__init__(base_trial, threshold=threshold)
        self.names = base_trial.tensor_names(collection="gradients")
        if not self.names:
            raise ValueError("no gradients saved (gradients collection)")

    def invoke_at_step(self, step: int) -> bool:
        values = self.values_at(self.names, step)
        if not values:
            return False
        self.examined(step)
        small = sorted(name for name, v in values.items() if float(np.abs(v).mean()) < self.parameters["threshold"])
        if small:
            return self.issue(step, f"{len(small)} of {len(values)} gradients have a mean |value| under "
                              f"{self.parameters['threshold']}: {', '.join(small[:5])}")
        return False


class PoorWeightInitialization(RecordingRule):
    """In the first ``steps`` training steps: activation-input variances across layers over
    ``threshold`` apart, gradients whose 5th-95th percentile range is under ``distribution_range``,
    or a loss that does not fall within ``patience`` steps."""

    def __init__(self, base_trial: Any, activation_inputs_regex: str = ".*relu_input", threshold: float = 10.0,
                 distribution_range: float = 0.001, patience: int = 5, steps: int = 10) -> None:
        super().__init__(base_trial, activation_inputs_regex=activation_inputs_regex, threshold=threshold,
                         distribution_range=distribution_range, patience=patience, steps=steps)
        self.activations = base_trial.tensor_names(regex=activation_inputs_regex)
        if not self.activations:
            raise ValueError(f"no activation inputs saved that match {activation_inputs_regex!r}")
        self.gradients = base_trial.tensor_names(collection="gradients")
        self.losses = self.loss_names()[:1]
        self.best_loss: float | None = None
        self.stale = 0

    def invoke_at_step(self, step: int) -> bool:
        mode, mode_step = self.base_trial.mode_modestep(step)
        if mode != ModeKeys.TRAIN or mode_step >= self.parameters["steps"]:
            return False
        found = False
        variances = [float(v.var()) for v in self.values_at(self.activations, step).values()]
        if variances:
            self.examined(step)
            low, high = min(variances), max(variances)
            if low <= 0 or high / low > self.parameters["threshold"]:
                found = self.issue(step, f"activation-input variance ranges from {low:.3g} to {high:.3g} across "
                                   f"{len(variances)} layers (over {self.parameters['threshold']}x)")
        grads = self.values_at(self.gradients, step)
        if grads:
            self.examined(step)
            spread = np.percentile(np.concatenate([g.ravel() for g in grads.values()]), [5, 95])
            if spread[1] - spread[0] < self.parameters["distribution_range"]:
                found = self.issue(step, f"gradients' 5th-95th percentile range {spread[1] - spread[0]:.3g} is "
                                   f"under {self.parameters['distribution_range']}") or found
        return self.loss_check(step) or found

    def loss_check(self, step: int) -> bool:
        values = self.values_at(self.losses, step)
        if not values:
            return False
        self.examined(step)
        value = float(next(iter(values.values())).mean())
        if self.best_loss is None or value < self.best_loss:
            self.best_loss, self.stale = value, 0
            return False
        self.stale += 1
        if self.stale == self.parameters["patience"]:
            return self.issue(step, f"the loss did not fall below {self.best_loss:.4g} for {self.stale} of the "
                              f"first {self.parameters['steps']} steps")
        return False


RULES: dict[str, type[RecordingRule]] = {cls.__name__: cls for cls in (
    LossNotDecreasing, Overfit, Overtraining, VanishingGradient, PoorWeightInitialization)}
assert tuple(RULES) == RULE_NAMES, "contract.RULE_NAMES and the rule classes must match"


def run_rule(name: str, trial: Any, steps: list[int], parameters: dict[str, Any]) -> dict[str, Any]:
    """One rule over ``steps`` with smdebug's ``invoke_rule``; its record for ``rules.json``."""
    result = unevaluated(name, None, parameters)
    try:
        if not steps:
            raise ValueError("the hook saved no steps")
        rule = RULES[name](trial, **parameters)
        invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1)
        rule.finish()
    except Exception as exc:  # noqa: BLE001 - a rule that cannot run is reported, never fatal
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result.update(parameters=rule.parameters, steps_examined=rule.steps_examined, issue_found=bool(rule.issues),
                  issue_count=len(rule.issues), issues=rule.issues[:MAX_ISSUES])
    return result


def evaluate(tensors_dir: Path, overrides: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """All five rules on the trial in ``tensors_dir``, each with its defaults updated by ``overrides``."""
    os.environ.setdefault("SMDEBUG_TRAINING_END_DELAY_REFRESH", "0")  # the job itself wrote the trial
    try:
        # smdebug waits forever for a trial's collections file; a hook that never wrote one is an error here
        if not any(Path(tensors_dir).glob("collections/*/*collections.json")):
            raise FileNotFoundError("no smdebug collections file: the hook saved nothing")
        trial = create_trial(str(tensors_dir))
        steps = trial.steps()
    except Exception as exc:  # noqa: BLE001
        return [unevaluated(name, f"cannot read the trial in {tensors_dir}: {type(exc).__name__}: {exc}")
                for name in RULE_NAMES]
    return [run_rule(name, trial, steps, (overrides or {}).get(name, {})) for name in RULE_NAMES]
