"""common.py: image normalisation, bad files, data set scanning, the fast data path, the model factory."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common
from ml_jobs import photo_jpeg

PREP = common.Preprocessing(image_size=224)

# Stated tolerance of the fast path (draft decoding + one fused resize) against
# the plain path (full decode, Resize, CenterCrop, ToTensor, Normalize), in
# normalised units (1.0 ~ 57 grey levels): mean |diff| and 99th percentile.
FAST_PATH_MEAN_TOLERANCE = 0.05
FAST_PATH_P99_TOLERANCE = 0.4


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "astronaut", "coffee")}


# ----------------------------------------------------------------- decoding


def test_every_mode_becomes_rgb() -> None:
    gray = Image.new("L", (20, 10), 77)
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 0))  # fully transparent
    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16))
    cases = {
        "gray": (_jpeg(gray), (77, 77, 77), 3),
        "cmyk": (_jpeg(cmyk), (255, 0, 0), 6),
        "rgba": (_png(rgba), (255, 255, 255), 0),  # transparent -> white, not black
        "palette": (_png(palette), (255, 255, 255), 0),
        "16-bit": (_png(sixteen), (255, 255, 255), 0),
    }
    for name, (body, expected, tolerance) in cases.items():
        image = common.load_rgb(body)
        assert image.mode == "RGB", name
        assert image.size == (20, 10), name
        pixel = image.getpixel((5, 5))
        assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected)), (name, pixel)


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    body = _jpeg(image, exif=exif.tobytes())
    for decoded in (common.load_rgb(body), common.decode_for_size(body, 8)):
        width, height = decoded.size
        assert height == 2 * width and width in (20, 10)  # portrait now; draft may halve it
        r, g, b = decoded.getpixel((width // 2, height // 16))  # the left band is now on top
        assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("body", [b"", b"definitely not an image", None])
def test_undecodable_bytes_raise(body) -> None:
    if body is None:
        body = _jpeg(Image.new("RGB", (64, 64), (1, 2, 3)))[:300]  # truncated
    with pytest.raises(common.ImageDecodeError):
        common.load_rgb(body)
    with pytest.raises(common.ImageDecodeError):
        common.load_resized_square(body, 32)


# ----------------------------------------------------------------- fast path == plain path


def _compare(body: bytes, prep: common.Preprocessing) -> tuple[float, float]:
    plain = prep.plain_transform()(common.load_rgb(body))
    fast = prep.normalise_uint8(np.asarray(common.load_resized_square(body, prep.resize_size, prep.image_size)))
    assert plain.shape == fast.shape == (3, prep.image_size, prep.image_size)
    diff = (plain - fast).abs().flatten()
    return float(diff.mean()), float(diff.quantile(0.99))


def test_fast_path_matches_plain_path_on_photos() -> None:
    for name, photo in _photos().items():
        for size in (None, (4000, 3000)):  # data-set size and a 12 MP phone photo
            body = photo_jpeg(name, size)
            mean, p99 = _compare(body, PREP)
            assert mean <= FAST_PATH_MEAN_TOLERANCE and p99 <= FAST_PATH_P99_TOLERANCE, (name, size, mean, p99)
        mean, p99 = _compare(_png(photo), PREP)  # no draft for PNG: only the fused resize differs
        assert mean <= 0.01, (name, mean)


def test_fast_path_matches_plain_path_on_digits(digits_small: Path) -> None:
    prep = common.Preprocessing(image_size=28)
    for path in sorted(digits_small.rglob("*.jpg"))[:30]:
        mean, p99 = _compare(path.read_bytes(), prep)
        assert mean <= FAST_PATH_MEAN_TOLERANCE and p99 <= FAST_PATH_P99_TOLERANCE, (path, mean, p99)


def _batches(dataset: common.CachedImageDataset, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=common.collate_skip_bad)
    return list(loader)


def test_cached_dataset_gives_the_fast_path_tensors(digits_small: Path) -> None:
    """Eval-mode batches (uint8 items, normalised once per batch) == the plain torchvision path per image."""
    prep = common.Preprocessing(image_size=28)
    split = common.scan_split(digits_small / "valid", [str(i) for i in range(10)])
    cached = common.CachedImageDataset(split, prep, train=False, cache=True, threads=2)
    lazy = common.CachedImageDataset(split, prep, train=False, cache=False)
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
        batch = common.batch_to_model_input(images, prep)
        assert batch.shape == (len(labels), 3, 28, 28) and batch.dtype == torch.float32 and batch.is_contiguous()
        for row, label in zip(batch, labels.tolist()):
            path, expected = split.samples[index]
            assert label == expected
            plain = prep.plain_transform()(common.load_rgb(path))
            diff = (plain - row).abs().flatten()
            assert float(diff.mean()) <= FAST_PATH_MEAN_TOLERANCE, path
            assert float(diff.quantile(0.99)) <= FAST_PATH_P99_TOLERANCE, path
            # Serving normalises one image the same way, to the bit.
            serving = prep.normalise_uint8(np.asarray(common.load_resized_square(path, prep.resize_size, 28)))
            assert torch.equal(serving, row)
            index += 1
    assert index == len(split)
    # Training crops are random but always image_size and inside the cached square.
    train = common.CachedImageDataset(split, prep, train=True, cache=True)
    crop = train[0][0].numpy()
    assert crop.shape == (28, 28, 3)
    square = train.images[0]
    assert any(
        np.array_equal(square[top : top + 28, left : left + 28], crop) for top in range(5) for left in range(5)
    )


def test_normalise_uint8_layouts_agree() -> None:
    """One image, an NHWC batch, an NCHW batch and either memory format: the same numbers."""
    prep = common.Preprocessing(image_size=16)
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    reference = torch.stack(
        [(torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 - torch.tensor(prep.mean).view(3, 1, 1))
         / torch.tensor(prep.std).view(3, 1, 1) for im in nhwc]
    )
    singles = torch.stack([prep.normalise_uint8(im) for im in nhwc])
    batch = prep.normalise_uint8(torch.from_numpy(nhwc), memory_format=torch.contiguous_format)
    nchw = prep.normalise_uint8(torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous(), channels_first=True)
    channels_last = prep.normalise_uint8(torch.from_numpy(nhwc), memory_format=torch.channels_last)
    assert batch.is_contiguous() and channels_last.is_contiguous(memory_format=torch.channels_last)
    for other in (singles, nchw, channels_last):
        assert torch.equal(batch, other)
    assert float((batch - reference).abs().max()) <= 1e-6
    via_loader_path = common.batch_to_model_input(torch.from_numpy(nhwc), prep, channels_last=True)
    assert torch.equal(via_loader_path, batch) and via_loader_path.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(common.batch_to_model_input(reference, prep), reference)  # float input passes through
    with pytest.raises(TypeError, match="uint8"):
        prep.normalise_uint8(nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="3 colour channels"):
        prep.normalise_uint8(nhwc[..., :2])


# ----------------------------------------------------------------- data sets


def test_bad_images_are_skipped_and_counted(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "train"
    shutil.copytree(digits_small / "train", data)
    good = len(list(data.rglob("*.jpg")))
    (data / "3" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    whole = next((data / "4").glob("*.jpg")).read_bytes()
    (data / "4" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    split = common.scan_split(data)
    assert len(split) == good + 2
    prep = common.Preprocessing(image_size=28)
    cached = common.CachedImageDataset(split, prep, train=True, cache=True)
    assert len(cached) == good
    assert sorted(Path(p).name for p in cached.skipped) == ["garbage.jpg", "truncated.jpg"]
    # Uncached (the test split): the collate function drops and counts them.
    lazy = common.CachedImageDataset(split, prep, train=False, cache=False)
    seen = skipped = 0
    for images, labels, bad in _batches(lazy, batch_size=16):
        assert len(images) == len(labels) and (not len(labels) or images.dtype == torch.uint8)
        seen += len(labels)
        skipped += bad
    assert (seen, skipped) == (good, 2)


def test_scan_errors_name_the_folder(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_small, data)
    with pytest.raises(common.DataSetError, match=f"{data / 'nope'} does not exist"):
        common.scan_split(data / "nope")
    (data / "valid" / "11").mkdir()
    with pytest.raises(common.DataSetError, match=rf"11 in {data / 'valid'} are missing from the train split"):
        common.scan_dataset(data / "train", data / "valid", data / "test")
    (data / "valid" / "11").rmdir()
    empty_class = data / "train" / "7"
    for f in empty_class.iterdir():
        f.unlink()
    with pytest.raises(common.DataSetError, match=f"class folder {empty_class} has no images"):
        common.scan_split(data / "train")
    (data / "empty" / "0").mkdir(parents=True)
    with pytest.raises(common.DataSetError, match=f"no images in {data / 'empty'}"):
        common.scan_split(data / "empty", ["0", "1"])
    (data / "flat").mkdir()
    (data / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(common.DataSetError, match=f"no class folders in {data / 'flat'}"):
        common.scan_split(data / "flat")


def test_scan_ignores_markers_and_hidden_files(tmp_path: Path, digits_small: Path) -> None:
    data = tmp_path / "train"
    shutil.copytree(digits_small / "train", data)
    (data / "_READY").write_text("")
    (data / ".DS_Store").write_text("")
    (data / "0" / ".hidden.jpg").write_text("")
    (data / "0" / "notes.txt").write_text("")
    split = common.scan_split(data)
    assert split.class_names == [str(i) for i in range(10)]
    assert all(Path(p).suffix == ".jpg" and not Path(p).name.startswith(".") for p, _ in split.samples)


# ----------------------------------------------------------------- models


def test_vgg11_without_reachable_weights_refuses_to_train_from_scratch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(common.PretrainedWeightsError, match="--pretrained_weights PATH"):
        common.build_model("vgg11", 5)
    with pytest.raises(common.PretrainedWeightsError, match="no such file"):
        common.build_model("vgg11", 5, pretrained_weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(common.PretrainedWeightsError, match="does not fit"):
        common.build_model("vgg11", 5, pretrained_weights=str(bad))


def test_resnet50_loads_a_local_weights_file(tmp_path: Path) -> None:
    from torchvision import models

    reference = models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # a wrapped checkpoint is accepted too
    model = common.build_model("resnet50", 7, pretrained_weights=str(path))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 7
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    groups = common.parameter_groups(model, "resnet50", 0.01)
    assert len(groups) == 1 and groups[0]["lr"] == 0.01


def test_efficientnet_lite0_uses_the_shipped_imagenet_weights() -> None:
    """The shipped weights really are ImageNet's: Chelsea is a cat (ImageNet classes 281-285)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=224)
    net.load_state_dict(torch.load(common.efficientnet_lite0_weights_path(), map_location="cpu"))
    x = PREP.plain_transform()(_photos()["chelsea"]).unsqueeze(0)
    with torch.inference_mode():
        top = int(net.eval()(x).argmax())
    assert 281 <= top <= 285

    model = common.build_model("efficientnet_lite0", 10, image_size=32)
    assert torch.equal(model._conv_stem.weight, net._conv_stem.weight)
    assert model._fc.out_features == 10
    assert not model._conv_stem.weight.requires_grad and model._fc.weight.requires_grad
    groups = common.parameter_groups(model, "efficientnet_lite0", 0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    common.set_train_mode(model)
    assert model.training and not model._bn0.training  # BatchNorm statistics stay ImageNet's
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_architecture_and_single_class() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        common.build_model("alexnet", 3, pretrained=False)
    with pytest.raises(common.DataSetError, match="at least 2 classes"):
        common.build_model("resnet50", 1, pretrained=False)
