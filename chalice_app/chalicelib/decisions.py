"""Pure decisions on SageMaker events and results: is it ours, how good is it, deploy or not.

Why pure: each of these is a place where a wrong answer costs money (a
deployment of a tuning trial, a worse model going live), so each is a small
function with its own tests, fed by the documented event shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping

from contract import RULE_NAMES, rule_metric_name

# Endpoint statuses and deployment errors live in chalicelib.endpoint_states (issue 15, items 1
# and 2); their callers import them from here, with the other decisions.
from chalicelib.endpoint_states import (  # noqa: F401
    ENDPOINT_BUSY, ENDPOINT_FAILED, ENDPOINT_IN_SERVICE, ENDPOINT_ROLLBACK_FAILED, ENDPOINT_SETTLED,
    RETRIABLE_ERROR_CODES, busy_refusal, endpoint_event_spellings, endpoint_status,
)

TAG_PIPELINE = "breedline:pipeline"
TAG_STAGE = "breedline:stage"
TAG_DATASET = "breedline:dataset"
TAG_VERSION = "breedline:version"
STAGE_TUNING = "tuning"
STAGE_TRAINING = "training"

#: The metric the quality gate reads by default (BREEDLINE_GATE_METRIC) and the floor's metric.
GATE_METRIC = "test_macro_f1"
ACCURACY_METRIC = "test_accuracy"
#: The always-majority-class model's figure on the same test split, per gate metric (printed by train.py).
#: Its balanced accuracy needs no line: it is 1/K for K classes, whatever the counts.
MAJORITY_METRICS: dict[str, str] = {
    "test_accuracy": "test_majority_accuracy",
    "test_macro_f1": "test_majority_macro_f1",
}
#: The live model's figures, evaluated by the new job on its own test split.
CHAMPION_PREFIX = "champion_"
#: Metrics that are shares: each one the gate finds must be a finite number in [0, 1].
SHARE_METRICS: tuple[str, ...] = (
    "test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_majority_accuracy",
    "test_majority_macro_f1", "test_ece", "confidence_threshold", "test_abstained_share",
    "champion_test_accuracy", "champion_test_balanced_accuracy", "champion_test_macro_f1",
)


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


def final_metric(metric_data: Iterable[Mapping[str, Any]], name: str = ACCURACY_METRIC) -> float | None:
    """The value of ``name`` in DescribeTrainingJob's FinalMetricDataList, or None."""
    for entry in metric_data or ():
        if entry.get("MetricName") == name:
            try:
                value = float(entry.get("Value"))
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None


def read_metrics(metric_data: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Every metric of FinalMetricDataList by name, NaN and out-of-range values kept (the gate judges them).

    A value that is not a number becomes NaN, so it is rejected, not skipped.
    """
    found: dict[str, float] = {}
    for entry in metric_data or ():
        name = entry.get("MetricName")
        if not isinstance(name, str) or name in found:
            continue
        try:
            found[name] = float(entry.get("Value"))
        except (TypeError, ValueError):
            found[name] = math.nan
    return found


def headline_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The share metrics worth keeping on the live model's record (``/status``): present and finite."""
    return {name: float(metrics[name]) for name in SHARE_METRICS if name in metrics and math.isfinite(metrics[name])}


@dataclass(frozen=True)
class GatePolicy:
    """The gate's settings: ``BREEDLINE_GATE_METRIC``, its margins, the floor, the class-change switch."""

    metric: str = GATE_METRIC
    margin: float = 0.01
    baseline_margin: float = 0.05
    accuracy_floor: float = 0.5
    allow_class_change: bool = False


@dataclass(frozen=True)
class LiveFigures:
    """What the gate knows of the live model from its record: its job, classes and own figures."""

    training_job: str
    labels: tuple[str, ...]
    #: Its own test figures (its own test split, so only a fallback); may be empty for old records.
    metrics: Mapping[str, float] = field(default_factory=dict)
    accuracy: float | None = None


#: GateDecision.outcome values.
DEPLOY = "deploy"
GATE_REJECTED = "gate_rejected"
AWAITING_APPROVAL = "awaiting_approval"
ALREADY_LIVE = "already_live"


@dataclass(frozen=True)
class GateDecision:
    """Deploy or not, and why (the reason goes to logs, alerts and /status).

    ``alert``: the model is not merely "not better" but wrong or degenerate
    (a metric out of [0, 1], no metric, below the floor or the baseline) or
    needs a person (class change): operators are told, not only the logs.
    """

    deploy: bool
    reason: str
    accuracy: float | None
    outcome: str = GATE_REJECTED
    alert: bool = False
    #: What the gate metric was compared with (also on the reason).
    compared_with: str = ""
    #: Classes added and removed against the live model, when the list differs.
    class_change: Mapping[str, list[str]] | None = None


def majority_baseline(metrics: Mapping[str, float], metric: str, num_classes: int) -> float | None:
    """What an always-majority-class model scores on ``metric`` on this test split; None when unknown.

    The printed ``test_majority_*`` line wins. Without it the figure follows
    from the majority class's share p (``test_majority_accuracy``) and the
    class count K: that model's balanced accuracy is 1/K and its macro-F1
    is 2p/(1+p)/K (F1 of the majority class, zero for every other class).
    """
    printed = MAJORITY_METRICS.get(metric)
    if printed and printed in metrics:
        return metrics[printed]
    if metric == "test_balanced_accuracy" and num_classes >= 2:
        return 1.0 / num_classes
    share = metrics.get("test_majority_accuracy")
    if metric == "test_macro_f1" and share is not None and num_classes >= 2:
        return 2 * share / (1 + share) / num_classes
    return None


def redrive_event(job: str, arn: str, tags: Iterable[Mapping[str, str]], region: str, time: str) -> dict[str, Any]:
    """A ``Completed`` state-change event of ``job`` that ``on_training_state_change`` accepts as SageMaker's.

    Why: approving a class change means running the gate again, and EventBridge
    refuses ``aws.*`` sources from PutEvents, so the operator invokes the
    function with this payload (the awaiting-approval alert carries it).
    """
    return {
        "version": "0",
        "id": f"redrive-{job}",
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": arn.split(":")[4] if arn.count(":") >= 5 else "",
        "time": time,
        "region": region,
        "resources": [arn] if arn else [],
        "detail": {"TrainingJobName": job, "TrainingJobArn": arn, "TrainingJobStatus": "Completed",
                   "Tags": tags_to_dict(list(tags))},
    }


def _class_change(old: tuple[str, ...], new: tuple[str, ...]) -> dict[str, list[str]] | None:
    if list(old) == list(new):
        return None
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "before": list(old), "after": list(new)}


def _against_live(
    metrics: Mapping[str, float], live: LiveFigures, policy: GatePolicy, passed: str, accuracy: float | None
) -> GateDecision:
    """Check 6 of :func:`quality_gate`: beat the live model by ``margin``, on the same test split if possible."""
    metric = policy.metric
    champion = metrics.get(CHAMPION_PREFIX + metric)
    if champion is not None:
        against, old, name = "the live model on the same test split", champion, metric
    elif metric in live.metrics and math.isfinite(live.metrics[metric]):
        against, old, name = "the live model's own test split (no champion line)", live.metrics[metric], metric
    elif live.accuracy is not None:
        against, old, name = "the live model's own test_accuracy (no champion line, old record)", live.accuracy, ACCURACY_METRIC
    else:
        return GateDecision(True, f"{passed}; the live record has no figure to compare with", accuracy, DEPLOY,
                            compared_with="nothing: no live figure")
    new = metrics[name]
    if new <= old + policy.margin:
        reason = f"{name} {new:.4f} does not beat {against}, {old:.4f}, by {policy.margin:.4f}"
        return GateDecision(False, reason, accuracy, compared_with=against)
    reason = f"{passed}; {name} {new:.4f} beats {against}, {old:.4f}, by > {policy.margin:.4f}"
    return GateDecision(True, reason, accuracy, DEPLOY, compared_with=against)


def quality_gate(
    metrics: Mapping[str, float],
    classes: Iterable[str],
    live: LiveFigures | None,
    policy: GatePolicy,
    job: str = "",
) -> GateDecision:
    """Deploy the new model ``job`` or not, from its FinalMetricDataList (:func:`read_metrics`).

    In order, each check with its own reason:

    1. ``job`` is already live (a duplicate Completed event): nothing to do.
    2. Every share metric present (:data:`SHARE_METRICS`) is finite and in
       [0, 1]: a NaN or a forged 99.0 rejects and alerts.
    3. ``test_accuracy`` and the gate metric are there, and accuracy beats
       the floor.
    4. The gate metric beats the always-majority-class model by
       ``baseline_margin`` (:func:`majority_baseline`): a model that always
       answers the big class is rejected however high its accuracy.
    5. The class list equals the live model's, or a change is allowed
       (``allow_class_change``); otherwise it awaits approval.
    6. It beats the live model by ``margin`` on the same test split
       (``champion_<metric>``). Fallbacks, each said in the reason: the live
       record's own figure of the metric (its own test split), then its
       accuracy against ``test_accuracy``; no live model, or an allowed class
       change, compares with nothing beyond 2-4.

    Strictly greater everywhere: equal is not better.
    """
    classes = tuple(classes)
    accuracy = metrics.get(ACCURACY_METRIC)
    metric = policy.metric
    if live is not None and job and live.training_job == job:
        return GateDecision(False, f"{job} is already the live model", accuracy, ALREADY_LIVE)
    bad = [f"{name}={metrics[name]!r}" for name in SHARE_METRICS
           if name in metrics and not (math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0)]
    if bad:
        reason = f"metrics outside [0, 1]: {', '.join(bad)} (a broken evaluation or a forged metric line)"
        return GateDecision(False, reason, None, alert=True)
    missing = [name for name in dict.fromkeys((ACCURACY_METRIC, metric)) if name not in metrics]
    if missing:
        return GateDecision(False, f"no {', '.join(missing)} in FinalMetricDataList", accuracy, alert=True)
    if not classes:
        return GateDecision(False, "the data set version has no class list (no version record)", accuracy, alert=True)
    value = metrics[metric]
    assert accuracy is not None
    if accuracy <= policy.accuracy_floor:
        reason = f"{ACCURACY_METRIC} {accuracy:.4f} does not beat the floor {policy.accuracy_floor:.4f}"
        return GateDecision(False, reason, accuracy, alert=True)
    baseline = majority_baseline(metrics, metric, len(classes))
    if baseline is None:
        reason = f"no majority-class baseline for {metric} (test_majority_accuracy missing)"
        return GateDecision(False, reason, accuracy, alert=True)
    if value <= baseline + policy.baseline_margin:
        majority = metrics.get("test_majority_accuracy")
        shape = f"; {ACCURACY_METRIC} {accuracy:.4f} vs the majority class's share {majority:.4f}" if majority is not None else ""
        reason = (f"{metric} {value:.4f} does not beat the always-majority-class baseline {baseline:.4f} by "
                  f"{policy.baseline_margin:.4f}{shape}: a model that mostly answers the largest class")
        return GateDecision(False, reason, accuracy, alert=True)
    passed = f"{metric} {value:.4f} beats the majority baseline {baseline:.4f} by > {policy.baseline_margin:.4f}, " \
             f"{ACCURACY_METRIC} {accuracy:.4f} beats the floor {policy.accuracy_floor:.4f}"
    if live is None:
        return GateDecision(True, f"{passed}; no live model", accuracy, DEPLOY, compared_with="no live model")
    change = _class_change(live.labels, classes)
    if change is not None:
        what = f"added {change['added'] or 'none'}, removed {change['removed'] or 'none'}" \
               f" ({len(live.labels)} -> {len(classes)} classes)"
        if not policy.allow_class_change:
            reason = (f"class list differs from the live model's: {what}; awaiting approval "
                      "(BREEDLINE_ALLOW_CLASS_CHANGE=true, then re-send this job's Completed event)")
            return GateDecision(False, reason, accuracy, AWAITING_APPROVAL, alert=True, class_change=change)
        reason = f"{passed}; class list changed ({what}), allowed by BREEDLINE_ALLOW_CLASS_CHANGE"
        return GateDecision(True, reason, accuracy, DEPLOY, compared_with="nothing: class list changed",
                            class_change=change)
    return _against_live(metrics, live, policy, passed, accuracy)


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

