"""Measurement records: one JSON file per stage under ``reports/<model>/``, one variant type for all.

Every stage writes ``reports/<model>/<stage>.json`` (``write_stage_record``) as a ``StageRecord``::

    {"schema": 2, "stage": "quantization", "model": "resnet", "playbook_version": "...",
     "config": {...}, "environment": {...}, "run": {RunCommand}, "reproduce": "python -m playbook run ...",
     "lineage": {"baseline.json": "<sha256>", "baseline/fp32.mlpackage": "<sha256>"},
     "warnings": [...], "pitfalls": [{"title": ..., "detail": ...}],
     ... stage-specific keys ...,
     "variants": [VariantRecord, ...]}

``lineage`` names the hash of every upstream record and package the stage was computed from:
``stale_inputs`` recomputes them, so a record whose inputs changed since it was written is
detected (and the report refuses to mix it with the new ones).  Package paths inside records
are relative to the model's folder, so a reports folder can be moved or archived whole.

The report reads these files, never notebook outputs.  Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from playbook.config import ConfigError
from playbook.metrics import Fidelity, PairedComparison
from playbook.stages import STAGE_NAMES, VARIANT_STAGES

SCHEMA_VERSION = 2


# --------------------------------------------------------------------------- JSON and atomic files
def jsonable(value: Any) -> Any:
    """``value`` with dataclasses, paths, numpy scalars/arrays and non-finite floats made JSON-safe."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (a temp file in the same folder, then ``os.replace``), world-readable
    as the umask allows (``mkstemp`` alone makes 0600 files, but records and reports are meant to be shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (see ``atomic_write_text``)."""
    return atomic_write_text(path, json.dumps(jsonable(payload), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"record {path} does not exist; run the stage that writes it first") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"record {path} is not valid JSON ({exc}); re-run the stage that writes it") from exc


# --------------------------------------------------------------------------- hashes (lineage)
def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a folder (every file's relative path and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path} does not exist")
    for f in files:
        if f != path:
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def relative(path: Path | str, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it (records stay movable), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def lineage_of(root: Path, paths: list[Path]) -> dict[str, str]:
    """``{relative path: sha256}`` of the upstream records and packages a stage reads."""
    return {relative(p, root): sha256_path(Path(p)) for p in paths}


# --------------------------------------------------------------------------- the variant record
_DERIVED_KEYS = ("size_mb", "zip_mb")
# What a variant is: a Core ML package (.mlpackage) or a Core AI model (.aimodel, iOS / macOS 27+).
VARIANT_TARGETS = ("coreml", "coreai")
COREAI_MIN_OS = 27


@dataclasses.dataclass
class VariantRecord:
    """One measured package (or, for an imported device benchmark, one measured configuration).

    Every stage produces these through ``stages.common.StageRun.measure``; the report reads them.
    ``None`` means *not measured*; ``provenance[axis]`` says how each figure was obtained or why
    it is missing.  ``extra`` holds stage-specific facts (recipe, technique, deployment target...),
    written at the top level of the variant's JSON.  ``target`` is what the variant is: a Core ML package
    (``"coreml"``, an ``.mlpackage``; the default, so older records read unchanged) or a Core AI model (``"coreai"``,
    an ``.aimodel``, which loads only on iOS / macOS 27 or later).
    """

    name: str
    stage: str
    description: str = ""
    package: str | None = None
    package_sha256: str | None = None
    size_bytes: int | None = None
    zip_bytes: int | None = None
    top1: float | None = None
    top5: float | None = None
    top1_ci: tuple[float, float] | None = None
    n_test: int | None = None
    reference: str | None = None
    vs_reference: PairedComparison | None = None
    fidelity: Fidelity | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    fps: float | None = None
    latency: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_memory_mb: float | None = None
    energy_mj: float | None = None
    op_histogram: dict[str, int] = dataclasses.field(default_factory=dict)
    io: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    measure_seconds: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    target: str = "coreml"

    # ---- derived
    @property
    def size_mb(self) -> float | None:
        return None if self.size_bytes is None else self.size_bytes / 1e6

    @property
    def zip_mb(self) -> float | None:
        return None if self.zip_bytes is None else self.zip_bytes / 1e6

    @property
    def delta_top1(self) -> float | None:
        """Top-1 change against the reference (variant minus reference, points); ``None`` without one."""
        return self.vs_reference.delta_top1 if self.vs_reference is not None else None

    def package_path(self, root: Path) -> Path | None:
        """The package's absolute path, given the model folder the record lives in."""
        return None if not self.package else (Path(root) / self.package)

    def get(self, key: str, default: Any = None) -> Any:
        """A stage-specific value from ``extra`` (``variant.get("recipe")``)."""
        return self.extra.get(key, default)

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
            if f.name == "zip_bytes":
                out["size_mb"], out["zip_mb"] = self.size_mb, self.zip_mb
        clash = sorted(set(self.extra) & set(out))
        if clash:
            raise ValueError(f"variant {self.name!r}: extra keys {clash} shadow record fields")
        return jsonable({**out, **self.extra})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VariantRecord":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names and k not in _DERIVED_KEYS}
        if known.get("target") is None:
            known.pop("target", None)
        if "name" not in known or "stage" not in known:
            raise ValueError(f"a variant record needs 'name' and 'stage'; got keys {sorted(values)}")
        if isinstance(known.get("vs_reference"), dict):
            known["vs_reference"] = PairedComparison.from_dict(known["vs_reference"])
        if isinstance(known.get("fidelity"), dict):
            known["fidelity"] = Fidelity.from_dict(known["fidelity"])
        if isinstance(known.get("top1_ci"), list):
            known["top1_ci"] = tuple(known["top1_ci"])
        return cls(**known, extra=extra)


# --------------------------------------------------------------------------- the stage record
_ENVELOPE = ("schema", "stage", "model", "playbook_version", "config", "environment", "run", "reproduce", "lineage",
             "warnings", "pitfalls", "variants")


@dataclasses.dataclass
class StageRecord:
    """What one stage wrote: its config, environment, command, lineage, variants, pitfalls and details."""

    stage: str
    model: str
    config: dict[str, Any]
    environment: dict[str, Any]
    run: dict[str, Any]
    reproduce: str
    lineage: dict[str, str] = dataclasses.field(default_factory=dict)
    variants: list[VariantRecord] = dataclasses.field(default_factory=list)
    pitfalls: list[dict[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    playbook_version: str = ""
    schema: int = SCHEMA_VERSION

    def __getitem__(self, key: str) -> Any:
        """``record["dataset"]``: an envelope field or a stage-specific detail."""
        if key in _ENVELOPE:
            return getattr(self, key)
        return self.details[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def variant(self, name: str) -> VariantRecord | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def smoke(self) -> bool:
        return bool(self.config.get("smoke"))

    def to_dict(self) -> dict[str, Any]:
        clash = sorted(set(self.details) & set(_ENVELOPE))
        if clash:
            raise ValueError(f"stage {self.stage!r}: detail keys {clash} shadow the record envelope")
        head = {"schema": self.schema, "stage": self.stage, "model": self.model,
                "playbook_version": self.playbook_version, "config": self.config, "environment": self.environment,
                "run": self.run, "reproduce": self.reproduce, "lineage": self.lineage, "warnings": self.warnings,
                "pitfalls": self.pitfalls}
        return jsonable({**head, **self.details, "variants": [v.to_dict() for v in self.variants]})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StageRecord":
        schema = values.get("schema")
        if schema != SCHEMA_VERSION:
            raise RecordError(f"record of stage {values.get('stage')!r} has schema {schema!r}; this playbook reads "
                              f"schema {SCHEMA_VERSION}: re-run that stage")
        missing = [k for k in ("stage", "model", "config", "environment", "run", "variants") if k not in values]
        if missing:
            raise RecordError(f"record of stage {values.get('stage')!r} lacks {missing}")
        return cls(stage=values["stage"], model=values["model"], config=dict(values["config"]),
                   environment=dict(values["environment"]), run=dict(values["run"]),
                   reproduce=str(values.get("reproduce", "")), lineage=dict(values.get("lineage") or {}),
                   variants=[VariantRecord.from_dict(v) for v in values["variants"]],
                   pitfalls=list(values.get("pitfalls") or []), warnings=list(values.get("warnings") or []),
                   details={k: v for k, v in values.items() if k not in _ENVELOPE},
                   playbook_version=str(values.get("playbook_version", "")), schema=schema)


class RecordError(ConfigError):
    """A stage record is missing, unreadable, of another schema, or stale."""


def record_path(root: Path, stage: str) -> Path:
    """``<model folder>/<stage>.json``."""
    if stage not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {stage!r}; valid stages are {list(STAGE_NAMES)}")
    return Path(root) / f"{stage}.json"


def write_stage_record(root: Path, record: StageRecord) -> Path:
    """Write ``<root>/<stage>.json`` atomically."""
    if record.stage not in VARIANT_STAGES:
        raise ConfigError(f"unknown stage {record.stage!r}; stages with records are {list(VARIANT_STAGES)}")
    for v in record.variants:
        if v.stage != record.stage:
            raise ValueError(f"variant {v.name!r} says stage {v.stage!r} inside the {record.stage!r} record")
    return write_json(record_path(root, record.stage), record)


REPORT_SUMMARY_FILE = "report.json"
REPORT_SUMMARY_KEYS = ("stage", "model", "playbook_version", "config", "smoke", "stages", "recommended", "budgets",
                       "objective", "pages", "environment", "reproduce")


def write_report_summary(root: Path, summary: dict[str, Any]) -> Path:
    """Write ``<root>/report.json``, the report stage's summary (what ``index.html`` lists), atomically, through the
    same writer as every stage record: the schema version stamped here, the keys the index reads checked."""
    missing = [k for k in REPORT_SUMMARY_KEYS if k not in summary]
    if missing or summary.get("stage") != "report":
        raise ValueError(f"a report summary needs stage='report' and the keys {list(REPORT_SUMMARY_KEYS)}; "
                         f"missing: {missing}")
    return write_json(Path(root) / REPORT_SUMMARY_FILE, {"schema": SCHEMA_VERSION, **summary})


def read_stage_record(root: Path, stage: str) -> StageRecord:
    """Read ``<root>/<stage>.json`` (``RecordError`` when missing, malformed or of another schema)."""
    path = record_path(root, stage)
    if not path.exists():
        raise RecordError(f"{path} does not exist: run stage {stage} first")
    try:
        return StageRecord.from_dict(read_json(path))
    except ValueError as exc:
        raise RecordError(str(exc)) from exc


def load_stage_records(root: Path) -> dict[str, StageRecord]:
    """Every stage record under ``root``, keyed by stage, in pipeline order."""
    return {stage: read_stage_record(root, stage) for stage in VARIANT_STAGES
            if (Path(root) / f"{stage}.json").exists()}


def stale_inputs(root: Path, record: StageRecord) -> list[str]:
    """The lineage entries of ``record`` that changed or vanished since it was written (empty: fresh)."""
    out = []
    for rel, digest in record.lineage.items():
        path = Path(rel) if Path(rel).is_absolute() else Path(root) / rel
        try:
            current = sha256_path(path)
        except FileNotFoundError:
            out.append(f"{rel} (missing)")
            continue
        if current != digest:
            out.append(f"{rel} (changed)")
    return out


def changed_packages(root: Path, record: StageRecord) -> list[str]:
    """The packages ``record`` names whose bytes no longer hash to the ``package_sha256`` it recorded (a package
    rewritten by an interrupted run, or damaged on disk); missing ones are ``missing_outputs``' business."""
    out = []
    for v in record.variants:
        if not v.package or not v.package_sha256:
            continue
        path = Path(root) / v.package
        if path.exists() and cached_sha256(path) != v.package_sha256:
            out.append(v.package)
    return out


_HASHES: dict[tuple[Any, ...], str] = {}


def cached_sha256(path: Path) -> str:
    """``sha256_path``, remembered for as long as no file of ``path`` changes its size, mtime or inode (a plan and
    the run after it check the same packages)."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    try:
        key = (str(path), *((str(f), st.st_size, st.st_mtime_ns, st.st_ino) for f in files for st in [f.stat()]))
    except OSError:
        return sha256_path(path)
    if key not in _HASHES:
        if len(_HASHES) > 4096:
            _HASHES.clear()
        _HASHES[key] = sha256_path(path)
    return _HASHES[key]


def recorded_sha256(package: Path) -> tuple[str, Path] | None:
    """The ``package_sha256`` a stage record in the package's model folder holds for ``package`` (and that record's
    path), or ``None`` when no record names it: packages live at ``<model folder>/<stage>/<name>.mlpackage``."""
    package = Path(package).resolve()
    for root in list(package.parents)[1:3]:
        for stage in VARIANT_STAGES:
            path = Path(root) / f"{stage}.json"
            try:
                stat = path.stat()
            except OSError:
                continue
            for name, digest in _recorded_packages(str(path), stat.st_mtime_ns, stat.st_size):
                if (Path(root) / name).resolve() == package:
                    return digest, path
    return None


@functools.lru_cache(maxsize=64)
def _recorded_packages(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    """``(package, package_sha256)`` of every variant a record file names, parsed once per version of the file (the
    prediction interface asks for every package it loads: hundreds of probes in stage 02)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return ()
    return tuple((str(v["package"]), str(v["package_sha256"])) for v in values.get("variants") or []
                 if isinstance(v, dict) and v.get("package") and v.get("package_sha256"))


def verify_package(package: Path) -> None:
    """Raise ``RecordError`` when a stage record names ``package`` with a hash its bytes no longer have: predictions
    from a damaged or half-rewritten package would be silently wrong.  Nothing is checked when no record names it."""
    known = recorded_sha256(package)
    if known is None:
        return
    digest, record = known
    if cached_sha256(Path(package)) != digest:
        raise RecordError(f"{package} is not the package {record} measured (its SHA-256 changed: damaged on disk, or "
                          f"rewritten by an interrupted run); re-run {_stage_stem(record.stem)}, the stage that makes it")


def _stage_stem(stage: str) -> str:
    from playbook.stages import get_stage

    try:
        return get_stage(stage).stem
    except ConfigError:
        return stage


def missing_outputs(root: Path, record: StageRecord) -> list[str]:
    """The packages ``record`` names that are no longer on disk."""
    return [v.package for v in record.variants if v.package and not (Path(root) / v.package).exists()]


def all_variants(records: dict[str, StageRecord]) -> list[VariantRecord]:
    """Every variant of every stage record, in pipeline order."""
    return [v for rec in records.values() for v in rec.variants]
