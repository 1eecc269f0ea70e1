"""Batches: many models from a YAML file, each in its own ``playbook run`` process.

``run_batch`` runs them ``jobs`` at a time on this machine; ``playbook.distributed.run_batch_on_cluster`` runs
them on a Dask cluster (``playbook batch --scheduler``).  Both share what is here: the batch file, the child
command (``child_argv``), the child's environment, the progress lines and bar, how a finished child becomes the
model's outcome (``settle``) and how a stopped batch is left (``record_unfinished``).

One model failing never stops the others; its ``report.html`` is a failure page with the log's tail.
``reports/index.html`` is refreshed as each model finishes.  SIGINT or SIGTERM to the batch stops every running
model (each child gets SIGINT and writes its own INTERRUPTED page), gives every model that did not finish an
INTERRUPTED page, and refreshes the index, so the index never shows an old "ok" beside a failure page.  Children
also get SIGINT when the batch process dies (Linux ``PR_SET_PDEATHSIG``), so none is left orphaned.

This module imports nothing heavy at import time: Dask workers import it (through ``playbook.distributed``) to
build the child command, and must not pay for torch or papermill.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from playbook.command import RunCommand
from playbook.config import ConfigError
from playbook.paths import model_slug, notebooks_dir, repository_root

if TYPE_CHECKING:
    from playbook.pipeline import RunOutcome, RunSpec

BATCH_ENTRY_KEYS = ("model", "dataset", "smoke", "params", "budget")
STOP_GRACE_S = 60.0  # how long a stopped batch waits for its running models to write their INTERRUPTED pages
RUN_STATUS = "run.json"  # = playbook.report.pages.RUN_STATUS (not imported: that module is heavy)
TAIL_LINES = 40  # = playbook.pipeline.LOG_TAIL_LINES


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


# --------------------------------------------------------------------------- the child process
def child_argv(command: RunCommand, reports_root: Path, notebooks: Path | None = None) -> list[str]:
    """The ``playbook run`` process a batch starts for one model: this interpreter, the reports folder explicit,
    no index refresh (the batch writes the index); ``--notebooks-dir`` only when not the playbook's own."""
    extra = ["--no-index"]
    if notebooks is not None and Path(notebooks).resolve() != notebooks_dir().resolve():
        extra += ["--notebooks-dir", str(notebooks)]
    cmd = command.replace(reports_dir=str(Path(reports_root).resolve()))
    return cmd.argv(program=(sys.executable, "-m", "playbook"), extra=extra)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one, unbuffered output, this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra or {}))
    root_dir = repository_root()
    if root_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(root_dir), env.get("PYTHONPATH", "")] if p)
    return env


def _child_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` so that SIGINT always stops the child: its disposition back to default (a batch started
    in the background by a non-interactive shell inherits SIGINT ignored, and so would every child), and, on
    Linux, SIGINT sent to it when the thread that started it dies (``prctl(PR_SET_PDEATHSIG)``): a batch or Dask
    worker killed with -9 leaves no orphan running."""
    if os.name != "posix":
        return None
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(1, signal.SIGINT, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
            if os.getppid() != parent:  # the parent died before prctl: act as if the signal came
                os.kill(os.getpid(), signal.SIGINT)

    return preexec


def start_child(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a child in its own session (a terminal's Ctrl-C reaches only the batch, which forwards one SIGINT),
    text output with stderr folded in, stopped with SIGINT if this process dies."""
    return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env, cwd=os.getcwd(), start_new_session=True,
                            preexec_fn=_child_preexec())


def stop_child(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGINT to the child (``playbook run`` then writes its INTERRUPTED page and stops its kernel); after
    ``grace_s`` seconds, SIGKILL to its whole process group.  Returns its exit status."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def fresh_status(model_dir: Path, since_epoch: float) -> dict[str, Any] | None:
    """``run.json`` of the model if the run started at or after ``since_epoch`` (else ``None``: it is older)."""
    try:
        status = json.loads((Path(model_dir) / RUN_STATUS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or float(status.get("started_epoch") or 0) < since_epoch - 1:
        return None
    return status


def describe_exit(rc: int | None) -> str:
    """``playbook run`` exited with status 1 / was killed by signal SIGKILL."""
    if rc is not None and rc < 0:
        with contextlib.suppress(ValueError):
            return f"playbook run was killed by signal {signal.Signals(-rc).name}"
    return f"playbook run exited with status {rc}"


# --------------------------------------------------------------------------- outcomes and failure pages
def batch_command(spec: "RunSpec") -> str:
    """The ``playbook run`` command a batch runs for ``spec``, as records and pages show it (this reports folder)."""
    return spec.command.replace(reports_dir=str(Path(spec.reports_root).resolve())).shell()


def settle(spec: "RunSpec", rc: int | None, status: dict[str, Any] | None, tail: str, seconds: float, *,
           status_in_place: bool = True, interrupted: bool = False) -> "RunOutcome":
    """A finished child's outcome from its exit status and its fresh ``run.json`` (``status``, or ``None``).

    When the child could not write its own failure page here (it died, or it ran elsewhere and its page names
    that folder: ``status_in_place=False``), the page is written with ``record_failure``, the one way failures are
    recorded, from what the child's status says (error, stage, completed stages, log tail); ``interrupted`` says
    the batch stopped it.
    """
    from playbook.pipeline import RunOutcome, record_failure

    model_dir = spec.model_dir
    report = model_dir / "report.html"
    state = (status or {}).get("status")
    if rc == 0 and state == "ok":
        return RunOutcome(spec.model, True, report, [], [], seconds=seconds)
    stopped = interrupted or state == "interrupted"
    error = (status or {}).get("error") or (
        "the batch was stopped while this model ran" if stopped else describe_exit(rc))
    stage = (status or {}).get("failed_stage")
    if not (status_in_place and state in ("failed", "interrupted")):
        command = batch_command(spec)
        completed = [s.get("stage") for s in (status or {}).get("stages", []) if isinstance(s, dict)]
        base = {k: v for k, v in (status or {}).items() if k not in ("status", "error", "failed_stage", "log_tail")}
        notebook = f"notebooks/{stage}.ipynb" if stage and (model_dir / "notebooks" / f"{stage}.ipynb").exists() \
            else None
        record_failure(model_dir, spec.model, error, command, stage=stage, completed=completed,
                       log_tail_text=(status or {}).get("log_tail") or tail, interrupted=stopped,
                       notebook=notebook, status={**base, "command": command} if base else None)
    return RunOutcome(spec.model, False, report, [], [], ("interrupted: " if stopped else "") + error, stage, seconds)


def record_unfinished(specs: Sequence["RunSpec"], outcomes: dict[str, "RunOutcome"], reason: str) -> None:
    """Give every model of a stopped batch that has no outcome an INTERRUPTED page (and ``run.json``)."""
    from playbook.pipeline import RunOutcome, record_failure

    for spec in specs:
        if spec.model in outcomes:
            continue
        page = record_failure(spec.model_dir, spec.model, reason, spec.command.shell(), interrupted=True,
                              log_tail_text=f"(the batch stopped: {reason})")
        outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], f"interrupted: {reason}")


def validate(specs: Sequence["RunSpec"], progress: "BatchProgress") -> tuple[list["RunSpec"], dict[str, "RunOutcome"]]:
    """Plan every model before anything runs; one that cannot run gets a failure page (stage "validation")."""
    from playbook.pipeline import RunOutcome, plan, record_failure

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
            progress.line(f"[{spec.model}] FAILED before running: {error}")
            progress.finished(outcomes[spec.model])
    return runnable, outcomes


def write_index(root: Path) -> None:
    """Refresh ``reports/index.html``; a failure to write it never stops the batch."""
    from playbook.report import pages

    with contextlib.suppress(Exception):
        pages.write_index(root)


# --------------------------------------------------------------------------- progress and signals
class BatchProgress:
    """One line per model start and finish, with elapsed times, and an overall progress bar (on a terminal).

    ``say`` replaces printing (tests); the bar is tqdm's, shown only when stderr is a terminal and
    ``TQDM_DISABLE`` is unset.  Safe to call from several threads.
    """

    def __init__(self, total: int, say: Callable[[str], None] | None = None) -> None:
        from tqdm.auto import tqdm

        self.total, self.done = total, 0
        self._say = say
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self._bar = tqdm(total=total, desc="batch", unit="model", disable=None if say is None else True,
                         file=sys.stderr, dynamic_ncols=True)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def line(self, msg: str) -> None:
        with self._lock:
            if self._say is not None:
                self._say(msg)
            elif not self._bar.disable:
                self._bar.write(msg, file=sys.stdout)
            else:
                print(msg, flush=True)

    def started(self, model: str, where: str = "", attempt: int = 1) -> None:
        again = f", attempt {attempt}" if attempt > 1 else ""
        self.line(f"[batch] {model}: started{' on ' + where if where else ''}{again} (batch {self.elapsed():.0f}s)")

    def finished(self, outcome: "RunOutcome", where: str = "") -> None:
        with self._lock:
            self.done += 1
            self._bar.update(1)
            state = "ok" if outcome.ok else ("INTERRUPTED" if (outcome.error or "").startswith("interrupted")
                                             else "FAILED")
            self.line(f"[batch] {self.done}/{self.total} done: {outcome.model} {state} in {outcome.seconds:.0f}s"
                      f"{' on ' + where if where else ''} (batch {self.elapsed():.0f}s)")

    def close(self) -> None:
        self._bar.close()


class BatchInterrupted(KeyboardInterrupt):
    """The batch received SIGINT or SIGTERM; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``BatchInterrupted`` in the main thread, once; later ones are ignored so the
    clean-up (bounded by ``STOP_GRACE_S``) runs to the end.  The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not raised.is_set():
            raised.set()
            raise BatchInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- on this machine
def run_batch(specs: list["RunSpec"], jobs: int = 2, reports_root: Path | None = None,
              say: Callable[[str], None] | None = None, grace_s: float = STOP_GRACE_S) -> list["RunOutcome"]:
    """Run every spec in its own ``playbook run`` process, ``jobs`` at a time; failures are isolated.

    Raises ``BatchInterrupted`` after a SIGINT/SIGTERM once every model has its page and the index is written.
    """
    from playbook.env import core_share
    from playbook.pipeline import RunOutcome, record_failure

    lock = threading.Lock()
    stop = threading.Event()
    running: dict[str, subprocess.Popen] = {}
    root = Path(reports_root or specs[0].reports_root).resolve()
    progress = BatchProgress(len(specs), say)
    runnable, outcomes = validate(specs, progress)
    share = core_share(min(max(1, jobs), max(1, len(runnable))))  # each run's cores: together no more than we have

    def one(spec: "RunSpec") -> None:
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with lock:
            if stop.is_set():
                return
            launched, t0 = time.time(), time.monotonic()
            proc = start_child(child_argv(spec.command, spec.reports_root, spec.notebooks_dir),
                               child_env({"PLAYBOOK_CORES": str(share)}))
            running[spec.model] = proc
        progress.started(spec.model)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            progress.line(line if line.startswith(f"[{spec.model}]") else f"[{spec.model}] {line}")
        rc = proc.wait()
        with lock:
            running.pop(spec.model, None)
        outcome = settle(spec, rc, fresh_status(spec.model_dir, launched), "\n".join(tail),
                         time.monotonic() - t0, interrupted=stop.is_set())
        outcomes[spec.model] = outcome
        write_index(root)
        progress.finished(outcome)

    def guarded(spec: "RunSpec") -> None:
        try:
            one(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. the process could not be started: isolate it
            error = f"{type(exc).__name__}: {exc}"
            page = record_failure(spec.model_dir, spec.model, error, spec.command.shell(), log_tail_text=error)
            outcomes[spec.model] = RunOutcome(spec.model, False, page, [], [], error)
            progress.line(f"[{spec.model}] FAILED: {error}")
            progress.finished(outcomes[spec.model])

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = []
    with interruptible():  # around the clean-up too: a second signal must not cut it short
        try:
            if runnable:
                progress.line(f"[batch] {len(runnable)} model(s) to run, {max(1, jobs)} at a time; reports in {root}")
            futures = [pool.submit(guarded, spec) for spec in runnable]
            wait(futures, return_when=FIRST_EXCEPTION)
        except BatchInterrupted as exc:
            with lock:
                stop.set()
                procs = dict(running)
            progress.line(f"[batch] {exc}: stopping {len(procs)} running model(s) {sorted(procs)}; each writes its "
                          f"INTERRUPTED page (up to {grace_s:.0f}s)")
            for proc in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
            _, late = wait(futures, timeout=grace_s)
            if late:
                for proc in procs.values():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                wait(futures, timeout=30)
            record_unfinished(specs, outcomes, f"the batch was stopped ({exc}) before this model finished")
            write_index(root)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            progress.close()
    write_index(root)
    return [outcomes[s.model] for s in specs]
