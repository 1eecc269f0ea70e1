"""Everything the notebooks and the report *show*: tables, charts and the ipywidgets explorer.

Display only: nothing here measures, writes records or decides.  Charts return matplotlib
``Figure`` objects built without pyplot's global state (``matplotlib.figure.Figure``), so the report
can render them to PNG and the notebooks can display them.  There is one chart per kind:
``accuracy_figure`` draws top-1 against size or latency for any list of variants, with the Pareto
front, the accuracy budget and the recommended variant, in notebook 02 and in the report alike.
"""
from __future__ import annotations

import contextlib
import html
import io
import math
import textwrap
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

    def __init__(self, figure: Any, alt: str = "", lang: str = "en") -> None:
        self.figure = figure
        self.alt = alt
        self.lang = lang

    def png(self, dpi: int = 100) -> bytes:
        with japanese_font(self.lang):
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


# ---- the accuracy chart (notebook 02 and the report): zoomed, labelled without overlaps, described in words
CHART_TEXT = {
    "en": {"size_mb": "package size on disk (MB)", "latency_ms": "median latency, batch 1 (ms)",
           "macs": "multiply-accumulates per image", "log": " (log scale)", "top1": "test top-1 (%), 95% interval",
           "front": "Pareto front", "budget_acc": "accuracy budget: reference − {drop} pt", "budget": "budget",
           "recommended": "recommended", "below": "▼ below the axis, top-1 in brackets",
           "below_list": "▼ below the axis: {names}",
           "missing": "not plotted (not measured): {names}", "empty": "no variant has both measurements",
           "title": "accuracy vs {what}", "zoomed": "zoomed to {zoom} points below the reference",
           "stage": {"baseline": "baseline", "quantization": "quantization", "distillation": "distillation",
                     "architecture": "architecture", "benchmark": "benchmark"}},
    "ja": {"size_mb": "パッケージサイズ（MB）", "latency_ms": "レイテンシ中央値・バッチ 1（ms）",
           "macs": "1 画像あたりの積和演算数", "log": "（対数軸）", "top1": "テスト top-1（%）、95% 信頼区間",
           "front": "パレートフロント", "budget_acc": "精度の許容範囲：基準 − {drop} pt", "budget": "上限",
           "recommended": "推奨", "below": "▼ は軸より下（括弧内が top-1）",
           "below_list": "▼ 軸より下：{names}",
           "missing": "未測定のため描画なし：{names}", "empty": "両方の値をもつバリアントがありません",
           "title": "精度と{what}", "zoomed": "基準から {zoom} ポイント下までを拡大",
           "stage": {"baseline": "ベースライン", "quantization": "量子化・圧縮", "distillation": "蒸留",
                     "architecture": "アーキテクチャ変更", "benchmark": "ベンチマーク"}},
}
MAX_EDGE_LABELS = 3  # more variants than this below the zoomed axis are named in the chart's note instead
STAGE_MARKERS = {"baseline": "s", "quantization": "o", "distillation": "^", "architecture": "D", "benchmark": "P"}


def _chart_text(lang: str) -> dict[str, Any]:
    if lang not in CHART_TEXT:
        raise ValueError(f"lang={lang!r}: charts are written in {sorted(CHART_TEXT)}")
    return CHART_TEXT[lang]


def _place_labels(ax: Any, points: Sequence[tuple[float, float, str]],
                  avoid: Sequence[tuple[float, float]] = ()) -> None:
    """Label points with ``adjustText``: labels pushed apart from each other and from every point in ``avoid``,
    kept inside the frame, each joined to its point by a thin line when it had to move."""
    from adjustText import adjust_text

    xmin, xmax = ax.get_xlim()
    log = ax.get_xscale() == "log"

    def right_half(x: float) -> bool:
        if log and x > 0 and xmin > 0:
            return math.log10(x) > (math.log10(xmin) + math.log10(xmax)) / 2
        return x > (xmin + xmax) / 2

    texts = [ax.text(x, y, _mpl_text(text), fontsize=8.5, zorder=6, ha="right" if right_half(x) else "left",
                     va="bottom") for x, y, text in points]
    if not texts:
        return
    targets = list(avoid) or [(x, y) for x, y, _ in points]
    adjust_text(texts, x=[p[0] for p in targets], y=[p[1] for p in targets], ax=ax, expand=(1.3, 1.8),
                force_text=(0.6, 0.9), force_static=(0.3, 0.5), ensure_inside_axes=True, time_lim=1.5,
                arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6})


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis ticks at 1, 2 and 5 per decade written as plain numbers (0.05, 0.1, 0.2), not 5×10⁻²."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def accuracy_chart(ax: Any, variants: Sequence[VariantRecord], x: str = "size_mb", reference_top1: float | None = None,
                   max_top1_drop: float | None = None, highlight: str | None = None, budget_x: float | None = None,
                   colour_by: str = "stage", zoom: float | None = None, label: str = "front",
                   lang: str = "en", highlight_label: str | None = None) -> list[str]:
    """Top-1 (with its 95% interval) against ``x`` on ``ax``, the Pareto front as a step line.

    ``reference_top1`` and ``max_top1_drop`` draw the accuracy budget; ``budget_x`` a limit on ``x``;
    ``highlight`` rings one variant (the recommendation).  ``zoom`` (points) limits the vertical axis to
    ``reference_top1 - zoom`` and up, so the candidates' intervals are readable; variants below are drawn as
    triangles on the bottom edge with their top-1 in the label.  ``label``: ``front`` names the front, the
    reference, the highlight and the outliers; ``all`` every point.  Labels never overlap (``adjustText``).
    Colours are Okabe-Ito (safe for the common colour-vision deficiencies) and each stage also has its own
    marker shape.  ``lang``: ``en`` or ``ja`` (Japanese needs a CJK font: see ``japanese_font``).

    Returns the names of the variants drawn on the bottom edge (below the zoomed axis).
    """
    text = _chart_text(lang)
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
        marker = STAGE_MARKERS.get(pts[0].stage, "o") if colour_by == "stage" else "o"
        name = text["stage"].get(key, key) if colour_by == "stage" else key
        inside = [v for v in pts if floor is None or v.top1 >= floor]
        if inside:
            err = [[max(v.top1 - max(v.top1_ci[0], floor if floor is not None else -math.inf), 0) if v.top1_ci else 0
                    for v in inside],
                   [max(v.top1_ci[1] - v.top1, 0) if v.top1_ci else 0 for v in inside]]
            ax.errorbar([value(v) for v in inside], [v.top1 for v in inside], yerr=err, fmt=marker, color=colour,
                        label=_mpl_text(name), capsize=2.5, markersize=5.5, lw=1.1, alpha=0.9)
        below = [v for v in pts if floor is not None and v.top1 < floor]
        if below:
            ax.scatter([value(v) for v in below], [floor] * len(below), marker="v", color=colour, s=36,
                       label=None if inside else _mpl_text(name), clip_on=False, zorder=4)
    front = pareto_front(plotted, value, lambda v: v.top1)
    if len(front) > 1:
        ax.step([value(v) for v in front], [max(v.top1, floor) if floor is not None else v.top1 for v in front],
                where="post", color="0.45", lw=1, ls="--", label=text["front"])
    if reference_top1 is not None and max_top1_drop is not None:
        ax.axhline(reference_top1 - max_top1_drop, color="#D55E00", ls=":", lw=1.2,
                   label=text["budget_acc"].format(drop=f"{max_top1_drop:g}"))
    if budget_x is not None:
        ax.axvline(budget_x, color="#D55E00", ls="--", lw=1, label=text["budget"])
    chosen = next((v for v in plotted if v.name == highlight), None)
    if chosen is not None:
        y = chosen.top1 if floor is None else max(chosen.top1, floor)
        ax.scatter([value(chosen)], [y], s=260, facecolors="none", edgecolors="black", linewidths=1.8,
                   label=_mpl_text(highlight_label or text["recommended"]), zorder=5)
    xs = [value(v) for v in plotted]
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 8
    if log_x:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    outliers = [v for v in plotted if floor is not None and v.top1 < floor]
    if floor is not None and plotted:
        tops = [v.top1_ci[1] if v.top1_ci else v.top1 for v in plotted if v.top1 >= floor]
        top = max(tops + [reference_top1 if reference_top1 is not None else -math.inf])
        ax.set_ylim(floor, top + 0.08 * max(top - floor, 0.5))
    named = {v.name for v in front} | {v.name for v in plotted if v.reference is None or v.stage == "baseline"} | \
        {highlight}
    shown = [(value(v), v.top1 if floor is None or v.top1 >= floor else floor,
              v.name if floor is None or v.top1 >= floor else f"{v.name} ({v.top1:.1f}%)")
             for v in plotted if (label == "all" or v.name in named or v in outliers)
             and not (v in outliers and len(outliers) > MAX_EDGE_LABELS)]
    avoid = []  # the points and their interval bars: labels keep clear of both
    for v in plotted:
        y = v.top1 if floor is None else max(v.top1, floor)
        avoid.append((value(v), y))
        if v.top1_ci and v.top1 >= (floor if floor is not None else -math.inf):
            low = max(v.top1_ci[0], floor) if floor is not None else v.top1_ci[0]
            avoid += [(value(v), low + (v.top1_ci[1] - low) * k / 8) for k in range(9)]
    _place_labels(ax, shown, avoid)
    ax.set_xlabel(text.get(x, AXIS_LABELS.get(x, x)) + (text["log"] if log_x else ""), fontsize=10)
    ax.set_ylabel(text["top1"], fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(alpha=0.3, which="both")
    notes = []
    if floor is not None and reference_top1 is not None:
        notes.append(text["zoomed"].format(zoom=f"{zoom:.1f}"))
    if outliers and len(outliers) <= MAX_EDGE_LABELS:
        notes.append(text["below"])
    elif outliers:  # too many to label on one edge: named in the note instead
        notes.append(text["below_list"].format(names=", ".join(f"{v.name} ({v.top1:.1f}%)" for v in outliers)))
    if missing:
        notes.append(text["missing"].format(names=", ".join(v.name for v in missing)))
    ax.chart_note = "; ".join(notes)  # shown under the title by accuracy_figure, wrapped to the figure's width
    if not plotted:
        ax.text(0.5, 0.5, text["empty"], transform=ax.transAxes, ha="center")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2,
                  frameon=False, markerscale=0.7, labelspacing=1.1)
    return [v.name for v in outliers]


def accuracy_alt(variants: Sequence[VariantRecord], x: str, reference_top1: float | None = None,
                 highlight: str | None = None, zoom: float | None = None, outliers: Sequence[str] = (),
                 lang: str = "en", highlight_label: str | None = None) -> str:
    """A text description of ``accuracy_chart``'s content (the ``alt`` of its image): range, front, outliers."""
    text = _chart_text(lang)
    plotted = [v for v in variants if (getattr(v, x, None) if hasattr(v, x) else v.get(x)) is not None
               and v.top1 is not None]

    def xv(v: VariantRecord) -> float:
        return getattr(v, x) if hasattr(v, x) else v.get(x)

    if not plotted:
        return text["empty"]
    front = pareto_front(plotted, xv, lambda v: v.top1)
    tops = [v.top1 for v in plotted]
    axis = text.get(x, x)
    fmt = (lambda v: f"{v.name} {xv(v):.3g} / {v.top1:.1f}%")
    if lang == "ja":
        out = (f"{len(plotted)} 個のバリアントのテスト top-1（%）と{axis}の散布図。top-1 は {min(tops):.1f}〜"
               f"{max(tops):.1f}%。パレートフロント：{'、'.join(fmt(v) for v in front)}。")
        if reference_top1 is not None and zoom is not None:
            out += f"縦軸は基準（{reference_top1:.1f}%）から {zoom:.1f} ポイント下までを拡大。"
        if outliers:
            out += f"軸より下（下端に表示）：{'、'.join(outliers)}。"
        if highlight:
            out += f"{highlight_label or '推奨'}（丸印）：{highlight}。"
        return out
    out = (f"Scatter of test top-1 (%) against {axis} for {len(plotted)} variants; top-1 ranges from {min(tops):.1f} "
           f"to {max(tops):.1f}%. Pareto front: {'; '.join(fmt(v) for v in front)}.")
    if reference_top1 is not None and zoom is not None:
        out += f" The vertical axis is zoomed to {zoom:.1f} points below the reference ({reference_top1:.1f}%)."
    if outliers:
        out += f" Below the axis (drawn on the bottom edge): {', '.join(outliers)}."
    if highlight:
        out += f" Ringed, {highlight_label or 'recommended'}: {highlight}."
    return out


def accuracy_figure(variants: Sequence[VariantRecord], xs: Sequence[str] = ("size_mb",), title: str = "",
                    width: float | None = None, zooms: Sequence[float | None] | None = None, lang: str = "en",
                    height: float = 4.8, **kwargs: Any) -> Chart:
    """``accuracy_chart`` for each axis in ``xs``, side by side; ``zooms`` gives each panel's ``zoom``
    (e.g. ``(None, 3.0)``: everything on the left, the band within 3 points of the reference on the right).
    The returned chart's ``alt`` describes every panel in words."""
    text = _chart_text(lang)
    with japanese_font(lang):
        fig, axes = _figure(width or 5.6 * len(xs), height, len(xs))
        axes = np.atleast_1d(axes)
        alts = []
        for ax, x, zoom in zip(axes, xs, zooms or [None] * len(xs)):
            outliers = accuracy_chart(ax, variants, x, zoom=zoom, lang=lang, **kwargs)
            what = text.get(x, AXIS_LABELS.get(x, x)).split(" (")[0].split("（")[0]
            note = getattr(ax, "chart_note", "")
            chars = int(fig.get_figwidth() / len(xs) * (15 if lang == "en" else 12))
            ax.set_title(text["title"].format(what=what) + ("\n" + _mpl_text(textwrap.fill(note, chars)) if note
                                                            else ""), fontsize=9.5)
            alts.append(accuracy_alt(variants, x, kwargs.get("reference_top1"), kwargs.get("highlight"), zoom,
                                     outliers, lang, kwargs.get("highlight_label")))
        if title:
            fig.suptitle(_mpl_text(title), fontsize=10)
        fig.tight_layout()
    return Chart(fig, " ".join(alts), lang=lang)


@contextlib.contextmanager
def japanese_font(lang: str) -> Any:
    """Within the block, matplotlib draws with IPAexGothic (PyPI ``matplotlib-fontja``) when ``lang`` is ``ja``;
    the global font settings are left as they were (importing ``matplotlib_fontja`` alone would change them)."""
    import matplotlib

    if lang != "ja":
        yield
        return
    family = list(matplotlib.rcParams["font.family"])
    import matplotlib_fontja  # noqa: F401 - registers IPAexGothic with matplotlib's font manager

    matplotlib.rcParams["font.family"] = family
    with matplotlib.rc_context({"font.family": ["IPAexGothic", "DejaVu Sans"]}):
        yield


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


# =========================================================================== device benchmarking (stage 05)
# Display only: tables and charts over the benchmark record's measurements (``playbook.bench_schema``).
def _measured(block: dict[str, Any] | None, key: str) -> Any:
    """A block's number, or the text "not measured" (never a number for something unmeasured)."""
    if not block or not block.get("measured"):
        return "not measured"
    return block.get(key)


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
# --------------------------------------------------------------------------- issue 15: bit allocation (lowbit)
# the two techniques issue 15 added to the recipe catalogue (the last Okabe-Ito colour, and Tol's wine)
TECHNIQUE_COLOURS.update({"mixed-bits": "#F0E442", "training-time": "#882255"})


def plot_bit_allocation(mixed: dict[str, Any], title: str = "") -> Chart:
    """Per-layer palette sizes of a mixed-bit variant as bars (PyTorch module names, program order), with each
    layer's share of the weights beside it, so a reader sees where the bytes go and which layers kept more bits.

    ``mixed`` is one entry of the quantization record's ``mixed_bits`` (``QuantizationRun.mixed[name]``)."""
    rows = mixed["allocation"]
    labels = [_mpl_text(r["label"]) for r in rows]
    bits = [r["bits"] for r in rows]
    sizes = np.array([r["size"] for r in rows], dtype=float)
    share = 100.0 * sizes / max(sizes.sum(), 1.0)
    choices = list(mixed.get("bit_choices") or sorted(set(bits)))
    colours = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(choices)}
    fig, (ax1, ax2) = _figure(11, max(2.8, 0.32 * len(rows) + 1.2), 2)
    y = np.arange(len(rows))[::-1]
    ax1.barh(y, bits, color=[colours[b] for b in bits])
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.set_xticks(choices)
    ax1.set_xlim(0, max(choices) + 0.5)
    ax1.set_xlabel("palette size (bits per weight)")
    for yy, b in zip(y, bits):
        ax1.text(b + 0.1, yy, str(b), va="center", fontsize=7)
    ax1.set_title(title or f"bits per layer: {mixed.get('bits_per_weight', float('nan')):.2f} bits/weight on average",
                  fontsize=9)
    ax2.barh(y, share, color=[colours[b] for b in bits])
    ax2.set_yticks(y, [""] * len(rows))
    ax2.set_xlabel("share of the compressed weights (%)")
    ax2.set_title("where the weights are", fontsize=9)
    from matplotlib.patches import Patch

    ax2.legend(handles=[Patch(color=colours[b], label=f"{b} bits") for b in choices], fontsize=7, loc="upper right")
    fig.tight_layout()
    alt = "; ".join(f"{r['label']}: {r['bits']} bits ({s:.1f}% of weights)" for r, s in zip(rows, share))
    return Chart(fig, f"palette size per layer ({len(rows)} layers): {alt}")
# --------------------------------------------------------------------------- distillation (stage 03)
def plot_soft_labels(examples: dict[str, Any]) -> Chart:
    """The teacher's soft labels ``softmax(logits / T)`` for a few test images, one row per image, one column per
    temperature; the true class's bar is highlighted.  ``examples`` is ``DistillationRun.soft_label_examples()``."""
    images, labels, names = examples["images"], examples["labels"], examples["class_names"]
    temps = list(examples["temperatures"])
    probs = examples["probabilities"]
    rows, cols = len(labels), len(temps) + 1
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.3 * cols, 1.9 * rows + 0.4), dpi=100)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, label in enumerate(labels):
        ax = axes[i, 0]
        img = np.asarray(images[i])
        ax.imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray")
        ax.set_title(_mpl_text(f"true: {names[label]}"), fontsize=8)
        ax.set_axis_off()
        for j, t in enumerate(temps):
            ax = axes[i, j + 1]
            p = np.asarray(probs[t])[i]
            colours = [PALETTE[3] if k == label else PALETTE[0] for k in range(len(p))]
            ax.bar(range(len(p)), p, color=colours)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(len(p)), [str(k) for k in range(len(p))], fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            entropy = float(-(p * np.log(np.clip(p, 1e-12, 1))).sum())
            ax.set_title(f"T = {t:g}: top {p.max():.2f}, H = {entropy:.2f}", fontsize=7)
    fig.suptitle("teacher's soft labels at several temperatures (bars: classes 0-9, red: true class; H: entropy, nats)",
                 fontsize=9)
    fig.tight_layout()
    tops = ", ".join(f"T={t:g}: {np.mean(np.asarray(probs[t]).max(1)):.2f}" for t in temps)
    return Chart(fig, f"teacher soft labels for {rows} test images at T = {', '.join(f'{t:g}' for t in temps)}; mean "
                      f"top probability {tops}")


def plot_distillation_sweeps(sweeps: dict[str, Any]) -> Chart:
    """Validation top-1 against the temperature (log scale) and against alpha, with the scratch student as a line.
    ``sweeps`` is ``DistillationRun.sweeps``: rows with ``temperature``, ``alpha``, ``val_top1`` and
    ``scratch_val_top1``."""
    fig, axes = _figure(10, 3.6, 2)
    for ax, which, xlabel in ((axes[0], "temperature", "temperature T (log scale)"),
                              (axes[1], "alpha", "alpha: weight of the hard-label loss")):
        rows = sorted(sweeps.get(which) or [], key=lambda r: r[which])
        if not rows:
            ax.text(0.5, 0.5, f"no {which} sweep in this run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        xs, ys = [r[which] for r in rows], [r["val_top1"] for r in rows]
        fixed = "alpha" if which == "temperature" else "temperature"
        ax.plot(xs, ys, "o-", color=PALETTE[2], label=f"distilled ({fixed} = {rows[0][fixed]:g})")
        ax.axhline(rows[0]["scratch_val_top1"], color="black", ls="--", lw=1, label="scratch (same seed and budget)")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), fontsize=7, xytext=(3, 4), textcoords="offset points")
        if which == "temperature":
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"accuracy vs {which}", fontsize=9)
    fig.tight_layout()
    parts = []
    for which in ("temperature", "alpha"):
        rows = sweeps.get(which) or []
        if rows:
            parts.append(f"{which}: " + ", ".join(f"{r[which]:g} -> {r['val_top1']:.2f}%" for r in rows))
    return Chart(fig, "validation top-1 of distilled students; " + "; ".join(parts))


def distillation_sweep_table(rows: Sequence[dict[str, Any]]) -> Table:
    """One sweep (``DistillationRun.sweeps["temperature"]`` or ``["alpha"]``) as a table."""
    return Table([{"T": r["temperature"], "alpha": r["alpha"], "val top-1 %": r["val_top1"],
                   "scratch val top-1 %": r["scratch_val_top1"], "gain (points)": r["gain"], "train s": r["seconds"]}
                  for r in rows])


def distillation_seed_table(results: Sequence[dict[str, Any]], stats: dict[str, Any] | None) -> Table:
    """Scratch and distilled test top-1 per seed, the per-seed gain with its paired bootstrap interval and
    McNemar's p, then mean ± std over seeds with the paired t-test."""
    rows: list[dict[str, Any]] = [
        {"seed": r["seed"], "scratch top-1 %": r["scratch_top1"], "distilled top-1 %": r["distilled_top1"],
         "gain (points)": r["gain"], "gain 95% CI": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]",
         "McNemar p": r["mcnemar_p"]} for r in results]
    if stats:
        def pm(mean: float, std: float | None, sign: str = "") -> str:
            return f"{mean:{sign}.2f}" + ("" if std is None else f" ± {std:.2f}")

        rows.append({"seed": f"mean ± std ({stats['n']} seeds)",
                     "scratch top-1 %": pm(stats["scratch_mean"], stats["scratch_std"]),
                     "distilled top-1 %": pm(stats["distilled_mean"], stats["distilled_std"]),
                     "gain (points)": pm(stats["gain_mean"], stats["gain_std"], "+"),
                     "gain 95% CI": "" if stats["ci_low"] is None
                     else f"[{stats['ci_low']:+.2f}, {stats['ci_high']:+.2f}] (t)",
                     "McNemar p": "" if stats["p_value"] is None else f"paired t-test p = {stats['p_value']:.3g}"})
    return Table(rows)


def plot_seed_comparison(results: Sequence[dict[str, Any]]) -> Chart:
    """Scratch and distilled test top-1 of each seed, joined by a line (a paired design: the lines' slopes are the
    gains the t-test looks at)."""
    fig, ax = _figure(4.2, 3.4)
    for r in results:
        colour = PALETTE[2] if r["distilled_top1"] > r["scratch_top1"] else PALETTE[3]
        ax.plot([0, 1], [r["scratch_top1"], r["distilled_top1"]], "o-", color=colour, lw=1)
        ax.annotate(f"seed {r['seed']}", (1, r["distilled_top1"]), fontsize=7, xytext=(4, 0),
                    textcoords="offset points", va="center")
    ax.set_xticks([0, 1], ["scratch", "distilled"])
    ax.set_xlim(-0.3, 1.5)
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.set_title("same student, same seed: scratch vs distilled", fontsize=9)
    fig.tight_layout()
    return Chart(fig, "test top-1 per seed, scratch vs distilled: " + "; ".join(
        f"seed {r['seed']}: {r['scratch_top1']:.2f} -> {r['distilled_top1']:.2f}" for r in results))


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
