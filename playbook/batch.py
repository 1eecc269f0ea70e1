"""Batches: many models from a YAML file, each in its own ``playbook run`` process.

``run_batch`` runs them ``jobs`` at a time on this machine; one model failing never stops the others, and its
``report.html`` is a failure page with the log's tail.  ``reports/index.html`` is refreshed as each finishes.
"""
from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from playbook.config import ConfigError
from playbook.paths import model_slug, notebooks_dir, repository_root
from playbook.pipeline import LOG_TAIL_LINES, RunOutcome, RunSpec, plan, record_failure
from playbook.records import read_json
from playbook.report import pages


BATCH_ENTRY_KEYS = ("model", "dataset", "smoke", "params", "budget")


def load_batch(path: Path) -> list[dict[str, Any]]:
    """Read a batch file: a list of ``{model, dataset?, smoke?, params?, budget?}``, or a mapping with
    ``models:`` (that list) and ``defaults:`` (the same keys but ``model``).  Entries may be plain model names."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"batch file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"batch file {path} is not valid YAML: {exc}") from exc
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"models", "defaults"})
        if extra:
            raise ConfigError(f"batch file {path}: unknown top-level key(s) {extra}; use 'models' and 'defaults'")
        defaults = doc.get("defaults") or {}
        doc = doc.get("models")
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f"batch file {path} must hold a non-empty list of models (or 'models:' with one)")
    if not isinstance(defaults, dict):
        raise ConfigError(f"batch file {path}: 'defaults' must be a mapping")
    bad = sorted(set(defaults) - set(BATCH_ENTRY_KEYS[1:]))
    if bad:
        raise ConfigError(f"batch file {path}: unknown defaults key(s) {bad}; valid: {list(BATCH_ENTRY_KEYS[1:])}")
    entries = []
    for i, item in enumerate(doc):
        item = {"model": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "model" not in item:
            raise ConfigError(f"batch file {path}: entry {i + 1} must be a model name or a mapping with 'model'")
        bad = sorted(set(item) - set(BATCH_ENTRY_KEYS))
        if bad:
            raise ConfigError(f"batch file {path}: entry {i + 1} ({item['model']!r}) has unknown key(s) {bad}; "
                              f"valid: {list(BATCH_ENTRY_KEYS)}")
        for key in ("params", "budget"):
            for source in (defaults, item):
                if source.get(key) is not None and not isinstance(source.get(key), dict):
                    raise ConfigError(f"batch file {path}: {key!r} must be a mapping of name: value")
        entries.append({"model": str(item["model"]), "dataset": item.get("dataset", defaults.get("dataset")),
                        "smoke": bool(item.get("smoke", defaults.get("smoke", False))),
                        "params": {**(defaults.get("params") or {}), **(item.get("params") or {})},
                        "budget": {**(defaults.get("budget") or {}), **(item.get("budget") or {})}})
    slugs = collections.Counter(model_slug(e["model"]) for e in entries)
    dupes = sorted(s for s, n in slugs.items() if n > 1)
    if dupes:
        raise ConfigError(f"batch file {path}: models {dupes} appear more than once (each model has one report "
                          "folder); run variants of one model in separate --reports-dir")
    return entries


def child_argv(spec: RunSpec) -> list[str]:
    """The ``playbook run`` process a batch starts for one model (reports folder explicit, no index refresh)."""
    extra = ["--no-index"]
    if Path(spec.notebooks_dir).resolve() != notebooks_dir().resolve():
        extra += ["--notebooks-dir", str(spec.notebooks_dir)]
    cmd = spec.command.replace(reports_dir=str(Path(spec.reports_root).resolve()))
    return cmd.argv(program=(sys.executable, "-m", "playbook"), extra=extra)


def run_batch(specs: list[RunSpec], jobs: int = 2, reports_root: Path | None = None,
              say: Callable[[str], None] | None = None) -> list[RunOutcome]:
    """Run every spec in its own ``playbook run`` process, ``jobs`` at a time; failures are isolated."""
    lock = threading.Lock()
    root = Path(reports_root or specs[0].reports_root).resolve()
    t_start = time.monotonic()

    def out(msg: str) -> None:
        with lock:
            (say or (lambda m: print(m, flush=True)))(msg)

    outcomes: dict[str, RunOutcome] = {}
    runnable = []
    for spec in specs:
        try:
            plan(spec)
            runnable.append(spec)
        except ConfigError as exc:
            error = f"{type(exc).__name__}: {exc}"
            page = record_failure(spec.model_dir, spec.model, error, spec.command.shell(), stage="validation",
                                  log_tail_text=f"(not run)\n{error}")
            outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], error, "validation")
            out(f"[{spec.model}] FAILED before running: {error}")
    total = len(specs)

    def one(spec: RunSpec) -> RunOutcome:
        model_dir = spec.model_dir
        launched = time.time()
        t0 = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root_dir = repository_root()
        if root_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in [str(root_dir), env.get("PYTHONPATH", "")] if p)
        proc = subprocess.Popen(child_argv(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=os.getcwd())
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            out(line if line.startswith(f"[{spec.model}]") else f"[{spec.model}] {line}")
        rc = proc.wait()
        status = {}
        with contextlib.suppress(Exception):
            status = read_json(model_dir / pages.RUN_STATUS)
        fresh = bool(status) and float(status.get("started_epoch", 0)) >= launched - 1
        seconds = time.monotonic() - t0
        if rc == 0 and fresh and status.get("status") == "ok":
            outcome = RunOutcome(spec.model, True, model_dir / pages.REPORT_HTML, [], [], seconds=seconds)
        else:
            error = (status.get("error") if fresh else None) or f"playbook run exited with status {rc}"
            stage = status.get("failed_stage") if fresh else None
            if not (fresh and status.get("status") in ("failed", "interrupted")):
                # the child died before it could write its own failure page (bad arguments, crash, killed)
                record_failure(model_dir, spec.model, error, spec.command.shell(), stage=stage,
                               log_tail_text="\n".join(tail))
            outcome = RunOutcome(spec.model, False, model_dir / pages.REPORT_HTML, [], [], error, stage, seconds)
        with lock:
            outcomes[spec.model] = outcome
            done = len(outcomes)
        with contextlib.suppress(Exception):
            pages.write_index(root)
        out(f"[batch] {done}/{total} done: {spec.model} {'ok' if outcome.ok else 'FAILED'} in {seconds:.0f}s "
            f"(batch {time.monotonic() - t_start:.0f}s)")
        return outcome

    def guarded(spec: RunSpec) -> RunOutcome:
        try:
            return one(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. the process could not be started: isolate it
            error = f"{type(exc).__name__}: {exc}"
            page = record_failure(spec.model_dir, spec.model, error, spec.command.shell(), log_tail_text=error)
            with lock:
                outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], error)
            out(f"[{spec.model}] FAILED: {error}")
            return outcomes[spec.model]

    if runnable:
        out(f"[batch] {len(runnable)} model(s) to run, {max(1, jobs)} at a time; reports in {root}")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(guarded, runnable))
    pages.write_index(root)
    return [outcomes[s.model] for s in specs]
