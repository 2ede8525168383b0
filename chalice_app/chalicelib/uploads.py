"""Uploads: record each object, settle a data set once it is complete, start its tuning job.

A data set is settled when its ``_READY`` marker arrives or, without one,
when its uploads have gone quiet (:func:`check_quiet`, scheduled). Settling
lists and validates the folder (:mod:`chalicelib.datasets`), reading the
first and last bytes of a bounded sample of its images (:func:`sniff_objects`),
and then, once per data set version, rejects it with an alert or starts one
tuning job (alerting the files it skipped, if any), within the cost guard's
budget (:mod:`chalicelib.budget`: rejected over it, stopping or queueing
behind the data set's running tuning job). Keys under ``batch/`` are not data
sets: they go to :mod:`chalicelib.batch_jobs` (batch predictions).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib import batch_jobs, budget, clients, naming
from chalicelib import sagemaker_requests as build
from chalicelib.batch import batch_job_of_key
from chalicelib.budget import Action
from chalicelib.config import Settings
from chalicelib.class_balance import class_counts, imbalances
from chalicelib.datasets import (
    HEAD_BYTES,
    TAIL_BYTES,
    LayoutReport,
    ObjectRef,
    dataset_of_key,
    is_marker,
    listing_digest,
    quiet_period_elapsed,
    sniff_problem,
    sniff_sample,
    validate_layout,
)
from chalicelib.decisions import STAGE_TUNING, pipeline_tags
from chalicelib.observability import DATASETS_ACCEPTED, DATASETS_REJECTED, TUNING_FAILED, TUNING_STARTED, UPLOADS_SEEN, logger
from chalicelib.lambda_runtime import PipelineError, alert, client_error, count, idempotent, log_keys, settings, store
from contract import IN_PROGRESS, TERMINAL_STATUSES

if TYPE_CHECKING:  # imported by app.py on first use: the data classes cost the predict route's cold start
    from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent


def handle_upload(event: S3EventBridgeNotificationEvent) -> dict[str, Any]:
    """S3 Object Created (via EventBridge): remember the upload; a marker settles the data set now."""
    s = settings()
    bucket, key = _bucket_and_key(event)
    if bucket != s.bucket:
        logger.info("upload in another bucket ignored", extra={"bucket": bucket, "key": key})
        return {"outcome": "ignored", "reason": "other bucket"}
    if batch_job_of_key(key) is not None:
        return batch_jobs.handle_batch_upload(event, key)
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


#: Parallel ranged GETs while sniffing: the Lambda waits on the network, not the CPU.
SNIFF_THREADS = 8


def _read_range(s3: Any, bucket: str, key: str, byte_range: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, Range=byte_range)["Body"].read()


def sniff_objects(s: Settings, sample: list[ObjectRef]) -> tuple[dict[str, str], int]:
    """First and last bytes of each sampled image: ``({key: why unreadable}, how many were checked)``.

    A small object is read whole (one GET), a larger one with two ranged GETs.
    An object that cannot be read now (deleted since the listing, access
    denied) is logged and left unjudged: a failed check must not reject a set.
    """
    if not sample:
        return {}, 0
    s3 = clients.client("s3")
    error = client_error()

    def check(obj: ObjectRef) -> tuple[str, str | None] | None:
        try:
            if obj.size <= HEAD_BYTES + TAIL_BYTES:
                data = _read_range(s3, s.bucket, obj.key, f"bytes=0-{obj.size - 1}")
                head, tail = data[:HEAD_BYTES], data[-TAIL_BYTES:]
            else:
                head = _read_range(s3, s.bucket, obj.key, f"bytes=0-{HEAD_BYTES - 1}")
                tail = _read_range(s3, s.bucket, obj.key, f"bytes=-{TAIL_BYTES}")
        except error as exc:
            logger.warning("could not check an image's bytes", extra={"key": obj.key, "error": clients.error_code(exc)})
            return None
        return obj.key, sniff_problem(head, tail, obj.size)

    with ThreadPoolExecutor(max_workers=min(SNIFF_THREADS, len(sample))) as pool:
        checked = [row for row in pool.map(check, sample) if row is not None]
    return {key: why for key, why in checked if why}, len(checked)


def _summary(report: LayoutReport, max_ratio: float) -> dict[str, Any]:
    """What a notification tells the uploader besides the verdict: counts, skipped files, warnings.

    Strong class imbalance (:mod:`chalicelib.class_balance`) is one more warning, never a reason.
    """
    imbalanced = imbalances(report.counts, max_ratio)
    return {  # the per-class counts last: they are the longest part, and a reader skims from the top
        "skipped_count": report.skipped_count,
        "skipped": [f"{key}: {why}" for key, why in report.skipped],
        "warnings": list(report.warnings) + [found.warning(max_ratio) for found in imbalanced],
        "imbalanced_splits": [found.split for found in imbalanced],
        "bad_share": report.bad_share,
        "counts": class_counts(report.counts),
    }


def settle_dataset(dataset: str, trigger: str) -> dict[str, Any]:
    """List, sniff and validate the data set, then start tuning or reject it, once per version."""
    s = settings()
    listed_at = time.time()
    objects = list_dataset(s, dataset)
    layout = {"data_prefix": s.data_prefix, "marker": s.ready_marker, "image_extensions": s.image_extensions}
    unreadable, sniffed, sniff = _sniff_once(s, dataset, objects, layout)
    report = validate_layout(
        dataset,
        objects,
        min_images_per_class=s.min_images_per_class,
        max_bad_share=s.max_bad_file_share,
        unreadable=unreadable,
        sniffed=sniffed,
        **layout,
    )
    log_keys(dataset, dataset_version=report.version)
    result = _settle_version(
        request={"dataset": dataset, "version": report.version},
        reasons=list(report.reasons),
        classes=list(report.classes),
        image_count=report.image_count,
        trigger=trigger,
        summary=_summary(report, s.imbalance_ratio),
    )
    store(s).settle(dataset, report.version, str(result.get("outcome")), listed_at, report.reasons, sniff)
    return result


def _sniff_once(
    s: Settings, dataset: str, objects: list[ObjectRef], layout: dict[str, Any]
) -> tuple[dict[str, str], int, dict[str, Any]]:
    """Sniff the sample, or reuse what the last settlement found when the listing is unchanged.

    Why: duplicate marker events and re-settlements list the same objects;
    their ETags and sizes are equal, so their bytes are, and re-reading them
    would only cost GETs and time.
    """
    digest = listing_digest(objects)
    previous = (store(s).uploads(dataset) or {}).get("sniff")
    if isinstance(previous, dict) and previous.get("listing") == digest and previous.get("limit") == s.sniff_max_objects:
        return dict(previous.get("unreadable") or {}), int(previous.get("sniffed", 0)), previous
    sample = sniff_sample(objects, dataset=dataset, limit=s.sniff_max_objects, **layout)
    unreadable, sniffed = sniff_objects(s, sample)
    return unreadable, sniffed, {"listing": digest, "limit": s.sniff_max_objects, "sniffed": sniffed,
                                 "unreadable": unreadable}


@idempotent("settle-dataset-version")
def _settle_version(
    request: dict[str, Any],
    reasons: list[str],
    classes: list[str],
    image_count: int,
    trigger: str,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Once per (data set, version): reject with an alert, or start one tuning job (alerting skipped files)."""
    s = settings()
    dataset, version = request["dataset"], request["version"]
    summary = summary or {}
    skipped = int(summary.get("skipped_count", 0))
    if reasons:
        count(DATASETS_REJECTED)
        logger.warning("data set rejected", extra={"reasons": reasons, "trigger": trigger, **summary})
        alert(
            f"data set {dataset} rejected",
            {"dataset": dataset, "version": version, "reasons": reasons,
             "what_to_do": "fix the layout and upload again", **summary},
        )
        return {"outcome": "rejected", "dataset": dataset, "version": version, "reasons": reasons}
    count(DATASETS_ACCEPTED)
    logger.info("data set accepted", extra={"classes": len(classes), "images": image_count, "trigger": trigger, **summary})
    if skipped or summary.get("warnings"):
        imbalanced = ", classes imbalanced" if summary.get("imbalanced_splits") else ""
        alert(
            f"data set {dataset} accepted, {skipped} files skipped{imbalanced}",
            {"dataset": dataset, "version": version, "images": image_count,
             "what_to_do": "nothing needed; replace the skipped files and upload again to train on them", **summary},
        )
    result = start_tuning(s, dataset, version, classes, image_count, summary.get("counts"))
    return {**result, "skipped_files": skipped} if skipped else result


def start_tuning(
    s: Settings, dataset: str, version: str, classes: list[str], image_count: int,
    counts: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Ask the cost guard (:mod:`chalicelib.budget`), then start, queue or reject this version's tuning job.

    ``counts`` (split -> class -> images) go on the version record beside its classes.
    """
    name = naming.tuning_job_name(s.name_prefix, dataset, version)
    log_keys(dataset, tuning_job=name)
    if _tuned_before(s, dataset, name):
        logger.info("this version was tuned before; nothing to start")
        return {"outcome": "already_started", "tuning_job": name, "dataset": dataset, "version": version}
    if s.supersede == "queue":
        _free_a_stale_slot(s, dataset, name)
    admission = budget.admit(s, dataset, version, name)
    if admission.action is Action.OVER_BUDGET:
        budget.reject_over_budget(s, dataset, version, name, admission)
    store(s).save_version(dataset, version, classes, image_count, name, class_counts=counts)
    if admission.action in (Action.QUEUE, Action.QUEUED):
        return budget.note_queued(s, dataset, version, name, admission)
    if admission.action is Action.SUPERSEDE:
        budget.stop_superseded(s, dataset, version, admission)
    else:
        budget.note_dropped(s, dataset, version, admission)
    result = create_tuning_job(s, dataset, version, name)
    return {**result, "superseded": admission.previous} if admission.action is Action.SUPERSEDE else result


def _tuned_before(s: Settings, dataset: str, name: str) -> bool:
    """The job of this version ran before (its content came back) and holds no slot: its name cannot start again.

    Why ask first: CreateHyperParameterTuningJob would answer ResourceInUse
    only after the cost guard had counted it, or stopped the running job for it.
    """
    state = store(s)
    if state.job(name) is None:
        return False
    item = state.budget(dataset) or {}
    return name not in (item.get("running"), item.get("queued"))


def _free_a_stale_slot(s: Settings, dataset: str, name: str) -> None:
    """Queue mode: a running job that SageMaker says has ended, whose end event never came, frees its slot now.

    Why: in queue mode only that event frees the slot, so a lost one would
    keep every later version waiting for good. One DescribeHyperParameterTuningJob
    when a version would wait; the lost end is alerted once (its final job, if
    it completed, was never started), and a version that waited starts as the
    event would have started it.
    """
    holder = str((store(s).budget(dataset) or {}).get("running") or "")
    if not holder or holder == name:
        return
    try:
        status = str(clients.client("sagemaker").describe_hyper_parameter_tuning_job(
            **build.describe_tuning_job(holder)).get("HyperParameterTuningJobStatus", ""))
    except client_error() as exc:
        if clients.error_code(exc) not in ("ResourceNotFound", "ValidationException"):
            raise
        status = "not found"
    if status not in (*TERMINAL_STATUSES, "not found"):
        return
    freed = budget.release(s, dataset, holder)
    if freed.item is None:
        return  # the event arrived meanwhile
    alert(
        f"tuning job {holder} ended without its event",
        {"dataset": dataset, "tuning_job": holder, "status": status, "what_to_do":
         "its slot is freed now. If it completed, its final training job was not started: change or add a file "
         "and upload the marker again for a new version, or see the on_tuning_state_change logs"},
    )
    if freed.next_job:
        start_queued(s, dataset, freed.next_version, freed.next_job)


def start_queued(s: Settings, dataset: str, version: str, name: str) -> dict[str, Any]:
    """Start the version that waited for the data set's running tuning job (it holds the slot already)."""
    logger.info("starting the queued version's tuning job", extra={"queued_job": name, "queued_version": version})
    return create_tuning_job(s, dataset, version, name)


def create_tuning_job(s: Settings, dataset: str, version: str, name: str) -> dict[str, Any]:
    """CreateHyperParameterTuningJob under a deterministic name; ResourceInUse means done already.

    A refusal gives the cost guard's slot and count back (:func:`budget.refund`),
    so a data set whose start failed is neither blocked nor charged for it.
    """
    state = store(s)
    tags = pipeline_tags(s.name_prefix, STAGE_TUNING, dataset, version)
    request = build.create_tuning_job(s, name=name, dataset=dataset, region=clients.region(), tags=tags)
    try:
        clients.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    except client_error() as exc:
        if clients.error_code(exc) == "ResourceInUse":
            logger.info("tuning job already exists; nothing to start")
            return {"outcome": "already_started", "tuning_job": name, "dataset": dataset, "version": version}
        budget.refund(s, dataset, name)
        count(TUNING_FAILED)
        alert(f"could not start tuning job {name}", {"dataset": dataset, "version": version, "error": clients.error_message(exc),
                                                    "what_to_do": "fix the cause, then upload the data set's marker again"})
        raise PipelineError(f"CreateHyperParameterTuningJob {name}: {clients.error_message(exc)}") from exc
    state.record_job(name, stage=STAGE_TUNING, dataset=dataset, version=version, status=IN_PROGRESS)
    count(TUNING_STARTED)
    logger.info("tuning job started")
    return {"outcome": "started", "tuning_job": name, "dataset": dataset, "version": version}


def check_quiet(now: float | None = None) -> list[dict[str, Any]]:
    """Scheduled: settle every pending data set whose uploads have gone quiet.

    Each pending item is checked on its own: one that is damaged or cannot
    be settled is logged, alerted once (:func:`_pending_failed`) and skipped,
    and the others still settle.
    """
    s = settings()
    now = time.time() if now is None else now
    results: list[dict[str, Any]] = []
    for item in store(s).pending_datasets():
        try:
            result = _check_pending(s, item, now)
        except Exception as exc:  # one broken data set must not block the others
            result = _pending_failed(s, item, exc, now)
        if result is not None:
            results.append(result)
    return results


def _upload_epoch(value: Any) -> float | None:
    """``last_upload`` as epoch seconds; a damaged item (a string, a list...) raises TypeError saying so."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"last_upload is {type(value).__name__} {str(value)[:60]!r}, not a number of seconds")
    return float(value)


def _check_pending(s: Settings, item: dict[str, Any], now: float) -> dict[str, Any] | None:
    last = _upload_epoch(item.get("last_upload"))
    if last is None or not quiet_period_elapsed(last, now, s.quiet_period_seconds):
        return None
    return settle_dataset(item["dataset"], trigger="quiet")


def _pending_failed(s: Settings, item: dict[str, Any], exc: Exception, now: float) -> dict[str, Any]:
    """Log the failure every time, alert it once per distinct problem (the check runs every minute)."""
    dataset = str(item.get("dataset", "?"))
    # The error code, not the message, of an AWS error: messages carry request ids and would alert every minute.
    problem = f"{type(exc).__name__}: {clients.error_code(exc) or str(exc)}"[:500]
    logger.exception("pending data set skipped", extra={"dataset": dataset, "problem": problem})
    try:
        if store(s).note_problem(dataset, problem, now):
            alert(
                f"data set {dataset} cannot be settled",
                {"dataset": dataset, "problem": problem, "what_to_do":
                 "upload a file again (that repairs a damaged upload record) or see the check_quiet_datasets logs; "
                 "this alert is not repeated until the problem changes"},
            )
    except Exception:  # the state table or SNS is failing too: the log line above is all we can do
        logger.exception("could not record or alert the problem", extra={"dataset": dataset})
    return {"outcome": "error", "dataset": dataset, "problem": problem}
