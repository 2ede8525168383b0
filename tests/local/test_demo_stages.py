"""bench/demo_bench.py reads the demo's output: time per job status, as the demo saw it."""

from __future__ import annotations

from bench.demo_bench import parse_phases


def test_parse_phases_splits_each_job_by_status() -> None:
    text = "\n".join([
        "[  10.0s]   trial breedline-x-001: InProgress / Starting (batch_size=16, learning_rate=0.01)",
        "[  10.5s]   trial breedline-x-001: InProgress / Downloading",
        "[  12.0s]     trial breedline-x-001: valid_loss=0.5",  # a metrics line is not a status
        "[  15.5s]   trial breedline-x-001: InProgress / Training",
        "[  30.0s]   trial breedline-x-001: InProgress / Uploading",
        "[  31.5s]   trial breedline-x-001: Completed / Completed",
        "[  31.5s]   final job breedline-x-final: InProgress / Training",
        "[  40.0s]   final job breedline-x-final: Failed / Failed: AlgorithmError: boom, exit code: 1",
    ])
    phases = parse_phases(text)
    assert phases["breedline-x-001"] == {"Starting": 0.5, "Downloading": 5.0, "Training": 14.5, "Uploading": 1.5}
    assert phases["breedline-x-final"] == {"Training": 8.5}
