"""The report's closing sections: next steps, risks, the pitfalls the stages met, methodology, glossary and the
numbered Sources list the text cites as [n].  Each is plain data, already localised, for ``content.build``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from playbook.report.facts import (TARGET_OS, _baseline, _environment_line, _reference, _where, deployment_target,
                                   layer_names, own_warnings, readable)
from playbook.report.i18n import Locale
from playbook.report.recommend import Recommendation, ReportData, latency_rankable
from playbook.stages import get_stage

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
