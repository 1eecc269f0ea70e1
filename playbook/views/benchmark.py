"""Stage 05 (device benchmarking) views: tables and charts over the benchmark record (``run.snapshot()`` while the
notebook runs, ``benchmark.json`` afterwards) and its measurements (``playbook.bench_schema``)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from playbook.bench_schema import TIERS
from playbook.records import StageRecord
from playbook.views.core import PALETTE, Chart, Table, _figure, _mpl_text


# =========================================================================== device benchmarking (stage 05)
# Display only: tables and charts over the benchmark record's measurements (``playbook.bench_schema``).
def _measured(block: dict[str, Any] | None, key: str) -> Any:
    """A block's number, or the text "not measured" (never a number for something unmeasured)."""
    if not block or not block.get("measured"):
        return "not measured"
    return block.get(key)


def bench_targets_table(record: StageRecord) -> Table:
    """The packages the run times: stage, variant, package, size, the start of their hash."""
    return Table([{"stage": t["stage"], "variant": t["variant"], "package": t["package"], "size MB": t["size_mb"],
                   "sha256": str(t["package_sha256"])[:12]} for t in record["targets"]])


def bench_settings_table(record: StageRecord) -> Table:
    """Every backend setting: runs here, or why it cannot."""
    rows = [{"setting": s["label"], "tier": TIERS[s["backend"]], "runs here": "yes", "why not": ""}
            for s in record["settings"]]
    rows += [{"setting": s["setting"], "tier": TIERS[s["setting"].split()[0]], "runs here": "no", "why not": s["why"]}
             for s in record["skipped"]]
    return Table(rows)


def host_peak_table(record: StageRecord) -> Table:
    """The host's best float32 matmul GFLOP/s per thread count (and CUDA), with every measurement of it."""
    return Table([{"setting": k, **{x: v[x] for x in ("n", "repeats", "gflops", "median_gflops")},
                   "every measurement": ", ".join(f"{g:.1f}" for g in v["all_gflops"])}
                  for k, v in record["host_peak"].items()])


def measurements_of(record: StageRecord, imported: bool = False) -> list[dict[str, Any]]:
    """The record's measurements made by this run (``imported=False``), or those imported from elsewhere (kept
    from the previous record while their packages are unchanged)."""
    return [m for m in record.get("measurements") or []
            if ((m.get("provenance") or {}).get("source") == "imported") == imported]


def bench_measurements_table(measurements: Sequence[dict[str, Any]]) -> Table:
    """One row per measurement: where (tier, setting, device), the latency distribution, load, memory, energy."""
    rows = []
    for m in measurements:
        lat = m["latency"]
        prov = m.get("provenance") or {}
        rows.append({
            "variant": f"{m['stage']}/{m['variant']}", "setting": m["setting"], "tier": m["tier"],
            "device": (m.get("environment") or {}).get("device", ""), "OS": (m.get("environment") or {}).get("os", ""),
            "median ms": lat["median"], "p90 ms": lat["p90"], "p99 ms": lat["p99"], "CV": lat["cv"],
            "FPS": lat["fps"], "runs": lat["runs"], "stopped": lat["stopped"],
            "load ms (first/cached)": (f"{m['load']['first']:.1f} / {m['load']['cached']:.1f}"
                                       if m["load"].get("measured") else "not measured"),
            "1st pred ms": _measured(m.get("first_prediction"), "value"),
            "peak MB": _measured(m.get("memory"), "peak"),
            "energy mJ": (m["energy"]["per_inference"] * 1000.0 if m["energy"].get("measured") else "not measured"),
            "source": prov.get("source", "") + (f" ({prov['file']})" if prov.get("file") else ""),
        })
    return Table(rows)


def latency_distributions(measurements: Sequence[dict[str, Any]], max_panels: int = 4) -> Chart:
    """Box plots of every measurement's raw latency samples (whiskers p1-p99, log scale), one panel per setting."""
    settings: list[str] = []
    for m in measurements:
        if m["setting"] not in settings:
            settings.append(m["setting"])
    settings = settings[:max_panels]
    n_variants = max([sum(m["setting"] == s for m in measurements) for s in settings] or [1])
    fig, axes = _figure(min(4.2 * max(len(settings), 1), 16), 0.9 + 0.24 * n_variants, max(len(settings), 1))
    axes = np.atleast_1d(axes)
    for ax, setting in zip(axes, settings):
        found = [m for m in measurements if m["setting"] == setting]
        ax.boxplot([m["latency"]["samples"] for m in found], vert=False, whis=(1, 99), showfliers=False,
                   widths=0.6, medianprops={"color": PALETTE[3]})
        ax.set_yticks(range(1, len(found) + 1), [_mpl_text(f"{m['variant']}") for m in found], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("latency per prediction, ms (log)", fontsize=8)
        where = found[0].get("environment", {}).get("device", "") if found else ""
        ax.set_title(_mpl_text(f"{setting} [{found[0]['tier'] if found else ''}]"), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x", which="both")
        if where:
            ax.text(0.99, 0.01, _mpl_text(where[:48]), transform=ax.transAxes, fontsize=6, ha="right", va="bottom",
                    color="0.4")
    if not settings:
        axes[0].text(0.5, 0.5, "no measurements", ha="center", va="center")
        axes[0].set_axis_off()
    fig.tight_layout()
    return Chart(fig, f"latency distributions (box p25-p75, whiskers p1-p99, log scale) of {len(measurements)} "
                      f"measurements in {len(settings)} setting(s)")


def ratio_table(comparisons: Sequence[dict[str, Any]]) -> Table:
    """Median latency ratios (variant / reference) with their bootstrap 95% intervals."""
    return Table([{"variant": c["variant"], "setting": c["setting"], "vs": c["vs"], "median ratio": c["ratio"],
                   "95% CI": f"[{c['low']:.3f}, {c['high']:.3f}]",
                   "reading": ("faster" if c["high"] < 1 else "slower" if c["low"] > 1 else "not distinguishable")}
                  for c in comparisons])


def work_table(measurements: Sequence[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> Table:
    """Achieved GFLOP/s of the host measurements against the host's measured matmul peak."""
    rows = []
    for m in measurements:
        w = m.get("work") or {}
        if not w.get("measured"):
            continue
        rows.append({"variant": f"{m['stage']}/{m['variant']}", "setting": m["setting"], "MFLOP": w["flops"] / 1e6,
                     "achieved GFLOP/s": w["achieved_gflops"], "peak GFLOP/s": w["peak_gflops"],
                     "% of peak": 100.0 * w["share_of_peak"]})
    return Table(rows)


def five_axis_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The five axes per variant, latency from the best-provenance source and that source named."""
    return Table([{"variant": f"{r['stage']}/{r['variant']}", "top-1 %": r["top1"], "size MB": r["size_mb"],
                   "latency ms": r["latency_ms"], "p90 ms": r["latency_p90_ms"], "FPS": r["fps"],
                   "latency measured by": r["latency_from"],
                   "peak MB": r["memory_mb"] if r["memory_mb"] is not None else "not measured",
                   "energy mJ": r["energy_mj"] if r["energy_mj"] is not None else "not measured"} for r in rows])


def compute_plan_table(measurements: Sequence[dict[str, Any]]) -> Table:
    """Ops per compute unit and Apple's cost estimate (Core ML measurements), or why there is none."""
    rows = []
    for m in measurements:
        plan = m.get("compute_plan") or {}
        if m["backend"] != "coreml":
            continue
        rows.append({"variant": f"{m['stage']}/{m['variant']}", "setting": m["setting"],
                     "ops by device": plan.get("ops_by_device") if plan.get("measured") else plan.get("why"),
                     "cost share by device": plan.get("cost_by_device") if plan.get("measured") else ""})
    return Table(rows)
