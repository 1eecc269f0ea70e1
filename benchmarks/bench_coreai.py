"""Core AI beside Core ML (issue 24), measured: the playbook's trained baseline exported as ``.aimodel`` (FP32, FP16)
and compressed by coreai-opt (int8, int4, 4-bit palette, 50 % pruning), top-1 on the test split by Apple's Core AI
runtime (coreai-core, on Linux), sizes beside their Core ML counterparts, and the oracle table: Apple's runtime on
each ``.aimodel`` vs the playbook's reference executor on the same coreai-opt weights as ``.mlpackage``.

    python benchmarks/bench_coreai.py [--reports-dir /tmp/coreai_reports] [--model resnet] [--limit 0]
        [--techniques int8,int4,palette4,prune50] [--batch-size 250] [--lite0-photos 0] [--out DIR]

Needs ``reports/<model>/baseline.json`` (stage 01), e.g. ``python -m playbook run --model resnet --stages 01
--reports-dir /tmp/coreai_reports``.  Core ML counterparts: the same model exported by the playbook (iOS18,
``export_model``) and compressed with the playbook's coremltools recipes (``int8-weights``, ``int4-block``,
``palettize-4bit-grouped``, ``prune-50``), scored by the reference executor.  ``--lite0-photos N``: also
efficientnet-lite0 (ImageNet weights) in FP16 and int8 on the first N of foolbox's 20 labelled photos.
Prints figures, wall and CPU seconds per step, and the load average; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook.compress import coreai_runtime as cr
from playbook.compress import coreai_side as cs  # noqa: E402
from playbook.compress.coreai_oracle import oracle_on_split  # noqa: E402
from playbook.metrics import classification_metrics, fidelity  # noqa: E402

COREML_COUNTERPART = {"int8": "int8-weights", "int4": "int4-block", "palette4": "palettize-4bit-grouped",
                      "prune50": "prune-50"}
STEPS: list[tuple[str, float, float]] = []


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    STEPS.append((name, time.perf_counter() - wall, time.process_time() - cpu))
    print(f"  [{name}: {STEPS[-1][1]:.1f} s wall, {STEPS[-1][2]:.1f} s CPU]", flush=True)


def load(reports_dir: Path, model_name: str):
    from playbook.data import DatasetConfig, load_dataset
    from playbook.records import read_stage_record
    from playbook.train import ModelConfig, build_model, load_checkpoint

    root = reports_dir / model_name
    record = read_stage_record(root, "baseline")
    dataset = load_dataset(DatasetConfig.from_dict(record["dataset_config"]))
    net = build_model(ModelConfig.from_dict(record["model_config"]), dataset)
    load_checkpoint(net, Path(record["training"]["checkpoint"]))
    return dataset, net.eval()


def progress(row: dict, oracle: dict | None = None) -> None:
    """One line as soon as a variant is measured (the full tables come at the end)."""
    extra = (f"; oracle: agreement {oracle['top1_agreement']:.2f} %, max rel {oracle['max_rel_error']:.1e}, "
             f"executor top-1 {oracle['executor_top1']:.2f} %" if oracle else "")
    print(f"measured {row['variant']}: {row['size'] / 1e3:.1f} kB, top-1 {row['top1']:.2f} % {row['ci']}, "
          f"{row['vs_torch']}{extra}", flush=True)


def ci95(correct: np.ndarray) -> str:
    from scipy import stats

    k, n = int(np.sum(correct)), len(correct)
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"[{100 * ci.low:.2f}, {100 * ci.high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports-dir", type=Path, default=Path("/tmp/coreai_reports"))
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--limit", type=int, default=0, help="first N test images (0: the whole test split)")
    parser.add_argument("--precisions", default="fp32,fp16", help="float .aimodel exports to measure ('' for none)")
    parser.add_argument("--techniques", default="int8,int4,palette4,prune50")
    parser.add_argument("--no-counterparts", action="store_true", help="skip the Core ML counterparts")
    parser.add_argument("--batch-size", type=int, default=250, help="images per Core AI runtime call")
    parser.add_argument("--lite0-photos", type=int, default=0, help="efficientnet-lite0 on N labelled photos (0: skip)")
    parser.add_argument("--lite0-only", action="store_true", help="only the efficientnet-lite0 part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the Core AI runtime is single-threaded)")
    parser.add_argument("--out", type=Path, default=None, help="where packages go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ok, why = cs.coreai_available()
    print(f"Core AI: {why}" if ok else f"Core AI unavailable: {why}")
    if not ok:
        return
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-coreai-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.lite0_only:
        lite0(args.lite0_photos or 20, out, args.batch_size)
        summary(start_wall, start_cpu, out)
        return

    with step("load baseline, torch logits"):
        dataset, net = load(args.reports_dir, args.model)
        split = dataset.test if not args.limit else dataset.test.head(args.limit)
        from playbook.train import predict_logits

        torch_logits = predict_logits(net, dataset, split)
    labels = split.labels
    example = dataset.to_tensor(split.images[:2])
    torch_top1 = classification_metrics(torch_logits, labels, dataset.class_names)
    print(f"\n{args.model} on {dataset.name}, {len(split)} test images; PyTorch FP32 top-1 {torch_top1.top1:.2f} %")

    rows: list[dict] = []
    oracle_rows: list[dict] = []
    precisions = [p for p in args.precisions.split(",") if p]
    for precision in precisions:
        with step(f"coreai export {precision}"):
            pkg = cs.export_aimodel(net, example, out, f"coreai-{precision}", precision)
        with step(f"coreai runtime {precision} ({len(split)} images)"):
            scores, _ = cr.predict_aimodel_split(Path(pkg.path), dataset, split, args.batch_size)
        fid = fidelity(torch_logits, scores)
        metrics = classification_metrics(scores, labels, dataset.class_names)
        rows.append({"variant": f"coreai-{precision}", "size": pkg.size_bytes, "top1": metrics.top1,
                     "ci": ci95(np.array(metrics.correct)), "vs_torch": f"agree {fid.top1_agreement:.2f} %, "
                     f"max rel {fid.max_rel_error:.1e}", "coreml": f"coreml-{precision}"})
        progress(rows[-1])
        if precision == precisions[0]:
            with step(f"coreai host latency {precision} (batch 1, 20 repeats)"):
                latency = cr.host_latency(pkg.path, example.numpy(), warmup=3, repeats=20)
            with torch.no_grad():
                one = example[:1]
                times = []
                for _ in range(23):
                    t = time.perf_counter()
                    net(one)
                    times.append((time.perf_counter() - t) * 1e3)
            print(f"host latency, Core AI runtime {precision.upper()} batch 1: median {latency.median_ms:.2f} ms, p90 "
                  f"{latency.p90_ms:.2f} ms ({latency.label}); torch eager on the same host: median "
                  f"{np.median(times[3:]):.2f} ms")

    failures = {}
    for technique in [t for t in args.techniques.split(",") if t]:
        try:
            with step(f"coreai-opt {technique}: compress + export both ways"):
                made = cs.compress_coreai(net, technique, example, out)
        except cs.CoreAICompressionError as exc:
            failures[technique] = exc.to_dict()
            continue
        with step(f"coreai runtime {technique} ({len(split)} images)"):
            scores, _ = cr.predict_aimodel_split(Path(made.aimodel.path), dataset, split, args.batch_size)
        with step(f"oracle {technique}: reference executor on the .mlpackage"):
            oracle = oracle_on_split(made, dataset, split, coreai_scores=scores)
        metrics = classification_metrics(scores, labels, dataset.class_names)
        fid = fidelity(torch_logits, scores)
        rows.append({"variant": made.recipe, "size": made.aimodel.size_bytes, "top1": metrics.top1,
                     "ci": ci95(np.array(metrics.correct)), "vs_torch": f"agree {fid.top1_agreement:.2f} %, "
                     f"max rel {fid.max_rel_error:.1e}", "coreml": COREML_COUNTERPART[technique],
                     "same_weights_mlpackage": made.mlpackage_size_bytes, "messages": made.messages})
        progress(rows[-1], oracle.to_dict())
        oracle_rows.append({"recipe": made.recipe, **oracle.to_dict()})

    # Core ML counterparts: the playbook's own export and coremltools recipes, scored by the reference executor.
    from playbook.compress import compress_package
    from playbook.coreml import ExportConfig, export_model, predict_split

    coreml: dict[str, tuple[int, float]] = {}
    with step("coreml counterparts: export, recipes, reference executor"):
        for precision in ([] if args.no_counterparts else cs.PRECISIONS):
            exp = export_model(net, dataset, ExportConfig(precision=precision, minimum_deployment_target="iOS18"), out,
                               f"coreml-{precision}")
            s, _ = predict_split(exp.path, dataset, split, runtime="reference")
            coreml[f"coreml-{precision}"] = (exp.package.size_bytes, classification_metrics(s, labels,
                                                                                             dataset.class_names).top1)
        fp16 = out / "coreml-fp16.mlpackage"
        for recipe in ([] if args.no_counterparts else COREML_COUNTERPART.values()):
            made_ml = compress_package(recipe, fp16, out, recipe)
            from playbook.coreml import directory_size

            s, _ = predict_split(made_ml.path, dataset, split, runtime="reference")
            coreml[recipe] = (directory_size(made_ml.path), classification_metrics(s, labels, dataset.class_names).top1)

    print(f"\nCore AI variants: top-1 by {cr.coreai_provenance().note}, "
          f"{len(split)} images; Core ML counterparts by the playbook's reference executor")
    print(f"{'variant':<18}{'.aimodel kB':>12}{'top-1 %':>9}  {'95% CI':<16}{'vs PyTorch FP32':<34}"
          f"{'same weights .mlpackage kB':>27}  {'Core ML counterpart':<24}{'kB':>8}{'top-1 %':>9}")
    for r in rows:
        same = f"{r['same_weights_mlpackage'] / 1e3:.1f}" if r.get("same_weights_mlpackage") else "-"
        c_size, c_top1 = coreml.get(r["coreml"], (float("nan"), float("nan")))
        print(f"{r['variant']:<18}{r['size'] / 1e3:>12.1f}{r['top1']:>9.2f}  {r['ci']:<16}{r['vs_torch']:<34}"
              f"{same:>27}  {r['coreml']:<24}{c_size / 1e3:>8.1f}{c_top1:>9.2f}")
    if coreml:
        print("Core ML counterparts (the playbook's export and coremltools recipes on its FP16 iOS18 package, "
              "reference executor): " + ", ".join(f"{k} {b / 1e3:.1f} kB top-1 {t:.2f} %"
                                                  for k, (b, t) in coreml.items()))
    for r in rows:
        for m in r.get("messages", ()):
            print(f"  {r['variant']}: {m}")
    for technique, failure in failures.items():
        print(f"  FAILED coreai-{technique}: {failure}")

    print("\nOracle: Apple's Core AI runtime on the .aimodel (reference) vs the playbook's reference executor on the "
          "same coreai-opt weights as .mlpackage (iOS18)")
    print(f"{'recipe':<18}{'n':>7}{'top-1 agreement %':>19}{'max rel err':>13}{'max abs err':>13}{'KL':>10}"
          f"{'top-1 Core AI':>15}{'top-1 executor':>16}  passed")
    for o in oracle_rows:
        print(f"{o['recipe']:<18}{o['n']:>7}{o['top1_agreement']:>19.2f}{o['max_rel_error']:>13.2e}"
              f"{o['max_abs_error']:>13.2e}{o['kl_divergence']:>10.1e}{o['coreai_top1']:>15.2f}"
              f"{o['executor_top1']:>16.2f}  {o['passed']}")

    if args.lite0_photos:
        lite0(args.lite0_photos, out, args.batch_size)
    summary(start_wall, start_cpu, out)


def summary(start_wall: float, start_cpu: float, out: Path) -> None:
    print("\nwall / CPU seconds per step")
    for name, wall, cpu in STEPS:
        print(f"  {name:<62}{wall:>8.1f} s wall {cpu:>8.1f} s CPU")
    print(f"total: {time.perf_counter() - start_wall:.1f} s wall, {time.process_time() - start_cpu:.1f} s CPU; "
          f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"packages in {out}")


def lite0(count: int, out: Path, batch_size: int) -> None:
    """efficientnet-lite0 (ImageNet) in FP16 and int8 by Apple's runtime on the first ``count`` labelled photos."""
    from playbook.architectures import agreement, labelled_photos
    from playbook.models import create_model
    from playbook.pretrained_check import LITE0, photo_dataset

    with step("lite0: photos, model, torch"):
        photos = labelled_photos(size=224)
        photos = dataclasses.replace(photos, images=photos.images[:count], labels=photos.labels[:count],
                                     files=photos.files[:count])
        data = photo_dataset(photos)
        net = create_model(LITE0, 1000, 3, 224).eval()
        x = data.to_tensor(photos.images)
        with torch.no_grad():
            torch_top1 = net(x).numpy().argmax(1)
    print(f"\nefficientnet-lite0 (ImageNet weights), {len(photos.labels)} labelled photos ({photos.source}); "
          f"PyTorch correct {agreement(torch_top1, photos.labels)['agree']}/{len(photos.labels)}")
    print(f"{'variant':<22}{'.aimodel MB':>12}{'correct':>9}{'agree w/ PyTorch':>18}  {'95% CI (agreement)':<20}"
          f"{'convert s':>10}{'runtime s/photo':>16}")
    for name, make in (("fp16", lambda: cs.export_aimodel(net, x[:2], out, "lite0-coreai-fp16", "fp16")),
                       ("int8", lambda: cs.compress_coreai(net, "int8", x[:2], out, "lite0-coreai-int8",
                                                           coreml=False).aimodel)):
        try:
            with step(f"lite0 coreai {name}: export"):
                t = time.perf_counter()
                pkg = make()
                convert = time.perf_counter() - t
            with step(f"lite0 coreai {name}: runtime on {len(photos.labels)} photos"):
                t = time.perf_counter()
                top1 = cr.predict_aimodel(pkg.path, x.numpy(), batch_size=min(batch_size, 4)).argmax(1)
                per = (time.perf_counter() - t) / len(photos.labels)
        except (cs.CoreAIError, cs.CoreAICompressionError) as exc:
            print(f"  lite0 {name} FAILED: {exc}")
            continue
        agree = agreement(top1, torch_top1)
        correct = agreement(top1, photos.labels)
        print(f"lite0-coreai-{name:<9}{pkg.size_bytes / 1e6:>12.2f}{correct['agree']:>6}/{correct['n']:<2}"
              f"{agree['percent']:>17.1f}%  [{agree['ci95'][0]:.1f}, {agree['ci95'][1]:.1f}]{'':<7}{convert:>10.1f}"
              f"{per:>16.2f}")


if __name__ == "__main__":
    main()
