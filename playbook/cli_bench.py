"""The work of ``playbook bench`` and ``playbook import-bench`` (part of the command-line layer, beside ``cli``).

``run_bench`` runs stage 05 without its notebook (e.g. on a Mac, where ``coreml`` runs) and copies out the portable
results file; ``import_results`` validates such a file (from ``playbook bench --out``, a Mac, or
``PlaybookBenchmark.swift``) against ``playbook.bench_schema`` and merges its measurements into the model's
``benchmark.json`` through the one record writer, ``records.write_stage_record``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from playbook.bench_schema import BenchResultsError, validate_results
from playbook.env import environment, playbook_version
from playbook.paths import default_reports_root, model_dir
from playbook.records import (RecordError, StageRecord, lineage_of, load_stage_records, read_json, read_stage_record,
                              write_json, write_stage_record)
from playbook.stages.benchmark import (RESULTS_FILE, STAGE, BenchmarkConfig, measurement_key, run_benchmark,
                                       upstream_records)


def run_bench(model: str, reports_dir: str | None, smoke: bool, params: dict[str, Any], out: str | None,
              progress: bool = True) -> Path:
    """``playbook bench``: run stage 05 without its notebook and write the record; ``out`` also gets the portable
    results file for ``playbook import-bench`` elsewhere.  Returns where the results file is."""
    values = {"model": model, "smoke": smoke, **params}
    if reports_dir:
        values["reports_dir"] = str(reports_dir)
    cfg = BenchmarkConfig.from_dict(values)
    run_benchmark(cfg, progress=progress)
    results = cfg.model_dir() / STAGE / RESULTS_FILE
    if out:
        write_json(Path(out), read_json(results))
        return Path(out)
    return results


def import_results(path: Path | str, model: str, reports_dir: str | Path | None = None) -> dict[str, Any]:
    """Validate a results file and merge its measurements into ``reports/<model>/benchmark.json`` with their device,
    OS and provenance; returns the import's summary (file, hash, producer, count, devices, OS).

    Refused as a whole (``BenchResultsError``, nothing written) when the file is not valid JSON, misses fields,
    states a unit, backend or energy source it cannot know, names another model, or measured a package that is
    not one of this model's current variants (the message names the other model when the hash is found there).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchResultsError(f"cannot read results file {path}: {exc}") from exc
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchResultsError(f"{path} is refused, nothing was imported: not valid JSON ({exc})") from exc
    validate_results(document, str(path))
    if document["model"] != model:
        raise BenchResultsError(f"{path} is refused, nothing was imported: it holds measurements of model "
                                f"{document['model']!r}, not {model!r}")
    reports_root = Path(reports_dir) if reports_dir else default_reports_root()
    root = model_dir(model, reports_root)
    records = upstream_records(root) if root.is_dir() else {}
    if "baseline" not in records:
        raise RecordError(f"{root / 'baseline.json'} does not exist: run the model's stages before importing "
                          "device results for it")
    problems = _problems(document["measurements"], records, reports_root, model)
    if problems:
        raise BenchResultsError(f"{path} is refused, nothing was imported: " + "; ".join(problems[:8]))
    file_sha = hashlib.sha256(raw).hexdigest()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    provenance = {"source": "imported", "file": path.name, "file_sha256": file_sha, "imported_at": now,
                  "produced_by": document["produced_by"]}
    incoming = [{**m, "provenance": provenance} for m in document["measurements"]]
    record = _benchmark_record(root, model, records)
    keys = {measurement_key(m) for m in incoming}
    kept = [m for m in record.details.get("measurements") or [] if measurement_key(m) not in keys]
    record.details["measurements"] = kept + incoming
    summary = {"file": path.name, "file_sha256": file_sha, "imported_at": now, "produced_by": document["produced_by"],
               "n": len(incoming), "devices": sorted({m["environment"]["device"] for m in incoming}),
               "os": sorted({m["environment"]["os"] for m in incoming})}
    record.details["imports"] = [i for i in record.details.get("imports") or [] if i["file_sha256"] != file_sha] + [
        summary]
    write_stage_record(root, record)
    return summary


def _problems(measurements: list[dict[str, Any]], records: dict[str, StageRecord], reports_root: Path,
              model: str) -> list[str]:
    """Why each measurement cannot be this model's: a package hash none of its current variants has (naming the
    other model whose variant has it), or a hash that belongs to another of its variants than the one named."""
    variants = {v.package_sha256: v for rec in records.values() for v in rec.variants if v.package_sha256}
    problems = []
    for i, m in enumerate(measurements):
        v = variants.get(m["package_sha256"])
        if v is None:
            owner = _find_owner(m["package_sha256"], reports_root, model)
            problems.append(f"measurements[{i}] ({m['stage']}/{m['variant']}) measured package "
                            f"{m['package_sha256'][:12]}…, which is none of {model!r}'s current packages"
                            + (f"; it is {owner}'s" if owner else " (another model's, or an older export)"))
        elif (v.stage, v.name) != (m["stage"], m["variant"]):
            problems.append(f"measurements[{i}] says {m['stage']}/{m['variant']} but its package hash is "
                            f"{v.stage}/{v.name}'s")
    return problems


def _find_owner(sha: str, reports_root: Path, model: str) -> str | None:
    """Which other model's variant (in the same reports folder) has a package with this hash."""
    if not reports_root.is_dir():
        return None
    for folder in sorted(p for p in reports_root.iterdir() if p.is_dir() and p.name != model):
        try:
            records = load_stage_records(folder)
        except (RecordError, ValueError):
            continue
        for rec in records.values():
            for v in rec.variants:
                if v.package_sha256 == sha:
                    return f"model {rec.model!r}, variant {v.stage}/{v.name}"
    return None


def _benchmark_record(root: Path, model: str, records: dict[str, StageRecord]) -> StageRecord:
    """The model's benchmark record, or a new one that holds only imported measurements."""
    try:
        return read_stage_record(root, STAGE)
    except RecordError:
        pass
    cfg = BenchmarkConfig(model=model, smoke=records["baseline"].smoke, reports_dir=str(root.parent))
    command = cfg.run_command()
    return StageRecord(stage=STAGE, model=model, config=cfg.to_dict(), environment=environment(),
                       run=command.to_dict(), reproduce=command.shell(),
                       lineage=lineage_of(root, [root / f"{s}.json" for s in records]), variants=[],
                       details={"measurements": [], "imports": [], "created_by": "playbook import-bench",
                                "note": "stage 05 has not run here: this record holds imported measurements only"},
                       playbook_version=playbook_version())
