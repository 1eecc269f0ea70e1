"""Measurement records: one JSON file per stage under ``reports/<model>/``.

Every stage writes ``reports/<model>/<stage>.json`` with the same envelope::

    {"schema": 1, "stage": "baseline", "model": "resnet", "config": {...},
     "config_fingerprint": "...", "environment": {...}, "reproduce": "...",
     "variants": [VariantRecord, ...], "pitfalls": [{"title": ..., "detail": ...}],
     ... stage-specific keys ...}

The report reads these files, never notebook outputs.  Writes are atomic (temp file +
rename) so an interrupted run never leaves a record that looks complete.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from playbook.config import ConfigError

SCHEMA_VERSION = 1
STAGES = ("baseline", "quantization", "distillation", "architecture", "benchmark")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def model_slug(model: str) -> str:
    """A file-system-safe folder name for a model name (factories may contain ':' and '/')."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", model).strip("_.")
    if not slug:
        raise ConfigError(f"model name {model!r} gives an empty report folder name")
    return slug


def default_reports_root() -> Path:
    """``$PLAYBOOK_REPORTS_DIR`` or ``<repo>/reports``."""
    env = os.environ.get("PLAYBOOK_REPORTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "reports"


def report_dir(model: str, reports_root: Path | str | None = None) -> Path:
    """``reports/<model>/`` (created)."""
    root = Path(reports_root) if reports_root else default_reports_root()
    path = root / model_slug(model)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
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
    return atomic_write_text(path, json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"record {path} does not exist; run the stage that writes it first") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"record {path} is not valid JSON ({exc}); re-run the stage that writes it") from exc


def write_stage_record(model_dir: Path, stage: str, record: dict[str, Any]) -> Path:
    """Write ``<model_dir>/<stage>.json`` with the common envelope checked."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; valid stages are {list(STAGES)}")
    missing = [k for k in ("model", "config", "environment", "reproduce", "variants") if k not in record]
    if missing:
        raise ValueError(f"stage record {stage!r} lacks {missing}")
    return write_json(Path(model_dir) / f"{stage}.json", {"schema": SCHEMA_VERSION, "stage": stage, **record})


def load_stage_records(model_dir: Path) -> dict[str, dict[str, Any]]:
    """All stage records that exist under ``model_dir``, keyed by stage, in pipeline order."""
    out = {}
    for stage in STAGES:
        path = Path(model_dir) / f"{stage}.json"
        if path.exists():
            out[stage] = read_json(path)
    return out


def all_variants(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every variant of every stage record, each tagged with its stage."""
    return [{**v, "stage": stage} for stage, rec in records.items() for v in rec.get("variants", [])]
