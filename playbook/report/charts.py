"""The report's two charts (accuracy against size and against latency), each drawn twice -- wide for a screen, narrow
and tall for a phone -- at twice the CSS pixel density, as palette PNGs embedded in the page.  Where no latency was
measured on a device, the latency chart says "host CPU", draws no Pareto front from it and labels only the reference
and the choice (``host_latency_chart``)."""
from __future__ import annotations

from typing import Any

from playbook.report.facts import _png_data_uri, _reference, _where, provisional
from playbook.report.i18n import Locale
from playbook.report.recommend import Recommendation, ReportData, latency_rankable


def chart_images(data: ReportData, rec: Recommendation, loc: Locale) -> list[dict[str, Any]]:
    from playbook import views
    from playbook.views.core import japanese_font

    ref = _reference(data)
    ref_top1 = ref.top1 if ref is not None else None
    budget = rec.budgets["top1_drop"]
    highlight = rec.deliverable.name if rec.deliverable is not None else None
    # what may ship to this client (Core AI models only from OS 27: rec.excluded), and on the latency chart no Core AI
    # host-interpreter figure beside the others (it is never comparable; the "Core ML or Core AI" section shows it)
    out = {r.key for r, _ in rec.excluded}
    shown = {"size_mb": [r.raw for r in data.rows if r.key not in out],
             "latency_ms": [r.raw for r in data.rows if r.key not in out and r.target != "coreai"]}
    zoom = None
    if ref_top1 is not None:
        pool = list(rec.feasible) or list(data.rows)
        lows = [r.top1_ci[0] if r.top1_ci else r.top1 for r in pool if r.top1 is not None]
        zoom = max(budget * 1.5, ref_top1 - min(lows + [ref_top1 - budget])) + 0.5
    ringed = loc.t("tag.closest") if rec.chosen is None else (
        loc.t("chart.provisional") if provisional(data, loc) else loc.t("tag.recommended"))
    device_latency = any(latency_rankable(r) for r in data.rows)
    charts = []
    for x in ("size_mb", "latency_ms"):
        images = {}
        host_only = x == "latency_ms" and not device_latency
        for layout, (width, height) in CHART_LAYOUTS.items():  # a wide one, and a tall one for phones
            chart = views.accuracy_figure(shown[x], (x,), zooms=(zoom,), lang=loc.lang, reference_top1=ref_top1,
                                          max_top1_drop=budget, highlight=highlight, highlight_label=ringed,
                                          budget_x=rec.budgets.get(x) if x == "size_mb" else None, width=width,
                                          height=height)
            alt = chart.alt
            with japanese_font(loc.lang):  # text set after the chart was drawn needs the same font
                if host_only:
                    alt = host_latency_chart(chart, loc, keep={highlight, ref.name if ref is not None else None})
                local_units(chart, loc)
            images[layout] = (_png_data_uri(compact_png(chart.png(dpi=CHART_DPI))), alt)
            chart.figure.clear()
        caption = loc.t("chart.size.caption") if x == "size_mb" else loc.t(
            "chart.latency.caption" if host_only else "chart.latency.caption_device",
            where=_where(rec.deliverable, loc) if rec.deliverable else loc.t("not_measured"))
        charts.append({"id": f"chart-{x}", "src": images["wide"][0], "phone_src": images["phone"][0],
                       "alt": images["wide"][1], "caption": caption})
    return charts


def host_latency_chart(chart: Any, loc: Locale, keep: set[str | None]) -> str:
    """The accuracy-against-latency chart when no latency was measured on a device: host latency does not rank the
    variants, so the chart draws no Pareto front from it, labels only the reference and the recommendation, and says
    "host CPU" in its title and axis.  Returns the chart's description without the front."""
    import re

    from matplotlib.transforms import ScaledTranslation

    from playbook.views.accuracy import CHART_TEXT

    text = CHART_TEXT[loc.lang]
    ax = chart.figure.axes[0]
    for line in list(ax.lines):
        if line.get_label() == text["front"]:
            line.remove()
    for note in list(ax.texts):
        if hasattr(note, "xyann") and not any(name and note.get_text().startswith(name) for name in keep):
            note.remove()
    log = text["log"] if ax.get_xscale() == "log" else ""
    ax.set_xlabel(loc.t("chart.host_axis") + log, fontsize=10)
    title = ax.get_title().split("\n", 1)
    ax.set_title("\n".join([loc.t("chart.host_title")] + title[1:]), fontsize=9.5)
    if ax.get_legend() is not None:  # the same legend, without the front (its line is gone)
        handles, labels = ax.get_legend_handles_labels()
        below = ax.transAxes + ScaledTranslation(0, -0.5, ax.figure.dpi_scale_trans)
        ax.legend(handles, labels, fontsize=8.5, loc="upper center",
                  bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=2, frameon=False, markerscale=0.7,
                  labelspacing=1.1)
    alt = (re.sub(r" ?Pareto front: .*?%\.", "", chart.alt) if loc.lang == "en"
           else re.sub(r"パレートフロント：.*?%。", "", chart.alt))
    return alt + loc.t("chart.host_alt")


def local_units(chart: Any, loc: Locale) -> None:
    """Units in the chart's legend written as the rest of the page writes them (Japanese: ポイント, not "pt")."""
    if loc.lang != "ja":
        return
    for ax in chart.figure.axes:
        legend = ax.get_legend()
        for t in legend.get_texts() if legend is not None else []:
            t.set_text(t.get_text().replace(" pt", " ポイント"))


# Chart sizes in inches: side by side on a wide screen; on a phone (<= 720 px) a narrower, taller chart, so its text
# is as large on the phone as on the desktop.  Drawn at twice the CSS pixel density (sharp on high-density screens).
CHART_LAYOUTS = {"wide": (5.8, 4.9), "phone": (3.4, 5.0)}
CHART_DPI = 192


def compact_png(png: bytes, colours: int = 96) -> bytes:
    """A chart PNG as an optimised palette PNG (charts use a few flat colours: about half the bytes)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
