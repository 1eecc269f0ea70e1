"""Everything the notebooks and the report *show*: tables, charts and the ipywidgets explorer.

Display only: nothing here measures, writes records or decides.  Charts return matplotlib
``Figure`` objects built without pyplot's global state (``matplotlib.figure.Figure``), so the report
can render them to PNG and the notebooks can display them.  There is one chart per kind:
``accuracy_figure`` draws top-1 against size or latency for any list of variants, with the Pareto
front, the accuracy budget and the recommended variant, in notebook 02 and in the report alike.
"""
from __future__ import annotations

import html
import io
import math
from typing import Any, Sequence

import numpy as np

from playbook.metrics import pareto_front
from playbook.records import StageRecord, VariantRecord

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STAGE_COLOURS = {"baseline": "#000000", "quantization": "#0072B2", "distillation": "#009E73",
                 "architecture": "#D55E00", "benchmark": "#CC79A7"}
TECHNIQUE_COLOURS = {"baseline": "#000000", "quantization": "#0072B2", "palettization": "#E69F00",
                     "pruning": "#009E73", "joint": "#CC79A7", "activation-quantization": "#D55E00",
                     "data-aware": "#56B4E9"}
AXIS_LABELS = {"size_mb": "package size on disk (MB)", "latency_ms": "median latency, batch 1 (ms)",
               "macs": "multiply-accumulates per image"}


# --------------------------------------------------------------------------- tables
class Table:
    """Rows of dicts shown as an HTML table in Jupyter and as aligned text elsewhere."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows = list(rows)

    @staticmethod
    def _fmt(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
        if value is None:
            return ""
        return str(value)

    def columns(self) -> list[str]:
        cols: list[str] = []
        for row in self.rows:
            cols += [k for k in row if k not in cols]
        return cols

    def __repr__(self) -> str:
        cols = self.columns()
        cells = [[self._fmt(r.get(c)) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cols = self.columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __len__(self) -> int:
        return len(self.rows)


def variant_row(v: VariantRecord, fp32_bytes: int | None = None) -> dict[str, Any]:
    """One variant as a table row: size, ratio, top-1 with CI, change with CI and p, fidelity, time."""
    vs, fid = v.vs_reference, v.fidelity
    ci = v.top1_ci or (float("nan"), float("nan"))
    return {
        "variant": v.name,
        "size MB": v.size_mb,
        "zip MB": v.zip_mb,
        "x smaller": (fp32_bytes / v.size_bytes) if fp32_bytes and v.size_bytes else None,
        "top-1 %": v.top1,
        "top-1 95% CI": f"[{ci[0]:.2f}, {ci[1]:.2f}]",
        "Δ top-1": vs.delta_top1 if vs else None,
        "Δ 95% CI": f"[{vs.ci_low:.2f}, {vs.ci_high:.2f}]" if vs else "",
        "McNemar p": vs.p_value if vs else None,
        "agree %": fid.top1_agreement if fid else None,
        "KL": fid.kl_divergence if fid else None,
        "compress s": v.get("compress_seconds"),
    }


def results_table(variants: Sequence[VariantRecord], fp32_bytes: int | None = None,
                  names: Sequence[str] | None = None) -> Table:
    """The variants (optionally only ``names``) as a table."""
    return Table([variant_row(v, fp32_bytes) for v in variants if names is None or v.name in names])


# --------------------------------------------------------------------------- figures
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(1, ncols)
    return fig, axes


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


class Chart:
    """A figure that shows itself in Jupyter as a PNG whatever matplotlib backend is active, with a text
    description (``alt``) for readers who cannot see it."""

    def __init__(self, figure: Any, alt: str = "") -> None:
        self.figure = figure
        self.alt = alt

    def png(self, dpi: int = 100) -> bytes:
        return figure_png(self.figure, dpi)

    def _repr_png_(self) -> bytes:
        return self.png()


def plot_history(history: Sequence[dict[str, float]]) -> Any:
    """Training loss and validation top-1 per epoch."""
    fig, ax = _figure(6, 3)
    if not history:
        ax.text(0.5, 0.5, "loaded from checkpoint: no training history", ha="center", va="center")
        ax.set_axis_off()
        return Chart(fig, "no training history: the model was loaded from a checkpoint")
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", color=PALETTE[0], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_top1"] for h in history], "s--", color=PALETTE[2], label="val top-1 (%)")
    ax2.set_ylabel("val top-1 (%)")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    last = history[-1]
    return Chart(fig, f"training loss and validation top-1 over {len(history)} epoch(s); last epoch: loss "
                      f"{last['loss']:.3f}, validation top-1 {last['val_top1']:.2f}%")


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Any:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = _figure(size, size)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return Chart(fig, f"confusion matrix over {len(class_names)} classes, rows true class, columns predicted")


def _mpl_text(text: str) -> str:
    """Model-supplied text for a matplotlib label: no mathtext (``$``) interpretation."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _label_points(ax: Any, points: Sequence[tuple[float, float, str]], log_x: bool) -> None:
    """Annotate points, stacking labels whose anchors are close so they do not print over each other."""
    placed: list[tuple[float, float, int]] = []
    low, high = ax.get_ylim()
    span = max(high - low, 1e-9)
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        lx = math.log10(max(x, 1e-12)) if log_x else x
        level = 0
        while any(abs(lx - px) < 0.12 and abs(y - py) < 0.06 * span and lv == level for px, py, lv in placed):
            level += 1
        placed.append((lx, y, level))
        ax.annotate(_mpl_text(text), (x, y), fontsize=6.5, xytext=(4, 3 + 8 * level), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if level else None)


def accuracy_chart(ax: Any, variants: Sequence[VariantRecord], x: str = "size_mb", reference_top1: float | None = None,
                   max_top1_drop: float | None = None, highlight: str | None = None, budget_x: float | None = None,
                   colour_by: str = "stage", zoom: float | None = None, label: str = "front") -> None:
    """Top-1 (with its 95% interval) against ``x`` on ``ax``, the Pareto front as a step line.

    ``reference_top1`` and ``max_top1_drop`` draw the accuracy budget; ``budget_x`` a limit on ``x``;
    ``highlight`` rings one variant (the recommendation).  ``zoom`` (points) limits the vertical axis to
    ``reference_top1 - zoom`` and up; variants below are drawn as triangles on the bottom edge with their
    top-1 in the label.  ``label``: ``front`` names the front, the reference and the highlight; ``all`` every point.
    """
    colours = STAGE_COLOURS if colour_by == "stage" else TECHNIQUE_COLOURS

    def value(v: VariantRecord) -> float | None:
        return getattr(v, x) if hasattr(v, x) else v.get(x)

    plotted = [v for v in variants if value(v) is not None and v.top1 is not None]
    missing = [v for v in variants if v not in plotted]
    floor = (reference_top1 - zoom) if zoom is not None and reference_top1 is not None else None
    groups: dict[str, list[VariantRecord]] = {}
    for v in plotted:
        key = v.stage if colour_by == "stage" else (v.get("technique") or v.stage)
        groups.setdefault(key, []).append(v)
    for i, (key, pts) in enumerate(groups.items()):
        colour = colours.get(key, PALETTE[i % len(PALETTE)])
        inside = [v for v in pts if floor is None or v.top1 >= floor]
        if inside:
            err = [[max(v.top1 - v.top1_ci[0], 0) if v.top1_ci else 0 for v in inside],
                   [max(v.top1_ci[1] - v.top1, 0) if v.top1_ci else 0 for v in inside]]
            ax.errorbar([value(v) for v in inside], [v.top1 for v in inside], yerr=err, fmt="o", color=colour,
                        label=_mpl_text(key), capsize=2, markersize=5, lw=1)
        below = [v for v in pts if floor is not None and v.top1 < floor]
        if below:
            ax.scatter([value(v) for v in below], [floor] * len(below), marker="v", color=colour, s=30,
                       label=None if inside else _mpl_text(key), clip_on=False, zorder=4)
    front = pareto_front(plotted, value, lambda v: v.top1)
    if len(front) > 1:
        ax.step([value(v) for v in front], [max(v.top1, floor) if floor is not None else v.top1 for v in front],
                where="post", color="0.45", lw=1, ls="--", label="Pareto front")
    if reference_top1 is not None and max_top1_drop is not None:
        ax.axhline(reference_top1 - max_top1_drop, color="#D55E00", ls=":", lw=1,
                   label=f"budget: reference − {max_top1_drop:g} pt")
    if budget_x is not None:
        ax.axvline(budget_x, color="#D55E00", ls="--", lw=1, label="budget")
    chosen = next((v for v in plotted if v.name == highlight), None)
    if chosen is not None:
        y = chosen.top1 if floor is None else max(chosen.top1, floor)
        ax.scatter([value(chosen)], [y], s=240, facecolors="none", edgecolors="black", linewidths=1.6,
                   label="recommended", zorder=5)
    xs = [value(v) for v in plotted]
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 8
    if log_x:
        ax.set_xscale("log")
    if floor is not None and plotted:
        tops = [v.top1_ci[1] if v.top1_ci else v.top1 for v in plotted]
        ax.set_ylim(floor, max(max(tops), reference_top1 or -math.inf) + 0.3)
    named = {v.name for v in front} | {v.name for v in plotted if v.reference is None} | {highlight}
    shown = [(value(v), v.top1 if floor is None or v.top1 >= floor else floor,
              v.name if floor is None or v.top1 >= floor else f"{v.name} ({v.top1:.1f}%)")
             for v in plotted if label == "all" or v.name in named or (floor is not None and v.top1 < floor)]
    _label_points(ax, shown, log_x)
    ax.set_xlabel(AXIS_LABELS.get(x, x) + (" (log scale)" if log_x else ""))
    ax.set_ylabel("test top-1 (%), 95% interval")
    ax.grid(alpha=0.3, which="both")
    if missing:
        ax.text(0.01, 0.01, _mpl_text(f"not plotted (not measured): {', '.join(v.name for v in missing)}"),
                transform=ax.transAxes, fontsize=7, va="bottom")
    if not plotted:
        ax.text(0.5, 0.5, "no variant has both measurements", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=7, loc="lower right")


def accuracy_figure(variants: Sequence[VariantRecord], xs: Sequence[str] = ("size_mb",), title: str = "",
                    width: float = 11.0, zooms: Sequence[float | None] | None = None, **kwargs: Any) -> Chart:
    """``accuracy_chart`` for each axis in ``xs``, side by side; ``zooms`` gives each panel's ``zoom``
    (e.g. ``(None, 3.0)``: everything on the left, the band within 3 points of the reference on the right)."""
    fig, axes = _figure(width, 4.6, len(xs))
    axes = np.atleast_1d(axes)
    for ax, x, zoom in zip(axes, xs, zooms or [None] * len(xs)):
        accuracy_chart(ax, variants, x, zoom=zoom, **kwargs)
        what = AXIS_LABELS.get(x, x).split(" (")[0]
        ax.set_title(f"accuracy vs {what}" + (f", zoom: within {zoom:g} points of the reference" if zoom else ""),
                     fontsize=10)
    if title:
        fig.suptitle(_mpl_text(title), fontsize=10)
    fig.tight_layout()
    return Chart(fig, f"test top-1 against {', '.join(AXIS_LABELS.get(x, x) for x in xs)} for {len(variants)} "
                      "variants, with 95% intervals and the Pareto front")


def plot_sensitivity(sensitivity: dict[str, Any]) -> Any:
    """Per-layer damage (KL to the FP32 outputs when only that layer is compressed) and the keep-k curve."""
    layers = sensitivity["layers"]
    curve = sensitivity["keep_curve"]
    fig, (ax1, ax2) = _figure(10, 3.8, 2)
    ax1.barh([entry["label"] for entry in layers][::-1], [entry["kl"] for entry in layers][::-1], color=PALETTE[1])
    ax1.set_xlabel("KL(FP32 || only this layer compressed)")
    ax1.set_title(f"{sensitivity['recipe']}: damage per layer", fontsize=9)
    ax1.tick_params(axis="y", labelsize=7)
    ks = [c["kept"] for c in curve]
    ax3 = ax2.twinx()
    ax3.plot(ks, [c["kl"] for c in curve], "s--", color=PALETTE[4], alpha=0.6)
    ax3.set_ylabel("KL to FP32 (dashed)", color=PALETTE[4], fontsize=8)
    ax3.tick_params(axis="y", labelsize=7, colors=PALETTE[4])
    ax2.plot(ks, [c["val_top1"] for c in curve], "o-", color=PALETTE[0], label="keep most damaging k")
    if sensitivity.get("control"):
        c = sensitivity["control"]
        ax2.plot([c["kept"]], [c["val_top1"]], "x", color=PALETTE[3], ms=8,
                 label=f"control: keep least damaging {c['kept']}")
    ax2.axhline(sensitivity["val_reference_top1"], color="black", lw=0.8, label="FP32 (validation)")
    ax2.axhline(sensitivity["val_reference_top1"] - sensitivity["accuracy_budget"], color=PALETTE[3], lw=0.8,
                ls=":", label="budget")
    for c in curve:
        ax2.annotate(f"{c['size_mb']:.3f} MB", (c["kept"], c["val_top1"]), fontsize=7, xytext=(3, -10),
                     textcoords="offset points")
    ax2.set_xlabel("layers kept uncompressed (k)")
    ax2.set_ylabel("validation top-1 (%)")
    ax2.set_xticks(ks)
    ax2.legend(fontsize=7)
    ax2.set_title("recovery by keeping the worst layers float", fontsize=9)
    fig.tight_layout()
    return Chart(fig, f"damage per layer for {sensitivity['recipe']} and validation top-1 as the k most damaging "
                      "layers stay float")


# --------------------------------------------------------------------------- interactive explorer
def explore(record: StageRecord) -> Any:
    """An ipywidgets control: pick a variant, see its row and (where computed) the layer sensitivity.

    ``record`` is a stage record (``quantization.json``).  Returns a ``VBox``; its ``children`` are the
    dropdown and an ``HTML`` panel updated on every selection.
    """
    import ipywidgets as widgets

    variants = {v.name: v for v in record.variants}
    fp32_bytes = (record.get("baseline") or {}).get("fp32_size_bytes")
    sensitivity = record.get("sensitivity") or {}
    dropdown = widgets.Dropdown(options=list(variants), description="variant")
    panel = widgets.HTML()

    def render(name: str) -> str:
        if name not in variants:
            return "<i>no variants in this record</i>"
        v = variants[name]
        parts = [f"<b>{html.escape(name)}</b>: {html.escape(v.description)}",
                 results_table([v], fp32_bytes)._repr_html_()]
        recipe = (v.get("recipe") or {}).get("name")
        if sensitivity and recipe == sensitivity.get("recipe"):
            rows = [{"rank": i + 1, "layer": layer["label"], "shape": "x".join(map(str, layer["shape"])),
                     "KL": layer["kl"], "val Δ top-1": layer["val_delta_top1"]}
                    for i, layer in enumerate(sensitivity["layers"])]
            parts += [f"<b>layer sensitivity of {html.escape(recipe)}</b> (one layer compressed at a time, "
                      f"{sensitivity['val_images']} validation images)", Table(rows)._repr_html_()]
        elif sensitivity:
            parts.append(f"<i>layer sensitivity was computed for {html.escape(str(sensitivity.get('recipe')))}; "
                         "pick that recipe (or its -keep variant) to see it</i>")
        return "".join(parts)

    def on_change(change: dict[str, Any]) -> None:
        panel.value = render(change["new"])

    dropdown.observe(on_change, names="value")
    panel.value = render(dropdown.value) if dropdown.value is not None else "<i>no variants</i>"
    return widgets.VBox([dropdown, panel])


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
