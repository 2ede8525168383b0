"""Shared pieces of the benchmark suite: statistics, result rows, machine facts.

Why a tiny hand-written module instead of pytest-benchmark or asv: every figure
here is either a ratio against a baseline measured in the *same* process a few
seconds earlier, or an absolute figure printed next to the machine it ran on.
That needs only ``time.perf_counter``, a median and a min-max; the rest of the
value is in what is measured, which those tools don't know about.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterable


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements of one quantity (seconds or a rate)."""

    median: float
    low: float
    high: float
    n: int
    p99: float | None = None

    @classmethod
    def of(cls, samples: Iterable[float]) -> "Stats":
        """Median, min, max and (for 20+ samples) the 99th percentile."""
        values = sorted(float(v) for v in samples)
        if not values:
            raise ValueError("no samples")
        p99 = None
        if len(values) >= 20:
            p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
        return cls(statistics.median(values), values[0], values[-1], len(values), p99)


@dataclass
class Row:
    """One line of the results table.

    ``value`` is what the fast path (or the thing measured) achieved; ``baseline``
    is the plain way measured in the same run. ``speedup`` is always "how many
    times better than the baseline" (baseline time / time, or rate / baseline
    rate), so > 1 means the fast path wins.
    """

    section: str
    case: str
    value: Stats | None
    unit: str
    baseline: Stats | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    higher_is_better: bool = False
    #: The command that reproduces the row, where it is not ``python -m bench --only <section>``.
    reproduce: str = ""

    @property
    def speedup(self) -> float | None:
        if self.value is None or self.baseline is None:
            return None
        if self.higher_is_better:
            return self.value.median / self.baseline.median if self.baseline.median else None
        return self.baseline.median / self.value.median if self.value.median else None


class _PrintingRows(list):
    """A list of rows that prints each one as it is added, so a long run shows progress."""

    def append(self, row: "Row") -> None:  # type: ignore[override]
        super().append(row)
        base = f" | baseline {fmt_value(row.baseline, row.unit)}" if row.baseline else ""
        ratio = f" | {row.speedup:.2f}x" if row.speedup is not None else ""
        print(f"   [{time.strftime('%H:%M:%S')}] {row.case}: {fmt_value(row.value, row.unit)}{base}{ratio}", flush=True)


@dataclass
class Section:
    """The rows of one benchmark section plus the load average around it."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=_PrintingRows)
    notes: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    seconds: float = 0.0
    error: str | None = None


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls.

    The garbage collector runs once before the series and is off during it, so a
    collection of someone else's garbage is not billed to ``fn`` (once torch and
    botocore are loaded, a full collection per call would dwarf a millisecond
    handler).
    """
    return time_interleaved({"fn": fn}, repeat, warmup)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 1,
                     block: int = 1) -> dict[str, list[float]]:
    """Time several callables round-robin so a load spike hits all of them alike.

    On a shared 2-core machine the load changes minute to minute; timing the
    baseline and the fast path alternately keeps their ratio honest even when
    the absolute figures drift. With ``block`` > 1 each turn is one untimed call
    and then ``block`` timed ones, so every path is timed in its own steady
    state, as a dedicated server runs it: alternating call by call, a 12 MP
    photo's fast path reads slower after each plain call, whose full-size
    decode leaves the allocator and the caches cold for it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc.disable()
    try:
        for _ in range(-(-repeat // block)):
            for name, fn in fns.items():
                if block > 1:
                    fn()
                for _ in range(block):
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return samples


def loadavg() -> tuple[float, float, float]:
    """``os.getloadavg()`` rounded; recorded with every section."""
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, str]:
    """What a reader needs to compare these figures with their own machine's."""
    import torch  # local: keep ``python -m bench --help`` light

    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem = f"{mem_gib:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem = "unknown"
    facts = {
        "CPU": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "memory": mem,
        "torch threads": str(torch.get_num_threads()),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
    }
    for dist in (
        "torch",
        "torchvision",
        "pillow",
        "numpy",
        "onnxruntime",
        "onnx",
        "chalice",
        "boto3",
        "aws-lambda-powertools",
        "efficientnet-lite-pytorch",
    ):
        facts[dist] = version(dist)
    return facts


def fmt_seconds(seconds: float) -> str:
    """Human units for a duration: µs, ms or s with three significant digits."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_value(stats: Stats | None, unit: str) -> str:
    """``median (min–max)`` in the row's unit."""
    if stats is None:
        return "—"
    if unit == "s":
        return f"{fmt_seconds(stats.median)} ({fmt_seconds(stats.low)}–{fmt_seconds(stats.high)})"
    return f"{stats.median:.4g} ({stats.low:.4g}–{stats.high:.4g}) {unit}".rstrip()
