"""Stage 02 (quantization and compression) views: the layer sensitivity chart, the interactive explorer
(ipywidgets) and the per-layer bit allocation of mixed-bit variants."""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from playbook.records import StageRecord
from playbook.views.core import PALETTE, Chart, Table, _figure, _mpl_text, results_table


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


# --------------------------------------------------------------------------- issue 15: bit allocation (lowbit)
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
