"""Stage 04 (architecture swap) views: the family comparison, its accuracy charts, the Neural Engine scan and
efficientnet-lite0's fidelity on real photos.

The functions of a record read a stage-04 record (``ArchitectureRun.snapshot()`` while the notebook runs, or
``architecture.json`` afterwards): display only, no measuring."""
from __future__ import annotations

from typing import Any, Sequence

from playbook.pretrained_check import explain_lite0
from playbook.records import StageRecord, VariantRecord
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


def mobile_fidelity_table(mobile: dict[str, Any] | None) -> Table:
    """efficientnet-lite0's packages on the labelled photos: size, agreement with PyTorch (with an exact 95%
    interval) and with the FP16 package, correct labels, host latency (an empty table when it was not checked)."""
    if not mobile:
        return Table([])
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


# --------------------------------------------------------------------------- tables and narrative of the record
def _knobs(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in knobs.items()) or "-"


def family_plan_table(record: StageRecord) -> Table:
    """The baseline and every family to train, with parameters and MACs counted before training (``plan()``)."""
    base = record["baseline"]

    def row(name: str, family: str, knobs: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        return {"variant": name, "family": family, "knobs": _knobs(knobs), "parameters": facts["parameters"],
                "params vs baseline": facts["parameters"] / base["parameters"], "MACs": facts["macs"],
                "MACs vs baseline": facts["macs"] / max(base["macs"], 1)}

    rows = [row("baseline", base["model"], base.get("knobs") or {}, base)]
    rows += [row(name, f["family"], f["knobs"], f) for name, f in record["families"].items() if "parameters" in f]
    return Table(rows)


def family_training_table(record: StageRecord) -> Table:
    """Every trained family: parameters, epochs, peak learning rate, whether the cache had it, wall seconds, last
    epoch's training loss."""
    budget = record["matched_budget"]
    rows = []
    for name, fam in record["families"].items():
        t = fam.get("training")
        if not t:
            continue
        last = t["history"][-1] if t["history"] else {}
        rows.append({"variant": name, "parameters": t["parameters"], "epochs": budget["epochs"],
                     "peak lr": budget["lr"][name], "from cache": t["from_cache"], "train s (wall)": t["seconds"],
                     "last epoch loss": last.get("loss")})
    return Table(rows)


def family_table(record: StageRecord, variants: Sequence[VariantRecord] | None = None) -> Table:
    """Every family next to the baseline: parameters, MACs, size, top-1, change vs FP32, host latency, scan verdict.
    ``variants`` defaults to the record's families; pass ``run.chart_variants()`` to show the baseline's packages."""
    verdicts = {name: scan["verdict"] for name, scan in (record.get("scans") or {}).items()}
    return architecture_table(record.variants if variants is None else variants, record["baseline"]["parameters"],
                              verdicts)


def explain_criterion(record: StageRecord) -> str:
    """One sentence with the measured figures of the best compact family (or the closest miss)."""
    c = record["criterion"]
    limit = f"at most {c['max_param_ratio']:.0%} of the baseline's {c['baseline_parameters']:,} parameters"
    if c["best"] is not None:
        b = c["best"]
        who = ("a compact family" if c["compact_families_meeting_it"] else
               f"only the baseline's own family ({record.config['model']}) meets it, no other family")
        return (f"`{b['variant']}` ({who}): {b['parameters']:,} parameters ({b['param_ratio']:.1%} of the "
                f"baseline), top-1 {b['top1']:.2f}% [{b['top1_ci'][0]:.2f}, {b['top1_ci'][1]:.2f}], change vs FP32 "
                f"{b['delta_top1']:+.2f} points (95% CI [{b['delta_ci'][0]:+.2f}, {b['delta_ci'][1]:+.2f}], "
                f"McNemar p = {b['p_value']:.3g}) -- within {c['max_top1_drop']:g} points with {limit}. "
                f"All variants meeting it: {', '.join(f'`{n}`' for n in c['met_by'])}.")
    small = [v for v in record.variants if v.get("param_ratio", 1) <= c["max_param_ratio"]]
    if not small:
        return f"No family in this run has {limit}; nothing to check."
    closest = max(small, key=lambda v: v.top1)
    return (f"No family meets it in this run: the closest with {limit} is `{closest.name}` at top-1 "
            f"{closest.top1:.2f}% ({closest.delta_top1:+.2f} points vs FP32, needs >= -{c['max_top1_drop']:g}).")


def scan_rules_table(record: StageRecord) -> Table:
    """The rules table the scan applies: one row per pattern, with its source."""
    return Table(record["rules"])


def scan_demo_table(record: StageRecord) -> Table:
    """The planted demonstration: the clean program and the one with an unfriendly pattern, verdict and findings."""
    return Table([{"program": name, "what": d["what"], "computing ops": d["computing_ops"], "verdict": d["verdict"],
                   "findings": ", ".join(f"{k} x{n}" for k, n in d["counts"].items()) or "-"}
                  for name, d in (record.get("scan_demo") or {}).items()])


def explain_scan_demo(record: StageRecord) -> str:
    """Which op and rule the planted pattern triggered, and that the clean program passed."""
    demo = record.get("scan_demo")
    if not demo:
        return "The scan demonstration has not run."
    planted, clean = demo["planted"], demo["clean"]
    hits = [f for f in planted["findings"] if f["effect"] in ("fallback", "unsupported")]
    parts = [f"rule `{f['rule']}` ({f['effect']}) on `{f['op_type']}` at {f['location']}" for f in hits]
    return (f"Planted program: {planted['verdict']}; " + "; ".join(parts) + ". "
            f"Clean program: {clean['verdict']} ({clean['computing_ops']} computing ops).")


def placement_table(record: StageRecord) -> Table:
    """Core ML's planned placement (``MLComputePlan``, macOS) next to the static scan's verdict, or why there is
    none."""
    plans = record.get("compute_plans") or {}
    if not plans.get("available"):
        return Table([{"MLComputePlan": "not run", "why": plans.get("reason", "call compute_plans() first")}])
    rows = []
    for name, plan in plans["packages"].items():
        ops = plan.get("share_of_ops", {})
        cost = plan.get("share_of_cost", {})
        rows.append({"package": name, "ops on Neural Engine %": ops.get("NeuralEngine", 0.0),
                     "ops on GPU %": ops.get("GPU", 0.0), "ops on CPU %": ops.get("CPU", 0.0),
                     "cost on Neural Engine %": cost.get("NeuralEngine", 0.0),
                     "static scan": record["scans"][name]["verdict"], "error": plan.get("error", "")})
    return Table(rows)


def explain_mobile(record: StageRecord) -> str:
    """The fidelity figures of efficientnet-lite0's packages in one paragraph."""
    return explain_lite0(record.get("mobile_network"))
