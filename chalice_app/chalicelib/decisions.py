"""Pure decisions on SageMaker events and results: is it ours, how good is it, deploy or not.

Why pure: each of these is a place where a wrong answer costs money (a
deployment of a tuning trial, a worse model going live), so each is a small
function with its own tests, fed by the documented event shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping

from contract import RULE_NAMES, rule_metric_name

TAG_PIPELINE = "breedline:pipeline"
TAG_STAGE = "breedline:stage"
TAG_DATASET = "breedline:dataset"
TAG_VERSION = "breedline:version"
STAGE_TUNING = "tuning"
STAGE_TRAINING = "training"

#: The metric the quality gate reads from FinalMetricDataList.
GATE_METRIC = "test_accuracy"


class Relevance(str, Enum):
    """What a training or tuning job event is to this pipeline."""

    OURS = "ours"  # a final training job (or tuning job) this pipeline launched
    TRIAL = "trial"  # a training job launched by one of our tuning jobs
    FOREIGN = "foreign"  # anything else in the account
    LOOKUP = "lookup"  # no tags in the event but our name: ask ListTags


def pipeline_tags(prefix: str, stage: str, dataset: str, version: str) -> list[dict[str, str]]:
    """Tags on every job, model and endpoint the pipeline creates.

    SageMaker copies a tuning job's tags to its trial jobs, so trials carry
    ``breedline:stage=tuning`` and can never pass for a final job.
    """
    return [
        {"Key": TAG_PIPELINE, "Value": prefix},
        {"Key": TAG_STAGE, "Value": stage},
        {"Key": TAG_DATASET, "Value": dataset},
        {"Key": TAG_VERSION, "Value": version},
    ]


def tags_to_dict(tags: Any) -> dict[str, str]:
    """Events carry tags as a map; the API as ``[{"Key", "Value"}]``. Accept both."""
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {str(t["Key"]): str(t.get("Value", "")) for t in tags if isinstance(t, Mapping) and "Key" in t}
    return {}


def _trial_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-.*-\d{{3}}-[0-9a-f]{{8}}$")


def classify_training_job(name: str, tags: Mapping[str, str], prefix: str) -> Relevance:
    """Decide whether a training job is this pipeline's final job.

    Tags decide when present. Without tags (an event that omits them) the name
    decides what it safely can: a trial-shaped or foreign name is final, a
    final-shaped name needs a ListTags call before anything is deployed.
    """
    if tags.get(TAG_PIPELINE) == prefix:
        stage = tags.get(TAG_STAGE)
        if stage == STAGE_TRAINING and name.endswith("-final"):
            return Relevance.OURS
        if stage == STAGE_TUNING:
            return Relevance.TRIAL
        return Relevance.FOREIGN
    if TAG_PIPELINE in tags or not name.startswith(prefix + "-"):
        return Relevance.FOREIGN
    if _trial_pattern(prefix).match(name):
        return Relevance.TRIAL
    if name.endswith("-final"):
        return Relevance.LOOKUP
    return Relevance.FOREIGN


def classify_tuning_job(name: str, tags: Mapping[str, str], prefix: str) -> Relevance:
    """Same idea for tuning jobs: our tag wins; our name without tags needs a lookup."""
    if tags.get(TAG_PIPELINE) == prefix and tags.get(TAG_STAGE) == STAGE_TUNING:
        return Relevance.OURS
    if TAG_PIPELINE in tags or not name.startswith(prefix + "-"):
        return Relevance.FOREIGN
    return Relevance.LOOKUP


def final_metric(metric_data: Iterable[Mapping[str, Any]], name: str = GATE_METRIC) -> float | None:
    """The value of ``name`` in DescribeTrainingJob's FinalMetricDataList, or None."""
    for entry in metric_data or ():
        if entry.get("MetricName") == name:
            try:
                value = float(entry.get("Value"))
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None


@dataclass(frozen=True)
class GateDecision:
    """Deploy or not, and why (the reason goes to logs, alerts and /status)."""

    deploy: bool
    reason: str
    accuracy: float | None


def quality_gate(new_accuracy: float | None, live_accuracy: float | None, floor: float) -> GateDecision:
    """A model goes live only if it beats both the floor and the live model, strictly.

    Strictly: a duplicate Completed event for the live model itself compares
    equal and is not deployed twice.
    """
    if new_accuracy is None:
        return GateDecision(False, f"no finite {GATE_METRIC} in FinalMetricDataList", None)
    if new_accuracy <= floor:
        return GateDecision(False, f"{GATE_METRIC} {new_accuracy:.4f} does not beat the floor {floor:.4f}", new_accuracy)
    if live_accuracy is not None and new_accuracy <= live_accuracy:
        return GateDecision(
            False,
            f"{GATE_METRIC} {new_accuracy:.4f} does not beat the live model's {live_accuracy:.4f}",
            new_accuracy,
        )
    against = "no live model" if live_accuracy is None else f"live {live_accuracy:.4f}"
    return GateDecision(True, f"{GATE_METRIC} {new_accuracy:.4f} beats floor {floor:.4f} and {against}", new_accuracy)


# -- Debugger (issue 14) ------------------------------------------------------------------
#: Error codes under which AWS plausibly refuses a request for the Debugger service
#: itself: the request is well formed, but this account may not use the feature
#: (ValidationException, the usual answer to a field SageMaker will not take) or
#: this role may not (AccessDeniedException; AccessDenied is its older spelling).
#: Quotas (ResourceLimitExceeded), throttling and name clashes are never Debugger's.
DEBUGGER_REFUSAL_CODES: frozenset[str] = frozenset({"ValidationException", "AccessDeniedException", "AccessDenied"})
#: What such a message names: the service, or one of the request's Debugger fields.
_DEBUGGER_WORDS = re.compile(
    r"debugger|debug[ _-]?hook|debug[ _-]?rule|profiler|rule[ _-]?(evaluat|configuration)|\brules?\b",
    re.IGNORECASE,
)


def debugger_refusal(code: str, message: str) -> bool:
    """Was CreateTrainingJob refused because of its Debugger configuration? (``auto`` then retries in_job.)

    Nobody can say what an account opened after Debugger closed (2026-07-30)
    gets back, so this reads both halves of the error: a code under which a
    feature or permission is refused (:data:`DEBUGGER_REFUSAL_CODES`) and a
    message that names Debugger, its hook, its rules or the profiler. Either
    half alone is not enough: a ValidationException about an instance type
    must fail as before, and so must a quota error that happens to say "rule".
    """
    return code in DEBUGGER_REFUSAL_CODES and bool(_DEBUGGER_WORDS.search(message or ""))


#: RuleEvaluationStatus of a service rule that found an issue.
ISSUES_FOUND = "IssuesFound"


def triggered_rules(described: Mapping[str, Any]) -> list[str]:
    """The Debugger rules that found an issue in a finished job, in :data:`contract.RULE_NAMES` order.

    Two sources, so every mode is read the same way: the ``rule_<Rule>``
    metric lines train.py prints for its in-job rules (in FinalMetricDataList,
    1 = issue found) and, for ``service`` jobs, DebugRuleEvaluationStatuses.
    A service rule still evaluating when the job completes is not waited for.
    """
    found: set[str] = set()
    for rule in RULE_NAMES:
        value = final_metric(described.get("FinalMetricDataList") or [], rule_metric_name(rule))
        if value is not None and value >= 0.5:
            found.add(rule)
    for status in described.get("DebugRuleEvaluationStatuses") or []:
        if status.get("RuleEvaluationStatus") == ISSUES_FOUND:
            found.add(str(status.get("RuleConfigurationName", "")))
    known = [rule for rule in RULE_NAMES if rule in found]
    return known + sorted(found - set(known) - {""})


def _epoch_ms(value: Any) -> int | None:
    """One time as epoch milliseconds: epoch ms or seconds (number or digit string), or ISO 8601."""
    if value is None or isinstance(value, bool):
        return None
    number: float | None = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            from datetime import UTC, datetime

            try:
                parsed = datetime.fromisoformat(text)  # 3.11+ reads a trailing Z
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp() * 1000)
    if number is None or not math.isfinite(number) or number < 0:
        return None
    # below 10^11 it can only be seconds (10^11 ms is 1973; 10^11 s is the year 5138)
    return int(number * 1000) if number < 1e11 else int(number)


def end_time_ms(value: Any) -> int | None:
    """A job's TrainingEndTime in epoch ms: botocore answers a datetime, events and tests a number or text."""
    timestamp = getattr(value, "timestamp", None)
    if callable(timestamp):
        return int(timestamp() * 1000)
    return _epoch_ms(value)


def event_time_ms(event_time: Any, detail: Mapping[str, Any]) -> int | None:
    """When a job state-change event happened, in epoch ms; None when it does not say.

    Why LastModifiedTime first: it changes with each status change of the job
    and has millisecond precision; EventBridge's ``time`` has whole seconds.
    CreationTime is the same in every event of a job, so it cannot order them.
    """
    for value in (detail.get("LastModifiedTime"), event_time):
        found = _epoch_ms(value)
        if found is not None:
            return found
    return None


# -- endpoints (issue 15, items 1 and 2) --------------------------------------------------
#: EndpointStatus values, as DescribeEndpoint spells them.
ENDPOINT_IN_SERVICE = "InService"
ENDPOINT_FAILED = "Failed"
ENDPOINT_ROLLBACK_FAILED = "UpdateRollbackFailed"
#: Endpoint states in which UpdateEndpoint is refused: a deployment then waits in the queue.
ENDPOINT_BUSY: frozenset[str] = frozenset(
    {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "OutOfService"}
)
#: The states the endpoint state-change handler acts on (its rule matches only these).
ENDPOINT_SETTLED: tuple[str, ...] = (ENDPOINT_IN_SERVICE, ENDPOINT_FAILED, ENDPOINT_ROLLBACK_FAILED)


def endpoint_status(value: Any) -> str:
    """One spelling of an EndpointStatus: the API's (``InService``) for the event's (``IN_SERVICE``) too.

    Why: AWS's documented endpoint state-change event writes ``IN_SERVICE``,
    ``UPDATING``, ``FAILED``; DescribeEndpoint answers ``InService``,
    ``Updating``, ``Failed``. Every comparison goes through this function.
    """
    text = str(value or "").strip()
    if "_" in text or text.isupper():
        return "".join(part.capitalize() for part in text.split("_") if part)
    return text


def endpoint_event_spellings(statuses: Iterable[str]) -> list[str]:
    """Both spellings of each status, for an EventBridge pattern (it matches strings exactly)."""
    found: list[str] = []
    for status in statuses:
        shouted = re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()
        found += [status, shouted]
    return found


#: Error codes of a Create*/UpdateEndpoint call that a later try may not get: the
#: deployment is retried (the Lambda's retries). Every other refusal (a quota such as
#: ResourceLimitExceeded, a validation error, a denied permission) is final: recorded and alerted.
RETRIABLE_ERROR_CODES: frozenset[str] = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalServerError",
    "InternalServerException",
})


def busy_refusal(code: str, message: str) -> bool:
    """UpdateEndpoint refused because the endpoint is mid-update (DescribeEndpoint said InService a moment ago)."""
    text = (message or "").lower()
    return code in ("ValidationException", "ResourceInUse") and ("in-progress" in text or "in progress" in text)
