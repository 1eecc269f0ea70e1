"""Cost of every compression recipe: compression time, package size, and seconds per step (PyTorch side: per
fine-tune step; mixed bit-widths: per single-layer probe of the bit allocation).

    python benchmarks/bench_compress.py [--model resnet] [--dataset digits] [--steps 20] [--threads 2]
                                        [--recipes int8-weights,torch-w8a8-qat]

Uses an untrained model of the registry (compression cost does not depend on the weights'
values).  Prints figures; asserts nothing.  Used to choose the default recipe set and the
fine-tune steps that keep ``02_quantization`` within a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook import compress  # noqa: E402
from playbook.coreml import ExportConfig, export_model, package_info  # noqa: E402
from playbook.data import DatasetConfig, load_dataset  # noqa: E402
from playbook.train import ModelConfig, build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--steps", type=int, default=20, help="fine-tune steps for the training-time recipes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default="", help="comma-separated names; default: the whole catalogue")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_dataset(DatasetConfig(name=args.dataset, limit_train=4096))
    model = build_model(ModelConfig(args.model), data).eval()
    names = [n for n in args.recipes.split(",") if n] or compress.available_recipes()
    print(f"{args.model} on {args.dataset}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.steps} fine-tune steps of {args.batch_size}")
    print(f"{'recipe':34s} {'seconds':>8s} {'s/step':>7s} {'size KB':>8s}  compressed ops")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bases = {t: export_model(model, data, ExportConfig(minimum_deployment_target=t), out, t).path
                 for t in ("iOS17", "iOS18")}
        for name in names:
            recipe = compress.get_recipe(name)
            target = compress.required_target("iOS17", recipe.min_target)
            start = time.perf_counter()
            per_step = ""
            if recipe.side == "coreml" and recipe.allocation:
                # what choosing the bit-widths costs before any check: one probe per layer and narrower choice
                layers = [layer for layer in compress.weight_layers(bases[target]) if layer.eligible]
                for layer in layers:
                    for bits in recipe.bit_choices[:-1]:
                        compress.compress_package(recipe, bases[target], out, "probe", only=[layer.name],
                                                  overrides={layer.name: {"nbits": bits}})
                per_step = f"{(time.perf_counter() - start) / max(len(layers) * (len(recipe.bit_choices) - 1), 1):7.3f}"
                path = compress.compress_package(recipe, bases[target], out, name).path
            elif recipe.side == "coreml":
                made = compress.compress_package(recipe, bases[target], out, name)
                path = made.path
            else:
                result = compress.compress_torch(recipe, model, data, args.steps, batch_size=args.batch_size)
                if result.finetune_steps:
                    per_step = f"{result.finetune_seconds / result.finetune_steps:7.3f}"
                path = export_model(result.model, data, ExportConfig(minimum_deployment_target=target), out, name).path
                if recipe.steps:
                    path = compress.compress_converted(recipe, path, out, name + "-joint").path
            seconds = time.perf_counter() - start
            info = package_info(path)
            ops = {k: v for k, v in info.op_histogram.items() if k.startswith("constexpr_") or "quantize" in k}
            print(f"{name:34s} {seconds:8.2f} {per_step:>7s} {info.size_bytes / 1e3:8.1f}  {ops}")


if __name__ == "__main__":
    main()
