"""Channels-last (NHWC) against contiguous (NCHW) strides for the training steps of the playbook's networks.

This is the measurement behind ``env.image_layout("auto")``: ``train.fit`` (``TrainConfig.memory_format``) trains
channels-last when torch runs on one thread.  The arithmetic is the same either way; only the
kernels PyTorch picks, and so the speed and the rounding order, differ.

    python benchmarks/bench_memory_format.py [--threads 1 2] [--steps 15]

For each architecture of the playbook's stages (the default ResNet teacher, a width-10 ResNet
   student, the families of stage 04 at their matched widths), random 28x28 batches of 128, the SGD step ``fit``
   takes (momentum 0.9, Nesterov, weight decay).  Per layout and thread count: 3 warm-up steps, then ``--steps``
   timed steps; prints the median and p90 milliseconds per step and the CPU seconds of the timed steps.

Threads are pinned with ``torch.set_num_threads`` and stated.  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
logging.getLogger("coremltools").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playbook.models import create_model  # noqa: E402

ARCHITECTURES = [("resnet", {}), ("resnet", {"width": 10}), ("resnet", {"width": 11}), ("mobilenetv2", {"width": 11}),
                 ("squeezenet", {"width": 16}), ("efficientnet", {"width": 10})]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def training_steps(name: str, knobs: dict, layout: torch.memory_format, steps: int) -> tuple[list[float], float]:
    """Seconds of each timed SGD step, and the CPU seconds of all of them."""
    torch.manual_seed(0)
    model = create_model(name, 10, 1, 28, **knobs).to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=layout)
    y, loss = torch.randint(0, 10, (128,)), nn.CrossEntropyLoss()
    times: list[float] = []
    cpu = 0.0
    for i in range(3 + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu_start
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), load average {os.getloadavg()}")

    print("\ntraining: ms per SGD step, batch 128 of 1x28x28 (median / p90), CPU seconds of the timed steps")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, knobs in ARCHITECTURES:
            row = {}
            for label, layout in LAYOUTS.items():
                times, cpu = training_steps(name, knobs, layout, args.steps)
                row[label] = statistics.median(times)
                print(f"  {threads} thread(s) {name}{knobs or ''} {label:>13}: {1000 * row[label]:6.1f} / "
                      f"{1000 * p90(times):6.1f} ms, {cpu:5.2f} CPU-s", flush=True)
            print(f"  {threads} thread(s) {name}{knobs or ''}: channels_last / contiguous = "
                  f"{row['channels_last'] / row['contiguous']:.2f}")

    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
