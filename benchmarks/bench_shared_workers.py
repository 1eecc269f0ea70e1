"""Beside one busy process (``python3 -c "while True: pass"``, started here): two one-thread trainings one after the
other, or side by side in two processes.  This is the measurement behind ``env.plan_workers`` starting one-thread
workers when only one of two cores is free (``env.shared_workers``), and behind not starting them where Linux's
autogroup scheduler shares the CPUs per session (``env.sharing_helps``): ``--other-session`` starts the busy process
in a session of its own, as another terminal's job (or a notebook kernel, for the playbook's own workers) would be.

    python benchmarks/bench_shared_workers.py [--steps 300] [--rounds 2] [--no-busy] [--other-session]

Each training is a fresh process (``sys.executable``) that trains a width-11 ResNet on random 28x28 batches of 128
for ``--steps`` optimiser steps with one torch thread.  Prints wall seconds and CPU seconds (the waited-for children)
of each way, ``--rounds`` times alternating, and the load average before and after.  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TRAIN = """
import os
os.environ["OMP_NUM_THREADS"] = "1"
import torch
from torch import nn
from playbook.models import create_model
torch.set_num_threads(1)
model = create_model("resnet", 10, 1, 28, width=11).train()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y, loss = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)), nn.CrossEntropyLoss()
for _ in range({steps}):
    opt.zero_grad()
    loss(model(x), y).backward()
    opt.step()
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def two_trainings(steps: int, side_by_side: bool) -> tuple[float, float]:
    """Wall and CPU seconds of two trainings, one after the other or side by side."""
    cmd = [sys.executable, "-c", TRAIN.format(steps=steps)]
    cpu, start = children_cpu(), time.perf_counter()
    if side_by_side:
        for proc in [subprocess.Popen(cmd) for _ in range(2)]:
            proc.wait()
    else:
        for _ in range(2):
            subprocess.run(cmd, check=True)
    return time.perf_counter() - start, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-busy", action="store_true",
                        help="measure on the machine as it is, without the busy process")
    parser.add_argument("--other-session", action="store_true", help="start the busy process in a session of its own")
    args = parser.parse_args()
    busy = None if args.no_busy else subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                                      start_new_session=args.other_session)
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}, busy process: {busy is not None}"
          f"{' (another session)' if args.other_session else ''}, autogroup: "
          f"{autogroup.read_text().strip() if autogroup.exists() else 'n/a'}")
    try:
        time.sleep(3)
        for _ in range(args.rounds):
            for side_by_side in (False, True):
                wall, cpu = two_trainings(args.steps, side_by_side)
                print(f"{'side by side       ' if side_by_side else 'one after the other'}: wall {wall:6.1f} s, "
                      f"CPU {cpu:6.1f} s", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
