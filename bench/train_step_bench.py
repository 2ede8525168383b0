"""Section 4: training steps per second on this CPU, per model, through train.py's own loop.

Each model is built as ``train.py`` builds it (``backbones.build_model``: frozen
backbone parts, new head) and trained with ``Trainer.run_epoch`` on batches
already in memory, so the figure is the step itself (forward, loss, backward,
Adam) without data loading. vgg11 and resnet50 are random-init (their
ImageNet weights can't be downloaded here; the cost is the same).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import gpu_check
from bench.core import Row, Section, Stats

ARCHITECTURES = ("vgg11", "resnet50", "efficientnet_lite0")

class _NoDebugger:
    def set_mode(self, phase: str) -> None:
        pass

def step_rates(arch: str, batch: int, steps: int, image_size: int, num_classes: int = 133) -> list[float]:
    """Images/s of each of ``steps`` training steps (after one warm-up step)."""
    import backbones
    import job_config
    import train

    torch.manual_seed(0)
    model = backbones.build_model(arch, num_classes, image_size=image_size, pretrained=arch == "efficientnet_lite0")
    args = job_config.build_parser().parse_args(["--batch_size", str(batch), "--seed", "0"])
    trainer = train.Trainer(args, paths=None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (batch,))
    batches = [(x, y, 0)]
    trainer.run_epoch(model, batches, "train", _NoDebugger(), optimizer, scaler)  # warm-up
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.run_epoch(model, batches, "train", _NoDebugger(), optimizer, scaler)
        rates.append(batch / (time.perf_counter() - t0))
    return rates

def debugger_overhead(section: Section, quick: bool) -> None:
    """Steps/s of train.py's loop with the Debugger hook the final job gets, against none.

    The hook config is the one the pipeline puts in CreateTrainingJob
    (``chalicelib.sagemaker_requests.DEBUG_COLLECTIONS``: losses, gradients and
    relu_input every ``DEBUG_SAVE_INTERVAL`` steps), written where train.py's
    ``Debugger`` reads it, exactly as the local runtime does.
    """
    import json
    import tempfile
    from pathlib import Path

    import backbones
    import debugging
    import job_config
    import train
    from chalicelib import sagemaker_requests as reqs

    arch, batch, size = "efficientnet_lite0", 16, 64
    steps = 4 if quick else 2 * int(reqs.DEBUG_SAVE_INTERVAL) + 1  # covers two save steps
    args = job_config.build_parser().parse_args(["--batch_size", str(batch), "--seed", "0"])
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    batches = [(x, y, 0)] * steps
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-debugger-") as tmp:
        for name in ("no hook", "hook"):
            paths = argparse.Namespace(config_dir=Path(tmp) / name / "config")
            paths.config_dir.mkdir(parents=True)
            if name == "hook":
                (paths.config_dir / "debughookconfig.json").write_text(json.dumps({
                    "LocalPath": str(Path(tmp) / "tensors"),
                    "HookParameters": {"save_interval": reqs.DEBUG_SAVE_INTERVAL},
                    "CollectionConfigurations": [dict(c) for c in reqs.DEBUG_COLLECTIONS],
                }), encoding="utf-8")
            torch.manual_seed(0)
            model = backbones.build_model(arch, 10, image_size=size, pretrained=True)
            trainer = train.Trainer(args, paths=None)
            debugger = debugging.Debugger(paths, args)
            debugger.register(model, trainer.loss_fn)
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            t0 = time.perf_counter()
            trainer.run_epoch(model, batches, "train", debugger, optimizer, scaler)
            rates[name] = steps * batch / (time.perf_counter() - t0)
            debugger.close()
    section.rows.append(Row("train_step", f"{arch}, batch {batch}, {size} px, {steps} steps: with the final job's "
                            "Debugger hook (losses, gradients, relu_input) vs without",
                            Stats.of([rates["hook"]]), "img/s", baseline=Stats.of([rates["no hook"]]),
                            higher_is_better=True, note=f"save_interval {reqs.DEBUG_SAVE_INTERVAL}"))


def run(section: Section, quick: bool) -> None:
    batch, steps, size = (4, 2, 64) if quick else (16, 4, 224)
    for arch in ARCHITECTURES[-1:] if quick else ARCHITECTURES:
        import backbones

        model = backbones.build_model(arch, 133, image_size=size, pretrained=arch == "efficientnet_lite0")
        trainable, total = backbones.count_parameters(model)
        del model
        section.rows.append(Row("train_step", f"{arch}, batch {batch}, {size} px, fp32 CPU",
                                Stats.of(step_rates(arch, batch, steps, size)), "img/s", higher_is_better=True,
                                note=f"{trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trainable"))

    debugger_overhead(section, quick)
    gpu_check.report(section, quick)
