"""SageMaker Debugger for ``train.py``: the smdebug hook when it works, a no-op that says why when not.

The final training job gets a ``debughookconfig.json`` (SageMaker's format);
``--debug_out DIR`` makes a hook without one, for local runs. The model and
its loss are registered, and each phase maps to a Debugger mode: TRAIN for
training, EVAL for validation, PREDICT for the test.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import numpy as np
from torch import nn

from contract import CHANNELS
from job_config import Paths


class Debugger:
    """smdebug if it imports and starts; a no-op that said so once if not.

    smdebug is not in AWS's PyTorch 2.2+ containers and needs numpy<2; a broken
    install must never cost a training run.
    """

    def __init__(self, paths: Paths, args: argparse.Namespace) -> None:
        self.hook: Any = None
        self.modes: Any = None
        config = paths.config_dir / "debughookconfig.json"
        if not config.is_file() and not args.debug_out:
            return
        try:
            if int(np.__version__.split(".")[0]) >= 2:
                raise RuntimeError(f"smdebug 1.0.34 needs numpy<2, found numpy {np.__version__}")
            import smdebug.pytorch as smd

            if config.is_file():
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
            print(f"smdebug unavailable, training without Debugger tensors: {type(exc).__name__}: {exc}", flush=True)

    def register(self, model: nn.Module, loss_fn: nn.Module) -> None:
        if self.hook is None:
            return
        try:
            self.hook.register_module(model)
            self.hook.register_loss(loss_fn)
        except Exception as exc:  # noqa: BLE001
            print(f"smdebug could not register the model, training without it: {exc}", flush=True)
            self.hook = None

    def set_mode(self, phase: str) -> None:
        """``phase`` is a channel name: train -> TRAIN, valid -> EVAL, test -> PREDICT."""
        if self.hook is not None:
            modes = dict(zip(CHANNELS, (self.modes.TRAIN, self.modes.EVAL, self.modes.PREDICT)))
            self.hook.set_mode(modes[phase])

    def close(self) -> None:
        if self.hook is not None:
            with contextlib.suppress(Exception):
                self.hook.close()
