"""The one schema every benchmark measurement follows, wherever it was made.

A *measurement* is one package timed with one backend in one setting (``playbook.bench``); a *results file*
is what ``playbook bench --out``, a Mac, or the generated Swift benchmark on an iPhone writes, and what
``playbook import-bench`` reads::

    {"format": "playbook-benchmark-results", "schema_version": 1, "model": "resnet",
     "produced_by": "playbook bench 0.1.0" | "PlaybookBenchmark.swift", "measurements": [MEASUREMENT, ...]}

The JSON Schema (Draft 2020-12, checked with the ``jsonschema`` package) fixes every field, its unit and
its type; ``check_measurement`` adds what a schema cannot say: the tier follows from the backend, the
summary statistics are those of the raw samples, an energy counter exists on the OS that claims it, an
iPhone runs Core ML only.  Rule for every block with a ``measured`` flag: ``measured: false`` carries a
reason (``why``) and *no number* (the schema makes its values ``null``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from playbook.config import ConfigError

FORMAT = "playbook-benchmark-results"
SCHEMA_VERSION = 1
# backend -> where its figures sit in the provenance order (device > host > reference)
TIERS = {"coreml": "device", "torch": "host", "reference": "reference"}
TIER_ORDER = ("device", "host", "reference")
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
STOP_REASONS = ("stable", "max_runs", "max_seconds")
ENERGY_SOURCES = {"RAPL": ("Linux",), "NVML": ("Linux", "Windows"), "powermetrics": ("Darwin", "macOS")}
SHA256 = "^[0-9a-f]{64}$"

_NUM = {"type": "number"}
_POS = {"type": "number", "exclusiveMinimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_NULL = {"type": "null"}
_TEXT = {"type": "string", "minLength": 1}


def _flagged(unit: str | None, numbers: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None,
             required: Iterable[str] = ()) -> dict[str, Any]:
    """A block with ``measured``: when true its ``numbers`` are numbers, when false they are null and ``why`` says
    why.  ``unit`` (when given) must be stated and be exactly that unit."""
    props: dict[str, Any] = {"measured": {"type": "boolean"}, "why": {"type": "string"},
                             "what": {"type": "string"}, **{k: {} for k in numbers}, **(extra or {})}
    req = ["measured", *required]
    if unit is not None:
        props["unit"] = {"const": unit}
        req.append("unit")
    return {
        "type": "object", "required": req, "properties": props, "additionalProperties": False,
        "if": {"properties": {"measured": {"const": False}}},
        "then": {"required": ["why"], "properties": {"why": _TEXT, **{k: _NULL for k in numbers}}},
        "else": {"required": list(numbers), "properties": dict(numbers)},
    }


MEASUREMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "stage", "variant", "package_sha256", "backend", "tier", "setting", "compute_units",
                 "threads", "batch", "inputs", "environment", "load", "first_prediction", "latency", "memory",
                 "energy", "compute_plan", "timestamp"],
    "properties": {
        "model": _TEXT,
        "stage": _TEXT,
        "variant": _TEXT,
        "package_sha256": {"type": "string", "pattern": SHA256},
        "backend": {"enum": list(TIERS)},
        "tier": {"enum": list(TIER_ORDER)},
        "setting": _TEXT,
        "compute_units": {"enum": [*COMPUTE_UNITS, None]},
        "threads": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "runtime"}]},
        "device": {"type": "string"},
        "batch": {"const": 1},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape"],
            "properties": {"name": _TEXT, "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                           "dtype": {"type": "string"}, "type": {"type": "string"}}}},
        "environment": {
            "type": "object", "required": ["device", "os", "versions"],
            "properties": {"device": _TEXT, "os": _TEXT, "system": {"type": "string"},
                           "versions": {"type": "object", "minProperties": 1,
                                        "additionalProperties": {"type": ["string", "null"]}},
                           "cpu": {"type": "string"}, "cpu_count": {"type": ["integer", "null"]},
                           "machine": {"type": "string"}, "host": {"type": "string"}}},
        "load": _flagged("ms", {"first": _NONNEG, "cached": _NONNEG}),
        "first_prediction": _flagged("ms", {"value": _NONNEG}),
        "latency": {
            "type": "object", "additionalProperties": False,
            "required": ["unit", "median", "p90", "p99", "mean", "cv", "fps", "runs", "warmup", "stopped", "samples"],
            "properties": {
                "unit": {"const": "ms"}, "median": _POS, "p90": _POS, "p99": _POS, "mean": _POS, "cv": _NONNEG,
                "fps": _POS, "runs": {"type": "integer", "minimum": 1}, "warmup": {"type": "integer", "minimum": 0},
                "stopped": {"enum": list(STOP_REASONS)}, "seconds": _NONNEG,
                "samples": {"type": "array", "minItems": 1, "items": _POS},
                # what the harness saw of other work while it timed (bench.Contention), optional
                "contention": {"type": "object", "properties": {
                    "busy": {"type": "boolean"}, "attempts": {"type": "integer", "minimum": 1},
                    "note": {"type": "string"}}}}},
        "memory": _flagged("MB", {"peak": _NONNEG}),
        "energy": _flagged("J", {"per_inference": _NONNEG, "mah_per_inference": _NONNEG},
                           {"battery_voltage_v": _POS, "source": {"enum": [*ENERGY_SOURCES, None]}}),
        "compute_plan": _flagged(None, {"ops_total": {"type": "integer", "minimum": 0},
                                        "ops_by_device": {"type": "object",
                                                          "additionalProperties": {"type": "integer"}},
                                        "cost_by_device": {"type": "object", "additionalProperties": _NUM}}),
        "work": _flagged(None, {"flops": _NONNEG, "achieved_gflops": _NONNEG, "peak_gflops": _POS,
                                "share_of_peak": _NONNEG}),
        "provenance": {"type": "object", "required": ["source"], "properties": {
            "source": {"enum": ["measured here", "imported"]}, "file": {"type": "string"},
            "file_sha256": {"type": "string", "pattern": SHA256}, "imported_at": {"type": "string"},
            "produced_by": {"type": "string"}}},
        "timestamp": _TEXT,
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "schema_version", "model", "produced_by", "measurements"],
    "properties": {
        "format": {"const": FORMAT},
        "schema_version": {"const": SCHEMA_VERSION},
        "model": _TEXT,
        "produced_by": _TEXT,
        "measurements": {"type": "array", "minItems": 1, "items": MEASUREMENT_SCHEMA},
    },
}


class BenchResultsError(ConfigError):
    """A results file or a measurement does not follow the schema; the message names every problem found."""


def _where(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(top level)"


def schema_problems(document: Any, schema: dict[str, Any] = RESULTS_SCHEMA) -> list[str]:
    """Every JSON Schema violation of ``document``, as ``path: message`` (empty: valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    def text(e: Any) -> str:
        got = f" (got {e.instance!r})" if e.validator in ("const", "enum") and len(repr(e.instance)) < 60 else ""
        return f"{_where(e)}: {e.message}{got}" if not e.message.startswith(repr(e.instance)) else \
            f"{_where(e)}: {e.message}"

    return [text(e) for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


# a batch-1 prediction takes at least a microsecond and less than an hour; outside that a file holds a unit error,
# an overflow or a made-up figure, which would sit on the Pareto chart as "0.000 ms"
MIN_LATENCY_MS = 1e-3
MAX_LATENCY_MS = 3.6e6


def _implausible_latencies(lat: dict[str, Any]) -> list[str]:
    """``latency.KEY=VALUE`` for every latency figure (median, p90, p99, mean, samples) that is not finite or lies
    outside [MIN_LATENCY_MS, MAX_LATENCY_MS]."""
    out = []
    items = [(k, lat.get(k)) for k in ("median", "p90", "p99", "mean")]
    items += [(f"samples[{i}]", v) for i, v in enumerate(lat.get("samples") or [])]
    for key, value in items:
        if is_number(value) and not (math.isfinite(value) and MIN_LATENCY_MS <= value <= MAX_LATENCY_MS):
            out.append(f"latency.{key}={value!r}")
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def check_measurement(m: dict[str, Any], where: str = "measurement") -> list[str]:
    """What the schema cannot check: consistency of backend, tier, setting, statistics and energy source."""
    out = []
    backend = m.get("backend")
    if TIERS.get(backend) != m.get("tier"):
        out.append(f"{where}: backend {backend!r} measures {TIERS.get(backend)!r} figures, not {m.get('tier')!r}")
    if backend == "coreml" and m.get("compute_units") is None:
        out.append(f"{where}: a coreml measurement must state its compute_units ({list(COMPUTE_UNITS)})")
    if backend != "coreml" and m.get("compute_units") is not None:
        out.append(f"{where}: compute_units={m.get('compute_units')!r} is a Core ML setting; backend {backend!r} "
                   "cannot know it")
    if backend != "coreml" and m.get("threads") == "runtime":
        out.append(f"{where}: backend {backend!r} pins its threads; state the count, not 'runtime'")
    env = m.get("environment") or {}
    os_name = str(env.get("os", ""))
    if os_name.split(" ")[0] in ("iOS", "iPadOS", "watchOS", "tvOS", "visionOS") and backend != "coreml":
        out.append(f"{where}: a measurement on {os_name!r} can only come from Core ML, not backend {backend!r}")
    lat = m.get("latency") or {}
    samples = lat.get("samples") or []
    implausible = _implausible_latencies(lat)
    if implausible:
        out.append(f"{where}: implausible latency {', '.join(implausible[:4])}: every latency must be a finite "
                   f"number of milliseconds from {MIN_LATENCY_MS:g} (1 µs) to {MAX_LATENCY_MS:g} (one hour)")
    elif samples and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in samples):
        arr = np.asarray(samples, dtype=np.float64)
        if lat.get("runs") != len(arr):
            out.append(f"{where}: latency.runs={lat.get('runs')} but {len(arr)} samples")
        for key, value in (("median", float(np.median(arr))), ("p90", float(np.percentile(arr, 90))),
                           ("p99", float(np.percentile(arr, 99))), ("mean", float(arr.mean()))):
            stated = lat.get(key)
            if isinstance(stated, (int, float)) and not _close(float(stated), value):
                out.append(f"{where}: latency.{key}={stated} is not the {key} of its samples ({value:.6g})")
    energy = m.get("energy") or {}
    source = energy.get("source")
    if energy.get("measured") and source is None:
        out.append(f"{where}: energy is marked measured but names no source ({list(ENERGY_SOURCES)})")
    if source in ENERGY_SOURCES:
        system = str(env.get("system") or os_name.split(" ")[0])
        if system not in ENERGY_SOURCES[source]:
            out.append(f"{where}: energy source {source!r} does not exist on {system!r} (it exists on "
                       f"{list(ENERGY_SOURCES[source])})")
        if source == "NVML" and "cuda" not in str(m.get("setting", "")):
            out.append(f"{where}: NVML measures an NVIDIA GPU; setting {m.get('setting')!r} ran on no GPU")
    if energy.get("measured") and energy.get("per_inference") is not None and energy.get("battery_voltage_v"):
        expected = energy["per_inference"] / (energy["battery_voltage_v"] * 3.6)
        if energy.get("mah_per_inference") is not None and not _close(energy["mah_per_inference"], expected):
            out.append(f"{where}: energy.mah_per_inference is not per_inference / (3.6 x battery_voltage_v)")
    return out


def validate_measurement(m: dict[str, Any]) -> dict[str, Any]:
    """Raise ``BenchResultsError`` unless ``m`` is a valid measurement; returns it."""
    problems = [f"measurement.{p}" for p in schema_problems(m, MEASUREMENT_SCHEMA)] or check_measurement(m)
    if problems:
        raise BenchResultsError("invalid benchmark measurement: " + "; ".join(problems[:8]))
    return m


def validate_results(document: Any, source: str = "results file") -> dict[str, Any]:
    """Raise ``BenchResultsError`` naming every problem unless ``document`` is a valid results file."""
    if not isinstance(document, dict):
        raise BenchResultsError(f"{source}: a results file is a JSON object with format {FORMAT!r}, not "
                                f"{type(document).__name__}")
    if document.get("format") != FORMAT:
        raise BenchResultsError(f"{source}: format is {document.get('format')!r}, expected {FORMAT!r} (written by "
                                "`playbook bench --out` or the generated PlaybookBenchmark.swift)")
    problems = schema_problems(document)
    if not problems:
        for i, m in enumerate(document["measurements"]):
            problems += check_measurement(m, f"measurements[{i}]")
            if m.get("model") != document.get("model"):
                problems.append(f"measurements[{i}]: model {m.get('model')!r} differs from the file's "
                                f"{document.get('model')!r}")
    if problems:
        more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
        raise BenchResultsError(f"{source} is refused, nothing was imported: " + "; ".join(problems[:12]) + more)
    return document


def is_number(value: Any) -> bool:
    """A real number (``bool`` is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unmeasured_numbers(value: Any, path: str = "") -> list[str]:
    """Paths of numbers found inside any block marked ``measured: false`` (empty: nothing unmeasured is a number)."""
    out: list[str] = []
    if isinstance(value, dict):
        if value.get("measured") is False:
            out += [f"{path}.{k}" for k, v in value.items() if is_number(v) or (
                isinstance(v, (dict, list)) and _has_number(v))]
        for k, v in value.items():
            out += unmeasured_numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += unmeasured_numbers(v, f"{path}[{i}]")
    return out


def _has_number(value: Any) -> bool:
    if is_number(value):
        return True
    if isinstance(value, dict):
        return any(_has_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_number(v) for v in value)
    return False
