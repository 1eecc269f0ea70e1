"""The report's closing sections: next steps, risks, the pitfalls the stages met, methodology, glossary and the
numbered Sources list the text cites as [n].  Each is plain data, already localised, for ``content.build``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playbook.report.facts import (_baseline, _environment_line, _reference, _where_short,
                                   deployment_target, layer_names, own_warnings, readable)
from playbook.report.i18n import MINUS, Locale
from playbook.report.recommend import Recommendation, ReportData, latency_rankable
from playbook.stages import get_stage
from playbook.targets import TARGET_OS

# The numbered Sources list (issue 17): the report's text cites these as [n].  Each entry: who, the title (a proper
# name, shown as written), what it is in English and in Japanese, and its address (a link; none for books and papers
# without one, and for the playbook's own executor, which the client may not have).
SOURCES: tuple[dict[str, str], ...] = (
    {"author": "", "title": "",
     "en": "The playbook's reference executor: it runs a saved Core ML program on Linux, decompressing every compressed "
           "weight once at load and running the program's operations with PyTorch in float32 (part of the playbook, "
           "not of Apple's tools; the methodology above describes how it was used)",
     "ja": "プレイブックのリファレンス実行系：保存した Core ML プログラムを Linux で実行し、圧縮した重みを読み込み時に"
           "一度展開して、各演算を PyTorch の float32 で計算する（Apple のツールではなくプレイブックの一部。使い方は"
           "上記の測定方法を参照）", "url": ""},
    {"author": "Apple", "title": "Analyzing a Core ML model's performance in Xcode", "en": "Core ML documentation",
     "ja": "Core ML ドキュメント",
     "url": "https://developer.apple.com/documentation/coreml/analyzing-a-core-ml-model-s-performance-in-xcode"},
    {"author": "Apple", "title": "Optimization: Overview", "en": "coremltools guide", "ja": "coremltools ガイド",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-overview.html"},
    {"author": "Apple", "title": "Quantization: Performance", "en": "coremltools guide", "ja": "coremltools ガイド",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html"},
    {"author": "Apple", "title": "Palettization", "en": "coremltools guide", "ja": "coremltools ガイド",
     "url": "https://apple.github.io/coremltools/docs-guides/source/opt-palettization.html"},
    {"author": "Q. McNemar",
     "title": "Note on the sampling error of the difference between correlated proportions or percentages",
     "en": "Psychometrika 12(2), 153–157, 1947, doi:10.1007/BF02295996",
     "ja": "Psychometrika 12(2), 153–157, 1947 年, doi:10.1007/BF02295996", "url": ""},
    {"author": "B. Efron, R. J. Tibshirani", "title": "An Introduction to the Bootstrap", "en": "Chapman & Hall, 1993",
     "ja": "Chapman & Hall, 1993 年", "url": ""},
    {"author": "G. Hinton, O. Vinyals, J. Dean", "title": "Distilling the Knowledge in a Neural Network",
     "en": "arXiv:1503.02531, 2015", "ja": "arXiv:1503.02531, 2015 年", "url": "https://arxiv.org/abs/1503.02531"},
    {"author": "B. Jacob et al.",
     "title": "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
     "en": "arXiv:1712.05877, 2018", "ja": "arXiv:1712.05877, 2018 年", "url": "https://arxiv.org/abs/1712.05877"},
    {"author": "Apple", "title": "coremltools.optimize.coreml.linear_quantize_weights",
     "en": "coremltools API reference (its docstring: weights are stored as 4- or 8-bit integers with scales and "
           "\u201call computation at runtime uses float precision\u201d)",
     "ja": "coremltools API リファレンス（重みをスケール付きの 4 ビット・8 ビット整数で保存し、実行時の計算はすべて"
           "浮動小数点で行うと明記）",
     "url": "https://apple.github.io/coremltools/source/coremltools.optimize.coreml.post_training_quantization.html"
            "#coremltools.optimize.coreml.linear_quantize_weights"},
)


def _sources(loc: Locale) -> list[dict[str, str]]:
    """The Sources list in ``loc``'s language: the cited work's title as written, what it is in ``loc``'s words."""
    return [{"author": s["author"], "title": s["title"], "text": s[loc.lang], "url": s["url"]} for s in SOURCES]


GLOSSARY_KEYS = ("g.pp", "g.top1", "g.ci", "g.mcnemar", "g.p90", "g.pareto", "g.quant", "g.w8a8", "g.pal", "g.prune",
                 "g.qat", "g.distill", "g.ane", "g.ref", "g.target")


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
        risks.append(loc.t("risk.accuracy_reference"))
    else:
        device = next(((r.provenance.get("accuracy") or {}).get("device") for r in data.rows), "—")
        risks.append(loc.t("risk.coreml", device=device))
    if not any(latency_rankable(r) for r in data.rows):
        wheres = []
        for r in data.rows:
            if r.latency_ms is not None and _where_short(r, loc) not in wheres:
                wheres.append(_where_short(r, loc))
        risks.append(loc.t("risk.latency_host", where=loc.join(wheres) or loc.t("not_measured")))
    if d is not None and d.top1_ci and d.raw.n_test:
        risks.append(loc.t("risk.test_size", n=loc.num(d.raw.n_test, 0), ci=loc.interval(*d.top1_ci),
                           half=loc.num((d.top1_ci[1] - d.top1_ci[0]) / 2, 1)))
    base = _baseline(data)
    dataset = ((base.get("dataset") or {}).get("name") if base else None) or "—"
    risks.append(loc.t("risk.domain", dataset=dataset))
    if d is not None and not d.is_reference and d.stage != "baseline":
        risks.append(loc.t("risk.memory"))
    if d is not None and deployment_target(d) in ("iOS18", "iOS26"):
        target = deployment_target(d)
        risks.append(loc.t("risk.target", name=d.name, target=target, os=TARGET_OS[target]))
    if all(r.energy_mj is None for r in data.rows):
        risks.append(loc.t("risk.energy"))
    return risks


_IDENTIFIER = re.compile(r"(?<![\w`])(?:[A-Za-z_][\w]*=(?:\([^)]*\)|'[^']*'|\"[^\"]*\"|[\w.+-]+)"
                         r"|[a-z]+(?:\.[a-z_]+){2,}|[a-z][a-z0-9]*_[a-z0-9_]+)(?![\w`])")
_ASCII_MINUS = re.compile(r"(?<![\w.\])-])-(?=\d)")


def code_marked(text: str) -> str:
    """Recorded text for the page: code identifiers (``weight_threshold=256``, ``per_block``,
    ``ct.optimize.coreml.x``) between backquotes, which the template shows as code, and a true minus sign
    before negative numbers (as every other figure on the page)."""
    text = _ASCII_MINUS.sub(MINUS, str(text))
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else _IDENTIFIER.sub(lambda m: f"`{m.group(0)}`", p) for p in parts)


def _pitfalls(data: ReportData, loc: Locale) -> list[dict[str, str]]:
    from playbook.report.pitfalls import macs_in_table_figures, translate

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
            title, detail = readable(p.get("title", ""), names), readable(p.get("detail", ""), names)
            recorded = detail
            macs = title == "MACs do not predict latency"  # the stage's figures beside the table's (issue 27)
            if macs:
                detail = macs_in_table_figures(recorded, data.rows, Locale("en")) or detail
            lang = detail_lang = "en"
            if loc.lang != "en":
                translated = translate(title, recorded, loc)
                if translated is not None:
                    title, detail, detail_lang = translated
                    lang = loc.lang
                    if macs:
                        detail = macs_in_table_figures(recorded, data.rows, loc) or detail
            items.append({"stage": loc.stage(stage), "title": code_marked(title), "detail": code_marked(detail),
                          "lang": lang, "detail_lang": detail_lang if lang != "en" else "en"})
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
        if train_cfg.get("steps"):  # a fixed-step fine-tune: its steps, not its one history entry as an epoch
            key, length = "m.training_steps", {"steps": loc.num(train_cfg["steps"], 0)}
        else:
            key, length = "m.training", {"epochs": len(history)}
        items.append(loc.t(key, **length, lr=train_cfg.get("lr", "—"), batch=train_cfg.get("batch_size", "—"),
                           val=loc.pct(history[-1].get("val_top1"), 1)))
    elif base is not None:
        items.append(loc.t("m.training_loaded"))
    timed = [r for r in data.rows if r.latency_ms is not None]
    if timed:
        runs = sorted({int(p["runs"]) for r in timed if (p := r.provenance.get("latency") or {}).get("runs")})
        warmups = sorted({int(p["warmup"]) for r in timed
                          if (p := r.provenance.get("latency") or {}).get("warmup") is not None})
        wheres = []
        for r in timed:
            if _where_short(r, loc) not in wheres:
                wheres.append(_where_short(r, loc))
        span = (loc.num(runs[0], 0) if len(runs) == 1 else f"{loc.num(runs[0], 0)}–{loc.num(runs[-1], 0)}") \
            if runs else "—"
        warm = (loc.num(warmups[0], 0) if len(warmups) == 1 else f"{loc.num(warmups[0], 0)}–{loc.num(warmups[-1], 0)}") \
            if warmups else "—"
        items.append(loc.t("m.latency", warmup=warm, runs=span, where=loc.join(wheres)))
    items += [loc.t("m.size"), loc.t("m.memory")]
    env = _environment_line(data)
    if env:
        items.append(loc.t("m.environment", env=env))
    return items


def _glossary(loc: Locale) -> list[tuple[str, str]]:
    return [tuple(loc.t(k).split("|", 1)) for k in GLOSSARY_KEYS]  # type: ignore[misc]
