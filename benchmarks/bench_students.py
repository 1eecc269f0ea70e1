"""Stage 03's seed comparison two ways: students trained one after another in this process (the free cores as torch
threads), or side by side in worker processes of one thread each (``student_training.train_students_in_workers``).

    python benchmarks/bench_students.py [--dataset fashion-mnist] [--images 20000] [--seeds 2] [--epochs 1]
                                        [--student-width 10]

For each of ``--seeds`` seeds a scratch and a distilled student (cached teacher logits) are trained on ``--images``
training images, into a fresh checkpoint cache each way, so both do the full work.  Prints wall seconds, CPU seconds
(this process and its waited-for children: the workers) and the load average before each way; checks that both ways
produced the same cache keys.  The teacher is a randomly initialised width-16 ResNet (its speed, not its accuracy,
matters).  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from playbook.data import DatasetConfig, load_dataset
from playbook.distill import DistillConfig, teacher_logits
from playbook.student_training import StudentJob, train_students_in_workers
from playbook.env import CpuClock, torch_threads
from playbook.train import ModelConfig, TrainConfig, build_model


def jobs(data, teacher, logits, seeds: int, epochs: int, width: int, cache: Path) -> list[StudentJob]:
    out = []
    for seed in range(seeds):
        for distill in (None, DistillConfig(temperature=4.0, alpha=0.5)):
            torch.manual_seed(seed)
            student = build_model(ModelConfig("resnet", {"width": width}), data)
            out.append(StudentJob(student, data, TrainConfig(epochs=epochs, validate=False, seed=seed), distill,
                                  teacher if distill else None, "b" * 64, logits if distill else None,
                                  cache_dir=cache, model_cfg={"width": width}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--student-width", type=int, default=10)
    args = parser.parse_args()
    data = load_dataset(DatasetConfig(name=args.dataset, limit_train=args.images))
    torch.manual_seed(0)
    teacher = build_model(ModelConfig("resnet", {"width": 16}), data).eval()
    cores = len(os.sched_getaffinity(0))
    print(f"{args.dataset}: {len(data.train)} images, {args.seeds} seed(s) x scratch + distilled, student resnet width "
          f"{args.student_width}, {args.epochs} epoch(s), {cores} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        logits = teacher_logits(teacher, data, "b" * 64, Path(tmp), progress=False).logits
        keys = {}
        for way in ("in this process", "worker processes"):
            cache = Path(tmp) / way.replace(" ", "-")
            todo = jobs(data, teacher, logits, args.seeds, args.epochs, args.student_width, cache)
            load = os.getloadavg()
            start = CpuClock.now()
            if way == "worker processes":
                train_students_in_workers(todo, workers=cores, threads_per_worker=1)
            with torch_threads(cores):
                keys[way] = sorted(job.run(cores).key for job in todo)
            cost = CpuClock.now().since(start)
            print(f"{way:>17}: {cost['wall_s']:7.1f} s wall, {cost['cpu_s']:7.1f} CPU-s "
                  f"({cost['cpu_s'] / cost['wall_s']:.2f} per wall second), load average before {load[0]:.2f}")
        print("same cache keys both ways:", keys["in this process"] == keys["worker processes"])


if __name__ == "__main__":
    main()
