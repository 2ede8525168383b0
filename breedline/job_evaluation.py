"""The report's view of a final job's ``evaluation.json``: tables, three pictures and the abstention figures.

Why here and not in the training job: the pictures need matplotlib, which the
training containers do not have (and should not install at every job start);
the numbers are computed once, by ``train.py``, and this module only reads
them. ``evaluation.json`` travels in ``model.tar.gz`` and in the job's output
(its schema is in docs/ml.md). A job without it (older jobs, a trial) gets a
note, never a failed report; a file with a part missing or malformed loses
only that part.

The most confident mistakes are test-split images: their files are fetched
from the job's own ``test`` channel in S3 (``InputDataConfig``), a few objects,
so the same code draws them on a local run and for a real account. A name that
would leave the channel (``..``, an absolute path) is refused with a note.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breedline import job_artifacts
from breedline.evaluation_plots import confusion_png, fmt, mistakes_png, number, reliability_png

#: The file train.py writes into the model dir and the output (issue 13's contract).
EVALUATION_FILE = "evaluation.json"
#: The pictures, by the key the report and ``--json`` name them with, and their file names.
PICTURES = {
    "confusion matrix": "confusion.png",
    "reliability diagram": "reliability.png",
    "most confident mistakes": "mistakes.png",
}


@dataclass
class EvaluationReport:
    """``evaluation.json`` as read, where from, the pictures drawn from it and what was missing."""

    data: dict[str, Any]
    source: str
    pictures: dict[str, Path] = field(default_factory=dict)
    #: For each worst mistake, the local copy of its image (None when it could not be fetched).
    mistake_images: list[Path | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        classes = self.data.get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else []

    @property
    def per_class(self) -> list[dict[str, Any]]:
        """The per-class rows that have a class name (others are dropped, with a note at read time)."""
        rows = self.data.get("per_class")
        return [r for r in rows if isinstance(r, dict) and "class" in r] if isinstance(rows, list) else []

    @property
    def abstention(self) -> dict[str, Any] | None:
        value = self.data.get("abstention")
        return value if isinstance(value, dict) else None

    def figures(self) -> dict[str, Any]:
        """The numbers and picture paths, for ``report --json`` (``evaluation`` key)."""
        keys = (
            "schema",
            "split",
            "classes",
            "num_images",
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "per_class",
            "confusion_matrix",
            "majority_baseline",
            "calibration",
            "class_weighting",
            "worst_mistakes",
            "abstention",
            "champion",
        )
        found: dict[str, Any] = {key: self.data.get(key) for key in keys}
        found.update(source=self.source, pictures={k: str(v) for k, v in self.pictures.items()})
        return found


def read_evaluation(
    members: dict[str, dict[str, Any]], model_uri: str | None, output: Path | None, notes: list[str]
) -> EvaluationReport | None:
    """``evaluation.json`` from ``model.tar.gz`` (already read), else from the unpacked output; None and a note."""
    if EVALUATION_FILE in members:
        return EvaluationReport(members[EVALUATION_FILE], f"{EVALUATION_FILE} in {model_uri}")
    path = output / EVALUATION_FILE if output is not None else None
    if path is not None and path.is_file():
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            notes.append(f"{EVALUATION_FILE} unreadable ({path}): {exc}")
            return None
        if isinstance(data, dict):
            return EvaluationReport(data, str(path))
        notes.append(f"{EVALUATION_FILE} ({path}) is not a JSON object")
        return None
    notes.append(
        f"no {EVALUATION_FILE} in the model or the output (a job older than issue 13, or a trial): "
        "no per-class table, confusion matrix, reliability diagram, mistakes or abstention figures"
    )
    return None


def _matrix(evaluation: EvaluationReport) -> list[list[int]] | None:
    """The confusion matrix when it is square over the class list and holds counts; else None."""
    classes, matrix = evaluation.classes, evaluation.data.get("confusion_matrix")
    if not classes or not isinstance(matrix, list) or len(matrix) != len(classes):
        return None
    rows = []
    for row in matrix:
        if not isinstance(row, list) or len(row) != len(classes):
            return None
        values = [number(v) for v in row]
        if any(v is None or v < 0 for v in values):
            return None
        rows.append([int(v) for v in values if v is not None])
    return rows


def _test_channel(job: dict[str, Any]) -> str | None:
    for channel in job.get("InputDataConfig") or []:
        if channel.get("ChannelName") == "test":
            return ((channel.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
    return None


def safe_relative(name: Any) -> str | None:
    """``name`` as a path inside the channel, or None when it is not one (absolute, ``..``, empty)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    clean = posixpath.normpath(name)
    if clean.startswith(("/", "..")) or clean == ".":
        return None
    return clean


def fetch_mistakes(
    s3: Any, job: dict[str, Any], mistakes: list[dict[str, Any]], out: Path, notes: list[str]
) -> list[Path | None]:
    """Download each mistake's test image from the job's ``test`` channel; None for each that is not there."""
    channel = _test_channel(job)
    if channel is None:
        notes.append("the job has no test channel in InputDataConfig: the mistakes grid shows names only")
        return [None] * len(mistakes)
    found: list[Path | None] = []
    missing = []
    for i, mistake in enumerate(mistakes):
        relative = safe_relative(mistake.get("file"))
        if relative is None:
            missing.append(repr(mistake.get("file")))
            found.append(None)
            continue
        target = out / "mistakes" / f"{i:02d}-{posixpath.basename(relative)}"
        image = job_artifacts.download(s3, channel.rstrip("/") + "/" + relative, target)
        if image is None and relative.startswith(
            "test/"
        ):  # a path from the data set's root, not the channel's
            image = job_artifacts.download(s3, channel.rstrip("/") + "/" + relative[len("test/") :], target)
        found.append(image)
        if image is None:
            missing.append(relative)
    if missing:
        notes.append(
            f"{len(missing)} of {len(mistakes)} mistake images not found under {channel}: "
            + ", ".join(missing[:3])
            + (" ..." if len(missing) > 3 else "")
        )
    return found


def draw(evaluation: EvaluationReport, s3: Any, job: dict[str, Any], out: Path) -> None:
    """Draw the three pictures into ``out``; each one that cannot be drawn becomes a note."""
    name = job.get("TrainingJobName", "")
    matrix = _matrix(evaluation)
    if matrix is None:
        evaluation.notes.append("confusion matrix missing or not square over the class list: not drawn")
    else:
        evaluation.pictures["confusion matrix"] = confusion_png(
            evaluation.classes,
            matrix,
            out / PICTURES["confusion matrix"],
            f"{name}: confusion matrix on {evaluation.data.get('split', 'test')} "
            f"({evaluation.data.get('num_images', '?')} images)",
        )
    calibration = evaluation.data.get("calibration")
    drawn = (
        reliability_png(calibration, out / PICTURES["reliability diagram"], f"{name}: reliability")
        if isinstance(calibration, dict)
        else None
    )
    if drawn is None:
        evaluation.notes.append("no calibration bins: reliability diagram not drawn")
    else:
        evaluation.pictures["reliability diagram"] = drawn
    mistakes = [m for m in evaluation.data.get("worst_mistakes") or [] if isinstance(m, dict)]
    if not mistakes:
        evaluation.notes.append("no worst_mistakes listed: no mistakes grid")
        return
    evaluation.mistake_images = fetch_mistakes(s3, job, mistakes, out, evaluation.notes)
    grid = mistakes_png(
        mistakes,
        evaluation.mistake_images,
        out / PICTURES["most confident mistakes"],
        f"{name}: the {len(mistakes)} most confident mistakes on test",
    )
    if grid is not None:
        evaluation.pictures["most confident mistakes"] = grid


def format_per_class(evaluation: EvaluationReport) -> list[str]:
    """The per-class table: class, precision, recall, F1, support."""
    rows = evaluation.per_class
    if not rows:
        return ["    (no per-class figures)"]
    width = max(5, *(len(str(r["class"])) for r in rows))
    lines = [f"    {'class':<{width}}  precision  recall  f1      support"]
    for r in rows:
        support = number(r.get("support"))
        lines.append(
            f"    {r['class']!s:<{width}}  {fmt(r.get('precision')):<9}  {fmt(r.get('recall')):<6}  "
            f"{fmt(r.get('f1')):<6}  {'-' if support is None else int(support)}"
        )
    return lines


def abstention_lines(abstention: dict[str, Any] | None) -> list[str]:
    """The abstention figures of ``evaluation.json`` (written by the out-of-distribution check)."""
    if abstention is None:
        return ["not in evaluation.json (the model answers every request)"]
    valid = abstention.get("valid") if isinstance(abstention.get("valid"), dict) else {}
    test = abstention.get("test") if isinstance(abstention.get("test"), dict) else {}
    lines = [
        f"method {abstention.get('method', '?')}"
        + (f" ({abstention['score']})" if abstention.get("score") else ""),
        (
            f"confidence threshold {fmt(abstention.get('confidence_threshold'))}, "
            f"out-of-distribution threshold {fmt(abstention.get('ood_threshold'))}"
        ),
        (
            f"valid: coverage {fmt(valid.get('coverage'), 3)} at accuracy {fmt(valid.get('accuracy'), 3)}; "
            f"test: {fmt(test.get('abstained_share'), 3)} of images abstained"
        ),
    ]
    check = abstention.get("ood_check")
    if isinstance(check, dict) and check:
        lines.append(
            "out-of-distribution check: "
            + ", ".join(f"{k}={fmt(v, 3) if number(v) is not None else v}" for k, v in check.items())
        )
    return lines


def format_evaluation(evaluation: EvaluationReport | None) -> list[str]:
    """The evaluation block of the job report (``report JOB`` and the demo)."""
    if evaluation is None:
        return []
    d = evaluation.data
    headline = (
        f"  evaluation  {d.get('split', 'test')} split, {d.get('num_images', '?')} images "
        f"({evaluation.source}): accuracy {fmt(d.get('accuracy'))}, balanced accuracy "
        f"{fmt(d.get('balanced_accuracy'))}, macro-F1 {fmt(d.get('macro_f1'))}"
    )
    lines = [headline]
    base = d.get("majority_baseline") if isinstance(d.get("majority_baseline"), dict) else None
    if base:
        lines.append(
            f"              majority baseline (always {base.get('class')}): accuracy "
            f"{fmt(base.get('accuracy'))}, macro-F1 {fmt(base.get('macro_f1'))}"
        )
    champion = d.get("champion")
    if isinstance(champion, dict):
        lines.append(
            f"              live model on the same test split: accuracy {fmt(champion.get('accuracy'))}, "
            f"balanced accuracy {fmt(champion.get('balanced_accuracy'))}, "
            f"macro-F1 {fmt(champion.get('macro_f1'))}"
        )
    elif "champion" in d:
        lines.append(
            "              live model on the same test split: none (no live model, or another class list)"
        )
    cal = d.get("calibration") if isinstance(d.get("calibration"), dict) else None
    if cal:
        lines.append(
            f"              calibration: temperature {fmt(cal.get('temperature'), 3)} (fit on "
            f"{cal.get('split', 'valid')}), ECE {fmt(cal.get('ece_before'), 3)} -> "
            f"{fmt(cal.get('ece_after'), 3)}"
        )
    weighting = d.get("class_weighting") if isinstance(d.get("class_weighting"), dict) else None
    if weighting:
        lines.append(
            f"              class-weighted loss: {'on' if weighting.get('enabled') else 'off'} "
            f"({weighting.get('reason', '')})"
        )
    lines.append("  per class")
    lines += format_per_class(evaluation)
    lines.append("  abstention  " + "\n              ".join(abstention_lines(evaluation.abstention)))
    for what, path in evaluation.pictures.items():
        lines.append(f"  {what:<24} {path}")
    return lines
