"""The accuracy chart, one chart kind for every stage and the report: top-1 against size, latency or MACs with
the Pareto front, the accuracy budget and the recommendation, zoomed, labelled without overlaps, described in
words (English or Japanese)."""
from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np

from playbook.metrics import pareto_front
from playbook.records import VariantRecord
from playbook.views.core import (AXIS_LABELS, PALETTE, STAGE_COLOURS, TECHNIQUE_COLOURS, Chart, _figure,
                                 _mpl_text, _place_labels, _plain_log_ticks, japanese_font)


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


def accuracy_chart(ax: Any, variants: Sequence[VariantRecord], x: str = "size_mb", reference_top1: float | None = None,
                   max_top1_drop: float | None = None, highlight: str | None = None, budget_x: float | None = None,
                   colour_by: str = "stage", zoom: float | None = None, label: str = "front",
                   lang: str = "en", highlight_label: str | None = None) -> list[str]:
    """Top-1 (with its 95% interval) against ``x`` on ``ax``, the Pareto front as a step line.

    ``reference_top1`` and ``max_top1_drop`` draw the accuracy budget; ``budget_x`` a limit on ``x``;
    ``highlight`` rings one variant (the recommendation).  ``zoom`` (points) limits the vertical axis to
    ``reference_top1 - zoom`` and up, so the candidates' intervals are readable; variants below are drawn as
    triangles on the bottom edge with their top-1 in the label.  ``label``: ``front`` names the front, the
    reference, the highlight and the outliers; ``all`` every point; ``accuracy_figure`` places them
    without overlaps (``_place_labels``).
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
        ax.set_ylim(floor, top + 0.2 * max(top - floor, 0.5))  # headroom for the labels above the top points
    named = {v.name for v in front} | {v.name for v in plotted if v.reference is None or v.stage == "baseline"} | \
        {highlight}
    shown = [(value(v), v.top1 if floor is None or v.top1 >= floor else floor,
              v.name if floor is None or v.top1 >= floor else f"{v.name} ({v.top1:.1f}%)")
             for v in plotted if (label == "all" or v.name in named or v in outliers)
             and not (v in outliers and len(outliers) > MAX_EDGE_LABELS)]
    shown.sort(key=lambda point: point[2] != highlight)  # the ringed variant's label is placed first, nearest
    avoid, bars = [], []  # the points and their interval bars: labels keep clear of both
    for v in plotted:
        y = v.top1 if floor is None else max(v.top1, floor)
        avoid.append((value(v), y))
        if v.top1_ci and v.top1 >= (floor if floor is not None else -math.inf):
            low = max(v.top1_ci[0], floor) if floor is not None else v.top1_ci[0]
            bars.append((value(v), low, v.top1_ci[1]))
    ax.pending_labels = (shown, avoid, bars)  # placed by accuracy_figure once the layout is final
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
        from matplotlib.transforms import ScaledTranslation

        # below the tick labels and the axis label at a fixed distance (inches, not a share of the axes' height,
        # which a long title shrinks until the legend covers the axis label)
        below = ax.transAxes + ScaledTranslation(0, -0.5, ax.figure.dpi_scale_trans)
        ax.legend(handles, labels, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                  ncol=2, frameon=False, markerscale=0.7, labelspacing=1.1)
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
        for ax in axes:
            _place_labels(ax, *ax.pending_labels)
    return Chart(fig, " ".join(alts), lang=lang)
