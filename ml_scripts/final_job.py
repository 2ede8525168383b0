"""What a job writes after its test pass: the model directory, and the final evaluation.

- :func:`save_model` -- ``model.pt``, ``model_meta.json`` and ``code/`` (every job);
- :func:`assess` -- the best weights' ``valid`` logits (:func:`valid_logits_of_best`) for the
  temperature, the live model from the ``champion`` channel (:func:`evaluate_champion`) on
  the same test images, and ``evaluation.final_evaluation`` over them, with the metric lines;
- :func:`write_evaluation` -- ``evaluation.json`` in the model dir and the job output;
- :func:`ship_onnx` -- ``model.onnx`` beside ``model.pt``, checked against torch on held-out
  images, and ``model_meta.json``'s ``"onnx"`` (what the endpoint loads without torch).

The champion channel holds the live model's ``model.tar.gz``
(``contract.CHAMPION_CHANNEL``); its request side is the app's (the gate).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones import FeatureTap, build_model, load_saved_model
from contract import CHAMPION_CHANNEL, EVALUATION_FILE, quote_name
from decoding import ImageDecodeError, load_rgb, resize_crop
from evaluation import (
    FinalEvaluation,
    classification_metrics,
    final_evaluation,
    predict_logits,
    relative_files,
)
from image_folder import (
    CachedImageDataset,
    DataSetError,
    Indexed,
    Split,
    batch_to_model_input,
    collate_indexed,
)
from job_config import Paths
from onnx_export import build_onnx_artifact
from presets import Preprocessing

HERE = Path(__file__).resolve().parent
#: Files copied into ``model/code/`` so ``model.tar.gz`` serves on its own:
#: ``inference.py`` and every sibling module it imports.
SERVING_FILES: tuple[str, ...] = (
    "inference.py",
    "abstention.py",
    "serving_errors.py",
    "serving_model.py",
    "onnx_serving.py",
    "torch_serving.py",
    "onnx_export.py",
    "backbones.py",
    "contract.py",
    "decoding.py",
    "image_folder.py",
    "presets.py",
    "batch_errors.py",
)
SERVING_REQUIREMENTS = "serving_requirements.txt"
#: At most this many held-out images (test first, then valid) make the ONNX parity probe.
ONNX_PROBE_IMAGES = 32
#: The champion channel holds the live model's ``model.tar.gz``; these members are all we read of it.
CHAMPION_MEMBERS: tuple[str, ...] = ("model.pt", "model_meta.json")


@dataclass
class Champion:
    """The live model as the champion channel delivered it, ready to evaluate."""

    module: nn.Module
    meta: dict[str, Any]


def _extract_champion(channel: Path, into: Path) -> Path:
    """The folder holding the champion's ``model.pt`` and ``model_meta.json``.

    The channel holds one ``model.tar.gz`` (the live model's S3 object); only
    its two regular-file members :data:`CHAMPION_MEMBERS` are extracted, by
    name, so no member path can write outside ``into``. A channel that is
    already an unpacked model directory is used as it is.
    """
    if all((channel / name).is_file() for name in CHAMPION_MEMBERS):
        return channel
    tarballs = sorted(p for p in channel.rglob("*.tar.gz") if p.is_file())
    if len(tarballs) != 1:
        raise ValueError(f"expected one model.tar.gz, found {len(tarballs)} .tar.gz file(s)")
    with tarfile.open(tarballs[0], "r:gz") as archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
        for name in CHAMPION_MEMBERS:
            member = members.get(name)
            if member is None:
                raise ValueError(f"{quote_name(tarballs[0].name)} has no {name}")
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has its bytes
            (into / name).write_bytes(source.read())
    return into


def load_champion(channel: Path | None, class_names: list[str]) -> tuple[Champion | None, str]:
    """The champion to evaluate, or None and the one log line that says why not.

    Never fails the job: a missing channel, an unreadable tarball or a model
    that predicts another class list (another data set, or a class added or
    removed) means no champion metrics, and the gate decides without them.
    """
    if channel is None:
        return None, ""
    try:
        with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
            folder = _extract_champion(channel, Path(tmp))
            meta = json.loads((folder / "model_meta.json").read_text(encoding="utf-8"))
            champion_classes = [str(c) for c in meta.get("class_names") or []]
            if champion_classes != list(class_names):
                return None, (
                    f"champion: not evaluated, its classes differ from this model's "
                    f"(champion {len(champion_classes)}: {quote_name(json.dumps(champion_classes)[:300])}; "
                    f"this model {len(class_names)}: {quote_name(json.dumps(list(class_names))[:300])})"
                )
            module = load_saved_model(folder, meta)
    except Exception as exc:  # noqa: BLE001 - any broken champion: no champion metrics, one line why
        why = f"the {CHAMPION_CHANNEL} channel could not be loaded ({quote_name(exc)})"
        return None, f"champion: not evaluated, {why}"
    return Champion(module, meta), ""


def champion_scores(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """``evaluation.json``'s ``champion``: the live model's accuracy, balanced accuracy, macro-F1 on test."""
    scores = classification_metrics(labels, logits.argmax(axis=1), class_names)
    return {key: scores[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "num_images")}


def evaluate_champion(
    paths: Paths, trainer: Any, split: Split, class_names: list[str]
) -> dict[str, float] | None:
    """The live model (the ``champion`` channel) on the same test images, with its own preprocessing.

    None, after one log line saying why, when there is no champion, it cannot
    be loaded, or it predicts another class list.
    """
    champion, why = load_champion(paths.champion_dir, class_names)
    if champion is None:
        if why:
            print(why, flush=True)
        return None
    try:
        prep = Preprocessing.from_meta(champion.meta)
        module = champion.module.to(trainer.device)
        if trainer.channels_last:
            module = module.to(memory_format=torch.channels_last)
        dataset = Indexed(CachedImageDataset(split, prep, train=False, cache=False))
        logits, labels, _ = predict_logits(
            module,
            trainer.loader(dataset, shuffle=False, collate=collate_indexed),
            lambda x: batch_to_model_input(x, prep, trainer.device, trainer.channels_last),
            trainer.autocast,
        )
        if len(labels) == 0:
            raise DataSetError("no readable test images")
    except Exception as exc:  # noqa: BLE001 - the champion's failure never fails the new model's job
        print(f"champion: not evaluated ({type(exc).__name__}: {json.dumps(str(exc)[:300])})", flush=True)
        return None
    scores = champion_scores(logits, labels, class_names)
    print(
        f"champion: the {CHAMPION_CHANNEL} channel's model ({champion.meta.get('architecture')}) "
        f"evaluated on {scores['num_images']} test images",
        flush=True,
    )
    return scores


def valid_logits_of_best(
    args: argparse.Namespace,
    trainer: Any,
    datasets: dict[str, CachedImageDataset],
    state: dict[str, torch.Tensor],
) -> tuple[np.ndarray, np.ndarray]:
    """The best weights' logits on ``valid`` (for the temperature), from a fresh copy of the network.

    Why a copy: the trained module carries the Debugger's hooks, and another
    pass through it would add EVAL steps after the test to the trial the rules read.
    """
    module = build_model(args.model, trainer.num_classes, image_size=args.image_size, pretrained=False)
    module.load_state_dict(state)
    module = module.to(trainer.device)
    if trainer.channels_last:
        module = module.to(memory_format=torch.channels_last)
    loader = trainer.loader(Indexed(datasets["valid"]), shuffle=False, collate=collate_indexed)

    def to_input(x: torch.Tensor) -> torch.Tensor:
        return batch_to_model_input(x, trainer.prep, trainer.device, trainer.channels_last)

    logits, labels, _ = predict_logits(module, loader, to_input, trainer.autocast)
    return logits, labels


def assess(
    args: argparse.Namespace,
    paths: Paths,
    trainer: Any,
    datasets: dict[str, CachedImageDataset],
    splits: dict[str, Split],
    test: dict[str, Any],
    best_state: dict[str, torch.Tensor],
    weighting: tuple[bool, str],
    metric: Callable[[str, float], None],
) -> FinalEvaluation:
    """After the test pass (``run_epoch(..., collect=True)``): calibration, champion, metric lines."""
    class_names = splits["train"].class_names
    valid_logits, valid_labels = valid_logits_of_best(args, trainer, datasets, best_state)
    champion = evaluate_champion(paths, trainer, splits["test"], class_names)
    test_files = relative_files(
        [datasets["test"].samples[i][0] for i in test["indices"]], splits["test"].root
    )
    final = final_evaluation(
        class_names=class_names,
        test_logits=test["logits"],
        test_labels=test["labels"],
        test_files=test_files,
        valid_logits=valid_logits,
        valid_labels=valid_labels,
        train_labels=np.array([label for _, label in datasets["train"].samples], dtype=np.int64),
        weighting=weighting,
        champion=champion,
    )
    for name, value in final.metrics.items():
        metric(name, value)
    calibrated = final.document["calibration"]
    print(
        f"calibration: temperature {final.temperature:.4f} fitted on {len(valid_labels)} valid images "
        f"(valid ECE {calibrated['ece_before']:.4f} -> {calibrated['ece_after']:.4f})",
        flush=True,
    )
    return final


def write_evaluation(paths: Paths, document: dict[str, Any]) -> None:
    """``evaluation.json`` in the model dir (so in ``model.tar.gz``) and the output (``output.tar.gz``)."""
    text = json.dumps(document, indent=2, allow_nan=False)
    for folder in (paths.model_dir, paths.output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FILE).write_text(text, encoding="utf-8")


def save_model(
    paths: Paths,
    model_state: dict[str, torch.Tensor],
    args: argparse.Namespace,
    class_names: list[str],
    prep: Preprocessing,
    metrics: dict[str, float],
    extra: dict[str, Any],
) -> None:
    """``model.pt``, ``model_meta.json`` and ``code/`` (:data:`SERVING_FILES`): it serves on its own."""
    import torchvision

    model_dir = paths.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, model_dir / "model.pt")
    meta = {
        "architecture": args.model,
        "class_names": class_names,
        "num_classes": len(class_names),
        **prep.to_meta(),
        "metrics": metrics,
        "hyperparameters": {
            k: getattr(args, k)
            for k in ("learning_rate", "batch_size", "epochs", "image_size", "patience", "seed")
        },
        "framework": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        **extra,
    }
    (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    for name in SERVING_FILES:
        shutil.copyfile(HERE / name, code / name)  # copyfile follows symlinks: real files in the tarball
    shutil.copyfile(HERE / SERVING_REQUIREMENTS, code / "requirements.txt")


def onnx_probe(datasets: dict[str, CachedImageDataset], prep: Preprocessing) -> np.ndarray:
    """Up to :data:`ONNX_PROBE_IMAGES` held-out images (test, then valid), preprocessed as serving does.

    Why real images: a seeded noise batch never reaches the logits' extremes that
    a real photo does, nor abstention's features of real content. Unreadable files
    are skipped (they were reported with the split already).
    """
    batch: list[np.ndarray] = []
    for split in ("test", "valid"):
        for path, _label in getattr(datasets.get(split), "samples", []):
            if len(batch) >= ONNX_PROBE_IMAGES:
                break
            try:
                square = resize_crop(load_rgb(path), prep.resize_size, prep.image_size)
            except (ImageDecodeError, OSError, ValueError):
                continue
            batch.append(prep.normalise_numpy(np.asarray(square))[0])
    return np.stack(batch) if batch else np.zeros((0, 3, prep.image_size, prep.image_size), np.float32)


def ship_onnx(args: argparse.Namespace, paths: Paths, num_classes: int, prep: Preprocessing,
              datasets: dict[str, CachedImageDataset], best_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``model.onnx`` beside ``model.pt`` and ``model_meta.json``'s ``"onnx"`` (after :func:`save_model`).

    The best weights in a fresh CPU copy of the network (float32, no Debugger
    hooks), with the features output abstention reads, exported and checked
    against torch on :func:`onnx_probe` (``onnx_export.build_onnx_artifact``).
    Never fails the job: a failed export or parity check is one log line, recorded
    in the meta, and the endpoint serves with torch.
    """
    probe = onnx_probe(datasets, prep)
    if len(probe) == 0:
        facts: dict[str, Any] = {"status": "failed", "reason": "no readable held-out image to check ONNX against"}
    else:
        module = build_model(args.model, num_classes, image_size=prep.image_size, pretrained=False)
        module.load_state_dict({k: v.detach().cpu() for k, v in best_state.items()})
        module.float().eval()
        tap = FeatureTap(module, args.model)
        try:
            facts = build_onnx_artifact(module, paths.model_dir, probe, tap)
        finally:
            tap.remove()
    meta_path = paths.model_dir / "model_meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["onnx"] = facts
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if facts["status"] == "ok":
        figures = facts["parity"]
        print(f"onnx: {facts['file']} written (opset {facts['opset']}, {facts['bytes'] / 2**20:.1f} MiB); on "
              f"{figures['probe_images']} held-out images max |diff| logits {figures['max_abs_diff_logits']:.3g}, "
              f"top-1 agreement {figures['top1_agreement']:.3f}", flush=True)
    else:
        print(f"onnx: not shipped, the endpoint serves with torch: {facts['reason']}", flush=True)
    return facts
