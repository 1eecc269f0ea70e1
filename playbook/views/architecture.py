"""Stage 04 (architecture swap) views: the family comparison, its accuracy charts, the Neural Engine scan and
efficientnet-lite0's fidelity on real photos."""
from __future__ import annotations

from typing import Any, Sequence

from playbook.records import VariantRecord
from playbook.views.accuracy import accuracy_figure
from playbook.views.core import Chart, Table


# =========================================================================== stage 04 (architecture swap): views
# Display only, for notebooks/04_architecture.ipynb and the report: the family comparison, its accuracy charts
# against MACs and size, the Neural Engine scan and efficientnet-lite0's fidelity on real photos.

def architecture_table(variants: Sequence[VariantRecord], baseline_parameters: int | None = None,
                       verdicts: dict[str, str] | None = None) -> Table:
    """Families next to the baseline: parameters (and their share of the baseline's), MACs, size, top-1 with its
    interval, paired change vs FP32 with its interval and McNemar p, host latency (median and p90), scan verdict."""
    rows = []
    for v in variants:
        vs = v.vs_reference
        ci = v.top1_ci or (float("nan"), float("nan"))
        params = v.get("parameters")
        rows.append({
            "variant": v.name, "family": v.get("family") or v.stage, "parameters": params,
            "params vs baseline": params / baseline_parameters if params and baseline_parameters else None,
            "MACs": v.get("macs"), "size MB": v.size_mb, "top-1 %": v.top1, "top-1 95% CI": f"[{ci[0]:.2f}, {ci[1]:.2f}]",
            "Δ top-1 vs FP32": vs.delta_top1 if vs else None,
            "Δ 95% CI": f"[{vs.ci_low:.2f}, {vs.ci_high:.2f}]" if vs else "",
            "McNemar p": vs.p_value if vs else None,
            "host ms (median)": v.latency_ms, "host ms (p90)": v.latency_p90_ms,
            "scan": (verdicts or {}).get(v.name, ""),
        })
    return Table(rows)


def architecture_figure(variants: Sequence[VariantRecord], reference_top1: float | None = None,
                        max_top1_drop: float | None = None, highlight: str | None = None) -> Chart:
    """Top-1 against multiply-accumulates and against package size, with the Pareto front in each panel and
    every point named (one chart kind for every stage: ``accuracy_figure``)."""
    chart = accuracy_figure(variants, ("macs", "size_mb"), title="architecture families at a matched training budget",
                            reference_top1=reference_top1, max_top1_drop=max_top1_drop, highlight=highlight,
                            colour_by="stage", label="all")
    chart.alt = (f"test top-1 of {len(variants)} packages against multiply-accumulates (left) and package size "
                 "(right), 95% intervals, Pareto front dashed")
    return chart


def scan_overview_table(scans: dict[str, dict[str, Any]]) -> Table:
    """One row per scanned package: computing ops, verdict, and how many findings each rule produced."""
    rules = sorted({rule for s in scans.values() for rule in s.get("counts", {})})
    rows = []
    for name, s in scans.items():
        row: dict[str, Any] = {"package": name, "computing ops": s.get("computing_ops"), "verdict": s.get("verdict")}
        row.update({rule: s.get("counts", {}).get(rule, 0) for rule in rules})
        rows.append(row)
    return Table(rows)


def scan_findings_table(scan: dict[str, Any], examples: int = 3) -> Table:
    """The findings of one scan grouped by rule: effect, how many ops, example ops with their locations and the
    measured evidence."""
    grouped: dict[str, list[dict[str, str]]] = {}
    for f in scan.get("findings", []):
        grouped.setdefault(f["rule"], []).append(f)
    counts = scan.get("counts", {})
    rows = []
    for rule, items in grouped.items():
        rows.append({"rule": rule, "effect": items[0]["effect"], "ops": counts.get(rule, len(items)),
                     "examples (op @ location: evidence)": "; ".join(
                         f"{f['op_type']} @ {f['location']}: {f['evidence']}" for f in items[:examples])
                     + (" ..." if counts.get(rule, len(items)) > examples else "")})
    if not rows:
        rows.append({"rule": "-", "effect": "-", "ops": 0, "examples (op @ location: evidence)": scan.get("verdict", "")})
    return Table(rows)


def mobile_fidelity_table(mobile: dict[str, Any]) -> Table:
    """efficientnet-lite0's packages on the labelled photos: size, agreement with PyTorch (with an exact 95%
    interval) and with the FP16 package, correct labels, host latency."""
    n = mobile["photos"]["count"]
    rows = [{"package": "PyTorch (FP32)", "size MB": None,
             "agrees with PyTorch": "-", "agree 95% CI": "", "agrees with FP16": "-",
             "correct labels": f"{mobile['pytorch']['correct']['agree']}/{n}", "host ms (median)": None}]
    for name, r in mobile["packages"].items():
        a, f = r["agreement_vs_pytorch"], r["agreement_vs_fp16"]
        rows.append({"package": name, "size MB": r["size_mb"], "agrees with PyTorch": f"{a['agree']}/{n}",
                     "agree 95% CI": f"[{a['ci95'][0]:.0f}%, {a['ci95'][1]:.0f}%]",
                     "agrees with FP16": f"{f['agree']}/{n}", "correct labels": f"{r['correct']['agree']}/{n}",
                     "host ms (median)": r["latency_ms"]})
    return Table(rows)
