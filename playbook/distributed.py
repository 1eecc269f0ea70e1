"""``playbook batch --scheduler``: a batch on a Dask cluster, one task per model.

Who does what:

* the **client** (the ``playbook batch`` process) checks every entry before anything runs, checks the workers'
  code and environment, submits one task per model, prints one line per model start and finish and an overall
  progress bar, writes each model's results under ``reports/<model>/`` and refreshes ``reports/index.html`` as
  each model finishes;
* each **task** (on a worker) refuses to run if the worker's playbook version, code or pinned requirements differ
  from the client's, then runs ``python -m playbook run`` for its model as a subprocess (built by
  ``playbook.batch.child_argv``) and sends its output lines back as Dask events.

Where results go: when the worker sees the client's reports folder (a shared path; a marker file the client
writes there tells), the run writes into it directly, as ``playbook run`` would.  Otherwise the run writes into
the worker's scratch folder and the task returns ``reports/<model>/`` as a tar archive, which the client unpacks
beside the target and swaps in with one atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
renames): ``reports/<model>/`` is always either the previous folder or the new one, never half of each
(``playbook.distributed_transfer``).

Failures: a model whose run fails keeps its FAILED page and nothing else is affected.  A worker that dies while
running a model (killed process, lost connection) makes the scheduler run the task again on another worker; a
second death ends it (``allowed-failures=1`` for ``local:N``; a remote scheduler uses its own
``distributed.scheduler.allowed-failures``).  A task that raises (mismatched worker, ``playbook run`` killed by a
signal) is retried once (``retries=1``).  After that the model is recorded as failed with the reason.

Stopping: SIGINT/SIGTERM to the client sets a Dask ``Event`` that every task polls; each sends SIGINT to its
``playbook run`` (which writes its INTERRUPTED page); the client waits up to ``STOP_GRACE_S`` for them, gives every
model without a result an INTERRUPTED page and writes the index.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from playbook.batch import (STOP_GRACE_S, TAIL_LINES, BatchInterrupted, BatchProgress, batch_command, child_argv,
                            child_env, describe_exit, fresh_status, interruptible, record_unfinished, settle,
                            start_child, stop_child, validate, write_index)
from playbook.command import RunCommand
from playbook.config import ConfigError
from playbook.distributed_transfer import clean_leftovers, install_model_dir, pack_model_dir, wait_for_model_lock
from playbook.paths import PACKAGE_DIR, model_slug, notebooks_dir, repository_root

if TYPE_CHECKING:
    from distributed import Client, Future

    from playbook.pipeline import RunOutcome, RunSpec

TRANSFERS = ("auto", "archive", "shared")
WORKER_DEATHS_ALLOWED = 1  # local:N: a model whose worker dies is run once more, on another worker
TASK_RETRIES = 1  # a task that raises is run once more
POLL_S = 2.0  # how often a task checks whether the batch was stopped
LOCK_WAIT_S = 120.0  # shared folder: how long a retry waits for the previous attempt's process to let go
CONNECT_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- --scheduler
@dataclasses.dataclass(frozen=True)
class Scheduler:
    """Where to run: ``address`` of a running Dask scheduler, or ``local_workers`` processes on this machine."""

    address: str | None = None
    local_workers: int = 0

    @classmethod
    def parse(cls, text: str) -> "Scheduler":
        """``local:N`` or ``tcp://HOST:PORT`` (``HOST:PORT`` means tcp); anything else raises ``ConfigError``."""
        text = str(text).strip()
        if text.startswith("local"):
            count = text.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"--scheduler {text!r}: local:N needs a number of worker processes N >= 1, "
                                  "e.g. local:2")
            return cls(local_workers=int(count))
        if re.fullmatch(r"(tcp|tls|ucx|ws|wss)://[^\s/]+:\d+/?", text):
            return cls(address=text.rstrip("/"))
        if re.fullmatch(r"[A-Za-z0-9_.\-]+:\d+", text):
            return cls(address=f"tcp://{text}")
        raise ConfigError(f"--scheduler {text!r} is neither a scheduler address nor local:N; give tcp://HOST:PORT "
                          "(a running `dask scheduler`, port 8786 by default) or local:N (N worker processes here)")

    def describe(self) -> str:
        return self.address or f"a local cluster of {self.local_workers} worker process(es)"


# --------------------------------------------------------------------------- same code, same environment
def requirements_pins() -> dict[str, str]:
    """``name -> pinned version`` from the checkout's ``requirements.txt`` (empty when installed without it)."""
    root = repository_root()
    path = root / "requirements.txt" if root is not None else None
    if path is None or not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_hash(notebooks: Path | None = None) -> str:
    """SHA-256 over the playbook package's Python files and the stage notebooks' cell sources."""
    from playbook.notebooks import notebook_source_hash

    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(PACKAGE_DIR).as_posix()}\0".encode() + path.read_bytes())
    folder = Path(notebooks) if notebooks is not None else notebooks_dir()
    for path in sorted(folder.glob("*.ipynb")):
        digest.update(f"{path.name}\0{notebook_source_hash(path)}".encode())
    return digest.hexdigest()


def environment_fingerprint(notebooks: Path | None = None) -> dict[str, Any]:
    """What must match between the client and a worker: the playbook's version and code, Python's version,
    the hash of the pinned requirements, and the installed version of every pinned package."""
    pins = requirements_pins()
    return {"playbook_version": _installed("coreml-playbook") or "0+unknown",
            "python": ".".join(platform.python_version_tuple()[:2]),
            "code_sha256": code_hash(notebooks),
            "requirements_sha256": hashlib.sha256("\n".join(f"{k}=={v}" for k, v in sorted(pins.items()))
                                                  .encode()).hexdigest(),
            "packages": {name: _installed(name) for name in sorted(pins)}}


def fingerprint_differences(client: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    """What differs between the client's fingerprint and a worker's, in words (empty: they match)."""
    out = []
    for key, what in (("playbook_version", "playbook version"), ("python", "Python"),
                      ("requirements_sha256", "requirements.txt hash"), ("code_sha256", "playbook code hash")):
        if client.get(key) != worker.get(key):
            shown = [str(v)[:12] if key.endswith("sha256") else v for v in (worker.get(key), client.get(key))]
            out.append(f"{what} {shown[0]} here, {shown[1]} on the client")
    theirs, ours = client.get("packages") or {}, worker.get("packages") or {}
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            out.append(f"{name} {ours.get(name) or 'not installed'} here, {theirs.get(name) or 'not installed'} "
                       "on the client")
    return out


class WorkerMismatch(RuntimeError):
    """The worker's playbook code or environment differs from the client's; the task refused to run."""


class ModelProcessLost(RuntimeError):
    """``playbook run`` was killed by a signal the batch did not send (out of memory, an operator): retried."""


def check_worker(expected: dict[str, Any], notebooks: str | None = None) -> dict[str, Any]:
    """Run on a worker: who it is and how its environment differs from ``expected`` (the client's)."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "differences": fingerprint_differences(expected, environment_fingerprint(
                Path(notebooks) if notebooks else None))}


# --------------------------------------------------------------------------- the task, on a worker
@dataclasses.dataclass(frozen=True)
class ModelTask:
    """Everything a worker needs to run one model: plain data, so unpickling it imports nothing heavy."""

    command: dict[str, Any]
    reports_root: str
    notebooks_dir: str | None  # None: the worker's own stage notebooks
    transfer: str
    expected: dict[str, Any]
    topic: str  # Dask event topic for start and output lines
    stop_event: str  # name of the Dask Event that stops the batch
    marker: str  # file name in reports_root whose content is ``token`` when the worker sees the folder
    token: str
    grace_s: float = STOP_GRACE_S

    @property
    def model(self) -> str:
        return str(self.command["model"])


def _sees_reports_root(task: ModelTask) -> bool:
    try:
        return (Path(task.reports_root) / task.marker).read_text().strip() == task.token
    except OSError:
        return False


def _batch_stopped(worker: Any, stop_event: Any) -> bool:
    """True when the client set the stop event, or released this task (client gone, batch cancelled)."""
    try:
        if stop_event.is_set():
            return True
    except Exception:  # noqa: BLE001 - scheduler unreachable: the task state below still tells
        pass
    try:
        from distributed.worker import thread_state

        state = worker.state.tasks.get(thread_state.key)
        return state is None or state.state == "cancelled"
    except Exception:  # noqa: BLE001 - internal API moved: rely on the event only
        return False


def run_model_task(task: ModelTask) -> dict[str, Any]:
    """The Dask task for one model (runs on a worker): check the worker, run ``playbook run``, return the result.

    Raises ``WorkerMismatch`` on a mismatched worker and ``ModelProcessLost`` when the run was killed by a signal
    the batch did not send; Dask retries both once.  A run that fails by itself is a result (``ok: False``).
    """
    from distributed import Event, get_worker

    worker = get_worker()
    where = {"address": worker.address, "name": str(worker.name), "host": socket.gethostname(), "pid": os.getpid()}
    differences = fingerprint_differences(task.expected, environment_fingerprint(
        Path(task.notebooks_dir) if task.notebooks_dir else None))
    if differences:
        raise WorkerMismatch(f"worker {worker.address} ({where['host']}) refused {task.model!r}: its environment "
                             f"differs from the client's: {'; '.join(differences)}. Every worker needs the same "
                             "playbook checkout and virtual environment (README: 'Batches on a Dask cluster')")
    shared = task.transfer != "archive" and _sees_reports_root(task)
    if task.transfer == "shared" and not shared:
        raise WorkerMismatch(f"worker {worker.address} ({where['host']}) cannot see the reports folder "
                             f"{task.reports_root} that --transfer shared requires")
    slug = model_slug(task.model)
    root = Path(task.reports_root) if shared else Path(tempfile.mkdtemp(prefix=f"playbook-{slug}-",
                                                                         dir=worker.local_directory))

    def emit(kind: str, **fields: Any) -> None:
        worker.log_event(task.topic, {"kind": kind, "model": task.model, **fields})

    try:
        if shared:
            wait_for_model_lock(root / slug, LOCK_WAIT_S)
        command = RunCommand.from_dict(task.command)
        notebooks = Path(task.notebooks_dir) if task.notebooks_dir else None
        launched, t0 = time.time(), time.monotonic()
        proc = start_child(child_argv(command, root, notebooks),
                           child_env({"PLAYBOOK_WORKER": f"{where['host']} pid {where['pid']} ({where['address']})"}))
        emit("start", where=where, shared=shared, child_pid=proc.pid)  # "worker" is the scheduler's key
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

        def forward() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                emit("line", line=line)

        reader = threading.Thread(target=forward, daemon=True)
        reader.start()
        stop_event = Event(task.stop_event)
        stopped = False
        while True:
            try:
                rc = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if _batch_stopped(worker, stop_event):
                    stopped = True
                    rc = stop_child(proc, task.grace_s)
                    break
        reader.join(timeout=10)
        if rc < 0 and not stopped:
            raise ModelProcessLost(f"{task.model} on worker {worker.address} ({where['host']}): {describe_exit(rc)}")
        model_dir = root / slug
        archive = pack_model_dir(model_dir) if not shared and model_dir.is_dir() else None
        return {"model": task.model, "rc": rc, "stopped": stopped, "status": fresh_status(model_dir, launched),
                "tail": "\n".join(tail), "seconds": time.monotonic() - t0, "worker": where, "shared": shared,
                "archive": archive}
    finally:
        if not shared:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the client
def _where(worker: dict[str, Any] | None) -> str:
    return f"{worker['host']} pid {worker['pid']} ({worker['address']})" if worker else ""


def _note_worker(spec: "RunSpec", worker: dict[str, Any] | None, shared: bool | None) -> None:
    """Add where the model ran to its ``run.json`` (worker host, pid, address, how its reports came back) and
    name this reports folder in its command (a run on a worker's scratch folder names that one)."""
    from playbook.records import read_json, write_json

    path = spec.model_dir / "run.json"
    with contextlib.suppress(OSError, ValueError):
        status = read_json(path)
        status["command"] = batch_command(spec)
        status["worker"] = {**(worker or {}), "reports": None if shared is None else
                            ("written to the shared reports folder" if shared else "returned as an archive")}
        write_json(path, status)


def _task_error(exc: BaseException) -> str:
    """Why a task ended in an error, for the failure page."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        last = getattr(getattr(exc, "last_worker", None), "address", "?")
        deaths = getattr(exc, "allowed_failures", WORKER_DEATHS_ALLOWED) + 1
        return (f"lost: {deaths} worker(s) died while running this model (a killed process or a lost connection; "
                f"the last one was {last}); the scheduler gave up after running it {deaths} times")
    if isinstance(exc, (WorkerMismatch, ModelProcessLost)):
        return f"{exc} (tried {TASK_RETRIES + 1} times)"
    return f"{type(exc).__name__}: {exc}"


def _dashboard(client: "Client") -> str | None:
    """The Dask dashboard's address when the scheduler serves one (its HTTP server runs without bokeh too, but
    then has no dashboard pages)."""
    try:
        has_bokeh = client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None)
    except Exception:  # noqa: BLE001 - a scheduler that cannot run it: say nothing rather than guess
        return None
    return client.dashboard_link if has_bokeh and "dashboard" in client.scheduler_info().get("services", {}) else None


@contextlib.contextmanager
def connect(scheduler: Scheduler) -> Iterator["Client"]:
    """A Dask client for ``scheduler``: a ``LocalCluster`` of worker processes, or a running scheduler."""
    from distributed import Client, LocalCluster

    from playbook.env import core_share

    if scheduler.address is None:
        # a free port for the scheduler's HTTP server (the dashboard when bokeh is installed): 8787 may be taken
        # each worker runs one model at a time; together they get this machine's cores, split evenly
        with LocalCluster(n_workers=scheduler.local_workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", env={"PLAYBOOK_CORES": str(core_share(scheduler.local_workers))},
                          scheduler_kwargs={"allowed_failures": WORKER_DEATHS_ALLOWED}) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--scheduler {scheduler.address}: no Dask scheduler answered within "
                          f"{CONNECT_TIMEOUT_S:.0f}s ({exc}); start one with `dask scheduler` and workers with "
                          f"`dask worker {scheduler.address}`") from None
    with client:
        yield client


def _check_workers(client: "Client", expected: dict[str, Any], notebooks: str | None,
                   progress: BatchProgress) -> None:
    """Print the scheduler and every worker and whether each matches; refuse the batch when the scheduler cannot
    import the playbook (it unpickles every task) or no worker matches."""
    try:
        mine = client.run_on_scheduler(check_worker, expected, notebooks)
    except Exception as exc:  # noqa: BLE001 - whatever it raised, no task could be submitted
        raise ConfigError(f"the Dask scheduler cannot load the playbook's tasks ({type(exc).__name__}: {exc}); it "
                          "unpickles every task, so start `dask scheduler` from the same checkout and virtual "
                          "environment as the workers (README: 'Batches on a Dask cluster')") from None
    try:  # a lambda travels by value: it needs nothing of the playbook on the scheduler
        deaths = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    except Exception:  # noqa: BLE001 - an older scheduler: say so rather than guess
        deaths = "?"
    progress.line(f"[batch] scheduler ({mine['host']} pid {mine['pid']}): " + (
        "same code and environment" if not mine["differences"] else "differs: " + "; ".join(mine["differences"]))
        + f"; a model whose worker dies is run again up to {deaths} time(s) (distributed.scheduler.allowed-failures)")
    answers = client.run(check_worker, expected, notebooks, on_error="return")
    if not answers:
        progress.line("[batch] no worker has joined the scheduler yet: the models wait until one does")
        return
    good = 0
    for address, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            progress.line(f"[batch] worker {address}: cannot run the playbook ({type(answer).__name__}: {answer})")
        elif answer["differences"]:
            progress.line(f"[batch] worker {address} ({answer['host']}) MISMATCH, its tasks will be refused: "
                          + "; ".join(answer["differences"]))
        else:
            good += 1
            progress.line(f"[batch] worker {address} ({answer['host']} pid {answer['pid']}): same code and "
                          "environment")
    if not good:
        raise ConfigError(f"none of the {len(answers)} worker(s) has the client's playbook code and environment "
                          "(see above); install the same checkout and virtual environment on every worker "
                          "(README: 'Batches on a Dask cluster')")


def run_batch_on_cluster(specs: list["RunSpec"], scheduler: Scheduler | str, reports_root: Path | None = None,
                         transfer: str = "auto", say: Callable[[str], None] | None = None,
                         grace_s: float = STOP_GRACE_S) -> list["RunOutcome"]:
    """Run every spec as one Dask task; write each model's results and the index as each finishes.

    ``transfer``: ``auto`` (write in place when the worker sees ``reports_root``, else return an archive),
    ``archive`` or ``shared``.  Raises ``ConfigError`` for a bad scheduler or when no worker matches, and
    ``BatchInterrupted`` after a SIGINT/SIGTERM once every model has its page and the index is written.
    """
    from distributed import Event, as_completed
    from distributed import wait as dask_wait

    from playbook.pipeline import RunOutcome, record_failure

    if transfer not in TRANSFERS:
        raise ConfigError(f"--transfer {transfer!r} is not valid; choose one of {list(TRANSFERS)}")
    scheduler = Scheduler.parse(scheduler) if isinstance(scheduler, str) else scheduler
    root = Path(reports_root or specs[0].reports_root).resolve()
    progress = BatchProgress(len(specs), say)
    runnable, outcomes = validate(specs, progress)
    if not runnable:
        write_index(root)
        progress.close()
        return [outcomes[s.model] for s in specs]
    token = secrets.token_hex(8)
    marker = root / f".playbook-batch-{token}"  # a worker that reads this token sees the reports folder
    attempts: collections.Counter[str] = collections.Counter()
    last_worker: dict[str, dict[str, Any]] = {}

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        model = msg.get("model", "?")
        if msg.get("kind") == "start":
            attempts[model] += 1
            last_worker[model] = msg.get("where") or {}
            how = "writes to the shared reports folder" if msg.get("shared") else "returns an archive"
            progress.started(model, f"{_where(msg.get('where'))}, {how}", attempts[model])
        elif msg.get("kind") == "line":
            line = str(msg.get("line", ""))
            progress.line(line if line.startswith(f"[{model}]") else f"[{model}] {line}")

    default_notebooks = notebooks_dir().resolve()
    fingerprints: dict[Path, dict[str, Any]] = {}

    def task_for(spec: "RunSpec") -> ModelTask:
        notebooks = Path(spec.notebooks_dir).resolve()
        if notebooks not in fingerprints:
            fingerprints[notebooks] = environment_fingerprint(notebooks)
        return ModelTask(command=spec.command.to_dict(), reports_root=str(root),
                         notebooks_dir=str(notebooks) if notebooks != default_notebooks else None, transfer=transfer,
                         expected=fingerprints[notebooks], topic=f"playbook-batch-{token}",
                         stop_event=f"playbook-batch-{token}-stop", marker=marker.name, token=token,
                         grace_s=grace_s)

    def collect(future: "Future", spec: "RunSpec", stopped: bool = False) -> "RunOutcome":
        model_dir = spec.model_dir
        if future.status == "finished":
            result = future.result()
            stopped = stopped or result["stopped"]
            status = result["status"]
            in_place = result["shared"]
            if result["archive"] and not stopped:
                install_model_dir(root, model_dir.name, result["archive"])
                in_place = status is not None and status.get("status") == "ok"  # a failure page names the scratch
            outcome = settle(spec, result["rc"], status, result["tail"], result["seconds"],
                             status_in_place=in_place, interrupted=stopped)
            _note_worker(spec, result["worker"], result["shared"])
            return outcome
        error = (_task_error(future.exception()) if future.status == "error" else
                 f"the scheduler lost the task ({future.status}): the batch was stopped or its connection lost")
        page = record_failure(model_dir, spec.model, error, batch_command(spec), interrupted=stopped,
                              log_tail_text=error)
        _note_worker(spec, last_worker.get(spec.model), None)
        return RunOutcome(spec.model, False, page, [], [], ("interrupted: " if stopped else "") + error)

    try:
        with connect(scheduler) as client, interruptible():
            futures: dict[Any, RunSpec] = {}
            root.mkdir(parents=True, exist_ok=True)
            clean_leftovers(root)
            marker.write_text(token)
            try:
                dashboard = _dashboard(client)
                progress.line(f"[batch] Dask scheduler {client.scheduler.address} ({scheduler.describe()}); "
                              f"dashboard: {dashboard or 'none (pip install bokeh to get one)'}")
                first = task_for(runnable[0])
                _check_workers(client, first.expected, first.notebooks_dir, progress)
                client.subscribe_topic(f"playbook-batch-{token}", on_event)
                progress.line(f"[batch] {len(runnable)} model(s) to run, one task each (retried once; reports "
                              f"in {root}, transfer: {transfer})")
                waiting, unsettled = list(runnable), set()

                def submit_more() -> None:
                    # no more models in flight than worker threads (workers may join or die): each task runs for
                    # minutes, and a model the scheduler placed early behind another would wait while a worker idles
                    while waiting and len(unsettled) < max(1, sum(client.nthreads().values())):
                        spec = waiting.pop(0)
                        future = client.submit(run_model_task, task_for(spec), key=f"playbook-{spec.model_dir.name}-"
                                               f"{token}", retries=TASK_RETRIES, pure=False)
                        futures[future] = spec
                        unsettled.add(future)

                while waiting or unsettled:
                    submit_more()
                    try:
                        done = dask_wait(list(unsettled), timeout=POLL_S * 2, return_when="FIRST_COMPLETED").done
                    except TimeoutError:
                        continue
                    for future in done:
                        unsettled.discard(future)
                        spec = futures[future]
                        outcomes[spec.model] = collect(future, spec)
                        write_index(root)
                        progress.finished(outcomes[spec.model], _where(last_worker.get(spec.model)))
            except BatchInterrupted as exc:
                unfinished = {f: s for f, s in futures.items() if s.model not in outcomes}
                running = {f: s for f, s in unfinished.items() if attempts[s.model]}
                progress.line(f"[batch] {exc}: stopping; {len(running)} running model(s) "
                              f"{sorted(s.model for s in running.values())} write their INTERRUPTED pages (up to "
                              f"{grace_s:.0f}s), {len(unfinished) - len(running)} not started")
                client.cancel([f for f in unfinished if f not in running])
                with contextlib.suppress(Exception):
                    Event(f"playbook-batch-{token}-stop", client=client).set()
                with contextlib.suppress(Exception):  # distributed.TimeoutError: some did not stop in time
                    for future in as_completed(list(running), timeout=grace_s):
                        spec = running[future]
                        with contextlib.suppress(Exception):
                            outcomes[spec.model] = collect(future, spec, stopped=True)
                            progress.finished(outcomes[spec.model], _where(last_worker.get(spec.model)))
                client.cancel(list(unfinished))
                record_unfinished(specs, outcomes, f"the batch was stopped ({exc}) before this model finished")
                write_index(root)
                raise
    finally:
        marker.unlink(missing_ok=True)
        progress.close()
    write_index(root)
    return [outcomes[s.model] for s in specs]
