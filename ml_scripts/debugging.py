"""SageMaker Debugger for ``train.py``: the smdebug hook when it works, a no-op that says why when not.

``--debugger`` (the ``contract.DEBUGGER_HYPERPARAMETER``) picks where it runs:

- absent or ``service``: the hook SageMaker's ``debughookconfig.json`` describes
  (the Debugger service reads the tensors and runs the rules), or
  ``--debug_out DIR`` for a local hook without one;
- ``in_job``: a hook writing to ``SM_OUTPUT_DATA_DIR/tensors`` (so the tensors
  travel in ``output.tar.gz``) with every collection the five rules read, and
  the rules evaluated here on that trial (:mod:`debug_rules`), into ``rules.json``;
- ``off``: no hook, no rules.

The model and its loss are registered, and each phase maps to a Debugger mode:
TRAIN for training, EVAL for validation, PREDICT for the test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import time
from typing import Any

import numpy as np
from torch import nn

from contract import CHANNELS, RULE_NAMES, RULES_FILE, TENSORS_DIR, format_metric, rule_metric_name
from job_config import Paths

#: The activation modules whose inputs make the ``relu_input`` collection, in every architecture:
#: vgg11 and resnet50 use ReLU (only resnet50's are *named* relu), efficientnet_lite0 ReLU6.
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardswish)
#: The first training steps PoorWeightInitialization examines (its ``steps``): their
#: activation inputs and gradients are saved whatever the save interval.
FIRST_STEPS = 10
#: After those, gradients are saved every this many training steps (at least): smdebug's own
#: default save interval. A whole model's gradients per saved step (vgg11: about 0.5 GB) make
#: every ``--debug_save_interval`` steps far too much for a job's output.
GRADIENT_SAVE_INTERVAL = 500


def activation_names(model: nn.Module) -> list[str]:
    """The module names of ``model``'s activation layers (smdebug names their inputs ``<name>_input_0``)."""
    return [name for name, module in model.named_modules() if isinstance(module, ACTIVATIONS)]


def activation_inputs_regex(names: list[str]) -> str:
    """A tensor regex matching exactly these activations' inputs (``.*relu_input`` matches only resnet50's)."""
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")_input_0$"


class Debugger:
    """smdebug if it imports and starts; a no-op that said so once if not.

    smdebug is not in AWS's PyTorch 2.2+ containers and needs numpy<2; a broken
    install must never cost a training run.
    """

    def __init__(self, paths: Paths, args: argparse.Namespace, main: bool = True) -> None:
        self.hook: Any = None
        self.modes: Any = None
        self.mode: str | None = getattr(args, "debugger", None)
        self.paths = paths
        self.args = args
        self.rules_every = max(0, getattr(args, "rules_every_epochs", 0) or 0)
        #: Why there is no in-job hook, for ``rules.json`` (None while it works).
        self.broken: str | None = None
        #: Rule parameters that depend on the model (PoorWeightInitialization's activation regex).
        self.rule_overrides: dict[str, dict[str, Any]] = {}
        config = paths.config_dir / "debughookconfig.json"
        #: Under DDP only rank 0 evaluates the in-job rules (:func:`distributed_hook_here`).
        self.main = main
        if not distributed_hook_here(main, self.mode, config.is_file()):
            return
        if self.mode == "off":
            print("Debugger off (--debugger off): no hook, no rules", flush=True)
            return
        if self.mode != "in_job" and not config.is_file() and not args.debug_out:
            return
        try:
            if int(np.__version__.split(".")[0]) >= 2:
                raise RuntimeError(f"smdebug 1.0.34 needs numpy<2, found numpy {np.__version__}")
            import smdebug.pytorch as smd

            if self.mode == "in_job":
                self.hook = self.in_job_hook(smd, max(1, args.debug_save_interval))
                where = f"in the job, {self.tensors_dir}"
            elif config.is_file():
                self.hook = smd.Hook.create_from_json_file(str(config))
                where = f"{config}"
            else:
                self.hook = smd.Hook(
                    out_dir=args.debug_out,
                    save_config=smd.SaveConfig(save_interval=max(1, args.debug_save_interval)),
                    include_collections=["losses"],
                )
                where = f"--debug_out {args.debug_out}"
            self.modes = smd.modes
            print(f"smdebug hook active ({where})", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure: train without it, say so once
            self.hook = None
            self.broken = f"smdebug unavailable: {type(exc).__name__}: {exc}"
            print(f"smdebug unavailable, training without Debugger tensors: {type(exc).__name__}: {exc}", flush=True)

    @property
    def tensors_dir(self) -> Any:
        return self.paths.output_data_dir / TENSORS_DIR

    def in_job_hook(self, smd: Any, interval: int) -> Any:
        """The hook for ``in_job``, under the job's output: losses every step; gradients in the first
        :data:`FIRST_STEPS` and then every :data:`GRADIENT_SAVE_INTERVAL` (or ``interval``, if larger);
        activation inputs in the first :data:`FIRST_STEPS` training steps only."""
        if self.tensors_dir.exists():  # smdebug refuses an existing out_dir; a rerun replaces its own output
            shutil.rmtree(self.tensors_dir)
        hook = smd.Hook(out_dir=str(self.tensors_dir), save_config=smd.SaveConfig(save_interval=interval),
                        include_collections=["losses", "gradients", "relu_input"])
        hook.get_collection("losses").save_config = smd.SaveConfig(save_interval=1)
        first = list(range(FIRST_STEPS))
        # Gradients exist only in training: the first steps, then every GRADIENT_SAVE_INTERVAL. Activation
        # inputs only in the first training steps, the only ones PoorWeightInitialization reads:
        # saved every ``interval`` steps and in validation and test too, they made a 2-epoch demo
        # job's output 1 GB (docs/ml.md, "Debugger in the job").
        hook.get_collection("gradients").save_config = smd.SaveConfig(
            save_interval=max(interval, GRADIENT_SAVE_INTERVAL), save_steps=first)
        nothing = smd.SaveConfigMode(save_steps=[], start_step=0, end_step=0)
        hook.get_collection("relu_input").save_config = smd.SaveConfig(mode_save_configs={
            smd.modes.TRAIN: smd.SaveConfigMode(save_steps=first, start_step=0, end_step=FIRST_STEPS),
            smd.modes.EVAL: nothing, smd.modes.PREDICT: nothing, smd.modes.GLOBAL: nothing,
        })
        return hook

    def register(self, model: nn.Module, loss_fn: nn.Module) -> None:
        if self.hook is None:
            return
        try:
            if self.mode == "in_job":
                self.register_activations(model)
            self.hook.register_module(model)
            self.hook.register_loss(loss_fn)
        except Exception as exc:  # noqa: BLE001
            print(f"smdebug could not register the model, training without it: {exc}", flush=True)
            self.hook = None
            self.broken = f"smdebug could not register the model: {type(exc).__name__}: {exc}"

    def register_activations(self, model: nn.Module) -> None:
        """Every activation layer's input into ``relu_input``, whatever the architecture names it.

        In-place activations are made out-of-place first: smdebug reads a
        module's input after its forward, when an in-place ReLU has already
        overwritten it (the results are the same, the memory a little more).
        """
        collection = self.hook.get_collection("relu_input")
        names = activation_names(model)
        for name in names:
            module = model.get_submodule(name)
            if getattr(module, "inplace", False):
                module.inplace = False
            collection.add_module_tensors(module, inputs=True, outputs=False)
        if names:
            self.rule_overrides["PoorWeightInitialization"] = {"activation_inputs_regex": activation_inputs_regex(names)}

    def set_mode(self, phase: str) -> None:
        """``phase`` is a channel name: train -> TRAIN, valid -> EVAL, test -> PREDICT."""
        if self.hook is not None:
            modes = dict(zip(CHANNELS, (self.modes.TRAIN, self.modes.EVAL, self.modes.PREDICT)))
            self.hook.set_mode(modes[phase])

    def after_epoch(self, epoch: int, epochs: int) -> None:
        """``--rules_every_epochs N``: the rules on the tensors so far, every N epochs before the last."""
        if self.mode == "in_job" and self.main and self.rules_every and epoch % self.rules_every == 0 and epoch < epochs:
            self.evaluate_rules(f"epoch {epoch}")

    def close(self) -> None:
        """Close the hook; in ``in_job`` mode then evaluate the rules on the whole trial."""
        if self.hook is not None:
            with contextlib.suppress(Exception):
                self.hook.close()
        if self.mode == "in_job" and self.main:
            self.evaluate_rules("training")

    def evaluate_rules(self, evaluated_after: str) -> None:
        """Write ``rules.json`` and the rule metric lines; a broken smdebug is reported there, never raised."""
        t0 = time.perf_counter()
        try:
            if self.hook is None:
                results = [unevaluated(name, self.broken or "no smdebug hook") for name in RULE_NAMES]
            else:
                import debug_rules

                given = getattr(self.args, "rule_parameters", None) or {}
                overrides = {name: {**self.rule_overrides.get(name, {}), **given.get(name, {})} for name in RULE_NAMES}
                results = debug_rules.evaluate(self.tensors_dir, overrides)
            write_rules(self.paths.output_data_dir, results, evaluated_after)
            print(f"Debugger rules evaluated after {evaluated_after} in {time.perf_counter() - t0:.2f}s", flush=True)
        except Exception as exc:  # noqa: BLE001 - the rules must never cost the training job
            if self.broken is None:
                print(f"Debugger rules not evaluated: {type(exc).__name__}: {exc}", flush=True)
            self.broken = self.broken or f"{type(exc).__name__}: {exc}"


def distributed_hook_here(main: bool, mode: str | None, service_config: bool) -> bool:
    """Whether this rank creates a hook: rank 0 always; the others only for SageMaker's hook config.

    smdebug's own rule for distributed jobs: every worker creates the hook from
    ``debughookconfig.json``; with ``torch.distributed`` initialised it names
    each one ``worker_<rank>``, and unless the config says
    ``include_workers: all`` only the chief, ``worker_0``, writes. Our own
    hooks (``in_job``, ``--debug_out``) write one trial that the in-job rules
    read: one writer, rank 0, so the other ranks create none.
    """
    if main:
        return True
    return mode in (None, "service") and service_config


def unevaluated(name: str, error: str | None, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """One rule's record in ``rules.json`` before (or instead of) its evaluation."""
    return {"rule": name, "parameters": dict(parameters or {}), "steps_examined": [], "issue_found": False,
            "issue_count": 0, "issues": [], "error": error}


def write_rules(output_data_dir: Any, results: list[dict[str, Any]], evaluated_after: str) -> None:
    """``rules.json``, and one metric line per evaluated rule (1 = issue found); a rule that could
    not run gets no metric line (absent is not "no issue") but says why."""
    output_data_dir.mkdir(parents=True, exist_ok=True)
    document = {"evaluated_after": evaluated_after, "rules": results}
    (output_data_dir / RULES_FILE).write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    for result in results:
        if result["error"] is None:
            print(format_metric(rule_metric_name(result["rule"]), 1 if result["issue_found"] else 0), flush=True)
        else:
            print(f"rule {result['rule']} not evaluated: {result['error']}", flush=True)
