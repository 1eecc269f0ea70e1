"""Stage 05, device benchmarking: every earlier stage's packages, timed with every backend this machine has.

Read top to bottom: ``BenchmarkConfig`` (the parameters of ``notebooks/05_benchmark.ipynb``; how each package is
timed are ``bench.BenchConfig``'s own fields, passed on by name), then ``BenchmarkRun``, whose methods are the
notebook's steps in order -- ``host_peak``, ``run``, ``five_axis_rows``, ``write_swift_benchmark``,
``latency_estimate``, ``finish()`` -- and ``run_benchmark``, the same steps without the notebook.  The harness is
``playbook.bench`` (it knows nothing of stages); tables and charts are functions of the record in
``playbook.views.benchmark``; ``playbook bench`` and ``playbook import-bench`` (results from a Mac or an iPhone,
validated against ``playbook.bench_schema``) are in ``playbook.cli_bench``.

The record adds no variants (the report would list every package twice): its ``measurements`` are keyed by
``(stage, variant, package_sha256)`` of the variant they measured, and the report picks each variant's
best-provenance latency from them (``playbook.report.device.best_latencies``).  Measurements imported
earlier are kept when the stage re-runs, as long as they measured a package that still exists unchanged.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from playbook import bench
from playbook.bench_schema import COMPUTE_UNITS
from playbook.config import ConfigError, check_choice, check_range, technique_field
from playbook.records import (RecordError, StageRecord, VariantRecord, atomic_write_text, lineage_of,
                              load_stage_records, read_stage_record, relative, write_json)
from playbook.report.device import best_latencies, with_best_latency
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig
from playbook.swift_bench import INSTRUCTIONS, SWIFT_FILE, copy_script, swift_benchmark

STAGE = "benchmark"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(MeasuredStageConfig):
    """The parameters of ``05_benchmark`` (see the notebook's parameters cell for each one's meaning).  ``warmup`` to
    ``battery_voltage`` are ``bench.BenchConfig``'s fields: their defaults and checks live there."""

    dataset: str = ""
    variants: list[str] = dataclasses.field(default_factory=list)
    backends: list[str] = dataclasses.field(default_factory=lambda: list(bench.BACKENDS))
    compute_units: list[str] = dataclasses.field(default_factory=lambda: list(COMPUTE_UNITS))
    torch_devices: list[str] = dataclasses.field(default_factory=lambda: ["cpu", "cuda"])
    torch_threads: list[int] = dataclasses.field(default_factory=lambda: [1, 0])
    warmup: int = technique_field(bench.BenchConfig, "warmup")
    min_runs: int = technique_field(bench.BenchConfig, "min_runs")
    max_runs: int = technique_field(bench.BenchConfig, "max_runs")
    max_seconds: float = technique_field(bench.BenchConfig, "max_seconds")
    stable_within: float = technique_field(bench.BenchConfig, "stable_within")
    memory: bool = technique_field(bench.BenchConfig, "memory")
    battery_voltage: float = technique_field(bench.BenchConfig, "battery_voltage")
    compare_to: str = "baseline-fp32"
    bootstrap_resamples: int = 2000
    matmul_size: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.variants:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"variants={self.variants!r}: each entry must be a variant name or 'stage/name'")
        if not self.backends:
            raise ConfigError(f"backends=[] selects nothing; choose some of {list(bench.BACKENDS)}")
        for b in self.backends:
            check_choice("backends", b, bench.BACKENDS)
        for unit in self.compute_units:
            check_choice("compute_units", unit, COMPUTE_UNITS)
        for device in self.torch_devices:
            check_choice("torch_devices", device, ["cpu", "cuda"])
        for n in self.torch_threads:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"torch_threads={self.torch_threads!r}: each entry is a thread count >= 1, or 0 for "
                                  "all logical CPUs")
        self.technique_config(bench.BenchConfig)  # checks warmup ... battery_voltage where they are defined
        check_range("bootstrap_resamples", self.bootstrap_resamples, 100)
        check_range("matmul_size", self.matmul_size, 16, 8192)
        if not self.compare_to.strip():
            raise ConfigError("compare_to='' must name the variant latencies are compared with (e.g. 'baseline-fp32')")

    def bench_config(self) -> bench.BenchConfig:
        """How each package is timed (the smoke policy's few runs when ``smoke``)."""
        if self.smoke:
            return self.technique_config(bench.BenchConfig, warmup=SMOKE.latency_warmup, min_runs=SMOKE.latency_repeats,
                                         max_runs=4 * SMOKE.latency_repeats, max_seconds=0.2,
                                         check_every=SMOKE.latency_repeats, patience=1)
        return self.technique_config(bench.BenchConfig)

    def resamples(self) -> int:
        """Bootstrap resamples of the latency ratios (the smoke policy's few when ``smoke``)."""
        return SMOKE.bootstrap_resamples if self.smoke else self.bootstrap_resamples

    def matmul(self) -> int:
        """n of the host's peak matmul (at most 256 when ``smoke``)."""
        return min(self.matmul_size, 256) if self.smoke else self.matmul_size


@dataclasses.dataclass(frozen=True)
class Target:
    """One package to benchmark: the variant it belongs to and where it is."""

    stage: str
    variant: VariantRecord
    package: Path

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.variant.name}"

    def identity(self, model: str) -> dict[str, str]:
        return {"model": model, "stage": self.stage, "variant": self.variant.name,
                "package_sha256": str(self.variant.package_sha256)}


def measurement_key(m: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two measurements the same one (a newer one replaces an older one)."""
    return (m["stage"], m["variant"], m["package_sha256"], m["backend"], m["setting"],
            (m.get("environment") or {}).get("device"))


def upstream_records(root: Path) -> dict[str, StageRecord]:
    """Every earlier stage's record (everything but the benchmark's own)."""
    return {k: v for k, v in load_stage_records(root).items() if k != STAGE}


class BenchmarkRun(DownstreamRun):
    """Stage 05's steps, in the notebook's order: ``host_peak``, ``run``, ``five_axis_rows``,
    ``write_swift_benchmark``, ``latency_estimate``, then ``finish()``; ``snapshot()`` is what the views show."""

    stage = STAGE

    def __init__(self, cfg: BenchmarkConfig) -> None:
        super().__init__(cfg)
        self.cfg: BenchmarkConfig = cfg
        self.bcfg = cfg.bench_config()
        self.records = upstream_records(self.model_dir)
        self.targets = self._targets()
        self.settings, self.skipped = bench.plan_settings(cfg.backends, cfg.compute_units, cfg.torch_devices,
                                                          cfg.torch_threads)
        self.lineage.update(lineage_of(self.model_dir, [self.model_dir / f"{s}.json" for s in self.records]
                                       + [t.package for t in self.targets]))
        self.measurements: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []
        self.peaks: dict[str, dict[str, Any]] = {}
        self.flops: dict[str, float] = {}
        self.ratios: list[dict[str, Any]] = []
        self.swift: dict[str, Any] | None = None
        self.estimate: dict[str, Any] | None = None

    def _targets(self) -> list[Target]:
        # Core ML packages only: a Core AI model (target "coreai") runs in Apple's Core AI runtime, which stage 02
        # already timed as a host-interpreter figure that is never ranked
        found = [Target(stage, v, v.package_path(self.model_dir)) for stage, rec in self.records.items()
                 for v in rec.variants if v.package and v.package_sha256 and v.target == "coreml"
                 and v.package_path(self.model_dir).exists()]
        if not self.cfg.variants:
            return found[:SMOKE.bench_packages] if self.cfg.smoke else found
        chosen = []
        for name in self.cfg.variants:
            match = [t for t in found if name in (t.key, t.variant.name)]
            if not match:
                raise ConfigError(f"variants: no variant {name!r} in {self.model_dir}; the variants are "
                                  f"{[t.key for t in found]}")
            chosen += [t for t in match if t not in chosen]
        return chosen

    # ---- the work
    def host_peak(self) -> dict[str, dict[str, Any]]:
        """The host's best float32 matmul GFLOP/s for every thread count a host setting uses (measured again after
        the run; the higher of the two is kept: it is the least disturbed)."""
        counts = sorted({s.threads or 1 for s in self.settings if s.backend != "coreml" and s.device == "cpu"})
        wanted = {str(n): (n, "cpu") for n in counts}
        if any(s.device == "cuda" for s in self.settings):
            wanted["cuda"] = (1, "cuda")
        for key, (n, device) in wanted.items():
            found = bench.matmul_peak_gflops(n, self.cfg.matmul(), device=device)
            self.peaks[key] = bench.best_peak(*[p for p in (self.peaks.get(key), found) if p is not None])
        return self.peaks

    def inputs_for(self, target: Target) -> dict[str, np.ndarray]:
        """One batch-1 input per package input: the first test image (normalised, or as pixels for an image
        input) where the shape is the dataset's, else a fixed standard-normal tensor."""
        image = self.dataset.test.images[:1]
        out = {}
        for spec in bench.input_specs(target.variant.io):
            if spec.get("type") == "imageType":
                out[spec["name"]] = image.astype(np.float32).reshape(spec["shape"])
            elif tuple(spec["shape"]) == tuple(self.dataset.input_shape):
                out[spec["name"]] = self.dataset.to_tensor(image).numpy()
            else:
                out[spec["name"]] = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
        return out

    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        """Time every target with every setting (a failure is recorded with its message, never a number), then
        compare each variant's latency with ``compare_to``'s; returns this run's measurements."""
        from tqdm.auto import tqdm

        if not self.peaks:
            self.host_peak()
        jobs = [(t, s) for t in self.targets for s in self.settings]
        for target, setting in tqdm(jobs, desc="benchmark", disable=not progress):
            inputs = self.inputs_for(target)
            if target.key not in self.flops:
                self.flops[target.key] = bench.count_flops(target.package, inputs)
            peak = self.peaks.get("cuda" if setting.device == "cuda" else str(setting.threads or 1), {}).get("gflops")
            try:
                m = bench.bench_package(target.package, setting, inputs, self.bcfg, target.identity(self.cfg.model),
                                        self.flops[target.key], peak)
            except Exception as exc:  # noqa: BLE001 - e.g. an op CUDA cannot run: recorded, not hidden
                self.failures.append({"target": target.key, "setting": setting.label,
                                      "error": f"{type(exc).__name__}: {exc}"})
                continue
            self.measurements = [x for x in self.measurements if measurement_key(x) != measurement_key(m)] + [m]
        self.host_peak()
        for m in self.measurements:  # against the best peak seen, before or after
            setting = bench.Setting(m["backend"], m["compute_units"], m["device"],
                                    m["threads"] if isinstance(m["threads"], int) else None)
            peak = self.peaks.get("cuda" if setting.device == "cuda" else str(setting.threads or 1), {}).get("gflops")
            m["work"] = bench.work_block(self.flops.get(f"{m['stage']}/{m['variant']}"), m["latency"]["median"],
                                         peak, setting)
        self.ratios = self.comparisons()
        return self.measurements

    def comparisons(self) -> list[dict[str, Any]]:
        """Each variant's median latency over ``compare_to``'s in the same setting, with a bootstrap interval."""
        out = []
        by_setting: dict[str, dict[str, dict[str, Any]]] = {}
        for m in self.measurements:
            by_setting.setdefault(m["setting"], {})[f"{m['stage']}/{m['variant']}"] = m
        for setting, found in by_setting.items():
            ref = next((m for k, m in found.items() if k.split("/", 1)[1] == self.cfg.compare_to), None)
            if ref is None:
                continue
            for key, m in found.items():
                if m is ref:
                    continue
                r = bench.ratio_of_medians(m["latency"]["samples"], ref["latency"]["samples"], self.cfg.resamples())
                out.append({"variant": key, "setting": setting, "vs": self.cfg.compare_to, **r})
        return out

    def five_axis_rows(self) -> list[dict[str, Any]]:
        """Every earlier variant with its best-provenance latency (device > host > reference) and where it comes
        from: what the report's table shows."""
        records = {**self.records, STAGE: self._record_view()}
        best = best_latencies(records)
        rows = []
        for rec in self.records.values():
            for v in rec.variants:
                b = with_best_latency(v, best)
                prov = b.provenance.get("latency") or {}
                rows.append({"stage": v.stage, "variant": v.name, "top1": v.top1, "size_mb": v.size_mb,
                             "latency_ms": b.latency_ms, "latency_p90_ms": b.latency_p90_ms, "fps": b.fps,
                             "latency_from": f"{prov.get('tier', 'reference')}: {prov.get('setting') or prov.get('runtime')}",
                             "memory_mb": v.peak_memory_mb, "energy_mj": v.energy_mj})
        return rows

    # ---- device numbers from elsewhere
    def write_swift_benchmark(self) -> Path:
        """``benchmark/ios/PlaybookBenchmark.swift`` and ``copy_models.sh``, generated from the packages' real I/O."""
        folder = self.out_dir / "ios"
        targets = [{"stage": t.stage, "variant": t.variant.name, "package_sha256": t.variant.package_sha256,
                    "package": t.variant.package, "io": t.variant.io} for t in self.targets]
        path = atomic_write_text(folder / SWIFT_FILE, swift_benchmark(self.cfg.model, targets))
        atomic_write_text(folder / "copy_models.sh", copy_script(targets))
        self.swift = {"path": relative(path, self.model_dir), "copy_script": relative(folder / "copy_models.sh",
                                                                                      self.model_dir),
                      "targets": len(targets), "instructions": [s.replace("<model>", self.cfg.model)
                                                                for s in INSTRUCTIONS]}
        return path

    def latency_estimate(self) -> dict[str, Any]:
        """Whether a latency estimate for Apple devices is shown: only if its leave-one-out error is known and at
        most 30%.  The simplest estimate (one GFLOP/s constant) is tested on the published points."""
        loo = bench.single_rate_loo()
        error = loo["median_error"]
        self.estimate = {
            "shown": False, "threshold": 0.30, "single_rate": loo,
            "why": (f"no estimate: one GFLOP/s constant fitted on the published Core ML latencies has a leave-one-out "
                    f"median error of {error:.0%} (threshold 30%); a per-op-class fit needs per-op-class work of each "
                    "published model, which this playbook cannot compute offline for them, and two points cannot fit "
                    "three features")}
        return self.estimate

    def _previous(self) -> StageRecord | None:
        """The benchmark record before this run: the live one, or the one the pipeline moved to ``.stale/`` when an
        earlier stage re-ran (its imported measurements of packages that did not change are still valid)."""
        for folder in (self.model_dir, self.model_dir / ".stale"):
            try:
                return read_stage_record(folder, STAGE)
            except RecordError:
                continue
        return None

    def carried_imports(self) -> list[dict[str, Any]]:
        """Imported measurements of the previous record whose package is still one of the current variants'."""
        previous = self._previous()
        if previous is None:
            return []
        current = {(v.stage, v.name, v.package_sha256) for rec in self.records.values() for v in rec.variants}
        return [m for m in previous.get("measurements") or [] if (m.get("provenance") or {}).get("source") ==
                "imported" and (m.get("stage"), m.get("variant"), m.get("package_sha256")) in current]

    def _previous_imports(self) -> list[dict[str, Any]]:
        previous = self._previous()
        return list(previous.get("imports") or []) if previous is not None else []

    def _record_view(self) -> StageRecord:
        return StageRecord(stage=STAGE, model=self.cfg.model, config={}, environment={}, run={}, reproduce="",
                           details={"measurements": [*self.carried_imports(), *self.measurements]})

    def collect_pitfalls(self) -> None:
        noisy = [m for m in self.measurements if m["latency"]["p90"] > 2 * m["latency"]["median"]]
        if noisy:
            worst = max(noisy, key=lambda m: m["latency"]["p90"] / m["latency"]["median"])
            lat = worst["latency"]
            self.add_pitfall(
                f"noisy timings: {len(noisy)} of {len(self.measurements)} measurements have p90 above twice the median",
                f"worst: {worst['variant']} with {worst['setting']}, p90 {lat['p90']:.3f} ms vs median "
                f"{lat['median']:.3f} ms (CV {lat['cv']:.2f}); other work shared this machine while it ran: compare "
                "medians only, and re-run on a quiet machine before trusting differences of a few percent")
        multi = [m for m in self.measurements if m["backend"] == "torch" and m["device"] == "cpu"
                 and isinstance(m["threads"], int) and m["threads"] > 1]
        for m in multi:
            one = next((x for x in self.measurements if x["variant"] == m["variant"] and x["stage"] == m["stage"]
                        and x["backend"] == "torch" and x["threads"] == 1), None)
            if one is not None and m["latency"]["median"] > one["latency"]["median"]:
                self.add_pitfall("more threads were slower on this host",
                                 f"{m['variant']}: {m['threads']} threads {m['latency']['median']:.3f} ms vs 1 thread "
                                 f"{one['latency']['median']:.3f} ms median: "
                                 + ((m["latency"].get("contention") or {}).get("note") or
                                    "on a machine whose cores other work may share, such a gap includes that "
                                    "interference; until it is measured again on a quiet machine it says nothing "
                                    "about what threads cost"))
                break
        for f in self.failures:
            self.add_pitfall(f"{f['target']} could not run with {f['setting']}", f["error"])
        reasons: dict[str, list[str]] = {}
        for s in self.skipped:
            reasons.setdefault(s["why"], []).append(s["setting"])
        for why, settings in reasons.items():
            self.add_pitfall(f"{', '.join(settings)}: not measured here", why)

    def details(self) -> dict[str, Any]:
        carried = self.carried_imports()
        measurements = [*carried, *self.measurements]
        if self.estimate is None:
            self.latency_estimate()
        return {
            "dataset": self.dataset.summary(),
            "reference_variant": self.reference.name,
            "targets": [{"stage": t.stage, "variant": t.variant.name, "package": t.variant.package,
                         "package_sha256": t.variant.package_sha256, "size_mb": t.variant.size_mb}
                        for t in self.targets],
            "settings": [s.to_dict() for s in self.settings], "skipped": self.skipped, "failures": self.failures,
            "bench_config": self.bcfg.to_dict(), "host_peak": self.peaks, "flops": self.flops,
            "measurements": measurements, "comparisons": self.ratios,
            "imports": [i for i in self._previous_imports() if any(
                (m.get("provenance") or {}).get("file_sha256") == i["file_sha256"] for m in carried)],
            "swift_benchmark": self.swift, "latency_estimate": self.estimate,
            "results_file": f"{STAGE}/{RESULTS_FILE}",
        }

    def finish(self) -> StageRecord:
        self.collect_pitfalls()
        if self.swift is None:
            self.write_swift_benchmark()
        record = super().finish()
        write_json(self.out_dir / RESULTS_FILE, bench.results_document(self.cfg.model, self.measurements))
        return record


def run_benchmark(cfg: BenchmarkConfig, progress: bool = False) -> StageRecord:
    """The whole stage without the notebook: host peak, every target x setting, Swift benchmark, the record."""
    run = BenchmarkRun(cfg)
    run.host_peak()
    run.run(progress=progress)
    run.write_swift_benchmark()
    run.latency_estimate()
    return run.finish()
