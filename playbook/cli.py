"""The ``playbook`` command: run the stage notebooks for one model or a batch, and render the reports.

::

    playbook run --model resnet [--dataset digits] [--smoke] [-p epochs=3 lr=0.05] \\
                 [--budget top1_drop=0.5 size_mb=1 latency_ms=5] [--stages 01,06] [--reports-dir DIR] [--force]
    playbook batch models.yaml [--jobs 2] [--reports-dir DIR] [--stages 01,06] [--force]
    playbook list-models
    playbook list-params

``run`` executes the stage notebooks that exist (01 ... 06) in order through papermill, keeps each
executed notebook under ``reports/<model>/notebooks/``, converts the executed report notebook to
``reports/<model>/report.html`` and refreshes ``reports/index.html``.  Everything is checked before
anything runs: the model name, and every ``-p``/``--budget`` name against the parameters the
selected notebooks declare (papermill itself only warns about unknown names).  A stage whose
notebook, parameters and upstream records are unchanged since its last successful run is skipped
(``reports/<model>/<stage>.stamp.json``) unless ``--force``.

``batch`` runs ``run`` for many models, ``--jobs`` at a time, each in its own process; one model
failing never stops the others, and its ``report.html`` is a failure page with the log's tail.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from playbook.config import ConfigError
from playbook.notebooks import (NOTEBOOKS_DIR, is_up_to_date, notebook_parameters, parse_value, run_command,
                                select_stages, stage_fingerprint, stage_name, stage_notebooks, upstream_hashes,
                                write_stamp)
from playbook.records import STAGES, default_reports_root, model_slug, read_json, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
RESERVED = ("model", "dataset", "smoke", "reports_dir")
BUDGET_PREFIX = "max_"
LOG_TAIL_LINES = 40
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunFailed(RuntimeError):
    """A stage failed; the model's report page is a failure page."""


# --------------------------------------------------------------------------- parsing
def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """``["epochs=3", "lr=0.05"]`` -> ``{"epochs": 3, "lr": 0.05}``; a malformed item raises ``ConfigError``."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ConfigError(f"{option} {item!r} must look like name=value (a Python identifier, '=', a value)")
        if name in out:
            raise ConfigError(f"{option} gives {name!r} twice")
        out[name] = parse_value(value)
    return out


def budget_parameters(budget: dict[str, Any]) -> dict[str, Any]:
    """``{"top1_drop": 0.5}`` -> ``{"max_top1_drop": 0.5}`` (names already starting ``max_`` are kept)."""
    return {(k if k.startswith(BUDGET_PREFIX) else BUDGET_PREFIX + k): v for k, v in budget.items()}


# --------------------------------------------------------------------------- validation
def validate_model(name: str) -> None:
    """Raise ``ModelError`` (with the valid names) unless ``name`` is a registered model, ``torchvision:NAME``
    or an importable factory ``module:function`` / ``file.py:function``.  Nothing is built or trained."""
    from playbook import models

    if not isinstance(name, str) or not name.strip():
        raise models.ModelError(f"model name {name!r} is empty; valid models are {models.available_models()}")
    if models.model_entry(name) is not None:
        return
    if name.startswith("torchvision:"):
        tv = models._torchvision()
        if tv is None:
            raise models.ModelError(f"{name!r} needs torchvision, which is not importable here; valid models are "
                                    f"{models.available_models()}")
        if getattr(tv.models, name.split(":", 1)[1], None) is None:
            raise models.ModelError(f"torchvision has no model {name.split(':', 1)[1]!r}")
        return
    if ":" in name:
        try:
            models._load_factory(name)
        except models.ModelError:
            raise
        except Exception as exc:  # the user's file failed to import (syntax error, missing package, ...)
            raise models.ModelError(f"cannot load model factory {name!r}: {type(exc).__name__}: {exc}") from exc
        return
    # create_model's own message lists the valid names; it fails before building anything for an unknown name.
    models.create_model(name, num_classes=2, in_channels=1, image_size=8)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list, tuple)}


def _check_type(notebook: str, name: str, value: Any, type_name: str) -> None:
    expected = _TYPES.get(type_name)
    if expected is None:
        return
    if isinstance(value, bool) and type_name in ("int", "float"):
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got a bool")
    if not isinstance(value, expected):
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got "
                          f"{type(value).__name__} (quote strings only if they contain spaces: -p {name}=text)")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One model's run: what to run and with which parameters."""

    model: str
    dataset: str | None = None
    smoke: bool = False
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)  # notebook names: max_top1_drop, ...
    stages: str | None = None
    force: bool = False
    reports_root: Path = dataclasses.field(default_factory=default_reports_root)
    notebooks_dir: Path = NOTEBOOKS_DIR
    update_index: bool = True
    verbose: bool = False

    @property
    def model_dir(self) -> Path:
        return Path(self.reports_root).resolve() / model_slug(self.model)

    def command(self) -> str:
        """The ``playbook run`` command line for this spec."""
        extra: list[str] = []
        if self.budget:
            extra += ["--budget", *(f"{k[len(BUDGET_PREFIX):] if k.startswith(BUDGET_PREFIX) else k}={v!r}"
                                    for k, v in self.budget.items())]
        if Path(self.reports_root).resolve() != default_reports_root().resolve():
            extra += ["--reports-dir", str(self.reports_root)]
        if self.force:
            extra.append("--force")
        return run_command(self.model, self.dataset or "", self.smoke, self.params, self.stages or "", extra)


def declared_parameters(spec: RunSpec) -> dict[Path, dict[str, dict[str, Any]]]:
    """The selected stage notebooks and the parameters each declares."""
    notebooks = select_stages(spec.stages, stage_notebooks(Path(spec.notebooks_dir)))
    if not notebooks:
        raise ConfigError(f"no stage notebooks to run in {spec.notebooks_dir}")
    return {nb: notebook_parameters(nb) for nb in notebooks}


def check_parameter_names(spec: RunSpec, declared: dict[Path, dict[str, dict[str, Any]]]) -> None:
    """Raise ``ConfigError`` when a ``-p``/budget name is reserved or declared by none of the notebooks."""
    reserved = sorted(set(spec.params) & set(RESERVED))
    if reserved:
        raise ConfigError(f"-p {reserved}: use --model, --dataset, --smoke and --reports-dir for these")
    known = set().union(*(set(d) for d in declared.values()))
    unknown = sorted(set(spec.params) - known)
    bad_budget = sorted(set(spec.budget) - known)
    if unknown or bad_budget:
        by_nb = "; ".join(f"{nb.stem}: {', '.join(sorted(set(d) - set(RESERVED)))}" for nb, d in declared.items())
        budgets = sorted(k[len(BUDGET_PREFIX):] for k in known if k.startswith(BUDGET_PREFIX))
        what = []
        if unknown:
            what.append(f"parameter(s) {unknown}")
        if bad_budget:
            what.append(f"budget(s) {[b[len(BUDGET_PREFIX):] for b in bad_budget]}")
        raise ConfigError(f"no selected notebook declares {' or '.join(what)}; nothing was run. Parameters (-p): "
                          f"{by_nb}. Budgets (--budget NAME=VALUE): {budgets or 'none'}")


def plan(spec: RunSpec) -> list[tuple[Path, dict[str, Any]]]:
    """The selected notebooks, each with exactly the parameters it declares.

    Raises ``ConfigError`` before anything runs when a ``-p``/budget name is declared by none of
    the selected notebooks, when a value has the wrong type, or when no notebook is selected.
    """
    declared = declared_parameters(spec)
    check_parameter_names(spec, declared)
    user = {**spec.params, **spec.budget}
    core: dict[str, Any] = {"model": spec.model, "reports_dir": str(Path(spec.reports_root).resolve()),
                            "smoke": bool(spec.smoke)}
    if spec.dataset:
        core["dataset"] = spec.dataset
    out = []
    for nb, names in declared.items():
        params = {k: v for k, v in {**core, **user}.items() if k in names}
        for k, v in params.items():
            _check_type(nb.name, k, v, str(names[k].get("inferred_type_name", "")))
        out.append((nb, params))
    return out


# --------------------------------------------------------------------------- running one model
@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold ``reports/<model>/.lock`` for the run: a second concurrent run of the same model is refused."""
    model_dir.mkdir(parents=True, exist_ok=True)
    fh = open(model_dir / ".lock", "a+")
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as exc:
            raise RunFailed(f"another playbook run is using {model_dir} (its .lock is held); wait for it") from exc
        yield
    finally:
        fh.close()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """The last ``lines`` lines of a log file from byte ``start`` on (ANSI colours removed)."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(start)
            return _ANSI.sub("", "".join(collections.deque(fh, maxlen=lines)))
    except OSError:
        return ""


class _Heartbeat:
    """Prints ``[model] stage: running, 60s`` every ``interval`` seconds while a stage runs."""

    def __init__(self, say: Callable[[str], None], prefix: str, interval: float) -> None:
        self.say, self.prefix, self.interval = say, prefix, interval
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.say(f"{self.prefix}: still running, {time.monotonic() - self.start:.0f}s")

    def __enter__(self) -> "_Heartbeat":
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


class _Tee:
    """A write-only text file that writes to several files (the log, and the console with --verbose)."""

    def __init__(self, *files: Any) -> None:
        self.files = files

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()


@dataclasses.dataclass
class RunOutcome:
    model: str
    ok: bool
    report: Path
    ran: list[str]
    skipped: list[str]
    error: str | None = None
    failed_stage: str | None = None
    seconds: float = 0.0


def _move_stale_downstream(model_dir: Path, stage: str, selected: set[str], say: Callable[[str], None]) -> None:
    """After ``stage`` ran again, records of later stages that this run will not redo describe an old
    upstream: move them to ``.stale/`` so the report never mixes them with the new results."""
    if stage not in STAGES:
        return
    for later in STAGES[STAGES.index(stage) + 1:]:
        record = model_dir / f"{later}.json"
        if later in selected or not record.exists():
            continue
        stale = model_dir / ".stale"
        stale.mkdir(exist_ok=True)
        os.replace(record, stale / record.name)
        (model_dir / f"{later}.stamp.json").unlink(missing_ok=True)
        say(f"{later}.json was made from the previous {stage} results and is not re-run here: moved to .stale/")


def run_model(spec: RunSpec, steps: list[tuple[Path, dict[str, Any]]] | None = None,
              say: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the planned stages for one model; write its report (or failure page) and the index.

    Safe against interruption: executed notebooks and the HTML are made in ``reports/<model>/.run-tmp/``
    and moved into place; the previous ``report.html`` is deleted before the first stage that runs and
    the new one is moved in last, so a page that looks complete is always from a complete run.
    """
    from playbook import report
    from playbook.notebooks import execute

    steps = plan(spec) if steps is None else steps
    model_dir = spec.model_dir
    prefix = f"[{spec.model}]"
    start = time.monotonic()
    heartbeat = float(os.environ.get("PLAYBOOK_HEARTBEAT_S", "30"))

    log_path = model_dir / "run.log"
    with model_lock(model_dir):
        tmp = model_dir / ".run-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (model_dir / "notebooks").mkdir(exist_ok=True)
        log = open(log_path, "a", buffering=1, errors="replace")
        log_start = log.tell()  # the failure page shows this run's log only
        log.write(f"===== {_now()} {spec.command()}\n")

        def emit(msg: str) -> None:
            line = f"{prefix} {msg}"
            (say or (lambda m: print(m, flush=True)))(line)
            log.write(f"{_now()} {line}\n")

        status: dict[str, Any] = {"model": spec.model, "status": "running", "started": _now(),
                                  "started_epoch": time.time(), "command": spec.command(), "stages": []}
        write_json(model_dir / report.RUN_STATUS, status)
        emit(f"reports in {model_dir}; stages {', '.join(nb.stem for nb, _ in steps)}")
        selected = {stage_name(nb) for nb, _ in steps}
        ran: list[str] = []
        skipped: list[str] = []
        cleared = False
        current = None
        try:
            for nb, params in steps:
                stage = current = stage_name(nb)
                outputs = [model_dir / (report.REPORT_RECORD if stage == "report" else f"{stage}.json")]
                if stage == "report":
                    outputs.append(model_dir / report.REPORT_HTML)
                fingerprint = stage_fingerprint(nb, params, upstream_hashes(model_dir, stage))
                if not spec.force and is_up_to_date(model_dir, stage, fingerprint, outputs):
                    emit(f"{nb.stem}: up to date, skipped (same notebook, parameters and inputs; --force re-runs)")
                    skipped.append(nb.stem)
                    status["stages"].append({"stage": nb.stem, "status": "skipped"})
                    continue
                if not cleared:  # from here on the old report no longer describes the records
                    for stale in (report.REPORT_HTML, report.REPORT_RECORD, "report.stamp.json"):
                        (model_dir / stale).unlink(missing_ok=True)
                    cleared = True
                (model_dir / f"{stage}.stamp.json").unlink(missing_ok=True)
                emit(f"{nb.stem}: running")
                log.write(f"--- {nb.stem} parameters: {params!r}\n")
                t0 = time.monotonic()
                executed = tmp / nb.name
                try:
                    sink = _Tee(log, sys.stdout) if spec.verbose else log
                    with _Heartbeat(emit, nb.stem, heartbeat):
                        execute(nb, executed, params, cwd=Path.cwd(), stdout_file=sink, stderr_file=sink)
                finally:
                    if executed.exists():
                        os.replace(executed, model_dir / "notebooks" / nb.name)
                missing = [p.name for p in outputs if p.suffix == ".json" and not p.exists()]
                if missing:
                    raise RunFailed(f"{nb.stem} finished but did not write {missing}")
                if stage == "report":
                    html_tmp = report.export_html(model_dir / "notebooks" / nb.name, tmp / report.REPORT_HTML,
                                                  title=f"Core ML report: {spec.model}")
                    os.replace(html_tmp, model_dir / report.REPORT_HTML)
                seconds = time.monotonic() - t0
                write_stamp(model_dir, stage, fingerprint, params, nb, seconds)
                if stage != "report":
                    _move_stale_downstream(model_dir, stage, selected, emit)
                ran.append(nb.stem)
                status["stages"].append({"stage": nb.stem, "status": "ran", "seconds": round(seconds, 1)})
                emit(f"{nb.stem}: done in {seconds:.1f}s (total {time.monotonic() - start:.1f}s)")
            current = None
            html = model_dir / report.REPORT_HTML
            status.update(status="ok", finished=_now(), elapsed_s=round(time.monotonic() - start, 1))
            write_json(model_dir / report.RUN_STATUS, status)
            if html.exists():
                emit(f"report: {html} ({time.monotonic() - start:.1f}s)")
            else:  # the report stage was not selected and the records changed: nothing stale is left behind
                emit(f"done in {time.monotonic() - start:.1f}s; no report rendered (06_report was not among the "
                     "stages): add 06 to --stages to render it")
            return RunOutcome(spec.model, True, html, ran, skipped, seconds=time.monotonic() - start)
        except BaseException as exc:  # noqa: BLE001 - every failure, Ctrl-C included, leaves a failure page
            error = _describe_error(exc)
            interrupted = isinstance(exc, KeyboardInterrupt)
            log.write(f"--- {'interrupted' if interrupted else 'failed'}"
                      f"{' in ' + current if current else ''}: {error}\n")
            if getattr(exc, "traceback", None):
                log.write(_ANSI.sub("", "\n".join(exc.traceback)) + "\n")
            elif not isinstance(exc, (RunFailed, KeyboardInterrupt)):
                import traceback

                log.write("".join(traceback.format_exception(exc)))
            log.flush()
            failed_nb = next((nb.stem for nb, _ in steps if stage_name(nb) == current), current)
            status.update(status="interrupted" if interrupted else "failed", finished=_now(), error=error,
                          failed_stage=failed_nb, elapsed_s=round(time.monotonic() - start, 1))
            (model_dir / "report.stamp.json").unlink(missing_ok=True)
            tail = log_tail(log_path, start=log_start)
            executed_nb = f"notebooks/{failed_nb}.ipynb"
            page = report.write_failure_page(
                model_dir, spec.model, ("interrupted: " if interrupted else "") + error, tail, stage=failed_nb,
                completed=[s["stage"] for s in status["stages"]], command=spec.command(), log_file="run.log",
                notebook=executed_nb if failed_nb and (model_dir / executed_nb).exists() else None)
            status["log_tail"] = tail
            write_json(model_dir / report.RUN_STATUS, status)
            emit(f"{'INTERRUPTED' if interrupted else 'FAILED'}{' in ' + failed_nb if failed_nb else ''}: {error} "
                 f"(see {page})")
            if interrupted:
                raise
            return RunOutcome(spec.model, False, page, ran, skipped, error, failed_nb, time.monotonic() - start)
        finally:
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)
            if spec.update_index:
                with contextlib.suppress(Exception):
                    report.write_index(spec.reports_root)


def _describe_error(exc: BaseException) -> str:
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):
        return f"{exc.ename}: {_ANSI.sub('', str(exc.evalue))}"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunFailed) else str(exc)


# --------------------------------------------------------------------------- batch
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
        entry = {"model": str(item["model"]), "dataset": item.get("dataset", defaults.get("dataset")),
                 "smoke": bool(item.get("smoke", defaults.get("smoke", False))),
                 "params": {**(defaults.get("params") or {}), **(item.get("params") or {})},
                 "budget": {**(defaults.get("budget") or {}), **(item.get("budget") or {})}}
        entries.append(entry)
    slugs = collections.Counter(model_slug(e["model"]) for e in entries)
    dupes = sorted(s for s, n in slugs.items() if n > 1)
    if dupes:
        raise ConfigError(f"batch file {path}: models {dupes} appear more than once (each model has one report "
                          "folder); run variants of one model in separate --reports-dir")
    return entries


def _child_command(spec: RunSpec) -> list[str]:
    cmd = [sys.executable, "-m", "playbook", "run", "--model", spec.model, "--reports-dir",
           str(Path(spec.reports_root).resolve()), "--no-index"]
    if spec.dataset:
        cmd += ["--dataset", str(spec.dataset)]
    if spec.smoke:
        cmd.append("--smoke")
    for k, v in spec.params.items():
        cmd += ["-p", f"{k}={v!r}"]
    if spec.budget:
        cmd += ["--budget", *(f"{k}={v!r}" for k, v in spec.budget.items())]
    if spec.stages:
        cmd += ["--stages", spec.stages]
    if spec.force:
        cmd.append("--force")
    if Path(spec.notebooks_dir).resolve() != NOTEBOOKS_DIR.resolve():
        cmd += ["--notebooks-dir", str(spec.notebooks_dir)]
    return cmd


def run_batch(specs: list[RunSpec], jobs: int = 2, reports_root: Path | None = None,
              say: Callable[[str], None] | None = None) -> list[RunOutcome]:
    """Run every spec in its own ``playbook run`` process, ``jobs`` at a time; failures are isolated."""
    from playbook import report

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
            validate_model(spec.model)
            plan(spec)
            runnable.append(spec)
        except ConfigError as exc:
            model_dir = spec.model_dir
            model_dir.mkdir(parents=True, exist_ok=True)
            error = f"{type(exc).__name__}: {exc}"
            page = report.write_failure_page(model_dir, spec.model, error, f"(not run)\n{error}", stage="validation",
                                             command=spec.command())
            write_json(model_dir / report.RUN_STATUS, {"model": spec.model, "status": "failed", "error": error,
                                                       "failed_stage": "validation", "started": _now(),
                                                       "finished": _now(), "command": spec.command()})
            outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], error, "validation")
            out(f"[{spec.model}] FAILED before running: {error}")
    total = len(specs)

    def one(spec: RunSpec) -> RunOutcome:
        model_dir = spec.model_dir
        launched = time.time()
        t0 = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(_child_command(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=os.getcwd())
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            out(line if line.startswith(f"[{spec.model}]") else f"[{spec.model}] {line}")
        rc = proc.wait()
        status = {}
        with contextlib.suppress(Exception):
            status = read_json(model_dir / report.RUN_STATUS)
        fresh = bool(status) and float(status.get("started_epoch", 0)) >= launched - 1
        seconds = time.monotonic() - t0
        if rc == 0 and fresh and status.get("status") == "ok":
            outcome = RunOutcome(spec.model, True, model_dir / report.REPORT_HTML, [], [], seconds=seconds)
        else:
            error = (status.get("error") if fresh else None) or f"playbook run exited with status {rc}"
            stage = status.get("failed_stage") if fresh else None
            if not (fresh and status.get("status") in ("failed", "interrupted")):
                # the child died before it could write its own failure page (bad arguments, crash, killed)
                model_dir.mkdir(parents=True, exist_ok=True)
                report.write_failure_page(model_dir, spec.model, error, "\n".join(tail), stage=stage,
                                          command=spec.command())
                write_json(model_dir / report.RUN_STATUS, {"model": spec.model, "status": "failed", "error": error,
                                                           "failed_stage": stage, "finished": _now(),
                                                           "command": spec.command(), "log_tail": "\n".join(tail)})
            outcome = RunOutcome(spec.model, False, model_dir / report.REPORT_HTML, [], [], error, stage, seconds)
        with lock:
            outcomes[spec.model] = outcome
            done = len(outcomes)
        with contextlib.suppress(Exception):
            report.write_index(root)
        out(f"[batch] {done}/{total} done: {spec.model} {'ok' if outcome.ok else 'FAILED'} in {seconds:.0f}s "
            f"(batch {time.monotonic() - t_start:.0f}s)")
        return outcome

    def guarded(spec: RunSpec) -> RunOutcome:
        try:
            return one(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. the process could not be started: isolate it
            error = f"{type(exc).__name__}: {exc}"
            spec.model_dir.mkdir(parents=True, exist_ok=True)
            page = report.write_failure_page(spec.model_dir, spec.model, error, error, command=spec.command())
            write_json(spec.model_dir / report.RUN_STATUS, {"model": spec.model, "status": "failed", "error": error,
                                                            "finished": _now(), "command": spec.command()})
            with lock:
                outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], error)
            out(f"[{spec.model}] FAILED: {error}")
            return outcomes[spec.model]

    if runnable:
        out(f"[batch] {len(runnable)} model(s) to run, {max(1, jobs)} at a time; reports in {root}")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(guarded, runnable))
    report.write_index(root)
    return [outcomes[s.model] for s in specs]


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playbook", description="Core ML optimization playbook: train, export, "
                                     "compress and report, one notebook per stage.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reports-dir", type=Path, default=None,
                       help="folder for reports/<model>/ (default: $PLAYBOOK_REPORTS_DIR or the repository's reports/)")
        p.add_argument("--stages", default=None,
                       help="stages to run, e.g. 01,06 or baseline,report (default: every stage notebook that exists)")
        p.add_argument("--force", action="store_true", help="re-run stages even when their results are up to date")
        p.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)

    run = sub.add_parser("run", help="run the stage notebooks for one model and write its report")
    run.add_argument("--model", required=True, help="model name (playbook list-models), torchvision:NAME, "
                     "module:function or path/to/file.py:function")
    run.add_argument("--dataset", default=None, help="digits, fashion-mnist or imagefolder:PATH (default: 01's)")
    run.add_argument("--smoke", action="store_true", help="tiny data and one epoch: checks the pipeline quickly")
    run.add_argument("-p", "--param", dest="params", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                     help="notebook parameter; VALUE is a Python literal (3, 0.5, True, {'width': 16}) or text")
    run.add_argument("--budget", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                     help="report budget: top1_drop (points), size_mb, latency_ms (0 = no limit)")
    run.add_argument("-v", "--verbose", action="store_true", help="also print what the notebooks print")
    run.add_argument("--no-index", action="store_true", help=argparse.SUPPRESS)
    common(run)

    batch = sub.add_parser("batch", help="run many models from a YAML file, a few at a time")
    batch.add_argument("file", type=Path, help="YAML: a list of {model, dataset?, smoke?, params?, budget?}, "
                       "or {defaults: {...}, models: [...]}")
    batch.add_argument("--jobs", "-j", type=int, default=2, help="models run at once (default 2)")
    batch.add_argument("--smoke", action="store_true", help="smoke mode for every model")
    common(batch)

    sub.add_parser("list-models", help="the registered model names")
    lp = sub.add_parser("list-params", help="every notebook parameter, its type, default and meaning")
    lp.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    return parser


def _spec_from_args(args: argparse.Namespace) -> RunSpec:
    return RunSpec(model=args.model, dataset=args.dataset, smoke=args.smoke,
                   params=parse_assignments(args.params, "-p"),
                   budget=budget_parameters(parse_assignments(args.budget, "--budget")),
                   stages=args.stages, force=args.force,
                   reports_root=(args.reports_dir or default_reports_root()).resolve(),
                   notebooks_dir=args.notebooks_dir, update_index=not args.no_index, verbose=args.verbose)


def cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    validate_model(spec.model)
    steps = plan(spec)
    outcome = run_model(spec, steps)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def cmd_batch(args: argparse.Namespace) -> int:
    entries = load_batch(args.file)
    root = (args.reports_dir or default_reports_root()).resolve()
    specs = []
    for e in entries:
        specs.append(RunSpec(model=e["model"], dataset=e["dataset"], smoke=e["smoke"] or args.smoke,
                             params=dict(e["params"]), budget=budget_parameters(dict(e["budget"])),
                             stages=args.stages, force=args.force, reports_root=root,
                             notebooks_dir=args.notebooks_dir, update_index=False))
    # a misspelled parameter is the batch author's mistake, not one model's: refuse the batch before anything runs
    declared = declared_parameters(specs[0])
    for spec in specs:
        try:
            check_parameter_names(spec, declared)
        except ConfigError as exc:
            raise ConfigError(f"batch entry {spec.model!r}: {exc}") from exc
    outcomes = run_batch(specs, jobs=args.jobs, reports_root=root)
    width = max(len(o.model) for o in outcomes)
    print("\nbatch summary:")
    for o in outcomes:
        print(f"  {o.model:<{width}}  {'ok    ' if o.ok else 'FAILED'}  {o.report}"
              + (f"  ({o.error})" if o.error else ""))
    print(f"index: {root / 'index.html'}")
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_list_models(args: argparse.Namespace) -> int:
    from playbook import models

    for name in models.available_models():
        entry = models.model_entry(name)
        print(f"{name:<22} {entry.description if entry else 'any torchvision.models architecture'}")
    print(f"{'module:function':<22} your own factory (also path/to/file.py:function); called with num_classes, "
          "in_channels and, if it takes it, image_size")
    return EXIT_OK


def cmd_list_params(args: argparse.Namespace) -> int:
    for nb in stage_notebooks(Path(args.notebooks_dir)):
        print(f"{nb.stem}:")
        for name, info in notebook_parameters(nb).items():
            flag = {"model": "--model", "dataset": "--dataset", "smoke": "--smoke", "reports_dir": "--reports-dir"}.get(
                name, f"--budget {name[len(BUDGET_PREFIX):]}=" if name.startswith(BUDGET_PREFIX) else f"-p {name}=")
            print(f"  {name:<18} {info.get('inferred_type_name', ''):<6} = {info.get('default', ''):<16} "
                  f"[{flag}]  {info.get('help', '')}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``playbook`` and ``python -m playbook``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "batch": cmd_batch, "list-models": cmd_list_models, "list-params": cmd_list_params}
    try:
        return handlers[args.command](args)
    except (ConfigError, RunFailed) as exc:
        print(f"playbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("playbook: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
