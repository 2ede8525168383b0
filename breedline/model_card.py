"""``model_card.html``: one self-contained page per final model, written next to the job's output in S3.

Why the operator side builds it (the demo's report and ``python -m breedline
report``), not the training job or the Lambda: the card needs three things
that live in three places. The pictures need matplotlib, which the training
containers do not install; the gate's decision is known only to the app, after
the job has ended; the tuning trials are the tuning job's. The report already
reads all three through boto3 (SageMaker, S3, the app's DynamoDB state table),
so it renders the card, keeps it in ``report/<job>/model_card.html`` and
uploads it to ``<S3OutputPath>/<job>/output/model_card.html``, beside
``model.tar.gz`` and ``output.tar.gz``. docs/local.md says what that costs:
a model gets its card when someone reports on it.

Self-contained: the CSS is inline, every picture is a base64 ``data:`` PNG,
there is no script, no font and no link to fetch. Every value from a file or
a tag is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import RULE_METRIC_NAMES

from breedline import job_evaluation
from breedline.card_facts import (
    SPLITS,
    DatasetFacts,
    GateFacts,
    dataset_facts,
    gate_facts,
)
from breedline.job_evaluation import abstention_lines, fmt, number
from breedline.job_report import JobReport, TrialRow, tuning_trials
from breedline.local.s3_transfers import split_s3_uri

MODEL_CARD_FILE = "model_card.html"
#: The final job of tuning job T is ``T-final`` (chalicelib.naming.FINAL_SUFFIX).
FINAL_SUFFIX = "-final"
#: The card's sections in page order: (element id, heading). Tests look for each id.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("gate", "How the quality gate decided"),
    ("dataset", "Data set"),
    ("metrics", "Metrics on the test split"),
    ("per-class", "Per class"),
    ("pictures", "Pictures"),
    ("abstention", 'When the model says "I don\'t know"'),
    ("hyperparameters", "Hyperparameters"),
    ("tuning", "Tuning trials"),
    ("notes", "Notes"),
)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1040px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555}.deployed{background:#e3f4e3}.rejected{background:#fde2e1}.unknown{background:#f0f0f0}
.gate{padding:8px 12px;border:1px solid #ddd;font-weight:600}figure{margin:12px 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:12px}
"""


@dataclass
class ModelCard:
    path: Path
    s3_uri: str | None
    html: str


def tuning_name_of(name: str) -> str | None:
    return name[: -len(FINAL_SUFFIX)] if name.endswith(FINAL_SUFFIX) else None


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    header: list[str],
    rows: list[list[Any]],
    numeric: set[int] = frozenset(),  # type: ignore[assignment]
    row_attr: str | None = None,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        attr = f' {row_attr}="{_e(row[0])}"' if row_attr else ""
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(path: Path | None, alt: str, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="note">{_e(alt)}: not drawn</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _gate_section(gate: GateFacts) -> str:
    css = {"deployed": "deployed", "replaced": "deployed", "rejected": "rejected"}.get(
        gate.decision, "unknown"
    )
    details = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in gate.details.items())
    live = f'<p class="note">live model now: {_e(gate.live_model)}</p>' if gate.live_model else ""
    return (
        f'<p class="gate {css}" data-decision="{_e(gate.decision)}">{_e(gate.decision)}: {_e(gate.reason)}</p>'
        + (f"<ul>{details}</ul>" if details else "")
        + live
        + "<p class=\"note\">Read from the app's state table (the job's record and the live model's); the "
        "gate's rules are in docs/app.md.</p>"
    )


def _dataset_section(facts: DatasetFacts, skipped: dict[str, int] | None = None) -> str:
    intro = f"<p>Data set <b>{_e(facts.dataset or '?')}</b>, version <b>{_e(facts.version or '?')}</b>.</p>"
    if skipped:  # the counts below are files in S3; these the job could not read and trained without
        left_out = ", ".join(f"{n} in {split}" for split, n in sorted(skipped.items()))
        intro += (f'<p class="skipped">Files the job could not read and left out: {_e(left_out)} '
                  "(model_meta.json skipped_images; the upload's alert names them).</p>")
    if not facts.counts:
        return intro + '<p class="note">no class counts</p>'
    splits = [s for s in SPLITS if s in facts.counts]
    classes = sorted({c for split in splits for c in facts.counts[split]})
    rows = [[c] + [facts.counts[s].get(c, 0) for s in splits] for c in classes]
    rows.append(["all classes"] + [sum(facts.counts[s].values()) for s in splits])
    table = _table(["class"] + splits, rows, numeric=set(range(1, len(splits) + 1)))
    return intro + table + f'<p class="note">counted from {_e(facts.counts_source)}</p>'


def _metrics_section(report: JobReport) -> str:
    evaluation = report.evaluation
    rows: list[list[Any]] = []
    if evaluation is not None:
        d = evaluation.data
        rows += [
            ["accuracy", fmt(d.get("accuracy"))],
            ["balanced accuracy", fmt(d.get("balanced_accuracy"))],
            ["macro-F1", fmt(d.get("macro_f1"))],
        ]
        base = d.get("majority_baseline") if isinstance(d.get("majority_baseline"), dict) else {}
        if base:
            rows += [
                [f"majority baseline (always {base.get('class')}): accuracy", fmt(base.get("accuracy"))],
                ["majority baseline: macro-F1", fmt(base.get("macro_f1"))],
            ]
        champion = d.get("champion") if isinstance(d.get("champion"), dict) else None
        if champion:
            rows += [
                [f"live model on the same test split: {k.replace('_', ' ')}", fmt(champion.get(k))]
                for k in ("accuracy", "balanced_accuracy", "macro_f1")
            ]
        cal = d.get("calibration") if isinstance(d.get("calibration"), dict) else {}
        if cal:
            rows += [
                [
                    f"calibration temperature (fit on {cal.get('split', 'valid')})",
                    fmt(cal.get("temperature"), 3),
                ],
                ["expected calibration error before", fmt(cal.get("ece_before"), 4)],
                ["expected calibration error after", fmt(cal.get("ece_after"), 4)],
            ]
        weighting = d.get("class_weighting") if isinstance(d.get("class_weighting"), dict) else {}
        if weighting:
            rows.append(
                [
                    "class-weighted loss",
                    f"{'on' if weighting.get('enabled') else 'off'}: {weighting.get('reason', '')}",
                ]
            )
    metrics = [
        [name, f"{value:.4f}"] for name, value in report.metrics.items() if name not in RULE_METRIC_NAMES
    ]
    intro = (
        f"<p>{_e(evaluation.data.get('num_images', '?'))} test images; from {_e(evaluation.source)}.</p>"
        if evaluation is not None
        else f'<p class="note">no {job_evaluation.EVALUATION_FILE}</p>'
    )
    return (
        intro
        + (_table(["figure", "value"], rows, numeric={1}) if rows else "")
        + "<p>The job's metric lines (DescribeTrainingJob FinalMetricDataList):</p>"
        + (_table(["metric", "value"], metrics, numeric={1}) if metrics else '<p class="note">none</p>')
    )


def _per_class_section(report: JobReport) -> str:
    evaluation = report.evaluation
    if evaluation is None or not evaluation.per_class:
        return '<p class="note">no per-class figures</p>'
    rows = [
        [
            r["class"],
            fmt(r.get("precision")),
            fmt(r.get("recall")),
            fmt(r.get("f1")),
            "-" if number(r.get("support")) is None else int(number(r.get("support")) or 0),
        ]
        for r in evaluation.per_class
    ]
    return _table(
        ["class", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4}, row_attr="data-class"
    )


def _pictures_section(report: JobReport) -> str:
    pictures = report.evaluation.pictures if report.evaluation is not None else {}
    parts = [
        _img(report.loss_curve, "loss curve", "Train and valid loss per epoch; the star is the test loss.")
    ]
    captions = {
        "confusion matrix": "Rows: true class; columns: predicted class; colour: share of the true class's images.",
        "reliability diagram": "Accuracy against confidence per bin on test, after calibration; the dashed line "
        "is perfect calibration; below: images per bin.",
        "most confident mistakes": "Test images the model got wrong with the highest probability.",
    }
    for what, caption in captions.items():
        parts.append(_img(pictures.get(what), what, caption))
    return "".join(parts)


def _abstention_section(report: JobReport) -> str:
    if report.evaluation is None:
        return '<p class="note">no figures</p>'
    return (
        "<ul>"
        + "".join(f"<li>{_e(line)}</li>" for line in abstention_lines(report.evaluation.abstention))
        + "</ul>"
    )


def _tuning_section(tuning: dict[str, Any] | None, trials: list[TrialRow], metric: str | None) -> str:
    if tuning is None:
        return '<p class="note">no tuning job found for this job</p>'
    names = sorted({k for r in trials for k in r.hyperparameters})
    rows = [
        [i, r.name, r.status, "-" if r.objective is None else f"{r.objective:.4f}"]
        + [r.hyperparameters.get(n, "").strip('"') for n in names]
        + ["-" if r.seconds is None else f"{r.seconds:.0f}"]
        for i, r in enumerate(trials, 1)
    ]
    config = tuning.get("HyperParameterTuningJobConfig") or {}
    intro = (
        f"<p>Tuning job {_e(tuning.get('HyperParameterTuningJobName', ''))} "
        f"({_e(config.get('Strategy', '?'))}), trials best first by {_e(metric or '?')}.</p>"
    )
    return intro + _table(
        ["#", "trial", "status", metric or "objective"] + names + ["seconds"],
        rows,
        numeric={0, 3, len(names) + 4},
    )


def render(
    report: JobReport,
    facts: DatasetFacts,
    gate: GateFacts,
    tuning: dict[str, Any] | None,
    trials: list[TrialRow],
    notes: list[str],
) -> str:
    """The whole card as one HTML string."""
    metric = None
    if tuning is not None:
        metric = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    hyper = [[k, v.strip('"')] for k, v in sorted(report.hyperparameters.items())]
    bodies = {
        "gate": _gate_section(gate),
        "dataset": _dataset_section(facts, report.skipped_images),
        "metrics": _metrics_section(report),
        "per-class": _per_class_section(report),
        "pictures": _pictures_section(report),
        "abstention": _abstention_section(report),
        "hyperparameters": _table(["hyperparameter", "value"], hyper)
        if hyper
        else '<p class="note">none</p>',
        "tuning": _tuning_section(tuning, trials, metric),
        "notes": "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else "<p>none</p>",
    }
    sections = "".join(
        f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS
    )
    title = f"Model card: {report.name}"
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
        f'<p class="note">Training job {_e(report.name)} ({_e(report.status)}); data set '
        f"{_e(facts.dataset or '?')} version {_e(facts.version or '?')}; written {made} by the Breedline "
        f"report (python -m breedline report).</p>{sections}</body></html>"
    )


def write_model_card(
    sm: Any,
    s3: Any,
    report: JobReport,
    out_dir: Path,
    state: Any = None,
    tuning_name: str | None = None,
    upload: bool = True,
) -> ModelCard | None:
    """Render the card of a final job into ``out_dir/<job>/model_card.html`` and upload it to the job's output.

    ``state``: the app's :class:`chalicelib.state.StateStore` (the gate's
    decision), or None. ``tuning_name`` defaults to the job's name without
    ``-final``. What cannot be read becomes a note on the card and in the
    report; None only when the job itself cannot be described.
    """
    notes = list(report.notes)
    try:
        job = sm.describe_training_job(TrainingJobName=report.name)
    except Exception as exc:  # noqa: BLE001 - the report already says what it could read
        report.notes.append(f"no model card: DescribeTrainingJob failed: {exc}")
        return None
    facts = dataset_facts(sm, s3, job, report.evaluation, notes)
    tuning, trials = None, []
    tuning_name = tuning_name or tuning_name_of(report.name)
    if tuning_name:
        try:
            tuning, trials = tuning_trials(sm, tuning_name)
        except Exception as exc:  # noqa: BLE001 - a hand-started job has no tuning job
            notes.append(f"tuning job {tuning_name} could not be read: {type(exc).__name__}: {exc}")
    gate = gate_facts(state, report.name)
    page = render(report, facts, gate, tuning, trials, notes)
    report.notes += notes[len(report.notes) :]
    path = out_dir / report.name / MODEL_CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    report.artifacts["model card"] = str(path)
    uri: str | None = (
        job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{report.name}/output/{MODEL_CARD_FILE}"
    )
    if not upload:
        uri = None
    else:
        bucket, key = split_s3_uri(str(uri))
        try:
            s3.put_object(
                Bucket=bucket, Key=key, Body=page.encode("utf-8"), ContentType="text/html; charset=utf-8"
            )
            report.artifacts["model card in S3"] = str(uri)
        except Exception as exc:  # noqa: BLE001 - a read-only operator still gets the local card
            report.notes.append(f"model card not uploaded to {uri}: {type(exc).__name__}: {exc}")
            uri = None
    report.model_card = {
        "path": str(path),
        "s3_uri": uri,
        "dataset": facts.dataset,
        "version": facts.version,
        "class_counts": facts.counts,
        "gate": {"decision": gate.decision, "reason": gate.reason, "live_model": gate.live_model},
    }
    return ModelCard(path, uri, page)
