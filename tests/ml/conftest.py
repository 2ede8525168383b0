"""Fixtures for the ML scripts: tiny digits data sets and one real SageMaker-style training job.

The job is session-scoped: it trains once (efficientnet_lite0, whose ImageNet
weights ship in a package, at 32 px) and several test modules inspect its
outputs, so the suite stays fast on two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from breedline import demo_digits
from ml_jobs import HYPERPARAMETERS, Job


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process work here is batch-1 inference on tiny models: one thread avoids
    OpenMP oversubscription on a shared 2-core machine (train.py subprocesses keep theirs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> Path:
    """12 images per class (8 train / 2 valid / 2 test), 32 px."""
    out = tmp_path_factory.mktemp("digits_small")
    demo_digits.write_digits(out, per_class=12, size=32)
    return out


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, digits_small) -> Job:
    """One epoch on the small digits slice, with Debugger and profiler on."""
    job = Job(base=tmp_path_factory.mktemp("job"), data=digits_small)
    result = job.run(
        ["--epochs", "1", "--model", "efficientnet_lite0", "--debug_out", str(job.base / "debug"),
         "--debug_save_interval", "1", "--profile_steps", "2", "--some_future_flag", "x"],
        hyperparameters=HYPERPARAMETERS,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job
