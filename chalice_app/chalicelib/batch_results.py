"""Joining a transform job's ``<rel>.out`` files into one JSON line per image, and the batch summary.

Why pure: what a user reads back (``results.jsonl``, ``summary.json``) must
account for every image the manifest named, whatever SageMaker left behind:
an answer, an error line from the serving code (``BREEDLINE_BATCH_ERRORS=lines``),
an unreadable output, or nothing at all (a failed or stopped job). These are
decisions on plain bytes, tested without AWS.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping

from chalicelib.batch import BAD_OUTPUT, MISSING_OUTPUT

#: Fields of a prediction line, in order, as the serving code answers them (inference.output_fn).
PREDICTION_FIELDS = ("label", "probability", "top_k", "abstained", "reason")


def _error(code: str, message: str, status_code: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if status_code is not None:
        error["status_code"] = status_code
    return error


def result_line(file: str, output: bytes | None) -> dict[str, Any]:
    """One image's line: its prediction, its error, or an error saying why there is neither.

    ``output`` is the ``.out`` object's body; None when SageMaker wrote none.
    """
    if output is None:
        return {"file": file, "error": _error(MISSING_OUTPUT, "the transform job wrote no output for this image")}
    try:
        answer = json.loads(output.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"file": file, "error": _error(BAD_OUTPUT, f"the output is not JSON: {output[:80]!r}")}
    if not isinstance(answer, dict):
        return {"file": file, "error": _error(BAD_OUTPUT, "the output is not a JSON object")}
    error = answer.get("error")
    if isinstance(error, dict):
        code = str(error.get("code") or BAD_OUTPUT)
        status = error.get("status_code")
        return {"file": file, "error": _error(code, str(error.get("message", "")), status if isinstance(status, int) else None)}
    if "label" not in answer or "top_k" not in answer:
        return {"file": file, "error": _error(BAD_OUTPUT, "the output has no label and top_k")}
    line: dict[str, Any] = {"file": file}
    line.update({key: answer.get(key) for key in PREDICTION_FIELDS})
    line["abstained"] = bool(line["abstained"])
    return line


def join(files: Iterable[str], outputs: Mapping[str, bytes], input_prefix: str = "") -> list[dict[str, Any]]:
    """Every manifest file's line, sorted by file; ``outputs`` maps the path under the output folder
    (without ``.out``) to the body.

    Why ``input_prefix``: AWS's TransformOutput example puts the input's own
    prefix under the output path (``<output>/<input prefix>/data.csv.out``);
    an output found there still belongs to its image.
    """
    found = dict(outputs)
    for key, body in outputs.items():
        if input_prefix and key.startswith(input_prefix):
            found.setdefault(key[len(input_prefix):], body)
    return [result_line(file, found.get(file)) for file in sorted(files)]


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """``results.jsonl``: one compact JSON object per line, newline-terminated."""
    return "".join(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n" for line in lines).encode()


def summarize(
    *, job: str, transform_job: str, status: str, lines: list[dict[str, Any]], skipped: int,
    results_uri: str | None, failure_reason: str = "",
) -> dict[str, Any]:
    """``summary.json``: what the notification says. ``counts`` are predicted labels (abstentions apart)."""
    predicted = [line for line in lines if "error" not in line and not line.get("abstained")]
    abstained = sum(1 for line in lines if "error" not in line and line.get("abstained"))
    failed = sum(1 for line in lines if "error" in line)
    counts = Counter(str(line["label"]) for line in predicted)
    errors = Counter(str(line["error"].get("code")) for line in lines if "error" in line)
    summary: dict[str, Any] = {
        "job": job,
        "transform_job": transform_job,
        "status": status,
        "total": len(lines),
        "predicted": len(predicted),
        "abstained": abstained,
        "failed": failed,
        "skipped": skipped,
        "counts": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
        "errors": dict(sorted(errors.items())),
        "results": results_uri,
    }
    if failure_reason:
        summary["failure_reason"] = failure_reason
    return summary


def headline(summary: Mapping[str, Any]) -> str:
    """The notification's subject: ``batch cats Completed: 98 predicted, 1 abstained, 1 failed``."""
    return (
        f"batch {summary['job']} {summary['status']}: {summary['predicted']} predicted, "
        f"{summary['abstained']} abstained, {summary['failed']} failed"
    )
