"""Training throughput of the registry's small architectures (images/s, projected s/epoch).

    python benchmarks/bench_train.py [--dataset fashion-mnist] [--images 4096] [--threads 2]

Prints figures; asserts nothing. Used to size the default model and epochs for 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time

import torch

from playbook.data import DatasetConfig, load_dataset
from playbook.train import ModelConfig, TrainConfig, build_model, fit

ARCHS = [("resnet", {}), ("resnet", {"width": 32}), ("mobilenetv2", {}), ("squeezenet", {}), ("efficientnet", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--images", type=int, default=4096, help="training images per timed epoch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(DatasetConfig(name=args.dataset, limit_train=args.images))
    full = 54000 if args.dataset == "fashion-mnist" else len(data.train)
    print(f"{args.dataset}: {len(data.train)} images/epoch timed, torch {torch.__version__}, {args.threads} threads")
    print(f"{'model':28s} {'params':>9s} {'img/s':>8s} {'s/epoch (full)':>15s}")
    for name, knobs in ARCHS:
        model = build_model(ModelConfig(name, knobs), data)
        start = time.perf_counter()
        fit(model, data, TrainConfig(epochs=1, threads=args.threads), progress=False)
        seconds = time.perf_counter() - start
        rate = len(data.train) / seconds
        label = name + (f" {knobs}" if knobs else "")
        print(f"{label:28s} {sum(p.numel() for p in model.parameters()):9,d} {rate:8.0f} {full / rate:15.0f}")


if __name__ == "__main__":
    main()
