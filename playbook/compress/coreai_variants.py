"""Core AI variants beside the Core ML ones: the trained model exported as ``.aimodel`` (FP16, optionally FP32) and
compressed by coreai-opt (``coreai_side.TECHNIQUES``), each measured through Apple's Core AI runtime on the test split
and kept as a ``VariantRecord`` with ``target="coreai"``.

``make_coreai_variants`` is what a stage calls.  Every step is isolated: a compression coreai-opt (or the Core AI
export) refuses is returned in ``CoreAIOutcome.skipped`` (``CoreAICompressionError.to_dict``), any other failure in
``failed`` with its phase; nothing raises past it.  Without the packages it returns at once with ``available=False``
and the reason.  Latency is the Core AI runtime on this host (on Linux a single-threaded interpreter): recorded with
runtime ``coreai-host`` and labelled so, it never ranks variants (``report.recommend.RANKABLE_LATENCY``).  Where a
compression was also converted to Core ML from the same prepared weights, the oracle (``coreai_oracle``) compares
Apple's runtime with the playbook's executor on them.  This module knows nothing of stages, notebooks or reports.
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from playbook.compress.coreai_side import (HOST_LATENCY_LABEL, MIN_OS, TECHNIQUES, AIModelPackage,
                                           CoreAICompressionError, coreai_available, compress_coreai, export_aimodel)
from playbook.config import ConfigError
from playbook.coreml import INPUT_NAME, LOGITS_NAME, zipped_size
from playbook.env import environment
from playbook.records import VariantRecord, relative, sha256_path

SIDE = "coreai"


@dataclasses.dataclass(frozen=True)
class CoreAISettings:
    """Which Core AI variants to make and how to measure them.

    techniques: coreai-opt compressions (``TECHNIQUES``), each from the float model, FP32 arithmetic (so the oracle
        compares runtimes on exactly the same numbers).
    fp32: also export the float model in FP32 (the FP16 export is always made).
    oracle: also convert each compression to Core ML from the same prepared weights and compare runtimes.
    coreml_target: the counterpart package's deployment target (compressed weights need iOS18's ops).
    test_images: measure on at most the first this many test images (0: the whole split).  Apple's Linux runtime is
        a single-threaded interpreter (about 18 CPU-seconds per 1,000 images for the default resnet, 133 for
        efficientnet-lite0), so a bounded subset keeps the main job's time; the paired interval widens accordingly
        and ``n_test`` says how many.
    seconds_budget: the runtime's measurement budget in seconds (0: no limit).  The runtime is timed on the first
        ``probe_images`` test images, and fewer than ``test_images`` are used when every variant on all of them would
        not fit (``choose_coreai_images``); every Core AI variant uses the same images.
    processes: worker processes sharing the runtime's predictions (``coreai_runtime.plan_coreai_processes``):
        0 = from the free cores, 1 = in this process.
    """

    techniques: tuple[str, ...] = tuple(TECHNIQUES)
    fp32: bool = True
    oracle: bool = True
    coreml_target: str = "iOS18"
    latency_warmup: int = 3
    latency_repeats: int = 20
    bootstrap_resamples: int = 1000
    batch_size: int = 256
    test_images: int = 0
    seconds_budget: float = 0.0
    processes: int = 0
    probe_images: int = 64

    def __post_init__(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown:
            raise ConfigError(f"Core AI techniques {unknown} are not among {sorted(TECHNIQUES)}")
        if not self.seconds_budget >= 0 or self.test_images < 0 or self.processes < 0 or self.probe_images < 1:
            raise ConfigError(f"Core AI settings need seconds_budget >= 0, test_images >= 0, processes >= 0 and "
                              f"probe_images >= 1; got {self.seconds_budget!r}, {self.test_images!r}, "
                              f"{self.processes!r}, {self.probe_images!r}")

    def names(self) -> list[str]:
        """The variant names these settings make, in order."""
        return (["coreai-fp16"] + (["coreai-fp32"] if self.fp32 else [])
                + [f"coreai-{t}" for t in self.techniques])


@dataclasses.dataclass
class CoreAIOutcome:
    """What ``make_coreai_variants`` made: records with their test scores, what was skipped or failed, the oracle."""

    available: bool
    why: str
    variants: list[tuple[VariantRecord, np.ndarray]] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    oracle: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    images: dict[str, Any] = dataclasses.field(default_factory=dict)  # how many test images, and why
    processes: dict[str, Any] = dataclasses.field(default_factory=dict)  # how many processes predicted, and why

    def details(self, settings: CoreAISettings) -> dict[str, Any]:
        """The JSON-ready summary a stage record keeps (``details["coreai"]``)."""
        return {"available": self.available, "why" if not self.available else "versions": self.why,
                "recipes": settings.names() if self.available else [], "techniques": list(settings.techniques),
                "variants": [v.name for v, _ in self.variants], "skipped": self.skipped, "failed": self.failed,
                "oracle": self.oracle, "min_os": MIN_OS, "latency_note": HOST_LATENCY_LABEL,
                "seconds": self.seconds, "images": self.images, "processes": self.processes}


IMAGE_STEP = 100  # a budget-bound image count is a multiple of this ...
MIN_IMAGES = 100  # ... and at least this many (or the whole split or ``asked``, when smaller)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2g} ms"


def choose_coreai_images(asked: int, split_size: int, variants: int, seconds_per_image: float,
                         budget: float) -> tuple[int, str]:
    """How many test images every Core AI variant is measured on, and why in one English sentence.

    ``asked``: the upper bound (``coreai_images``; 0 = the whole split of ``split_size``); ``variants``: how many
    variants will be measured; ``seconds_per_image``: the runtime's measured wall seconds per image; ``budget``:
    seconds for all of them (0 = no limit).  All the images asked when ``variants x n x seconds_per_image`` fits the
    budget; otherwise the largest count that fits, rounded down to a multiple of ``IMAGE_STEP``, and never below
    ``MIN_IMAGES`` (or the images asked, when fewer)."""
    if split_size < 0 or asked < 0 or variants < 0 or not seconds_per_image >= 0 or not budget >= 0:
        raise ConfigError(f"choose_coreai_images needs non-negative numbers, got asked={asked!r}, "
                          f"split_size={split_size!r}, variants={variants!r}, "
                          f"seconds_per_image={seconds_per_image!r}, budget={budget!r}")
    cap = split_size if asked == 0 else min(asked, split_size)
    variants = max(1, variants)
    whole = f"{cap:,} images" + (" (the whole split)" if cap == split_size else "")
    if budget == 0:
        return cap, f"{whole}: no time budget (coreai_seconds=0)."
    estimate = variants * cap * seconds_per_image
    sum_ = f"{variants} variant{'s' if variants != 1 else ''} x {cap:,} x {_ms(seconds_per_image)}"
    if estimate <= budget:
        return cap, f"{whole}: {sum_} = {estimate:,.0f} s fits the {budget:,.0f} s budget."
    fit = int(math.floor(budget / (variants * seconds_per_image)))
    floor = min(MIN_IMAGES, cap)
    n = max(floor, fit // IMAGE_STEP * IMAGE_STEP)
    at_least = f" (at least {floor:,})" if n == floor and fit < floor else ""
    return n, (f"{n:,} of {cap:,} images{at_least}: {sum_} would take {estimate:,.0f} s; the budget is "
               f"{budget:,.0f} s.")


def measure_aimodel(name: str, stage: str, package: AIModelPackage, dataset: Any, reference: Any, description: str,
                    root: Path, settings: CoreAISettings, extra: dict[str, Any] | None = None,
                    scores: np.ndarray | None = None, predictor: Any = None) -> tuple[VariantRecord, np.ndarray]:
    """Accuracy (with its 95% interval and the paired change against ``reference``), fidelity, size and the
    host-interpreter latency of a saved ``.aimodel``, all through Apple's Core AI runtime; ``target="coreai"``.
    ``predictor``: a ``coreai_runtime.CoreAIPredictor`` whose worker processes share the test images."""
    from playbook.compress.coreai_runtime import coreai_provenance, host_latency, predict_aimodel_split
    from playbook.measure import accuracy_fields

    start = time.perf_counter()
    path = Path(package.path)
    if scores is None:
        scores, _ = predict_aimodel_split(path, dataset, dataset.test, settings.batch_size, predictor)
    where = coreai_provenance().to_dict()
    example = dataset.to_tensor(dataset.test.images[:1]).numpy()
    latency = host_latency(path, example, settings.latency_warmup, settings.latency_repeats)
    host = {**where, "runtime": "coreai-host"}
    record = VariantRecord(
        name=name, stage=stage, description=description, package=relative(path, root),
        package_sha256=sha256_path(path), size_bytes=package.size_bytes, zip_bytes=zipped_size(path),
        **accuracy_fields(scores, dataset, reference, settings.bootstrap_resamples),
        latency_ms=latency.median_ms, latency_p90_ms=latency.p90_ms, fps=1000.0 / max(latency.median_ms, 1e-9),
        latency={**latency.to_dict(), "threads": 1},
        io={"inputs": [{"name": INPUT_NAME, "type": "ndArray", "dtype": "FLOAT16" if package.precision == "fp16"
                        else "FLOAT32", "shape": [1, *example.shape[1:]], "batch": "dynamic (1-4096)"}],
            "outputs": [{"name": LOGITS_NAME, "type": "ndArray", "shape": [1, int(scores.shape[1])]}],
            "min_os": package.min_os},
        provenance={
            "accuracy": {**where, "measured": True, "what": "Apple's Core AI runtime (coreai-core) on the test split"},
            "latency": {**host, "measured": True, "rankable": False, "note": HOST_LATENCY_LABEL,
                        "what": f"batch-1 call, {HOST_LATENCY_LABEL}"},
            "size": {"measured": True, "what": "bytes of the .aimodel folder's files; DEFLATE zip for download size"},
            "memory": {"measured": False, "what": "not measured for Core AI models", "runtime": "coreai"},
            "energy": {"measured": False, "what": "not measured for Core AI models"},
            "environment": environment(runtime="coreai"),
        },
        extra={"side": SIDE, "format": "aimodel", "min_os": package.min_os, "precision": package.precision,
               "deployment_target": f"iOS{MIN_OS.split('.')[0]}", **(extra or {})},
        target="coreai",
    )
    record.measure_seconds = time.perf_counter() - start
    return record, scores


def make_coreai_variants(model: Any, dataset: Any, reference: Any, out_dir: Path, root: Path, stage: str,
                         settings: CoreAISettings, metadata: dict[str, Any] | None = None,
                         fp32_bytes: int | None = None,
                         log: Callable[[str], None] = print) -> CoreAIOutcome:
    """Export, compress and measure the Core AI variants ``settings`` names; never raises for one variant.

    ``reference``: the FP32 Core ML baseline (``measure.Reference``) every change is measured against;
    ``fp32_bytes``: its package size, for the size ratio; ``root``: the model's reports folder (relative paths).

    The runtime's predictions are shared by worker processes when cores are free (``settings.processes``; one pool
    for the whole step).  Before the first variant is measured, the runtime is timed on the first
    ``settings.probe_images`` test images and the image count chosen (``choose_coreai_images``: at most
    ``settings.test_images``, within ``settings.seconds_budget``); every variant, and the reference's slice for the
    paired comparisons, uses the same first n test images.  ``outcome.images`` and ``outcome.processes`` say how
    many and why."""
    from playbook.compress.coreai_runtime import CoreAIPredictor, plan_coreai_processes

    ok, why = coreai_available()
    outcome = CoreAIOutcome(ok, why)
    if not ok:
        log(f"Core AI variants not made: {why}")
        return outcome
    start = time.perf_counter()
    example = dataset.to_tensor(dataset.calib.images[:2])
    meta = {"playbook.stage": stage, **(metadata or {})}
    asked = settings.test_images or len(dataset.test)
    plan = plan_coreai_processes(settings.processes,
                                 predictions=min(asked, len(dataset.test)) * len(settings.names()))
    outcome.processes = {"processes": plan.processes or 1, "workers": plan.processes, "why": plan.reason,
                         "free_cores": plan.free_cores, "requested": settings.processes}
    log(f"Core AI runtime: {plan.reason}")
    planned = len(settings.names())
    sized = {"dataset": dataset, "reference": reference}

    def failed(name: str, phase: str, exc: BaseException) -> None:
        reason = " ".join(str(exc).split())[:600] or type(exc).__name__
        outcome.failed.append({"recipe": name, "phase": phase, "error": type(exc).__name__, "reason": reason,
                               "side": SIDE})
        log(f"FAILED {name} ({phase}): {type(exc).__name__}: {reason}\n{traceback.format_exc()}"
            "the stage goes on with the other recipes")

    def size(package: AIModelPackage, predictor: CoreAIPredictor) -> None:
        """Once, on the first package measured: time the runtime on a probe, choose n, slice the test split."""
        if outcome.images:
            return
        split = len(dataset.test)
        probe = min(settings.probe_images, split)
        info: dict[str, Any] = {"asked": settings.test_images, "split": split, "budget_s": settings.seconds_budget,
                                "variants": planned, "probe_images": probe,
                                "probe_variant": Path(package.path).stem}
        try:
            timed = predictor.predict(Path(package.path), dataset.to_tensor(dataset.test.images[:probe]).numpy(),
                                      settings.batch_size)
            spi = timed.seconds_per_image()
            info.update(seconds_per_image=spi, probe_wall_s=timed.wall_s, probe_load_s=timed.load_s,
                        probe_processes=timed.processes)
        except Exception as exc:  # noqa: BLE001 -- the variant's own measurement reports the failure
            spi = 0.0
            info.update(seconds_per_image=None, probe_error=f"{type(exc).__name__}: {_first(exc)}")
        budget = settings.seconds_budget if spi > 0 else 0.0
        n, sentence = choose_coreai_images(settings.test_images, split, planned, spi, budget)
        if spi <= 0 and settings.seconds_budget > 0:
            sentence = f"{n:,} images: the runtime could not be timed on the probe, so the budget was not applied."
        info.update(used=n, why=sentence, estimate_s=planned * n * spi if spi else None)
        outcome.images.update(info)
        log(f"Core AI images: {sentence}")
        if n < split:  # the first n test images, the reference's too (paired comparisons)
            sized["dataset"] = dataclasses.replace(dataset, test=dataset.test.head(n))
            ref = sized["reference"]
            sized["reference"] = dataclasses.replace(ref, scores=ref.scores[:n], correct=ref.correct[:n])

    with CoreAIPredictor(plan) as predictor:
        def keep(name: str, package: AIModelPackage, description: str,
                 extra: dict[str, Any]) -> VariantRecord | None:
            try:
                size(package, predictor)
                record, scores = measure_aimodel(name, stage, package, sized["dataset"], sized["reference"],
                                                 description, root, settings,
                                                 {**extra, "size_ratio_vs_fp32": (fp32_bytes / package.size_bytes)
                                                  if fp32_bytes else None}, predictor=predictor)
            except Exception as exc:  # noqa: BLE001 -- one variant never stops the others
                failed(name, "measure", exc)
                return None
            outcome.variants.append((record, scores))
            return record

        for precision in ("fp16", "fp32") if settings.fp32 else ("fp16",):
            name = f"coreai-{precision}"
            try:
                package = export_aimodel(model, example, out_dir, name, precision,
                                         metadata={**meta, "playbook.variant": name})
            except Exception as exc:  # noqa: BLE001
                failed(name, "export", exc)
                continue
            keep(name, package, f"the trained model as a Core AI model, {precision.upper()} (coreai-torch)",
                 {"technique": "float", "scheme": precision, "export_seconds": package.seconds})
        for technique in settings.techniques:
            name = f"coreai-{technique}"
            try:
                made = compress_coreai(model, technique, example, out_dir, name=name, precision="fp32",
                                       coreml=settings.oracle, coreml_target=settings.coreml_target, metadata=meta)
            except CoreAICompressionError as exc:
                outcome.skipped.append(exc.to_dict())
                log(f"skipped {name}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001
                failed(name, "compress", exc)
                continue
            record = keep(name, made.aimodel, TECHNIQUES[technique].description,
                          {"technique": technique, "scheme": technique, "bits": TECHNIQUES[technique].bits,
                           "compress_seconds": made.seconds, "details": {"messages": list(made.messages)},
                           "coreml_counterpart": relative(made.mlpackage, root) if made.mlpackage else None})
            if record is not None and made.coreml_error:
                outcome.failed.append({"recipe": name, "phase": "oracle", "error": "CoreMLCounterpart",
                                       "reason": f"{made.coreml_error['step']}: {made.coreml_error['coremltools_message']}"
                                                 f" ({made.coreml_error['hint']})", "side": SIDE})
                log(f"{name}: no Core ML counterpart for the oracle ({made.coreml_error['coremltools_message']}); "
                    "the .aimodel is measured")
            if record is not None and made.mlpackage:
                try:
                    from playbook.compress.coreai_oracle import oracle_on_split

                    scores = next(s for v, s in outcome.variants if v is record)
                    test = sized["dataset"]
                    result = oracle_on_split(made, test, test.test, coreai_scores=scores).to_dict()
                    result["aimodel"], result["mlpackage"] = relative(result["aimodel"], root), relative(
                        result["mlpackage"], root)
                    outcome.oracle[name] = result
                    record.extra["oracle"] = {k: result[k] for k in ("top1_agreement", "max_rel_error", "passed",
                                                                      "n")}
                except Exception as exc:  # noqa: BLE001
                    failed(name, "oracle", exc)
        outcome.processes.update(startup_s=predictor.startup_s, notes=list(predictor.notes),
                                 processes_at_end=predictor.processes or 1)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
