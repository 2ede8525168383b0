"""Folder-per-class data sets: scanning a channel, the decoded-once uint8 cache, batches for the model.

``train.py`` reads its three channels (``contract.CHANNELS``) with
:func:`scan_dataset`, feeds them through :class:`CachedImageDataset` and
:func:`collate_skip_bad`, and turns each batch into model input with
:func:`batch_to_model_input`. :class:`DataSetError` is what a data set that
cannot be trained on raises; its message names the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from contract import CHANNELS, quote_name
from decoding import ImageDecodeError, load_resized_square
from presets import Preprocessing

#: File suffixes treated as images when scanning a data set (case-insensitive).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)


class DataSetError(ValueError):
    """A data set that cannot be trained on; the message names the folder."""


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
        raise DataSetError(f"data folder {quote_name(root)} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    names = [p.name for p in folders]
    if class_names is None:
        if not folders:
            raise DataSetError(f"no class folders in {quote_name(root)}: expected <class>/<image files>")
        class_names = names
    else:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise DataSetError(
                f"class folder(s) {', '.join(quote_name(n) for n in unknown)} in {quote_name(root)} "
                f"are missing from the train split"
            )
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[tuple[str, int]] = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not files and class_names is names:
            raise DataSetError(f"class folder {quote_name(folder)} has no images")
        samples.extend((str(p), index[folder.name]) for p in files)
    if not samples:
        raise DataSetError(f"no images in {quote_name(root)}: expected <class>/<image files>")
    return Split(root=root, samples=samples, class_names=list(class_names))


def scan_dataset(
    train: str | os.PathLike[str], valid: str | os.PathLike[str], test: str | os.PathLike[str]
) -> dict[str, Split]:
    """Scan all three channels, keyed by ``contract.CHANNELS``; classes come from train."""
    train_split = scan_split(train)
    classes = train_split.class_names
    return dict(zip(CHANNELS, [train_split, scan_split(valid, classes), scan_split(test, classes)]))


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


class Indexed(torch.utils.data.Dataset):
    """A dataset whose items also carry their index, so each prediction can name its file.

    Why: bad items are dropped from a batch (:func:`collate_skip_bad`), so a
    batch's position no longer says which sample it was. Batch these with
    :func:`collate_indexed`.
    """

    def __init__(self, dataset: CachedImageDataset) -> None:
        self.dataset = dataset

    @property
    def cached(self) -> bool:
        return self.dataset.cached

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        item = self.dataset[index]
        return None if item is None else (item[0], item[1], index)


def collate_indexed(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """:func:`collate_skip_bad` of :class:`Indexed` items, plus the good items' indices."""
    good = [item for item in batch if item is not None]
    images, labels, _ = collate_skip_bad([(item[0], item[1]) for item in good])
    return images, labels, len(batch) - len(good), torch.tensor([item[2] for item in good], dtype=torch.long)


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
