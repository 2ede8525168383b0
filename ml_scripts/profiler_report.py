"""``profiler/profiler-report.html``: the profiler summary as one self-contained page.

Why self-contained: the page is opened from a downloaded ``output.tar.gz`` or
the local runtime's job folder, often offline, and must not fetch anything
(no CDN, no fonts, no scripts from elsewhere). The CSS is inline, the charts
are inline SVG drawn here, and there is no JavaScript at all.

It shows, from ``summary.json`` alone (so the page can be rebuilt from it):
the findings of :mod:`profiler_findings`, step time over the whole run, the
split of a profiled step into data loading, forward, backward and optimizer,
the top operators, and CPU/GPU utilisation and memory over time.
"""

from __future__ import annotations

import html
from typing import Any

import profiler_findings

#: The sections, in page order: (element id, heading). Tests look for each id.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("findings", "Findings"),
    ("step-time", "Step time over the run"),
    ("time-split", "Where the step time goes"),
    ("top-operators", "Top operators"),
    ("resources", "CPU, GPU and memory"),
)
COLORS = {"data": "#e69f00", "forward": "#0072b2", "backward": "#009e73", "optimizer": "#cc79a7",
          "other": "#999999", "step": "#0072b2", "cpu": "#d55e00", "gpu": "#009e73", "memory": "#56b4e9"}
#: At most this many points per chart line; longer series keep each bucket's maximum (outliers stay visible).
MAX_POINTS = 1500
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1040px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.triggered{background:#fde2e1;font-weight:600}.ok{background:#e3f4e3}.skip{background:#f0f0f0;color:#555}
.note{color:#555}svg{background:#fff;border:1px solid #eee}.legend span{margin-right:14px}
.swatch{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:middle}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "-"
    return str(value)


def downsample(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ``limit`` points: each bucket of consecutive points keeps its largest y."""
    if len(ys) <= limit:
        return list(xs), list(ys)
    size = -(-len(ys) // limit)
    out_x, out_y = [], []
    for start in range(0, len(ys), size):
        bucket = range(start, min(start + size, len(ys)))
        best = max(bucket, key=lambda i: ys[i])
        out_x.append(xs[best])
        out_y.append(ys[best])
    return out_x, out_y


def _tick(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_chart(
    lines: list[tuple[str, list[float], list[float], str]], x_label: str, y_label: str,
    shade: tuple[float, float, str] | None = None, marks: list[tuple[float, str]] | None = None,
    y_max: float | None = None, width: int = 980, height: int = 260,
) -> str:
    """An inline SVG line chart: ``lines`` of (label, xs, ys, colour); ``shade`` a labelled x range."""
    left, right, top, bottom = 66, 16, 14, 40
    points = [(x, y) for _, xs, ys, _ in lines for x, y in zip(xs, ys)]
    if not points:
        return '<p class="note">no samples</p>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = y_max if y_max is not None else max(p[1] for p in points) * 1.05 or 1.0
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - min(y, y1) / y1) * (height - top - bottom)

    parts = [(f'<svg role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
              f'xmlns="http://www.w3.org/2000/svg" font-size="11">')]
    if shade is not None:
        a, b, label = shade
        parts.append(f'<rect x="{sx(a):.1f}" y="{top}" width="{max(1.0, sx(b) - sx(a)):.1f}" '
                     f'height="{height - top - bottom}" fill="#f3e9c9"><title>{_e(label)}</title></rect>'
                     f'<text x="{sx(a) + 3:.1f}" y="{top + 11}" fill="#8a6d00">{_e(label)}</text>')
    for y in _ticks(0.0, y1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{_tick(y)}</text>')
    for x in _ticks(x0, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">{_tick(x)}</text>')
    for x, label in marks or []:
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{height - bottom}" '
                     f'stroke="#bbb" stroke-dasharray="3 3"><title>{_e(label)}</title></line>')
    for label, xs, ys, color in lines:
        xs, ys = downsample(xs, ys)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}">'
                     f'<title>{_e(label)}</title></polyline>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="12" y="{top + (height - top - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + (height - top - bottom) / 2:.0f})">{_e(y_label)}</text></svg>')
    legend = "".join(f'<span><i class="swatch" style="background:{c}"></i>{_e(label)}</span>'
                     for label, _, _, c in lines)
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _findings_section(findings: list[profiler_findings.Finding]) -> str:
    rows = []
    for f in findings:
        css = {"triggered": "triggered", "ok": "ok"}.get(f.status, "skip")
        numbers = "<br>".join(f"{_e(k)}: {_e(_fmt(v))}" for k, v in f.numbers.items()) or "-"
        rows.append(f'<tr class="{css}" data-rule="{_e(f.rule)}"><td>{_e(f.rule)}</td><td>{_e(f.description)}</td>'
                    f'<td>{_e(f.threshold)}</td><td>{_e(f.status)}</td><td>{numbers}</td><td>{_e(f.advice)}</td></tr>')
    triggered = sum(f.triggered for f in findings)
    return (f'<p>{triggered} of {len(findings)} findings triggered.</p><table><tr><th>rule</th><th>checks</th>'
            f'<th>threshold</th><th>status</th><th>numbers</th><th>what to try</th></tr>{"".join(rows)}</table>')


def _step_time_section(summary: dict[str, Any]) -> str:
    run = summary.get("run") or {}
    step_s, data_s = run.get("step_s") or [], run.get("data_s") or []
    if not step_s:
        return '<p class="note">no training steps recorded</p>'
    index = list(range(1, len(step_s) + 1))
    total_ms = [(d + s) * 1000 for d, s in zip(data_s, step_s)]
    profiled = int(summary.get("steps") or 0)
    shade = (1, profiled, f"under torch.profiler ({profiled} steps)") if profiled else None
    marks = [(end + 0.5, f"end of epoch {i}") for i, end in enumerate(run.get("epoch_ends") or [], start=1)]
    chart = line_chart([("step (data + compute), ms", index, total_ms, COLORS["step"]),
                        ("data loading, ms", index, [d * 1000 for d in data_s], COLORS["data"])],
                       "training step", "ms", shade=shade, marks=marks)
    ordered = sorted(total_ms)
    return (f'<p>{len(step_s)} training steps over {len(run.get("epoch_ends") or [])} epoch(s); median '
            f'{ordered[len(ordered) // 2]:.2f} ms, max {ordered[-1]:.2f} ms. Dashed lines end the epochs.</p>' + chart)


def _time_split_section(summary: dict[str, Any]) -> str:
    split = summary.get("split") or {}
    parts = [(name, float(split.get(f"{name}_s") or 0.0)) for name in ("data", "forward", "backward", "optimizer")]
    total = sum(v for _, v in parts)
    if total <= 0:
        return '<p class="note">no profiled steps</p>'
    bar, x = [], 0.0
    for name, value in parts:
        w = value / total * 960
        bar.append(f'<rect x="{10 + x:.1f}" y="10" width="{w:.1f}" height="34" fill="{COLORS[name]}">'
                   f'<title>{name}: {value * 1000:.2f} ms</title></rect>')
        x += w
    rows = "".join(f'<tr><td><i class="swatch" style="background:{COLORS[n]}"></i>{n}</td>'
                   f'<td class="num">{v * 1000:.2f}</td><td class="num">{v / total:.1%}</td></tr>' for n, v in parts)
    return (f'<svg role="img" width="980" height="54" xmlns="http://www.w3.org/2000/svg">{"".join(bar)}</svg>'
            f'<table><tr><th>part</th><th>ms over {_e(split.get("steps", "?"))} profiled steps</th><th>share</th></tr>'
            f'{rows}</table><p class="note">{_e(split.get("method", ""))}</p>')


def _operators_section(summary: dict[str, Any]) -> str:
    ops = summary.get("top_operators") or []
    if not ops:
        return '<p class="note">no operators recorded</p>'
    longest = max(op["self_cpu_time_ms"] for op in ops) or 1.0
    has_cuda = any("self_cuda_time_ms" in op for op in ops)
    rows = []
    for op in ops:
        w = op["self_cpu_time_ms"] / longest * 200
        cuda = f'<td class="num">{op.get("self_cuda_time_ms", 0.0):.3f}</td>' if has_cuda else ""
        rows.append(f'<tr><td>{_e(op["name"])}</td><td class="num">{op["calls"]}</td>'
                    f'<td class="num">{op["self_cpu_time_ms"]:.3f}</td><td class="num">{op["cpu_time_total_ms"]:.3f}</td>'
                    f'{cuda}<td><svg width="204" height="12"><rect width="{w:.1f}" height="12" '
                    f'fill="{COLORS["forward"]}"/></svg></td></tr>')
    head = "<th>self CUDA ms</th>" if has_cuda else ""
    return (f'<p>Over the profiled steps, by self CPU time.</p><table><tr><th>operator</th><th>calls</th>'
            f'<th>self CPU ms</th><th>CPU total ms</th>{head}<th></th></tr>{"".join(rows)}</table>')


def _resources_section(summary: dict[str, Any]) -> str:
    res = summary.get("resources") or {}
    t = res.get("t_s") or []
    if not t:
        return '<p class="note">no resource samples</p>'
    out = [f'<p>{len(t)} samples over {t[-1]:.1f} s, {res.get("cpu_count", "?")} CPU(s).</p>',
           line_chart([("CPU utilisation, all cores, %", t, res.get("cpu_percent") or [], COLORS["cpu"])]
                      + ([("GPU utilisation, %", t, res["gpu_percent"], COLORS["gpu"])] if res.get("gpu_percent") else []),
                      "seconds", "%", y_max=100.0),
           line_chart([("process resident memory, MB", t, res.get("rss_mb") or [], COLORS["memory"])]
                      + ([("GPU memory allocated, MB", t, res["gpu_allocated_mb"], COLORS["gpu"]),
                          ("GPU memory reserved, MB", t, res.get("gpu_reserved_mb") or [], COLORS["other"])]
                         if res.get("gpu_allocated_mb") else []),
                      "seconds", "MB")]
    if not summary.get("cuda"):
        out.append('<p class="note">no GPU: this job trained on the CPU.</p>')
    elif not res.get("gpu_percent"):
        out.append(f'<p class="note">GPU utilisation not measured: {_e(res.get("gpu_percent_note", ""))}.</p>')
    return "".join(out)


def render(summary: dict[str, Any], findings: list[profiler_findings.Finding] | None = None) -> str:
    """The whole page for one summary (``summary.json``'s content)."""
    findings = findings if findings is not None else profiler_findings.evaluate(summary)
    bodies = {
        "findings": _findings_section(findings),
        "step-time": _step_time_section(summary),
        "time-split": _time_split_section(summary),
        "top-operators": _operators_section(summary),
        "resources": _resources_section(summary),
    }
    device = "GPU " + str(summary.get("gpu_name") or "") if summary.get("cuda") else "CPU"
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Profiler report</title>'
            f'<style>{CSS}</style></head><body><h1>Profiler report</h1>'
            f'<p class="note">{_e(summary.get("job") or "training job")} on {_e(device)}, torch '
            f'{_e(summary.get("torch_version", "?"))}; written by the training script itself '
            f'(no SageMaker Debugger service needed).</p>{sections}</body></html>')
