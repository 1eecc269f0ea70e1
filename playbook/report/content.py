"""What the report says, in one language: every section as plain data (text already localised and formatted),
built from the stage records and the recommendation.  The Jinja2 template (``templates/report.html.j2``) only
lays it out, escaping everything it inserts.

``build(data, rec, lang)`` returns a ``dict`` with one key per section (``cover``, ``alerts``, ``summary``,
``recommendation``, ``charts``, ``table``, ``per_class``, ``deliverables``, ``next_steps``, ``risks``,
``pitfalls``, ``methodology``, ``glossary``, ``sources``).  Reads records (and the delivered package's own
metadata), never notebook outputs.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Sequence

from playbook.report.i18n import MESSAGES, REPORT_FILES, Locale
from playbook.report.recommend import Recommendation, ReportData, Row, latency_rankable, latency_runtime
from playbook.report.swift import swift_snippet
from playbook.stages import STAGES, get_stage

# The numbered Sources list (issue 17): the report's text cites these as [n].
SOURCES: tuple[dict[str, str], ...] = (
    {"text": "This playbook's reference executor: playbook/mlprogram.py, and the README section \"The five axes, and "
             "where each number comes from\" (it decompresses every constexpr weight once at load and runs the "
             "program's ops with PyTorch in float32)", "url": ""},
    {"text": "Apple, \"Analyzing a Core ML model's performance in Xcode\", Core ML documentation",
     "url": "https://developer.apple.com/documentation/coreml/analyzing-a-core-ml-model-s-performance-in-xcode"},
    {"text": "coremltools 9 guide, \"Optimization: Overview\"",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-overview.html"},
    {"text": "coremltools 9 guide, \"Quantization: Performance\"",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html"},
    {"text": "coremltools 9 guide, \"Palettization\"",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-palettization.html"},
    {"text": "Q. McNemar, \"Note on the sampling error of the difference between correlated proportions or "
             "percentages\", Psychometrika 12(2), 153-157, 1947, doi:10.1007/BF02295996", "url": ""},
    {"text": "B. Efron and R. J. Tibshirani, An Introduction to the Bootstrap, Chapman & Hall, 1993", "url": ""},
    {"text": "G. Hinton, O. Vinyals and J. Dean, \"Distilling the Knowledge in a Neural Network\", arXiv:1503.02531, 2015",
     "url": "https://arxiv.org/abs/1503.02531"},
    {"text": "B. Jacob et al., \"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only "
             "Inference\", arXiv:1712.05877, 2018", "url": "https://arxiv.org/abs/1712.05877"},
    {"text": "coremltools 9 guide, \"optimize.coreml API Overview\" (weights are decompressed to float and all "
             "computation uses float precision)",
     "url": "https://apple.github.io/coremltools/docs-guides/source/optimizecoreml-api-overview.html"},
)
GLOSSARY_KEYS = ("g.pp", "g.top1", "g.ci", "g.mcnemar", "g.p90", "g.pareto", "g.quant", "g.w8a8", "g.pal", "g.prune",
                 "g.qat", "g.distill", "g.ane", "g.ref", "g.target")
SECTIONS = ("summary", "recommendation", "charts", "variants", "per_class", "deliverables", "next", "risks",
            "pitfalls", "methodology", "glossary", "sources")
TARGET_OS = {"iOS15": "iOS 15 / macOS 12", "iOS16": "iOS 16 / macOS 13", "iOS17": "iOS 17 / macOS 14",
             "iOS18": "iOS 18 / macOS 15"}
TARGET_BY_SPEC = {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18"}
_MIL_NAME = re.compile(r"\b(?:const_\d+_to_fp16|const_\d+|[A-Za-z_][\w.]*_weight(?:_to_fp16)?)\b")


# --------------------------------------------------------------------------- small helpers
def _baseline(data: ReportData) -> Any:
    return data.records.get("baseline")


def _reference(data: ReportData) -> Row | None:
    return next((r for r in data.rows if r.is_reference), None)


def deployment_target(row: Row) -> str | None:
    """The variant's minimum deployment target: its record's, else the one its spec version implies."""
    target = row.raw.get("deployment_target")
    if target:
        return str(target)
    spec = (row.raw.io or {}).get("specification_version")
    return TARGET_BY_SPEC.get(int(spec)) if spec else None


def package_target(path: Path | None) -> str | None:
    """The deployment target a saved package's specification version implies (``None`` without the package)."""
    if path is None or not Path(path).exists():
        return None
    try:
        import coremltools as ct

        return TARGET_BY_SPEC.get(int(ct.utils.load_spec(str(path)).specificationVersion))
    except Exception:  # noqa: BLE001 - a damaged package: no target shown
        return None


def package_metadata(path: Path | None) -> dict[str, str] | None:
    """The delivered package's metadata as Xcode shows it (author, license, description, user metadata),
    read from its spec; ``None`` when the package is not on this machine."""
    if path is None or not Path(path).exists():
        return None
    try:
        import logging

        logging.getLogger("coremltools").setLevel(logging.ERROR)
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
    except Exception:  # noqa: BLE001 - a damaged package: the report says it cannot show the metadata
        return None
    meta = spec.description.metadata
    out = {"author": meta.author, "license": meta.license, "shortDescription": meta.shortDescription,
           "versionString": meta.versionString}
    out.update({k: v for k, v in sorted(meta.userDefined.items()) if k != "playbook.classes"})
    return {k: v for k, v in out.items() if v}


def layer_names(data: ReportData) -> dict[str, str]:
    """MIL constant names (``const_2_to_fp16``) -> the PyTorch layer they came from, from the records' layer tables."""
    names: dict[str, str] = {}
    for rec in data.records.values():
        for table in ((rec.get("sensitivity") or {}).get("layers") or [], rec.get("layers") or []):
            for layer in table:
                if isinstance(layer, dict) and layer.get("name") and (layer.get("module") or layer.get("label")):
                    names[str(layer["name"])] = str(layer.get("module") or layer.get("label"))
    return names


def readable(text: str, names: dict[str, str]) -> str:
    """Record text made readable: MIL constant names replaced by PyTorch layer names, Python list syntax removed."""
    text = str(text)
    text = re.sub(r"\[\s*'([^']*)'\s*\]", r"\1", text)  # ['a [24, 1]'] -> a [24, 1]
    text = re.sub(r"'([^']*)'(?=\s*[,\]])", r"\1", text)
    if names:
        text = _MIL_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), text)
    return text


def describe(row: Row, loc: Locale) -> str:
    """What the variant is: the recipe's own description in English; in Japanese, written from its technique."""
    if loc.lang == "en":
        return row.description
    technique = row.raw.get("technique")
    bits = (row.raw.get("recipe") or {}).get("bits")
    if row.stage == "baseline" or not technique:
        precision = str(row.raw.get("precision") or "")
        return loc.t(f"tech.{precision}") if precision in ("fp32", "fp16") else row.description
    key = f"tech.{technique}"
    if key not in MESSAGES:
        return row.description
    values = 2 ** int(bits) if isinstance(bits, (int, float)) and float(bits).is_integer() else "—"
    text = loc.t(key, bits=loc.num(bits, 0) if isinstance(bits, (int, float)) else "—", values=values)
    keep = re.search(r"-keep(\d+)$", row.name)
    if keep:
        text += loc.t("tech.keep", n=keep.group(1))
    return text


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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


def own_warnings(data: ReportData, loc: Locale) -> list[str]:
    """The report's own checks of the baseline: near chance, still improving (used when the records carry none)."""
    base = _baseline(data)
    ref = _reference(data)
    out = []
    classes = len(((base.get("dataset") or {}).get("classes") or [])) if base else 0
    if ref is not None and ref.top1 is not None and classes > 1:
        chance = 100.0 / classes
        if ref.top1 < 1.5 * chance + 5.0:
            out.append(loc.t("alert.chance", top1=loc.pct(ref.top1, 1), chance=loc.pct(chance, 1), classes=classes))
    history = ((base.get("training") or {}).get("history") or []) if base else []
    schedule = ((base.get("train_config") or {}).get("schedule") if base else None) or ""
    # A one-cycle schedule anneals the learning rate at the end, so a last-epoch jump is expected there: that case
    # is left to the warnings the baseline stage itself records.
    if len(history) >= 2 and schedule != "onecycle":
        before, after = history[-2].get("val_top1"), history[-1].get("val_top1")
        if before is not None and after is not None and after - before > 0.5 and \
                after >= max(h.get("val_top1", 0) for h in history):
            out.append(loc.t("alert.improving", before=loc.pct(before, 1), after=loc.pct(after, 1)))
    return out


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


def _where(row: Row, loc: Locale) -> str:
    runtime = latency_runtime(row)
    if row.latency_ms is None:
        return loc.t("not_measured")
    if runtime == "reference":
        return loc.t("where.reference")
    if runtime == "coreml":
        prov = row.provenance.get("latency") or {}
        units = f" ({prov.get('compute_units')})" if prov.get("compute_units") else ""
        device = f", {prov.get('device')}" if prov.get("device") else ""
        return loc.t("where.coreml", units=units, device=device)
    prov = row.provenance.get("latency") or {}
    return str(prov.get("device") or prov.get("note") or loc.t("where.unknown"))


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


def _environment_line(data: ReportData) -> str:
    env = next((rec.environment for rec in data.records.values() if rec.environment), None)
    if not isinstance(env, dict):
        return ""
    versions = env.get("versions") or {}
    vtxt = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "coremltools"))
    return ", ".join(str(p) for p in (env.get("os"), env.get("cpu"), f"Python {env.get('python')}" if env.get(
        "python") else None, vtxt) if p)


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


def _next_steps(data: ReportData, rec: Recommendation, loc: Locale, per_class: dict[str, Any]) -> list[str]:
    from playbook.notebooks import stage_notebooks

    steps = []
    d = rec.deliverable
    if data.smoke:
        steps.append(loc.t("next.smoke", command=data.command().replace(smoke=False).shell()))
    if data.warnings or own_warnings(data, loc):
        steps.append(loc.t("next.warnings"))
    if rec.chosen is None and rec.closest is not None:
        steps.append(loc.t("next.relax"))
    if d is not None and not any(latency_rankable(r) for r in data.rows):
        steps.append(loc.t("next.device", name=d.name))
    if d is not None and d.drop_ci is not None and d.drop_ci[1] > rec.budgets["top1_drop"] + 1e-9:
        steps.append(loc.t("next.more_images", name=d.name, high=loc.num(d.drop_ci[1])))
    try:
        available = {s.name for s, _ in stage_notebooks()}
    except Exception:  # noqa: BLE001 - an installed playbook without notebooks: suggest nothing
        available = set()
    for name in ("quantization", "distillation", "architecture", "benchmark"):
        if name in available and name not in data.records:
            stage = get_stage(name)
            steps.append(loc.t("next.stage", number=stage.number, title=loc.stage(name), why=loc.t(f"why.{name}")))
    if per_class.get("rows") and per_class["weak_value"] < 100.0:
        steps.append(loc.t("next.weak_class", name=per_class["weak"], acc=loc.pct(per_class["weak_value"], 1)))
    if d is not None and rec.chosen is not None:
        steps.append(loc.t("next.ship", path=Path(d.package or d.name).name))
    return steps


def _risks(data: ReportData, rec: Recommendation, loc: Locale) -> list[str]:
    d = rec.deliverable
    risks = []
    runtimes = {(r.provenance.get("accuracy") or {}).get("runtime") for r in data.rows}
    if "reference" in runtimes or not runtimes - {None}:
        risks.append(loc.t("risk.runtime"))
    else:
        device = next(((r.provenance.get("accuracy") or {}).get("device") for r in data.rows), "—")
        risks.append(loc.t("risk.coreml", device=device))
    if d is not None and d.top1_ci and d.raw.n_test:
        risks.append(loc.t("risk.test_size", n=loc.num(d.raw.n_test, 0), ci=loc.interval(*d.top1_ci),
                           half=loc.num((d.top1_ci[1] - d.top1_ci[0]) / 2, 1)))
    base = _baseline(data)
    dataset = ((base.get("dataset") or {}).get("name") if base else None) or "—"
    risks.append(loc.t("risk.domain", dataset=dataset))
    if d is not None and not d.is_reference and d.stage != "baseline":
        risks.append(loc.t("risk.memory"))
    if d is not None and deployment_target(d) in ("iOS18",):
        target = deployment_target(d)
        risks.append(loc.t("risk.target", name=d.name, target=target, os=TARGET_OS[target]))
    if all(r.energy_mj is None for r in data.rows):
        risks.append(loc.t("risk.energy"))
    return risks


def _pitfalls(data: ReportData, loc: Locale) -> list[dict[str, str]]:
    names = layer_names(data)
    seen, items = set(), []
    for stage, rec in data.records.items():
        for p in rec.pitfalls or []:
            if not isinstance(p, dict):
                p = {"title": str(p), "detail": ""}
            key = (p.get("title"), p.get("detail"))
            if key in seen:
                continue
            seen.add(key)
            items.append({"stage": loc.stage(stage), "title": readable(p.get("title", ""), names),
                          "detail": readable(p.get("detail", ""), names)})
    return items


def _methodology(data: ReportData, loc: Locale) -> list[str]:
    base = _baseline(data)
    ds = (base.get("dataset") or {}) if base else {}
    ref = _reference(data) or (data.rows[0] if data.rows else None)
    items = []
    if ref is not None:
        items.append(loc.t("m.test", n=loc.num(ref.raw.n_test, 0), dataset=ds.get("name", "—"),
                           subset=loc.t("m.subset") if data.smoke else ""))
    resamples = next((r.raw.vs_reference.resamples for r in data.rows if r.raw.vs_reference is not None), None)
    items.append(loc.t("m.accuracy", resamples=loc.num(resamples, 0)))
    items.append(loc.t("m.paired"))
    if ds.get("calib"):
        items.append(loc.t("m.calibration", n=loc.num(ds["calib"], 0)))
    training = (base.get("training") or {}) if base else {}
    train_cfg = (base.get("train_config") or {}) if base else {}
    history = training.get("history") or []
    if history:
        items.append(loc.t("m.training", epochs=len(history), lr=train_cfg.get("lr", "—"),
                           batch=train_cfg.get("batch_size", "—"), val=loc.pct(history[-1].get("val_top1"), 1)))
    elif base is not None:
        items.append(loc.t("m.training_loaded"))
    timed = next((r for r in data.rows if r.raw.latency), None)
    if timed is not None:
        lat = timed.raw.latency
        items.append(loc.t("m.latency", warmup=lat.get("warmup", "—"), repeats=lat.get("repeats", "—"),
                           threads=lat.get("threads", "—"), where=_where(timed, loc)))
    items += [loc.t("m.size"), loc.t("m.memory")]
    env = _environment_line(data)
    if env:
        items.append(loc.t("m.environment", env=env))
    return items


def _glossary(loc: Locale) -> list[tuple[str, str]]:
    return [tuple(loc.t(k).split("|", 1)) for k in GLOSSARY_KEYS]  # type: ignore[misc]


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
