"""Batch predictions: where a batch lives, which of its files are images, the transform job's manifest.

Why pure: the key rules are the product's contract with whoever uploads a
batch (``batch/<job>/...`` and a ``_READY`` marker, the same convention as
data sets), and the manifest decides exactly which images one Batch Transform
job reads. Both are plain functions of a listing, tested without AWS; the
calls live in :mod:`chalicelib.batch_jobs`, the join in :mod:`chalicelib.batch_results`.

Layout in the data bucket::

    batch/<job>/<any/depth>/<image>               the user's images
    batch/<job>/_READY                            "upload complete": starts one transform job
    batch-results/<job>/<transform job>/manifest.json, output/<rel>.out, results.jsonl, summary.json

Why fixed prefixes, not settings: the IAM grants of the Lambdas and of the
SageMaker execution role name them (breedline/deploy/functions.py,
infra/breedline.yaml), and neither may overlap the data prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

# The words the CLI and the serving code share live in contract.py; re-exported under this module's names.
from chalicelib.datasets import ObjectRef, valid_dataset_name
from contract import BATCH_PREFIX  # noqa: F401
from contract import BATCH_RESULTS_FILE as RESULTS_FILE  # noqa: F401
from contract import BATCH_RESULTS_PREFIX as RESULTS_PREFIX
from contract import BATCH_SUMMARY_FILE as SUMMARY_FILE  # noqa: F401

MANIFEST_FILE = "manifest.json"
OUTPUT_FOLDER = "output/"
#: SageMaker's suffix of each object's transform output (TransformOutput.S3OutputPath).
OUTPUT_SUFFIX = ".out"
#: Tags of a transform job (besides breedline:pipeline and breedline:stage).
STAGE_BATCH = "batch"
TAG_BATCH_JOB = "breedline:batch-job"
TAG_BUCKET = "breedline:bucket"
#: MaxPayloadInMB of the request: SplitType None sends each image whole, so a larger one would fail the job.
MAX_PAYLOAD_MB = 6
#: Summary statuses besides SageMaker's Completed / Failed / Stopped.
NO_LIVE_MODEL = "no_live_model"
NO_IMAGES = "no_images"
#: Error codes of result lines written by the app (the serving code writes the others).
MISSING_OUTPUT = "missing_output"
BAD_OUTPUT = "bad_output"


def batch_job_of_key(key: str) -> str | None:
    """``batch/cats/a/1.jpg`` -> ``cats``; None outside ``batch/<job>/``."""
    if not key.startswith(BATCH_PREFIX):
        return None
    name, sep, tail = key[len(BATCH_PREFIX):].partition("/")
    return name if sep and name and tail else None


def is_batch_marker(key: str, marker: str) -> bool:
    """True for ``batch/<job>/<marker>``, the object that starts the batch."""
    job = batch_job_of_key(key)
    return job is not None and key == f"{BATCH_PREFIX}{job}/{marker}"


def input_prefix(job: str) -> str:
    return f"{BATCH_PREFIX}{job}/"


def results_folder(job: str, transform_job: str) -> str:
    """``batch-results/<job>/<transform job>/``: one folder per run, so a rerun never mixes with the last."""
    return f"{RESULTS_PREFIX}{job}/{transform_job}/"


@dataclass(frozen=True)
class BatchListing:
    """What a batch folder holds: the images one transform job reads, and the files it leaves out."""

    job: str
    images: tuple[str, ...]  # relative to batch/<job>/, sorted
    skipped: tuple[tuple[str, str], ...]  # (relative key, why), sorted
    digest: str  # of the images' keys, ETags and sizes: the listing's content version

    @property
    def problem(self) -> str | None:
        """Why no transform job can start for this batch, or None."""
        if not valid_dataset_name(self.job):
            return f"batch name {self.job!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        return None if self.images else "no image files under the batch folder"


def _why_skipped(relative: str, size: int, image_extensions: tuple[str, ...]) -> str | None:
    if not relative.lower().endswith(image_extensions):
        return "not an image file (suffix)"
    if size == 0:
        return "empty (0 bytes)"
    if size > MAX_PAYLOAD_MB * 1024 * 1024:
        return f"larger than {MAX_PAYLOAD_MB} MiB (the transform job's MaxPayloadInMB)"
    return None


def list_batch(job: str, objects: Iterable[ObjectRef], marker: str, image_extensions: tuple[str, ...]) -> BatchListing:
    """Sort a listing of ``batch/<job>/`` into images and skipped files (folder placeholders, the marker
    and hidden files are neither), with the same suffix rule as data sets."""
    base = input_prefix(job)
    images: list[str] = []
    skipped: list[tuple[str, str]] = []
    rows: list[str] = []
    for obj in objects:
        relative = obj.key[len(base):] if obj.key.startswith(base) else ""
        if not relative or relative.endswith("/") or relative == marker:
            continue
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        why = _why_skipped(relative, obj.size, image_extensions)
        if why:
            skipped.append((relative, why))
            continue
        images.append(relative)
        rows.append(f"{relative}\t{obj.etag.strip(chr(34))}\t{obj.size}")
    digest = hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]
    return BatchListing(job, tuple(sorted(images)), tuple(sorted(skipped)), digest)


def manifest(bucket: str, listing: BatchListing) -> list[object]:
    """The ManifestFile body: ``[{"prefix": "s3://<bucket>/batch/<job>/"}, "rel/1.jpg", ...]``.

    SageMaker then writes ``<S3OutputPath><rel>.out`` for each entry, so an
    output names its image by the same relative path.
    """
    return [{"prefix": f"s3://{bucket}/{input_prefix(listing.job)}"}, *listing.images]
