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


# --------------------------------------------------------------------------- tables and narrative of the record
# Every function below reads a stage-02 record (``QuantizationRun.snapshot()`` while the notebook runs, or
# ``quantization.json`` afterwards): display only, no measuring.
def recipe_table(names: list[str]) -> Table:
    """The recipes a run measures: side, technique, scheme, bits, oldest target, data, description."""
    from playbook.compress import recipe_rows

    return Table(recipe_rows(names))


def quantization_table(record: StageRecord, names: list[str] | None = None) -> Table:
    """The measured variants of stage 02 (optionally only ``names``) as a table."""
    return results_table(record.variants, (record.get("baseline") or {}).get("fp32_size_bytes"), names)


def explain_variant(record: StageRecord, name: str) -> str:
    """One sentence with the measured figures of a variant (or why it is missing)."""
    v = record.variant(name)
    refused = next((x for x in record.get("skipped") or [] if x["recipe"] == name), None)
    if refused is not None:
        return f"`{name}` was refused by coremltools: {refused['coremltools_message']} ({refused['hint']})."
    failed = next((x for x in record.get("failed") or [] if x["recipe"] == name), None)
    if failed is not None:
        return f"`{name}` failed ({failed['phase']}): {failed['error']}: {failed['reason']}."
    if v is None:
        return f"`{name}` was not run in this configuration (see `recipes`)."
    vs = v.vs_reference
    budget = float(record.config.get("max_top1_drop", 1.0))
    verdict = "within" if v.get("within_budget") else "outside"
    extra = ""
    if v.get("bits_per_weight") is not None:
        extra += f"; {v.get('bits_per_weight'):.2f} bits per compressed weight on average"
    if v.get("finetune_steps"):
        steps, images = v.get("finetune_steps"), v.get("finetune_images")
        epochs = images / max(int((record.get("dataset") or {}).get("train") or 0), 1)
        reused = (v.get("details") or {}).get("finetune_reused_from")
        lr = v.get("finetune_lr")
        teacher = record.get("finetune_teacher")
        extra += (f"; fine-tune budget {steps} steps x {record.config.get('batch_size')} images = {images} images "
                  f"({epochs:.2f} epochs)" + (f" at learning rate {lr:g}" if lr is not None else "") +
                  (f", on the labels and the FP32 model's logits (T = {teacher['temperature']:g}, alpha = "
                   f"{teacher['alpha']:g})" if teacher else "") + ", " +
                  (f"`{reused}`'s fine-tune, reused" if reused else
                   f"{v.get('finetune_seconds', 0.0):.0f} s on this CPU"))
        stop = (v.get("details") or {}).get("early_stop")
        if stop and stop.get("best_step") is not None:
            extra += (f"; {len(stop['checks'])} checks of agreement with FP32 on {stop['images']} validation images"
                      + (f" stopped it after {stop['steps_run']} of {stop['planned_steps']} steps"
                         if stop["stopped_early"] else "") +
                      f", weights from step {stop['best_step']} ({100 * stop['best_agreement']:.1f}% agreement)")
    return (f"`{name}`: {v.size_mb:.3f} MB ({v.get('size_ratio_vs_fp32'):.1f}x smaller than FP32; the weight "
            f"file alone {v.get('weights_ratio_vs_fp32'):.1f}x{extra}), top-1 "
            f"{v.top1:.2f}% [{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}]; change vs FP32 "
            f"{vs.delta_top1:+.2f} points, 95% CI [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}], McNemar p = "
            f"{vs.p_value:.3g}; top-1 agreement with FP32 {v.fidelity.top1_agreement:.2f}% -- "
            f"{verdict} the {budget:g}-point budget.")


def smallest_within(record: StageRecord, max_drop: float, strict: bool = True) -> Any:
    """The variant with the smallest weight file whose change in top-1 stays within ``max_drop`` points of FP32:
    with ``strict``, the whole paired 95% interval (its lower end >= -max_drop); otherwise the point estimate.
    ``None`` when no variant qualifies."""
    fits = [v for v in record.variants if v.target == "coreml" and v.vs_reference is not None and
            (v.vs_reference.ci_low if strict else v.vs_reference.delta_top1) >= -max_drop]
    return min(fits, key=lambda v: v.get("weights_bytes") or v.size_bytes, default=None)


def headline_table(record: StageRecord, drops: tuple[float, ...] | None = None) -> Table:
    """For each accuracy limit (default: the budget and 30% of it), the smallest variant that stays within it,
    judged by the paired interval's lower end and by the point estimate, with its weight-file and package ratios
    against FP32 (the package also holds a fixed program and metadata part that compression does not shrink)."""
    budget = float(record.config.get("max_top1_drop", 1.0))
    rows = []
    for drop in drops or (budget, 0.3 * budget):
        for strict in (True, False):
            v = smallest_within(record, drop, strict)
            rows.append({"limit (points)": drop, "judged by": "95% CI lower end" if strict else "point estimate",
                         "variant": v.name if v else "none",
                         "weights x smaller": v.get("weights_ratio_vs_fp32") if v else None,
                         "package x smaller": v.get("size_ratio_vs_fp32") if v else None,
                         "Δ top-1": v.delta_top1 if v else None,
                         "Δ 95% CI": f"[{v.vs_reference.ci_low:.2f}, {v.vs_reference.ci_high:.2f}]" if v else "",
                         "weights KB": (v.get("weights_bytes") or 0) / 1e3 if v else None,
                         "package KB": v.size_bytes / 1e3 if v else None})
    return Table(rows)


FINDING_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("8-bit weights", ("int8-weights",)),
    ("4-bit, data-free", ("palettize-4bit", "int4-block")),
    ("below 4 bits, data-free", ("palettize-3bit", "palettize-2bit")),
    ("below 4 bits, palettes learned while fine-tuning (DKM)", ("torch-palettize-3bit-dkm", "torch-palettize-2bit-dkm",
                                                               "torch-palettize-2bit-dkm-channel")),
    ("mixed bit-widths chosen on validation", ("palettize-mixed", "palettize-mixed-tight")),
    ("those mixed bit-widths learned while fine-tuning (DKM)", ("torch-palettize-mixed-dkm",
                                                                "torch-palettize-mixed-tight-dkm")),
    ("75% pruning, one-shot vs reached gradually while fine-tuning", ("prune-75", "torch-prune-75-ft")),
    ("gradual pruning with a 4-bit palette on the survivors", ("torch-prune-50-ft+palettize-4bit",
                                                               "torch-prune-75-ft+palettize-4bit")),
    ("W8A8, calibrated vs trained", ("torch-w8a8-static", "torch-w8a8-qat")),
)


def findings(record: StageRecord) -> str:
    """A markdown list of what the run measured, one line per finding, every figure from the record's variants
    (lines whose variants were not run are left out)."""
    def brief(name: str) -> str | None:
        v = record.variant(name)
        if v is None or v.vs_reference is None:
            return None
        vs = v.vs_reference
        return (f"`{name}` {vs.delta_top1:+.2f} points [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}] at "
                f"{v.get('weights_ratio_vs_fp32'):.1f}x smaller weights")

    lines = []
    for text, names in FINDING_GROUPS:
        briefs = [b for b in (brief(n) for n in names) if b]
        if briefs:
            lines.append(f"* {text}: " + "; ".join(briefs) + ".")
    s = record.get("sensitivity")
    if s and s.get("test", {}).get("recipe"):
        kept, base = s["test"]["guided"], s["test"]["recipe"]
        lines.append(f"* keeping {s['chosen_kept']} layer(s) of `{s['recipe']}` float moved top-1 by "
                     f"{kept['delta_top1'] - base['delta_top1']:+.2f} points and cost "
                     f"{(kept['size_mb'] - base['size_mb']) * 1e3:.1f} KB of package.")
    budget = float(record.config.get("max_top1_drop", 1.0))
    for drop in (budget, 0.3 * budget):
        v = smallest_within(record, drop)
        if v is not None:
            lines.append(f"* smallest variant whose whole 95% interval stays within {drop:g} points: `{v.name}`, "
                         f"weights {v.get('weights_ratio_vs_fp32'):.1f}x and package "
                         f"{v.get('size_ratio_vs_fp32'):.1f}x smaller than FP32.")
        else:
            lines.append(f"* no variant's whole 95% interval stays within {drop:g} points.")
    for v in record.variants:
        steps, seconds = v.get("finetune_steps"), v.get("finetune_seconds", 0.0)
        reused = (v.get("details") or {}).get("finetune_reused_from")
        if steps and reused:
            lines.append(f"* `{v.name}` starts from `{reused}`'s fine-tune ({steps} steps, trained once).")
        elif steps:
            lines.append(f"* `{v.name}` fine-tuned {steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s per "
                         "step on this machine).")
    return "\n".join(lines) if lines else "*(no variants measured)*"


def package_overhead_bytes(record: StageRecord) -> dict[str, int]:
    """Package bytes outside the weight file (program, metadata, manifest) per variant, FP32 included: the part
    compression does not shrink."""
    base = record.get("baseline") or {}
    out = {record.get("reference_variant"): int(base["fp32_size_bytes"]) - int(base.get("fp32_weights_bytes") or 0)}
    out.update({v.name: v.size_bytes - (v.get("weights_bytes") or 0) for v in record.variants})
    return out


def comparison_table(record: StageRecord) -> Table:
    """The paired comparisons of the run (trained vs data-free, gradual vs one-shot, mixed vs uniform); the change
    is the second variant minus the first."""
    return Table([{"variant": c["b"], "minus": c["a"], "Δ top-1": c["delta_top1"],
                   "Δ 95% CI": f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]", "McNemar p": c["p_value"]}
                  for c in (record.get("comparisons") or {}).values()])


def sensitivity_table(record: StageRecord) -> Table:
    """The per-layer ranking of the layer sensitivity analysis (most damaging first)."""
    s = record.get("sensitivity")
    if not s:
        return Table([])
    return Table([{"rank": i + 1, "layer": e["label"], "shape": "x".join(map(str, e["shape"])),
                   "elements": e["size"], "KL": e["kl"], "val Δ top-1": e["val_delta_top1"]}
                  for i, e in enumerate(s["layers"])])


def keep_curve_table(record: StageRecord) -> Table:
    """Validation top-1 and size as the k most damaging layers stay float (and the control)."""
    s = record.get("sensitivity")
    if not s:
        return Table([])
    rows = [{"kept float": c["kept"], "layers": ", ".join(c["kept_layers"]) or "-", "size MB": c["size_mb"],
             "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"], "KL": c["kl"]} for c in s["keep_curve"]]
    c = s.get("control")
    if c:
        rows.append({"kept float": f"{c['kept']} (control: least damaging)", "layers": ", ".join(c["kept_layers"]),
                     "size MB": c["size_mb"], "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"], "KL": c["kl"]})
    return Table(rows)


def bit_allocation_table(record: StageRecord, name: str) -> Table:
    """One row per layer of a mixed-bit variant: PyTorch module, shape, elements, the palette size chosen, and the
    measured damage (validation KL) of that layer alone at each candidate size."""
    info = (record.get("mixed_bits") or {}).get(name)
    if not info:
        return Table([])
    return Table([{"layer": row["label"], "shape": "x".join(map(str, row["shape"])), "elements": row["size"],
                   "bits": row["bits"], **{f"KL@{b}": row["kl"][str(b)] for b in info["bit_choices"]}}
                  for row in info["allocation"]])


def bit_search_table(record: StageRecord, name: str) -> Table:
    """The allocations checked on validation while choosing a mixed-bit variant, in search order."""
    info = (record.get("mixed_bits") or {}).get(name)
    if not info:
        return Table([])
    return Table([{"path point": c["index"], "bits/weight": c["bits_per_weight"], "weights KB":
                   c["weights_bytes"] / 1e3, "val Δ top-1": c["val_delta_top1"], "val KL": c["val_kl"],
                   "predicted KL": c["predicted_kl"], "accepted": c["accepted"]} for c in info["checks"]])


# --------------------------------------------------------------------------- Core AI beside Core ML (issue 24)
def coreai_table(record: StageRecord) -> Table:
    """The Core AI variants of the record (``target="coreai"``) beside the FP32 Core ML reference: size, top-1 with
    its interval and change, Apple's runtime against the playbook's executor on the same weights (where measured),
    and the host-interpreter latency (never a device figure)."""
    fp32 = (record.get("baseline") or {}).get("fp32_size_bytes")
    rows = []
    for v in record.variants:
        if v.target != "coreai":
            continue
        vs, oracle = v.vs_reference, v.get("oracle") or {}
        rows.append({"variant": v.name, "target": f"Core AI, iOS/macOS {str(v.get('min_os') or '27').split('.')[0]}+",
                     "technique": v.get("technique"), "KB": v.size_bytes / 1e3 if v.size_bytes else None,
                     "x smaller": fp32 / v.size_bytes if fp32 and v.size_bytes else None, "top-1 %": v.top1,
                     "top-1 95% CI": f"[{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}]" if v.top1_ci else "",
                     "Δ top-1": vs.delta_top1 if vs else None,
                     "Δ 95% CI": f"[{vs.ci_low:.2f}, {vs.ci_high:.2f}]" if vs else "",
                     "oracle agree %": oracle.get("top1_agreement"), "oracle max rel err": oracle.get("max_rel_error"),
                     "host interpreter ms": v.latency_ms})
    return Table(rows)


def explain_coreai(record: StageRecord) -> str:
    """Markdown: whether Core AI variants were made (and why not), what failed, and how to read their figures."""
    info = record.get("coreai")
    if not info:
        return "*Core AI variants were not run in this stage (call `run.run_coreai()`).*"
    if not info.get("available"):
        return f"**No Core AI variants:** {info.get('why')}. The Core ML variants above are unaffected."
    made = ", ".join(f"`{n}`" for n in info["variants"]) or "none"
    major = str(info.get("min_os")).split(".")[0]
    lines = [f"Core AI variants made with {info.get('versions')}: {made} ({info.get('seconds', 0.0):.0f} s). They load "
             f"only on iOS / macOS {major} or later; the report lets them compete only for a client whose deployment "
             "target is that recent."]
    if (info.get("images") or {}).get("why"):
        lines.append(f"* test images: {info['images']['why']} (the paired interval widens as 1/sqrt(images))")
    if (info.get("processes") or {}).get("why"):
        lines.append(f"* runtime processes: {info['processes']['why']}")
    for s in info.get("skipped") or []:
        lines.append(f"* `{s['recipe']}` was refused: {s['coremltools_message']} -- {s['hint']}")
    for f in info.get("failed") or []:
        lines.append(f"* `{f['recipe']}` failed ({f['phase']}): {f['error']}: {f['reason']}")
    for name, o in (info.get("oracle") or {}).items():
        lines.append(f"* oracle for `{name}`: Apple's Core AI runtime and the playbook's executor (on the same weights "
                     f"as .mlpackage) agree on the top-1 class for {o['top1_agreement']:.2f}% of {o['n']} test images, "
                     f"max relative error {o['max_rel_error']:.1e} ({'passed' if o['passed'] else 'FAILED'}).")
    lines.append(f"* latency: {info.get('latency_note')}.")
    return "\n".join(lines)
