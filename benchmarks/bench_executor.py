"""Throughput of the reference executor (playbook.mlprogram) vs PyTorch eager, same model, same run.

For each architecture (default: ``resnet`` width 32 and ``mobilenetv2``, 1x28x28 inputs,
10 classes) the script builds the model (random weights, or ``--checkpoint NAME=PATH``),
converts it to an FP32 ML program (``--precision fp16`` adds the FP16 program), saves the
package to a temporary folder, loads it with :class:`playbook.mlprogram.ReferenceProgram` and
times the whole 10,000-image Fashion-MNIST test set (random data of that shape when the IDX
files are missing) through both, in chunks of ``--batch-size``:

* threads pinned with ``torch.set_num_threads`` (default: all cores) and stated;
* ``--warmup`` untimed passes, then ``--repeats`` timed passes per engine, interleaved
  (eager, executor, eager, ...) so drift hits both alike;
* images/s: median and p90 (the p90 of the pass times, i.e. a slow pass), and the ratio
  executor time / eager time (target <= 1.3);
* agreement: max |executor - eager| over the logits and the top-1 agreement.

Usage::

    python benchmarks/bench_executor.py                      # resnet + mobilenetv2, FP32
    python benchmarks/bench_executor.py --precision fp32 fp16 --threads 2
    python benchmarks/bench_executor.py --checkpoint resnet=reports/.../model.pt
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
logging.getLogger("coremltools").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playbook.mlprogram import ReferenceProgram  # noqa: E402
from playbook.models import create_model  # noqa: E402

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
DEFAULT_KNOBS = {"resnet": {"width": 32}, "mobilenetv2": {}}


def load_images(n: int) -> tuple[np.ndarray, str]:
    """The Fashion-MNIST test images, (N,1,28,28) float32, normalised; random data if absent."""
    if FASHION_TEST.exists():
        with gzip.open(FASHION_TEST, "rb") as fh:
            raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
        x = raw[:n].astype(np.float32) / 255.0
        return (x - 0.2860) / 0.3530, f"Fashion-MNIST test set ({len(x)} images)"
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 28, 28), dtype=np.float32), f"random N(0,1) data ({n} images)"


def build(name: str, checkpoint: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, image_size=28, **DEFAULT_KNOBS.get(name, {}))
    if checkpoint:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(payload.get("state_dict", payload))
    return model.eval()


def convert(model: torch.nn.Module, precision: str, out: Path) -> Path:
    import coremltools as ct

    example = torch.zeros(1, 1, 28, 28)
    traced = torch.jit.trace(model, example)
    mlmodel = ct.convert(
        traced, convert_to="mlprogram",
        inputs=[ct.TensorType(name="x", shape=example.shape, dtype=np.float32)],
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )
    mlmodel.save(str(out))
    return out


def run_eager(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def run_executor(prog: ReferenceProgram, x: np.ndarray, batch_size: int) -> np.ndarray:
    return prog.predict({"x": x}, batch_size=batch_size)["logits"].astype(np.float32)


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    x_np, data_desc = load_images(args.images)
    x_t = torch.from_numpy(x_np)
    n = len(x_np)
    print(f"torch {torch.__version__}, threads pinned: torch.set_num_threads({args.threads}) "
          f"(cores: {os.cpu_count()}); data: {data_desc}; batch size {args.batch_size}; "
          f"{args.warmup} warm-up + {args.repeats} timed passes per engine")
    header = (f"{'model':<12} {'prec':<5} {'eager img/s (med / p90)':>25} {'executor img/s (med / p90)':>28} "
              f"{'ratio exec/eager':>17} {'max|diff|':>10} {'top-1 agree':>11}")
    print(header)
    print("-" * len(header))
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build(name, checkpoints.get(name))
            for precision in args.precision:
                pkg = convert(model, precision, Path(tmp) / f"{name}_{precision}.mlpackage")
                prog = ReferenceProgram.load(pkg)
                for _ in range(args.warmup):
                    ref = run_eager(model, x_t, args.batch_size)
                    got = run_executor(prog, x_np, args.batch_size)
                t_eager, t_exec = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    ref = run_eager(model, x_t, args.batch_size)
                    t1 = time.perf_counter()
                    got = run_executor(prog, x_np, args.batch_size)
                    t2 = time.perf_counter()
                    t_eager.append(t1 - t0)
                    t_exec.append(t2 - t1)
                med_e, med_x = statistics.median(t_eager), statistics.median(t_exec)
                diff = float(np.abs(got - ref).max())
                agree = float((got.argmax(1) == ref.argmax(1)).mean())
                print(f"{name:<12} {precision:<5} {n / med_e:>12,.0f} / {n / p90(t_eager):>10,.0f} "
                      f"{n / med_x:>14,.0f} / {n / p90(t_exec):>11,.0f} {med_x / med_e:>17.3f} "
                      f"{diff:>10.2e} {agree:>11.4f}")
    print("ratio = median executor time / median eager time (<= 1.3 is the target); p90 img/s comes "
          "from the 90th-percentile (slow) pass time.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenetv2"])
    parser.add_argument("--precision", nargs="+", choices=["fp32", "fp16"], default=["fp32"])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="state_dict (or {'state_dict': ...}) checkpoint for a model")
    bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
