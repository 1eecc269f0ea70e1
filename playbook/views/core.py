"""The shared parts of every view: the colours, ``Table`` (HTML in Jupyter, aligned text elsewhere), ``Chart``
(a matplotlib figure shown as PNG, with its text description), and the helpers every chart uses: matplotlib-safe
text, label placement without overlaps, plain log ticks and the Japanese font."""
from __future__ import annotations

import contextlib
import html
import io
import math
from typing import Any, Sequence

from playbook.records import VariantRecord

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STAGE_COLOURS = {"baseline": "#000000", "quantization": "#0072B2", "distillation": "#009E73",
                 "architecture": "#D55E00", "benchmark": "#CC79A7"}
TECHNIQUE_COLOURS = {"baseline": "#000000", "quantization": "#0072B2", "palettization": "#E69F00",
                     "pruning": "#009E73", "joint": "#CC79A7", "activation-quantization": "#D55E00",
                     "data-aware": "#56B4E9"}
AXIS_LABELS = {"size_mb": "package size on disk (MB)", "latency_ms": "median latency, batch 1 (ms)",
               "macs": "multiply-accumulates per image"}
# the two techniques issue 15 added to the recipe catalogue (the last Okabe-Ito colour, and Tol's wine)
TECHNIQUE_COLOURS.update({"mixed-bits": "#F0E442", "training-time": "#882255"})


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


def _mpl_text(text: str) -> str:
    """Model-supplied text for a matplotlib label: no mathtext (``$``) interpretation."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _place_labels(ax: Any, points: Sequence[tuple[float, float, str]],
                  avoid: Sequence[tuple[float, float]] = (),
                  bars: Sequence[tuple[float, float, float]] = ()) -> None:
    """Label points without overlaps: each label tries places around its point, nearest first (beside it, towards
    the middle of the plot, then above, below, the other side, and further out, joined by a thin line when it stands
    off), and takes the first that overlaps no label placed before, no marker at a point of ``avoid``, no vertical bar
    ``(x, y_low, y_high)`` of ``bars`` (intervals) and stays inside the frame; when none does, the one that overlaps least.  Deterministic, in display units: call
    it once the figure's layout is final.  (``adjustText`` converged too slowly for the phone-width charts, leaving
    labels on markers within its time limit, and its result depended on the machine's load.)"""
    if not points:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    fig = ax.figure
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = 4.5 * fig.dpi / 72.0  # a marker's half-width, pixels
    centres = ax.transData.transform(list(avoid) or [(x, y) for x, y, _ in points])
    obstacles = [(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    for x, low, high in bars:
        (bx, by0), (_, by1) = ax.transData.transform([(x, low), (x, high)])
        obstacles.append((bx - 2.0, by0, bx + 2.0, by1))
    placed: list[tuple[float, float, float, float]] = []
    middle = (frame.x0 + frame.x1) / 2
    for x, y, text in points:
        towards = -1.0 if ax.transData.transform((x, y))[0] > middle else 1.0
        best: tuple[float, Any, tuple[float, float, float, float]] | None = None
        for dx, dy in _label_offsets(towards):
            ha = "center" if dx == 0 else ("left" if dx > 0 else "right")
            va = "center" if dy == 0 else ("bottom" if dy > 0 else "top")
            far = math.hypot(dx, dy) > 12
            note = ax.annotate(_mpl_text(text), (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=8.5, zorder=6,
                               arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 0,
                                           "shrinkB": 3} if far else None)
            note.update_positions(renderer)
            e = Text.get_window_extent(note, renderer)  # the text alone (an Annotation's own extent adds its line)
            box = (e.x0 - 1, e.y0 - 1, e.x1 + 1, e.y1 + 1)
            outside = max(frame.x0 - box[0], 0) + max(box[2] - frame.x1, 0) + max(frame.y0 - box[1], 0) + \
                max(box[3] - frame.y1, 0)
            cost = sum(_overlap(box, other) for other in placed + obstacles) + 1e4 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note, box)
            else:
                note.remove()
            if cost == 0:
                break
        assert best is not None
        placed.append(best[2])


def _label_offsets(towards: float) -> list[tuple[float, float]]:
    """Candidate label offsets from a point, in points, nearest first; ``towards`` is +1 when the middle of the plot is
    to the right of the point, -1 when to its left."""
    out = []
    for d in (6.0, 14.0, 24.0, 36.0, 50.0, 66.0):
        out += [(towards * d, 0.0), (towards * d * 0.7, d * 0.7), (0.0, d), (towards * d * 0.7, -d * 0.7), (0.0, -d),
                (-towards * d * 0.7, d * 0.7), (-towards * d, 0.0), (-towards * d * 0.7, -d * 0.7)]
    return out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area shared by two boxes ``(x0, y0, x1, y1)``."""
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis ticks at 1, 2 and 5 per decade written as plain numbers (0.05, 0.1, 0.2), not 5×10⁻²."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


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
