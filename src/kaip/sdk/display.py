"""Rich notebook representations of the SDK's objects: HTML strings for Jupyter's `_repr_html_`.

Pure functions over the documents the server returns (MLflow REST JSON, resources): no I/O. Every value that
comes from a document is escaped, so a run named `<script>` shows as text. Charts are inline SVG (no JavaScript,
no external files), so they render in any notebook front end and in exported HTML.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["endpoint_html", "job_html", "lineage_html", "model_html", "run_html", "svg_line_chart"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MAX_POINTS = 1000  # per series: more than a chart's width in pixels shows nothing more
LONG_TABLE = 12  # rows above which a params table is collapsed
STYLE = ("<style>.kaip-card{font-family:system-ui,sans-serif;font-size:13px;line-height:1.4}"
         ".kaip-card table{border-collapse:collapse;margin:4px 0}"
         ".kaip-card td,.kaip-card th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}"
         ".kaip-card th{background:#f5f5f5}.kaip-card code{font-size:12px}"
         ".kaip-badge{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:12px}</style>")
STATUS_COLORS = {"FINISHED": "#2ca02c", "READY": "#2ca02c", "True": "#2ca02c", "Succeeded": "#2ca02c",
                 "Complete": "#2ca02c", "RUNNING": "#1f77b4", "Running": "#1f77b4", "SCHEDULED": "#7f7f7f",
                 "PENDING_REGISTRATION": "#7f7f7f", "Unknown": "#7f7f7f", "FAILED": "#d62728", "Failed": "#d62728",
                 "False": "#d62728", "KILLED": "#8c564b", "FAILED_REGISTRATION": "#d62728"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _badge(status: Any) -> str:
    color = STATUS_COLORS.get(str(status), "#7f7f7f")
    return f'<span class="kaip-badge" style="background:{color}">{_e(status)}</span>'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table; cells are HTML already (escape them before)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(title: str, *parts: str) -> str:
    return f'<div class="kaip-card">{STYLE}<div><b>{title}</b></div>{"".join(parts)}</div>'


def _duration(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {sec}s" if hours else f"{minutes}m {sec}s"


def _points(values: Iterable[Any]) -> list[tuple[float, float]]:
    """(step, value) pairs with a finite value, sorted by step; takes tuples or MLflow metric dicts."""
    out = []
    for item in values or ():
        try:
            step, value = (item["step"], item["value"]) if isinstance(item, Mapping) else (item[0], item[1])
            x, y = float(step), float(value)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    out.sort(key=lambda p: p[0])
    if len(out) > MAX_POINTS:  # evenly thinned, keeping the last point (the current value)
        stride = len(out) / (MAX_POINTS - 1)
        out = [out[int(i * stride)] for i in range(MAX_POINTS - 1)] + [out[-1]]
    return out


# ---- charts --------------------------------------------------------------------------------------------------------


def svg_line_chart(series: dict[str, list[tuple[int, float]]], *, width: int = 480, height: int = 200,
                   title: str = "") -> str:
    """An inline SVG line chart: one polyline per series over a shared step axis, with a legend.

    The axes are labelled with the data's min and max step and value. NaN and infinite values are left out; a
    series with a single point is drawn as a dot; a constant series as a flat line in the middle; with no finite
    point at all the chart says "no data".

    Args:
        series: Metric key to its (step, value) points (MLflow metric dicts with `step` and `value` work too).
        width: Width of the SVG in pixels.
        height: Height of the plotting area plus axes in pixels (the legend adds a line per few series).
        title: A caption drawn above the plot.

    Returns:
        An `<svg>` element as a string.
    """
    clean = {str(k): pts for k, v in (series or {}).items() if (pts := _points(v))}
    left, right, top, bottom = 56, 12, 22 if title else 10, 24
    legend_rows = 0
    if clean:
        per_row = max(1, (width - left) // 130)
        legend_rows = (len(clean) + per_row - 1) // per_row
    total_height = height + legend_rows * 16 + (4 if legend_rows else 0)  # the legend goes below the axes
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
             f'viewBox="0 0 {width} {total_height}" font-family="system-ui,sans-serif" font-size="11" '
             f'role="img" aria-label="{_e(title or "chart")}">']
    if title:
        parts.append(f'<text x="{left}" y="14" font-size="12" font-weight="bold">{_e(title)}</text>')
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    parts.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#ccc"/>')
    if not clean:
        parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
                     f'fill="#888">no data</text></svg>')
        return "".join(parts)
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)

    def sx(x: float) -> float:  # a single step sits in the middle
        return (x0 + x1) / 2 if xmax == xmin else x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)

    def sy(y: float) -> float:  # a constant value too
        return (y0 + y1) / 2 if ymax == ymin else y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)

    # Axis labels: the data's extremes (one label when they coincide).
    parts.append(f'<text x="{x0 - 4}" y="{sy(ymax) + 4:.1f}" text-anchor="end">{_e(_num(ymax))}</text>')
    if ymin != ymax:
        parts.append(f'<text x="{x0 - 4}" y="{sy(ymin) + 4:.1f}" text-anchor="end">{_e(_num(ymin))}</text>')
    parts.append(f'<text x="{sx(xmin):.1f}" y="{y1 + 14}" text-anchor="{"start" if xmin != xmax else "middle"}">'
                 f'{_e(_num(xmin))}</text>')
    if xmin != xmax:
        parts.append(f'<text x="{sx(xmax):.1f}" y="{y1 + 14}" text-anchor="end">{_e(_num(xmax))}</text>')
    for i, (key, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
                     f'<title>{_e(key)}</title></polyline>')
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{color}"/>')
    per_row = max(1, (width - left) // 130)
    for i, key in enumerate(clean):
        lx = left + (i % per_row) * 130
        ly = height + 6 + (i // per_row) * 16  # text baseline: below the step labels (at height - 10)
        label = key if len(key) <= 18 else key[:17] + "…"
        parts.append(f'<g><title>{_e(key)}</title>'
                     f'<rect x="{lx}" y="{ly - 5}" width="10" height="3" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{lx + 14}" y="{ly}">{_e(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


# ---- tracking --------------------------------------------------------------------------------------------------


def _latest_metrics(data: Mapping[str, Any], history: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (value, step) of the latest point: highest step, then timestamp (MLflow's rule)."""
    best: dict[str, tuple[tuple[float, float], Any, Any]] = {}
    for m in data.get("metrics") or []:
        key = m.get("key")
        if key is None:
            continue
        rank = (float(m.get("step") or 0), float(m.get("timestamp") or 0))
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, m.get("value"), m.get("step", 0))
    for key, values in (history or {}).items():
        pts = _points(values)
        if key not in best and pts:
            best[key] = ((pts[-1][0], 0), pts[-1][1], int(pts[-1][0]))
    return {k: (v, s) for k, (_, v, s) in sorted(best.items())}


def _kv_rows(items: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return sorted((str(i.get("key", "")), str(i.get("value", ""))) for i in items if isinstance(i, Mapping))


def run_html(run: dict[str, Any], history: dict[str, list[tuple[int, float]]]) -> str:
    """A tracked run: header (name, id, status, duration), latest metrics, params, and the loss curve.

    Args:
        run: MLflow's REST run JSON, `{"info": {...}, "data": {"metrics": [...], "params": [...], "tags": [...]}}`.
        history: Metric key to its (step, value) points; keys containing "loss" are charted.

    Returns:
        An HTML fragment.
    """
    info = run.get("info") or {}
    data = run.get("data") or {}
    tags = dict(_kv_rows(data.get("tags") or []))
    run_id = info.get("run_id") or info.get("run_uuid") or ""
    name = info.get("run_name") or tags.get("mlflow.runName") or run_id
    status = info.get("status") or ""
    start, end = info.get("start_time"), info.get("end_time")
    if start and end:
        duration = _duration(float(end) - float(start))
    elif start and status == "RUNNING":
        duration = f"running for {_duration(time.time() * 1000 - float(start))}"
    else:
        duration = ""
    header = (f'<div>run <code>{_e(run_id)}</code> {_badge(status)} {_e(duration)}'
              + (f' · experiment <code>{_e(info["experiment_id"])}</code>' if info.get("experiment_id") else "")
              + (f'<br>artifacts <code>{_e(info["artifact_uri"])}</code>' if info.get("artifact_uri") else "")
              + "</div>")
    parts = [header]
    metrics = _latest_metrics(data, history)
    if metrics:
        parts.append(_table(("metric", "value", "step"),
                            ((_e(k), _e(_num(v)), _e(s)) for k, (v, s) in metrics.items())))
    params = _kv_rows(data.get("params") or [])
    if params:
        table = _table(("param", "value"), ((_e(k), _e(v)) for k, v in params))
        parts.append(f"<details><summary>{_plural(len(params), 'param')}</summary>{table}</details>"
                     if len(params) > LONG_TABLE else table)
    own_tags = [(k, v) for k, v in sorted(tags.items()) if not k.startswith("mlflow.")]
    if own_tags:
        parts.append(f"<details><summary>{_plural(len(own_tags), 'tag')}</summary>"
                     f"{_table(('tag', 'value'), ((_e(k), _e(v)) for k, v in own_tags))}</details>")
    losses = {k: v for k, v in (history or {}).items() if "loss" in k}
    if losses:
        parts.append(svg_line_chart(losses, title="loss"))
    return _card(f"Run {_e(name)}", *parts)


def _lineage_label(node: Mapping[str, Any] | None, key: str) -> str:
    if node is None:
        return f"<code>{_e(key)}</code>"
    kind = {"modelversion": "model version", "model": "base model"}.get(str(node.get("kind")), node.get("kind"))
    where = node.get("uri") or node.get("id") or key
    attrs = node.get("attributes") or {}
    extra = f" {_badge(attrs['status'])}" if attrs.get("status") else ""
    if node.get("kind") == "dataset" and attrs.get("digest"):
        extra += f" digest <code>{_e(str(attrs['digest'])[:12])}</code>"
    return f"{_e(kind)} <b>{_e(node.get('name'))}</b> (<code>{_e(where)}</code>){extra}"


def lineage_html(lineage: dict[str, Any]) -> str:
    """A lineage graph (the `/apis/kaip.dev/v1alpha1/lineage` response) as a list of its edges.

    Args:
        lineage: `{root, nodes: [{id, kind, name, uri, attributes}], edges: [{source, target, relation}]}`.

    Returns:
        An HTML fragment.
    """
    nodes = {n.get("id"): n for n in lineage.get("nodes") or [] if isinstance(n, Mapping)}
    edges = [e for e in lineage.get("edges") or [] if isinstance(e, Mapping)]
    if not edges:
        return ""
    items = "".join(f"<li>{_lineage_label(nodes.get(e.get('source')), str(e.get('source')))} "
                    f"—{_e(e.get('relation'))}→ {_lineage_label(nodes.get(e.get('target')), str(e.get('target')))}"
                    f"</li>" for e in edges)
    return f"<div>lineage of <code>{_e(lineage.get('root'))}</code></div><ul>{items}</ul>"


def model_html(model: dict[str, Any], versions: list[dict[str, Any]], lineage: dict[str, Any] | None = None) -> str:
    """A registered model: description, aliases, its versions, and the lineage of one version.

    Args:
        model: MLflow's registered model JSON (`name`, `description`, `aliases`, `tags`, ...).
        versions: MLflow model version JSON (`version`, `status`, `aliases`, `source`, `run_id`, `tags`).
        lineage: The lineage endpoint's response for a version, if fetched.

    Returns:
        An HTML fragment.
    """
    aliases: dict[str, list[str]] = {}
    for a in model.get("aliases") or []:
        if isinstance(a, Mapping):
            aliases.setdefault(str(a.get("version")), []).append(str(a.get("alias")))
    parts = []
    if model.get("description"):
        parts.append(f"<div>{_e(model['description'])}</div>")
    model_tags = _kv_rows(model.get("tags") or [])
    if model_tags:
        parts.append("<div>tags: " + ", ".join(f"<code>{_e(k)}={_e(v)}</code>" for k, v in model_tags) + "</div>")

    def number(v: Mapping[str, Any]) -> int:
        try:
            return int(v.get("version") or 0)
        except (TypeError, ValueError):
            return 0

    rows = []
    for v in sorted(versions or [], key=number, reverse=True):
        names = sorted(set(v.get("aliases") or []) | set(aliases.get(str(v.get("version")), [])))
        tags = _kv_rows(v.get("tags") or [])
        rows.append((_e(v.get("version")), _badge(v.get("status") or ""),
                     ", ".join(f"<b>@{_e(a)}</b>" for a in names),
                     f"<code>{_e(v.get('source'))}</code>", f"<code>{_e(v.get('run_id'))}</code>",
                     "<br>".join(f"{_e(k)}={_e(v)}" for k, v in tags)))
    if rows:
        parts.append(_table(("version", "status", "aliases", "source", "run", "tags"), rows))
    else:
        parts.append("<div>no versions</div>")
    if lineage:
        parts.append(lineage_html(lineage))
    return _card(f"Model {_e(model.get('name'))}", *parts)


# ---- resources -------------------------------------------------------------------------------------------------


def _conditions(status: Mapping[str, Any]) -> str:
    conds = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    if not conds:
        return ""
    return _table(("condition", "status", "reason", "message", "since"),
                  ((_e(c.get("type")), _badge(c.get("status")), _e(c.get("reason")), _e(c.get("message")),
                    _e(c.get("lastTransitionTime"))) for c in conds))


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == type_),
                None)


def _storage_uri(predictor: Mapping[str, Any]) -> str | None:
    model = predictor.get("model")
    if isinstance(model, Mapping) and model.get("storageUri"):
        return str(model["storageUri"])
    for value in predictor.values():  # the older per-framework form: predictor.sklearn.storageUri
        if isinstance(value, Mapping) and value.get("storageUri"):
            return str(value["storageUri"])
    return None


def _link(url: str) -> str:
    if url.startswith(("http://", "https://")):  # never a javascript: URL as a link
        return f'<a href="{_e(url)}" target="_blank">{_e(url)}</a>'
    return f"<code>{_e(url)}</code>"


def endpoint_html(isvc: dict[str, Any], url: str) -> str:
    """A KServe InferenceService: URL, readiness, traffic split per revision, revisions and model storage URI.

    Args:
        isvc: The InferenceService resource.
        url: Where its predictions are served (the gateway URL).

    Returns:
        An HTML fragment.
    """
    meta = isvc.get("metadata") or {}
    spec = isvc.get("spec") or {}
    status = isvc.get("status") or {}
    predictor_spec = spec.get("predictor") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    ready = _condition(status, "Ready")
    readiness = _badge(ready.get("status") if ready else "Unknown")
    if ready and ready.get("reason"):
        readiness += f" {_e(ready['reason'])}"
    if ready and ready.get("message"):
        readiness += f": {_e(ready['message'])}"
    lines = [f"<div>URL {_link(url)}</div>" if url else "", f"<div>Ready {readiness}</div>"]
    storage = _storage_uri(predictor_spec)
    if storage:
        lines.append(f"<div>model <code>{_e(storage)}</code></div>")
    revs = [f"{label} <code>{_e(predictor[key])}</code>" for key, label in
            (("latestReadyRevision", "latest ready"), ("latestCreatedRevision", "latest created"))
            if predictor.get(key)]
    if revs:
        lines.append("<div>revisions: " + ", ".join(revs) + "</div>")
    if predictor_spec.get("canaryTrafficPercent") is not None:
        lines.append(f"<div>canary traffic {_e(predictor_spec['canaryTrafficPercent'])}%</div>")
    traffic = [t for t in predictor.get("traffic") or [] if isinstance(t, Mapping)]
    if traffic:
        lines.append(_table(("revision", "traffic", "latest", "tag"), (
            (f"<code>{_e(t.get('revisionName'))}</code>",
             f'{_int(t.get("percent"))}% <span style="display:inline-block;height:8px;background:#1f77b4;'
             f'width:{max(0, min(100, _int(t.get("percent"))))}px"></span>',
             "✓" if t.get("latestRevision") else "", _e(t.get("tag"))) for t in traffic)))
    lines.append(_conditions(status))
    name = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else meta.get("name")
    return _card(f"InferenceService {_e(name)}", *lines)


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def job_html(job: dict[str, Any]) -> str:
    """A TrainJob / PyTorchJob (progress from `status.trainerStatus`) or a PipelineRun (phase and tasks).

    Args:
        job: The resource.

    Returns:
        An HTML fragment.
    """
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    parts = []
    if status.get("phase"):
        parts.append(f"<div>phase {_badge(status['phase'])}"
                     + (f" {_e(status['message'])}" if status.get("message") else "") + "</div>")
    trainer = status.get("trainerStatus") or {}
    if trainer:
        pct = trainer.get("progressPercentage")
        line = ""
        if pct is not None:
            line += f'<progress value="{max(0, min(100, _int(pct)))}" max="100"></progress> {_e(_int(pct))}%'
        if trainer.get("estimatedRemainingSeconds") is not None:
            line += f" · about {_e(_duration(_int(trainer['estimatedRemainingSeconds']) * 1000))} left"
        if line:
            parts.append(f"<div>{line}</div>")
        metrics = [m for m in trainer.get("metrics") or [] if isinstance(m, Mapping)]
        if metrics:
            parts.append("<div>" + ", ".join(f"{_e(m.get('name'))}=<b>{_e(m.get('value'))}</b>" for m in metrics)
                         + "</div>")
    published = (status.get("kaip") or {}).get("published") or {}
    if published.get("runId"):
        parts.append(f"<div>run <code>{_e(published['runId'])}</code>"
                     + (f" · model <code>models:/{_e(published['modelVersion'])}</code>"
                        if published.get("modelVersion") else "") + "</div>")
    parts.append(_conditions(status))
    tasks = status.get("tasks")
    if isinstance(tasks, Mapping) and tasks:
        parts.append(_table(("task", "phase", "message"), (
            (_e(name), _badge(t.get("phase")), _e(t.get("message"))) for name, t in tasks.items()
            if isinstance(t, Mapping))))
    kind = job.get("kind") or "Job"
    name = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else meta.get("name")
    return _card(f"{_e(kind)} {_e(name)}", *parts)
