"""A transform job's end: its ``.out`` files joined into ``results.jsonl``, a summary, a notification.

Only transform jobs this pipeline started count: tagged with our pipeline,
stage ``batch`` and this stage's bucket (ListTags when the event carries no
tags). Each end is handled once: the step is idempotent on (job, status), and
the job's state record moves only forward (:meth:`chalicelib.state.StateStore.record_job`),
so a duplicate, a late event after another end, or a foreign job changes nothing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from contract import COMPLETED, TERMINAL_STATUSES

from chalicelib import clients
from chalicelib import sagemaker_requests as build
from chalicelib.batch import (
    MANIFEST_FILE,
    OUTPUT_FOLDER,
    OUTPUT_SUFFIX,
    RESULTS_FILE,
    STAGE_BATCH,
    SUMMARY_FILE,
    TAG_BATCH_JOB,
    TAG_BUCKET,
    input_prefix,
    results_folder,
)
from chalicelib.batch_jobs import SKIPPED_FILE, list_objects, put_json
from chalicelib.batch_results import headline, join, jsonl, summarize
from chalicelib.config import Settings
from chalicelib.decisions import TAG_PIPELINE, TAG_STAGE, event_time_ms, tags_to_dict
from chalicelib.deployment import history_kept
from chalicelib.lambda_runtime import alert, client_error, count, idempotent, log_keys, settings, store
from chalicelib.observability import BATCH_COMPLETED, BATCH_FAILED, BATCH_IMAGES_FAILED, logger
from chalicelib.state import JobChange

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

#: Parallel GETs of the ``.out`` objects: the Lambda waits on S3, not on its CPU.
READ_THREADS = 16


def handle_transform_event(event: EventBridgeEvent) -> dict[str, Any]:
    """Transform job state change: a terminal status of one of our batches is joined and notified once."""
    s = settings()
    detail = event.get("detail") or {}
    name = str(detail.get("TransformJobName", ""))
    status = str(detail.get("TransformJobStatus", ""))
    tags = tags_to_dict(detail.get("Tags"))
    if not tags and name.startswith(f"{s.name_prefix}-") and detail.get("TransformJobArn"):
        listed = clients.client("sagemaker").list_tags(**build.list_tags(str(detail["TransformJobArn"])))
        tags = tags_to_dict(listed.get("Tags", []))
    ours = (tags.get(TAG_PIPELINE), tags.get(TAG_STAGE), tags.get(TAG_BUCKET)) == (s.name_prefix, STAGE_BATCH, s.bucket)
    if not ours or not tags.get(TAG_BATCH_JOB):
        logger.info("transform job is not one of our batches; ignored", extra={"transform_job": name})
        return {"outcome": "ignored", "reason": "not ours", "transform_job": name}
    job = tags[TAG_BATCH_JOB]
    log_keys(None, batch_job=job, transform_job=name)
    if status not in TERMINAL_STATUSES:
        return {"outcome": "ignored", "reason": f"status {status}", "transform_job": name}
    return finish_batch(request={"transform_job": name, "status": status}, batch_job=job,
                        reason=str(detail.get("FailureReason") or ""), event_ms=event_time_ms(event.get("time"), detail))


@idempotent("finish-batch")
def finish_batch(request: dict[str, Any], batch_job: str, reason: str = "", event_ms: int | None = None) -> dict[str, Any]:
    """Record the end (refused when the job already ended otherwise), join the outputs, write and notify."""
    s = settings()
    name, status = request["transform_job"], request["status"]
    state = store(s)
    version = str((state.job(name) or {}).get("version", ""))
    if status != COMPLETED and not reason:
        reason = _failure_reason(name)
    change = state.record_job(name, stage=STAGE_BATCH, dataset=batch_job, version=version, status=status,
                              reason=reason, event_ms=event_ms)
    if change is JobChange.REFUSED:
        return history_kept(name, status, state.job(name))
    if change is JobChange.SAME and (state.job(name) or {}).get("alerted") == status:
        logger.info("duplicate transform job state change; already joined and notified")
        return {"outcome": "duplicate", "transform_job": name, "status": status}
    summary = write_results(s, batch_job, name, status, reason)
    count(BATCH_COMPLETED if status == COMPLETED else BATCH_FAILED)
    count(BATCH_IMAGES_FAILED, summary["failed"])
    if status == COMPLETED:
        notify(s, headline(summary), summary)
    else:
        alert(headline(summary), summary)
    state.mark_alerted(name, status)  # after the notification: a retry of a failed one notifies again
    return {"outcome": status.lower(), **{k: summary[k] for k in ("transform_job", "total", "predicted", "failed")}}


def _failure_reason(name: str) -> str:
    """DescribeTransformJob's FailureReason, for an event that came without one."""
    try:
        described = clients.client("sagemaker").describe_transform_job(**build.describe_transform_job(name))
    except client_error():
        logger.exception("could not read the transform job's failure reason")
        return ""
    return str(described.get("FailureReason") or "")


def _read_json(s: Settings, key: str, default: Any) -> Any:
    try:
        body = clients.client("s3").get_object(Bucket=s.bucket, Key=key)["Body"].read()
    except client_error() as exc:
        logger.warning("batch file missing", extra={"key": key, "error": clients.error_code(exc)})
        return default
    return json.loads(body)


def read_outputs(s: Settings, folder: str) -> dict[str, bytes]:
    """Every ``<rel>.out`` under the job's output folder, by ``<rel>`` (parallel GETs)."""
    base = folder + OUTPUT_FOLDER
    keys = [o.key for o in list_objects(s, base) if o.key.endswith(OUTPUT_SUFFIX)]
    s3 = clients.client("s3")

    def read(key: str) -> tuple[str, bytes]:
        return key[len(base):-len(OUTPUT_SUFFIX)], s3.get_object(Bucket=s.bucket, Key=key)["Body"].read()

    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(keys))) as pool:
        return dict(pool.map(read, keys))


def write_results(s: Settings, batch_job: str, name: str, status: str, reason: str) -> dict[str, Any]:
    """``results.jsonl`` (one line per manifest image) and ``summary.json``; returns the summary."""
    folder = results_folder(batch_job, name)
    files = [entry for entry in _read_json(s, folder + MANIFEST_FILE, [])[1:] if isinstance(entry, str)]
    skipped = _read_json(s, folder + SKIPPED_FILE, [])
    lines = join(files, read_outputs(s, folder), input_prefix=input_prefix(batch_job))
    s3 = clients.client("s3")
    s3.put_object(Bucket=s.bucket, Key=folder + RESULTS_FILE, Body=jsonl(lines), ContentType="application/x-ndjson")
    summary = summarize(job=batch_job, transform_job=name, status=status, lines=lines, skipped=len(skipped),
                        results_uri=f"s3://{s.bucket}/{folder}{RESULTS_FILE}", failure_reason=reason)
    put_json(s, folder + SUMMARY_FILE, summary)
    logger.info("batch results written", extra={"summary": summary})
    return summary


def notify(s: Settings, subject: str, summary: dict[str, Any]) -> bool:
    """A finished batch's summary on the notification topic (an alert is for what went wrong; this is not)."""
    logger.info(f"NOTIFY: {subject}", extra={"summary": summary})
    if not s.alert_topic_arn:
        return False
    clients.client("sns").publish(TopicArn=s.alert_topic_arn, Subject=f"Breedline: {subject}"[:100],
                                  Message=json.dumps(summary, indent=1))
    return True
