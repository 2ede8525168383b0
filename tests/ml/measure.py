"""Reproduce the inference-latency figures in docs/ml.md (not a test; a measuring script).

    .venv/bin/python tests/ml/measure.py latency [--repeat N]
    .venv/bin/python tests/ml/measure.py pipeline [--epochs 3] [--workers 1]

For each architecture at 224 px (weights do not change the cost, so vgg11 and
resnet50 use random weights here) and each image kind (a 12-megapixel phone
JPEG, a 500x400 data-set JPEG, a PNG), it times the serving chain
``input_fn -> predict_fn -> output_fn`` against the plain way (full PIL decode,
Resize(256), CenterCrop(224), ToTensor, Normalize, eval-mode forward) and
prints medians in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ml_scripts"))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import common  # noqa: E402
import inference  # noqa: E402


def _images() -> dict[str, tuple[bytes, str]]:
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    out = {}
    for name, size, fmt in (("12MP JPEG", (4032, 3024), "JPEG"), ("500x400 JPEG", (500, 400), "JPEG"),
                            ("500x400 PNG", (500, 400), "PNG")):
        buf = io.BytesIO()
        photo.resize(size, Image.BICUBIC).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        out[name] = (buf.getvalue(), "image/jpeg" if fmt == "JPEG" else "image/png")
    return out


def _model_dir(architecture: str, root: Path) -> Path:
    folder = root / architecture
    folder.mkdir()
    model = common.build_model(architecture, 10, image_size=224, pretrained=False)
    torch.save(model.state_dict(), folder / "model.pt")
    meta = {"architecture": architecture, "class_names": [str(i) for i in range(10)], "num_classes": 10,
            **common.Preprocessing(224).to_meta()}
    (folder / "model_meta.json").write_text(json.dumps(meta))
    return folder


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def latency(repeat: int) -> None:
    images = _images()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeat {repeat}")
    print("Decode + preprocess only (no model):")
    print("| image | fast path (ms) | plain path (ms) | ratio |")
    print("| --- | --- | --- | --- |")
    prep = common.Preprocessing(224)
    plain_transform = prep.plain_transform()
    for name, (body, content_type) in images.items():
        f = _median_ms(lambda: inference.preprocess(inference.input_fn(body, content_type),
                                                    inference.LoadedModel(None, [], prep, "", torch.device("cpu"))),
                       repeat)
        p = _median_ms(lambda: plain_transform(Image.open(io.BytesIO(body)).convert("RGB")), repeat)
        print(f"| {name} ({len(body) // 1024} KB) | {f:.1f} | {p:.1f} | {p / f:.2f}x |", flush=True)
    print()
    print("Whole chain input_fn -> predict_fn -> output_fn at batch 1:")
    print("| model | image | fast path (ms) | plain path (ms) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in common.ARCHITECTURES:
            model = inference.model_fn(str(_model_dir(architecture, Path(tmp))))
            plain_transform = model.prep.plain_transform()

            for name, (body, content_type) in images.items():
                def fast() -> str:
                    return inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), model))

                def plain() -> str:
                    x = plain_transform(Image.open(io.BytesIO(body)).convert("RGB")).unsqueeze(0)
                    with torch.no_grad():
                        p = torch.softmax(model.module(x), 1)[0]
                    return json.dumps({"label": model.class_names[int(p.argmax())], "probability": float(p.max())})

                f, p = _median_ms(fast, repeat), _median_ms(plain, repeat)
                print(f"| {architecture} | {name} ({len(body) // 1024} KB) | {f:.1f} | {p:.1f} | {p / f:.2f}x |",
                      flush=True)


def pipeline(epochs: int = 3, workers: int = 1, count: int = 1000) -> None:
    """Training input pipeline images/s: the cached path against ImageFolder + the usual transforms."""
    import numpy as np
    from skimage import data
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    prep = common.Preprocessing(224)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        photo = np.asarray(Image.fromarray(data.chelsea()).resize((500, 400))).astype(np.int16)
        rng = np.random.default_rng(0)
        for i in range(count):  # distinct 500x400 JPEGs in 10 classes
            folder = root / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            noisy = (photo + rng.integers(-20, 20, photo.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i}.jpg", quality=90)

        def rate(loader) -> float:
            start, n = time.perf_counter(), 0
            for _ in range(epochs):
                for batch in loader:
                    n += len(batch[1])
            return n / (time.perf_counter() - start)

        usual = T.Compose([T.Resize(256), T.RandomCrop(224), T.ToTensor(), T.Normalize(prep.mean, prep.std)])
        base = rate(torch.utils.data.DataLoader(tv_datasets.ImageFolder(str(root), usual), batch_size=32,
                                                shuffle=True, num_workers=workers, persistent_workers=workers > 0))
        start = time.perf_counter()
        dataset = common.CachedImageDataset(common.scan_split(root), prep, train=True, cache=True, threads=2)
        fast = rate(torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                                persistent_workers=workers > 0, collate_fn=common.collate_skip_bad))
        with_build = count * epochs / (time.perf_counter() - start)
    print(f"{count} JPEGs 500x400, {epochs} epochs, {workers} worker(s), 224 px")
    print(f"ImageFolder + Resize/RandomCrop/ToTensor/Normalize: {base:.0f} images/s")
    print(f"cached path: {fast:.0f} images/s after the one-off decode ({fast / base:.1f}x), "
          f"{with_build:.0f} images/s counting it ({with_build / base:.1f}x)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["latency", "pipeline"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.what == "latency":
        latency(args.repeat)
    else:
        pipeline(args.epochs, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
