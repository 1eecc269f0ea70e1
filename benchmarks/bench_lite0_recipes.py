"""Compression recipes on efficientnet-lite0 fine-tuned on Fashion-MNIST, with and without ``compress.graph``'s
preparation (issue 23): top-1 through the Core ML package and the playbook's prediction interface, the change against
FP32 with its paired 95 % interval and McNemar p, the package's size ratio, the share of conv/linear weights
compressed, wall and CPU seconds.

Needs stage 01's record for the model (it trains and caches the fine-tuned network):

    .venv/bin/python -m playbook run --model efficientnet-lite0 --stages 01 --reports-dir /tmp/lite0_reports
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lite0_recipes.py --reports-dir /tmp/lite0_reports \\
        --images 5000 --recipes torch-w8a8-static,torch-w8a8-static@,palettize-4bit-eq,palettize-4bit

A recipe name may carry its preparation after ``@``: ``palettize-4bit@plain_convs+fold_bn+equalize`` applies those
steps, ``torch-w8a8-static@`` none (the recipe as it was before issue 23); without ``@`` the recipe's own ``prepare``.
Option changes follow ``~``: ``torch-int4-gptq-channel~use_activation_order_heuristic=true~correct_bias=256``
(values read as JSON where they parse); ``~min_target=iOS18`` changes the recipe's deployment target instead.
Core ML-side recipes are applied to an FP16 program exported from the prepared model (what stage 02 must do: apply
``Recipe.prepare`` before the export).  Every figure is printed and written to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

logging.getLogger("coremltools").setLevel(logging.ERROR)
os.environ.setdefault("TQDM_DISABLE", "1")


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def non_weight_consts(package: Path, weight_threshold: int) -> list[str]:
    """The program's consts above ``weight_threshold`` that feed no conv/linear/matmul (e.g. ``ChannelCap`` caps)."""
    import coremltools.optimize.coreml as oc

    from playbook.compress.coreml_side import WEIGHT_CONSUMERS, load_mlmodel

    meta = oc.get_weights_metadata(load_mlmodel(package), weight_threshold=weight_threshold)
    return [n for n, m in meta.items() if not any(c.op_type in WEIGHT_CONSUMERS for c in m.child_ops)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reports-dir", default="/tmp/lite0_reports")
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--images", type=int, default=5000, help="test images (the first N of the test split)")
    p.add_argument("--recipes", default="torch-w8a8-static,palettize-4bit-eq,int4-block-eq,torch-int4-gptq")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--finetune-lr", type=float, default=0.002)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--kd-temperature", type=float, default=0.0,
                   help="fine-tune on the FP32 model's logits at this temperature (distill.logit_loss); 0: labels only")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the teacher term when --kd-temperature > 0")
    p.add_argument("--checks", type=int, default=0,
                   help="agreement checks with FP32 on validation images spread over each fine-tune (early stopping; "
                        "0: every step runs, nothing checked)")
    p.add_argument("--patience", type=int, default=3, help="checks without a higher agreement before a fine-tune ends")
    p.add_argument("--check-images", type=int, default=500, help="validation images of each check")
    p.add_argument("--weight-threshold", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/lite0_bench")
    p.add_argument("--out", default="/tmp/lite0_bench/results.json")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from playbook.compress import compress_converted, compress_package, compress_torch, get_recipe
    from playbook.compress.coreml_side import compressed_weight_count, weight_layers
    from playbook.compress.graph import prepare_model
    from playbook.compress.recipes import required_target
    from playbook.coreml import ExportConfig, directory_size, export_model, package_info, predict_split
    from playbook.data import DatasetConfig, load_dataset
    from playbook.metrics import compare_paired
    from playbook.records import read_stage_record
    from playbook.train import ModelConfig, build_model, load_checkpoint

    root = Path(args.reports_dir) / args.model
    record = read_stage_record(root, "baseline")
    # The stage's own test split may be capped (a bounded budget's limit_test); the bench reads up to --images.
    dataset = load_dataset(DatasetConfig.from_dict({**record["dataset_config"], "limit_test": args.images}))
    model = build_model(ModelConfig.from_dict(record["model_config"]), dataset)
    load_checkpoint(model, Path(record["training"]["checkpoint"]))
    model.eval()
    fp32_package = record.variant(record["reference_variant"]).package_path(root)
    kd_loss = None
    if args.kd_temperature > 0:  # the FP32 network is the teacher of every fine-tune (its logits cached in --work)
        from playbook.distill import file_sha256, logit_loss, teacher_logits

        checkpoint = Path(record["training"]["checkpoint"])
        table = teacher_logits(model, dataset, file_sha256(checkpoint), Path(args.work), progress=False)
        kd_loss = logit_loss(table, args.kd_temperature, args.kd_alpha)
        print(f"# fine-tunes learn from the FP32 model's logits: T = {args.kd_temperature}, alpha = {args.kd_alpha} "
              f"({table.seconds:.0f} s for {len(table.logits)} training images)", flush=True)
    test = dataset.test.head(min(args.images, len(dataset.test)))
    labels = test.labels
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"# {args.model} on {record['dataset_config'].get('name')} at {dataset.image_size} px, {len(test)} test "
          f"images, FP32 package {fp32_package.name}, torch threads {args.threads}, load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    fp32_size = directory_size(fp32_package)
    scores, prov = predict_split(fp32_package, dataset, test)
    ref_correct = scores.argmax(1) == labels
    print(f"# FP32: top-1 {100 * ref_correct.mean():.2f} %, {fp32_size / 1e6:.3f} MB, prediction through "
          f"{prov.to_dict() if hasattr(prov, 'to_dict') else prov}", flush=True)

    prepared_cache: dict[tuple[str, ...], Any] = {}
    example = dataset.to_tensor(dataset.calib.images[:8])

    def prepared(steps: tuple[str, ...]) -> Any:
        if steps not in prepared_cache:
            prepared_cache[steps] = prepare_model(model, steps, example)
        return prepared_cache[steps]

    rows = []
    header = (f"{'recipe':38s} {'prepare':28s} {'top-1':>7s} {'delta':>7s} {'95% CI':>16s} {'McNemar p':>9s} "
              f"{'x smaller':>9s} {'weights compressed':>20s} {'wall s':>7s} {'CPU s':>7s}")
    print(header, flush=True)
    for spec in [s for s in args.recipes.split(",") if s]:
        spec, *changes = spec.split("~")
        name, at, steps_text = spec.partition("@")
        recipe = get_recipe(name)
        if changes:  # option changes: name~key=value~key=value (values read as JSON where they parse)
            options = dict(recipe.options)
            for change in changes:
                key, _, value = change.partition("=")
                try:
                    options[key] = json.loads(value)
                except json.JSONDecodeError:
                    options[key] = value
            target_change = options.pop("min_target", None)  # ~min_target=iOS18 is the recipe's field, not an option
            recipe = dataclasses.replace(recipe, options=options,
                                         **({"min_target": str(target_change)} if target_change else {}))
        steps = tuple(s for s in steps_text.split("+") if s) if at else tuple(recipe.prepare)
        label = "~".join([name, *changes])
        stem = (name + ("-" + "-".join(steps) if steps else "-noprep")).replace("+", "p") + f"-{len(rows)}"
        t0, c0 = time.perf_counter(), _cpu()
        row: dict[str, Any] = {"recipe": name, "prepare": list(steps), "side": recipe.side, "options": recipe.options}
        try:
            target = required_target("iOS17", recipe.min_target)
            if recipe.side == "coreml":
                net, reports = prepared(steps)
                base = export_model(net, dataset, ExportConfig(precision="fp16", minimum_deployment_target=target),
                                    work, f"base-{stem}").path
                # Only conv/linear weights: coremltools compresses every const above the threshold, and the
                # per-channel ReLU6 caps of an equalized model (``ChannelCap``, consumed by ``minimum``) are consts
                # too; palettizing them moves every activation cap (on lite0 palettize-4bit-eq measured 41.72 % with
                # the caps palettized, 42.04 % without: small here, but not the recipe's meaning).
                exclude = non_weight_consts(base, args.weight_threshold)
                made = compress_package(recipe, base, work, stem, args.weight_threshold, exclude=exclude)
                row["excluded_consts"] = len(exclude)
                path = made.path
                layers = weight_layers(base, args.weight_threshold)
                total = sum(x.size for x in layers)
                done = sum(x.size for x in layers if x.eligible)
                skipped = [m for m in made.messages if "skip" in m.lower()]
                row.update(weights_compressed=done, weights_total=total, messages=list(made.messages)[:5],
                           prepare_report=[r.to_dict() for r in reports],
                           share_note="eligible by size; coremltools messages: " + ("; ".join(skipped[:2]) or "none"))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tc = compress_torch(recipe, model, dataset, args.finetune_steps, args.finetune_lr, args.batch_size,
                                        args.weight_threshold, 0, prepare=steps, loss_fn=kd_loss, checks=args.checks,
                                        patience=args.patience, check_images=args.check_images)
                    if tc.details.get("early_stop"):  # printed before the export, which may still fail
                        print(f"#   {label}: agreement with FP32 on validation (step, share): "
                              f"{tc.details['early_stop']['checks']}; fine-tune {tc.finetune_seconds:.0f} s for "
                              f"{tc.finetune_steps} steps, loss {tc.losses[0]:.3f} -> {tc.losses[-1]:.3f}", flush=True)
                    path = export_model(tc.model, dataset,
                                        ExportConfig(precision=recipe.precision or "fp16",
                                                     minimum_deployment_target=target), work, stem).path
                if recipe.steps:
                    path = compress_converted(recipe, path, work, stem + "-joint", args.weight_threshold).path
                d = tc.details
                row.update(weights_compressed=d["weights_compressed"], weights_total=d["weights_total"],
                           finetune_steps=tc.finetune_steps, prepare_report=d.get("prepare"),
                           float_layers=d.get("float_layers", [])[:8], skipped=d.get("skipped_grouped_convs", [])[:3],
                           bias_correction=d.get("bias_correction"), early_stop=d.get("early_stop"),
                           finetune_seconds=tc.finetune_seconds, first_last_loss=[tc.losses[0], tc.losses[-1]]
                           if tc.losses else None)

            compress_wall, compress_cpu = time.perf_counter() - t0, _cpu() - c0
            info = package_info(path)
            v_scores, _ = predict_split(path, dataset, test)
            correct = v_scores.argmax(1) == labels
            cmp = compare_paired(ref_correct, correct)
            row.update(top1=float(100 * correct.mean()), delta=cmp.delta_top1, ci=[cmp.ci_low, cmp.ci_high],
                       p_value=cmp.p_value, size_ratio=fp32_size / directory_size(path),
                       size_mb=directory_size(path) / 1e6, batch_norm_ops=info.op_histogram.get("batch_norm", 0),
                       compressed_ops=compressed_weight_count(info.op_histogram),
                       compress_wall_s=compress_wall, wall_s=time.perf_counter() - t0, cpu_s=_cpu() - c0)
            share = f"{100 * row['weights_compressed'] / max(row['weights_total'], 1):.1f} %"
            print(f"{label:38s} {'+'.join(steps) or '-':28s} {row['top1']:6.2f}% {row['delta']:+7.2f} "
                  f"[{cmp.ci_low:+6.2f},{cmp.ci_high:+6.2f}] {cmp.p_value:9.2g} {row['size_ratio']:9.2f} "
                  f"{share:>9s} ({row['compressed_ops']} ops) {row['wall_s']:7.1f} {row['cpu_s']:7.1f}"
                  f"  batch_norm ops {row['batch_norm_ops']}", flush=True)
        except Exception as exc:  # one recipe failing never stops the others; its reason is printed and kept
            row.update(error=f"{type(exc).__name__}: {str(exc)[:400]}", wall_s=time.perf_counter() - t0,
                       cpu_s=_cpu() - c0)
            print(f"{label:38s} {'+'.join(steps) or '-':28s} FAILED: {row['error']}", flush=True)
        rows.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "images": len(test), "fp32_top1":
                                              float(100 * ref_correct.mean()), "fp32_bytes": fp32_size,
                                              "threads": args.threads, "load_at_start": load, "rows": rows},
                                             indent=1, default=str))
    print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; evaluated through the Core ML "
          "packages with playbook.coreml.predict_split (the reference executor on Linux)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
