"""The recommendation: which variant meets the budgets and wins on the remaining axis, read from records.

Everything here reads ``reports/<model>/<stage>.json`` (``records.load_stage_records``), never the outputs
of earlier notebooks, and checks that the records belong together (same smoke setting, same model,
lineage that still matches the files: a record computed from an older baseline is refused).

How a variant is chosen (``recommend``):

1. *Budgets.* A variant meets the accuracy budget when its top-1 drop against the reference (the
   FP32 baseline package) is at most ``max_top1_drop`` points, read by ``accuracy_rule``:
   ``interval`` (the default) takes the upper end of the drop's paired 95% interval (the interval's
   lower bound of the change), so a variant whose loss *may* exceed the budget does not meet it;
   ``point`` takes the point estimate (the interval is then shown as a caution).  A variant without a
   recorded interval is judged on its point estimate under either rule, and says so.  Where set (> 0),
   its package must be at most ``max_size_mb`` and its median latency at most ``max_latency_ms``.  An
   axis with a budget but no measurement does not meet it.
2. *Objective.* Among the variants that meet the budget, the best on the remaining axis wins:
   ``objective="auto"`` takes the first axis without a budget of size, latency, accuracy
   (so with only an accuracy budget the smallest package wins; with size and latency
   budgets the most accurate one).  Ties go to higher top-1, then smaller, then the name.
   *Latency ranks only where a device runtime measured it* (``RANKABLE_LATENCY``: Apple's Core ML
   runtime).  The playbook's reference executor decompresses every weight once at load and computes in
   float32, so every weight-only variant runs the same arithmetic there, FP16 programs add rounding casts
   and W8A8 programs add quantize/dequantize ops: its timings are the cost of that executor on that CPU
   and say nothing about the order on a device.  They never pick a variant, break a tie or meet a
   latency budget; a latency objective without device figures falls back (and says so).
   *Core AI variants* (``.aimodel``, ``VariantRecord.target == "coreai"``) load only on iOS / macOS 27 or later:
   they compete only when the client's deployment target (``Budget.app_target``; empty: the baseline's
   ``deployment_target``) is 27 or later, and ``Budget.framework`` may restrict the choice to one framework.  An
   excluded variant is listed in ``Recommendation.excluded`` with the reason, never chosen nor shown as closest.
   Their latency is the Core AI runtime on this host (an interpreter on Linux) and never ranks.
3. *None meets it.*  Then the report says so and shows the closest variant: the one whose
   summed relative excess over the budgets is smallest.

Which technique "wins" (quantization when size dominates, distillation when accuracy
dominates, or otherwise) is read from the measured numbers, never assumed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Sequence

from playbook.command import RunCommand
from playbook.config import ConfigError, StrictConfig, check_choice, check_range
from playbook.records import (COREAI_MIN_OS, VARIANT_TARGETS, RecordError, StageRecord, VariantRecord,
                              load_stage_records, stale_inputs)
from playbook.stages import VARIANT_STAGES, get_stage

OBJECTIVES = ("auto", "size", "latency", "accuracy")
# How the accuracy budget is read: the upper end of the top-1 drop's 95% interval (default), or its point estimate.
ACCURACY_RULES = ("interval", "point")
# Runtimes whose latency may rank variants and meet a latency budget: Apple's Core ML runtime on a device
# or a Mac.  The reference executor's (and host PyTorch's) timings are shown, never used to choose.
RANKABLE_LATENCY = ("coreml",)
# Which framework may deliver the model: either, or only Core ML packages, or only Core AI models.
FRAMEWORKS = ("any", *VARIANT_TARGETS)
_OS = re.compile(r"(iOS|iPadOS|macOS|tvOS|visionOS|watchOS) ?(\d+)(?:\.\d+)*", re.IGNORECASE)


def os_major(target: str) -> int | None:
    """The major OS version a deployment target names (``iOS17`` -> 17, ``macOS 27`` -> 27); ``None`` if unreadable."""
    m = _OS.fullmatch(str(target or "").strip())
    return int(m.group(2)) if m else None


def latency_runtime(row: "Row") -> str | None:
    """Which runtime measured the row's latency (``coreml``, ``reference``...), from its provenance."""
    prov = row.provenance.get("latency")
    if not isinstance(prov, dict):
        return None
    return prov.get("runtime") or prov.get("backend")


def latency_rankable(row: "Row") -> bool:
    """True when the row's latency was measured by a device runtime and may rank variants."""
    return row.latency_ms is not None and latency_runtime(row) in RANKABLE_LATENCY


@dataclasses.dataclass(frozen=True)
class Budget(StrictConfig):
    """The client's constraints: top-1 drop in points against the FP32 reference, and optional size and
    latency limits (0 = no limit); ``objective`` is the axis to optimise within them; ``accuracy_rule`` how the
    accuracy budget is read (``interval``: the 95% interval's worst end must be within it; ``point``: the point
    estimate)."""

    max_top1_drop: float = 1.0
    max_size_mb: float = 0.0
    max_latency_ms: float = 0.0
    objective: str = "auto"
    accuracy_rule: str = "interval"
    app_target: str = ""  # the oldest OS the client's app supports (iOS17, macOS15, iOS27...); "": the baseline's
    framework: str = "any"  # any, coreml (.mlpackage only) or coreai (.aimodel only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.app_target and os_major(self.app_target) is None:
            raise ConfigError(f"app_target={self.app_target!r} must name an OS and its version (iOS17, macOS15, "
                              "iOS27...) or be empty for the baseline's deployment target")
        check_choice("framework", self.framework, FRAMEWORKS)
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_range("max_size_mb", self.max_size_mb, 0.0)
        check_range("max_latency_ms", self.max_latency_ms, 0.0)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("accuracy_rule", self.accuracy_rule, ACCURACY_RULES)

    def limits(self) -> dict[str, float]:
        """The budgets that are set, by axis: ``{"top1_drop": 1.0, "size_mb": ..., "latency_ms": ...}``."""
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
    package: str | None  # relative to the model's reports folder
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
    raw: VariantRecord
    target: str = "coreml"  # coreml (.mlpackage) or coreai (.aimodel)

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


def reference_name(records: dict[str, StageRecord]) -> str | None:
    """The name of the variant every change is measured against (the baseline's ``reference_variant``)."""
    for rec in records.values():
        if rec.get("reference_variant"):
            return str(rec["reference_variant"])
    return next((v.reference for rec in records.values() for v in rec.variants if v.reference), None)


def variant_rows(records: dict[str, StageRecord]) -> list[Row]:
    """Every variant of every stage record as a ``Row``, with its top-1 drop against the reference and its
    best-provenance latency (device > host > reference, ``report.device.best_latencies``)."""
    from playbook.report.device import best_latencies, with_best_latency

    ref_name = reference_name(records)
    best = best_latencies(records)
    variants = [with_best_latency(v, best) for rec in records.values() for v in rec.variants]
    ref_top1 = next((_num(v.top1) for v in variants if v.name == ref_name), None)
    rows = []
    for v in variants:
        top1 = _num(v.top1)
        is_ref = ref_name is not None and v.name == ref_name and (v.stage == "baseline" or v.vs_reference is None)
        vs = v.vs_reference
        drop = drop_ci = p_value = significant = None
        if is_ref:
            drop, drop_ci = 0.0, (0.0, 0.0)
        elif vs is not None:
            drop = 0.0 - float(vs.delta_top1) + 0.0  # + 0.0: no "-0.00"
            drop_ci = (0.0 - vs.ci_high + 0.0, 0.0 - vs.ci_low + 0.0)
            p_value, significant = _num(vs.p_value), bool(vs.significant)
        elif top1 is not None and ref_top1 is not None:
            drop = ref_top1 - top1
        rows.append(Row(
            name=v.name, stage=v.stage, description=v.description, package=v.package, top1=top1,
            top1_ci=_pair(v.top1_ci), top5=_num(v.top5), drop=drop, drop_ci=drop_ci, p_value=p_value,
            significant=significant, size_mb=_num(v.size_mb), zip_mb=_num(v.zip_mb), latency_ms=_num(v.latency_ms),
            latency_p90_ms=_num(v.latency_p90_ms), fps=_num(v.fps), memory_mb=_num(v.peak_memory_mb),
            energy_mj=_num(v.energy_mj), is_reference=bool(is_ref), provenance=dict(v.provenance), raw=v,
            target=str(v.target or "coreml"),
        ))
    return rows


@dataclasses.dataclass(frozen=True)
class ReportData:
    """What the report is made of: the model, the budget, the stage records and their variants."""

    model: str
    model_dir: Path
    budget: Budget
    records: dict[str, StageRecord]
    rows: list[Row]
    reference: str | None
    warnings: tuple[str, ...]

    @property
    def smoke(self) -> bool:
        return any(r.smoke for r in self.records.values())

    def app_target(self) -> tuple[str | None, str]:
        """The client's deployment target and where it comes from: the budget's ``app_target``, else the baseline
        record's ``deployment_target`` (what its packages were exported for), else ``None``."""
        if self.budget.app_target:
            return self.budget.app_target, "budget"
        base = self.records.get("baseline")
        target = (base.config.get("deployment_target") if base is not None else None) or next(
            (str(r.raw.get("deployment_target")) for r in self.rows
             if r.is_reference and r.raw.get("deployment_target")), None)
        return (str(target), "baseline") if target else (None, "unknown")

    def exclusion(self, row: "Row") -> str | None:
        """Why ``row`` may not be delivered to this client (its framework, or an OS its app does not require), or
        ``None`` when it competes."""
        reason = self.exclusion_reason(row)
        return f"{row.name}: {reason}" if reason else None

    def exclusion_reason(self, row: "Row") -> str | None:
        """``exclusion`` without the variant's name (the same for every variant it excludes)."""
        if self.budget.framework != "any" and row.target != self.budget.framework:
            return f"framework={self.budget.framework!r} was asked for; this is a {TARGET_NAMES[row.target]}"
        if row.target == "coreai":
            target, where = self.app_target()
            major = os_major(target) if target else None
            if major is None:
                return (f"Core AI models need iOS / macOS {COREAI_MIN_OS}+ and no deployment target is known; set "
                        "app_target")
            if major < COREAI_MIN_OS:
                return (f"Core AI models load only on iOS / macOS {COREAI_MIN_OS} or later, and the deployment target "
                        f"is {target}, from {'the budget' if where == 'budget' else 'the baseline'}")
        return None

    def row(self, name: str, stage: str | None = None) -> Row:
        for r in self.rows:
            if r.name == name and (stage is None or r.stage == stage):
                return r
        raise KeyError(f"no variant {name!r} in the records; variants are {[r.key for r in self.rows]}")

    def command(self) -> RunCommand:
        """The ``playbook run`` command that reproduces this report: the stages' own commands merged, the
        stages that have records, and this report's budgets."""
        commands = [RunCommand.from_dict(r.run) for r in self.records.values()]
        merged = commands[0] if commands else RunCommand(model=self.model)
        for other in commands[1:]:
            merged = merged.merged(other)
        report_params = ("objective", "accuracy_rule", "app_target", "framework")
        budget = {k: v for k, v in self.budget.non_defaults(skip=report_params).items()}
        params = dict(merged.params)
        for name in report_params:  # report parameters (-p), not budgets
            if getattr(self.budget, name) != getattr(Budget(), name):
                params[name] = getattr(self.budget, name)
        done = [s for s in VARIANT_STAGES if s in self.records]
        stages = "" if set(done) == set(VARIANT_STAGES) else ",".join(
            [get_stage(s).number for s in done] + [get_stage("report").number])
        return merged.replace(params=params, budget={**merged.budget, **budget}, stages=stages, force=False,
                              reports_dir="")


def load(model: str, model_dir: Path, budget: Budget, smoke: bool) -> ReportData:
    """Read every stage record of the model (any subset of stages may be present) and check they belong together.

    Raises ``RecordError`` when there is none, when they were made with another ``smoke`` setting than this
    report's, or when one was computed from upstream records or packages that have changed since (stale), naming
    the records and the command that refreshes them.
    """
    model_dir = Path(model_dir)
    records = load_stage_records(model_dir) if model_dir.is_dir() else {}
    if not records:
        raise RecordError(
            f"no stage records in {model_dir} (looked for {[s + '.json' for s in VARIANT_STAGES]}); run the stages "
            f"first, e.g. `python -m playbook run --model {model}`")
    mismatched = sorted(s for s, rec in records.items() if rec.smoke != smoke)
    if mismatched:
        raise RecordError(f"the {mismatched} record(s) in {model_dir} were made with smoke={not smoke}, this report "
                          f"runs with smoke={smoke}; pass smoke={not smoke} or re-run those stages")
    stale = {s: problems for s, rec in records.items() if (problems := stale_inputs(model_dir, rec))}
    if stale:
        names = ", ".join(f"{s}.json ({'; '.join(p)})" for s, p in stale.items())
        numbers = ",".join(get_stage(s).number for s in stale)
        raise RecordError(f"stale records in {model_dir}: {names} were computed from inputs that have changed since; "
                          f"refresh them with `python -m playbook run --model {model} --stages {numbers},06`")
    warnings = []
    models = {rec.model for rec in records.values()}
    if models != {model}:
        warnings.append(f"records name model(s) {sorted(models)}, the report was asked for {model!r}")
    for rec in records.values():
        warnings += [w for w in rec.warnings if w not in warnings]
    rows = variant_rows(records)
    if not rows:
        warnings.append("the stage records hold no variants")
    return ReportData(model, model_dir, budget, records, rows, reference_name(records), tuple(warnings))


# --------------------------------------------------------------------------- recommendation
@dataclasses.dataclass(frozen=True)
class Check:
    """One budget on one variant: the measured value, the limit, and whether it is met."""

    axis: str
    value: float | None
    limit: float
    ok: bool
    reason: str = ""  # why a value is missing (e.g. latency measured only by the reference executor)
    bound: str = ""  # top1_drop only: "interval" (the value is the 95% interval's worst end) or "point"

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
            return f"{AXIS_LABELS[self.axis]} {self.reason or 'not measured'} (budget {self.limit:g} {unit})"
        sign = "≤" if self.ok else ">"
        label = AXIS_LABELS[self.axis] + (" (upper end of its 95% interval)" if self.bound == "interval" else "")
        return f"{label} {self.value:.{AXIS_DIGITS[self.axis]}f} {sign} {self.limit:g} {unit}"


TARGET_NAMES = {"coreml": "Core ML package (.mlpackage)", "coreai": "Core AI model (.aimodel)"}
AXIS_LABELS = {"top1_drop": "top-1 drop", "size_mb": "size", "latency_ms": "latency"}
AXIS_UNITS = {"top1_drop": "pp", "size_mb": "MB", "latency_ms": "ms"}
AXIS_DIGITS = {"top1_drop": 2, "size_mb": 3, "latency_ms": 3}
_AXIS_VALUE = {"top1_drop": lambda r: r.drop, "size_mb": lambda r: r.size_mb, "latency_ms": lambda r: r.latency_ms}


def check_budgets(row: Row, budgets: dict[str, float], accuracy_rule: str = "interval") -> list[Check]:
    """The row against each set budget (a latency budget is met only by a device-measured latency; the accuracy
    budget by the upper end of the drop's 95% interval under ``accuracy_rule="interval"``)."""
    out = []
    for axis, limit in budgets.items():
        value = _AXIS_VALUE[axis](row)
        reason, bound = "", ""
        if axis == "top1_drop":
            bound = "point"
            if accuracy_rule == "interval" and row.drop_ci is not None and not row.is_reference:
                value, bound = row.drop_ci[1], "interval"
        if axis == "latency_ms" and value is not None and not latency_rankable(row):
            value, reason = None, f"not measured on a device (only by the {latency_runtime(row) or 'unknown'} runtime)"
        out.append(Check(axis, value, limit, value is not None and value <= limit + 1e-9, reason, bound))
    return out


NO_DEVICE_LATENCY = ("latency was measured only by the reference executor, whose timings cannot rank variants for a "
                     "device")


def resolve_objective(cfg: Budget, rows: Sequence[Row] = ()) -> tuple[str, str]:
    """The axis to optimise within the budgets, and why it is that one.

    A latency objective needs device-measured latency (``latency_rankable``) for at least one of ``rows``;
    without it the objective falls back (explicit ``latency``: size; ``auto``: accuracy) and the reason says so.
    """
    device_latency = any(latency_rankable(r) for r in rows)
    if cfg.objective != "auto":
        if cfg.objective == "latency" and not device_latency:
            return "size", f"objective='latency' was asked for, but {NO_DEVICE_LATENCY}; the smallest package wins"
        return cfg.objective, f"objective={cfg.objective!r} was asked for"
    if cfg.max_size_mb <= 0:
        return "size", ("no size budget is set, so among the variants within budget the smallest package wins "
                        "(set objective='accuracy' or 'latency' to change that)")
    if cfg.max_latency_ms <= 0:
        if not device_latency:
            return "accuracy", (f"a size budget is set but no latency budget; {NO_DEVICE_LATENCY}, so among the "
                                "variants within budget the most accurate wins")
        return "latency", ("a size budget is set but no latency budget, so among the variants within budget the "
                           "fastest (on a device) wins")
    return "accuracy", "size and latency both have budgets, so among the variants within them the most accurate wins"


def _inf(x: float | None) -> float:
    return math.inf if x is None else x


def objective_key(objective: str):
    """Sort key: best first for ``objective`` (ties: higher top-1, then smaller, then the name).

    Latency counts only where a device measured it (``latency_rankable``); it never breaks a tie."""
    def key(r: Row) -> tuple:
        acc = -r.top1 if r.top1 is not None else math.inf
        if objective == "size":
            return (_inf(r.size_mb), acc, r.name)
        if objective == "latency":
            return (_inf(r.latency_ms if latency_rankable(r) else None), acc, _inf(r.size_mb), r.name)
        return (acc, _inf(r.size_mb), r.name)
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
    accuracy_rule: str = "interval"
    objective_default: bool = False  # the objective was not asked for (objective="auto")
    excluded: tuple[tuple[Row, str], ...] = ()  # variants that may not be delivered here (framework / OS), and why

    @property
    def rule_risk(self) -> bool:
        """The chosen variant meets the accuracy budget by its point estimate only: its 95% interval reaches
        beyond it (possible under ``accuracy_rule="point"``)."""
        c = self.chosen
        return c is not None and c.drop_ci is not None and c.drop_ci[1] > self.budgets["top1_drop"] + 1e-9

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
        if round(other.size_mb / best.size_mb, 2) <= 1.0:
            return "the same size; the tie went to the higher top-1" if (other.top1 or 0) < (best.top1 or 0) else \
                "the same size and top-1; the tie went to the name"
        return f"{other.size_mb / best.size_mb:.2f}× larger"
    if objective == "latency" and best.latency_ms and other.latency_ms:
        return f"{other.latency_ms / best.latency_ms:.2f}× slower"
    if objective == "accuracy" and best.top1 is not None and other.top1 is not None:
        if abs(best.top1 - other.top1) < 1e-9:
            return "the same top-1; the tie went to the smaller package"
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
    budgets = data.budget.limits()
    excluded = tuple((r, why) for r in data.rows if (why := data.exclusion(r)))
    out = {r.key for r, _ in excluded}
    eligible = [r for r in data.rows if r.key not in out]
    objective, objective_reason = resolve_objective(data.budget, eligible)
    rule = data.budget.accuracy_rule
    checks = {r.key: tuple(check_budgets(r, budgets, rule)) for r in data.rows}
    feasible = [r for r in eligible if all(c.ok for c in checks[r.key])]
    ranked = sorted(feasible, key=objective_key(objective))
    chosen = ranked[0] if ranked else None
    runner_up = ranked[1] if len(ranked) > 1 else None
    closest = None
    if chosen is not None:
        met = "; ".join(c.text() for c in checks[chosen.key])
        unset = [AXIS_LABELS[a] for a in ("size_mb", "latency_ms") if a not in budgets]
        why = (f"{chosen.name} ({chosen.stage}) meets every budget ({met}"
               + (f"; {' and '.join(unset)} unconstrained" if unset else "") + ") and is the best on the objective, "
               f"{objective}, of the {len(feasible)} {'variant that meets' if len(feasible) == 1 else 'variants that meet'}"
               f" them: {_describe_value(chosen, objective)}.")
        if runner_up is not None:
            ratio = _ratio_text(chosen, runner_up, objective)
            why += f" Next best: {runner_up.name} ({runner_up.stage}), {_describe_value(runner_up, objective)}" + (
                f", {ratio}." if ratio else ".")
        if rule == "point" and chosen.drop_ci is not None and chosen.drop_ci[1] > budgets["top1_drop"] + 1e-9:
            why += (f" Caution: the 95% interval of its top-1 drop reaches {chosen.drop_ci[1]:.2f} pp, above the "
                    f"{budgets['top1_drop']:g} pp budget, so the test set cannot rule out a larger loss; measure on "
                    "more images before relying on it.")
        technique = technique_finding(feasible, data.rows)
    else:
        if eligible:
            closest = min(eligible, key=lambda r: (sum(c.excess for c in checks[r.key]), objective_key(objective)(r)))
            missed = "; ".join(c.text() for c in checks[closest.key] if not c.ok)
            why = (f"No variant meets the budgets ({budget_text(budgets)}). The closest is {closest.name} "
                   f"({closest.stage}), which misses: {missed}. Relax the budget, or run more stages "
                   f"(quantization for size, distillation for accuracy) to add candidates.")
        else:
            why = "No variant was measured, so nothing can be recommended."
        technique = technique_finding([], data.rows)
    if excluded:  # one clause per reason, naming every variant it excludes
        reasons: dict[str, list[str]] = {}
        for r, _ in excluded:
            reasons.setdefault(data.exclusion_reason(r) or "", []).append(r.name)
        why += " Not competing: " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items()) + "."
    return Recommendation(objective, objective_reason, budgets, chosen, closest, tuple(feasible), checks, runner_up,
                          why, technique, rule, data.budget.objective == "auto", excluded)


def budget_text(budgets: dict[str, float]) -> str:
    """``top-1 drop ≤ 1 pp, size ≤ 2 MB`` (and "no limit" for unset axes)."""
    parts = [f"{AXIS_LABELS[a]} ≤ {budgets[a]:g} {AXIS_UNITS[a]}" for a in ("top1_drop", "size_mb", "latency_ms")
             if a in budgets]
    parts += [f"{AXIS_LABELS[a]}: no limit" for a in ("size_mb", "latency_ms") if a not in budgets]
    return ", ".join(parts)


