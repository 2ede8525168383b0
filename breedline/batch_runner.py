"""Batch predictions from the operator's side: upload a folder, wait for the app's summary, print it.

Why only S3: the app owns the rest. A folder uploaded under
``batch/<name>/`` followed by ``batch/<name>/_READY`` makes the app start a
SageMaker Batch Transform job on the live model; when the job ends the app
joins its ``.out`` files into ``batch-results/<name>/<transform job>/results.jsonl``
and writes ``summary.json`` beside it. So the same code works against the local
runtime and a real account (``python -m breedline batch FOLDER [--aws]``), and
``make demo BATCH=folder`` runs it against the demo's model.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from contract import BATCH_PREFIX
from contract import BATCH_RESULTS_FILE as RESULTS_FILE
from contract import BATCH_RESULTS_PREFIX as RESULTS_PREFIX
from contract import BATCH_SUMMARY_FILE as SUMMARY_FILE

#: Where a batch goes in, and where the app writes what comes out (the app's contract, issue 18).
READY_MARKER = "_READY"
#: A batch name: what the app accepts in a key and a transform job's name (letters, digits, dashes).
NAME_LIMIT = 40
UPLOAD_THREADS = 4


class BatchError(Exception):
    """A batch that cannot start or did not finish: one line for the operator."""


def batch_name(folder: Path, when: dt.datetime | None = None) -> str:
    """``<folder name>-<UTC time>``, lowercased, dashes for anything else: a fresh name per run.

    Why fresh: the app treats a second ``_READY`` for the same batch as the
    duplicate it is and starts nothing, so a re-run of a folder needs its own name.
    """
    stamp = (when or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", folder.resolve().name.lower()).strip("-")[: NAME_LIMIT - len(stamp) - 1]
    return f"{slug or 'batch'}-{stamp}"


def check_name(name: str) -> str:
    """``name`` if it is usable as a batch name; else a BatchError that says what is allowed."""
    if not re.fullmatch(r"[a-z0-9](-?[a-z0-9])*", name) or len(name) > NAME_LIMIT:
        raise BatchError(f"batch name {name!r}: use at most {NAME_LIMIT} lowercase letters, digits and single dashes")
    return name


def folder_files(folder: Path) -> list[Path]:
    """Every readable file under ``folder`` (the app decides what is an image, and reports the rest)."""
    if not folder.is_dir():
        raise BatchError(f"no folder {folder}")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and os.access(p, os.R_OK)]
    if not files:
        raise BatchError(f"{folder} has no files to predict")
    return files


def upload_batch(s3: Any, bucket: str, folder: Path, name: str) -> int:
    """Upload the folder's files under ``batch/<name>/``, then the ``_READY`` marker; return the file count."""
    files = folder_files(folder)
    prefix = f"{BATCH_PREFIX}{name}/"

    def upload(path: Path) -> None:
        content_type = mimetypes.guess_type(path.name)[0]
        extra = {"ContentType": content_type} if content_type else {}
        s3.put_object(Bucket=bucket, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes(),
                      **extra)

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(upload, files))
    s3.put_object(Bucket=bucket, Key=prefix + READY_MARKER, Body=b"")
    return len(files)


@dataclass
class BatchResult:
    """The app's summary of one finished batch and where its results are."""

    summary: dict[str, Any]
    summary_uri: str
    results_uri: str


def find_summary(s3: Any, bucket: str, name: str) -> BatchResult | None:
    """The batch's ``summary.json`` once the app has written it (None before)."""
    prefix = f"{RESULTS_PREFIX}{name}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/" + SUMMARY_FILE):
                summary = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                folder = item["Key"].rsplit("/", 1)[0]
                return BatchResult(summary, f"s3://{bucket}/{item['Key']}", f"s3://{bucket}/{folder}/{RESULTS_FILE}")
    return None


def count_outputs(s3: Any, bucket: str, name: str) -> int:
    """How many ``.out`` files the transform job has written so far (for progress lines)."""
    prefix = f"{RESULTS_PREFIX}{name}/"
    return sum(1 for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
               for item in page.get("Contents", []) if item["Key"].endswith(".out"))


def wait_for_summary(s3: Any, bucket: str, name: str, expected: int, timeout: float,
                     say: Callable[[str], None] = print, interval: float = 2.0) -> BatchResult:
    """Poll until the app's summary appears; say how many images have an answer every few seconds."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        found = find_summary(s3, bucket, name)
        if found is not None:
            return found
        done = count_outputs(s3, bucket, name)
        if done != last:
            say(f"  {done}/{expected} images answered")
            last = done
        time.sleep(interval)
    raise BatchError(f"no {RESULTS_PREFIX}{name}/*/{SUMMARY_FILE} after {timeout:.0f} s: see `python -m breedline "
                     "status` and the runtime's logs/app.log")


def format_summary(result: BatchResult) -> str:
    """The summary as the operator reads it: one line per field, nested counts indented, then the URIs.

    Why generic: the app owns the summary's fields (counts per label,
    abstained, failed ...); printing whatever it wrote keeps the two in step.
    """
    lines = ["batch summary:"]
    for key, value in result.summary.items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            lines.extend(f"    {k}: {v}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
        else:
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (list, bool)) or value is None else value}")
    lines.append(f"results: {result.results_uri}")
    lines.append(f"summary: {result.summary_uri}")
    return "\n".join(lines)


def run_batch(s3: Any, bucket: str, folder: Path, name: str, wait: bool = True, timeout: float = 1800.0,
              say: Callable[[str], None] = print) -> BatchResult | None:
    """Upload, then (``wait``) wait for the summary and print it; returns it (None without ``wait``)."""
    count = upload_batch(s3, bucket, folder, check_name(name))
    say(f"uploaded {count} files to s3://{bucket}/{BATCH_PREFIX}{name}/ and the {READY_MARKER} marker")
    if not wait:
        say(f"the summary will be at s3://{bucket}/{RESULTS_PREFIX}{name}/<transform job>/{SUMMARY_FILE}")
        return None
    result = wait_for_summary(s3, bucket, name, count, timeout, say)
    say(format_summary(result))
    return result


def run_demo_batch(say: Callable[[str], None], s3: Any, bucket: str, folder: Path | None) -> bool:
    """``make demo BATCH=folder``: the batch against the demo's live model; True when done (or none asked)."""
    if folder is None:
        return True
    say(f"STAGE B  batch predictions for {folder} through a SageMaker Batch Transform job ...")
    try:
        run_batch(s3, bucket, Path(folder), batch_name(Path(folder)), say=say)
    except BatchError as exc:
        say(f"the batch did not finish: {exc}")
        return False
    return True
