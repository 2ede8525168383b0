"""From measured capacity to the autoscaling target: the rule, its record, and the template's copy.

The rule is AWS's ("Load testing your auto scaling configuration", SageMaker
developer guide): find the peak requests per second one instance holds, then
``SageMakerVariantInvocationsPerInstance = MAX_RPS * SAFETY_FACTOR * 60``, the 60
because the policy's CloudWatch metric counts invocations per minute, and AWS
suggests starting with a safety factor of 0.5. "Peak" here is stated, not eyeballed:
the highest throughput among the tried concurrency levels that answered every
request and kept p99 under the workload's latency budget (:data:`LATENCY_BUDGETS_S`).

Why the budgets are these: the predict alarm fires when the whole handler's p90
passes 3 s (``PredictLatencyThresholdMs``), and API Gateway, the Lambda and the
upload take their share of that. A data-set-sized JPEG (500 x 400) should be
answered by the model in well under a second, so 500 ms at p99; a 12 MP phone JPEG
(3-5 MB) costs about ten times more to decode alone, so 1.5 s at p99, half the
alarm, which leaves the other half for moving 4 MB through the API.

Why one record: ``bench/recorded/capacity.json`` is written by the full capacity
run (``python -m bench --only capacity``) with every figure the derivation used;
the same run writes the derived number as ``InvocationsPerInstanceTarget``'s
``Default`` in ``infra/breedline.yaml``, and a test checks that the two agree, so
the template's number always has a measurement behind it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).resolve().parent / "recorded" / "capacity.json"
TEMPLATE = ROOT / "infra" / "breedline.yaml"
PARAMETER = "InvocationsPerInstanceTarget"
#: AWS's suggested starting safety factor (endpoint-scaling-loadtest).
SAFETY_FACTOR = 0.5
#: p99 latency each workload must stay under for a concurrency level to count as held.
LATENCY_BUDGETS_S: dict[str, float] = {"500x400": 0.5, "12mp": 1.5}


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured: throughput, latency percentiles and errors."""

    concurrency: int
    rps: float
    p50_s: float
    p99_s: float
    errors: int
    requests: int


@dataclass(frozen=True)
class Derivation:
    """The target and the figures it came from; ``target_per_minute`` is None when no level held the budget."""

    workload: str
    max_rps: float
    at_concurrency: int | None
    budget_s: float
    safety_factor: float
    target_per_minute: int | None


def held(level: Level, budget_s: float) -> bool:
    """A level counts when it answered something, without an error, with p99 within the budget."""
    return level.requests > 0 and level.errors == 0 and level.p99_s <= budget_s


def derive(workload: str, levels: Iterable[Level], budget_s: float, safety_factor: float = SAFETY_FACTOR) -> Derivation:
    """``floor(max held req/s * safety * 60)``: AWS's formula on the best level that met the budget.

    When no level held the budget, not even one client alone, there is no target:
    more instances do not make one request faster, so no scaling target can meet
    that budget on this instance type (a larger one, or a lighter model, can).
    """
    if not 0 < safety_factor <= 1:
        raise ValueError(f"safety factor must be in (0, 1], not {safety_factor}")
    good = [lv for lv in levels if held(lv, budget_s)]
    if not good:
        return Derivation(workload, 0.0, None, budget_s, safety_factor, None)
    best = max(good, key=lambda lv: lv.rps)
    target = max(1, math.floor(best.rps * safety_factor * 60))
    return Derivation(workload, best.rps, best.concurrency, budget_s, safety_factor, target)


def governing(derivations: Iterable[Derivation]) -> Derivation | None:
    """The smallest target among those that have one: the template must hold whatever the clients send.

    None when no workload held its budget at all (then the template is left alone).
    """
    found = [d for d in derivations if d.target_per_minute is not None]
    return min(found, key=lambda d: d.target_per_minute) if found else None  # type: ignore[arg-type, return-value]


def levels_from(raw: Iterable[dict[str, Any]]) -> list[Level]:
    return [Level(**{k: item[k] for k in Level.__dataclass_fields__}) for item in raw]


def rederive(record: dict[str, Any]) -> Derivation | None:
    """The governing derivation recomputed from a record's own figures (what the test checks).

    Every measured model and workload counts: the template must hold the slowest of them.
    """
    found = [derive(f"{model} {workload}", levels_from(raw), record["budgets_s"][workload], record["safety_factor"])
             for model, workloads in record["workloads"].items() for workload, raw in workloads.items()]
    return governing(found)


def read_record(path: Path = RECORD) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_record(record: dict[str, Any], path: Path = RECORD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_DEFAULT = re.compile(rf"(^  {PARAMETER}:\n(?:    .*\n)*?    Default: )(\d+)$", re.MULTILINE)


def template_default(path: Path = TEMPLATE) -> int:
    """``InvocationsPerInstanceTarget``'s ``Default`` as written in the template."""
    match = _DEFAULT.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{path} has no {PARAMETER} parameter with a numeric Default")
    return int(match.group(2))


def set_template_default(value: int, path: Path = TEMPLATE) -> int:
    """Write ``value`` as the parameter's ``Default``; return the number it replaced."""
    text = path.read_text(encoding="utf-8")
    match = _DEFAULT.search(text)
    if match is None:
        raise ValueError(f"{path} has no {PARAMETER} parameter with a numeric Default")
    path.write_text(text[: match.start(2)] + str(int(value)) + text[match.end(2):], encoding="utf-8")
    return int(match.group(2))


def as_dict(derivation: Derivation) -> dict[str, Any]:
    return asdict(derivation)
