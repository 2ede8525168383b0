"""The dashboard and the alarms name only metrics the code emits, and show all of them."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from chalicelib import observability, predict
from infra_helpers import REPO

NAMESPACE = "Breedline"
_SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\}(?P<terms>[^']*)'")


def _dashboard(template: dict[str, Any]) -> dict[str, Any]:
    """DashboardBody is a Fn::Sub string: substitute like CloudFormation, then parse."""
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    values = {"PredictLatencyThresholdMs": "3000"}
    text = re.sub(r"\$\{([^}!]+)\}", lambda m: values.get(m.group(1), f"sub-{m.group(1).replace('::', '-')}"), body)
    return json.loads(text)


def _widget_metrics(widget: dict[str, Any]) -> list[tuple[str, str]]:
    """(namespace, metric name) of every metric row or SEARCH expression of a widget.

    Rows use CloudWatch's shorthand: "." repeats the value above, "..." the
    whole row above.
    """
    found: list[tuple[str, str]] = []
    previous: list[Any] = []
    for row in widget.get("properties", {}).get("metrics", []):
        if row and isinstance(row[0], dict):
            match = _SEARCH.search(row[0]["expression"])
            assert match, row
            namespace = match["schema"].split(",")[0]
            name = re.search(r'MetricName="([^"]+)"', match["terms"])
            assert name, row
            found.append((namespace, name.group(1)))
            continue
        if row[0] == "...":
            row = previous[:] if not isinstance(previous[-1], dict) else previous[:-1]
        plain = [v for v in row if not isinstance(v, dict)]
        resolved = [previous[i] if v == "." and i < len(previous) else v for i, v in enumerate(plain)]
        previous = resolved
        found.append((resolved[0], resolved[1]))
    return found


def _emitted_metric_names() -> set[str]:
    """Values of observability's metric constants that app.py or chalicelib actually reference."""
    constants = {name: getattr(observability, name) for name in dir(observability) if name.isupper()}
    metric_constants = {k: v for k, v in constants.items() if isinstance(v, str) and v in observability.ALL_METRICS}
    used: set[str] = set()
    files = [REPO / "chalice_app" / "app.py", *(REPO / "chalice_app" / "chalicelib").glob("*.py")]
    for path in files:
        if path.name == "observability.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in metric_constants:
                used.add(metric_constants[node.id])
            if isinstance(node, ast.alias) and node.name in metric_constants:
                used.add(metric_constants[node.name])
    return used


def test_dashboard_body_is_valid_json_with_widgets(template: dict[str, Any]) -> None:
    dashboard = _dashboard(template)
    assert dashboard["widgets"]
    for widget in dashboard["widgets"]:
        assert widget["type"] in {"metric", "text", "log", "alarm"}
        assert {"x", "y", "width", "height", "properties"} <= set(widget)


def test_dashboard_metrics_are_exactly_the_metrics_the_code_emits(template: dict[str, Any]) -> None:
    metrics = [m for w in _dashboard(template)["widgets"] for m in _widget_metrics(w)]
    ours = {name for namespace, name in metrics if namespace == NAMESPACE}
    assert ours == set(observability.ALL_METRICS)
    assert ours <= _emitted_metric_names(), ours - _emitted_metric_names()
    assert {ns for ns, _ in metrics} == {NAMESPACE, "AWS/SageMaker"}


def test_the_code_emits_every_declared_metric() -> None:
    assert _emitted_metric_names() == set(observability.ALL_METRICS)


def test_a_widget_per_pipeline_stage_and_the_endpoint(template: dict[str, Any]) -> None:
    widgets = _dashboard(template)["widgets"]
    by_title = {w["properties"].get("title", ""): _widget_metrics(w) for w in widgets if w["type"] == "metric"}
    stage_widgets = {
        "uploads": {"UploadsSeen", "DatasetsAccepted", "DatasetsRejected"},
        "tuning": {"TuningJobsStarted", "TuningJobsCompleted", "TuningJobsFailed", "TuningJobsOverBudget"},
        "training": {"TrainingJobsStarted", "TrainingJobsCompleted", "TrainingJobsFailed"},
        "deploy": {"ModelsDeployed", "GateRejections"},
    }
    for names in stage_widgets.values():
        assert any(names == {n for _, n in m} for m in by_title.values()), names
    sagemaker = {n for m in by_title.values() for ns, n in m if ns == "AWS/SageMaker"}
    assert sagemaker == {"Invocations", "ModelLatency", "Invocation4XXErrors", "Invocation5XXErrors"}
    latency = next(w for w in widgets if "latency percentiles" in w["properties"].get("title", ""))
    stats = {opt["stat"] for row in latency["properties"]["metrics"] for opt in row if isinstance(opt, dict)}
    assert stats == {"p50", "p90", "p99"}
    errors = next(w for w in widgets if "errors by code" in w["properties"].get("title", ""))
    assert "{Breedline,code,service}" in errors["properties"]["metrics"][0][0]["expression"]


def test_logs_insights_widget_reads_every_lambda(template: dict[str, Any]) -> None:
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    log = next(w for w in _dashboard(template)["widgets"] if w["type"] == "log")
    query = log["properties"]["query"]
    functions = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
    for fn in functions:
        assert f"SOURCE '/aws/lambda/${{{fn}}}'" in body, fn
    assert "dataset" in query and "fields" in query


def test_alarm_metrics_are_emitted_and_predict_5xx_covers_every_5xx_code(template: dict[str, Any]) -> None:
    emitted = _emitted_metric_names()
    five_xx_codes = set()
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        stats = [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        if "MetricName" in props:
            stats.append(props)
        for metric in stats:
            if metric["Namespace"] == NAMESPACE:
                assert metric["MetricName"] in emitted, (logical_id, metric["MetricName"])
                dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                assert dims["service"] == {"Ref": "AWS::StackName"}  # = POWERTOOLS_SERVICE_NAME of the stack
                if logical_id == "PredictServerErrorsAlarm":
                    five_xx_codes.add(dims[observability.ERROR_CODE_DIMENSION])
    assert five_xx_codes == {code for status, code in predict.ALL_ERRORS if status >= 500}
    glob = template["Globals"]["Function"]["Environment"]["Variables"]
    assert glob["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert glob["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE


def test_metric_check_would_catch_an_unknown_metric(template: dict[str, Any]) -> None:
    """The comparison is live: a dashboard row naming a metric the code never emits is seen."""
    widget = {"properties": {"metrics": [["Breedline", "UploadsSeen", "service", "x"], [".", "UploadsSeens", ".", "."]]}}
    assert ("Breedline", "UploadsSeens") in _widget_metrics(widget)
    assert "UploadsSeens" not in _emitted_metric_names()
