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

from playbook.report.charts import chart_images
from playbook.report.closing import _glossary, _methodology, _next_steps, _pitfalls, _risks, _sources
from playbook.report.facts import (WHERE_PREFIX, _baseline, _environment_line, _reference, _where,
                                   _where_short, deployment_target, describe, own_warnings, package_metadata,
                                   package_target, provisional, where_key)
from playbook.report.i18n import REPORT_FILES, Locale
from playbook.report.recommend import (Recommendation, ReportData, Row, check_budgets, latency_rankable,
                                       latency_runtime)
from playbook.report.coreai import coreai_section
from playbook.report.swift import coreai_swift_snippet, swift_snippet
from playbook.stages import STAGES
from playbook.targets import TARGET_OS

SECTIONS = ("summary", "recommendation", "charts", "variants", "per_class", "deliverables", "coreai", "next",
            "risks", "pitfalls", "methodology", "glossary", "sources")


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
            "fields": ([(loc.t("cover.client"), client)] if client else []) + [
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


def plain_name(row: Row, loc: Locale) -> str:
    """The variant in plain words, its recipe id after: "2-bit palettes learned while fine-tuning (DKM)
    (torch-palettize-2bit-dkm)"."""
    words = describe(row, loc, own=False) or row.description
    if not words or words == row.name:
        return row.name
    return loc.t("sum.plain_name", words=words[:1].upper() + words[1:] if loc.lang == "en" else words, name=row.name)


def decision(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    """The one decision line (what to do with which variant, on what conditions) and the risks that remain."""
    d = rec.deliverable
    risks, conditions = [], []
    if d is None:
        return {"line": loc.t("sum.nothing"), "risks": []}
    if rec.chosen is not None and rec.rule_risk:
        risks.append(loc.t("risk.first.rule", high=loc.num(d.drop_ci[1]), budget=loc.num(rec.budgets["top1_drop"], 1)))
        conditions.append(loc.t("cond.more_images"))
    device = any(latency_rankable(r) for r in data.rows)
    accuracy_runtime = (d.provenance.get("accuracy") or {}).get("runtime")
    if not device or accuracy_runtime != "coreml":
        risks.append(loc.t("risk.first.device", where=_where_short(d, loc)))
        conditions.append(loc.t("cond.device"))
    if data.warnings or own_warnings(data, loc):
        risks.append(loc.t("risk.first.baseline"))
        conditions.append(loc.t("cond.baseline"))
    if data.smoke:
        return {"line": loc.t("dec.smoke", name=d.name), "risks": [loc.t("risk.first.smoke")] + risks}
    if rec.chosen is None:
        return {"line": loc.t("dec.none", name=d.name), "risks": risks}
    line = (loc.t("dec.ship_if", name=d.name, conditions=loc.join(conditions)) if conditions
            else loc.t("dec.ship", name=d.name))
    return {"line": line, "risks": risks}


def _summary(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    d = rec.deliverable
    ref = _reference(data)
    if d is None:
        return {"headline": loc.t("sum.nothing"), "kind": "none", "sentences": [], "cards": [], "decision": "",
                "risks": []}
    plain = plain_name(d, loc)
    if rec.chosen is None:
        headline, kind = loc.t("sum.closest", name=plain), "closest"
    elif provisional(data, loc):
        headline, kind = loc.t("sum.provisional", name=plain), "provisional"
    else:
        headline, kind = loc.t("sum.ship", name=plain), "ship"
    size_part = _size_phrase(d, ref, loc)
    if d.is_reference:
        first = loc.t("sum.sentence_ref", name=d.name, size_part=size_part)
    else:
        first = loc.t("sum.sentence", name=d.name, size_part=size_part, acc_part=_accuracy_phrase(d, loc))
    sentences = [first]
    if rec.chosen is not None and not d.is_reference and d.drop_ci is not None and not rec.rule_risk:
        if d.drop_ci[1] <= 0:
            sentences.append(loc.t("sum.within_interval_gain", low=loc.signed(-d.drop_ci[1]),
                                   budget=loc.num(rec.budgets["top1_drop"], 1)))
        else:
            sentences.append(loc.t("sum.within_interval", high=loc.num(d.drop_ci[1]),
                                   budget=loc.num(rec.budgets["top1_drop"], 1)))
    sentences += _latency_sentences(d, ref, loc)
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
         "note": loc.t("card.latency_ref") if latency_runtime(d) == "reference" else _where_short(d, loc)},
        {"label": loc.t("card.target"), "value": target or "—",
         "note": loc.t("card.target_note") + (f" ({TARGET_OS[target]})" if target in TARGET_OS else "")},
    ]
    dec = decision(data, rec, loc)
    return {"headline": headline, "kind": kind, "sentences": sentences, "cards": cards, "name": d.name,
            "stage": loc.stage(d.stage), "decision": dec["line"], "risks": dec["risks"]}


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
    defaults = not data.budget.non_defaults(skip=("objective", "accuracy_rule"))
    objective = loc.t(f"obj.{rec.objective}")
    if "cannot rank variants" in rec.objective_reason:
        objective += loc.t("obj.fallback")
    lines = []
    if rec.chosen is not None:
        c = rec.chosen
        lines.append(loc.t("rec.count", n=len(rec.feasible), total=len(data.rows)))
        if rec.accuracy_rule == "interval":
            by_point = [r for r in data.rows if all(ch.ok for ch in check_budgets(r, budgets, "point"))]
            if len(by_point) != len(rec.feasible):
                lines.append(loc.t("rec.count_point", n=len(by_point)))
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
        if rec.rule_risk:
            lines.append(loc.t("rec.caution", high=loc.num(c.drop_ci[1]), budget=loc.num(budgets["top1_drop"], 1)))
    elif rec.closest is not None:
        lines.append(_closest_text(rec, loc))
    return {"budget": budget, "budget_label": loc.t("rec.budget_default" if defaults else "rec.budget"),
            "objective": objective,
            "objective_label": loc.t("rec.objective_default" if rec.objective_default else "rec.objective"),
            "rule_label": loc.t("rec.rule"), "rule": loc.t(f"rule.{rec.accuracy_rule}"),
            "lines": lines, "technique": _technique(data, rec, loc), "distillation": _distillation(data, loc)}


def _distillation(data: ReportData, loc: Locale) -> str:
    """Distillation's gain over seeds (mean, standard deviation, 95% interval of the mean, paired t-test), from the
    distillation record; empty without one."""
    rec = data.records.get("distillation")
    stats = (rec.get("seed_statistics") or {}) if rec is not None else {}
    if not stats or stats.get("gain_mean") is None or not stats.get("n"):
        return ""
    ci = (loc.interval(stats["ci_low"], stats["ci_high"], signed=True)
          if stats.get("ci_low") is not None and stats.get("ci_high") is not None else "—")
    return loc.t("rec.distill", n=stats["n"], mean=loc.signed(stats["gain_mean"]), sd=loc.num(stats.get("gain_std")),
                 ci=ci, p=loc.p_value(stats.get("p_value")), wins=stats.get("wins", "—"))


def _recorded(text: str, loc: Locale) -> str:
    """A provenance phrase a stage recorded in English, in ``loc``'s language where the catalogue has it."""
    from playbook.report.pitfalls import translate_phrase

    if loc.lang == "en" or not text:
        return text
    return translate_phrase(text, loc) or text


def _latency_source(prov: dict[str, Any], loc: Locale) -> str:
    """Where a best-provenance latency came from (measured by stage 05, imported, or its own stage's figure)."""
    source = str(prov.get("source") or "")
    if source.startswith("measured here"):
        text = loc.t("src.here")
    elif source.startswith("imported from"):
        text = loc.t("src.imported", what=source.removeprefix("imported from "))
    elif source.endswith(" stage"):
        text = loc.t("src.stage", stage=loc.stage(source.removesuffix(" stage")))
    else:
        text = source
    return text + (loc.t("src.runs", n=loc.num(prov["runs"], 0)) if prov.get("runs") else "")


def provenance_text(row: Row, axis: str, loc: Locale) -> str:
    """Where the row's figure on ``axis`` comes from, or why it is missing (localised; recorded reasons verbatim
    where the catalogue has no words for them)."""
    name = loc.t(f"axis.{axis}")
    prov = row.provenance.get(axis)
    if axis == "size":
        return loc.t("prov.size_aimodel" if row.target == "coreai" else "prov.size")
    if not isinstance(prov, dict):
        return loc.t("prov.unknown", axis=name)
    if prov.get("measured") is False:
        what = str(prov.get("what") or "").removeprefix("not measured: ").removeprefix("not measured")
        return loc.t("prov.unmeasured", axis=name, what=_recorded(what.strip(), loc) or "—")
    if axis == "latency" and prov.get("tier"):  # the best-provenance figure (report.device)
        return loc.t("prov.latency", axis=name, where=_where(row, loc), source=_latency_source(prov, loc))
    what = (loc.t("prov.what", what=_recorded(str(prov["what"]), loc))
            if prov.get("what") and axis != "accuracy" else "")
    if axis == "accuracy" and row.raw.n_test:
        what = loc.t("test_images", n=loc.num(row.raw.n_test, 0))
    runtime = prov.get("runtime") or prov.get("backend")
    device = loc.t("prov.device", device=prov["device"]) if prov.get("device") else ""
    if runtime == "reference":
        return loc.t("prov.reference", axis=name, device=device, what=what)
    if runtime == "coreml":
        units = f" ({prov.get('compute_units')})" if prov.get("compute_units") else ""
        return loc.t("prov.coreml", axis=name, units=units, device=device, what=what)
    if runtime in ("coreai", "coreai-host"):  # Apple's Core AI runtime on the stage's machine (issue 24)
        return loc.t(f"prov.{runtime.replace('-', '_')}", axis=name, device=device,
                     what=what if axis == "accuracy" else "")
    return f"{name}{loc.t('colon')}{prov.get('note') or prov.get('device') or '—'}{what}"


NOTE_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def note_label(n: int) -> str:
    """Table notes are lettered (a, b, ... z, aa, ab...), so they never read as the numbered Sources [n]."""
    out = ""
    while True:
        out = NOTE_LETTERS[n % 26] + out
        n = n // 26 - 1
        if n < 0:
            return out


class _Notes:
    """Footnotes: each distinct provenance text gets one letter."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return note_label(self.texts.index(text))

    def items(self) -> list[tuple[str, str]]:
        return [(note_label(i), t) for i, t in enumerate(self.texts)]


class _WhereKeys:
    """Short keys for where a latency was measured (D1 = a device, H1 = a host CPU, R = the reference executor),
    each explained once in the legend under the table."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # text -> key
        self.counts: dict[str, int] = {}

    def key(self, row: Row, loc: Locale) -> str:
        tier = where_key(row)
        if tier is None:
            return ""
        text = _where(row, loc)
        if text not in self.keys:
            prefix = WHERE_PREFIX[tier]
            self.counts[prefix] = self.counts.get(prefix, 0) + 1
            self.keys[text] = prefix + (str(self.counts[prefix]) if prefix != "R" else "")
        return self.keys[text]

    def legend(self) -> list[tuple[str, str]]:
        return [(key, text) for text, key in self.keys.items()]


def _table(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    notes = _Notes()
    wheres = _WhereKeys()
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
        if r.target == "coreai":
            tags.append(loc.t("tag.coreai"))
        checks = rec.checks.get(r.key, ())
        ok = all(c.ok for c in checks) if checks else None
        if ok and any(x.key == r.key for x, _ in rec.excluded):
            ok = False  # within the budgets, but it may not ship to this client (its OS or framework)
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
            "latency_note": notes.mark(provenance_text(r, "latency", loc)), "where": wheres.key(r, loc),
            "memory": loc.num(r.memory_mb, 1) if r.memory_mb is not None else loc.t("not_measured"),
            "memory_note": notes.mark(provenance_text(r, "memory", loc)),
            "energy": loc.num(r.energy_mj, 3) if r.energy_mj is not None else loc.t("not_measured"),
            "energy_note": notes.mark(provenance_text(r, "energy", loc)),
            "target": deployment_target(r) or "—",
            "budget": None if ok is None else (loc.t("yes") if ok else loc.t("no")), "ok": ok,
            "budget_title": budget_title(checks, loc),
        })
    env = _environment_line(data)
    return {"rows": rows, "notes": notes.items(), "where_legend": wheres.legend(),
            "environment": loc.t("measured_on", env=env) if env else "",
            "columns": [loc.t(k) for k in ("col.variant", "col.budget", "col.stage", "col.top1", "col.delta", "col.p",
                                           "col.size", "col.zip", "col.latency", "col.memory", "col.energy",
                                           "col.target")],
            "numeric": [False, False, False, True, True, True, True, True, True, True, True, False]}


def budget_title(checks: Sequence[Any], loc: Locale) -> str:
    """The budget checks of one row in words (the tooltip of its "meets budget" cell)."""
    out = []
    for c in checks:
        if c.value is None:
            out.append(loc.t("check.unmeasured", axis=loc.t(f"axis.{c.axis.split('_')[0].replace('top1', 'accuracy')}")))
            continue
        sign = "≤" if c.ok else ">"
        if c.axis == "top1_drop":
            out.append(loc.t("check.drop_interval" if c.bound == "interval" else "check.drop", value=loc.num(c.value),
                             sign=sign, limit=loc.num(c.limit, 1)))
        elif c.axis == "size_mb":
            out.append(f"{loc.t('axis.size')} {loc.mb(c.value)} {sign} {loc.mb(c.limit)}")
        else:
            out.append(f"{loc.t('axis.latency')} {loc.ms(c.value)} {sign} {loc.ms(c.limit)}")
    return ("; " if loc.lang == "en" else "、").join(out)


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
    out: dict[str, Any] = {"reproduce": data.command().shell(), "none": "", "device_html": benchmark_html(data.records, loc, data.model)}
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
        norm = {"mean": ds.get("mean"), "std": ds.get("std")} if ds.get("mean") else None
        swift = (coreai_swift_snippet(path, d.raw.io, norm, ds.get("classes")) if d.target == "coreai"
                 else swift_snippet(path, d.raw.io, normalisation=norm, class_names=ds.get("classes")))
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
    pitfalls = _pitfalls(data, loc)
    other = "ja" if lang == "en" else "en"
    return {
        "lang": lang, "t": loc.t, "smoke": data.smoke, "model": data.model,
        "page_title": f"{loc.t('title')}: {data.model}",
        "switch": {"href": REPORT_FILES[other], "label": loc.t("lang_switch"), "lang": other},
        "index_href": "../index.html" if lang == "en" else "../index.ja.html",
        "toc": [(s, loc.t(f"sec.{s}")) for s in SECTIONS],
        "cover": _cover(data, loc, client, when), "alerts": _alerts(data, rec, loc),
        "summary": _summary(data, rec, loc), "recommendation": _recommendation(data, rec, loc),
        "charts": chart_images(data, rec, loc) if charts else [],
        "table": _table(data, rec, loc), "per_class": per_class,
        "deliverables": _deliverables(data, rec, loc, folder), "coreai": coreai_section(data, rec, loc),
        "next_steps": _next_steps(data, rec, loc, per_class),
        "risks": _risks(data, rec, loc), "pitfalls": pitfalls, "methodology": _methodology(data, loc),
        "pitfalls_note": loc.t("recorded_in_english") if any(p["detail_lang"] != lang for p in pitfalls) else "",
        "glossary": _glossary(loc), "sources": _sources(loc),
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
