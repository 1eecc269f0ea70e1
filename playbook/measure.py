"""Measure one exported variant on the five axes, through the one prediction interface.

1. accuracy: top-1/top-5 on the test split, a bootstrap 95% interval, and the paired change
   against a reference variant (bootstrap interval + McNemar), plus fidelity (agreement, KL);
2. latency and FPS: batch 1, warm-up then repeated runs, median and p90, threads pinned;
3. size: the package's bytes on disk and its zip-compressed download size, read from files;
4. peak memory: the rise of a fresh process's peak resident set while loading the package
   and running one prediction;
5. energy: only where a counter is readable (Linux RAPL); otherwise ``None`` with the reason.

Every figure says what produced it: on Linux latency and memory are those of the
playbook's reference executor on this CPU, *not* of Apple's Core ML runtime on a device.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from playbook.config import StrictConfig, check_choice, check_range
from playbook.coreml import COMPUTE_UNITS, RUNTIMES, load_runtime, package_info, package_inputs, predict_split
from playbook.data import Dataset
from playbook.env import environment, rss_mb, torch_threads
from playbook.metrics import classification_metrics, compare_paired, fidelity
from playbook.records import VariantRecord, relative, sha256_path

RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


@dataclasses.dataclass(frozen=True)
class MeasureConfig(StrictConfig):
    """How variants are measured.

    Attributes:
        runtime: ``auto`` (Core ML on macOS, reference executor elsewhere), ``coreml`` or ``reference``.
        compute_units: Core ML compute units on macOS (``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``).
        latency_warmup: untimed runs before timing.
        latency_repeats: timed batch-1 runs (median and p90 are reported).
        threads: torch CPU threads while timing (pinned and recorded).
        bootstrap_resamples: resamples for the 95% intervals.
        batch_size: images per call when scoring the test split.
    """

    runtime: str = "auto"
    compute_units: str = "ALL"
    latency_warmup: int = 10
    latency_repeats: int = 50
    threads: int = 1
    bootstrap_resamples: int = 2000
    batch_size: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("compute_units", self.compute_units, COMPUTE_UNITS)
        check_range("latency_warmup", self.latency_warmup, 0)
        check_range("latency_repeats", self.latency_repeats, 1)
        check_range("threads", self.threads, 1)
        check_range("bootstrap_resamples", self.bootstrap_resamples, 100)
        check_range("batch_size", self.batch_size, 1)


@dataclasses.dataclass(frozen=True)
class Reference:
    """The variant others are compared with: its scores and per-image correctness on the test split."""

    name: str
    scores: np.ndarray
    correct: np.ndarray


@dataclasses.dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    batch: int
    warmup: int
    repeats: int
    threads: int

    @property
    def fps(self) -> float:
        return 1000.0 * self.batch / self.median_ms if self.median_ms > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fps": self.fps}


def time_latency(run: Any, warmup: int, repeats: int, threads: int, batch: int = 1) -> Latency:
    """Warm up, then time ``run()`` ``repeats`` times with torch threads pinned; median and p90."""
    with torch_threads(threads):
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1000.0)
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), batch, warmup, repeats, threads)


def _peak_memory_child(package: str, runtime: str, compute_units: str) -> tuple[float, float]:
    """In a freshly forked process: peak RSS rise while loading ``package`` and predicting once."""
    info = package_info(Path(package))
    spec = info.inputs[0]
    if spec["type"] == "imageType":
        channels = 1 if spec.get("color_space") == "GRAYSCALE" else 3
        shape = (1, channels, spec["height"], spec["width"])
        sample = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    else:
        sample = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    torch.set_num_threads(1)
    before = rss_mb("VmRSS")
    rt = load_runtime(Path(package), runtime, compute_units)
    rt.predict({spec["name"]: sample})
    return rss_mb("VmHWM") - before, before


def peak_memory_mb(package: Path, runtime: str, compute_units: str) -> tuple[float | None, str]:
    """Peak resident-memory rise (MB) of a fresh process that loads ``package`` and predicts one input.

    Each variant gets its own process forked from a clean ``forkserver`` (imports done, no
    model loaded yet), because a long-lived process reuses memory freed by earlier variants
    and would under-report.  The figure is what loading and running the model adds.
    """
    import multiprocessing

    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["playbook.measure"])
        with ctx.Pool(1) as pool:
            rise, before = pool.apply(_peak_memory_child, (str(package), runtime, compute_units))
    except Exception as exc:  # no forkserver on this platform, or the child failed
        return None, f"peak memory not measured: the measuring process failed ({type(exc).__name__}: {exc})"
    return max(rise, 0.0), (f"rise of peak RSS of a fresh process (forked after imports, {before:.0f} MB) while "
                            "loading the package and predicting one input")


def read_energy_uj() -> int | None:
    """The CPU package energy counter (RAPL, microjoules) where readable, else ``None``."""
    try:
        return int(RAPL_ENERGY.read_text())
    except (OSError, ValueError):
        return None


def _accuracy_ci(correct: np.ndarray, resamples: int) -> tuple[float, float]:
    if len(correct) < 2 or correct.all() or not correct.any():
        value = 100.0 * float(correct.mean()) if len(correct) else float("nan")
        return value, value
    res = stats.bootstrap((correct.astype(np.float64),), np.mean, confidence_level=0.95, n_resamples=resamples,
                          method="percentile", random_state=np.random.default_rng(0), vectorized=True)
    return 100.0 * float(res.confidence_interval.low), 100.0 * float(res.confidence_interval.high)


def accuracy_fields(scores: np.ndarray, dataset: Dataset, reference: Reference | None,
                    resamples: int) -> dict[str, Any]:
    """The accuracy axis of a ``VariantRecord`` from test-split scores, whatever runtime made them: top-1 and top-5,
    top-1's 95% bootstrap interval, and against ``reference`` (when given) the paired change and fidelity."""
    metrics = classification_metrics(scores, dataset.test.labels, dataset.class_names)
    correct = np.asarray(metrics.correct, dtype=bool)
    return {"top1": metrics.top1, "top5": metrics.top5, "top1_ci": _accuracy_ci(correct, resamples),
            "n_test": metrics.n, "reference": reference.name if reference is not None else None,
            "vs_reference": compare_paired(reference.correct, correct, resamples=resamples)
            if reference is not None else None,
            "fidelity": fidelity(reference.scores, scores) if reference is not None else None}


def measure_variant(name: str, stage: str, package: Path, dataset: Dataset, cfg: MeasureConfig,
                    reference: Reference | None = None, description: str = "", root: Path | None = None,
                    extra: dict[str, Any] | None = None) -> tuple[VariantRecord, np.ndarray]:
    """All five axes for one saved package; returns its ``VariantRecord`` and the test scores.

    ``reference`` (usually the FP32 baseline package) gives the paired change in top-1 and the
    fidelity figures; without it those fields are ``None``.  ``root`` is the model's reports folder:
    the package path is stored relative to it.
    """
    start = time.perf_counter()
    package = Path(package)
    info = package_info(package)
    scores, provenance = predict_split(package, dataset, dataset.test, cfg.runtime, cfg.compute_units,
                                       batch_size=cfg.batch_size)
    memory_mb, memory_note = peak_memory_mb(package, cfg.runtime, cfg.compute_units)
    rt = load_runtime(package, cfg.runtime, cfg.compute_units)
    inputs = package_inputs(info.inputs[0]["type"], dataset, dataset.test.images[:1])
    energy_before = read_energy_uj()
    latency = time_latency(lambda: rt.predict(inputs), cfg.latency_warmup, cfg.latency_repeats, cfg.threads)
    energy_after = read_energy_uj()
    if energy_before is not None and energy_after is not None and energy_after >= energy_before:
        energy_mj = (energy_after - energy_before) / 1000.0 / cfg.latency_repeats
        energy_note = "CPU package energy (RAPL) per batch-1 prediction, whole package incl. other processes"
    else:
        energy_mj = None
        energy_note = ("not measured: no readable energy counter on this platform (Linux RAPL absent or "
                       "restricted); on macOS use powermetrics or Xcode's energy gauges on the device")

    where = provenance.to_dict()
    record = VariantRecord(
        name=name, stage=stage, description=description,
        package=relative(package, root) if root is not None else str(package.resolve()),
        package_sha256=sha256_path(package), size_bytes=info.size_bytes, zip_bytes=info.zip_bytes,
        **accuracy_fields(scores, dataset, reference, cfg.bootstrap_resamples),
        latency_ms=latency.median_ms, latency_p90_ms=latency.p90_ms, fps=latency.fps, latency=latency.to_dict(),
        peak_memory_mb=memory_mb, energy_mj=energy_mj, op_histogram=info.op_histogram,
        io={"inputs": list(info.inputs), "outputs": list(info.outputs),
            "specification_version": info.specification_version},
        provenance={
            "accuracy": {**where, "measured": True},
            "latency": {**where, "measured": True, "what": f"batch-1 predict, {cfg.threads} torch thread(s)"
                        if where["runtime"] == "reference" else f"batch-1 predict, compute units {cfg.compute_units}"},
            "size": {"measured": True, "what": "bytes of the .mlpackage files; DEFLATE zip for download size"},
            "memory": {"measured": memory_mb is not None, "what": memory_note, "runtime": where["runtime"]},
            "energy": {"measured": energy_mj is not None, "what": energy_note},
            "environment": environment(compute_unit=cfg.compute_units if where["runtime"] == "coreml" else None,
                                       runtime=where["runtime"]),
        },
        extra=dict(extra or {}),
    )
    record.measure_seconds = time.perf_counter() - start
    return record, scores


def reference_from(name: str, scores: np.ndarray, dataset: Dataset) -> Reference:
    """A ``Reference`` from a measured variant's name and test scores (per-image correctness follows)."""
    return Reference(name, scores, scores.argmax(1) == dataset.test.labels)

