"""Running the stage notebooks for one model or a batch: the plan, the stamps, the run, the failure pages.

``plan`` checks everything before anything runs: the model name, every ``-p``/``--budget`` name against the
parameters the selected notebooks declare (papermill itself only warns about unknown names), each value's
type, and, for the playbook's own notebooks, every value through the stage's config class (dataset,
checkpoint path, recipe names, budget ranges...).  ``run_model`` executes the planned notebooks in order
through papermill, keeps each executed notebook under ``reports/<model>/notebooks/``, turns the executed
report notebook into ``report.html`` and refreshes ``reports/index.html``.  A stage whose notebook,
parameters, upstream records and playbook version are unchanged since its last successful run, and whose
packages (and those it was made from) still have the SHA-256 its record holds, is skipped
(``reports/<model>/<stage>.stamp.json``) unless ``--force``.  A stage's packages are made in
``reports/<model>/.staging/<stage>/`` and swapped in with its record (``stages.common.StageRun.finish``): an
interrupted stage leaves its previous outputs.  ``plan_and_run`` takes the model's lock before the plan.

Batches of models are ``playbook.batch``'s job.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from playbook.config import ConfigError
from playbook.notebooks import execute
from playbook.records import read_json, write_json
from playbook.report import pages
from playbook.stages import STAGES, Stage

LOG_TAIL_LINES = 40
STAGING = ".staging"  # reports/<model>/.staging/<stage>/: a running stage's packages (stages.common.StageRun)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunFailed(RuntimeError):
    """A stage failed; the model's report page is a failure page."""


class LockHeld(ConfigError):
    """Another run holds the model's lock: refused before anything runs (exit status 2, like every up-front check)."""


from playbook.run_plan import (  # noqa: E402,F401 -- the plan, re-exported: pipeline.plan, pipeline.Step ...
    RunSpec, Step, check_existing_records, check_inputs, check_parameter_names, check_reports_folder, check_upstream,
    declared_parameters, is_up_to_date, model_budgets_note, plan, select_stages, stage_fingerprint,
    stage_outputs, stamp_path, write_stamp)


# --------------------------------------------------------------------------- running one model
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_HELD: dict[tuple[str, int], int] = {}


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold ``reports/<model>/.lock`` for the run: a second concurrent run of the same model is refused
    (``LockHeld``).  Re-entrant within one thread: ``plan_and_run`` takes it before the plan, ``run_model`` again."""
    key = (str(Path(model_dir).resolve()), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    fh = open(model_dir / ".lock", "a+")
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError:
            raise LockHeld(f"another playbook run is using {model_dir} (its .lock is held); wait for it to finish "
                           "(playbook status shows it), nothing was run or deleted") from None
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
    finally:
        fh.close()


def plan_and_run(spec: RunSpec, say: Callable[[str], None] | None = None) -> RunOutcome:
    """Plan and run one model, the lock taken first when the model has been run before: a second run never
    validates records and packages that the first is rewriting (it is refused with ``LockHeld`` instead).  A
    model folder that does not exist yet is not created by a plan that fails (the lock comes with the run)."""
    lock = model_lock(spec.model_dir) if (spec.model_dir / ".lock").exists() else contextlib.nullcontext()
    with lock:
        steps = plan(spec)
        return run_model(spec, steps, say)


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
    shutil.rmtree(Path(model_dir) / STAGING, ignore_errors=True)  # a stage's unfinished outputs, never swapped in
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
    except LockHeld:
        status = read_json(Path(model_dir) / pages.RUN_STATUS) if (Path(model_dir) / pages.RUN_STATUS).exists() else {}
        return {**status, "status": "running"}


def _describe_error(exc: BaseException) -> str:
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):
        return f"{exc.ename}: {_ANSI.sub('', str(exc.evalue))}"
    if isinstance(exc, KeyboardInterrupt):  # playbook.cli raises it with the signal's name
        name = str(exc.args[0]) if exc.args else ""
        return f"stopped by {name}" if name.startswith("SIG") else "stopped by Ctrl-C (KeyboardInterrupt)"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunFailed) else str(exc)


def run_model(spec: RunSpec, steps: list[Step] | None = None, say: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the planned stages for one model; write its report (or failure page) and the index.

    Safe against interruption: executed notebooks and the HTML are made in ``reports/<model>/.run-tmp/`` and moved
    into place; the previous ``report.html`` stays until the new one is complete (or a failure page replaces it).
    """
    if steps is None:
        return plan_and_run(spec, say)
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

        # the budgets the model declares, applied under the command's own values: recorded apart from the command
        # (which holds only what the user gave, and re-derives them when run again)
        declared = {k: v for s in steps for k, v in s.declared.items()}
        status: dict[str, Any] = {"model": spec.model, "status": "running", "started": _now(),
                                  "started_epoch": time.time(), "pid": os.getpid(), "command": command,
                                  "declared_budgets": declared, "stages": []}
        write_json(model_dir / pages.RUN_STATUS, status)
        emit(f"reports in {model_dir}; stages {', '.join(s.stage.stem for s in steps)}")
        if declared:
            emit(model_budgets_note(spec.command, declared))
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
            shutil.rmtree(model_dir / STAGING, ignore_errors=True)  # an interrupted stage's outputs: never swapped in
            if spec.update_index:
                with contextlib.suppress(Exception):
                    pages.write_index(spec.reports_root)
