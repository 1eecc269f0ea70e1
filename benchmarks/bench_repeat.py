"""Run stage 05 twice back to back with the same parameters and compare the medians of every (variant, setting).

    python benchmarks/bench_repeat.py --model resnet [--reports-dir reports] [--smoke] [-p max_seconds=3 ...]
                                      [--save runs.json]

Run from the repository root (with ``PYTHONPATH=.`` when the environment's installed playbook is another
checkout).  The model's earlier stage records must exist (``playbook run --model resnet --stages 01,02``).  Prints, per
variant and setting, the two medians and their relative difference, then how many pairs agree within 5% and the
stage time of each run.  Asserts nothing: the spread depends on what else the machine is doing (say so when you
quote it).  The second run's record is what stays in ``reports/<model>/benchmark.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook.command import parse_assignments  # noqa: E402
from playbook.stages.benchmark import BenchmarkConfig, run_benchmark  # noqa: E402


def medians(record) -> dict[tuple[str, str], dict]:
    return {(f"{m['stage']}/{m['variant']}", m["setting"]): m["latency"] for m in record["measurements"]
            if (m.get("provenance") or {}).get("source") == "measured here"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--reports-dir", default="")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("-p", "--param", dest="params", action="extend", nargs="+", default=[])
    parser.add_argument("--save", default="", help="write both runs' medians and samples counts here (JSON)")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    cfg = BenchmarkConfig.from_dict({"model": args.model, "smoke": args.smoke, "reports_dir": args.reports_dir,
                                     **parse_assignments(args.params, "-p")})
    runs, seconds = [], []
    for i in range(2):
        t0 = time.perf_counter()
        runs.append(medians(run_benchmark(cfg)))
        seconds.append(time.perf_counter() - t0)
        print(f"run {i + 1}: {len(runs[-1])} measurements in {seconds[-1]:.0f} s", flush=True)
    a, b = runs
    rows = []
    print(f"\n{'variant':42s} {'setting':24s} {'run 1 ms':>9s} {'run 2 ms':>9s} {'diff':>7s} {'CV 1':>5s} {'CV 2':>5s} "
          f"{'runs':>9s}")
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        diff = (y["median"] - x["median"]) / x["median"]
        rows.append({"variant": key[0], "setting": key[1], "median_1": x["median"], "median_2": y["median"],
                     "diff": diff, "cv_1": x["cv"], "cv_2": y["cv"], "runs_1": x["runs"], "runs_2": y["runs"],
                     "stopped_1": x["stopped"], "stopped_2": y["stopped"]})
        print(f"{key[0]:42s} {key[1]:24s} {x['median']:9.4f} {y['median']:9.4f} {diff:+7.1%} {x['cv']:5.2f} "
              f"{y['cv']:5.2f} {x['runs']:4d}/{y['runs']:<4d}")
    print()
    for setting in sorted({r["setting"] for r in rows}):
        found = [r for r in rows if r["setting"] == setting]
        within = sum(abs(r["diff"]) <= args.tolerance for r in found)
        worst = max(found, key=lambda r: abs(r["diff"]))
        print(f"{setting:24s}: {within}/{len(found)} within {args.tolerance:.0%}; median |diff| "
              f"{sorted(abs(r['diff']) for r in found)[len(found) // 2]:.1%}; worst {worst['variant']} {worst['diff']:+.1%}")
    within = sum(abs(r["diff"]) <= args.tolerance for r in rows)
    print(f"all settings: {within}/{len(rows)} pairs within {args.tolerance:.0%}; stage time {seconds[0]:.0f} s and "
          f"{seconds[1]:.0f} s")
    if args.save:
        Path(args.save).write_text(json.dumps({"rows": rows, "seconds": seconds, "config": cfg.to_dict()}, indent=1))


if __name__ == "__main__":
    main()
