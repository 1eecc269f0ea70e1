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
    test_images: measure on the first this many test images (0: the whole split).  Apple's Linux runtime is a
        single-threaded interpreter (about 14 CPU-seconds per 1,000 images for the default resnet), so a bounded
        subset keeps the main job's time; the paired interval widens accordingly and ``n_test`` says how many.
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

    def __post_init__(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown:
            raise ConfigError(f"Core AI techniques {unknown} are not among {sorted(TECHNIQUES)}")

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

    def details(self, settings: CoreAISettings) -> dict[str, Any]:
        """The JSON-ready summary a stage record keeps (``details["coreai"]``)."""
        return {"available": self.available, "why" if not self.available else "versions": self.why,
                "recipes": settings.names() if self.available else [], "techniques": list(settings.techniques),
                "variants": [v.name for v, _ in self.variants], "skipped": self.skipped, "failed": self.failed,
                "oracle": self.oracle, "min_os": MIN_OS, "latency_note": HOST_LATENCY_LABEL,
                "seconds": self.seconds}


def measure_aimodel(name: str, stage: str, package: AIModelPackage, dataset: Any, reference: Any, description: str,
                    root: Path, settings: CoreAISettings, extra: dict[str, Any] | None = None,
                    scores: np.ndarray | None = None) -> tuple[VariantRecord, np.ndarray]:
    """Accuracy (with its 95% interval and the paired change against ``reference``), fidelity, size and the
    host-interpreter latency of a saved ``.aimodel``, all through Apple's Core AI runtime; ``target="coreai"``."""
    from playbook.compress.coreai_runtime import coreai_provenance, host_latency, predict_aimodel_split
    from playbook.measure import accuracy_fields

    start = time.perf_counter()
    path = Path(package.path)
    if scores is None:
        scores, _ = predict_aimodel_split(path, dataset, dataset.test, settings.batch_size)
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
    ``fp32_bytes``: its package size, for the size ratio; ``root``: the model's reports folder (relative paths)."""
    ok, why = coreai_available()
    outcome = CoreAIOutcome(ok, why)
    n = settings.test_images
    if ok and 0 < n < len(dataset.test):  # the first n test images, the reference's too (paired comparisons)
        dataset = dataclasses.replace(dataset, test=dataset.test.head(n))
        reference = dataclasses.replace(reference, scores=reference.scores[:n], correct=reference.correct[:n])
    if not ok:
        log(f"Core AI variants not made: {why}")
        return outcome
    start = time.perf_counter()
    example = dataset.to_tensor(dataset.calib.images[:2])
    meta = {"playbook.stage": stage, **(metadata or {})}

    def failed(name: str, phase: str, exc: BaseException) -> None:
        reason = " ".join(str(exc).split())[:600] or type(exc).__name__
        outcome.failed.append({"recipe": name, "phase": phase, "error": type(exc).__name__, "reason": reason,
                               "side": SIDE})
        log(f"FAILED {name} ({phase}): {type(exc).__name__}: {reason}\n{traceback.format_exc()}"
            "the stage goes on with the other recipes")

    def keep(name: str, package: AIModelPackage, description: str, extra: dict[str, Any]) -> VariantRecord | None:
        try:
            record, scores = measure_aimodel(name, stage, package, dataset, reference, description, root, settings,
                                             {**extra, "size_ratio_vs_fp32": (fp32_bytes / package.size_bytes)
                                              if fp32_bytes else None})
        except Exception as exc:  # noqa: BLE001 -- one variant never stops the others
            failed(name, "measure", exc)
            return None
        outcome.variants.append((record, scores))
        return record

    for precision in ("fp16", "fp32") if settings.fp32 else ("fp16",):
        name = f"coreai-{precision}"
        try:
            package = export_aimodel(model, example, out_dir, name, precision, metadata={**meta,
                                                                                         "playbook.variant": name})
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
        if record is not None and made.mlpackage:
            try:
                from playbook.compress.coreai_oracle import oracle_on_split

                scores = next(s for v, s in outcome.variants if v is record)
                result = oracle_on_split(made, dataset, dataset.test, coreai_scores=scores).to_dict()
                result["aimodel"], result["mlpackage"] = relative(result["aimodel"], root), relative(
                    result["mlpackage"], root)
                outcome.oracle[name] = result
                record.extra["oracle"] = {k: result[k] for k in ("top1_agreement", "max_rel_error", "passed", "n")}
            except Exception as exc:  # noqa: BLE001
                failed(name, "oracle", exc)
    outcome.seconds = time.perf_counter() - start
    return outcome
