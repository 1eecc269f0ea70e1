"""Running the stage notebooks for one model or a batch: the plan, the stamps, the run, the failure pages.

``plan`` checks everything before anything runs: the model name, every ``-p``/``--budget`` name against the
parameters the selected notebooks declare (papermill itself only warns about unknown names), each value's
type, and, for the playbook's own notebooks, every value through the stage's config class (dataset,
checkpoint path, recipe names, budget ranges...).  ``run_model`` executes the planned notebooks in order
through papermill, keeps each executed notebook under ``reports/<model>/notebooks/``, turns the executed
report notebook into ``report.html`` and refreshes ``reports/index.html``.  A stage whose notebook,
parameters, upstream records and playbook version are unchanged since its last successful run, and whose
outputs all still exist, is skipped (``reports/<model>/<stage>.stamp.json``) unless ``--force``.

Batches of models are ``playbook.batch``'s job.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from playbook.command import BUDGET_NAMES, RESERVED, RunCommand
from playbook.config import ConfigError
from playbook.env import playbook_version
from playbook.notebooks import batch_parameters, execute, notebook_parameters, notebook_source_hash, stage_notebooks
from playbook.paths import model_slug, notebooks_dir
from playbook.records import (StageRecord, missing_outputs, read_json, record_path, sha256_path, stale_inputs,
                              write_json)
from playbook.report import pages
from playbook.stages import STAGES, Stage, get_stage, upstream_of

LOG_TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunFailed(RuntimeError):
    """A stage failed; the model's report page is a failure page."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One model's run: the command, where reports go, which notebooks, and how to report progress."""

    command: RunCommand
    reports_root: Path
    notebooks_dir: Path = dataclasses.field(default_factory=notebooks_dir)
    update_index: bool = True
    verbose: bool = False

    @property
    def model(self) -> str:
        return self.command.model

    @property
    def model_dir(self) -> Path:
        return Path(self.reports_root).resolve() / model_slug(self.model)


@dataclasses.dataclass(frozen=True)
class Step:
    """One planned stage: its registry entry, its notebook and exactly the parameters the notebook declares."""

    stage: Stage
    notebook: Path
    params: dict[str, Any]


# --------------------------------------------------------------------------- the plan
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list, tuple)}


def _check_type(notebook: str, name: str, value: Any, type_name: str) -> None:
    expected = _TYPES.get(type_name)
    if expected is None:
        return
    if isinstance(value, bool) and type_name in ("int", "float"):
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got a bool")
    if not isinstance(value, expected):
        hint = ("; write numbers bare, e.g. -p epochs=8" if type_name in ("int", "float") else
                "; text needs no quotes unless it contains spaces" if type_name == "str" else "")
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got "
                          f"{type(value).__name__}{hint}")


def select_stages(spec: str, available: list[tuple[Stage, Path]]) -> list[tuple[Stage, Path]]:
    """The available stages named by ``spec`` ("01,06", "1,6", "baseline,report"; empty: all), in pipeline order."""
    if not spec:
        return list(available)
    chosen: set[str] = set()
    for item in (s.strip() for s in str(spec).split(",") if s.strip()):
        try:
            stage = get_stage(item)
        except ConfigError:
            stage = None
        if stage is None or all(stage.name != s.name for s, _ in available):
            valid = [f"{s.number} ({s.name})" for s, _ in available]
            raise ConfigError(f"--stages: no stage notebook matches {item!r}; the stages here are {valid}")
        chosen.add(stage.name)
    return [(s, p) for s, p in available if s.name in chosen]


def _validate_values(stage: Stage, notebook: Path, params: dict[str, Any], declared: dict[str, Any]) -> None:
    """Build the stage's config from the planned values when the notebook is one of the playbook's (its parameters
    are exactly the config's fields): every value is checked before anything runs."""
    try:
        config = stage.config_class()
    except (ImportError, AttributeError):
        return
    if set(declared) != set(config.field_names()):
        return
    try:
        config.from_dict(params)
    except ConfigError as exc:
        raise ConfigError(f"{notebook.stem}: {exc}") from None


def declared_parameters(spec: RunSpec) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The selected stages' notebooks and the parameters each declares, by stage name."""
    selected = select_stages(spec.command.stages, stage_notebooks(Path(spec.notebooks_dir)))
    if not selected:
        raise ConfigError(f"no stage notebooks to run in {spec.notebooks_dir}")
    return {stage.name: (path, notebook_parameters(path)) for stage, path in selected}


def check_parameter_names(cmd: RunCommand, declared: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    """Raise ``ConfigError`` when a ``-p``/``--budget`` name is declared by none of the selected notebooks."""
    known = set().union(*(set(names) for _, names in declared.values()))
    unknown = sorted(set(cmd.params) - known)
    bad_budget = sorted(set(cmd.budget) - known)
    if unknown or bad_budget:
        by_nb = "; ".join(f"{get_stage(s).stem}: {', '.join(sorted(set(d) - set(RESERVED) - set(BUDGET_NAMES)))}"
                          for s, (_, d) in declared.items())
        budgets = sorted(k for k in known if k in BUDGET_NAMES)
        what = [f"parameter(s) {unknown}"] if unknown else []
        what += [f"budget(s) {bad_budget}"] if bad_budget else []
        raise ConfigError(f"no selected notebook declares {' or '.join(what)}; nothing was run. Parameters (-p): "
                          f"{by_nb}. Budgets (--budget NAME=VALUE): {budgets or 'none of the selected stages'}")


def plan(spec: RunSpec) -> list[Step]:
    """The selected notebooks, each with exactly the parameters it declares, every value checked.

    Raises ``ConfigError`` before anything runs when the model name is unknown, a ``-p``/budget name is declared
    by none of the selected notebooks, a value has the wrong type or is invalid for its stage, or no notebook is
    selected.
    """
    from playbook.models import check_model_name

    cmd = spec.command
    check_model_name(cmd.model)
    check_reports_folder(Path(spec.reports_root))
    declared = declared_parameters(spec)
    check_parameter_names(cmd, declared)
    core: dict[str, Any] = {"model": cmd.model, "smoke": bool(cmd.smoke)}
    if cmd.dataset:
        core["dataset"] = cmd.dataset
    steps = []
    for name, (path, names) in declared.items():
        stage = get_stage(name)
        batch = batch_parameters(names, spec.reports_root.resolve(), smoke=False)
        params = {k: v for k, v in {**core, **cmd.params, **cmd.budget, **batch}.items() if k in names}
        for k, v in params.items():
            _check_type(path.name, k, v, str(names[k].get("inferred_type_name", "")))
        _validate_values(stage, path, params, names)
        steps.append(Step(stage, path, params))
    check_upstream(spec.model_dir, steps)
    return steps


def check_reports_folder(root: Path) -> None:
    """Raise ``ConfigError`` unless ``root`` is (or can be made) a writable folder: checked before anything runs."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"reports folder {root}: {probe} is a file, not a folder; choose another with --reports-dir")
    try:  # os.access says yes to root even on an immutable or read-only-mounted folder: try it
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"reports folder {root} is not writable ({probe}: {exc.strerror}); choose another with "
                          "--reports-dir") from None


def check_upstream(model_dir: Path, steps: list[Step]) -> None:
    """Raise ``ConfigError`` before anything runs when a selected stage needs a record this run will not make and
    that does not exist (02 without 01), or when the report would read records computed from inputs that have
    changed since (a stage interrupted after its upstream re-ran): naming them and the command that refreshes them.
    """
    selected = {s.stage.name for s in steps}
    needs_baseline = [s.stage.stem for s in steps if s.stage.name not in ("baseline", "report")]
    if needs_baseline and "baseline" not in selected and not record_path(model_dir, "baseline").exists():
        raise ConfigError(f"{', '.join(needs_baseline)} read(s) the baseline's record, and {model_dir / 'baseline.json'} "
                          "does not exist: add 01 to --stages (or run without --stages)")
    if "report" not in selected:
        return
    stale = {}
    for stage in STAGES:
        path = record_path(model_dir, stage.name) if stage.measures_variants else None
        if path is None or stage.name in selected or not path.exists():
            continue
        try:
            record = StageRecord.from_dict(read_json(path))
        except ValueError as exc:
            stale[stage] = [f"unreadable: {exc}"]
            continue
        problems = stale_inputs(model_dir, record)  # records whose upstream re-runs now are moved aside after it
        if problems:
            stale[stage] = problems
    if stale:
        names = "; ".join(f"{s.record} ({', '.join(p)})" for s, p in stale.items())
        numbers = sorted({s.number for s in stale} | {get_stage(n).number for n in selected})
        raise ConfigError(f"stale records in {model_dir}: {names}; the report would mix runs. Refresh them with "
                          f"`python -m playbook run --model {steps[0].params.get('model', '')} --stages "
                          f"{','.join(numbers)}` (or run every stage)")


# --------------------------------------------------------------------------- stamps
def stamp_path(model_dir: Path, stage: str) -> Path:
    """``reports/<model>/<stage>.stamp.json``: beside the stage's record."""
    return Path(model_dir) / f"{stage}.stamp.json"


def stage_outputs(model_dir: Path, stage: Stage) -> list[Path]:
    """The files a stage's success leaves: its record (and the report page for the report stage)."""
    if stage.name == "report":
        return [Path(model_dir) / pages.REPORT_RECORD, Path(model_dir) / pages.REPORT_HTML]
    return [record_path(model_dir, stage.name)]


def stage_fingerprint(step: Step, model_dir: Path) -> str:
    """Hash of what determines a stage's results: the notebook source, its parameters, the upstream records,
    and the playbook's version.  ``reports_dir`` and ``interactive`` are left out (they change no result)."""
    upstream = {s.name: sha256_path(record_path(model_dir, s.name)) for s in upstream_of(step.stage.name)
                if s.measures_variants and record_path(model_dir, s.name).exists()}
    payload = {"notebook": step.notebook.name, "source": notebook_source_hash(step.notebook),
               "params": {k: v for k, v in sorted(step.params.items()) if k not in ("reports_dir", "interactive")},
               "upstream": upstream, "playbook": playbook_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:20]


def is_up_to_date(model_dir: Path, step: Step, fingerprint: str) -> bool:
    """True when the stage's stamp has this fingerprint and every output it made (record, packages) still exists."""
    try:
        stamp = json.loads(stamp_path(model_dir, step.stage.name).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("fingerprint") != fingerprint or not all(p.exists() for p in stage_outputs(model_dir, step.stage)):
        return False
    if step.stage.measures_variants:
        try:
            record = StageRecord.from_dict(read_json(record_path(model_dir, step.stage.name)))
        except (OSError, ValueError):
            return False
        return not missing_outputs(model_dir, record)
    return True


def write_stamp(model_dir: Path, step: Step, fingerprint: str, seconds: float) -> Path:
    """Record that the stage finished with this fingerprint (written after its outputs, atomically)."""
    return write_json(stamp_path(model_dir, step.stage.name), {
        "stage": step.stage.name, "fingerprint": fingerprint, "notebook": step.notebook.name,
        "notebook_sha256": notebook_source_hash(step.notebook), "playbook_version": playbook_version(),
        "params": {k: repr(v) for k, v in step.params.items()}, "seconds": round(seconds, 2), "finished": _now()})


# --------------------------------------------------------------------------- running one model
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """The last ``lines`` lines of a log file from byte ``start`` on (ANSI colours removed)."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(start)
            return _ANSI.sub("", "".join(collections.deque(fh, maxlen=lines)))
    except OSError:
        return ""


def record_failure(model_dir: Path, model: str, error: str, command: str, *, stage: str | None = None,
                   completed: Sequence[str] = (), log_tail_text: str = "", interrupted: bool = False,
                   notebook: str | None = None, status: dict[str, Any] | None = None) -> Path:
    """The one way a failed or interrupted run is recorded: a FAILED page as ``report.html`` and ``run.json``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    page = pages.write_failure_page(model_dir, model, ("interrupted: " if interrupted else "") + error,
                                    log_tail_text, stage=stage, completed=completed, command=command,
                                    log_file="run.log" if (model_dir / "run.log").exists() else None,
                                    notebook=notebook)
    (model_dir / "report.stamp.json").unlink(missing_ok=True)
    write_json(model_dir / pages.RUN_STATUS, {
        **(status or {"model": model, "command": command}), "status": "interrupted" if interrupted else "failed",
        "finished": _now(), "error": error, "failed_stage": stage, "log_tail": log_tail_text})
    return page


class _Heartbeat:
    """Prints ``[model] stage: still running, 60s`` every ``interval`` seconds while a stage runs."""

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


def _move_stale_downstream(model_dir: Path, stage: Stage, selected: set[str], say: Callable[[str], None]) -> None:
    """After ``stage`` ran again, records of later stages that this run will not redo describe an old
    upstream: move them to ``.stale/`` so the report never mixes them with the new results."""
    for later in STAGES[STAGES.index(stage) + 1:]:
        record = model_dir / later.record
        if later.name in selected or not later.measures_variants or not record.exists():
            continue
        stale = model_dir / ".stale"
        stale.mkdir(exist_ok=True)
        os.replace(record, stale / record.name)
        stamp_path(model_dir, later.name).unlink(missing_ok=True)
        say(f"{later.record} was made from the previous {stage.name} results and is not re-run here: moved to .stale/")


def recover_interrupted(model_dir: Path) -> str | None:
    """After a run was killed without a chance to clean up (kill -9, out of memory, power loss), its ``run.json``
    still says "running" although nobody holds the model's lock.  Call with the lock held: marks the run
    interrupted, puts an INTERRUPTED page in place of ``report.html`` (the records may have changed under the old
    report) and removes its temporary folder.  Returns what was found, or ``None`` when there was nothing to do."""
    try:
        status = read_json(Path(model_dir) / pages.RUN_STATUS)
    except (OSError, ValueError):
        return None
    if status.get("status") != "running":
        return None
    shutil.rmtree(Path(model_dir) / ".run-tmp", ignore_errors=True)
    done = [s["stage"] for s in status.get("stages", [])]
    error = (f"the run started {status.get('started', '?')} (pid {status.get('pid', '?')}) was killed before it "
             "finished (no clean shutdown: kill -9, out of memory or power loss)")
    record_failure(Path(model_dir), str(status.get("model", Path(model_dir).name)), error,
                   str(status.get("command", "")), completed=done, interrupted=True, status=status,
                   log_tail_text=log_tail(Path(model_dir) / "run.log"))
    return error


def model_status(model_dir: Path, recover: bool = True) -> dict[str, Any]:
    """The state of one model's folder: its ``run.json`` (``running`` only while a live run holds the lock);
    a stale "running" left by a killed run is recovered on the way (``recover_interrupted``)."""
    try:
        with model_lock(Path(model_dir)):
            recovered = recover_interrupted(Path(model_dir)) if recover else None
            status = read_json(Path(model_dir) / pages.RUN_STATUS) if (Path(model_dir) / pages.RUN_STATUS).exists() \
                else {"status": "never run"}
            return {**status, "recovered": recovered}
    except RunFailed:
        status = read_json(Path(model_dir) / pages.RUN_STATUS) if (Path(model_dir) / pages.RUN_STATUS).exists() else {}
        return {**status, "status": "running"}


def _describe_error(exc: BaseException) -> str:
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):
        return f"{exc.ename}: {_ANSI.sub('', str(exc.evalue))}"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunFailed) else str(exc)


def run_model(spec: RunSpec, steps: list[Step] | None = None, say: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the planned stages for one model; write its report (or failure page) and the index.

    Safe against interruption: executed notebooks and the HTML are made in ``reports/<model>/.run-tmp/`` and moved
    into place; the previous ``report.html`` stays until the new one is complete (or a failure page replaces it).
    """
    steps = plan(spec) if steps is None else steps
    model_dir = spec.model_dir
    prefix = f"[{spec.model}]"
    command = spec.command.shell()
    start = time.monotonic()
    heartbeat = float(os.environ.get("PLAYBOOK_HEARTBEAT_S", "30"))
    log_path = model_dir / "run.log"
    with model_lock(model_dir):
        recovered = recover_interrupted(model_dir)
        tmp = model_dir / ".run-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (model_dir / "notebooks").mkdir(exist_ok=True)
        log = open(log_path, "a", buffering=1, errors="replace")
        log_start = log.tell()  # the failure page shows this run's log only
        log.write(f"===== {_now()} {command}\n")
        if recovered:
            log.write(f"--- previous run: {recovered}; marked interrupted\n")

        def emit(msg: str) -> None:
            line = f"{prefix} {msg}"
            (say or (lambda m: print(m, flush=True)))(line)
            log.write(f"{_now()} {line}\n")

        status: dict[str, Any] = {"model": spec.model, "status": "running", "started": _now(),
                                  "started_epoch": time.time(), "pid": os.getpid(), "command": command, "stages": []}
        write_json(model_dir / pages.RUN_STATUS, status)
        emit(f"reports in {model_dir}; stages {', '.join(s.stage.stem for s in steps)}")
        if recovered:
            emit(f"note: {recovered}; it was marked interrupted")
        selected = {s.stage.name for s in steps}
        ran: list[str] = []
        skipped: list[str] = []
        current: Step | None = None
        try:
            for step in steps:
                current = step
                stage = step.stage
                fingerprint = stage_fingerprint(step, model_dir)
                if not spec.command.force and is_up_to_date(model_dir, step, fingerprint):
                    emit(f"{stage.stem}: up to date, skipped (same notebook, parameters and inputs; --force re-runs)")
                    skipped.append(stage.stem)
                    status["stages"].append({"stage": stage.stem, "status": "skipped"})
                    continue
                stamp_path(model_dir, stage.name).unlink(missing_ok=True)
                emit(f"{stage.stem}: running")
                log.write(f"--- {stage.stem} parameters: {step.params!r}\n")
                t0 = time.monotonic()
                executed = tmp / step.notebook.name
                try:
                    sink = _Tee(log, sys.stdout) if spec.verbose else log
                    with _Heartbeat(emit, stage.stem, heartbeat):
                        execute(step.notebook, executed, step.params, cwd=Path.cwd(), stdout_file=sink,
                                stderr_file=sink, quiet=True, kernel_stderr=log)
                finally:
                    if executed.exists():
                        os.replace(executed, model_dir / "notebooks" / step.notebook.name)
                missing = [p.name for p in stage_outputs(model_dir, stage) if p.suffix == ".json" and not p.exists()]
                if missing:
                    raise RunFailed(f"{stage.stem} finished but did not write {missing}")
                # the report stage renders report.html and report.ja.html from the records itself (ReportRun.finish)
                seconds = time.monotonic() - t0
                write_stamp(model_dir, step, fingerprint, seconds)
                if stage.measures_variants:
                    _move_stale_downstream(model_dir, stage, selected, emit)
                    if "report" not in selected:  # the report no longer describes the records
                        (model_dir / pages.REPORT_HTML).unlink(missing_ok=True)
                        (model_dir / pages.REPORT_HTML_JA).unlink(missing_ok=True)
                        (model_dir / pages.REPORT_RECORD).unlink(missing_ok=True)
                        stamp_path(model_dir, "report").unlink(missing_ok=True)
                ran.append(stage.stem)
                status["stages"].append({"stage": stage.stem, "status": "ran", "seconds": round(seconds, 1)})
                emit(f"{stage.stem}: done in {seconds:.1f}s (total {time.monotonic() - start:.1f}s)")
            current = None
            html = model_dir / pages.REPORT_HTML
            status.update(status="ok", finished=_now(), elapsed_s=round(time.monotonic() - start, 1))
            write_json(model_dir / pages.RUN_STATUS, status)
            if html.exists():
                emit(f"report: {html} ({time.monotonic() - start:.1f}s)")
            else:
                emit(f"done in {time.monotonic() - start:.1f}s; no report rendered (06_report was not among the "
                     "stages): add 06 to --stages to render it")
            return RunOutcome(spec.model, True, html, ran, skipped, seconds=time.monotonic() - start)
        except BaseException as exc:  # noqa: BLE001 - every failure, Ctrl-C included, leaves a failure page
            error = _describe_error(exc)
            interrupted = isinstance(exc, KeyboardInterrupt)
            failed = current.stage.stem if current else None
            log.write(f"--- {'interrupted' if interrupted else 'failed'}{' in ' + failed if failed else ''}: {error}\n")
            if getattr(exc, "traceback", None):
                log.write(_ANSI.sub("", "\n".join(exc.traceback)) + "\n")
            elif not isinstance(exc, (RunFailed, KeyboardInterrupt)):
                import traceback

                log.write("".join(traceback.format_exception(exc)))
            log.flush()
            executed_nb = f"notebooks/{failed}.ipynb" if failed else None
            status["elapsed_s"] = round(time.monotonic() - start, 1)
            page = record_failure(
                model_dir, spec.model, error, command, stage=failed,
                completed=[s["stage"] for s in status["stages"]], log_tail_text=log_tail(log_path, start=log_start),
                interrupted=interrupted, status=status,
                notebook=executed_nb if executed_nb and (model_dir / executed_nb).exists() else None)
            emit(f"{'INTERRUPTED' if interrupted else 'FAILED'}{' in ' + failed if failed else ''}: {error} "
                 f"(see {page})")
            if interrupted:
                raise
            return RunOutcome(spec.model, False, page, ran, skipped, error, failed, time.monotonic() - start)
        finally:
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)
            if spec.update_index:
                with contextlib.suppress(Exception):
                    pages.write_index(spec.reports_root)
