"""A batch's ``_READY`` marker starts one Batch Transform job on the live model.

Why here and not in :mod:`chalicelib.uploads`: a batch is not a data set. It
is never validated for training, never debounced (only its marker starts it)
and never tuned; it only needs its images listed, a manifest written and one
CreateTransformJob. The upload handler hands every ``batch/`` key to
:func:`handle_batch_upload`.

Idempotent twice, as the rest of the pipeline: the step is keyed on (batch,
marker version, listing digest, live model), and the transform job's name is
derived from the same values (:func:`chalicelib.naming.transform_job_name`), so a
duplicate marker event starts nothing new (ResourceInUse).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from contract import IN_PROGRESS

from chalicelib import clients, naming
from chalicelib import sagemaker_requests as build
from chalicelib.batch import (
    MANIFEST_FILE,
    NO_IMAGES,
    NO_LIVE_MODEL,
    STAGE_BATCH,
    SUMMARY_FILE,
    TAG_BATCH_JOB,
    TAG_BUCKET,
    BatchListing,
    batch_job_of_key,
    input_prefix,
    is_batch_marker,
    list_batch,
    manifest,
    results_folder,
)
from chalicelib.batch_results import summarize
from chalicelib.config import Settings
from chalicelib.datasets import ObjectRef
from chalicelib.decisions import TAG_PIPELINE, TAG_STAGE
from chalicelib.lambda_runtime import (
    NotYet,
    PipelineError,
    alert,
    client_error,
    count,
    idempotent,
    log_keys,
    settings,
    store,
)
from chalicelib.observability import BATCH_FAILED, BATCH_STARTED, logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent

#: The file beside the manifest that lists what the batch left out, for the summary at the end.
SKIPPED_FILE = "skipped.json"


def batch_tags(s: Settings, batch_job: str) -> list[dict[str, str]]:
    """The transform job's tags: ours (pipeline, stage ``batch``), the batch it reads and its bucket."""
    return [
        {"Key": TAG_PIPELINE, "Value": s.name_prefix},
        {"Key": TAG_STAGE, "Value": STAGE_BATCH},
        {"Key": TAG_BATCH_JOB, "Value": batch_job},
        {"Key": TAG_BUCKET, "Value": s.bucket},
    ]


def marker_version(event: S3EventBridgeNotificationEvent) -> str:
    """The marker object's version id, else its ETag: a new upload of the marker is a new batch run.

    Either spelling of the ETag field: AWS's event writes ``etag``, moto's ``eTag``.
    """
    try:
        obj = event.detail.object
    except (KeyError, TypeError, AttributeError):
        return ""
    return str(obj.get("version-id") or obj.get("etag") or obj.get("eTag") or "").strip('"')


def handle_batch_upload(event: S3EventBridgeNotificationEvent, key: str) -> dict[str, Any]:
    """An object under ``batch/``: its marker lists the batch and starts it; anything else waits for the marker."""
    s = settings()
    job = str(batch_job_of_key(key))
    log_keys(None, batch_job=job, key=key)
    if not is_batch_marker(key, s.ready_marker):
        return {"outcome": "ignored", "reason": "batch image; the batch starts at its marker", "batch_job": job}
    objects = list_objects(s, input_prefix(job))
    listing = list_batch(job, objects, s.ready_marker, s.image_extensions)
    logger.info("batch marker seen", extra={"images": len(listing.images), "skipped": len(listing.skipped)})
    # the live model is part of the request: the same images after a new model is live are a new run
    model = str((store(s).live_model() or {}).get("model") or "")
    request = {"batch_job": job, "marker": marker_version(event), "listing": listing.digest, "model": model}
    return start_batch(request=request, listing=listing)


def list_objects(s: Settings, prefix: str) -> list[ObjectRef]:
    """Every object under ``prefix`` in the data bucket (paginated)."""
    paginator = clients.client("s3").get_paginator("list_objects_v2")
    return [
        ObjectRef(key=obj["Key"], size=int(obj.get("Size", 0)), etag=str(obj.get("ETag", "")))
        for page in paginator.paginate(Bucket=s.bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def put_json(s: Settings, key: str, body: Any) -> None:
    clients.client("s3").put_object(Bucket=s.bucket, Key=key, Body=json.dumps(body, indent=1).encode(),
                                    ContentType="application/json")


@idempotent("start-batch")
def start_batch(request: dict[str, Any], listing: BatchListing) -> dict[str, Any]:
    """Once per (batch, marker, listing, live model): refuse with a summary and an alert, or start the transform job."""
    s = settings()
    job = request["batch_job"]
    model = request["model"]
    name = naming.transform_job_name(s.name_prefix, job, request["marker"], request["listing"], model)
    folder = results_folder(job, name)
    log_keys(None, transform_job=name)
    if listing.problem or not model:
        raise NotYet(_refuse(s, job, name, listing, NO_IMAGES if listing.problem else NO_LIVE_MODEL))
    put_json(s, folder + SKIPPED_FILE, [{"file": file, "why": why} for file, why in listing.skipped])
    put_json(s, folder + MANIFEST_FILE, manifest(s.bucket, listing))
    params = build.create_transform_job(s, name=name, batch_job=job, model_name=model, tags=batch_tags(s, job))
    try:
        clients.client("sagemaker").create_transform_job(**params)
    except client_error() as exc:
        if clients.error_code(exc) == "ResourceInUse":
            logger.info("transform job already exists; nothing to start")
            return {"outcome": "already_started", "transform_job": name, "batch_job": job}
        count(BATCH_FAILED)
        alert(f"could not start batch {job}", {"batch_job": job, "transform_job": name,
                                               "error": clients.error_message(exc),
                                               "what_to_do": "fix the cause, then upload the batch's marker again"})
        raise PipelineError(f"CreateTransformJob {name}: {clients.error_message(exc)}") from exc
    store(s).record_job(name, stage=STAGE_BATCH, dataset=job, version=listing.digest, status=IN_PROGRESS)
    count(BATCH_STARTED)
    logger.info("transform job started", extra={"model": model, "images": len(listing.images)})
    return {"outcome": "started", "transform_job": name, "batch_job": job, "model": model,
            "images": len(listing.images), "skipped": len(listing.skipped)}


def _refuse(s: Settings, job: str, name: str, listing: BatchListing, status: str) -> dict[str, Any]:
    """No live model or nothing to predict: ``summary.json`` says why, an alert tells the operator; nothing starts.

    Raised as :class:`~chalicelib.lambda_runtime.NotYet` by the caller, so no
    idempotency record keeps the refusal: the same marker uploaded again once
    a model is live starts the batch.
    """
    reason = listing.problem if status == NO_IMAGES else (
        "no live model: nothing is deployed yet; once a model is live, upload the batch's marker again")
    summary = summarize(job=job, transform_job=name, status=status, lines=[], skipped=len(listing.skipped),
                        results_uri=None, failure_reason=str(reason))
    put_json(s, results_folder(job, name) + SUMMARY_FILE, summary)
    logger.warning("batch refused; no transform job started", extra={"status": status, "reason": reason})
    count(BATCH_FAILED)
    alert(f"batch {job} not started: {status}", {**summary, "skipped_files": [f"{f}: {w}" for f, w in listing.skipped[:50]]})
    return {"outcome": status, "transform_job": name, "batch_job": job, "reason": reason}
