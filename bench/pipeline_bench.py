"""Section 3: how many images per second the training input pipeline delivers.

Fast path: what ``train.py`` does, i.e. ``common.CachedImageDataset`` (decode
each image once per job at reduced size into a uint8 cache, then crop and
normalise per item) behind ``Trainer.loader`` with the worker count
``train.default_num_workers`` picks for this machine.

Baseline: ``torchvision.datasets.ImageFolder`` with the usual transforms for
the same augmentation (``Resize(256)``, ``RandomCrop(224)``, ``ToTensor``,
``Normalize``) behind a plain ``DataLoader`` with the same worker count and
batch size. Both loaders are only iterated: no model runs, so the figure is
the most the pipeline can feed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench import images
from bench.core import Row, Section, Stats

BATCH_SIZE = 32
JOB_EPOCHS = 5  # BREEDLINE_EPOCHS' default: what a cache is amortised over


def _drain(loader: torch.utils.data.DataLoader) -> int:
    seen = 0
    for batch in loader:
        seen += len(batch[1])
    return seen


def measure(root: Path, epochs: int, image_size: int) -> dict[str, object]:
    """Images/s of the fast path (first epoch incl. cache build, later epochs) and of the baseline."""
    import common
    import train
    from torchvision import datasets, transforms

    cpus = train.cpu_count()
    workers = train.default_num_workers(cpus)
    prep = common.Preprocessing(image_size=image_size)
    split = common.scan_split(root)
    trainer = train.Trainer(train.build_parser().parse_args(["--batch_size", str(BATCH_SIZE), "--seed", "0"]), paths=None)

    # Fast path, as train.train() builds it.
    t0 = time.perf_counter()
    dataset = common.CachedImageDataset(split, prep, train=True, cache=True, threads=cpus)
    cache_s = time.perf_counter() - t0
    loader = trainer.loader(dataset, shuffle=True, workers=workers)
    fast_epochs = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = _drain(loader)
        fast_epochs.append(time.perf_counter() - t0)
    del loader
    options = loader_options(trainer, dataset, prep, epochs)

    transform = transforms.Compose([
        transforms.Resize(prep.resize_size),
        transforms.RandomCrop(prep.image_size),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    folder = datasets.ImageFolder(str(root), transform=transform)
    plain = torch.utils.data.DataLoader(folder, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                                        persistent_workers=workers > 0)
    plain_epochs = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        m = _drain(plain)
        plain_epochs.append(time.perf_counter() - t0)
    return {"n": n, "m": m, "workers": workers, "cache_s": cache_s, "fast": fast_epochs, "plain": plain_epochs,
            "options": options}


class _Uint8Crops(torch.utils.data.Dataset):
    """Option: items stay uint8 HWC crops; the batch is normalised once in the main process.

    A quarter of the bytes cross the worker queue, and one vectorised
    normalisation per batch replaces 32 small ones (on a GPU it would run there).
    """

    def __init__(self, cached: torch.utils.data.Dataset) -> None:
        self.cached = cached

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        square = torch.from_numpy(self.cached.images[index])
        return self.cached._crop(square), self.cached.samples[index][1]


def loader_options(trainer: object, dataset: object, prep: object, epochs: int) -> dict[str, list[float]]:
    """Later-epoch images/s of variants of the cached pipeline: worker count, where normalisation runs."""
    if getattr(dataset, "images", None) is None:
        return {}
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std).view(1, 3, 1, 1) * 255.0
    out: dict[str, list[float]] = {}

    def rates(loader: object, normalise: bool) -> list[float]:
        values = []
        for epoch in range(max(2, epochs)):
            t0 = time.perf_counter()
            seen = 0
            for batch in loader:
                if normalise:
                    (batch[0].permute(0, 3, 1, 2).float() - mean) / std
                seen += len(batch[1])
            if epoch:  # the first pass starts workers; count cache-hit epochs only
                values.append(seen / (time.perf_counter() - t0))
        return values

    out["train.py's loader with 0 workers (in-process)"] = rates(trainer.loader(dataset, shuffle=True, workers=0), False)
    for workers in (0, 1):
        plain = torch.utils.data.DataLoader(_Uint8Crops(dataset), batch_size=BATCH_SIZE, shuffle=True,
                                            num_workers=workers, persistent_workers=workers > 0)
        out[f"uint8 crops, batch normalised in the main process, {workers} worker(s)"] = rates(plain, True)
    return out


def _rows(section: Section, name: str, r: dict) -> None:
    n, m = r["n"], r["m"]
    plain_rate = Stats.of([m / s for s in r["plain"]])
    steady = Stats.of([n / s for s in r["fast"][1:]] or [n / r["fast"][0]])
    first = Stats.of([n / (r["cache_s"] + r["fast"][0])])
    # A job reads train once per epoch: one cache build + first epoch, then cache hits.
    job_fast = JOB_EPOCHS * n / (r["cache_s"] + r["fast"][0] + (JOB_EPOCHS - 1) * (n / steady.median))
    job = Stats.of([job_fast])
    w = f"{r['workers']} worker(s), batch {BATCH_SIZE}"
    section.rows.append(Row("pipeline", f"{name}: first epoch incl. one-off cache build ({r['cache_s']:.1f} s)",
                            first, "img/s", baseline=plain_rate, higher_is_better=True, note=w))
    section.rows.append(Row("pipeline", f"{name}: later epochs (cache hit)", steady, "img/s", baseline=plain_rate,
                            higher_is_better=True, note=w))
    row = Row("pipeline", f"{name}: whole {JOB_EPOCHS}-epoch job (cache build amortised)", job, "img/s",
              baseline=plain_rate, higher_is_better=True, target=">= 2x baseline", note=w)
    row.met = (row.speedup or 0) >= 2.0
    section.rows.append(row)
    for option, values in r["options"].items():
        section.rows.append(Row("pipeline", f"{name}: option tried, later epochs: {option}", Stats.of(values), "img/s",
                                baseline=plain_rate, higher_is_better=True))


def run(section: Section, quick: bool) -> None:
    import datasets as ml_datasets  # ml_scripts/datasets.py

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    epochs = 2 if quick else 3
    image_size = 64 if quick else 224
    digits = work / "digits"
    ml_datasets.write_digits(digits, per_class=8 if quick else None)
    count = 64 if quick else 1000
    generated = images.write_jpeg_dataset(work / "jpegs", count)
    section.notes.append(
        f"Data: digits train split ({len(list((digits / 'train').rglob('*.jpg')))} JPEGs of 64x64 px) and "
        f"{generated.images} generated JPEGs of about 500x400 px ({generated.classes} classes, crops of the "
        f"scikit-image photos, quality 90); image_size {image_size}; {epochs} epochs each, baseline epochs all "
        "count (its workers are persistent too). The fast path's cache holds the centre square of side "
        "resize_size, so random crops come from that square rather than the whole resized image."
    )
    for name, root in (("digits", digits / "train"), (f"{generated.images} generated 500x400 JPEGs",
                                                       generated.root / "train")):
        _rows(section, name, measure(root, epochs, image_size))
