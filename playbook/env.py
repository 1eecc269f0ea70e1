"""Provenance: what machine, OS, library versions and settings produced a number; how many threads to use on the
cores that are actually free (``choose_threads``); and what a step cost in wall and CPU seconds (``StepTimer``)."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import math
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from playbook.paths import repository_root

PACKAGES = ("torch", "coremltools", "numpy", "scipy", "scikit-learn", "papermill")
# torch's own default before anything here changed it: the physical cores, or the user's OMP_NUM_THREADS
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def playbook_version() -> str:
    """The version of the playbook code that is running (``playbook.__version__``, which the wheel's metadata
    also takes), installed or not."""
    from playbook import __version__

    return __version__


@contextlib.contextmanager
def torch_threads(threads: "int | ThreadChoice") -> Iterator[int]:
    """torch's CPU thread count set to ``threads`` for the block (0 leaves it), restored afterwards.

    ``threads`` may be a ``ThreadChoice`` (its ``threads``).  Yields the count in effect, for the record."""
    if isinstance(threads, ThreadChoice):
        threads = threads.threads
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- threads that fit the free cores
# A core counts as free when at least this share of it is idle: with 0.5, other work busy on 0.4 of a core leaves
# it to us, busy on 0.6 takes it.  Too many threads cost far more than too few: two threads that share two cores
# with a third busy process wait for each other at every barrier (5.3x the wall time of stage 03, issue 25).
FREE_SHARE = 0.5


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, cgroups' cpusets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def load_average() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages (runnable processes), or ``None`` where the OS has none (Windows)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


def _cpu_jiffies(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over ``cpus`` (all when ``None``) from ``/proc/stat``; ``None`` off Linux."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    busy = total = seen = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
        seen += 1
    return (busy, total) if seen else None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclasses.dataclass(frozen=True)
class BusyCores:
    """How many of this process's cores other work keeps busy, and how that was measured."""

    busy: float  # cores' worth of CPU used by other processes
    source: str  # "sampled" (/proc/stat over sample_s), "load average" (minus this process's share) or "given"
    load_average: tuple[float, float, float] | None
    own: float = 0.0  # this process's share, subtracted
    sample_s: float = 0.0


def busy_cores(sample_s: float = 0.5, cpus: set[int] | None = None) -> BusyCores:
    """Cores' worth of CPU that *other* processes use now, on the CPUs this process may run on.

    On Linux, measured directly: the busy share of those CPUs in ``/proc/stat`` over ``sample_s`` seconds, minus this
    process's own CPU time in that interval.  The 1-minute load average is not used there: it still carries the
    minute before (in ``playbook run`` the previous stage's kernel, which has just ended, so every stage after the
    first would see its predecessor as load), and it lags a load that has just started.  Elsewhere: the 1-minute
    load average minus this process's average CPU use since the playbook was imported."""
    avg = load_average()
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = None
    before, own_before, wall_before = _cpu_jiffies(cpus), _own_cpu_seconds(), time.monotonic()
    if before is not None and sample_s > 0:
        time.sleep(sample_s)
        after, own_after, wall_after = _cpu_jiffies(cpus), _own_cpu_seconds(), time.monotonic()
        if after is not None and after[1] > before[1]:
            n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
            busy = (after[0] - before[0]) / (after[1] - before[1]) * n
            own = (own_after - own_before) / max(wall_after - wall_before, 1e-6)
            return BusyCores(round(max(0.0, busy - own), 2), "sampled", avg, round(own, 2), sample_s)
    if avg is None:
        return BusyCores(0.0, "unknown", None)
    import playbook

    age = max(time.monotonic() - getattr(playbook, "_IMPORTED_AT", _ENV_IMPORTED_AT), 1.0)
    own = min(_own_cpu_seconds() / age, float(torch.get_num_threads()))
    return BusyCores(round(max(0.0, avg[0] - own), 2), "load average", avg, round(own, 2))


_ENV_IMPORTED_AT = time.monotonic()


def wait_policy() -> dict[str, Any]:
    """OpenMP's wait policy in this process's environment, who set it (``playbook``, see ``playbook/__init__.py``,
    or ``user``) and whether this process's OpenMP runtime read it (``False`` when torch was imported before the
    playbook set it: then only the processes started from here get it)."""
    import playbook

    at_import = getattr(playbook, "OPENMP_AT_IMPORT", {"set_here": [], "torch_imported_first": False})
    marked = set(filter(None, os.environ.get("PLAYBOOK_SET_OPENMP", "").split(",")))
    out: dict[str, Any] = {}
    for name in getattr(playbook, "OPENMP_DEFAULTS", {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}):
        value = os.environ.get(name)
        out[name] = value
        out[f"{name}_set_by"] = None if value is None else ("playbook" if name in marked else "user")
    out["in_effect"] = not (at_import["torch_imported_first"] and at_import["set_here"])
    return out


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """torch's intra-op thread count for a piece of work, and why.

    Use it as a context manager (``with choose_threads() as choice:``) to set torch's thread count for the block
    (restored afterwards); ``to_dict()`` is what a record keeps."""

    threads: int
    cores: int  # CPUs this process may run on (affinity)
    budget: int  # of those, what this process may use: ``cores``, or fewer under $PLAYBOOK_CORES (a batch's share)
    busy: float | None  # cores' worth of other work (None: not measured, the count was requested)
    source: str  # "requested", "sampled", "load average", "given" or "unknown"
    load_average: tuple[float, float, float] | None
    reason: str
    requested: int = 0
    limit: int = 0  # at most torch's own default (physical cores, or $OMP_NUM_THREADS)
    sample_s: float = 0.0
    wait_policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    _previous: list[int] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "cores": self.cores, "budget": self.budget, "busy_cores": self.busy,
                "source": self.source, "load_average": list(self.load_average) if self.load_average else None,
                "requested": self.requested, "limit": self.limit, "sample_s": self.sample_s, "reason": self.reason,
                "wait_policy": dict(self.wait_policy)}

    def __enter__(self) -> "ThreadChoice":
        self._previous.append(torch.get_num_threads())
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self._previous.pop())


def core_budget(cores: int | None = None) -> int:
    """The cores this process may use: ``available_cores()``, capped by ``$PLAYBOOK_CORES`` when that is set (a
    batch or a cluster worker running several models at once gives each its share, so that together they never
    run more busy threads than there are cores)."""
    cores = cores or available_cores()
    share = os.environ.get("PLAYBOOK_CORES", "").strip()
    if share.isdigit() and int(share) >= 1:
        return min(cores, int(share))
    return cores


def core_share(processes: int, cores: int | None = None) -> int:
    """The cores each of ``processes`` model runs started side by side from this process may use (at least 1):
    this process's ``core_budget`` split evenly.  ``playbook batch --jobs N`` and a local Dask cluster of N workers
    give it to each run as ``$PLAYBOOK_CORES``, so that the runs together keep no more busy threads than cores."""
    return max(1, core_budget(cores) // max(1, int(processes)))


def choose_threads(requested: int | None = None, *, busy: float | None = None, cores: int | None = None,
                   sample_s: float = 0.5, limit: int | None = None) -> ThreadChoice:
    """torch threads for work about to start: the cores this process may use that other work leaves free.

    ``requested`` (> 0): exactly that many, whatever the load (the user's ``threads``).  Otherwise the budget
    (``core_budget``: the affinity cores, capped by ``$PLAYBOOK_CORES``) minus the cores other work keeps busy
    (``busy``, given by the caller, or measured by ``busy_cores(sample_s)``), a core counting as free when at least
    ``FREE_SHARE`` of it is idle; at least 1, at most ``limit`` (torch's own default: the physical cores, or
    ``$OMP_NUM_THREADS``).  So this process's threads plus the busy ones never exceed the cores, unless one thread
    is already more than is free.  Measure once per stage (sampling takes ``sample_s``) and keep the choice."""
    n_cores = cores or available_cores()
    budget = core_budget(n_cores)
    cap = max(1, limit or TORCH_DEFAULT_THREADS)
    policy = wait_policy()
    if requested:
        if requested < 0:
            raise ValueError(f"requested={requested!r} threads must be >= 0 (0 or None: choose from the free cores)")
        note = "" if requested <= budget else f"; more than the {budget} core(s) this process may use"
        return ThreadChoice(int(requested), n_cores, budget, None, "requested", load_average(),
                            f"{requested} thread(s) as requested{note}", int(requested), cap, 0.0, policy)
    if busy is None:
        measured = busy_cores(sample_s)
        other, source, avg, sampled = measured.busy, measured.source, measured.load_average, measured.sample_s
    else:
        other, source, avg, sampled = max(0.0, float(busy)), "given", load_average(), 0.0
    free = max(0.0, budget - other)
    threads = max(1, min(budget, cap, math.floor(free + FREE_SHARE)))
    how = {"sampled": f"measured over {sampled:g} s", "given": "given",
           "load average": "1-minute load average minus this process's share"}.get(source, source)
    reason = (f"{threads} thread(s): {budget} core(s) to use" + (f" (of {n_cores})" if budget < n_cores else "")
              + f", other work busy on {other:.2f} ({how}), so {free:.2f} free"
              + (f"; at most {cap} (torch's default)" if cap < math.floor(free + FREE_SHARE) else ""))
    return ThreadChoice(threads, n_cores, budget, round(other, 2), source, avg, reason, 0, cap, sampled, policy)


# --------------------------------------------------------------------------- worker processes x threads
@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """How independent models (families, students) are trained: ``workers`` processes of ``threads_per_worker``
    torch threads each (``workers`` 0: all in this process, with ``main_threads``), from the free cores measured by
    ``choose_threads``."""

    workers: int
    threads_per_worker: int
    main_threads: int  # 0: torch's current count
    free_cores: int  # 0: not measured (nothing to train, or training here with the threads asked for)
    pending: int  # models not yet in the cache
    jobs: int  # what the caller allowed
    reason: str
    choice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def free_process_cores() -> tuple[int, dict[str, Any]]:
    """Cores free for single-threaded worker processes, and the measurement: ``choose_threads`` limited by
    ``core_budget()`` rather than by torch's thread default, since ``$OMP_NUM_THREADS=1`` bounds each process's
    threads, not how many one-thread processes the free cores can take."""
    choice = choose_threads(limit=core_budget())
    return choice.threads, choice.to_dict()


def plan_workers(jobs: int, pending: int, threads: int = 0, free_cores: int | None = None,
                 noun: tuple[str, str] = ("family", "families"), cores: int | None = None,
                 share: bool | None = None) -> WorkerPlan:
    """Worker processes and threads for ``pending`` models to train (families, students: ``noun`` is the singular
    and plural the reasons use), at most ``jobs`` processes.

    ``free_cores``: how many cores other work leaves free (default: measured, ``free_process_cores()``).  ``cores``:
    how many this process may use (default ``core_budget()``).  Workers are started only when at least two models
    are pending:
    - two or more cores free: ``workers`` = min(jobs, pending, free cores), each with ``free cores // workers``
      threads, so workers x threads <= free cores;
    - fewer free than ``cores`` allows two (other work is busy), and the scheduler shares the cores per process
      (``share``, default ``sharing_helps()``): ``workers`` = min(jobs, pending, cores) of one thread each
      (``shared_workers``).  Our busy threads still never exceed our cores; independent one-thread processes never
      wait on each other, so they take their share of the busy cores instead of one core.  Where the scheduler
      shares per session (Linux's autogroup), more processes buy nothing and everything stays in this process.
    ``threads`` (> 0) is the thread count asked for training in this process; 0 = the free cores."""
    choice = None
    if free_cores is None:
        if pending == 0:  # everything is in the cache: loading needs no measurement
            return WorkerPlan(0, 0, threads, 0, 0, jobs, f"every {noun[0]} is in the checkpoint cache")
        if threads and (jobs < 2 or pending < 2):  # in this process, with the threads asked for: nothing to measure
            return WorkerPlan(0, 0, threads, 0, pending, jobs,
                              f"{pending} {noun[pending != 1]} to train, jobs={jobs}: in this "
                              f"process with {threads} thread(s), as asked")
        free_cores, choice = free_process_cores()
    free_cores = max(1, int(free_cores))
    cores = core_budget() if cores is None else max(1, int(cores))
    main_threads = threads or free_cores
    if jobs < 2 or pending < 2:
        return WorkerPlan(0, 0, main_threads, free_cores, pending, jobs,
                          f"{pending} {noun[pending != 1]} to train, jobs={jobs}: in this process "
                          f"with {main_threads} thread(s)", choice)
    workers = min(jobs, pending, free_cores)
    if workers < 2:
        shared, why = shared_workers(min(jobs, pending), free_cores, cores, share)
        if shared:
            return WorkerPlan(shared, 1, main_threads, free_cores, pending, jobs, why, choice)
        return WorkerPlan(0, 0, main_threads, free_cores, pending, jobs,
                          f"only {free_cores} core(s) free and {cores} to use: in this process with {main_threads} "
                          "thread(s)" + (f" ({why})" if why else ""), choice)
    per = max(1, free_cores // workers)
    return WorkerPlan(workers, per, main_threads, free_cores, pending, jobs,
                      f"{workers} worker processes x {per} thread(s) on {free_cores} free core(s)", choice)


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def sharing_helps(autogroup: Path = AUTOGROUP) -> tuple[bool, str]:
    """Whether one-thread workers gain anything beside other busy work, and why not: not where Linux's autogroup
    scheduler is on, since it shares the CPUs between sessions (a notebook kernel is a session of its own) whatever
    their number of processes.  Measured in ``make report`` beside one busy process in another session: stage 03's
    two one-thread workers got 0.95 cores together (363 CPU-s in 381 s), against 1.29 in one session."""
    try:
        on = autogroup.read_text().strip() == "1"
    except OSError:
        return True, ""
    return (False, f"{autogroup} = 1: the scheduler shares the CPUs between sessions, so a second process would "
                   "add no share of the busy cores") if on else (True, "")


def shared_workers(limit: int, free_cores: int, cores: int, share: bool | None = None) -> tuple[int, str]:
    """One-thread worker processes to share busy cores when fewer than two are free (``plan_workers``,
    ``plan_coreai_processes``): min(``limit``, ``cores``) of them where that is two or more and the scheduler shares
    per process (``share``, default ``sharing_helps()``), with the reason; else 0 and why not ("" when the cores
    allow fewer than two)."""
    workers = min(limit, cores)
    if workers < 2:
        return 0, ""
    helps, why_not = sharing_helps() if share is None else (share, "")
    if not helps:
        return 0, why_not
    return workers, (f"{workers} worker processes x 1 thread although only {free_cores} of {cores} core(s) are free: "
                     "independent one-thread processes never wait on each other, so beside other busy work they "
                     "take their share of every core (measured beside one busy process in the same session on 2 "
                     "cores: two trainings side by side took 0.82x the wall time of one after the other, at 1.06x "
                     "the CPU time)")


# --------------------------------------------------------------------------- what a step cost
@dataclasses.dataclass(frozen=True)
class CpuClock:
    """Wall time and CPU seconds (user + system) of this process and of its children that have ended (and been
    waited for: a notebook kernel, a worker pool's processes, ``subprocess.run``) at one instant."""

    wall: float
    self_cpu: float
    children_cpu: float

    @classmethod
    def now(cls) -> "CpuClock":
        try:
            import resource

            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return cls(time.perf_counter(), me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime)
        except ImportError:  # Windows: os.times has no children there (0)
            t = os.times()
            return cls(time.perf_counter(), t.user + t.system, t.children_user + t.children_system)

    def since(self, start: "CpuClock") -> dict[str, float]:
        cpu_self, cpu_children = self.self_cpu - start.self_cpu, self.children_cpu - start.children_cpu
        wall = self.wall - start.wall
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu_self + cpu_children, 3), "cpu_self_s": round(cpu_self, 3),
                "cpu_children_s": round(cpu_children, 3),
                "cpu_per_wall": round((cpu_self + cpu_children) / wall, 3) if wall > 0 else None}


class StepTimer:
    """Wall and CPU seconds (this process and its children) per named step, with the load average at its start.

    ::

        timer = StepTimer()
        with timer.step("teacher_logits"):
            ...
        record["cost"] = timer.to_dict()   # {"steps": {name: {...}}, "total": {...}, "load_average_start": [...]}

    A step entered again (a name used twice) adds up, and counts its ``calls``.  CPU seconds do not grow when other
    processes compete for the cores unless threads spin while they wait: they are the figure to compare between
    runs on a shared machine; ``cpu_per_wall`` is the average number of cores the step kept busy."""

    def __init__(self) -> None:
        self.started = CpuClock.now()
        self.load_start = load_average()
        self.steps: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Time the block as step ``name``; yields the step's entry (filled in when the block ends)."""
        entry = self.steps.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "cpu_self_s": 0.0, "cpu_children_s": 0.0,
                                             "calls": 0, "load_average_start": list(load_average() or ()) or None})
        start = CpuClock.now()
        try:
            yield entry
        finally:
            spent = CpuClock.now().since(start)
            for key in ("wall_s", "cpu_s", "cpu_self_s", "cpu_children_s"):
                entry[key] = round(entry[key] + spent[key], 3)
            entry["calls"] += 1
            entry["cpu_per_wall"] = round(entry["cpu_s"] / entry["wall_s"], 3) if entry["wall_s"] > 0 else None

    def total(self) -> dict[str, float]:
        """Wall and CPU seconds since the timer was made (steps and everything between them)."""
        return CpuClock.now().since(self.started)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": {k: dict(v) for k, v in self.steps.items()}, "total": self.total(),
                "load_average_start": list(self.load_start) if self.load_start else None}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The repository's HEAD commit, if this is a git checkout."""
    root = repository_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(compute_unit: str | None = None, runtime: str | None = None) -> dict[str, Any]:
    """A JSON-ready record of where a measurement ran (device, OS, versions, threads, compute unit)."""
    accel = "cpu"
    if torch.cuda.is_available():
        accel = f"cuda:{torch.cuda.get_device_name(0)}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        accel = "mps"
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cores_available": available_cores(),
        "core_budget": core_budget(),  # the cores this run may use: $PLAYBOOK_CORES, set by a batch, caps them
        "load_average": list(load_average() or ()) or None,
        "openmp": wait_policy(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "accelerator": accel,
        "runtime": runtime,
        "compute_unit": compute_unit,
        "git_commit": git_commit(),
        "playbook_version": playbook_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # set by `playbook batch --scheduler` for the run it starts on a Dask worker: "host pid N (address)"
        "worker": os.environ.get("PLAYBOOK_WORKER"),
    }


def rss_mb(field: str) -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process, MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # macOS: only the peak is available, in bytes

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0)


def progress_options(progress: bool) -> dict[str, bool]:
    """tqdm arguments for a progress bar: off when ``progress`` is False; otherwise left to tqdm, so that
    ``TQDM_DISABLE=1`` in the environment still silences it."""
    return {} if progress else {"disable": True}
