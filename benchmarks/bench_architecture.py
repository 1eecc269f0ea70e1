"""Training cost of stage 04's families: CPU time per step, and what a run of E epochs costs.

    python benchmarks/bench_architecture.py [--epochs 6] [--steps 15] [--families resnet:width=11 ...]

For each family (default: the stage's default set plus the default baseline) it times ``--steps`` SGD steps of
batch 128 on 28x28 inputs with one torch thread, in *CPU* seconds (``time.process_time``: on a shared machine wall
time mostly measures the queue), and prints the training CPU time of ``--epochs`` epochs of Fashion-MNIST's
54,000 training images.  The stage trains two families at a time, one thread each, so on two free cores its training
step takes about half the summed CPU time (more if one family dominates).  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from playbook.models import create_model
from playbook.stages.architecture import DEFAULT_FAMILIES, parse_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per family (the default baseline's: 6)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per family")
    parser.add_argument("--families", nargs="*", default=["resnet:width=24", *DEFAULT_FAMILIES])
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps_per_epoch = math.ceil(54_000 / 128)
    print(f"torch {torch.__version__}, 1 thread, batch 128, 1x28x28, {steps_per_epoch} steps per epoch")
    print(f"{'family':24s} {'params':>8s} {'CPU ms/step':>12s} {f'CPU s / {args.epochs} epochs':>18s}")
    total = 0.0
    for spec in args.families:
        fam = parse_family(spec)
        model = create_model(fam.family, 10, 1, 28, **fam.knobs)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        start = time.process_time()
        for _ in range(args.steps):
            step()
        per_step = (time.process_time() - start) / args.steps
        cost = per_step * steps_per_epoch * args.epochs
        if spec != "resnet:width=24":
            total += cost
        print(f"{fam.name:24s} {sum(p.numel() for p in model.parameters()):8,d} {per_step * 1000:12.0f} {cost:18.0f}")
    print(f"families (baseline excluded): {total:.0f} CPU s for {args.epochs} epochs; two workers on two free cores: "
          f"about {total / 2 / 60:.1f} min of training")


if __name__ == "__main__":
    main()
