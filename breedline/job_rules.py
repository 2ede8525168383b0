"""The job report's rule table: which Debugger rule found an issue, and where, from whichever source the job has.

Why three sources: in ``in_job`` mode ``train.py`` evaluates the rules itself
and writes ``rules.json`` (the most detail: the steps and messages) into its
output, and prints one ``rule_<Name>=0|1`` metric line per rule, which
SageMaker keeps in ``FinalMetricDataList`` even when the output cannot be
read; in ``service`` mode SageMaker Debugger's rule jobs report in
DescribeTrainingJob's ``DebugRuleEvaluationStatuses``. The table says which
source it shows. Each source is read defensively: a rule with an ``error``,
a missing key or an unknown status becomes a row that says so, never an
exception that costs the rest of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract import RULE_NAMES, RULES_FILE, rule_metric_name

#: How many ``where`` entries a row shows before it counts the rest.
WHERE_SHOWN = 3

#: SageMaker's RuleEvaluationStatus values, as the table's "issue found" column says them.
_SERVICE_STATUS = {
    "IssuesFound": "yes",
    "NoIssuesFound": "no",
    "Error": "error",
    "InProgress": "in progress",
    "Stopping": "stopped",
    "Stopped": "stopped",
}


@dataclass
class RuleRow:
    rule: str
    issue_found: str  # yes | no | error | in progress | stopped | unknown
    where: str


@dataclass
class RuleTable:
    source: str
    rows: list[RuleRow]


def _steps_text(steps: Any) -> str:
    if isinstance(steps, list):
        return f"{len(steps)} steps examined"
    if isinstance(steps, int) and not isinstance(steps, bool):
        return f"{steps} steps examined"
    return "-"


def _where_text(where: Any, steps: Any) -> str:
    """``step 12: message; ...`` for the first few places, the rest counted; else the steps examined."""
    if not isinstance(where, list) or not where:
        return _steps_text(steps)
    parts = []
    for place in where[:WHERE_SHOWN]:
        if isinstance(place, dict):
            step = place.get("step")
            message = str(place.get("message") or "").strip()
            parts.append(f"step {step}: {message}" if step is not None else message or "?")
        else:
            parts.append(str(place))
    if len(where) > WHERE_SHOWN:
        parts.append(f"(+{len(where) - WHERE_SHOWN} more)")
    return "; ".join(parts)


def from_rules_file(data: Any, where_from: str) -> RuleTable | None:
    """The table of a parsed ``rules.json`` (``{"rules": [...]}``); None when it holds no rule list."""
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return None
    rows = []
    for entry in rules:
        if not isinstance(entry, dict):
            rows.append(RuleRow("?", "unknown", f"unreadable entry: {str(entry)[:60]}"))
            continue
        name = str(entry.get("rule") or "?")
        if entry.get("error"):
            rows.append(RuleRow(name, "error", str(entry["error"])))
        elif isinstance(entry.get("issue_found"), bool):
            found = entry["issue_found"]
            # train.py writes ``issues`` and ``steps_examined`` (docs/ml.md); ``where``/``steps`` are read too
            places = entry.get("issues", entry.get("where"))
            text = _where_text(places, entry.get("steps_examined", entry.get("steps")))
            count = entry.get("issue_count")
            if isinstance(places, list) and isinstance(count, int) and count > max(len(places), WHERE_SHOWN):
                text += f" ({count} issues in all)"
            rows.append(RuleRow(name, "yes" if found else "no", text))
        else:
            rows.append(RuleRow(name, "unknown", "no issue_found in the file"))
    return RuleTable(f"{RULES_FILE} in {where_from}", rows)


def from_metrics(metrics: dict[str, float]) -> RuleTable | None:
    """The ``rule_<Name>`` metrics (1 = issue found); None when the job reported none."""
    rows = [RuleRow(rule, "yes" if metrics[rule_metric_name(rule)] >= 0.5 else "no",
                    f"not in the metric; see {RULES_FILE}")
            for rule in RULE_NAMES if rule_metric_name(rule) in metrics]
    return RuleTable("rule_* metrics (FinalMetricDataList)", rows) if rows else None


def from_service(job: dict[str, Any]) -> RuleTable | None:
    """SageMaker Debugger's (and Profiler's) rule statuses of a ``service`` mode job; None without any."""
    rows = []
    fields = [f for f in ("DebugRuleEvaluationStatuses", "ProfilerRuleEvaluationStatuses") if job.get(f)]
    for status in [s for f in fields for s in job[f]]:
        value = str(status.get("RuleEvaluationStatus", ""))
        rows.append(RuleRow(str(status.get("RuleConfigurationName") or "?"), _SERVICE_STATUS.get(value, "unknown"),
                            str(status.get("StatusDetails") or (value if value not in _SERVICE_STATUS else "-"))))
    return RuleTable(" and ".join(fields) + " (SageMaker Debugger)", rows) if rows else None


def rule_table(rules_file: Any | None, rules_file_from: str, metrics: dict[str, float],
               job: dict[str, Any]) -> RuleTable | None:
    """The most detailed source the job has: ``rules.json``, then the service's statuses, then the metrics."""
    table = from_rules_file(rules_file, rules_file_from) if rules_file is not None else None
    return table or from_service(job) or from_metrics(metrics)


def format_rules(table: RuleTable | None, indent: str = "    ") -> list[str]:
    """The report's rule lines: a header naming the source, then one aligned row per rule."""
    if table is None:
        return [(f"  Debugger rules  none evaluated (no {RULES_FILE}, no rule_* metrics, "
                 "no DebugRuleEvaluationStatuses: BREEDLINE_DEBUGGER=off, or a job from before the rules)")]
    header = RuleRow("rule", "issue found", "where")
    width_rule = max(len(r.rule) for r in [header, *table.rows])
    width_issue = max(len(r.issue_found) for r in [header, *table.rows])
    lines = [f"  Debugger rules  (source: {table.source})"]
    for row in [header, *table.rows]:
        lines.append(f"{indent}{row.rule:<{width_rule}}  {row.issue_found:<{width_issue}}  {row.where}")
    return lines
