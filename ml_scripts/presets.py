"""How pixels become a model input: the one :class:`Preprocessing`, for training and serving alike.

``train.py`` stores a model's preprocessing in ``model_meta.json`` and
``inference.py`` rebuilds it from there, so a model is always fed the same
pixels in the same way it was trained on. Copied into ``model.tar.gz``'s
``code/`` next to ``inference.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only where a torch tensor is made: the ONNX serving path never imports it
    import torch

#: ImageNet statistics: every backbone here was pretrained with them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """The one description of how pixels become a model input.

    ``resize_size`` is the shorter side before the centre crop of
    ``image_size`` (the classic 256 -> 224 ratio, scaled to any image size).
    It is stored in ``model_meta.json`` so serving repeats it exactly.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = field(default=0)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if not self.resize_size:
            object.__setattr__(self, "resize_size", int(round(self.image_size * 256 / 224)))

    def to_meta(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Preprocessing":
        return cls(
            image_size=int(meta["image_size"]),
            mean=tuple(float(v) for v in meta["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in meta["std"]),  # type: ignore[arg-type]
            resize_size=int(meta.get("resize_size", 0)),
        )

    def plain_transform(self) -> Any:
        """The textbook torchvision pipeline; the reference the fast path is tested against."""
        from torchvision import transforms

        return transforms.Compose(
            [
                transforms.Resize(self.resize_size),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def normalise_numpy(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HWC pixels (one image) -> a normalised float32 (1, 3, H, W) C-contiguous batch, numpy only.

        The ONNX Runtime serving path's twin of :meth:`normalise_uint8`: the same
        float32 operations, ``(x - 255 mean) / (255 std)``, so the same numbers
        (``tests/ml/test_inference.py``), without importing torch.
        """
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
        mean, std = _channel_scale_numpy(self.mean), _channel_scale_numpy(self.std)
        x = pixels.astype(np.float32)
        x -= mean
        x /= std
        return np.ascontiguousarray(x.transpose(2, 0, 1))[None]

    def normalise_uint8(
        self,
        pixels: np.ndarray | torch.Tensor,
        channels_first: bool = False,
        memory_format: torch.memory_format | None = None,
    ) -> torch.Tensor:
        """uint8 pixels -> normalised float CHW (one image) or NCHW (a batch), on the pixels' device.

        The one place pixels become model input, for serving (one HWC image)
        and for training (a whole uint8 batch, after it has moved to the
        device: a quarter of the bytes to copy, and on a GPU the arithmetic is
        free). Input is HWC / NHWC, or CHW / NCHW with ``channels_first``.

        ``memory_format`` picks the output layout of a batch (``torch.channels_last``
        or ``torch.contiguous_format``); the layout change is done on the uint8
        pixels, where it costs a quarter of what it would on floats. The default
        (None: ``torch.preserve_format``) keeps whatever strides the permute gives
        (a single HWC image comes out channels-last strided, as it always has for serving).
        """
        import torch

        if memory_format is None:
            memory_format = torch.preserve_format
        if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
            pixels = pixels.copy()
        tensor = torch.as_tensor(pixels)
        if tensor.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixels, got {tensor.dtype}")
        if tensor.dim() not in (3, 4):
            raise ValueError(f"expected an image (3 dims) or a batch (4 dims), got shape {tuple(tensor.shape)}")
        batched = tensor.dim() == 4
        if not channels_first:
            tensor = tensor.permute(0, 3, 1, 2) if batched else tensor.permute(2, 0, 1)
        if tensor.shape[-3] != 3:
            raise ValueError(f"expected 3 colour channels, got shape {tuple(tensor.shape)}")
        mean = _channel_scale(self.mean, str(tensor.device), batched)
        std = _channel_scale(self.std, str(tensor.device), batched)
        if batched and memory_format is not torch.preserve_format:
            tensor = tensor.contiguous(memory_format=memory_format)  # the layout change, on uint8
        # (x - 255 mean) / (255 std) = (x / 255 - mean) / std up to float rounding, in place on one
        # float buffer: the fastest of the equivalent forms (docs/benchmarks.md).
        return tensor.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=32)
def _channel_scale(values: tuple[float, ...], device: str, batched: bool) -> torch.Tensor:
    """``values`` x 255 shaped to broadcast over CHW or NCHW, made once per device.

    Why cached: building it per batch on a GPU is a blocking host-to-device
    copy every step. Shared, so never written to.
    """
    import torch

    shape = (1, 3, 1, 1) if batched else (3, 1, 1)
    with torch.inference_mode(False):  # a first call under serving's inference_mode must not taint it
        return torch.tensor(values, device=device).view(shape) * 255.0


@functools.lru_cache(maxsize=32)
def _channel_scale_numpy(values: tuple[float, ...]) -> np.ndarray:
    """``values`` x 255 as float32, shaped to broadcast over HWC: what :func:`_channel_scale` is, in numpy."""
    scale = np.asarray(values, dtype=np.float32) * np.float32(255.0)
    scale.flags.writeable = False
    return scale
