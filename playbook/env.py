"""Provenance: what machine, OS, library versions and settings produced a number."""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import torch

from playbook.paths import repository_root

PACKAGES = ("torch", "coremltools", "numpy", "scipy", "scikit-learn", "papermill")


def playbook_version() -> str:
    """The version of the playbook code that is running (``playbook.__version__``, which the wheel's metadata
    also takes), installed or not."""
    from playbook import __version__

    return __version__


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's CPU thread count set to ``threads`` for the block (0 leaves it), restored afterwards.

    Yields the count in effect, for the record."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


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
