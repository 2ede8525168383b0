"""The files a training job leaves behind, fetched for its report: output, model metadata, log, tensors.

Why apart from :mod:`breedline.job_report`: these are the parts that touch S3
and the disk, and each must fail soft. A missing object is a normal state (no
profiler, an older job, ``BREEDLINE_DEBUGGER=off``); an unreadable one becomes
a note for the report, never an exception that costs the rest of it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from contract import TENSORS_DIR

from breedline.local.s3_transfers import download_prefix, split_s3_uri


def download(s3: Any, uri: str, target: Path) -> Path | None:
    """One S3 object to ``target``; None when it is not there (or cannot be read)."""
    bucket, key = split_s3_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(bucket, key, str(target))
    except Exception:  # noqa: BLE001 - a missing object (no profiler, an older job) is a normal state
        return None
    return target


def extract_output(s3: Any, output_uri: str, out: Path, notes: list[str]) -> Path | None:
    """``output.tar.gz`` downloaded and unpacked into ``out/output``; None (and a note) when unreadable."""
    archive = download(s3, output_uri, out / "output.tar.gz")
    target = out / "output"
    if archive is None:
        # A runtime reloaded with ``up --keep-state`` has the jobs but not the S3 objects
        # (moto kept them in memory); this run's earlier report download still has them.
        if target.is_dir() and any(target.iterdir()):
            notes.append(f"output data read from this run's earlier download in {target}")
            return target
        return None
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        notes.append(f"output data unreadable ({output_uri}): {exc}")
        return None
    return target


def model_meta(s3: Any, model_uri: str | None, out: Path, notes: list[str]) -> dict[str, Any]:
    """``model_meta.json`` from ``model.tar.gz`` (only that member is read); {} when there is none."""
    return model_members(s3, model_uri, out, ("model_meta.json",), notes).get("model_meta.json", {})


def model_members(s3: Any, model_uri: str | None, out: Path, names: tuple[str, ...],
                  notes: list[str]) -> dict[str, dict[str, Any]]:
    """The JSON members ``names`` of ``model.tar.gz`` (one download); a missing or unreadable one is left out.

    Why one download for several: the archive holds the weights (tens of MB
    for a real model), and the report reads both ``model_meta.json`` and
    ``evaluation.json`` from it.
    """
    archive = download(s3, model_uri, out / "model.tar.gz") if model_uri else None
    if archive is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(archive) as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    continue
                handle = tar.extractfile(members[name])
                try:
                    value = json.loads(handle.read()) if handle is not None else None
                except ValueError as exc:
                    notes.append(f"{name} unreadable in {model_uri}: {exc}")
                    continue
                if isinstance(value, dict):
                    found[name] = value
                else:
                    notes.append(f"{name} in {model_uri} is not a JSON object")
    except (tarfile.TarError, OSError) as exc:
        notes.append(f"model.tar.gz unreadable ({model_uri}): {exc}")
        return {}
    return found


def job_log(state_dir: Path | None, name: str) -> tuple[str, str] | None:
    """The job's stdout and where it lies: the local runtime keeps it in ``jobs/<job>/logs/stdout.log``."""
    if state_dir is None:
        return None
    path = Path(state_dir) / "jobs" / name / "logs" / "stdout.log"
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace"), str(path)


def tensors_dir(s3: Any, job: dict[str, Any], output: Path | None, out: Path, notes: list[str],
                artifacts: dict[str, str]) -> Path | None:
    """The smdebug trial: ``tensors/`` of the output (in_job), else DebugHookConfig's S3 path (service)."""
    if output is not None and (output / TENSORS_DIR).is_dir():
        return output / TENSORS_DIR
    debug = job.get("DebugHookConfig")
    if not debug or not debug.get("S3OutputPath"):
        return None
    debug_uri = debug["S3OutputPath"].rstrip("/") + f"/{job['TrainingJobName']}/debug-output"
    artifacts["debugger tensors"] = debug_uri
    try:
        if download_prefix(s3, debug_uri, out / "debug-output"):
            return out / "debug-output"
    except Exception as exc:  # noqa: BLE001 - a missing prefix or denied read costs only the step line
        notes.append(f"Debugger tensors unreadable ({debug_uri}): {exc}")
        return None
    notes.append(f"no Debugger tensors under {debug_uri}")
    return None
