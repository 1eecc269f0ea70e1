"""A model's reports folder between a Dask worker and the client (``playbook batch --scheduler``).

Filesystem only, no Dask: ``pack_model_dir`` (on the worker) makes ``reports/<model>/`` a tar archive;
``install_model_dir`` (on the client) unpacks it beside the target and swaps it in with one atomic rename;
``clean_leftovers`` removes what a killed client left half-installed; ``wait_for_model_lock`` lets a retry on a
shared reports folder wait for the previous attempt's process.  ``playbook.distributed`` uses them (and
re-exports the first two).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

_SKIP_IN_ARCHIVE = (".lock", ".run-tmp")


# --------------------------------------------------------------------------- moving a model's folder
def pack_model_dir(model_dir: Path) -> bytes:
    """``reports/<model>/`` as a gzip tar archive (``<slug>/...``), without the run lock and temp folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(str(model_dir), arcname=model_dir.name,
                filter=lambda info: None if Path(info.name).name in _SKIP_IN_ARCHIVE else info)
    return buf.getvalue()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")


def install_model_dir(reports_root: Path, slug: str, archive: bytes) -> Path:
    """Unpack a model's archive beside ``reports/<slug>/`` and swap it in atomically; returns the folder.

    The archive must hold exactly one top-level folder, ``slug``; members that would land outside it (absolute
    paths, ``..``, links out) are refused by tarfile's ``data`` filter.
    """
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{slug}-", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            tops = {Path(m.name).parts[0] for m in tar.getmembers() if Path(m.name).parts}
            if tops != {slug}:
                raise ValueError(f"the archive for {slug!r} holds {sorted(tops)}, not one folder {slug!r}")
            tar.extractall(incoming, filter="data")
        new, target = incoming / slug, root / slug
        if not target.exists():
            os.replace(new, target)
        elif not _exchange(new, target):
            os.replace(target, incoming / ".previous")  # not atomic as a pair: the folder is briefly absent
            os.replace(new, target)
        return target
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def clean_leftovers(root: Path, older_than_s: float = 3600.0) -> None:
    """Remove ``.incoming-*`` folders a killed client left behind (an hour old or more)."""
    now = time.time()
    for path in root.glob(".incoming-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- a shared reports folder
def wait_for_model_lock(model_dir: Path, timeout_s: float) -> None:
    """Wait until no process holds ``reports/<model>/.lock`` (a previous attempt finishing its INTERRUPTED page)."""
    lock = model_dir / ".lock"
    if not lock.exists():
        return
    import fcntl

    deadline = time.monotonic() + timeout_s
    with open(lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # the run itself then fails with its "another playbook run" message
                time.sleep(1.0)

