"""The report's "Core ML or Core AI" section: per deployment target, the variant the report would deliver (size,
accuracy with its interval, the change against FP32), the conversion problems met, the oracle agreement (Apple's Core
AI runtime against the playbook's executor on the same weights) where measured, and a Swift loading snippet for each.
When no Core AI variant was made it says why (from the quantization record).  Reads records, nothing is measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from playbook.records import COREAI_MIN_OS
from playbook.report.facts import deployment_target
from playbook.report.i18n import Locale
from playbook.report.recommend import TARGET_NAMES, Recommendation, ReportData, Row, os_major, recommend
from playbook.report.swift import COREAI_DOCS, coreai_swift_snippet, swift_snippet


def _pick(data: ReportData, framework: str, app_target: str) -> tuple[Row | None, bool]:
    """The variant the recommendation delivers when only ``framework`` may ship to an app for ``app_target``, and
    whether it meets the budgets (else it is the closest)."""
    budget = dataclasses.replace(data.budget, framework=framework, app_target=app_target)
    rec = recommend(dataclasses.replace(data, budget=budget))
    return rec.deliverable, rec.meets_budget


def _problems(info: dict[str, Any], stage: dict[str, Any], row: Row | None, target: str, loc: Locale) -> list[str]:
    if target == "coreai":
        skipped, failed = info.get("skipped") or [], info.get("failed") or []
    else:
        skipped, failed = stage.get("skipped") or [], stage.get("failed") or []
    out = []
    if skipped:
        out.append(loc.t("cai.problems.refused", n=len(skipped), names=loc.join([s["recipe"] for s in skipped])))
    no_oracle = [f for f in failed if f.get("phase") == "oracle" and f.get("error") == "CoreMLCounterpart"]
    failed = [f for f in failed if f not in no_oracle]
    if failed:
        out.append(loc.t("cai.problems.failed", n=len(failed), names=loc.join([f["recipe"] for f in failed])))
    if no_oracle:
        out.append(loc.t("cai.problems.no_oracle", n=len(no_oracle), names=loc.join([f["recipe"] for f in no_oracle])))
    messages = ((row.raw.get("details") or {}).get("messages") or []) if row is not None else []
    if target == "coreai" and any("skip" in m.lower() for m in messages):
        out.append(loc.t("cai.problems.skipped_layers", name=row.name))
    return out or [loc.t("cai.no_problems")]


def _oracle(info: dict[str, Any], loc: Locale, only: str) -> list[str]:
    out = []
    for name, o in (info.get("oracle") or {}).items():
        if name != only:
            continue
        out.append(loc.t("cai.oracle", name=name, agree=loc.pct(o.get("top1_agreement")),
                         err=f"{float(o.get('max_rel_error') or 0.0):.1e}", n=loc.num(o.get("n"), 0),
                         verdict=loc.t("cai.oracle.passed" if o.get("passed") else "cai.oracle.failed")))
    return out


def _row(data: ReportData, row: Row | None, meets: bool, target: str, label: str, info: dict[str, Any],
         stage: dict[str, Any], loc: Locale, deliverable: str | None) -> dict[str, Any]:
    """One runtime's row; ``deliverable``: the report's deliverable, whose Swift the deliverables section prints, so
    its row points there instead of printing it again."""
    if row is None:
        return {"target": label, "variant": loc.t("cai.none_variant"), "size": "—", "top1": "—", "change": "—",
                "problems": _problems(info, stage, None, target, loc), "oracle": [], "swift": None, "name": None}
    change = "—" if row.drop is None else loc.signed(-row.drop)
    if row.drop_ci:
        change += " " + loc.interval(-row.drop_ci[1], -row.drop_ci[0], signed=True)
    top1 = loc.pct(row.top1) + (" " + loc.interval(*row.top1_ci) if row.top1_ci else "")
    if row.raw.n_test:  # the Core AI runtime may measure a bounded subset (coreai_images): say on how many images
        top1 += " " + loc.t("cai.images", n=loc.num(row.raw.n_test, 0))
    base = data.records.get("baseline")
    ds = (base.get("dataset") or {}) if base else {}
    norm = {"mean": ds.get("mean"), "std": ds.get("std")} if ds.get("mean") else None
    swift, swift_ref = None, ""
    if row.raw.io.get("inputs") and row.name == deliverable:
        swift_ref = loc.t("cai.swift_in_deliverables", name=row.name)
    elif row.raw.io.get("inputs"):
        path = row.package or f"{row.name}.{'aimodel' if target == 'coreai' else 'mlpackage'}"
        swift = (coreai_swift_snippet(path, row.raw.io, norm, ds.get("classes"), str(COREAI_MIN_OS))
                 if target == "coreai" else swift_snippet(path, row.raw.io, norm, ds.get("classes")))
    oracle = _oracle(info, loc, row.name) if target == "coreai" else []
    return {"target": label, "variant": row.name if meets else loc.t("cai.outside", name=row.name),
            "size": loc.mb(row.size_mb), "top1": top1, "change": change,
            "problems": _problems(info, stage, row, target, loc), "oracle": oracle, "swift": swift,
            "swift_ref": swift_ref, "name": row.name}


def coreai_section(data: ReportData, rec: Recommendation, loc: Locale) -> dict[str, Any]:
    """Everything the template's ``coreai`` section shows, in ``loc``'s language."""
    min_os = str(COREAI_MIN_OS)
    quant = data.records.get("quantization")
    stage = {k: quant.get(k) for k in ("skipped", "failed")} if quant is not None else {}
    info = (quant.get("coreai") if quant is not None else None) or {}
    target, where = data.app_target()
    coreml_target = next((deployment_target(r) for r in data.rows if r.is_reference and deployment_target(r)),
                         None) or (target if where == "baseline" else None) or "iOS17"
    out: dict[str, Any] = {
        "intro": loc.t("cai.intro", min_os=min_os),
        "target": loc.t("cai.target_here", target=target or "—", where=loc.t(f"cai.where.{where}")),
        "gate": "", "framework": "", "rows": [], "absent": "", "absent_reason": "", "messages": [],
        "oracle_note": "", "latency_note": loc.t("cai.latency_note", min_os=min_os), "docs": list(COREAI_DOCS),
        "head": [loc.t(f"cai.col.{k}") for k in ("target", "variant", "size", "top1", "change", "problems",
                                                   "oracle")],
    }
    if data.budget.framework != "any":
        out["framework"] = loc.t("cai.framework_only", framework=TARGET_NAMES[data.budget.framework],
                                 key=data.budget.framework)
    has_coreai = any(r.target == "coreai" for r in data.rows)
    if has_coreai:
        excluded = any(r.target == "coreai" and data.budget.framework != "coreml" for r, _ in rec.excluded)
        out["gate"] = (loc.t("cai.excluded", min_os=min_os, target=target or "—") if excluded
                       else loc.t("cai.compete", target=target or "—"))
    else:
        out["absent"] = loc.t("cai.absent", why="")
        if info.get("why"):
            out["absent_reason"] = str(info["why"])
            out["absent"] += " " + loc.t("cai.absent.recorded")
        else:
            out["absent"] += loc.t("cai.absent.not_run")
    deliverable = rec.deliverable.name if rec.deliverable is not None else None
    row, meets = _pick(data, "coreml", coreml_target)
    loads_from = (deployment_target(row) if row is not None else None) or coreml_target  # e.g. an iOS18 int4 package
    out["rows"].append(_row(data, row, meets, "coreml", loc.t("cai.row.coreml", target=loads_from), info, stage,
                            loc, deliverable))
    if has_coreai:
        later = target if target and (os_major(target) or 0) >= COREAI_MIN_OS else f"iOS{min_os}"
        row, meets = _pick(data, "coreai", later)
        out["rows"].append(_row(data, row, meets, "coreai", loc.t("cai.row.coreai", min_os=min_os), info, stage,
                                loc, deliverable))
        if info.get("oracle"):
            out["oracle_note"] = loc.t("cai.oracle_note")
        chosen = out["rows"][-1]["name"]
        out["messages"] = [m for v in data.rows if v.target == "coreai" and v.name == chosen
                           for m in (v.raw.get("details") or {}).get("messages") or []][:8]
    return out
