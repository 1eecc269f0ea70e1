"""Stage 02's Core AI step alone, as the chain runs it (``QuantizationRun.run_coreai``), on a model whose stage 01
already ran: what it made, on how many test images and why, in how many processes, and what it cost.

    python benchmarks/bench_coreai_step.py --reports-dir /tmp/lite0_reports --model efficientnet-lite0
                                           [--coreai-images 2000] [--coreai-seconds 240] [--max-test-images 2000]

Builds the stage with the given budgets (nothing else of stage 02 runs and no record is written; the packages go to
the stage's staging folder), then prints each Core AI variant (size, top-1 with its 95% interval, the paired change
against the FP32 Core ML baseline, McNemar p, images), what was refused or failed, the oracle agreement, and the
step's wall and CPU seconds with the load average before it.  Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os

from playbook.env import CpuClock
from playbook.stages.quantization import QuantizationConfig, QuantizationRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports-dir", required=True)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--coreai-images", type=int, default=QuantizationConfig.coreai_images)
    parser.add_argument("--coreai-seconds", type=float, default=QuantizationConfig.coreai_seconds)
    args = parser.parse_args()
    cfg = QuantizationConfig(model=args.model, reports_dir=args.reports_dir, recipes=["int8-weights"],
                             sensitivity_recipe="none", coreai_images=args.coreai_images,
                             coreai_seconds=args.coreai_seconds, interactive=False)
    run = QuantizationRun(cfg)
    load = os.getloadavg()
    start = CpuClock.now()
    made = run.run_coreai()
    cost = CpuClock.now().since(start)
    info = run.coreai or {}
    print(f"\n{args.model}: Core AI step {cost['wall_s']:.1f} s wall, {cost['cpu_s']:.1f} CPU-s "
          f"(load average before {load[0]:.2f}); {info.get('versions')}")
    print("images:", (info.get("images") or {}).get("why"))
    print("processes:", (info.get("processes") or {}).get("why"))
    fp32 = run.baseline_variants[0] if run.baseline_variants else None
    for v in made:
        vs = v.vs_reference
        change = f"{vs.delta_top1:+.2f} [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}] p={vs.p_value:.2g}" if vs else "-"
        print(f"  {v.name:16} {v.size_bytes / 1e3:10,.1f} kB  top-1 {v.top1:6.2f}% [{v.top1_ci[0]:.2f}, "
              f"{v.top1_ci[1]:.2f}]  vs {v.reference}: {change}  n={v.n_test}")
    for s in info.get("skipped") or []:
        print(f"  refused {s['recipe']}: {s['coremltools_message']}")
    for f in info.get("failed") or []:
        print(f"  {f['phase']} {f['recipe']}: {f['reason'][:200]}")
    for name, o in (info.get("oracle") or {}).items():
        print(f"  oracle {name}: agreement {o['top1_agreement']:.2f}% max rel err {o['max_rel_error']:.1e} n={o['n']}")
    if fp32 is not None:
        print(f"  Core ML {fp32.name}: {fp32.size_bytes / 1e3:,.1f} kB")


if __name__ == "__main__":
    main()
