"""Real transfer learning: efficientnet_lite0 (shipped ImageNet weights) on all 1,797 digits >= 90%.

Kept in its own file because it is the slowest ML test (see docs/ml.md for its measured time):
three epochs at 64 px with the last two backbone blocks fine-tuned, through train.py exactly as
SageMaker runs it. It was make test's single longest test (README.md, "Test"),
so make test-e2e runs it (CI too) with the other slow checks; the quick train.py claims stay in
make test on the shared tiny-digits job (tests/ml/conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import contract
import pytest
from ml_jobs import Job

from breedline import demo_digits

#: The command this test runs, also quoted in docs/ml.md.
ARGS = ["--model", "efficientnet_lite0", "--image_size", "64", "--batch_size", "32",
        "--learning_rate", "0.005", "--epochs", "3", "--trainable_blocks", "2", "--channels_last", "true"]


#: A full training run on all the digits: make test-e2e runs it, make test leaves it out.
pytestmark = pytest.mark.e2e


def test_efficientnet_lite0_reaches_90_percent_on_digits(tmp_path: Path) -> None:
    demo_digits.write_digits(tmp_path / "digits", size=64)
    job = Job(base=tmp_path / "job", data=tmp_path / "digits")
    started = time.perf_counter()
    result = job.run(ARGS, timeout=290)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = contract.parse_metrics(result.stdout)
    print(f"test_accuracy={metrics['test_accuracy'][-1]:.4f} in {time.perf_counter() - started:.0f}s")
    assert metrics["test_accuracy"][-1] >= 0.90
    assert len(metrics["valid_loss"]) >= 1
