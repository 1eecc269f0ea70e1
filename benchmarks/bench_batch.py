"""Wall time of one smoke batch run two ways: ``--jobs 1`` (one model at a time) vs ``--scheduler local:2``.

    python benchmarks/bench_batch.py [--models resnet mobilenetv2 squeezenet efficientnet] [--stages 01,06]
                                     [--out reports/bench-batch] [--threads 1] [--dask-first]

Both configurations run the same batch (digits, smoke) as a user would (``python -m playbook batch ...``), each
in a fresh reports folder and a fresh checkpoint cache, so both train every model.  Prints each wall time, the
ratio, the CPU seconds of every process the batch waited for, each model's own time (``run.json``) and the
machine's load average before and after, since on a shared machine the figures move with everyone else's work.
Asserts nothing.  The kill-a-worker check is a test:
``tests/test_batch.py::test_a_worker_killed_mid_model_is_retried_on_the_other_worker``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_batch(label: str, flags: list[str], batch: Path, out: Path, stages: str, threads: int) -> float:
    """Run the batch with ``flags`` in ``out/label``; print and return its wall time in seconds."""
    reports, cache = out / label / "reports", out / label / "cache"
    shutil.rmtree(out / label, ignore_errors=True)
    env = dict(os.environ, TQDM_DISABLE="1", PLAYBOOK_CACHE_DIR=str(cache), OMP_NUM_THREADS=str(threads))
    env.pop("PLAYBOOK_REPORTS_DIR", None)
    argv = [sys.executable, "-m", "playbook", "batch", str(batch), *flags, "--reports-dir", str(reports)]
    if stages:
        argv += ["--stages", stages]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (out / label / "batch.log").write_text(proc.stdout + proc.stderr)
    print(f"{label:>18s}: {seconds:7.1f} s wall, {cpu:7.1f} s CPU (all processes it waited for), exit "
          f"{proc.returncode}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}  ({' '.join(flags)})")
    for run in sorted(reports.glob("*/run.json")):
        status = json.loads(run.read_text())
        where = status.get("worker") or {}
        print(f"{'':20s}{run.parent.name:<14s} {status.get('status'):<8s} {status.get('elapsed_s', 0):6.1f} s"
              + (f"  on {where.get('host')} pid {where.get('pid')}" if where else ""))
    if proc.returncode != 0:
        print(f"{'':20s}(log: {out / label / 'batch.log'})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenetv2", "squeezenet", "efficientnet"])
    parser.add_argument("--stages", default="", help="e.g. 01,06 (default: every stage notebook)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench-batch")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default 1)")
    parser.add_argument("--dask-first", action="store_true", help="run --scheduler local:2 before --jobs 1")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    batch = args.out / "batch.yaml"
    batch.write_text("defaults: {dataset: digits, smoke: true}\nmodels: [" + ", ".join(args.models) + "]\n")
    print(f"{len(args.models)}-model smoke batch ({', '.join(args.models)}), stages {args.stages or 'all'}, "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={args.threads}")
    runs = {"jobs-1": ["--jobs", "1"], "dask-local-2": ["--scheduler", "local:2"]}
    order = sorted(runs, reverse=not args.dask_first)  # jobs-1 first unless --dask-first
    seconds = {label: run_batch(label, runs[label], batch, args.out, args.stages, args.threads) for label in order}
    jobs1, local2 = seconds["jobs-1"], seconds["dask-local-2"]
    print(f"ratio --jobs 1 / --scheduler local:2 = {jobs1 / local2:.2f}  (one run each)")


if __name__ == "__main__":
    main()
