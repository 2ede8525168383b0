"""CPU, memory and (when there is one) GPU use, sampled by a background thread during training.

Why our own sampler: SageMaker's system profiler is a Debugger service feature
(closed to new accounts, discontinued in 2027), so the profiler report must not
depend on it. A daemon thread that wakes every ``interval`` seconds costs
nothing measurable next to a training step (docs/benchmarks.md, profiler cost).

What is read, and from where:

- CPU utilisation (system-wide, all cores, 0-100) and this process's resident
  memory and the system's memory in use: ``psutil``;
- GPU memory allocated and reserved by this process and the device's total
  memory: ``torch.cuda`` memory statistics, when CUDA is in use;
- GPU utilisation and device memory in use: ``pynvml``, only if some package
  provides it. Without it, utilisation is "not measured", never guessed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """The time series of one run, one list per quantity, all indexed like ``t_s``."""

    #: Seconds since the sampler started.
    t_s: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    system_memory_percent: list[float] = field(default_factory=list)
    #: Empty on the CPU; ``torch.cuda.memory_allocated`` / ``memory_reserved`` otherwise.
    gpu_allocated_mb: list[float] = field(default_factory=list)
    gpu_reserved_mb: list[float] = field(default_factory=list)
    #: Empty unless pynvml is importable and answers.
    gpu_percent: list[float] = field(default_factory=list)
    #: The GPU's total memory (MB), None without a GPU.
    gpu_total_mb: float | None = None
    cpu_count: int = 1
    #: Why GPU utilisation is missing, when it is: "no GPU", "pynvml not installed", ...
    gpu_percent_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _nvml_handle(cuda: bool) -> tuple[Any, Any, str]:
    """(pynvml module, device handle, note): pynvml only if importable, never a hard dependency."""
    if not cuda:
        return None, None, "no GPU"
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        import torch

        index = torch.cuda.current_device()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index), ""
    except ImportError:
        return None, None, "pynvml not installed"
    except Exception as exc:  # noqa: BLE001 -- NVML present but refusing (driver mismatch, container limits)
        return None, None, f"pynvml failed: {type(exc).__name__}"


class ResourceSampler:
    """Samples :class:`Samples` every ``interval`` seconds on a daemon thread, from start() to stop()."""

    def __init__(self, cuda: bool, interval: float = 0.5) -> None:
        import psutil

        self.cuda = cuda
        self.interval = interval
        self.samples = Samples(cpu_count=psutil.cpu_count() or 1)
        self._psutil = psutil
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml, self._handle, self.samples.gpu_percent_note = _nvml_handle(cuda)
        if cuda:
            import torch

            self.samples.gpu_total_mb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**20

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._psutil.cpu_percent(interval=None)  # the first call only primes the counter
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> Samples:
        """Stop the thread (one last sample first) and return what it collected."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self.sample()
        return self.samples

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One reading of every quantity; a failing GPU query drops that series, never training."""
        s = self.samples
        s.t_s.append(time.perf_counter() - self._t0)
        s.cpu_percent.append(float(self._psutil.cpu_percent(interval=None)))
        s.rss_mb.append(self._process.memory_info().rss / 2**20)
        s.system_memory_percent.append(float(self._psutil.virtual_memory().percent))
        if self.cuda:
            import torch

            s.gpu_allocated_mb.append(torch.cuda.memory_allocated() / 2**20)
            s.gpu_reserved_mb.append(torch.cuda.memory_reserved() / 2**20)
        if self._nvml is not None:
            try:
                s.gpu_percent.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception as exc:  # noqa: BLE001 -- a GPU reading never stops training
                self._nvml, s.gpu_percent_note = None, f"pynvml failed: {type(exc).__name__}"
