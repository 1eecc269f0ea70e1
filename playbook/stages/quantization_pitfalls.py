"""Stage 02's pitfalls: what this run actually met, each with its measured numbers (``QuantizationRun``'s
``collect_pitfalls`` calls ``collect``; the channel-range and coverage pitfalls stay beside the data they keep)."""
from __future__ import annotations

import platform
from typing import Any

from playbook.targets import DEPLOYMENT_TARGETS, OS_RELEASES


def collect(run: Any) -> None:
    """Add every pitfall ``run`` (a ``stages.quantization.QuantizationRun``, not imported here, not even for type
    checking: the stage imports this module, and ``test_layering`` forbids the cycle) met to ``run.pitfalls``
    (``add_pitfall``)."""
    advice = {True: "without data this is too aggressive for this model: try the training-time recipes (DKM "
                    "palettes, gradual pruning), mixed bit-widths or layer exceptions, and compare their measured "
                    "change",
              False: "more fine-tuning steps, a lower target, or layer exceptions"}
    for data_free in (True, False):  # one pitfall per kind, listing every variant it hit
        hit = run._far_outside(data_free)
        if not hit:
            continue
        what = "collapses without data" if data_free else "loses far more than the budget"
        if len(hit) > 1:
            what = ("collapse without data" if data_free else "lose far more than the budget")
        figures = "; ".join(f"{v.name}: top-1 {v.top1:.2f}% ({v.vs_reference.delta_top1:+.2f} points vs FP32, "
                            f"95% CI [{v.vs_reference.ci_low:+.2f}, {v.vs_reference.ci_high:+.2f}]) at "
                            f"{v.size_mb:.3f} MB" for v in hit)
        run.add_pitfall(f"over-compression: {', '.join(v.name for v in hit)} {what}",
                         f"{figures}; {advice[data_free]}")
    run._channel_pitfall()
    run._coverage_pitfall()
    layers = run.layers_of(run.source.program(run.cfg.precision, run.source.target))
    small = [x for x in layers if not x.eligible]
    if small:
        run.add_pitfall(f"weight_threshold={run.cfg.weight_threshold}: {len(small)} weight tensor(s) stay "
                         "uncompressed on the Core ML side",
                         f"{', '.join(f'{x.label} {list(x.shape)}' for x in small)}; coremltools' default (2048) "
                         f"would leave {sum(x.size <= 2048 for x in layers)} of {len(layers)} weights of this "
                         "small model uncompressed")
    seen: set[tuple[str, ...]] = set()
    for v in run.coreml_variants:
        skipped = [m for m in v.get("details", {}).get("messages", []) if "Invalid block_sizes" in m
                   or "Unable to" in m or "skipped" in m.lower() or "does not divide" in m]
        if skipped and tuple(skipped) not in seen:  # a -keep<k> variant repeats its recipe's messages
            seen.add(tuple(skipped))
            run.add_pitfall(f"{v.name}: some weights were skipped or got an adapted block size",
                             "; ".join(skipped[:3]) + f" ({v.get('compressed_weights')} weights compressed)")
    unfolded = [(v.name, v.op_histogram.get("batch_norm", 0)) for v in run.variants
                if v.op_histogram.get("batch_norm", 0)]
    if unfolded:
        run.add_pitfall("batch_norm op(s) left in " + (f"the program of {unfolded[0][0]}" if len(unfolded) == 1
                                                         else f"{len(unfolded)} programs"),
                         f"{', '.join(f'{name}: {n}' for name, n in unfolded)}; the converted program applies "
                         "BatchNorm as separate ops after the compressed convolutions instead of folding it into "
                         "their weights (the FP32 and FP16 exports have "
                         f"{run.baseline_variants[0].op_histogram.get('batch_norm', 0)}): one more op per layer at "
                         "run time")
    for name, info in run.mixed.items():
        if not info["met_budget"]:
            run.add_pitfall(f"{name}: no allocation met {info['budget_points']:.2f} points on validation",
                             "not even the widest palette on every layer met it; the variant written is that "
                             "widest allocation (raise max_top1_drop or keep some layers in float)")
    for v in run.variants:
        if v.get("recipe", {}).get("algorithm") == "dkm" and v.get("finetune_steps"):
            steps = v.get("finetune_steps")
            run.add_pitfall(f"{v.name}: DKM fine-tuning is slow on a CPU",
                             f"{v.get('finetune_seconds', 0.0):.0f} s for {steps} steps "
                             f"({v.get('finetune_seconds', 0.0) / steps:.2f} s per step of {run.cfg.batch_size} "
                             "images on this machine); train.fit runs it on a GPU where one is available "
                             "(device='auto'), or use fewer finetune_steps")
    for target in sorted({r["to"] for r in run.retargeted}, key=DEPLOYMENT_TARGETS.index):
        names = sorted({r["recipe"] for r in run.retargeted if r["to"] == target})
        ios, macos = OS_RELEASES[target]
        run.add_pitfall(f"{len(names)} recipe(s) needed a newer deployment target",
                         f"{', '.join(names)} were re-exported at {target}: these packages load only on "
                         f"{ios} / {macos} or later (an app that supports older systems can use them behind "
                         f"`if #available({ios}, {macos}, *)`)")
    for s in run.skipped:
        run.add_pitfall(f"{s['recipe']} refused by coremltools", f"{s['coremltools_message']} -- {s['hint']}")
    for f in run.failed:
        run.add_pitfall(f"{f['recipe']} failed ({f['phase']}) and was left out",
                         f"{f['error']}: {f['reason']} -- the other recipes were measured; the traceback is in "
                         "the stage's output (for a CLI run, reports/<model>/run.log)")
    if platform.system() != "Darwin":
        run.add_pitfall("W8A8 on the Core ML model needs macOS",
                         "ct.optimize.coreml.linear_quantize_activations calibrates by running Core ML "
                         "predictions, which only work on macOS; the W8A8 recipes here quantize on the PyTorch "
                         "side (LinearQuantizer) and convert")
