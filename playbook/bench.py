"""One benchmark harness, three backends: what a user feels, each figure labelled by where it was measured.

Backends (``BACKENDS``), each a *tier* of evidence (``bench_schema.TIERS``):

* ``coreml`` (**device**, macOS only): Apple's Core ML runtime through coremltools' documented API
  (``MLModel(..., compute_units=...)``, ``CompiledMLModel``, ``MLComputePlan``), one setting per compute unit
  (``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``, ``ALL``).  Load time is measured twice: the first
  ``MLModel`` load (which compiles the package) and a second load of the compiled ``.mlmodelc`` (cached).
  Where coremltools exposes ``MLComputePlan``: the compute device Core ML *plans* for each op and Apple's
  *estimated* per-op cost -- a plan and an estimate, not a measurement (the timings are the measurement).
* ``torch`` (**host**): the package's ML program run as plain float32 PyTorch ops
  (``mlprogram.ReferenceProgram.run_float32``) on this machine's CPU with 1 thread and with all threads, and on
  CUDA when a GPU is present: what the same graph costs on the host, never a device figure.
* ``reference`` (**reference**): the playbook's reference executor with its FP16 emulation, the runtime the
  accuracy figures come from on Linux.  A correctness runtime: its latency does not rank variants either (it
  expands every compressed weight once at load, so every weight-only variant runs the same float32 arithmetic);
  it is timed only to show what that executor costs on this machine.

Every measurement: batch 1, the package's fixed input shape, warm-up, then timed runs in blocks until the
median moves less than ``stable_within`` between checks (or a cap on runs or seconds); median, p90, p99, mean,
coefficient of variation, FPS and every raw sample.  Peak memory of a fresh process that loads the package and
predicts once.  Energy where the platform exposes a counter (RAPL on Linux, NVML on NVIDIA GPUs, ``powermetrics``
on macOS run as root), in joules and in mAh at a stated battery voltage; elsewhere ``measured: false`` with the
reason, never a number (those probes live in ``playbook.bench_probes``).  The output of ``bench_package`` is a dict
following ``bench_schema.MEASUREMENT_SCHEMA``.

Contention: every timed loop also records the machine's load average and the CPU time the process got against the
wall time it took (``Contention``).  When other work shared the CPUs (load above the CPU count, or the loop got
clearly less CPU time than its threads asked for), the setting is measured again, up to ``contention_retries``
times, and the least disturbed attempt is kept; ``contention_note`` says in words what was seen, so a slow figure
is explained by the measured interference rather than guessed at (e.g. as the cost of thread synchronisation).

This module knows nothing of stages, notebooks or the layout of stage records.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from playbook.bench_probes import EnergyMeter, compute_plan, coreml_available, peak_memory
from playbook.bench_schema import FORMAT, MEASUREMENT_SCHEMA, SCHEMA_VERSION, TIERS, validate_measurement
from playbook.config import ConfigError, StrictConfig, check_range
from playbook.env import cpu_model, playbook_version, torch_threads

BACKENDS = tuple(TIERS)
_LATENCY_FIELDS = set(MEASUREMENT_SCHEMA["properties"]["latency"]["properties"])
DEFAULT_BATTERY_VOLTAGE = 3.85
VERSION_PACKAGES = ("torch", "coremltools", "numpy")

# Published Core ML latencies (batch 1), the points a latency estimate would have to fit: coremltools' performance
# tables for the iPhone 14 Pro (A16), as quoted in issue 12 with its GFLOP figures (~0.6 and ~8.2; the papers give
# 300 M multiply-adds for MobileNetV2, arXiv:1801.04381, and 3.8 G for ResNet-50, arXiv:1512.03385).
PUBLISHED_LATENCIES: tuple[dict[str, Any], ...] = (
    {"model": "MobileNetV2", "device": "iPhone 14 Pro (A16)", "latency_ms": 0.48, "gflop": 0.6,
     "source": "coremltools performance tables (iPhone 14 Pro, FP16) via issue 12; MACs: arXiv:1801.04381"},
    {"model": "ResNet50", "device": "iPhone 14 Pro (A16)", "latency_ms": 1.52, "gflop": 8.2,
     "source": "coremltools performance tables (iPhone 14 Pro, FP16) via issue 12; MACs: arXiv:1512.03385"},
)


@dataclasses.dataclass(frozen=True)
class BenchConfig(StrictConfig):
    """How each package is timed.

    Attributes:
        warmup: untimed predictions before timing.
        min_runs: timed predictions before the median may be called stable.
        max_runs: cap on timed predictions.
        max_seconds: cap on timed seconds per setting.
        check_every: runs between two stability checks.
        stable_within: the median is stable when it moved less than this fraction over ``patience`` checks.
        patience: consecutive stable checks needed.
        memory: measure peak memory in a fresh process.
        battery_voltage: nominal battery voltage (V) used to state energy in mAh.
        contention_retries: times a setting is measured again when the machine was busy during its timed loop.
    """

    warmup: int = 10
    min_runs: int = 50
    max_runs: int = 2000
    max_seconds: float = 3.0
    check_every: int = 25
    stable_within: float = 0.005
    patience: int = 3
    memory: bool = True
    battery_voltage: float = DEFAULT_BATTERY_VOLTAGE
    contention_retries: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("warmup", self.warmup, 0)
        check_range("min_runs", self.min_runs, 1)
        check_range("max_runs", self.max_runs, self.min_runs)
        check_range("max_seconds", self.max_seconds, 0.0)
        check_range("check_every", self.check_every, 1)
        check_range("stable_within", self.stable_within, 0.0, 1.0)
        check_range("patience", self.patience, 1)
        check_range("battery_voltage", self.battery_voltage, 0.5, 50.0)
        check_range("contention_retries", self.contention_retries, 0)


# --------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Setting:
    """One way of running a package: backend, Core ML compute units, torch device and threads."""

    backend: str
    compute_units: str | None = None
    device: str = "cpu"
    threads: int | None = None

    @property
    def label(self) -> str:
        if self.backend == "coreml":
            return f"coreml {self.compute_units}"
        where = self.device if self.device != "cpu" else f"cpu {self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{self.backend} {where}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "label": self.label}


def cuda_available() -> tuple[bool, str]:
    if torch.cuda.is_available():
        return True, ""
    return False, f"no CUDA device visible to torch {torch.__version__} on this machine"


def plan_settings(backends: Sequence[str], compute_units: Sequence[str], torch_devices: Sequence[str],
                  torch_threads_list: Sequence[int]) -> tuple[list[Setting], list[dict[str, str]]]:
    """The settings that can run here, and those that cannot with the reason (nothing is silently dropped)."""
    settings: list[Setting] = []
    skipped: list[dict[str, str]] = []
    cores = os.cpu_count() or 1
    for backend in backends:
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} is not valid; choose from {list(BACKENDS)}")
        if backend == "coreml":
            ok, why = coreml_available()
            for unit in compute_units:
                (settings.append(Setting("coreml", compute_units=unit)) if ok
                 else skipped.append({"setting": f"coreml {unit}", "why": why}))
        elif backend == "torch":
            for device in torch_devices:
                if device == "cpu":
                    counts = sorted({n if n > 0 else cores for n in torch_threads_list})
                    settings += [Setting("torch", device="cpu", threads=n) for n in counts]
                else:
                    ok, why = cuda_available()
                    (settings.append(Setting("torch", device="cuda", threads=1)) if ok
                     else skipped.append({"setting": "torch cuda", "why": why}))
        else:
            settings.append(Setting("reference", threads=1))
    return settings, skipped


# --------------------------------------------------------------------------- inputs
def input_specs(io: dict[str, Any]) -> list[dict[str, Any]]:
    """The package's inputs (names, shapes, types) from its recorded I/O."""
    out = []
    for f in io.get("inputs") or []:
        if f.get("type") == "imageType":
            channels = 1 if str(f.get("color_space", "")).startswith("GRAYSCALE") else 3
            shape = [1, channels, int(f["height"]), int(f["width"])]
        else:
            shape = [int(s) for s in f.get("shape") or []]
        out.append({"name": f["name"], "shape": shape, "dtype": f.get("dtype", "FLOAT32"), "type": f.get("type")})
    return out


# --------------------------------------------------------------------------- loaded runtimes
class Loaded:
    """A package ready to predict batch-1 inputs: ``predict(inputs)``, ``sync()`` after a prediction."""

    def __init__(self, predict: Callable[[dict[str, Any]], Any], sync: Callable[[], None] = lambda: None,
                 prepare: Callable[[dict[str, np.ndarray]], dict[str, Any]] = lambda x: x, handle: Any = None) -> None:
        self.predict, self.sync, self.prepare, self.handle = predict, sync, prepare, handle


def load(package: Path, setting: Setting) -> Loaded:
    if setting.backend == "reference":
        from playbook.coreml import load_runtime

        rt = load_runtime(package, "reference")
        return Loaded(rt.predict, handle=rt)
    if setting.backend == "torch":
        from playbook.mlprogram import ReferenceProgram

        program = ReferenceProgram.load(package)
        device = torch.device(setting.device)
        if device.type != "cpu":
            program.to(device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        prepare = lambda x: {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in x.items()}  # noqa: E731
        return Loaded(program.run_float32, sync, prepare, program)
    import coremltools as ct  # macOS: Apple's runtime through coremltools' documented API

    model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, setting.compute_units))
    return Loaded(model.predict, prepare=_coreml_feed(model.get_spec()), handle=model)


def _coreml_feed(spec: Any) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
    """Inputs as coremltools' ``predict`` takes them: arrays as they are, image inputs as PIL images."""
    images = {f.name for f in spec.description.input if f.type.WhichOneof("Type") == "imageType"}

    def prepare(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        from PIL import Image

        out: dict[str, Any] = {}
        for name, value in inputs.items():
            if name in images:
                pixels = np.clip(np.round(np.asarray(value)[0]), 0, 255).astype(np.uint8)
                out[name] = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(
                    pixels.transpose(1, 2, 0))
            else:
                out[name] = np.asarray(value, dtype=np.float32)
        return out

    return prepare


def load_cached(first: Loaded, package: Path, setting: Setting) -> Loaded:
    """A second load: of the compiled ``.mlmodelc`` for Core ML (cached), of the same files otherwise."""
    if setting.backend == "coreml":
        import coremltools as ct

        compiled = first.handle.get_compiled_model_path()
        model = ct.models.CompiledMLModel(compiled, compute_units=getattr(ct.ComputeUnit, setting.compute_units))
        return Loaded(model.predict, prepare=first.prepare, handle=model)
    return load(package, setting)


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Contention:
    """What else the machine was doing while a loop was timed: the 1-minute load average before and after, the CPU
    count, and the CPU time this process got against the wall time the loop took (for ``threads`` threads)."""

    load_before: float | None
    load_after: float | None
    cpu_count: int
    cpu_seconds: float
    wall_seconds: float
    threads: int

    @property
    def cpu_share(self) -> float | None:
        """CPU time got per wall second and per thread asked for (about 1 on an idle machine for one busy thread;
        well below 1 when other processes took the CPU)."""
        if self.wall_seconds <= 0:
            return None
        return self.cpu_seconds / (self.wall_seconds * max(self.threads, 1))

    @property
    def busy(self) -> bool:
        """Other work competed for the CPUs: the load average exceeded the CPU count, or a one-thread loop got less
        than 80% of the wall time on the CPU."""
        loads = [x for x in (self.load_before, self.load_after) if x is not None]
        overloaded = bool(loads) and max(loads) > self.cpu_count + 0.5
        starved = self.threads == 1 and self.cpu_share is not None and self.cpu_share < 0.8
        return overloaded or starved

    def to_dict(self) -> dict[str, Any]:
        return {"load_before": self.load_before, "load_after": self.load_after, "cpu_count": self.cpu_count,
                "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds, "threads": self.threads,
                "cpu_share": self.cpu_share, "busy": self.busy}


def _load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # not on every platform
        return None


def contention_note(contention: Contention | dict[str, Any], attempts: int = 1) -> str:
    """What the harness saw of other work on the machine, in words (empty when the machine was quiet)."""
    c = contention if isinstance(contention, dict) else contention.to_dict()
    if not c.get("busy"):
        return ""
    loads = [x for x in (c.get("load_before"), c.get("load_after")) if x is not None]
    parts = []
    if loads:
        parts.append(f"load average {max(loads):.1f} on {c['cpu_count']} CPUs")
    if c.get("cpu_share") is not None:
        parts.append(f"the timed loop got {100 * c['cpu_share']:.0f}% of the CPU time its {c['threads']} thread(s) "
                     "asked for")
    again = f"; measured {attempts} times, the least disturbed attempt kept" if attempts > 1 else ""
    return ("other work shared this machine while it was timed (" + ", ".join(parts) + again +
            "): the figure includes that interference; measure again on a quiet machine before comparing")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Raw latency samples (ms), how the timed loop ended, and the contention seen while it ran."""

    samples_ms: tuple[float, ...]
    warmup: int
    stopped: str
    seconds: float
    contention: Contention | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The schema's ``latency`` block."""
        arr = np.asarray(self.samples_ms, dtype=np.float64)
        median = float(np.median(arr))
        return {"unit": "ms", "median": median, "p90": float(np.percentile(arr, 90)),
                "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()),
                "cv": float(arr.std() / arr.mean()) if arr.mean() > 0 else 0.0, "fps": 1000.0 / median,
                "runs": int(len(arr)), "warmup": self.warmup, "stopped": self.stopped, "seconds": self.seconds,
                "samples": [float(x) for x in arr]}


def time_until_stable(run: Callable[[], Any], cfg: BenchConfig, sync: Callable[[], None] = lambda: None,
                      threads: int = 1) -> Timing:
    """Warm up, then time ``run()`` in blocks of ``check_every`` until the median is stable or a cap is reached.

    Stable: after at least ``min_runs`` runs, the median of all samples so far moved less than
    ``stable_within`` (relative) since the previous check, ``patience`` checks in a row.  ``max_seconds`` is a
    hard cap (checked after every run, warm-up included: at most half of it), so a setting that is pathologically
    slow on this machine ends with fewer than ``min_runs`` samples and says so (``stopped="max_seconds"``).
    """
    start = time.perf_counter()
    warmup = 0
    while warmup < cfg.warmup and (time.perf_counter() - start < cfg.max_seconds / 2 or warmup == 0):
        run()
        sync()
        warmup += 1
    samples: list[float] = []
    load_before, cpu_start = _load_average(), time.process_time()
    start = time.perf_counter()
    previous, calm, stopped = None, 0, "max_runs"
    while len(samples) < cfg.max_runs and stopped == "max_runs":
        for _ in range(min(cfg.check_every, cfg.max_runs - len(samples))):
            t0 = time.perf_counter()
            run()
            sync()
            samples.append((time.perf_counter() - t0) * 1000.0)
            if t0 - start >= cfg.max_seconds:
                stopped = "max_seconds"
                break
        median = float(np.median(samples))
        if stopped == "max_runs" and previous is not None and len(samples) >= cfg.min_runs:
            calm = calm + 1 if abs(median - previous) <= cfg.stable_within * previous else 0
            if calm >= cfg.patience:
                stopped = "stable"
        previous = median
    wall = time.perf_counter() - start
    contention = Contention(load_before, _load_average(), os.cpu_count() or 1, time.process_time() - cpu_start, wall,
                            max(int(threads), 1))
    return Timing(tuple(samples), warmup, stopped, wall, contention)


def time_quietly(run: Callable[[], Any], cfg: BenchConfig, sync: Callable[[], None] = lambda: None,
                 threads: int = 1) -> Timing:
    """``time_until_stable``, measured again (up to ``cfg.contention_retries`` times) while the machine was busy;
    returns the least disturbed attempt (highest CPU share, then lowest median), with the number of attempts."""
    attempts = [time_until_stable(run, cfg, sync, threads)]
    while attempts[-1].contention is not None and attempts[-1].contention.busy and \
            len(attempts) <= cfg.contention_retries:
        attempts.append(time_until_stable(run, cfg, sync, threads))

    def disturbance(t: Timing) -> tuple:
        c = t.contention
        return (bool(c and c.busy), -(c.cpu_share or 0.0) if c else 0.0, float(np.median(t.samples_ms)))

    best = min(attempts, key=disturbance)
    return dataclasses.replace(best, attempts=len(attempts))


# --------------------------------------------------------------------------- work: FLOPs and the host's peak
def count_flops(package: Path, inputs: dict[str, np.ndarray]) -> float:
    """Floating-point operations of one batch-1 prediction, counted by ``torch.utils.flop_counter`` while the
    program runs as PyTorch ops (convolutions and matrix products; element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    loaded = load(package, Setting("torch", device="cpu", threads=1))
    with FlopCounterMode(display=False) as counter:
        loaded.predict(loaded.prepare(inputs))
    return float(counter.get_total_flops())


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 10, device: str = "cpu",
                       max_seconds: float = 2.0) -> dict[str, Any]:
    """The host's achievable float32 GFLOP/s: the best of up to ``repeats`` timed ``n x n`` matrix products
    (fewer when they take longer than ``max_seconds`` in all)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: list[float] = []
    with torch_threads(threads) as used:
        torch.mm(a, b)
        sync()
        start = time.perf_counter()
        while len(times) < repeats and (not times or time.perf_counter() - start < max_seconds):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            times.append(time.perf_counter() - t0)
    flop = 2.0 * n ** 3
    return {"threads": used, "device": device, "n": n, "repeats": len(times), "gflops": flop / min(times) / 1e9,
            "median_gflops": flop / float(np.median(times)) / 1e9,
            "what": f"best of {len(times)} float32 {n}x{n} torch.mm, {used} thread(s)"}


def best_peak(*found: dict[str, Any]) -> dict[str, Any]:
    """The highest of several peak measurements of the same setting (the machine was least disturbed then)."""
    best = max(found, key=lambda p: p["gflops"])
    return {**best, "measurements": len(found), "all_gflops": [p["gflops"] for p in found]}


# --------------------------------------------------------------------------- statistics
def ratio_of_medians(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """median(a) / median(b) with a percentile bootstrap interval (each sample set resampled on its own).

    Timed runs are a time series, not independent draws; when the machine's load drifts, the interval is
    narrower than the run-to-run spread (compare two runs to see that spread)."""
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ratio = float(np.median(a_arr) / np.median(b_arr))
    if len(a_arr) < 2 or len(b_arr) < 2:
        return {"ratio": ratio, "low": ratio, "high": ratio, "resamples": 0}

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    res = stats.bootstrap((a_arr, b_arr), statistic, n_resamples=resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return {"ratio": ratio, "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high),
            "resamples": resamples}


def single_rate_loo(points: Sequence[dict[str, Any]] = PUBLISHED_LATENCIES) -> dict[str, Any]:
    """Leave-one-out error of the simplest estimate, latency = GFLOP / (one GFLOP/s constant fitted on the others).

    Returns each point's implied rate and its held-out relative error, and the median error."""
    rates = [p["gflop"] / (p["latency_ms"] / 1000.0) for p in points]
    rows = []
    for i, p in enumerate(points):
        others = [r for j, r in enumerate(rates) if j != i]
        if not others:
            continue
        rate = float(np.median(others))
        predicted = p["gflop"] / rate * 1000.0
        rows.append({"model": p["model"], "device": p["device"], "published_ms": p["latency_ms"],
                     "gflop": p["gflop"], "implied_gflops": rates[i], "predicted_ms": predicted,
                     "error": abs(predicted - p["latency_ms"]) / p["latency_ms"], "source": p["source"]})
    errors = [r["error"] for r in rows]
    return {"points": rows, "median_error": float(np.median(errors)) if errors else None}


# --------------------------------------------------------------------------- one package, one setting
def environment_block(setting: Setting) -> dict[str, Any]:
    """Where a measurement ran: device, OS, versions (and CPU facts)."""
    import importlib.metadata

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    device = f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} logical CPUs)"
    if setting.device == "cuda" and torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} (CUDA), host {device}"
    system = platform.system()
    os_name = f"macOS {platform.mac_ver()[0]}" if system == "Darwin" else f"{system} {platform.release()}"
    return {"device": device, "os": os_name, "system": system, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "host": platform.node(),
            "versions": {**{n: version(n) for n in VERSION_PACKAGES}, "python": platform.python_version(),
                         "playbook": playbook_version()}}


def bench_package(package: Path, setting: Setting, inputs: dict[str, np.ndarray], cfg: BenchConfig,
                  identity: dict[str, str], flops: float | None = None,
                  peak_gflops: float | None = None) -> dict[str, Any]:
    """Time one package with one setting; returns a measurement that follows the schema (validated).

    ``identity`` gives ``model``, ``stage``, ``variant`` and ``package_sha256``; ``inputs`` is one batch-1 input
    per name; ``flops`` and ``peak_gflops`` (host settings) give the achieved share of the host's peak.
    """
    package = Path(package)
    memory = peak_memory(package, setting, inputs, load) if cfg.memory else {
        "measured": False, "unit": "MB", "peak": None, "why": "not measured: memory=False"}
    with torch_threads(setting.threads or 0) as threads:
        t0 = time.perf_counter()
        loaded = load(package, setting)
        first_load = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        cached = load_cached(loaded, package, setting)
        cached_load = (time.perf_counter() - t0) * 1000.0
        feed = cached.prepare(inputs)
        t0 = time.perf_counter()
        cached.predict(feed)
        cached.sync()
        first_prediction = (time.perf_counter() - t0) * 1000.0
        meter = EnergyMeter(setting, cfg.battery_voltage)
        with meter.measure():
            timing = time_quietly(lambda: cached.predict(feed), cfg, cached.sync,
                                  threads if isinstance(threads, int) else 1)
    plan = (compute_plan(loaded.handle.get_compiled_model_path(), str(setting.compute_units))
            if setting.backend == "coreml" else
            {"measured": False, "ops_total": None, "ops_by_device": None, "cost_by_device": None,
             "why": "not measured: MLComputePlan describes Core ML's placement; this backend is not Core ML"})
    latency = timing.to_dict()
    if timing.contention is not None and "contention" in _LATENCY_FIELDS:  # where the schema has room for it
        latency["contention"] = {**timing.contention.to_dict(), "attempts": timing.attempts,
                                 "note": contention_note(timing.contention, timing.attempts)}
    first_what = "first load compiles the .mlpackage; cached = CompiledMLModel of the compiled .mlmodelc" \
        if setting.backend == "coreml" else "first load of the package's program; cached = a second load (OS file cache warm)"
    measurement = {
        **identity, "backend": setting.backend, "tier": TIERS[setting.backend], "setting": setting.label,
        "compute_units": setting.compute_units, "threads": threads if setting.backend != "coreml" else "runtime",
        "device": setting.device, "batch": 1,
        "inputs": [{"name": k, "shape": list(np.asarray(v).shape)} for k, v in inputs.items()],
        "environment": environment_block(setting),
        "load": {"measured": True, "unit": "ms", "first": first_load, "cached": cached_load, "what": first_what},
        "first_prediction": {"measured": True, "unit": "ms", "value": first_prediction,
                             "what": "first prediction after the cached load"},
        "latency": latency, "memory": memory, "energy": meter.result(latency["runs"]), "compute_plan": plan,
        "work": work_block(flops, latency["median"], peak_gflops, setting),
        "provenance": {"source": "measured here", "produced_by": f"playbook bench {playbook_version()}"},
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return validate_measurement(measurement)


def work_block(flops: float | None, median_ms: float, peak_gflops: float | None, setting: Setting) -> dict[str, Any]:
    """Achieved GFLOP/s of a host measurement against the host's measured matmul peak (same threads)."""
    if setting.backend == "coreml":
        return {"measured": False, "flops": None, "achieved_gflops": None, "peak_gflops": None,
                "share_of_peak": None, "why": "not measured: the device's peak is not measured by this harness"}
    if not flops or not peak_gflops:
        return {"measured": False, "flops": None, "achieved_gflops": None, "peak_gflops": None,
                "share_of_peak": None, "why": "not measured: no FLOP count or no peak measurement for this setting"}
    achieved = flops / (median_ms / 1000.0) / 1e9
    return {"measured": True, "flops": flops, "achieved_gflops": achieved, "peak_gflops": peak_gflops,
            "share_of_peak": achieved / peak_gflops,
            "what": "FLOPs counted by torch.utils.flop_counter / median latency, against the best float32 matmul "
                    "GFLOP/s measured on this host with the same threads"}


def results_document(model: str, measurements: Sequence[dict[str, Any]], produced_by: str | None = None) -> dict[str, Any]:
    """A results file (what ``playbook import-bench`` reads) holding ``measurements``."""
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "model": model,
            "produced_by": produced_by or f"playbook bench {playbook_version()}", "measurements": list(measurements)}
