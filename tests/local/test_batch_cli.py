"""``python -m breedline batch FOLDER``: the upload under ``batch/<name>/``, the wait, the printed summary.

The app's side (the transform job, ``results.jsonl``, ``summary.json``) is played
here by a thread that writes a summary once the marker has arrived, so the test
checks only what the CLI owns, against moto's S3.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest

from breedline import cli
from breedline.batch_runner import BatchError, batch_name, check_name, format_summary, run_batch
from local_standins import BUCKET  # type: ignore[import-not-found]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "My Photos!"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff one")
    (folder / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n two")
    (folder / "notes.txt").write_text("not an image: the app reports it")
    return folder


def _play_the_app(s3, name: str, summary: dict) -> threading.Thread:
    """Write ``summary.json`` once the ``_READY`` marker is there, as the app does when the job ends."""
    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"batch/{name}/").get("Contents", [])]
            if f"batch/{name}/_READY" in keys:
                folder = f"batch-results/{name}/breedline-batch-{name}-1"
                s3.put_object(Bucket=BUCKET, Key=f"{folder}/output/a.jpg.out", Body=b"{}")
                s3.put_object(Bucket=BUCKET, Key=f"{folder}/summary.json", Body=json.dumps(summary))
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_run_batch_uploads_then_prints_the_apps_summary(moto_stack, tmp_path) -> None:
    s3 = moto_stack.client("s3")
    folder = _folder(tmp_path)
    summary = {"images": 3, "labels": {"dog": 1, "cat": 0}, "abstained": 0, "failed": 2}
    app = _play_the_app(s3, "photos-1", summary)
    said: list[str] = []
    result = run_batch(s3, BUCKET, folder, "photos-1", timeout=30, say=said.append)
    app.join()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="batch/photos-1/")["Contents"])
    assert keys == ["batch/photos-1/_READY", "batch/photos-1/a.jpg", "batch/photos-1/notes.txt",
                    "batch/photos-1/sub/b.png"]
    assert result is not None and result.summary == summary
    assert result.results_uri == f"s3://{BUCKET}/batch-results/photos-1/breedline-batch-photos-1-1/results.jsonl"
    printed = said[-1]
    assert "labels:\n    cat: 0\n    dog: 1" in printed and "failed: 2" in printed
    assert printed == format_summary(result) and result.results_uri in printed


def test_names_are_fresh_and_checked(tmp_path) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    name = batch_name(_folder(tmp_path), when)
    assert name == "my-photos-20260102-030405" and check_name(name) == name
    for bad in ("Has Caps", "a--b", "-x", "x" * 41, ""):
        with pytest.raises(BatchError):
            check_name(bad)


def test_the_cli_says_in_one_line_what_is_wrong(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert cli.main(["batch", str(tmp_path / "nowhere"), "--state-dir", str(tmp_path), "--name", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"breedline batch: no folder {tmp_path / 'nowhere'}"
    (tmp_path / "empty").mkdir()
    assert cli.main(["batch", str(tmp_path / "empty"), "--state-dir", str(tmp_path), "--name", "Bad Name"]) == 2
    assert "batch name 'Bad Name'" in capsys.readouterr().err
