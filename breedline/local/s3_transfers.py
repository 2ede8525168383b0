"""S3 transfers of the local SageMaker service: channels in, artifacts out, tarballs.

Why a module of its own: training jobs, endpoints and the operator's report all
move objects between local S3 and folders the same way (File mode's parallel
copy, an ETag-keyed cache for channels, model.tar.gz packing), and none of them
should import the others for it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .sagemaker_wire import validation

TRANSFER_THREADS = 8
#: boto3's default multipart threshold: smaller objects come in one GET.
SINGLE_GET_BYTES = 8 * 1024 * 1024


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> ``("bucket", "key/prefix")``."""
    if not uri.startswith("s3://"):
        raise validation(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


_CACHE_LOCKS: dict[Path, threading.Lock] = {}
_CACHE_LOCKS_GUARD = threading.Lock()


def _cache_lock(path: Path) -> threading.Lock:
    with _CACHE_LOCKS_GUARD:
        return _CACHE_LOCKS.setdefault(path, threading.Lock())


def _get_to_file(s3: Any, bucket: str, key: str, target: Path, size: int, etag: str) -> None:
    """Write one object to ``target`` (via a ``.part`` file, so a failed fetch leaves no half file).

    Why not always ``download_file``: for a small object it sends a HEAD and a
    GET and builds a transfer manager with its own threads per call; one GET
    costs half the requests and a fraction of the CPU. ``IfMatch`` makes the
    GET fail if the object changed since it was listed, so a cache entry keyed
    by the listed ETag always holds that version. Large objects keep boto3's
    ranged, parallel ``download_file`` (as before this change).
    """
    partial = target.with_name(target.name + ".part")
    try:
        if size >= SINGLE_GET_BYTES:
            s3.download_file(bucket, key, str(partial))
        else:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if etag:
                kwargs["IfMatch"] = etag
            body = s3.get_object(**kwargs)["Body"]
            with open(partial, "wb") as out:
                for chunk in body.iter_chunks(1024 * 1024):
                    out.write(chunk)
        partial.replace(target)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"cannot download s3://{bucket}/{key}: {exc}") from exc


def download_prefix(s3: Any, uri: str, dest: Path, cache: Path | None = None) -> int:
    """Download every object under an S3 prefix (or one object) into ``dest``; return the count.

    The folder layout below the prefix is kept. Objects are fetched by
    ``TRANSFER_THREADS`` threads at once, as SageMaker's File mode copies many
    small files in parallel; the first object that cannot be fetched (deleted
    or changed since the listing) fails the whole call with its key named.

    With ``cache``, each object version (bucket, key, ETag) is fetched once and
    hard-linked into later jobs' folders: the trials and the final job of one
    tuning run read the same channels, and a changed object has a new ETag.
    """
    bucket, prefix = split_s3_uri(uri)
    dest.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path, str, int]] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            rel = key[len(prefix):].lstrip("/") if key != prefix else Path(key).name
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((key, target, obj.get("ETag", ""), int(obj.get("Size", 0))))

    def fetch(job: tuple[str, Path, str, int]) -> None:
        key, target, etag, size = job
        if cache is None or not etag:
            _get_to_file(s3, bucket, key, target, size, etag)
            return
        cached = cache / hashlib.sha1(f"{bucket}/{key}/{etag}".encode()).hexdigest()
        with _cache_lock(cached):  # parallel trials fetch each object once, not once each
            if not cached.exists():
                cache.mkdir(parents=True, exist_ok=True)
                _get_to_file(s3, bucket, key, cached, size, etag)
        if target.exists():
            target.unlink()
        try:
            os.link(cached, target)
        except OSError:
            shutil.copyfile(cached, target)

    with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
        list(pool.map(fetch, jobs))
    return len(jobs)


def upload_tree(s3: Any, source: Path, uri: str) -> int:
    """Upload every file under ``source`` below the S3 prefix ``uri``; return the count."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/")
    if not source.is_dir():
        return 0
    files = [path for path in sorted(source.rglob("*")) if path.is_file()]

    def upload(path: Path) -> None:
        rel = path.relative_to(source).as_posix()
        s3.upload_file(str(path), bucket, f"{prefix}/{rel}" if prefix else rel)

    with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
        list(pool.map(upload, files))
    return len(files)


def make_tarball(source: Path, target: Path) -> Path:
    """Tar+gzip the *contents* of ``source`` (members at the root), as SageMaker packs model.tar.gz."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        if source.is_dir():
            for path in sorted(source.iterdir()):
                tar.add(path, arcname=path.name)
    return target


def extract_tarball(archive: Path, dest: Path) -> None:
    """Unpack a tarball safely (no absolute paths or ``..``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
