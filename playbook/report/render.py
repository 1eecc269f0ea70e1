"""The report's HTML: summary, charts, the five-axis table, pitfalls, deliverables, and the offline page.

Everything inserted is escaped (model names, labels and metadata are untrusted); the page loads
nothing from the network (``offline_problems`` checks it).
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from playbook.records import atomic_write_text
from playbook.report.recommend import ReportData, Recommendation, Row, budget_text
from playbook.report.swift import swift_snippet

# --------------------------------------------------------------------------- HTML pieces (all escaped)
def esc(value: Any) -> str:
    """HTML-escape any value (model names, labels, metadata are untrusted)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}{unit}"


class Notes:
    """Footnotes: each distinct provenance text gets one number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        n = self.texts.index(text) + 1
        return f'<sup class="pb-note">[{n}]</sup>'

    def html(self) -> str:
        if not self.texts:
            return ""
        items = "".join(f"<li>{esc(t)}</li>" for t in self.texts)
        return f'<ol class="pb-notes">{items}</ol>'


def provenance_text(row: Row, axis: str) -> str:
    """Where the row's figure on ``axis`` comes from, or why it is missing (plain text)."""
    prov = row.provenance.get(axis)
    if not isinstance(prov, dict):
        return f"{axis}: provenance not recorded"
    if prov.get("measured") is False:
        what = str(prov.get("what") or "no reason recorded")
        return f"{axis}: {what}" if what.startswith("not measured") else f"{axis} not measured: {what}"
    runtime = prov.get("runtime")
    device = prov.get("device")
    if axis == "size":
        return f"size: {prov.get('what', 'read from the package files')}"
    if runtime == "reference":
        where = (f"reference executor on {device}" if device else "reference executor") + \
            ", not Apple's Core ML runtime"
    elif runtime == "coreml":
        units = prov.get("compute_units")
        where = f"Core ML runtime{' (' + str(units) + ')' if units else ''}" + (f" on {device}" if device else "")
    else:
        where = str(prov.get("note") or device or "runtime not recorded")
    extra = prov.get("what")
    if axis == "accuracy":
        n = row.raw.get("n_test")
        return f"accuracy: {where}" + (f"; {n} test images" if n else "")
    return f"{axis}: {where}" + (f"; {extra}" if extra else "")


def _ci(ci: tuple[float, float] | None, digits: int = 2) -> str:
    return f'<span class="pb-ci">[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</span>' if ci else ""


def variants_table_html(data: ReportData, rec: Recommendation | None = None) -> str:
    """One table of every variant on the five axes, with intervals, budget status and provenance footnotes."""
    notes = Notes()
    head = ("<tr><th>Variant</th><th>Stage</th><th>Top-1 % [95% CI]</th><th>Top-1 drop vs reference, pp "
            "[95% CI] (p)</th><th>Size MB (zip)</th><th>Latency ms median (p90)</th><th>FPS</th>"
            "<th>Peak memory MB</th><th>Energy mJ / prediction</th><th>Budget</th></tr>")
    body = []
    for r in data.rows:
        cls = []
        if rec is not None and rec.deliverable is not None and r.key == rec.deliverable.key:
            cls.append("pb-chosen")
        name = esc(r.name) + (' <span class="pb-tag">reference</span>' if r.is_reference else "")
        if rec is not None and rec.deliverable is not None and r.key == rec.deliverable.key:
            name += f' <span class="pb-tag">{"recommended" if rec.chosen else "closest"}</span>'
        acc = f"{_fmt(r.top1)} {_ci(r.top1_ci)}" + notes.mark(provenance_text(r, "accuracy"))
        if r.is_reference:
            drop = "0 (reference)"
        elif r.drop is None:
            drop = "—"
        else:
            drop = f"{r.drop:+.2f} {_ci(r.drop_ci)}" + (f" (p={r.p_value:.3g})" if r.p_value is not None else "")
        size = f"{_fmt(r.size_mb, 3)} ({_fmt(r.zip_mb, 3)})" + notes.mark(provenance_text(r, "size"))
        lat_measured = r.provenance.get("latency", {}).get("measured", r.latency_ms is not None) \
            if isinstance(r.provenance.get("latency"), dict) else r.latency_ms is not None
        lat = (f"{_fmt(r.latency_ms, 3)} ({_fmt(r.latency_p90_ms, 3)})" if lat_measured and r.latency_ms is not None
               else "not measured") + notes.mark(provenance_text(r, "latency"))
        fps = _fmt(r.fps, 0)
        mem = (_fmt(r.memory_mb, 2) if r.memory_mb is not None else "not measured") + \
            notes.mark(provenance_text(r, "memory"))
        energy = (_fmt(r.energy_mj, 3) if r.energy_mj is not None else "not measured") + \
            notes.mark(provenance_text(r, "energy"))
        if rec is not None and r.key in rec.checks:
            checks = rec.checks[r.key]
            ok = all(c.ok for c in checks)
            title = esc("; ".join(c.text() for c in checks))
            budget = (f'<span class="{"pb-ok" if ok else "pb-miss"}" title="{title}">'
                      f'{"meets" if ok else "misses"}</span>')
        else:
            budget = "—"
        desc = f'<div class="pb-desc">{esc(r.description)}</div>' if r.description else ""
        body.append(f'<tr class="{" ".join(cls)}"><td>{name}{desc}</td><td>{esc(r.stage)}</td><td>{acc}</td>'
                    f"<td>{drop}</td><td>{size}</td><td>{lat}</td><td>{fps}</td><td>{mem}</td><td>{energy}</td>"
                    f"<td>{budget}</td></tr>")
    if not body:
        body.append('<tr><td colspan="10">no variants were measured</td></tr>')
    env = _environment_line(data)
    return (f'<div class="pb-report"><table class="pb-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
            f'</table><p class="pb-small">Provenance of each figure:</p>{notes.html()}'
            + (f'<p class="pb-small">Measured on: {esc(env)}</p>' if env else "") + "</div>")


def _environment_line(data: ReportData) -> str:
    env = next((rec.get("environment") for rec in data.records.values() if rec.get("environment")), None)
    if not isinstance(env, dict):
        return ""
    versions = env.get("versions") or {}
    vtxt = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "coremltools"))
    return ", ".join(str(p) for p in (env.get("os"), env.get("cpu"), f"python {env.get('python')}" if env.get(
        "python") else None, vtxt) if p)


def summary_html(data: ReportData, rec: Recommendation) -> str:
    """The executive summary: the recommendation, why, what the data says about techniques, caveats."""
    d = rec.deliverable
    parts = ['<div class="pb-report pb-summary">']
    if data.smoke:
        parts.append('<p class="pb-warn"><b>Smoke run.</b> These numbers come from a tiny data subset and one '
                     "training epoch: they check that the pipeline works, not how good the model is.</p>")
    for w in data.warnings:
        parts.append(f'<p class="pb-warn">{esc(w)}</p>')
    if rec.chosen is not None:
        parts.append(f'<p class="pb-headline">Recommended: <b>{esc(d.name)}</b> <span class="pb-tag">'
                     f'{esc(d.stage)}</span></p>')
    elif d is not None:
        parts.append(f'<p class="pb-headline pb-missline">No variant meets your budget. Closest: <b>{esc(d.name)}'
                     f'</b> <span class="pb-tag">{esc(d.stage)}</span></p>')
    else:
        parts.append('<p class="pb-headline pb-missline">Nothing to recommend: no variant was measured.</p>')
    if d is not None:
        facts = [f"top-1 {_fmt(d.top1)}% {_ci(d.top1_ci)}",
                 "reference" if d.is_reference else (f"drop {d.drop:+.2f} pp {_ci(d.drop_ci)}" if d.drop is not None
                                                     else "drop unknown"),
                 f"{_fmt(d.size_mb, 3)} MB on disk ({_fmt(d.zip_mb, 3)} MB zipped)",
                 (f"{_fmt(d.latency_ms, 3)} ms median latency" if d.latency_ms is not None else "latency not measured")]
        parts.append(f'<p class="pb-facts">{" · ".join(facts)}</p>')
    parts.append(f"<p><b>Your budget:</b> {esc(budget_text(rec.budgets))}. <b>Objective:</b> {esc(rec.objective)} "
                 f"— {esc(rec.objective_reason)}.</p>")
    parts.append(f"<p><b>Why:</b> {esc(rec.why)}</p>")
    parts.append(f"<p><b>Technique:</b> {esc(rec.technique)}</p>")
    stages = ", ".join(f"{s} ({len(r.get('variants', []))} variant(s))" for s, r in data.records.items())
    ref = esc(data.reference) if data.reference else "none recorded"
    parts.append(f'<p class="pb-small">Stages with results: {esc(stages)}. Reference variant: {ref}. '
                 f"{len(rec.feasible)} of {len(data.rows)} variant(s) meet the budget.</p>")
    lat_prov = next((provenance_text(r, "latency") for r in data.rows if r.latency_ms is not None), None)
    if lat_prov:
        parts.append(f'<p class="pb-small">Latency figures: {esc(lat_prov.split(": ", 1)[-1])}.</p>')
    parts.append("</div>")
    return "".join(parts)


def pitfalls_html(data: ReportData) -> str:
    """The pitfalls the stages actually met on this model, per stage, without duplicates."""
    seen, items = set(), []
    for stage, rec in data.records.items():
        for p in rec.get("pitfalls") or []:
            if not isinstance(p, dict):
                p = {"title": str(p), "detail": ""}
            key = (p.get("title"), p.get("detail"))
            if key in seen:
                continue
            seen.add(key)
            items.append(f'<li><span class="pb-tag">{esc(stage)}</span> <b>{esc(p.get("title", ""))}</b>'
                         + (f": {esc(p.get('detail'))}" if p.get("detail") else "") + "</li>")
    if not items:
        return ('<div class="pb-report"><p>No pitfalls were met on this model in the stages that ran '
                f'({esc(", ".join(data.records))}).</p></div>')
    return f'<div class="pb-report"><ul class="pb-pitfalls">{"".join(items)}</ul></div>'


# --------------------------------------------------------------------------- charts
def pareto_figure(data: ReportData, rec: Recommendation | None = None) -> Any:
    """Accuracy vs size and accuracy vs latency, side by side (``views.accuracy_figure``)."""
    ref = next((r.top1 for r in data.rows if r.is_reference), None)
    limits = data.budget.limits()
    highlight = rec.deliverable.name if rec is not None and rec.deliverable is not None else None
    from playbook.views import Chart, _figure, accuracy_chart

    fig, axes = _figure(11, 4.6, 2)
    for ax, x in zip(axes, ("size_mb", "latency_ms")):
        accuracy_chart(ax, [r.raw for r in data.rows], x, reference_top1=ref, max_top1_drop=limits["top1_drop"],
                       highlight=highlight, budget_x=limits.get(x))
        ax.set_title("Accuracy vs size" if x == "size_mb" else "Accuracy vs latency")
    fig.tight_layout()
    return Chart(fig, f"test top-1 of {len(data.rows)} variants against package size and against latency")


def pareto_image(data: ReportData, rec: Recommendation | None = None) -> Any:
    """``pareto_figure``: shown inline as PNG, embedded in the HTML as base64."""
    return pareto_figure(data, rec)


def deliverables_html(data: ReportData, rec: Recommendation) -> str:
    """The package to ship, a Swift snippet from its real I/O, and the command that reproduces this report."""
    d = rec.deliverable
    parts = ['<div class="pb-report">']
    if d is None:
        parts.append("<p>No variant to deliver.</p>")
    else:
        flag = "" if rec.chosen else ' <span class="pb-miss">outside your budget</span>'
        parts.append(f"<p><b>Package:</b> <code>{esc(d.package or 'not recorded')}</code> (in the model's reports "
                     f"folder){flag}</p>")
        dataset = data.records["baseline"].get("dataset", {}) if "baseline" in data.records else {}
        if d.raw.io.get("inputs"):
            snippet = swift_snippet(d.package or f"{d.name}.mlpackage", d.raw.io,
                                    normalisation={"mean": dataset.get("mean"), "std": dataset.get("std")}
                                    if dataset.get("mean") else None, class_names=dataset.get("classes"))
            parts.append('<p><b>Swift</b> <span class="pb-small">(inputs and outputs as recorded from the '
                         f'package)</span>:</p><pre class="pb-code">{esc(snippet)}</pre>')
        else:
            parts.append("<p>The record does not hold the package's inputs and outputs, so no Swift snippet can be "
                         "generated.</p>")
    parts.append(f'<p><b>Reproduce this report:</b></p><pre class="pb-code">{esc(data.command().shell())}</pre>')
    parts.append("</div>")
    from playbook.report.device import benchmark_html  # where latencies come from; the iPhone benchmark

    parts.append(benchmark_html(data.records))
    return "".join(parts)


# --------------------------------------------------------------------------- offline HTML
REPORT_CSS = """
.pb-report { font-size: 14px; line-height: 1.45; }
.pb-table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0; }
.pb-table th, .pb-table td { border: 1px solid #d0d7de; padding: 4px 7px; vertical-align: top; text-align: left; }
.pb-table th { background: #f3f5f7; }
.pb-table tr.pb-chosen td { background: #eef8ee; }
.pb-ci { color: #57606a; font-size: 11px; white-space: nowrap; }
.pb-note { color: #57606a; }
.pb-notes, .pb-small { font-size: 11.5px; color: #444; }
.pb-tag { display: inline-block; background: #eef1f4; border-radius: 3px; padding: 0 5px; font-size: 11px; }
.pb-desc { color: #57606a; font-size: 11px; }
.pb-ok { color: #1a7f37; font-weight: 600; } .pb-miss { color: #cf222e; font-weight: 600; }
.pb-headline { font-size: 20px; margin: 4px 0; } .pb-missline { color: #cf222e; }
.pb-facts { font-size: 15px; } .pb-warn { background: #fff8c5; padding: 6px 9px; border-radius: 4px; }
.pb-code { background: #f6f8fa; padding: 10px; border-radius: 4px; font-size: 12px; white-space: pre-wrap; }
.pb-failed { background: #ffebe9; padding: 8px 12px; border-radius: 4px; }
body.pb-page { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto;
  max-width: 1100px; padding: 0 16px; color: #1f2328; }
"""

_TEMPLATE_NAME = "playbook_offline.html.j2"
_OFFLINE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style type="text/css">{{ resources.playbook_css }}</style>{% endblock extra_css %}
{% block data_javascript scoped %}{% endblock data_javascript %}
{% block data_widget_view scoped %}{% endblock data_widget_view %}
"""

_OFFLINE_PATTERNS = [
    ("external script", re.compile(r"<script\b[^>]*\bsrc\s*=", re.I)),
    ("external link/src", re.compile(r"\b(?:src|href|data|action|poster)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)),
    ("CSS url() to the network", re.compile(r"url\(\s*[\"']?\s*(?:https?:)?//", re.I)),
    ("CSS @import", re.compile(r"@import\b", re.I)),
]


def offline_problems(text: str) -> list[str]:
    """Everything in an HTML page that would load from the network (empty = opens offline)."""
    out = []
    for what, pattern in _OFFLINE_PATTERNS:
        for m in pattern.finditer(text):
            out.append(f"{what}: {text[m.start():m.start() + 100]!r}")
    return out


def _strip_external(text: str) -> str:
    text = re.sub(r"<script\b[^>]*\bsrc\s*=[^>]*>\s*</script>", "", text, flags=re.I)
    text = re.sub(r"<link\b[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//[^>]*>", "", text, flags=re.I)
    text = re.sub(r"\bhref(\s*=\s*[\"']?\s*(?:https?:)?//)", r"data-offline-href\1", text, flags=re.I)
    return text


def notebook_to_html(notebook: str | Path, title: str | None = None) -> str:
    """An executed notebook as one self-contained HTML page: no code cells, no prompts, no stderr,
    figures embedded as base64 PNG, no script or stylesheet from the network."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import Preprocessor

    class DropStderr(Preprocessor):
        def preprocess_cell(self, cell, resources, index):  # noqa: D102 - nbconvert hook
            if cell.get("cell_type") == "code":
                cell.outputs = [o for o in cell.get("outputs", [])
                                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            return cell, resources

    nb = nbformat.read(str(notebook), as_version=4)
    if title:
        nb.metadata["title"] = title
    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _OFFLINE_TEMPLATE})])
    exporter.template_file = _TEMPLATE_NAME
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.exclude_anchor_links = True
    exporter.embed_images = True
    exporter.register_preprocessor(DropStderr(), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"playbook_css": REPORT_CSS})
    if offline_problems(body):
        body = _strip_external(body)
    problems = offline_problems(body)
    if problems:
        raise ValueError(f"the HTML report would load resources from the network: {problems[:3]}")
    return body


def export_html(notebook: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write ``notebook_to_html(notebook)`` to ``out`` atomically (temp file beside it, then ``os.replace``)."""
    return atomic_write_text(Path(out), notebook_to_html(notebook, title))


_IMG_PNG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']data:image/png;base64,([A-Za-z0-9+/=\s]+)", re.I)


def embedded_images(text: str) -> int:
    """How many ``<img>`` tags of a page embed a base64 PNG."""
    return len(_IMG_PNG.findall(text))


def decode_first_png(text: str) -> bytes:
    """The bytes of the first ``<img>``-embedded PNG (for tests)."""
    m = _IMG_PNG.search(text)
    if not m:
        raise ValueError("no embedded PNG")
    return base64.b64decode(m.group(1))

