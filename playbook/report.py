"""Stage 06, the report: read the stage records, recommend a variant, render it offline.

Everything here reads ``reports/<model>/<stage>.json`` (``records.load_stage_records``),
never the outputs of earlier notebooks.  ``notebooks/06_report.ipynb`` is a sequence of
short calls into this module; ``export_html`` turns the executed notebook into a single
``report.html`` without code cells, with figures embedded and no external resources, so
it opens offline and can be mailed.

How a variant is chosen (``recommend``):

1. *Budgets.* A variant meets the budget when its top-1 drop against the reference (the FP32
   baseline package) is at most ``max_top1_drop`` points and, where set (> 0), its package
   is at most ``max_size_mb`` and its median latency at most ``max_latency_ms``.  An axis
   with a budget but no measurement does not meet it.
2. *Objective.* Among the variants that meet the budget, the best on the remaining axis wins:
   ``objective="auto"`` takes the first axis without a budget of size, latency, accuracy
   (so with only an accuracy budget the smallest package wins; with size and latency
   budgets the most accurate one).  Ties go to higher top-1, then smaller, then faster.
3. *None meets it.*  Then the report says so and shows the closest variant: the one whose
   summed relative excess over the budgets is smallest.

Which technique "wins" (quantization when size dominates, distillation when accuracy
dominates, or otherwise) is read from the measured numbers, never assumed.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Sequence

from playbook.config import ConfigError, StrictConfig, check_choice, check_range, parameters_from_namespace
from playbook.records import (STAGES, all_variants, atomic_write_text, default_reports_root, load_stage_records,
                              model_slug, read_json, write_json)

OBJECTIVES = ("auto", "size", "latency", "accuracy")
BUDGET_FIELDS = {"top1_drop": "max_top1_drop", "size_mb": "max_size_mb", "latency_ms": "max_latency_ms"}
STAGE_COLORS = {"baseline": "#4c72b0", "quantization": "#dd8452", "distillation": "#55a868",
                "architecture": "#c44e52", "benchmark": "#8172b3"}
REPORT_HTML = "report.html"
REPORT_RECORD = "report.json"
RUN_STATUS = "run.json"
INDEX_HTML = "index.html"


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class ReportConfig(StrictConfig):
    """The parameters of ``06_report`` (see the notebook for each one's meaning)."""

    model: str = "resnet"
    reports_dir: str = ""
    smoke: bool = False
    max_top1_drop: float = 1.0
    max_size_mb: float = 0.0
    max_latency_ms: float = 0.0
    objective: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model={self.model!r} must be a non-empty model name")
        check_range("max_top1_drop", self.max_top1_drop, 0.0)
        check_range("max_size_mb", self.max_size_mb, 0.0)
        check_range("max_latency_ms", self.max_latency_ms, 0.0)
        check_choice("objective", self.objective, OBJECTIVES)

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> "ReportConfig":
        """From a notebook's ``globals()``: unknown names (e.g. a mistyped papermill parameter) are an error."""
        return cls.from_dict(parameters_from_namespace(namespace))

    def model_dir(self) -> Path:
        root = Path(self.reports_dir) if self.reports_dir else default_reports_root()
        return root / model_slug(self.model)

    def budgets(self) -> dict[str, float]:
        """The budgets that are set: ``{"top1_drop": 1.0, "size_mb": ..., "latency_ms": ...}`` (0 = no limit)."""
        out = {"top1_drop": float(self.max_top1_drop)}
        if self.max_size_mb > 0:
            out["size_mb"] = float(self.max_size_mb)
        if self.max_latency_ms > 0:
            out["latency_ms"] = float(self.max_latency_ms)
        return out


# --------------------------------------------------------------------------- variants
@dataclasses.dataclass(frozen=True)
class Row:
    """One variant, flattened for comparison (``None`` = not measured)."""

    name: str
    stage: str
    description: str
    package: str | None
    top1: float | None
    top1_ci: tuple[float, float] | None
    top5: float | None
    drop: float | None  # reference top-1 minus this variant's, points (positive = worse)
    drop_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool | None
    size_mb: float | None
    zip_mb: float | None
    latency_ms: float | None
    latency_p90_ms: float | None
    fps: float | None
    memory_mb: float | None
    energy_mj: float | None
    is_reference: bool
    provenance: dict[str, Any]
    raw: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.name}"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = _num(value[0]), _num(value[1])
        if low is not None and high is not None:
            return (low, high)
    return None


def reference_name(records: dict[str, dict[str, Any]]) -> str | None:
    """The name of the variant every change is measured against (the baseline's ``reference_variant``)."""
    for rec in records.values():
        if rec.get("reference_variant"):
            return str(rec["reference_variant"])
    for rec in records.values():
        for v in rec.get("variants", []):
            if v.get("reference"):
                return str(v["reference"])
    return None


def variant_rows(records: dict[str, dict[str, Any]]) -> list[Row]:
    """Every variant of every stage record as a ``Row``, with its top-1 drop against the reference."""
    ref_name = reference_name(records)
    variants = all_variants(records)
    ref_top1 = next((_num(v.get("top1")) for v in variants if v.get("name") == ref_name), None)
    rows = []
    for v in variants:
        top1 = _num(v.get("top1"))
        is_ref = ref_name is not None and v.get("name") == ref_name and (
            v.get("stage") == "baseline" or not v.get("vs_reference"))
        vs = v.get("vs_reference") or {}
        drop = drop_ci = p_value = significant = None
        if is_ref:
            drop, drop_ci = 0.0, (0.0, 0.0)
        elif _num(vs.get("delta_top1")) is not None:
            drop = 0.0 - float(vs["delta_top1"]) + 0.0  # + 0.0: no "-0.00"
            low, high = _num(vs.get("ci_low")), _num(vs.get("ci_high"))
            drop_ci = (0.0 - high + 0.0, 0.0 - low + 0.0) if low is not None and high is not None else None
            p_value = _num(vs.get("p_value"))
            significant = bool(vs["significant"]) if "significant" in vs else None
        elif top1 is not None and ref_top1 is not None:
            drop = ref_top1 - top1
        rows.append(Row(
            name=str(v.get("name", "?")), stage=str(v.get("stage", "?")), description=str(v.get("description", "")),
            package=str(v["package"]) if v.get("package") else None, top1=top1, top1_ci=_pair(v.get("top1_ci")),
            top5=_num(v.get("top5")), drop=drop, drop_ci=drop_ci, p_value=p_value, significant=significant,
            size_mb=_num(v.get("size_mb")), zip_mb=_num(v.get("zip_mb")), latency_ms=_num(v.get("latency_ms")),
            latency_p90_ms=_num(v.get("latency_p90_ms")), fps=_num(v.get("fps")),
            memory_mb=_num(v.get("peak_memory_mb")), energy_mj=_num(v.get("energy_mj")), is_reference=bool(is_ref),
            provenance=dict(v.get("provenance") or {}), raw=v,
        ))
    return rows


@dataclasses.dataclass(frozen=True)
class ReportData:
    """What the report is made of: the config, the stage records and their variants."""

    cfg: ReportConfig
    model_dir: Path
    records: dict[str, dict[str, Any]]
    rows: list[Row]
    reference: str | None
    warnings: tuple[str, ...]

    @property
    def smoke(self) -> bool:
        return any(bool(r.get("config", {}).get("smoke")) for r in self.records.values())

    def row(self, name: str, stage: str | None = None) -> Row:
        for r in self.rows:
            if r.name == name and (stage is None or r.stage == stage):
                return r
        raise KeyError(f"no variant {name!r} in the records; variants are {[r.key for r in self.rows]}")


def load(cfg: ReportConfig) -> ReportData:
    """Read every stage record of ``cfg.model`` (any subset of stages may be present).

    Raises ``FileNotFoundError`` when there is none, and ``ConfigError`` when the records were
    made with another ``smoke`` setting than this report's.
    """
    model_dir = cfg.model_dir()
    records = load_stage_records(model_dir) if model_dir.is_dir() else {}
    if not records:
        raise FileNotFoundError(
            f"no stage records in {model_dir} (looked for {[s + '.json' for s in STAGES]}); run the stages first, "
            f"e.g. `python -m playbook run --model {cfg.model}`")
    smokes = {stage: bool(rec.get("config", {}).get("smoke")) for stage, rec in records.items()
              if "smoke" in rec.get("config", {})}
    mismatched = sorted(s for s, v in smokes.items() if v != cfg.smoke)
    if mismatched:
        raise ConfigError(f"the {mismatched} record(s) in {model_dir} were made with smoke={not cfg.smoke}, "
                          f"this report runs with smoke={cfg.smoke}; pass smoke={not cfg.smoke} or re-run those stages")
    warnings = []
    models = {rec.get("model") for rec in records.values() if rec.get("model")}
    if models and models != {cfg.model}:
        warnings.append(f"records name model(s) {sorted(models)}, the report was asked for {cfg.model!r}")
    rows = variant_rows(records)
    if not rows:
        warnings.append("the stage records hold no variants")
    return ReportData(cfg, model_dir, records, rows, reference_name(records), tuple(warnings))


# --------------------------------------------------------------------------- recommendation
@dataclasses.dataclass(frozen=True)
class Check:
    """One budget on one variant: the measured value, the limit, and whether it is met."""

    axis: str
    value: float | None
    limit: float
    ok: bool

    @property
    def excess(self) -> float:
        """Relative excess over the limit (0 when met; 1 per missing measurement)."""
        if self.ok:
            return 0.0
        if self.value is None:
            return 1.0
        scale = self.limit if self.limit > 0 else (0.1 if self.axis == "top1_drop" else 1.0)
        return max(self.value - self.limit, 0.0) / scale

    def text(self) -> str:
        unit = AXIS_UNITS[self.axis]
        if self.value is None:
            return f"{AXIS_LABELS[self.axis]} not measured (budget {self.limit:g} {unit})"
        sign = "≤" if self.ok else ">"
        return f"{AXIS_LABELS[self.axis]} {self.value:.{AXIS_DIGITS[self.axis]}f} {sign} {self.limit:g} {unit}"


AXIS_LABELS = {"top1_drop": "top-1 drop", "size_mb": "size", "latency_ms": "latency"}
AXIS_UNITS = {"top1_drop": "pp", "size_mb": "MB", "latency_ms": "ms"}
AXIS_DIGITS = {"top1_drop": 2, "size_mb": 3, "latency_ms": 3}
_AXIS_VALUE = {"top1_drop": lambda r: r.drop, "size_mb": lambda r: r.size_mb, "latency_ms": lambda r: r.latency_ms}


def check_budgets(row: Row, budgets: dict[str, float]) -> list[Check]:
    """The row against each set budget."""
    out = []
    for axis, limit in budgets.items():
        value = _AXIS_VALUE[axis](row)
        out.append(Check(axis, value, limit, value is not None and value <= limit + 1e-9))
    return out


def resolve_objective(cfg: ReportConfig) -> tuple[str, str]:
    """The axis to optimise within the budgets, and why it is that one."""
    if cfg.objective != "auto":
        return cfg.objective, f"objective={cfg.objective!r} was asked for"
    if cfg.max_size_mb <= 0:
        return "size", ("no size budget is set, so among the variants within budget the smallest package wins "
                        "(set objective='accuracy' or 'latency' to change that)")
    if cfg.max_latency_ms <= 0:
        return "latency", ("a size budget is set but no latency budget, so among the variants within budget the "
                           "fastest wins")
    return "accuracy", "size and latency both have budgets, so among the variants within them the most accurate wins"


def _inf(x: float | None) -> float:
    return math.inf if x is None else x


def objective_key(objective: str):
    """Sort key: best first for ``objective`` (ties: higher top-1, then smaller, then faster, then name)."""
    def key(r: Row) -> tuple:
        acc = -r.top1 if r.top1 is not None else math.inf
        if objective == "size":
            return (_inf(r.size_mb), acc, _inf(r.latency_ms), r.name)
        if objective == "latency":
            return (_inf(r.latency_ms), acc, _inf(r.size_mb), r.name)
        return (acc, _inf(r.size_mb), _inf(r.latency_ms), r.name)
    return key


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The chosen variant (or, when none meets the budget, the closest) and the reasons."""

    objective: str
    objective_reason: str
    budgets: dict[str, float]
    chosen: Row | None
    closest: Row | None
    feasible: tuple[Row, ...]
    checks: dict[str, tuple[Check, ...]]
    runner_up: Row | None
    why: str
    technique: str

    @property
    def deliverable(self) -> Row | None:
        """What to ship: the chosen variant, else the closest one (flagged as outside the budget)."""
        return self.chosen or self.closest

    @property
    def meets_budget(self) -> bool:
        return self.chosen is not None


def _describe_value(r: Row, objective: str) -> str:
    if objective == "size":
        return f"{r.size_mb:.3f} MB" if r.size_mb is not None else "size not measured"
    if objective == "latency":
        return f"{r.latency_ms:.3f} ms" if r.latency_ms is not None else "latency not measured"
    return f"top-1 {r.top1:.2f}%" if r.top1 is not None else "top-1 not measured"


def _ratio_text(best: Row, other: Row, objective: str) -> str:
    if objective == "size" and best.size_mb and other.size_mb:
        return f"{other.size_mb / best.size_mb:.1f}× larger"
    if objective == "latency" and best.latency_ms and other.latency_ms:
        return f"{other.latency_ms / best.latency_ms:.1f}× slower"
    if objective == "accuracy" and best.top1 is not None and other.top1 is not None:
        return f"{best.top1 - other.top1:.2f} points less accurate"
    return ""


def _compare_text(rows: Sequence[Row]) -> str:
    by_acc = sorted(rows, key=objective_key("accuracy"))[0]
    by_size = sorted(rows, key=objective_key("size"))[0]
    acc_txt = f"top-1 {by_acc.top1:.2f}%" if by_acc.top1 is not None else "top-1 not measured"
    size_txt = f"{by_size.size_mb:.3f} MB" if by_size.size_mb is not None else "size not measured"
    if by_acc.key == by_size.key:
        return (f"{by_acc.name} ({by_acc.stage}) is both the most accurate ({acc_txt}) and the smallest ({size_txt}), "
                f"so {by_acc.stage} wins whatever you prioritise.")
    return (f"when accuracy dominates, prefer {by_acc.stage} ({by_acc.name}, {acc_txt}); when size dominates, "
            f"prefer {by_size.stage} ({by_size.name}, {size_txt}).")


def technique_finding(candidates: Sequence[Row], rows: Sequence[Row]) -> str:
    """Which compression stage gives the most accurate and which the smallest variant, read from the numbers.

    ``candidates`` are the variants within the budget, ``rows`` every variant; the baseline is the
    starting point, not a technique, so it is left out of the comparison.
    """
    compressed = [r for r in rows if r.stage != "baseline"]
    stages = sorted({r.stage for r in compressed})
    if not compressed:
        return ("Only the baseline has been measured, so there is no technique to compare yet: run the "
                "quantization and distillation stages to add variants.")
    if len(stages) == 1:
        others = [s for s in ("quantization", "distillation", "architecture") if s != stages[0]]
        return (f"Only the {stages[0]} stage has produced variants so far, so techniques cannot be compared yet: "
                f"run the {' or '.join(others)} stage too.")
    within = [r for r in candidates if r.stage != "baseline"]
    within_stages = sorted({r.stage for r in within})
    if len(within_stages) > 1:
        return "Measured on this model, among the compressed variants within your budgets: " + _compare_text(within)
    prefix = (f"Only {within_stages[0]} variants are within your budgets. " if within_stages
              else "No compressed variant is within your budgets. ")
    return prefix + "Across all compressed variants measured on this model: " + _compare_text(compressed)


def recommend(data: ReportData) -> Recommendation:
    """Choose the variant that meets the budgets with the best remaining axis (see the module docstring)."""
    cfg = data.cfg
    budgets = cfg.budgets()
    objective, objective_reason = resolve_objective(cfg)
    checks = {r.key: tuple(check_budgets(r, budgets)) for r in data.rows}
    feasible = [r for r in data.rows if all(c.ok for c in checks[r.key])]
    ranked = sorted(feasible, key=objective_key(objective))
    chosen = ranked[0] if ranked else None
    runner_up = ranked[1] if len(ranked) > 1 else None
    closest = None
    if chosen is not None:
        met = "; ".join(c.text() for c in checks[chosen.key])
        unset = [AXIS_LABELS[a] for a in ("size_mb", "latency_ms") if a not in budgets]
        why = (f"{chosen.name} ({chosen.stage}) meets every budget ({met}"
               + (f"; {' and '.join(unset)} unconstrained" if unset else "") + ") and is the best on the objective, "
               f"{objective}, of the {len(feasible)} variant(s) that meet them: {_describe_value(chosen, objective)}.")
        if runner_up is not None:
            ratio = _ratio_text(chosen, runner_up, objective)
            why += f" Next best: {runner_up.name} ({runner_up.stage}), {_describe_value(runner_up, objective)}" + (
                f", {ratio}." if ratio else ".")
        if chosen.drop_ci is not None and chosen.drop_ci[1] > budgets["top1_drop"] + 1e-9:
            why += (f" Caution: the 95% interval of its top-1 drop reaches {chosen.drop_ci[1]:.2f} pp, above the "
                    f"{budgets['top1_drop']:g} pp budget, so the test set cannot rule out a larger loss; measure on "
                    "more images before relying on it.")
        technique = technique_finding(feasible, data.rows)
    else:
        if data.rows:
            closest = min(data.rows, key=lambda r: (sum(c.excess for c in checks[r.key]), objective_key(objective)(r)))
            missed = "; ".join(c.text() for c in checks[closest.key] if not c.ok)
            why = (f"No variant meets the budgets ({budget_text(budgets)}). The closest is {closest.name} "
                   f"({closest.stage}), which misses: {missed}. Relax the budget, or run more stages "
                   f"(quantization for size, distillation for accuracy) to add candidates.")
        else:
            why = "No variant was measured, so nothing can be recommended."
        technique = technique_finding([], data.rows)
    return Recommendation(objective, objective_reason, budgets, chosen, closest, tuple(feasible), checks, runner_up,
                          why, technique)


def budget_text(budgets: dict[str, float]) -> str:
    """``top-1 drop ≤ 1 pp, size ≤ 2 MB`` (and "no limit" for unset axes)."""
    parts = [f"{AXIS_LABELS[a]} ≤ {budgets[a]:g} {AXIS_UNITS[a]}" for a in ("top1_drop", "size_mb", "latency_ms")
             if a in budgets]
    parts += [f"{AXIS_LABELS[a]}: no limit" for a in ("size_mb", "latency_ms") if a not in budgets]
    return ", ".join(parts)


# --------------------------------------------------------------------------- Pareto charts
def pareto_front(rows: Iterable[Row], x: str) -> list[Row]:
    """Non-dominated rows for (lower ``x``, higher top-1), sorted by ``x``; rows missing either value are left out."""
    pts = sorted((r for r in rows if getattr(r, x) is not None and r.top1 is not None),
                 key=lambda r: (getattr(r, x), -r.top1))
    front, best = [], -math.inf
    for r in pts:
        if r.top1 > best + 1e-12:
            front.append(r)
            best = r.top1
    return front


def _mpl_text(text: str) -> str:
    """Model-supplied text for a matplotlib label: no mathtext (``$``) interpretation."""
    return text.replace("\\", "\\\\").replace("$", r"\$")


def pareto_chart(ax: Any, rows: Sequence[Row], x: str, rec: Recommendation | None = None,
                 reference_top1: float | None = None) -> None:
    """Top-1 (with its 95% interval) against ``x`` on ``ax``: one colour per stage, the front as a line,
    the budget as dashed lines, the recommended variant ringed."""
    xlabel = {"size_mb": "package size (MB, on disk)", "latency_ms": "median latency, batch 1 (ms)"}[x]
    budget_axis = {"size_mb": "size_mb", "latency_ms": "latency_ms"}[x]
    plotted = [r for r in rows if getattr(r, x) is not None and r.top1 is not None]
    missing = [r for r in rows if r not in plotted]
    for stage in [s for s in STAGES if any(r.stage == s for r in plotted)] + sorted(
            {r.stage for r in plotted} - set(STAGES)):
        pts = [r for r in plotted if r.stage == stage]
        xs = [getattr(r, x) for r in pts]
        ys = [r.top1 for r in pts]
        err = [[max(r.top1 - r.top1_ci[0], 0) if r.top1_ci else 0 for r in pts],
               [max(r.top1_ci[1] - r.top1, 0) if r.top1_ci else 0 for r in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", color=STAGE_COLORS.get(stage), label=_mpl_text(stage), capsize=3,
                    markersize=6, alpha=0.9)
    front = pareto_front(plotted, x)
    # Name only the points worth reading (the front, the reference, the recommendation): the table has the rest.
    named = {r.key for r in front} | {r.key for r in plotted if r.is_reference}
    if rec is not None and rec.deliverable is not None:
        named.add(rec.deliverable.key)
    for i, r in enumerate(sorted((r for r in plotted if r.key in named), key=lambda r: getattr(r, x))):
        ax.annotate(_mpl_text(r.name), (getattr(r, x), r.top1), textcoords="offset points",
                    xytext=(6, 6 if i % 2 == 0 else -11), fontsize=7)
    if len(front) > 1:
        ax.step([getattr(r, x) for r in front], [r.top1 for r in front], where="post", color="0.4", lw=1, ls="-",
                alpha=0.6, label="Pareto front")
    if rec is not None:
        if rec.deliverable is not None and rec.deliverable in plotted:
            d = rec.deliverable
            ax.scatter([getattr(d, x)], [d.top1], s=260, facecolors="none", edgecolors="crimson" if not rec.chosen
                       else "black", linewidths=1.8, label="recommended" if rec.chosen else "closest (outside budget)",
                       zorder=5)
        if budget_axis in rec.budgets:
            ax.axvline(rec.budgets[budget_axis], color="crimson", ls="--", lw=1, label="budget")
        if reference_top1 is not None and "top1_drop" in rec.budgets:
            ax.axhline(reference_top1 - rec.budgets["top1_drop"], color="crimson", ls=":", lw=1,
                       label="max top-1 drop")
    xs_all = [getattr(r, x) for r in plotted]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%), 95% interval")
    ax.grid(alpha=0.3)
    if missing:
        ax.text(0.01, 0.01, _mpl_text(f"not plotted (not measured): {', '.join(r.name for r in missing)}"),
                transform=ax.transAxes, fontsize=7, va="bottom")
    if not plotted:
        ax.text(0.5, 0.5, "no variant has both measurements", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=7, loc="best")


def pareto_figure(data: ReportData, rec: Recommendation | None = None) -> Any:
    """Accuracy vs size and accuracy vs latency, side by side (a matplotlib ``Figure``, not tied to pyplot)."""
    from matplotlib.figure import Figure

    ref = next((r.top1 for r in data.rows if r.is_reference), None)
    fig = Figure(figsize=(11, 4.6), dpi=100)
    axes = fig.subplots(1, 2)
    pareto_chart(axes[0], data.rows, "size_mb", rec, ref)
    axes[0].set_title("Accuracy vs size")
    pareto_chart(axes[1], data.rows, "latency_ms", rec, ref)
    axes[1].set_title("Accuracy vs latency")
    fig.tight_layout()
    return fig


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def pareto_image(data: ReportData, rec: Recommendation | None = None) -> Any:
    """``pareto_figure`` as an ``IPython.display.Image`` (PNG): shown inline, embedded in the HTML as base64."""
    from IPython.display import Image

    return Image(data=figure_png(pareto_figure(data, rec)), format="png")


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


# --------------------------------------------------------------------------- deliverables
def _swift_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _swift_identifier(text: str, fallback: str = "value") -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", str(text)) if w]
    if not words:
        return fallback
    ident = words[0][0].lower() + words[0][1:] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return ident if not ident[0].isdigit() else f"{fallback}{ident}"


def _swift_comment(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)[1:-1]


_SWIFT_ARRAY_TYPES = {"FLOAT32": ".float32", "FLOAT16": ".float16", "DOUBLE": ".double", "INT32": ".int32"}
_SWIFT_PIXEL_FORMATS = {"GRAYSCALE": "kCVPixelFormatType_OneComponent8", "GRAYSCALE_FLOAT16":
                        "kCVPixelFormatType_OneComponent16Half", "RGB": "kCVPixelFormatType_32BGRA",
                        "BGR": "kCVPixelFormatType_32BGRA"}
_SWIFT_OUTPUT_ACCESSORS = {"multiArrayType": ("multiArrayValue", "MLMultiArray"),
                           "dictionaryType": ("dictionaryValue", "[AnyHashable: NSNumber]"),
                           "stringType": ("stringValue", "String"), "int64Type": ("int64Value", "Int64"),
                           "doubleType": ("doubleValue", "Double"), "imageType": ("imageBufferValue", "CVPixelBuffer")}


def _feature_summary(f: dict[str, Any]) -> str:
    kind = f.get("type")
    if kind == "multiArrayType":
        return f"MLMultiArray, {f.get('dtype', '?')}, shape {f.get('shape')}"
    if kind == "imageType":
        return f"image {f.get('width')}x{f.get('height')}, {f.get('color_space', '?')}"
    if kind == "dictionaryType":
        return f"dictionary keyed by {f.get('key_type', '?')}"
    return str(kind)


def swift_snippet(package: str | Path, info: Any = None, normalisation: dict[str, Any] | None = None,
                  class_names: Sequence[str] | None = None) -> str:
    """Swift that loads the package and runs one prediction, written from its *real* input/output names and types.

    ``info`` is a ``playbook.coreml.PackageInfo`` (or its dict); by default it is read from ``package``
    with ``playbook.coreml.package_info``.
    """
    if info is None:
        from playbook.coreml import package_info

        info = package_info(Path(package))
    if not isinstance(info, dict):
        info = info.to_dict()
    inputs, outputs = list(info.get("inputs") or []), list(info.get("outputs") or [])
    stem = Path(package).name.rsplit(".", 1)[0]
    resource = _swift_string(stem)
    lines = ["import CoreML", "", f"// {_swift_comment(Path(package).name)}: add it to your app target; Xcode compiles "
             f"it to {_swift_comment(stem)}.mlmodelc"]
    for f in inputs:
        lines.append(f"// input  {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    for f in outputs:
        lines.append(f"// output {_swift_comment(f.get('name'))}: {_swift_comment(_feature_summary(f))}")
    if class_names:
        lines.append(f"// class order: {_swift_comment(', '.join(map(str, class_names)))}")
    lines += ["", "let configuration = MLModelConfiguration()", "configuration.computeUnits = .all",
              f"guard let url = Bundle.main.url(forResource: {resource}, withExtension: \"mlmodelc\") else {{",
              f"    fatalError(\"{_swift_comment(stem)}.mlmodelc is not in the app bundle\")", "}",
              "let model = try MLModel(contentsOf: url, configuration: configuration)", ""]
    feeds = []
    for f in inputs:
        var = _swift_identifier(f.get("name", "input"), "input")
        if f.get("type") == "imageType":
            fmt = _SWIFT_PIXEL_FORMATS.get(str(f.get("color_space")), "kCVPixelFormatType_32BGRA")
            lines += [f"// `cgImage` is your picture; Core ML scales it to {f.get('width')}x{f.get('height')} "
                      "and applies the folded-in normalisation",
                      f"let {var} = try MLFeatureValue(cgImage: cgImage, pixelsWide: {int(f.get('width') or 0)}, "
                      f"pixelsHigh: {int(f.get('height') or 0)}, pixelFormatType: {fmt}, options: nil)"]
            feeds.append((f.get("name"), var))
        elif f.get("type") == "multiArrayType":
            shape = ", ".join(str(int(s)) for s in f.get("shape") or [])
            dtype = _SWIFT_ARRAY_TYPES.get(str(f.get("dtype")), ".float32")
            lines.append(f"let {var} = try MLMultiArray(shape: [{shape}], dataType: {dtype})")
            if normalisation and normalisation.get("mean") is not None:
                mean = ", ".join(f"{m:.4f}" for m in normalisation["mean"])
                std = ", ".join(f"{s:.4f}" for s in normalisation["std"])
                lines.append(f"// fill {var} with (pixel / 255 - mean) / std per channel, mean [{mean}], std [{std}], "
                             "NCHW order")
            else:
                lines.append(f"// fill {var} exactly as the model was trained (see the input description in Xcode)")
            feeds.append((f.get("name"), f"MLFeatureValue(multiArray: {var})"))
        else:
            lines.append(f"let {var}: MLFeatureValue = ...  // {_swift_comment(f.get('type'))} input")
            feeds.append((f.get("name"), var))
    lines.append("let inputs = try MLDictionaryFeatureProvider(dictionary: [")
    for name, value in feeds:
        lines.append(f"    {_swift_string(name)}: {value},")
    lines += ["])", "let outputs = try model.prediction(from: inputs)"]
    for f in outputs:
        accessor, swift_type = _SWIFT_OUTPUT_ACCESSORS.get(str(f.get("type")), ("multiArrayValue", "MLMultiArray"))
        var = _swift_identifier(f.get("name", "output"), "output")
        lines.append(f"let {var} = outputs.featureValue(for: {_swift_string(f.get('name'))})?.{accessor}"
                     f"  // {swift_type}?")
    return "\n".join(lines) + "\n"


def _stage_number(stage: str) -> str | None:
    from playbook.notebooks import STAGE_ORDER

    return next((stem.split("_", 1)[0] for stem in STAGE_ORDER if stem.split("_", 1)[1] == stage), None)


def _param_args(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """``-p NAME=VALUE`` (playbook) and ``-p NAME VALUE`` (papermill) pairs of a command line."""
    out, i = [], 0
    while i < len(tokens) - 1:
        if tokens[i] in ("-p", "--param", "--parameters"):
            if "=" in tokens[i + 1]:
                name, value = tokens[i + 1].split("=", 1)
                out.append((name, value))
                i += 2
                continue
            if i + 2 < len(tokens):
                out.append((tokens[i + 1], tokens[i + 2]))
                i += 3
                continue
        i += 1
    return out


def reproduce_command(data: ReportData) -> str:
    """The CLI command that reproduces this report: the stages' own commands merged, plus this report's budgets."""
    from playbook.notebooks import stage_name, stage_notebooks

    cfg = data.cfg
    base = data.records.get("baseline", {}).get("reproduce") or ""
    tokens = shlex.split(base) if base else ["python", "-m", "playbook", "run", "--model", cfg.model]
    if cfg.smoke and "--smoke" not in tokens:
        tokens.append("--smoke")
    seen = {name for name, _ in _param_args(tokens)}
    for stage, rec in data.records.items():
        if stage == "baseline" or not rec.get("reproduce"):
            continue
        try:
            other = shlex.split(str(rec["reproduce"]))
        except ValueError:
            continue
        for name, value in _param_args(other):
            if name not in seen and name not in ("model", "dataset", "smoke", "reports_dir"):
                seen.add(name)
                tokens += ["-p", f"{name}={value}"]
    existing = [stage_name(p) for p in stage_notebooks() if stage_name(p) in STAGES]
    if existing and set(existing) - set(data.records):
        numbers = [n for n in (_stage_number(s) for s in STAGES if s in data.records) if n] + ["06"]
        tokens += ["--stages", ",".join(numbers)]
    defaults = ReportConfig()
    budget = [f"{short}={getattr(cfg, field):g}" for short, field in BUDGET_FIELDS.items()
              if getattr(cfg, field) != getattr(defaults, field)]
    if budget:
        tokens += ["--budget", *budget]
    if cfg.objective != defaults.objective:
        tokens += ["-p", f"objective={cfg.objective}"]
    if cfg.reports_dir and Path(cfg.reports_dir).resolve() != default_reports_root().resolve():
        tokens += ["--reports-dir", str(cfg.reports_dir)]
    return " ".join(shlex.quote(t) for t in tokens)


def deliverables_html(data: ReportData, rec: Recommendation) -> str:
    """The package to ship, a Swift snippet from its real I/O, and the command that reproduces this report."""
    d = rec.deliverable
    parts = ['<div class="pb-report">']
    if d is None:
        parts.append("<p>No variant to deliver.</p>")
    else:
        flag = "" if rec.chosen else ' <span class="pb-miss">outside your budget</span>'
        parts.append(f"<p><b>Package:</b> <code>{esc(d.package or 'not recorded')}</code>{flag}</p>")
        info = None
        note = ""
        if d.package and Path(d.package).exists():
            from playbook.coreml import package_info

            info = package_info(Path(d.package))
            note = "read from the package with playbook.coreml.package_info"
        else:
            recorded = _recorded_package_info(data, d)
            if recorded is not None:
                info, note = recorded, "package not found on this machine: I/O taken from the stage record"
        base = data.records.get("baseline", {})
        dataset = base.get("dataset") or {}
        if info is not None:
            snippet = swift_snippet(d.package or f"{d.name}.mlpackage", info,
                                    normalisation={"mean": dataset.get("mean"), "std": dataset.get("std")}
                                    if dataset.get("mean") else None, class_names=dataset.get("classes"))
            parts.append(f'<p><b>Swift</b> <span class="pb-small">({esc(note)})</span>:</p>'
                         f'<pre class="pb-code">{esc(snippet)}</pre>')
        else:
            parts.append("<p>The package is not on this machine and its inputs/outputs are not recorded, so no "
                         "Swift snippet can be generated.</p>")
    parts.append(f'<p><b>Reproduce this report:</b></p><pre class="pb-code">{esc(reproduce_command(data))}</pre>')
    parts.append("</div>")
    return "".join(parts)


def _recorded_package_info(data: ReportData, row: Row) -> dict[str, Any] | None:
    for rec in data.records.values():
        for export in (rec.get("exports") or {}).values():
            pkg = export.get("package") if isinstance(export, dict) else None
            if isinstance(pkg, dict) and pkg.get("path") == row.package and pkg.get("inputs"):
                return pkg
    return None


# --------------------------------------------------------------------------- report record
def report_record(data: ReportData, rec: Recommendation) -> dict[str, Any]:
    """The JSON summary of the report (``reports/<model>/report.json``): what the index page shows."""
    def brief(r: Row | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"name": r.name, "stage": r.stage, "package": r.package, "top1": r.top1, "top1_ci": r.top1_ci,
                "drop": r.drop, "size_mb": r.size_mb, "zip_mb": r.zip_mb, "latency_ms": r.latency_ms}

    from playbook.env import environment

    base = data.records.get("baseline", {})
    return {
        "schema": 1, "stage": "report", "model": data.cfg.model, "config": data.cfg.to_dict(),
        "dataset": (base.get("dataset") or {}).get("name") or base.get("config", {}).get("dataset"),
        "smoke": data.smoke, "stages": list(data.records), "n_variants": len(data.rows),
        "budgets": rec.budgets, "objective": rec.objective, "meets_budget": rec.meets_budget,
        "recommended": brief(rec.chosen), "closest": brief(rec.closest), "why": rec.why,
        "technique": rec.technique, "reproduce": reproduce_command(data), "environment": environment(),
    }


def write_report_record(data: ReportData, rec: Recommendation) -> Path:
    """Write ``reports/<model>/report.json`` atomically."""
    return write_json(data.model_dir / REPORT_RECORD, report_record(data, rec))


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


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{REPORT_CSS}'
            f'</style></head><body class="pb-page pb-report">{body}</body></html>\n')


def write_failure_page(model_dir: Path, model: str, error: str, log_tail: str = "", stage: str | None = None,
                       completed: Sequence[str] = (), command: str = "", log_file: str | None = None,
                       notebook: str | None = None) -> Path:
    """``reports/<model>/report.html`` as a failure page: what failed, where, and the end of the log."""
    model_dir = Path(model_dir)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>Report for {esc(model)}: FAILED</h1>",
            f'<div class="pb-failed"><p><b>The run failed{" in stage " + esc(stage) if stage else ""}</b> '
            f"({esc(when)})."
            f"</p><p>{esc(error)}</p></div>",
            "<p>No report was produced for this run; no figures below are results.</p>"]
    if completed:
        body.append(f"<p>Stages that completed: {esc(', '.join(completed))}.</p>")
    if notebook:
        body.append(f'<p>Executed notebook with the error: <a href="{esc(notebook)}">{esc(notebook)}</a></p>')
    if log_file:
        body.append(f'<p>Full log: <a href="{esc(log_file)}">{esc(log_file)}</a></p>')
    if command:
        body.append(f'<p>Command:</p><pre class="pb-code">{esc(command)}</pre>')
    body.append(f'<h2>Log tail</h2><pre class="pb-code">{esc(log_tail or "(no log)")}</pre>')
    body.append('<p><a href="../index.html">All models</a></p>')
    return atomic_write_text(model_dir / REPORT_HTML, _page(f"FAILED: {model}", "".join(body)))


def _read_optional(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def index_rows(reports_root: Path) -> list[dict[str, Any]]:
    """One entry per model folder under ``reports_root``: its status and headline figures."""
    rows = []
    for d in sorted(p for p in Path(reports_root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        status = _read_optional(d / RUN_STATUS) or {}
        summary = _read_optional(d / REPORT_RECORD) or {}
        has_records = any((d / f"{s}.json").exists() for s in STAGES)
        if not (status or summary or has_records or (d / REPORT_HTML).exists()):
            continue
        state = status.get("status") or ("ok" if summary and (d / REPORT_HTML).exists() else "incomplete")
        rows.append({"dir": d.name, "model": status.get("model") or summary.get("model") or d.name, "status": state,
                     "error": status.get("error"), "failed_stage": status.get("failed_stage"),
                     "summary": summary if state == "ok" else {}, "has_html": (d / REPORT_HTML).exists(),
                     "finished": status.get("finished") or (summary.get("environment") or {}).get("timestamp"),
                     "elapsed_s": status.get("elapsed_s")})
    return rows


def index_html(reports_root: Path) -> str:
    """``reports/index.html``: every model with its headline figures, or its failure."""
    rows = index_rows(reports_root)
    trs = []
    for r in rows:
        s = r["summary"]
        best = s.get("recommended") or s.get("closest") or {}
        link = (f'<a href="{esc(r["dir"])}/{REPORT_HTML}">{esc(r["model"])}</a>' if r["has_html"]
                else esc(r["model"]))
        if r["status"] == "ok":
            state = '<span class="pb-ok">ok</span>' + ("" if s.get("meets_budget", True) else
                                                       ' <span class="pb-miss">no variant meets budget</span>')
        elif r["status"] == "failed":
            where = f" in {r['failed_stage']}" if r.get("failed_stage") else ""
            state = f'<span class="pb-miss">FAILED{esc(where)}</span><div class="pb-desc">{esc(r.get("error"))}</div>'
        else:
            state = f'<span class="pb-miss">{esc(r["status"])}</span>'
        trs.append(
            f"<tr><td>{link}</td><td>{state}</td><td>{esc(best.get('name', '—'))}"
            f"{(' <span class=pb-tag>' + esc(best.get('stage')) + '</span>') if best.get('stage') else ''}</td>"
            f"<td>{_fmt(_num(best.get('top1')))}</td><td>{_fmt(_num(best.get('size_mb')), 3)}</td>"
            f"<td>{_fmt(_num(best.get('latency_ms')), 3)}</td><td>{esc(s.get('dataset') or '—')}"
            f"{' (smoke)' if s.get('smoke') else ''}</td><td>{esc(r.get('finished') or '—')}</td></tr>")
    table = ("<table class=\"pb-table\"><thead><tr><th>Model</th><th>Status</th><th>Recommended variant</th>"
             "<th>Top-1 %</th><th>Size MB</th><th>Latency ms</th><th>Dataset</th><th>Finished (UTC)</th></tr></thead>"
             f"<tbody>{''.join(trs) or '<tr><td colspan=8>no model has been run yet</td></tr>'}</tbody></table>")
    n_failed = sum(r["status"] == "failed" for r in rows)
    head = (f"<h1>Core ML optimization playbook: reports</h1><p>{len(rows)} model(s), {n_failed} failed. "
            "Top-1, size and latency are those of each model's recommended variant (or, when none meets the "
            "budget, the closest one); open a report for intervals and provenance.</p>")
    return _page("Core ML playbook reports", head + table)


def write_index(reports_root: Path | str | None = None) -> Path:
    """Write ``reports/index.html`` atomically."""
    root = Path(reports_root) if reports_root else default_reports_root()
    root.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(root / INDEX_HTML, index_html(root))


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
