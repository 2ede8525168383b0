"""Section 3: how many images per second the training input pipeline delivers.

Fast path: exactly what ``train.py`` does for the train split.
``image_folder.CachedImageDataset`` decodes each image once per job at reduced size
into a uint8 cache of ``resize_size`` squares; each item is a uint8 random
crop; ``Trainer.loader`` batches them with the worker count ``train.py``
chooses for a cached split (``Trainer.num_workers``: 0, in-process, on a CPU);
``image_folder.batch_to_model_input`` turns each uint8 batch into the normalised
float NCHW model input, once per batch. The timed loop ends with that float
batch, so the figure includes the normalisation.

Baseline: ``torchvision.datasets.ImageFolder`` with the usual transforms for
the same augmentation (``Resize(256)``, ``RandomCrop(224)``, ``ToTensor``,
``Normalize``) behind a plain ``DataLoader``, batch 32. It is measured with 0
workers and with the worker count ``train.py`` gives a split that must decode
(``default_num_workers(cpus, cached=False)``), and the faster of the two is
the baseline, so the ratio is never flattered by a handicapped baseline.
Epochs of the fast path and of both baselines are interleaved round-robin so
that a load spike on this shared machine hits them alike. No model runs: the
figure is the most the pipeline can feed.

Threads: both run with the torch intra-op threads a training job gets on this
machine, the local runtime's ``job_threads`` default (``OMP_NUM_THREADS=1``,
chosen there because 2 OpenMP threads per job stall on the busy 2 cores).
Loader workers always run one thread. An option row repeats the fast path
with the suite's thread count to show what in-process loading costs when
OpenMP threads contend.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench import images
from bench.core import Row, Section, Stats

BATCH_SIZE = 32
JOB_EPOCHS = 5  # BREEDLINE_EPOCHS' default: what a cache is amortised over


def job_threads() -> int | None:
    """Intra-op threads of a training job on this machine: the local runtime's default (None: torch's own)."""
    from breedline.local.sagemaker import SageMakerBackend

    return inspect.signature(SageMakerBackend.__init__).parameters["job_threads"].default


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` intra-op threads (None: leave them), then restore."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _drain(loader: torch.utils.data.DataLoader, finish: Callable[[torch.Tensor], Any] | None = None) -> int:
    """Iterate one epoch; ``finish`` turns each batch into model input (what run_epoch does)."""
    seen = 0
    for batch in loader:
        if finish is not None and len(batch[1]):
            finish(batch[0])
        seen += len(batch[1])
    return seen


class _FloatItems(torch.utils.data.Dataset):
    """The previous train.py: each item normalised to float on its own (collated as float NCHW)."""

    def __init__(self, cached: Any) -> None:
        self.cached = cached

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        item = self.cached[index]
        return None if item is None else (self.cached.prep.normalise_uint8(item[0]), item[1])


def measure(root: Path, epochs: int, image_size: int, threads: int | None, builds: int = 1) -> dict[str, Any]:
    """Per-epoch seconds of train.py's loader and of the baselines, plus the one-off cache build."""
    suite_threads = torch.get_num_threads()
    with torch_threads(threads) as used:
        result = _measure(root, epochs, image_size, builds)
        result["threads"] = used
    if suite_threads != used:
        result["options"].update(_at_suite_threads(result["trainer"], result["dataset"], epochs, suite_threads))
    return result


def _measure(root: Path, epochs: int, image_size: int, builds: int) -> dict[str, Any]:
    import image_folder
    import job_config
    import train
    from torchvision import datasets, transforms

    cpus = job_config.cpu_count()
    trainer = train.Trainer(
        job_config.build_parser().parse_args(["--batch_size", str(BATCH_SIZE), "--seed", "0",
                                              "--image_size", str(image_size)]), paths=None)
    prep = trainer.prep
    split = image_folder.scan_split(root)

    # Fast path, as train.train() builds the train split's loader.
    # The one-off cache build, timed ``builds`` times (median): one build is one sample of a noisy machine.
    build_s = []
    for _ in range(max(1, builds)):
        t0 = time.perf_counter()
        dataset = image_folder.CachedImageDataset(split, prep, train=True, cache=True, threads=cpus)
        build_s.append(time.perf_counter() - t0)
    cache_s = statistics.median(build_s)
    workers = trainer.num_workers(dataset)
    loader = trainer.loader(dataset, shuffle=True)

    def finish(batch: torch.Tensor) -> torch.Tensor:
        return image_folder.batch_to_model_input(batch, prep, trainer.device, trainer.channels_last)

    transform = transforms.Compose([
        transforms.Resize(prep.resize_size),
        transforms.RandomCrop(prep.image_size),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    folder = datasets.ImageFolder(str(root), transform=transform)
    decode_workers = train.default_num_workers(cpus, cached=False)
    plain = {
        w: torch.utils.data.DataLoader(folder, batch_size=BATCH_SIZE, shuffle=True, num_workers=w,
                                       persistent_workers=w > 0)
        for w in sorted({0, decode_workers})
    }
    fast_epochs: list[float] = []
    plain_epochs: dict[int, list[float]] = {w: [] for w in plain}
    n = m = 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = _drain(loader, finish)
        fast_epochs.append(time.perf_counter() - t0)
        for w, plain_loader in plain.items():
            t0 = time.perf_counter()
            m = _drain(plain_loader)
            plain_epochs[w].append(time.perf_counter() - t0)
    del loader, plain
    plain_rates = {w: Stats.of([m / s for s in values]) for w, values in plain_epochs.items()}
    best = max(plain_rates, key=lambda w: plain_rates[w].median)
    return {"n": n, "workers": workers, "cache_s": cache_s, "builds": build_s, "fast": fast_epochs, "baseline": plain_rates[best],
            "baseline_workers": best, "baselines": plain_rates, "trainer": trainer, "dataset": dataset,
            "options": loader_options(trainer, dataset, finish, epochs, decode_workers)}


def _at_suite_threads(trainer: Any, dataset: Any, epochs: int, threads: int) -> dict[str, list[float]]:
    """train.py's loader again, with the suite's torch threads instead of a training job's."""
    import image_folder

    values = []
    with torch_threads(threads):
        loader = trainer.loader(dataset, shuffle=True)
        for epoch in range(max(2, epochs)):
            t0 = time.perf_counter()
            seen = _drain(loader, lambda batch: image_folder.batch_to_model_input(batch, trainer.prep))
            if epoch:
                values.append(seen / (time.perf_counter() - t0))
    return {f"train.py's loader with {threads} torch threads (batch normalisation multi-threaded in-process)": values}


def loader_options(trainer: Any, dataset: Any, finish: Callable[[torch.Tensor], Any], epochs: int,
                   decode_workers: int) -> dict[str, list[float]]:
    """Cache-hit images/s of other ways to feed the same cached split: worker counts, per-item floats."""
    import image_folder

    if not getattr(dataset, "cached", False):
        return {}
    out: dict[str, list[float]] = {}

    def rates(loader: torch.utils.data.DataLoader, to_input: Callable[[torch.Tensor], Any] | None) -> list[float]:
        values = []
        for epoch in range(max(2, epochs)):
            t0 = time.perf_counter()
            seen = _drain(loader, to_input)
            if epoch:  # the first pass starts workers; count cache-hit epochs only
                values.append(seen / (time.perf_counter() - t0))
        return values

    for workers in sorted({1, decode_workers}):
        out[f"train.py's loader with --num_workers {workers} (uint8 items, batch normalised in the main process)"] = \
            rates(trainer.loader(dataset, shuffle=True, workers=workers), finish)
    float_items = _FloatItems(dataset)
    for workers in sorted({0, 1, decode_workers}):
        loader = torch.utils.data.DataLoader(float_items, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                                             collate_fn=image_folder.collate_skip_bad, persistent_workers=workers > 0)
        previous = " (what train.py did before)" if workers == decode_workers else ""
        out[f"float items normalised one by one, {workers} worker(s){previous}"] = rates(loader, None)
    return out


def _rows(section: Section, name: str, r: dict[str, Any]) -> None:
    n = r["n"]
    base: Stats = r["baseline"]
    steady = Stats.of([n / s for s in r["fast"][1:]] or [n / r["fast"][0]])
    first = Stats.of([n / (r["cache_s"] + r["fast"][0])])
    # A job reads train once per epoch: one cache build + first epoch, then cache hits.
    job_fast = JOB_EPOCHS * n / (r["cache_s"] + r["fast"][0] + (JOB_EPOCHS - 1) * (n / steady.median))
    job = Stats.of([job_fast])
    others = ", ".join(f"{w} worker(s) {s.median:.0f}" for w, s in sorted(r["baselines"].items()))
    w = (f"train.py's choice for a cached split: {r['workers']} worker(s), batch {BATCH_SIZE}, "
         f"{r['threads']} torch thread(s); baseline: "
         f"ImageFolder with {r['baseline_workers']} worker(s), the faster of ({others} img/s)")
    builds = f"{r['cache_s']:.1f} s" + (
        f", median of {' / '.join(f'{b:.1f}' for b in r['builds'])} s" if len(r["builds"]) > 1 else "")
    section.rows.append(Row("pipeline", f"{name}: first epoch incl. one-off cache build ({builds})",
                            first, "img/s", baseline=base, higher_is_better=True, note=w))
    section.rows.append(Row("pipeline", f"{name}: later epochs (cache hit)", steady, "img/s", baseline=base,
                            higher_is_better=True, note=w))
    row = Row("pipeline", f"{name}: whole {JOB_EPOCHS}-epoch job (cache build amortised)", job, "img/s",
              baseline=base, higher_is_better=True, target=">= 2x baseline", note=w)
    row.met = (row.speedup or 0) >= 2.0
    section.rows.append(row)
    for option, values in r["options"].items():
        section.rows.append(Row("pipeline", f"{name}: option, later epochs: {option}", Stats.of(values), "img/s",
                                baseline=base, higher_is_better=True))


def run(section: Section, quick: bool) -> None:
    from breedline import demo_digits

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    epochs = 2 if quick else 4
    image_size = 64 if quick else 224
    digits = work / "digits"
    demo_digits.write_digits(digits, per_class=8 if quick else None)
    count = 64 if quick else 1000
    generated = images.write_jpeg_dataset(work / "jpegs", count)
    section.notes.append(
        f"Data: digits train split ({len(list((digits / 'train').rglob('*.jpg')))} JPEGs of 64x64 px) and "
        f"{generated.images} generated JPEGs of about 500x400 px ({generated.classes} classes, crops of the "
        f"scikit-image photos, quality 90); image_size {image_size}, batch {BATCH_SIZE}; {epochs} epochs each, "
        "train.py's loader and both baselines interleaved epoch by epoch; baseline epochs all count (its workers "
        "are persistent too). The fast path's figure ends with the normalised float batch "
        "(image_folder.batch_to_model_input on the CPU; on a GPU train.py moves the uint8 batch first and normalises "
        "there). Its cache holds the centre square of side resize_size, so random crops come from that square "
        "rather than the whole resized image. Options reuse the same cache and count cache-hit epochs only."
    )
    threads = job_threads()
    section.notes.append(
        f"Threads: train.py's loader and the baselines run with {threads or torch.get_num_threads()} torch "
        "intra-op thread(s), what the local runtime gives each training job (its job_threads default); "
        f"the suite itself runs {torch.get_num_threads()}."
    )
    for name, root in (("digits", digits / "train"), (f"{generated.images} generated 500x400 JPEGs",
                                                       generated.root / "train")):
        _rows(section, name, measure(root, epochs, image_size, threads, builds=1 if quick else 3))
