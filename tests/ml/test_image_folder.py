"""image_folder.py: data set scanning, bad files skipped and counted, the cached uint8 data path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import decoding
import image_folder
import presets
from ml_jobs import FAST_PATH_MEAN_TOLERANCE, FAST_PATH_P99_TOLERANCE


def _batches(dataset: image_folder.CachedImageDataset, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=image_folder.collate_skip_bad)
    return list(loader)


def test_cached_dataset_gives_the_fast_path_tensors(digits_small: Path) -> None:
    """Eval-mode batches (uint8 items, normalised once per batch) == the plain torchvision path per image."""
    prep = presets.Preprocessing(image_size=28)
    split = image_folder.scan_split(digits_small / "valid", [str(i) for i in range(10)])
    cached = image_folder.CachedImageDataset(split, prep, train=False, cache=True, threads=2)
    lazy = image_folder.CachedImageDataset(split, prep, train=False, cache=False)
    assert cached.cached and cached.images is not None and cached.images.dtype == np.uint8
    assert not lazy.cached and lazy.images is None
    for i in range(len(split)):
        (a, label_a), (b, label_b) = cached[i], lazy[i]
        assert label_a == label_b == split.samples[i][1]
        assert a.dtype == torch.uint8 and a.shape == (28, 28, 3)
        assert torch.equal(a, b)
    index = 0
    for (images, labels, bad), (lazy_images, _, _) in zip(_batches(cached), _batches(lazy)):
        assert bad == 0 and images.dtype == torch.uint8 and images.shape[1:] == (28, 28, 3)
        assert torch.equal(images, lazy_images)
        batch = image_folder.batch_to_model_input(images, prep)
        assert batch.shape == (len(labels), 3, 28, 28) and batch.dtype == torch.float32 and batch.is_contiguous()
        for row, label in zip(batch, labels.tolist()):
            path, expected = split.samples[index]
            assert label == expected
            plain = prep.plain_transform()(decoding.load_rgb(path))
            diff = (plain - row).abs().flatten()
            assert float(diff.mean()) <= FAST_PATH_MEAN_TOLERANCE, path
            assert float(diff.quantile(0.99)) <= FAST_PATH_P99_TOLERANCE, path
            # Serving normalises one image the same way, to the bit.
            serving = prep.normalise_uint8(np.asarray(decoding.load_resized_square(path, prep.resize_size, 28)))
            assert torch.equal(serving, row)
            index += 1
    assert index == len(split)
    # Training crops are random but always image_size and inside the cached square.
    train = image_folder.CachedImageDataset(split, prep, train=True, cache=True)
    crop = train[0][0].numpy()
    assert crop.shape == (28, 28, 3)
    square = train.images[0]
    assert any(
        np.array_equal(square[top : top + 28, left : left + 28], crop) for top in range(5) for left in range(5)
    )



# ----------------------------------------------------------------- data sets


def test_bad_images_are_skipped_and_counted(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "train"
    shutil.copytree(digits_small / "train", data)
    good = len(list(data.rglob("*.jpg")))
    (data / "3" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    whole = next((data / "4").glob("*.jpg")).read_bytes()
    (data / "4" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    split = image_folder.scan_split(data)
    assert len(split) == good + 2
    prep = presets.Preprocessing(image_size=28)
    cached = image_folder.CachedImageDataset(split, prep, train=True, cache=True)
    assert len(cached) == good
    assert sorted(Path(p).name for p in cached.skipped) == ["garbage.jpg", "truncated.jpg"]
    # Uncached (the test split): the collate function drops and counts them.
    lazy = image_folder.CachedImageDataset(split, prep, train=False, cache=False)
    seen = skipped = 0
    for images, labels, bad in _batches(lazy, batch_size=16):
        assert len(images) == len(labels) and (not len(labels) or images.dtype == torch.uint8)
        seen += len(labels)
        skipped += bad
    assert (seen, skipped) == (good, 2)


def test_scan_errors_name_the_folder(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_small, data)
    with pytest.raises(image_folder.DataSetError, match=re.escape(f'"{data / "nope"}" does not exist')):
        image_folder.scan_split(data / "nope")
    (data / "valid" / "11").mkdir()
    missing = re.escape(f'"11" in "{data / "valid"}" are missing from the train split')
    with pytest.raises(image_folder.DataSetError, match=missing):
        image_folder.scan_dataset(data / "train", data / "valid", data / "test")
    (data / "valid" / "11").rmdir()
    empty_class = data / "train" / "7"
    for f in empty_class.iterdir():
        f.unlink()
    no_images = re.escape(f'class folder "{empty_class}" has no images')
    with pytest.raises(image_folder.DataSetError, match=no_images):
        image_folder.scan_split(data / "train")
    (data / "empty" / "0").mkdir(parents=True)
    with pytest.raises(image_folder.DataSetError, match=re.escape(f'no images in "{data / "empty"}"')):
        image_folder.scan_split(data / "empty", ["0", "1"])
    (data / "flat").mkdir()
    (data / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(image_folder.DataSetError, match=re.escape(f'no class folders in "{data / "flat"}"')):
        image_folder.scan_split(data / "flat")


def test_scan_ignores_markers_and_hidden_files(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "train"
    shutil.copytree(digits_small / "train", data)
    (data / "_READY").write_text("")
    (data / ".DS_Store").write_text("")
    (data / "0" / ".hidden.jpg").write_text("")
    (data / "0" / "notes.txt").write_text("")
    split = image_folder.scan_split(data)
    assert split.class_names == [str(i) for i in range(10)]
    assert all(Path(p).suffix == ".jpg" and not Path(p).name.startswith(".") for p, _ in split.samples)


