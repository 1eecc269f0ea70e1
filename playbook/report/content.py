"""What the report says, in one language: every section as plain data (text already localised and formatted),
built from the stage records and the recommendation.  The Jinja2 template (``templates/report.html.j2``) only
lays it out, escaping everything it inserts.

``build(data, rec, lang)`` returns a ``dict`` with one key per section (``cover``, ``alerts``, ``summary``,
``recommendation``, ``charts``, ``table``, ``per_class``, ``deliverables``, ``next_steps``, ``risks``,
``pitfalls``, ``methodology``, ``glossary``, ``sources``).  Reads records (and the delivered package's own
metadata), never notebook outputs.  The facts several sections share are in ``facts.py``; the closing sections
(next steps to sources) in ``closing.py``.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Sequence

from playbook.report.closing import SOURCES, _glossary, _methodology, _next_steps, _pitfalls, _risks
from playbook.report.facts import (TARGET_OS, _baseline, _environment_line, _png_data_uri, _reference, _where,
                                   deployment_target, describe, own_warnings, package_metadata, package_target)
from playbook.report.i18n import REPORT_FILES, Locale
from playbook.report.recommend import Recommendation, ReportData, Row, latency_runtime
from playbook.report.swift import swift_snippet
from playbook.stages import STAGES

SECTIONS = ("summary", "recommendation", "charts", "variants", "per_class", "deliverables", "next", "risks",
            "pitfalls", "methodology", "glossary", "sources")


# --------------------------------------------------------------------------- sections
def _cover(data: ReportData, loc: Locale, client: str, when: dt.datetime) -> dict[str, Any]:
    base = _baseline(data)
    ds = (base.get("dataset") or {}) if base else {}
    training = (base.get("training") or {}) if base else {}
    dataset = loc.t("cover.dataset_detail", name=ds.get("name", "—"), classes=len(ds.get("classes") or []),
                    train=loc.num(ds.get("train"), 0), test=loc.num(ds.get("test"), 0)) if ds else "—"
    model = (loc.t("cover.model_detail", model=data.model, params=loc.num(training.get("parameters"), 0))
             if training.get("parameters") else data.model)
    env = next((r.environment for r in data.records.values() if r.environment), {})
    version = next((r.playbook_version for r in data.records.values() if r.playbook_version), "") or "—"
    commit = env.get("git_commit")
    return {"title": loc.t("title"), "subtitle": loc.t("subtitle", model=data.model, dataset=ds.get("name", "—")),
            "fields": [(loc.t("cover.client"), client or loc.t("cover.no_client")),
                       (loc.t("cover.model"), model), (loc.t("cover.dataset"), dataset),
                       (loc.t("cover.date"), loc.date(when)),
                       (loc.t("cover.version"), version + (f" ({commit})" if commit else "")),
                       (loc.t("cover.run"), loc.t("cover.run_smoke") if data.smoke else loc.t("cover.run_full"))]}


def _alerts(data: ReportData, rec: Recommendation, loc: Locale) -> list[dict[str, Any]]:
    alerts = []
    base = _baseline(data)
    if data.smoke:
        ds = (base.get("dataset") or {}) if base else {}
        history = ((base.get("training") or {}).get("history") or []) if base else []
        repeats = next((r.raw.latency.get("repeats") for r in data.rows if r.raw.latency.get("repeats")), None)
        alerts.append({"kind": "smoke", "title": loc.t("alert.smoke.title"),
                       "text": loc.t("alert.smoke.text", train=loc.num(ds.get("train"), 0),
                                     epochs=len(history) or 1, test=loc.num(ds.get("test"), 0),
                                     repeats=loc.num(repeats, 0)), "recorded": [], "computed": []})
    recorded = list(data.warnings)
    computed = [] if recorded else own_warnings(data, loc)
    if recorded or computed:
        alerts.append({"kind": "warning", "title": loc.t("alert.warn.title"), "text": loc.t("alert.warn.text"),
                       "recorded": recorded, "computed": computed})
    if rec.chosen is None and rec.closest is not None:
        alerts.append({"kind": "nofit", "title": loc.t("alert.nofit.title"), "text": _closest_text(rec, loc), "computed": [],
                       "recorded": []})
    return alerts


def provisional(data: ReportData, loc: Locale) -> bool:
    """The recommendation is tempered: a smoke run, or the baseline carries (or shows) a warning."""
    return data.smoke or bool(data.warnings) or bool(own_warnings(data, loc))


def _accuracy_phrase(row: Row, loc: Locale) -> str:
    vs = row.raw.vs_reference
    delta = None if row.drop is None else -row.drop
    ci = loc.interval(-row.drop_ci[1], -row.drop_ci[0], signed=True) if row.drop_ci else "—"
    p = loc.p_value(row.p_value)
    if vs is None or delta is None or not row.drop_ci:
        return loc.t("sum.noise", delta=loc.signed(delta), ci=ci, p=p)
    low, high = -row.drop_ci[1], -row.drop_ci[0]
    if low <= 0.0 <= high or not vs.significant:
        return loc.t("sum.noise", delta=loc.signed(delta), ci=ci, p=p)
    key = "sum.loss" if delta < 0 else "sum.gain"
    return loc.t(key, abs=loc.num(abs(delta)), ci=ci, p=p)


def _size_phrase(row: Row, ref: Row | None, loc: Locale) -> str:
    if row.is_reference or ref is None or not ref.size_mb or not row.size_mb:
        return loc.t("sum.is_reference", size=loc.mb(row.size_mb))
    ratio = ref.size_mb / row.size_mb
    if ratio < 1.05:
        return loc.t("sum.larger", size=loc.mb(row.size_mb), ref_size=loc.mb(ref.size_mb))
    return loc.t("sum.smaller", ratio=loc.ratio(ratio), ratio_plain=loc.num(ratio, 1), size=loc.mb(row.size_mb),
                 ref_size=loc.mb(ref.size_mb))


def _slower_reason(row: Row, loc: Locale) -> str:
    scheme = str(row.raw.get("scheme") or "")
    precision = str(row.raw.get("precision") or "")
    if "w8a8" in scheme.lower() or "activation" in str(row.raw.get("technique") or ""):
        return loc.t("why.w8a8")
    if precision == "fp16":
        return loc.t("why.fp16")
    return loc.t("why.other")


def _latency_sentences(row: Row, ref: Row | None, loc: Locale) -> list[str]:
    if row.latency_ms is None:
        return [loc.t("sum.lat_none")]
    if latency_runtime(row) == "reference":
        out = [loc.t("sum.lat_reference", ms=loc.ms(row.latency_ms))]
        if ref is not None and ref.latency_ms and not row.is_reference and row.latency_ms > ref.latency_ms * 1.05:
            out.append(loc.t("sum.lat_slower", ms=loc.ms(row.latency_ms), ref_ms=loc.ms(ref.latency_ms),
                             why=_slower_reason(row, loc)))
        return out
    return [loc.t("sum.lat_device", ms=loc.ms(row.latency_ms), where=_where(row, loc))]


def _summary(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    d = rec.deliverable
    ref = _reference(data)
    if d is None:
        return {"headline": loc.t("sum.nothing"), "kind": "none", "sentences": [], "cards": []}
    if rec.chosen is None:
        headline, kind = loc.t("sum.closest", name=d.name), "closest"
    elif provisional(data, loc):
        headline, kind = loc.t("sum.provisional", name=d.name), "provisional"
    else:
        headline, kind = loc.t("sum.ship", name=d.name), "ship"
    what = loc.t("sum.what", description=describe(d, loc) or d.name, stage=loc.stage(d.stage)) \
        if d.description else ""
    size_part = _size_phrase(d, ref, loc)
    if d.is_reference:
        first = loc.t("sum.sentence_ref", name=d.name, size_part=size_part)
    else:
        first = loc.t("sum.sentence", name=d.name, size_part=size_part, acc_part=_accuracy_phrase(d, loc))
    sentences = [s for s in (what, first) if s] + _latency_sentences(d, ref, loc)
    ratio = (ref.size_mb / d.size_mb) if ref is not None and ref.size_mb and d.size_mb else None
    target = deployment_target(d)
    cards = [
        {"label": loc.t("card.size"), "value": loc.mb(d.size_mb),
         "note": loc.t("card.reference") if d.is_reference or ratio is None else
         loc.t("card.size_note", ratio=loc.ratio(ratio), ratio_plain=loc.num(ratio, 1))},
        {"label": loc.t("card.top1"), "value": loc.pct(d.top1),
         "note": loc.t("card.reference") if d.is_reference else
         loc.t("card.top1_note", delta=loc.signed(None if d.drop is None else -d.drop))},
        {"label": loc.t("card.latency"), "value": loc.ms(d.latency_ms),
         "note": loc.t("card.latency_ref") if latency_runtime(d) == "reference" else _where(d, loc)},
        {"label": loc.t("card.target"), "value": target or "—",
         "note": loc.t("card.target_note") + (f" ({TARGET_OS[target]})" if target in TARGET_OS else "")},
    ]
    return {"headline": headline, "kind": kind, "sentences": sentences, "cards": cards, "name": d.name,
            "stage": loc.stage(d.stage)}


def _closest_text(rec: Recommendation, loc: Locale) -> str:
    d = rec.closest
    missed = []
    for c in rec.checks.get(d.key, ()):
        if c.ok:
            continue
        axis = {"top1_drop": "axis.accuracy", "size_mb": "axis.size", "latency_ms": "axis.latency"}[c.axis]
        if c.value is None:
            missed.append(loc.t("rec.miss_unmeasured", axis=loc.t(axis)))
        elif c.axis == "top1_drop":
            missed.append(loc.t("rec.miss_drop", value=loc.num(c.value), limit=loc.num(c.limit, 1)))
        elif c.axis == "size_mb":
            missed.append(loc.t("rec.miss_size", value=loc.mb(c.value), limit=loc.mb(c.limit)))
        else:
            missed.append(loc.t("rec.miss_latency", value=loc.ms(c.value), limit=loc.ms(c.limit)))
    return loc.t("rec.closest", name=d.name, missed=loc.join(missed))


def _technique(data: ReportData, rec: Recommendation, loc: Locale) -> str:
    compressed = [r for r in data.rows if r.stage != "baseline"]
    stages = sorted({r.stage for r in compressed})
    if not compressed:
        return loc.t("rec.tech_none")
    if len(stages) == 1:
        return loc.t("rec.tech_one", stages=loc.stage(stages[0]))
    pool = [r for r in rec.feasible if r.stage != "baseline"] or compressed
    by_acc = max(pool, key=lambda r: (r.top1 if r.top1 is not None else -1, -(r.size_mb or 0)))
    by_size = min(pool, key=lambda r: (r.size_mb if r.size_mb is not None else float("inf"), -(r.top1 or 0)))
    return loc.t("rec.tech_compare", acc_stage=loc.stage(by_acc.stage), acc_name=by_acc.name,
                 acc=loc.pct(by_acc.top1), size_stage=loc.stage(by_size.stage), size_name=by_size.name,
                 size=loc.mb(by_size.size_mb))


def _recommendation(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    budgets = rec.budgets
    budget = loc.t("rec.budget_text", drop=loc.num(budgets["top1_drop"], 1),
                   size=loc.t("rec.size_limit", mb=loc.mb(budgets["size_mb"])) if "size_mb" in budgets
                   else loc.t("rec.size_free"),
                   latency=loc.t("rec.lat_limit", ms=loc.ms(budgets["latency_ms"])) if "latency_ms" in budgets
                   else loc.t("rec.lat_free"))
    objective = loc.t(f"obj.{rec.objective}")
    if "cannot rank variants" in rec.objective_reason:
        objective += loc.t("obj.fallback")
    lines = []
    if rec.chosen is not None:
        c = rec.chosen
        lines.append(loc.t("rec.count", n=len(rec.feasible), total=len(data.rows)))
        value = {"size": loc.mb(c.size_mb), "accuracy": loc.pct(c.top1), "latency": loc.ms(c.latency_ms)}
        lines.append(loc.t(f"rec.best_{rec.objective}", name=c.name, value=value[rec.objective]))
        r2 = rec.runner_up
        if r2 is not None:
            if rec.objective == "size" and c.size_mb and r2.size_mb:
                ratio = r2.size_mb / c.size_mb
                if round(ratio, 2) <= 1.0:
                    lines.append(loc.t("rec.next_tie_size", name=r2.name, value=loc.mb(r2.size_mb)))
                else:
                    lines.append(loc.t("rec.next_larger", name=r2.name, value=loc.mb(r2.size_mb),
                                       ratio=loc.ratio(ratio, 2), ratio_plain=loc.num(ratio, 2)))
            else:
                other = {"size": loc.mb(r2.size_mb), "accuracy": loc.pct(r2.top1), "latency": loc.ms(r2.latency_ms)}
                lines.append(loc.t("rec.next_other", name=r2.name, value=other[rec.objective]))
        if c.drop_ci is not None and c.drop_ci[1] > budgets["top1_drop"] + 1e-9:
            lines.append(loc.t("rec.caution", high=loc.num(c.drop_ci[1]), budget=loc.num(budgets["top1_drop"], 1)))
    elif rec.closest is not None:
        lines.append(_closest_text(rec, loc))
    return {"budget": budget, "objective": objective, "lines": lines, "technique": _technique(data, rec, loc)}


def _chart_images(data: ReportData, rec: Recommendation, loc: Locale) -> list[dict[str, Any]]:
    from playbook import views

    ref = _reference(data)
    ref_top1 = ref.top1 if ref is not None else None
    budget = rec.budgets["top1_drop"]
    highlight = rec.deliverable.name if rec.deliverable is not None else None
    variants = [r.raw for r in data.rows]
    zoom = None
    if ref_top1 is not None:
        pool = list(rec.feasible) or list(data.rows)
        lows = [r.top1_ci[0] if r.top1_ci else r.top1 for r in pool if r.top1 is not None]
        zoom = max(budget * 1.5, ref_top1 - min(lows + [ref_top1 - budget])) + 0.5
    ringed = loc.t("tag.closest") if rec.chosen is None else (
        loc.t("chart.provisional") if provisional(data, loc) else loc.t("tag.recommended"))
    charts = []
    for x in ("size_mb", "latency_ms"):
        images = {}
        for layout, (width, height) in CHART_LAYOUTS.items():  # a wide one, and a tall one for phones
            chart = views.accuracy_figure(variants, (x,), zooms=(zoom,), lang=loc.lang, reference_top1=ref_top1,
                                          max_top1_drop=budget, highlight=highlight, highlight_label=ringed,
                                          budget_x=rec.budgets.get(x) if x == "size_mb" else None, width=width,
                                          height=height)
            images[layout] = (_png_data_uri(compact_png(chart.png(dpi=96))), chart.alt)
            chart.figure.clear()
        caption = loc.t("chart.size.caption") if x == "size_mb" else loc.t(
            "chart.latency.caption", where=_where(rec.deliverable, loc) if rec.deliverable else loc.t("not_measured"))
        charts.append({"id": f"chart-{x}", "src": images["wide"][0], "phone_src": images["phone"][0],
                       "alt": images["wide"][1], "caption": caption})
    return charts


# Chart sizes in inches at 96 dpi: side by side on a wide screen; on a phone (<= 720 px) a taller chart drawn for
# ~390 px, so its text is as large on the phone as on the desktop.
CHART_LAYOUTS = {"wide": (5.8, 4.9), "phone": (4.0, 5.4)}


def compact_png(png: bytes, colours: int = 96) -> bytes:
    """A chart PNG as an optimised palette PNG (charts use a few flat colours: about half the bytes)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def provenance_text(row: Row, axis: str, loc: Locale) -> str:
    """Where the row's figure on ``axis`` comes from, or why it is missing (localised; recorded reasons verbatim)."""
    name = loc.t(f"axis.{axis}")
    prov = row.provenance.get(axis)
    if axis == "size":
        return loc.t("prov.size")
    if not isinstance(prov, dict):
        return loc.t("prov.unknown", axis=name)
    if prov.get("measured") is False:
        what = str(prov.get("what") or "").removeprefix("not measured: ").removeprefix("not measured")
        return loc.t("prov.unmeasured", axis=name, what=what.strip() or "—")
    what = f"; {prov['what']}" if prov.get("what") and axis != "accuracy" else ""
    if axis == "accuracy" and row.raw.n_test:
        what = loc.t("test_images", n=loc.num(row.raw.n_test, 0))
    runtime = prov.get("runtime") or prov.get("backend")
    device = loc.t("prov.device", device=prov["device"]) if prov.get("device") else ""
    if runtime == "reference":
        return loc.t("prov.reference", axis=name, device=device, what=what)
    if runtime == "coreml":
        units = f" ({prov.get('compute_units')})" if prov.get("compute_units") else ""
        return loc.t("prov.coreml", axis=name, units=units, device=device, what=what)
    return f"{name}: {prov.get('note') or prov.get('device') or '—'}{what}"


class _Notes:
    """Footnotes: each distinct provenance text gets one number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


def _table(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    notes = _Notes()
    ref = _reference(data)
    deliverable = rec.deliverable.key if rec.deliverable is not None else None
    order = sorted(data.rows, key=lambda r: (not r.is_reference, r.key != deliverable,
                                             [s.name for s in STAGES].index(r.stage) if r.stage in
                                             [s.name for s in STAGES] else 99, r.size_mb or 0, r.name))
    rows = []
    for r in order:
        tags = []
        if r.is_reference:
            tags.append(loc.t("tag.reference"))
        if r.key == deliverable:
            tags.append(loc.t("tag.recommended") if rec.chosen is not None else loc.t("tag.closest"))
        checks = rec.checks.get(r.key, ())
        ok = all(c.ok for c in checks) if checks else None
        lat_measured = r.latency_ms is not None
        ratio = (ref.size_mb / r.size_mb) if ref is not None and ref.size_mb and r.size_mb else None
        rows.append({
            "name": r.name, "tags": tags, "description": describe(r, loc), "stage": loc.stage(r.stage),
            "chosen": r.key == deliverable,
            "top1": loc.num(r.top1), "top1_ci": loc.interval(*r.top1_ci) if r.top1_ci else "",
            "top1_note": notes.mark(provenance_text(r, "accuracy", loc)),
            "delta": "0" if r.is_reference else loc.signed(None if r.drop is None else -r.drop),
            "delta_ci": "" if r.is_reference or not r.drop_ci else
            loc.interval(-r.drop_ci[1], -r.drop_ci[0], signed=True),
            "p": "" if r.is_reference else loc.p_value(r.p_value).removeprefix("p ").removeprefix("= "),
            "size": loc.num(r.size_mb, 3), "ratio": loc.ratio(ratio) if ratio else "",
            "size_note": notes.mark(provenance_text(r, "size", loc)), "zip": loc.num(r.zip_mb, 3),
            "latency": (f"{loc.num(r.latency_ms, 3)} / {loc.num(r.latency_p90_ms, 3)}" if lat_measured
                        else loc.t("not_measured")),
            "latency_note": notes.mark(provenance_text(r, "latency", loc)), "where": _where(r, loc),
            "memory": loc.num(r.memory_mb, 1) if r.memory_mb is not None else loc.t("not_measured"),
            "memory_note": notes.mark(provenance_text(r, "memory", loc)),
            "energy": loc.num(r.energy_mj, 3) if r.energy_mj is not None else loc.t("not_measured"),
            "energy_note": notes.mark(provenance_text(r, "energy", loc)),
            "target": deployment_target(r) or "—",
            "budget": None if ok is None else (loc.t("yes") if ok else loc.t("no")), "ok": ok,
            "budget_title": "; ".join(c.text() for c in checks),
        })
    env = _environment_line(data)
    return {"rows": rows, "notes": notes.texts, "environment": loc.t("measured_on", env=env) if env else "",
            "columns": [loc.t(k) for k in ("col.variant", "col.stage", "col.top1", "col.delta", "col.p", "col.size",
                                           "col.zip", "col.latency", "col.where", "col.memory", "col.energy",
                                           "col.target", "col.budget")]}


def _per_class(data: ReportData, loc: Locale) -> dict[str, Any]:
    base = _baseline(data)
    pytorch = (base.get("pytorch") or {}) if base else {}
    per_class = pytorch.get("per_class") or {}
    if not per_class:
        return {"intro": loc.t("pc.none"), "rows": []}
    weak = min(per_class, key=lambda k: per_class[k])
    rows = [{"name": k, "value": loc.pct(v, 1), "width": max(0.0, min(100.0, float(v))), "weak": k == weak}
            for k, v in per_class.items()]
    return {"intro": loc.t("pc.intro", n=loc.num(pytorch.get("n"), 0), weak=weak, acc=loc.pct(per_class[weak], 1)),
            "rows": rows, "head": (loc.t("pc.class"), loc.t("pc.accuracy")), "weak": weak,
            "weak_value": per_class[weak]}


def _deliverables(data: ReportData, rec: Recommendation, loc: Locale, folder: str) -> dict[str, Any]:
    from playbook.report.device import benchmark_html

    d = rec.deliverable
    out: dict[str, Any] = {"reproduce": data.command().shell(), "none": "", "device_html": benchmark_html(data.records)}
    if d is None:
        out["none"] = loc.t("del.none")
        return out
    base = _baseline(data)
    ds = (base.get("dataset") or {}) if base else {}
    path = d.package or f"{d.name}.mlpackage"
    target = deployment_target(d) or package_target(d.raw.package_path(data.model_dir))
    facts = [(loc.t("del.target"), loc.t("del.target_value", target=target, os=TARGET_OS.get(target, target))
              if target else "—"),
             (loc.t("del.precision"), str(d.raw.get("precision") or "—").upper()),
             (loc.t("del.compression"), describe(d, loc) or "—"),
             (loc.t("del.io"), "; ".join(f"{f.get('name')}: {f.get('type', '').replace('Type', '')} "
                                         f"{f.get('dtype', '')} {f.get('shape', '')}".strip()
                                         for f in (d.raw.io.get("inputs") or []) + (d.raw.io.get("outputs") or []))
              or "—"),
             (loc.t("del.sha"), d.raw.package_sha256 or "—")]
    metadata = package_metadata(d.raw.package_path(data.model_dir))
    swift = None
    if d.raw.io.get("inputs"):
        swift = swift_snippet(path, d.raw.io, normalisation={"mean": ds.get("mean"), "std": ds.get("std")}
                              if ds.get("mean") else None, class_names=ds.get("classes"))
    out.update({"path": path, "where": loc.t("del.package_where", folder=folder), "outside": rec.chosen is None,
                "facts": facts, "metadata": metadata, "swift": swift, "name": d.name})
    return out


# --------------------------------------------------------------------------- the whole report
def build(data: ReportData, rec: Recommendation, lang: str = "en", client: str = "",
          when: dt.datetime | None = None, charts: bool = True) -> dict[str, Any]:
    """Everything the template shows, in ``lang`` (``en`` or ``ja``)."""
    loc = Locale(lang)
    when = when or dt.datetime.now(dt.timezone.utc)
    folder = f"reports/{data.model_dir.name}"
    per_class = _per_class(data, loc)
    other = "ja" if lang == "en" else "en"
    return {
        "lang": lang, "t": loc.t, "smoke": data.smoke, "model": data.model,
        "page_title": f"{loc.t('title')}: {data.model}",
        "switch": {"href": REPORT_FILES[other], "label": loc.t("lang_switch"), "lang": other},
        "index_href": "../index.html",
        "toc": [(s, loc.t(f"sec.{s}")) for s in SECTIONS],
        "cover": _cover(data, loc, client, when), "alerts": _alerts(data, rec, loc),
        "summary": _summary(data, rec, loc), "recommendation": _recommendation(data, rec, loc),
        "charts": _chart_images(data, rec, loc) if charts else [],
        "table": _table(data, rec, loc), "per_class": per_class,
        "deliverables": _deliverables(data, rec, loc, folder), "next_steps": _next_steps(data, rec, loc, per_class),
        "risks": _risks(data, rec, loc), "pitfalls": _pitfalls(data, loc), "methodology": _methodology(data, loc),
        "glossary": _glossary(loc), "sources": SOURCES,
        "recorded_note": loc.t("recorded_in_english"),
        "footer": loc.t("generated", version=next((r.playbook_version for r in data.records.values()
                                                    if r.playbook_version), "—"), folder=folder),
    }


def summary_json(content: dict[str, Any]) -> str:
    """The content without its images, as JSON (for debugging and tests)."""
    slim = {k: v for k, v in content.items() if k not in ("t", "charts")}
    return json.dumps(slim, ensure_ascii=False, indent=1, default=str)


def stage_order(names: Sequence[str]) -> list[str]:
    """Stage names in pipeline order."""
    order = [s.name for s in STAGES]
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))
