"""backbones.py: the model factory, pretrained weights or a clear refusal, what trains at which rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import backbones
import image_folder
import presets
from ml_jobs import sample_photos

PREP = presets.Preprocessing(image_size=224)


# ----------------------------------------------------------------- models


def test_vgg11_without_reachable_weights_refuses_to_train_from_scratch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(backbones.PretrainedWeightsError, match="--pretrained_weights PATH"):
        backbones.build_model("vgg11", 5)
    with pytest.raises(backbones.PretrainedWeightsError, match="no such file"):
        backbones.build_model("vgg11", 5, pretrained_weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(backbones.PretrainedWeightsError, match="does not fit"):
        backbones.build_model("vgg11", 5, pretrained_weights=str(bad))


def test_resnet50_loads_a_local_weights_file(tmp_path: Path) -> None:
    from torchvision import models

    reference = models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # a wrapped checkpoint is accepted too
    model = backbones.build_model("resnet50", 7, pretrained_weights=str(path))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 7
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    groups = backbones.parameter_groups(model, "resnet50", 0.01)
    assert len(groups) == 1 and groups[0]["lr"] == 0.01


def test_efficientnet_lite0_uses_the_shipped_imagenet_weights() -> None:
    """The shipped weights really are ImageNet's: Chelsea is a cat (ImageNet classes 281-285)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=224)
    net.load_state_dict(torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu"))
    x = PREP.plain_transform()(sample_photos()["chelsea"]).unsqueeze(0)
    with torch.inference_mode():
        top = int(net.eval()(x).argmax())
    assert 281 <= top <= 285

    model = backbones.build_model("efficientnet_lite0", 10, image_size=32)
    assert torch.equal(model._conv_stem.weight, net._conv_stem.weight)
    assert model._fc.out_features == 10
    assert not model._conv_stem.weight.requires_grad and model._fc.weight.requires_grad
    groups = backbones.parameter_groups(model, "efficientnet_lite0", 0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    backbones.set_train_mode(model)
    assert model.training and not model._bn0.training  # BatchNorm statistics stay ImageNet's
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_architecture_and_single_class() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        backbones.build_model("alexnet", 3, pretrained=False)
    with pytest.raises(image_folder.DataSetError, match="at least 2 classes"):
        backbones.build_model("resnet50", 1, pretrained=False)
