"""The cost guard: at most K tuning jobs per data set per UTC day, and at most one running (issue 15, item 16).

Why: every new data set version starts a tuning job of up to
``BREEDLINE_MAX_JOBS`` trials on GPU instances, each up to
``BREEDLINE_MAX_RUNTIME_SECONDS``, and nothing capped how many, nor stopped
two versions of one data set from tuning at once.

One state item per data set (``DATASET#<name>`` / ``BUDGET``) holds the UTC
day, how many tuning jobs were accepted that day (started, or queued), the
running job and, with ``BREEDLINE_SUPERSEDE=queue``, the newest waiting one.
Every change is read, decided by a pure function (:func:`plan_admission`,
:func:`plan_release`, :func:`plan_refund`) and written back with a
compare-and-set on the item's ``rev`` (:meth:`StateStore.put_budget`); a
Lambda whose write lost reads again and decides again. So two Lambdas
settling two versions at once cannot both take the running slot, and a
duplicate or late event that does not hold the slot changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NoReturn

from chalicelib import clients
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.lambda_runtime import NotYet, PipelineError, alert, client_error, count, settings, store
from chalicelib.observability import TUNING_OVER_BUDGET, logger

#: The clock of every budget decision (tests move it to the next day).
clock: Callable[[], float] = time.time
#: Compare-and-set attempts before giving up (each lost one means another Lambda just wrote the item).
ATTEMPTS = 8


def utc_day(epoch: float) -> str:
    """The UTC calendar day of ``epoch``, ``2026-12-02``: the budget's window."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")


def frees_at(day: str) -> str:
    """When the budget of ``day`` frees: the next UTC midnight, ``2026-12-03T00:00:00Z``."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Action(str, Enum):
    """What :func:`plan_admission` decided for a version that wants to tune."""

    START = "start"  # the slot was free: this job takes it
    DUPLICATE = "duplicate"  # this job holds the slot already (a retry): create it again
    SUPERSEDE = "supersede"  # stop the running job; this one takes the slot
    QUEUE = "queue"  # wait for the running job (replacing an older waiting version)
    QUEUED = "queued"  # this job is waiting already (a duplicate): nothing to do
    OVER_BUDGET = "over_budget"  # the day's budget is spent: reject


@dataclass(frozen=True)
class Admission:
    """A decision and the budget item to write for it (None: write nothing)."""

    action: Action
    item: dict[str, Any] | None
    day: str
    started: int  # tuning jobs accepted on ``day``, this one included when it was accepted
    holder: str = ""  # the job running when this one arrived
    previous: str = ""  # the job stopped (SUPERSEDE) or dropped from the queue
    previous_version: str = ""


def _started(item: dict[str, Any], day: str) -> int:
    return int(item.get("started", 0)) if item.get("day") == day else 0


def plan_admission(
    item: dict[str, Any] | None, *, job: str, version: str, now: float, limit: int, supersede: str
) -> Admission:
    """Decide what a version that passed validation may do; pure.

    The budget is checked before the slot: a version over the budget never
    stops the running one. Replacing a waiting version costs nothing (only
    one of the two will ever run), so it is allowed even when the day's
    budget is spent; every other acceptance counts one.
    """
    current = dict(item or {})
    day = utc_day(now)
    started = _started(current, day)
    running, queued = current.get("running") or "", current.get("queued") or ""
    if running == job:
        return Admission(Action.DUPLICATE, None, day, started, holder=running)
    if queued == job:
        return Admission(Action.QUEUED, None, day, started, holder=running)
    if running and queued and supersede == "queue":
        new = {**current, "queued": job, "queued_version": version}
        return Admission(
            Action.QUEUE, new, day, started, running, queued, str(current.get("queued_version", ""))
        )
    if started >= limit:
        return Admission(Action.OVER_BUDGET, None, day, started, holder=running)
    new = {**current, "day": day, "started": started + 1}
    if running and supersede == "queue":
        new.update(queued=job, queued_version=version)
        return Admission(Action.QUEUE, new, day, started + 1, holder=running)
    # the slot is free, or the running job is superseded; a version left waiting (see plan_refund) is older
    new.update(running=job, running_version=version, queued=None, queued_version=None)
    if running:
        return Admission(
            Action.SUPERSEDE, new, day, started + 1, running, running, str(current.get("running_version", ""))
        )
    return Admission(Action.START, new, day, started + 1, "", queued, str(current.get("queued_version", "")))


@dataclass(frozen=True)
class Release:
    """What a tuning job's end frees: the item to write (None: the job held no slot) and the job to start next."""

    item: dict[str, Any] | None
    next_job: str = ""
    next_version: str = ""


def plan_release(item: dict[str, Any] | None, job: str) -> Release:
    """The running ``job`` ended: the waiting version, if any, takes the slot; pure.

    A job that does not hold the slot (a superseded one, a duplicate or late
    event after the slot moved on) frees nothing.
    """
    current = dict(item or {})
    if not job or current.get("running") != job:
        return Release(None)
    queued, queued_version = str(current.get("queued") or ""), str(current.get("queued_version") or "")
    new = {
        **current,
        "running": queued or None,
        "running_version": queued_version or None,
        "queued": None,
        "queued_version": None,
    }
    return Release(new, queued, queued_version)


def plan_refund(item: dict[str, Any] | None, job: str, now: float) -> dict[str, Any] | None:
    """CreateHyperParameterTuningJob failed for ``job``: give back its slot and, the same day, its count; pure.

    A waiting version stays waiting: the next version to arrive supersedes it
    (:func:`plan_admission` clears it when it takes the free slot).
    """
    current = dict(item or {})
    if current.get("running") != job:
        return None
    new = {**current, "running": None, "running_version": None}
    if current.get("day") == utc_day(now):
        new["started"] = max(0, int(current.get("started", 0)) - 1)
    return new


def _rev(item: dict[str, Any] | None) -> int | None:
    return None if item is None else int(item.get("rev", 0))


def admit(s: Settings, dataset: str, version: str, job: str) -> Admission:
    """Read, plan and compare-and-set until this Lambda's decision is the one written."""
    state = store(s)
    for _ in range(ATTEMPTS):
        item = state.budget(dataset)
        plan = plan_admission(
            item,
            job=job,
            version=version,
            now=clock(),
            limit=s.max_tuning_jobs_per_day,
            supersede=s.supersede,
        )
        if plan.item is None or state.put_budget(dataset, plan.item, _rev(item)):
            logger.info(
                "tuning budget",
                extra={
                    "budget_action": plan.action.value,
                    "started_today": plan.started,
                    "limit": s.max_tuning_jobs_per_day,
                    "running": plan.holder,
                },
            )
            return plan
    raise PipelineError(f"the budget item of {dataset} kept changing; Lambda's retry decides again")


def release(s: Settings, dataset: str, job: str) -> Release:
    """Free the slot ``job`` holds (it reached a terminal state); the returned next job is the caller's to start."""
    state = store(s)
    for _ in range(ATTEMPTS):
        item = state.budget(dataset)
        plan = plan_release(item, job)
        if plan.item is None or state.put_budget(dataset, plan.item, _rev(item)):
            return plan
    raise PipelineError(f"the budget item of {dataset} kept changing; Lambda's retry decides again")


def refund(s: Settings, dataset: str, job: str) -> None:
    """Give back the slot and count of a job SageMaker refused to create (so a later retry is not over budget)."""
    state = store(s)
    for _ in range(ATTEMPTS):
        item = state.budget(dataset)
        new = plan_refund(item, job, clock())
        if new is None or state.put_budget(dataset, new, _rev(item)):
            return
    logger.error("could not give back the tuning slot", extra={"tuning_job": job})


def reject_over_budget(s: Settings, dataset: str, version: str, job: str, admission: Admission) -> NoReturn:
    """Record, count and alert (once per version and day) a version over the day's budget; raise NotYet.

    Why NotYet: being over budget is not a final answer. Powertools must not
    remember it for 24 h, or the uploader's retry after the window (the
    marker uploaded again) would replay the rejection.
    """
    limit = s.max_tuning_jobs_per_day
    when = frees_at(admission.day)
    reason = (
        f"over budget: {admission.started} of {limit} tuning jobs for {dataset} already accepted on "
        f"{admission.day} (UTC); the budget frees at {when}"
    )
    result = {
        "outcome": "over_budget",
        "dataset": dataset,
        "version": version,
        "tuning_job": job,
        "count": admission.started,
        "limit": limit,
        "frees_at": when,
        "reason": reason,
    }
    if store(s).note_version(dataset, version, "rejected", reason, admission.day):
        count(TUNING_OVER_BUDGET)
        alert(
            f"data set {dataset} rejected: tuning budget spent",
            {
                "dataset": dataset,
                "version": version,
                "count": admission.started,
                "limit": limit,
                "day": admission.day,
                "frees_at": when,
                "running": admission.holder,
                "what_to_do": f"nothing is lost: the data stays in s3://{s.bucket}/{s.data_prefix}{dataset}/. Upload "
                f"{s.data_prefix}{dataset}/{s.ready_marker} again after {when} to tune this version, "
                "or raise BREEDLINE_MAX_TUNING_JOBS_PER_DAY",
            },
        )
    else:
        logger.info("over budget again; alerted already today", extra={"reason": reason})
    raise NotYet(result)


def note_queued(s: Settings, dataset: str, version: str, job: str, admission: Admission) -> dict[str, Any]:
    """Say on the version records that ``version`` waits and which older waiting version it dropped."""
    state = store(s)
    state.note_version(dataset, version, "queued", f"waits for tuning job {admission.holder}", admission.day)
    result = {
        "outcome": "queued",
        "dataset": dataset,
        "version": version,
        "tuning_job": job,
        "waits_for": admission.holder,
    }
    if admission.previous:
        state.note_version(
            dataset,
            admission.previous_version,
            "dropped",
            f"superseded by version {version} while waiting; never started",
            admission.day,
        )
        logger.warning(
            "older waiting version dropped",
            extra={"dropped_version": admission.previous_version, "dropped_job": admission.previous},
        )
        result["dropped_version"] = admission.previous_version
    return result


def note_dropped(s: Settings, dataset: str, version: str, admission: Admission) -> None:
    """A version that waited behind a job whose start failed is dropped by the newer one taking the slot."""
    if admission.previous:
        store(s).note_version(
            dataset,
            admission.previous_version,
            "dropped",
            f"superseded by version {version} while waiting; never started",
            admission.day,
        )


def stop_superseded(s: Settings, dataset: str, version: str, admission: Admission) -> None:
    """Stop the running tuning job ``version`` supersedes; it is marked first, so its Stopped event alerts nothing.

    A job that already ended (SageMaker refuses to stop it) is fine: its end
    event, marked superseded, starts nothing. Any other refusal is alerted
    with the command that stops it by hand, and the newer version still starts.
    """
    old = admission.previous
    state = store(s)
    state.mark_superseded(old, version)
    state.note_version(
        dataset,
        admission.previous_version,
        "superseded",
        f"tuning job {old} stopped: superseded by version {version}",
        admission.day,
    )
    try:
        clients.client("sagemaker").stop_hyper_parameter_tuning_job(**build.stop_tuning_job(old))
    except client_error() as exc:
        code = clients.error_code(exc)
        if code in ("ValidationException", "ResourceNotFound"):
            logger.info(
                "superseded tuning job was not running",
                extra={"superseded": old, "error": clients.error_message(exc)},
            )
            return
        alert(
            f"could not stop superseded tuning job {old}",
            {
                "dataset": dataset,
                "tuning_job": old,
                "superseded_by": version,
                "error": clients.error_message(exc),
                "what_to_do": f"aws sagemaker stop-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name {old}",
            },
        )
        return
    logger.info("superseded tuning job stopped", extra={"superseded": old, "superseded_by": version})


def superseded_by(name: str) -> str:
    """The version that superseded tuning job ``name``, or ''."""
    return str((store(settings()).job(name) or {}).get("superseded_by") or "")
