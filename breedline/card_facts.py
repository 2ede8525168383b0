"""What a model card says beyond the job report: the gate's decision and the data set's facts.

Why apart from :mod:`breedline.model_card` (the page): these are the reads of
other services, each of which may fail (no state table, no access, the data
set's objects gone after ``up --keep-state``); each failure becomes a line on
the card, never a missing card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import COMPLETED, FAILED, STOPPED

from breedline.job_evaluation import number
from breedline.local.s3_transfers import split_s3_uri

#: Tags the app puts on every job (chalicelib.decisions.TAG_DATASET / TAG_VERSION).
TAG_DATASET, TAG_VERSION = "breedline:dataset", "breedline:version"
SPLITS = ("train", "valid", "test")


@dataclass
class GateFacts:
    """What the app decided about this job: ``deployed``, ``replaced``, ``rejected``, ``pending`` or ``unknown``."""

    decision: str
    reason: str
    live_model: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetFacts:
    """The data set name and version (the job's tags) and image counts per split and class."""

    dataset: str | None = None
    version: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    counts_source: str = ""


def gate_facts(state: Any, name: str) -> GateFacts:
    """The gate's decision from the app's state table: the job's record and the live model's.

    The app writes ``not deployed: <reason>`` into the job's record when the
    gate (or a blocking Debugger rule) keeps a model out, and makes a model
    that passes the live model; there is no other record of a pass.
    """
    if state is None:
        return GateFacts("unknown", "the app's state table was not given to the report")
    try:
        record = state.job(name)
        live = state.live_model()
    except Exception as exc:  # noqa: BLE001 - no table, no access: the card says so
        return GateFacts("unknown", f"the app's state table could not be read: {type(exc).__name__}: {exc}")
    live_name = (live or {}).get("training_job")
    reason = str((record or {}).get("reason") or "")
    if live and live_name == name:
        details = {
            k: live.get(k)
            for k in (
                "model",
                "endpoint",
                "endpoint_config",
                "accuracy",
                "labels",
                "previous_model",
                "deployed_at",
            )
            if live.get(k) not in (None, "")
        }
        return GateFacts(
            "deployed", reason or "passed the quality gate: this is the live model", name, details
        )
    if reason.startswith("not deployed"):
        return GateFacts("rejected", reason.split(":", 1)[-1].strip() or reason, live_name)
    if live and live.get("previous_model") == name:
        return GateFacts("replaced", f"was deployed; since replaced by {live_name}", live_name)
    if record is None:
        return GateFacts(
            "unknown",
            "the app has no record of this job (not a pipeline final job, or another account's)",
            live_name,
        )
    status = record.get("status")
    if status in (FAILED, STOPPED):
        return GateFacts("rejected", f"the job ended {status}: {reason or 'no reason recorded'}", live_name)
    if status == COMPLETED:
        return GateFacts(
            "pending",
            "the job completed; the app has recorded no gate decision yet"
            + (f" (live model: {live_name})" if live_name else ""),
            live_name,
        )
    return GateFacts("pending", f"the job is {status}; the gate runs when it completes", live_name)


def dataset_facts(sm: Any, s3: Any, job: dict[str, Any], evaluation: Any, notes: list[str]) -> DatasetFacts:
    """Name and version from the job's tags; images per split and class counted in its S3 channels."""
    facts = DatasetFacts()
    try:
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=job["TrainingJobArn"]).get("Tags", [])}
        facts.dataset, facts.version = tags.get(TAG_DATASET), tags.get(TAG_VERSION)
    except Exception as exc:  # noqa: BLE001 - tags are a nicety; the rest of the card stands
        notes.append(f"the job's tags could not be read: {type(exc).__name__}: {exc}")
    try:
        facts.counts = channel_counts(s3, job)
        facts.counts_source = "objects in each channel's S3 prefix (InputDataConfig), <class>/<file>"
    except Exception as exc:  # noqa: BLE001 - objects gone (a reloaded runtime) or no access
        notes.append(f"the data set's objects could not be counted: {type(exc).__name__}: {exc}")
    if not any(facts.counts.values()) and evaluation is not None:
        test = {str(r["class"]): int(number(r.get("support")) or 0) for r in evaluation.per_class}
        if test:
            facts.counts = {"test": test}
            facts.counts_source = "test support in evaluation.json (the channels' objects were not there)"
    return facts


def channel_counts(s3: Any, job: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{split: {class: files}}`` over ``<channel>/<class>/<file>`` keys; hidden and ``_`` names left out."""
    counts: dict[str, dict[str, int]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for channel in job.get("InputDataConfig") or []:
        split = channel.get("ChannelName")
        uri = ((channel.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
        if split not in SPLITS or not uri:
            continue
        bucket, prefix = split_s3_uri(uri)
        prefix = prefix.rstrip("/") + "/"
        per_class: dict[str, int] = {}
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                parts = item["Key"][len(prefix) :].split("/")
                if len(parts) == 2 and all(p and not p.startswith((".", "_")) for p in parts):
                    per_class[parts[0]] = per_class.get(parts[0], 0) + 1
        counts[split] = dict(sorted(per_class.items()))
    return counts


def state_store(dynamodb: Any, table: str) -> Any:
    """The app's state store (:class:`chalicelib.state.StateStore`) on ``table``, read-only use."""
    from chalicelib.state import StateStore  # type: ignore[import-not-found]

    return StateStore(dynamodb, table)
