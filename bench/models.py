"""Model directories for the benchmarks, in the serving contract's layout.

Why random weights for vgg11: its ImageNet weights come from the torchvision
hub, which cannot be reached here. Timing does not depend on the values of the
weights, only on their shapes, so a seeded random init gives the same latency
as the real model. efficientnet_lite0 is the genuine ImageNet classifier that a
package ships, head included (1,000 classes): top-1 agreement measured with a
real trained classifier means something, where a random head's near-ties
would flip on any pixel change.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

NUM_CLASSES = 133  # the dog-breed default; any count works


def class_names(count: int = NUM_CLASSES) -> list[str]:
    return [f"class_{i:03d}" for i in range(count)]


def build(architecture: str, num_classes: int = NUM_CLASSES, image_size: int = 224, seed: int = 0) -> torch.nn.Module:
    """The architecture as ``backbones.build_model`` makes it, in eval mode, seeded.

    efficientnet_lite0 gets the shipped ImageNet head back (``num_classes`` is then 1,000).
    """
    import backbones

    torch.manual_seed(seed)
    if architecture == "efficientnet_lite0":
        model = backbones.build_model(architecture, 1000, image_size=image_size, pretrained=True)
        state = torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # strict: backbone and the genuine ImageNet head
        return model.eval()
    model = backbones.build_model(architecture, num_classes, image_size=image_size, pretrained=False)
    return model.eval()


def write_model_dir(model_dir: Path, architecture: str, num_classes: int = NUM_CLASSES, image_size: int = 224,
                    seed: int = 0) -> Path:
    """Write ``model.pt`` and ``model_meta.json`` the way train.py does, return the folder."""
    import presets

    model = build(architecture, num_classes, image_size, seed)
    if architecture == "efficientnet_lite0":
        num_classes = 1000
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / "model.pt")
    prep = presets.Preprocessing(image_size=image_size)
    meta = {
        "architecture": architecture,
        "class_names": class_names(num_classes),
        "num_classes": num_classes,
        **prep.to_meta(),
        "metrics": {},
        "weights": "random init (seeded)" if architecture != "efficientnet_lite0" else "shipped ImageNet weights",
    }
    (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return model_dir


def load_plain(model_dir: Path) -> tuple[torch.nn.Module, dict]:
    """The baseline's model: built plainly and loaded from ``model.pt``, eval mode, nothing else."""
    import backbones

    meta = json.loads((model_dir / "model_meta.json").read_text(encoding="utf-8"))
    model = backbones.build_model(meta["architecture"], len(meta["class_names"]), image_size=int(meta["image_size"]),
                               pretrained=False)
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), meta
