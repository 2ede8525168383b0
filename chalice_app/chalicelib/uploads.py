"""Uploads: record each object, settle a data set once it is complete, start its tuning job.

A data set is settled when its ``_READY`` marker arrives or, without one,
when its uploads have gone quiet (:func:`check_quiet`, scheduled). Settling
lists and validates the folder (:mod:`chalicelib.datasets`) and then, once
per data set version, rejects it with an alert or starts one tuning job.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib import clients, naming
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.datasets import ObjectRef, dataset_of_key, is_marker, quiet_period_elapsed, validate_layout
from chalicelib.decisions import STAGE_TUNING, pipeline_tags
from chalicelib.observability import DATASETS_ACCEPTED, DATASETS_REJECTED, TUNING_FAILED, TUNING_STARTED, UPLOADS_SEEN, logger
from chalicelib.lambda_runtime import PipelineError, alert, client_error, count, idempotent, log_keys, settings, store
from contract import IN_PROGRESS

if TYPE_CHECKING:  # imported by app.py on first use: the data classes cost the predict route's cold start
    from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent


def handle_upload(event: S3EventBridgeNotificationEvent) -> dict[str, Any]:
    """S3 Object Created (via EventBridge): remember the upload; a marker settles the data set now."""
    s = settings()
    bucket, key = _bucket_and_key(event)
    if bucket != s.bucket:
        logger.info("upload in another bucket ignored", extra={"bucket": bucket, "key": key})
        return {"outcome": "ignored", "reason": "other bucket"}
    dataset = dataset_of_key(key, s.data_prefix)
    if dataset is None:
        logger.info("object outside any data set ignored", extra={"key": key})
        return {"outcome": "ignored", "reason": "not in a data set folder"}
    log_keys(dataset, key=key)
    count(UPLOADS_SEEN)
    reopened = store(s).record_upload(dataset, key, _event_epoch(event))
    if is_marker(key, s.data_prefix, s.ready_marker):
        logger.info("ready marker seen; settling data set now")
        return settle_dataset(dataset, trigger="marker")
    return {"outcome": "recorded", "dataset": dataset, "pending": reopened}


def _bucket_and_key(event: S3EventBridgeNotificationEvent) -> tuple[str | None, str]:
    """Bucket and key of the object; what a foreign or malformed event lacks reads as None and ''.

    The key is taken as the event carries it, not through ``object.key``:
    that property URL-decodes it, which would turn a ``+`` in a key into a space.
    """
    try:
        bucket = event.detail.bucket.name
    except (KeyError, TypeError, AttributeError):
        bucket = None
    try:
        key = event.detail.object.get("key") or ""
    except (KeyError, TypeError, AttributeError):
        key = ""
    return bucket, key


def _event_epoch(event: S3EventBridgeNotificationEvent) -> float:
    """EventBridge ``time`` (``2026-11-25T18:00:00Z``) as epoch seconds; now if absent."""
    raw = event.get("time")
    if isinstance(raw, str) and raw:
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def list_dataset(s: Settings, dataset: str) -> list[ObjectRef]:
    """Every object under ``<data prefix><dataset>/`` (paginated)."""
    paginator = clients.client("s3").get_paginator("list_objects_v2")
    objects: list[ObjectRef] = []
    for page in paginator.paginate(Bucket=s.bucket, Prefix=f"{s.data_prefix}{dataset}/"):
        for obj in page.get("Contents", []):
            objects.append(ObjectRef(key=obj["Key"], size=int(obj.get("Size", 0)), etag=str(obj.get("ETag", ""))))
    return objects


def settle_dataset(dataset: str, trigger: str) -> dict[str, Any]:
    """List and validate the data set, then start tuning or reject it, once per version."""
    s = settings()
    listed_at = time.time()
    report = validate_layout(
        dataset,
        list_dataset(s, dataset),
        data_prefix=s.data_prefix,
        marker=s.ready_marker,
        image_extensions=s.image_extensions,
        min_images_per_class=s.min_images_per_class,
    )
    log_keys(dataset, dataset_version=report.version)
    result = _settle_version(
        request={"dataset": dataset, "version": report.version},
        reasons=list(report.reasons),
        classes=list(report.classes),
        image_count=report.image_count,
        trigger=trigger,
    )
    store(s).settle(dataset, report.version, str(result.get("outcome")), listed_at, report.reasons)
    return result


@idempotent("settle-dataset-version")
def _settle_version(
    request: dict[str, Any], reasons: list[str], classes: list[str], image_count: int, trigger: str
) -> dict[str, Any]:
    """Once per (data set, version): reject with an alert, or start one tuning job."""
    s = settings()
    dataset, version = request["dataset"], request["version"]
    if reasons:
        count(DATASETS_REJECTED)
        logger.warning("data set rejected", extra={"reasons": reasons, "trigger": trigger})
        alert(
            f"data set {dataset} rejected",
            {"dataset": dataset, "version": version, "reasons": reasons, "what_to_do": "fix the layout and upload again"},
        )
        return {"outcome": "rejected", "dataset": dataset, "version": version, "reasons": reasons}
    count(DATASETS_ACCEPTED)
    logger.info("data set accepted", extra={"classes": len(classes), "images": image_count, "trigger": trigger})
    return start_tuning(s, dataset, version, classes, image_count)


def start_tuning(s: Settings, dataset: str, version: str, classes: list[str], image_count: int) -> dict[str, Any]:
    """CreateHyperParameterTuningJob under a deterministic name; ResourceInUse means done already."""
    name = naming.tuning_job_name(s.name_prefix, dataset, version)
    log_keys(dataset, tuning_job=name)
    state = store(s)
    state.save_version(dataset, version, classes, image_count, name)
    tags = pipeline_tags(s.name_prefix, STAGE_TUNING, dataset, version)
    request = build.create_tuning_job(s, name=name, dataset=dataset, region=clients.region(), tags=tags)
    try:
        clients.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    except client_error() as exc:
        if clients.error_code(exc) == "ResourceInUse":
            logger.info("tuning job already exists; nothing to start")
            return {"outcome": "already_started", "tuning_job": name, "dataset": dataset, "version": version}
        count(TUNING_FAILED)
        alert(f"could not start tuning job {name}", {"dataset": dataset, "error": clients.error_message(exc)})
        raise PipelineError(f"CreateHyperParameterTuningJob {name}: {clients.error_message(exc)}") from exc
    state.record_job(name, stage=STAGE_TUNING, dataset=dataset, version=version, status=IN_PROGRESS)
    count(TUNING_STARTED)
    logger.info("tuning job started")
    return {"outcome": "started", "tuning_job": name, "dataset": dataset, "version": version}


def check_quiet(now: float | None = None) -> list[dict[str, Any]]:
    """Scheduled: settle every pending data set whose uploads have gone quiet."""
    s = settings()
    now = time.time() if now is None else now
    results: list[dict[str, Any]] = []
    for item in store(s).pending_datasets():
        last = item.get("last_upload")
        if last is None or not quiet_period_elapsed(float(last), now, s.quiet_period_seconds):
            continue
        dataset = item["dataset"]
        try:
            results.append(settle_dataset(dataset, trigger="quiet"))
        except Exception:  # one broken data set must not block the others
            logger.exception("settling data set failed", extra={"dataset": dataset})
            results.append({"outcome": "error", "dataset": dataset})
    return results
