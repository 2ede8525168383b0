"""The one place that says how training metrics look in a job's log.

``train.py`` prints every metric through :func:`format_metric`, and SageMaker
(or the local runtime) parses the log with the regexes in
:data:`METRIC_DEFINITIONS`. The Chalice app puts the same list into every
training and tuning request; ``chalice_app/chalicelib/metric_definitions.py``
is a symlink to this file so that the Lambda zip carries it without a copy.

This module must stay dependency-free: it runs in the Lambda, in the SageMaker
containers and on the operator's machine.
"""

from __future__ import annotations

import re

#: Metric names, in the order train.py reports them.
METRIC_NAMES: tuple[str, ...] = (
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_accuracy",
    "test_loss",
    "test_accuracy",
    "epoch_seconds",
)

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

#: SageMaker ``MetricDefinitions``: a name and a regex with one capture group.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{name}={_NUMBER}"} for name in METRIC_NAMES
]


def format_metric(name: str, value: float, epoch: int | None = None) -> str:
    """Return the log line for one metric, e.g. ``epoch=2 valid_loss=0.412300``.

    One metric per line keeps every regex independent of the others.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; add it to METRIC_NAMES first")
    prefix = "" if epoch is None else f"epoch={epoch} "
    return f"{prefix}{name}={float(value):.6f}"


def parse_metrics(log_text: str, definitions: list[dict[str, str]] | None = None) -> dict[str, list[float]]:
    """Apply ``MetricDefinitions`` to log text the way SageMaker does.

    Returns every value seen per metric name, in order; the last one is the
    final value SageMaker reports in ``FinalMetricDataList``.
    """
    found: dict[str, list[float]] = {}
    for definition in definitions or METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"])
        values = [float(m.group(1)) for m in pattern.finditer(log_text)]
        if values:
            found[definition["Name"]] = values
    return found
