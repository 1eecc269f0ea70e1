"""What distillation costs per training image: scratch vs distilled with cached teacher logits vs a live teacher.

    python benchmarks/bench_distill.py [--dataset fashion-mnist] [--images 4096] [--threads 1] [--student-width 8]

Trains the student for one epoch on ``--images`` training images four ways (plain cross-entropy; distillation with
the teacher's logits cached; distillation with the teacher run on every batch, as with augmentation; and with the
feature term, which always runs the teacher) and prints images/s by wall time and by CPU time (CPU time does not
grow when other processes share the cores).  The teacher is a randomly initialised width-24 ResNet: its speed, not its
accuracy, is what matters here.  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from playbook.data import DatasetConfig, load_dataset
from playbook.distill import DistillConfig, Distiller, teacher_logits
from playbook.train import ModelConfig, TrainConfig, build_model, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--images", type=int, default=4096, help="training images per timed epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--student-width", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(DatasetConfig(name=args.dataset, limit_train=args.images))
    torch.manual_seed(0)
    teacher = build_model(ModelConfig("resnet", {"width": 24}), data).eval()
    example = data.to_tensor(data.calib.images[:2])
    cfg = TrainConfig(epochs=1, threads=args.threads, validate=False)
    print(f"{args.dataset}: {len(data.train)} images, student resnet width {args.student_width}, teacher resnet width "
          f"24, torch {torch.__version__}, {args.threads} thread(s)")
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as cache:
        cached = teacher_logits(teacher, data, "bench", Path(cache), progress=False)
    print(f"{'teacher logits, once':34s} {len(data.train) / (time.perf_counter() - start_wall):8.0f} img/s wall "
          f"{len(data.train) / (time.process_time() - start_cpu):8.0f} img/s CPU")
    runs = [("scratch (cross-entropy)", None, None),
            ("distilled, cached teacher logits", DistillConfig(), cached.logits),
            ("distilled, live teacher", DistillConfig(), None),
            ("distilled + feature term (beta=1)", DistillConfig(beta=1.0), None)]
    fit(build_model(ModelConfig("resnet", {"width": args.student_width}), data), data, cfg, progress=False)  # warm-up
    for label, dcfg, logits in runs:
        torch.manual_seed(0)
        student = build_model(ModelConfig("resnet", {"width": args.student_width}), data)
        model, loss_fn = student, None
        if dcfg is not None:
            model = Distiller(student, teacher, dcfg, example, cached_logits=logits)
            loss_fn = model.loss
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fit(model, data, cfg, progress=False, loss_fn=loss_fn)
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        print(f"{label:34s} {len(data.train) / wall:8.0f} img/s wall {len(data.train) / cpu:8.0f} img/s CPU")


if __name__ == "__main__":
    main()
