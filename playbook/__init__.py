"""Core ML optimization playbook: the logic behind the stage notebooks (see README.md).

Importing the package sets OpenMP's wait policy for this process and every process it starts (notebook kernels,
training workers), unless the user has set it: ``OMP_WAIT_POLICY=PASSIVE`` (GNU OpenMP, the runtime of torch's
Linux wheels) and ``KMP_BLOCKTIME=0`` (Intel/LLVM OpenMP).  The default policy lets a torch thread that waits at a
barrier spin on its core; on a machine where other work wants the same cores, the spinning burns the cores the
other threads need and a stage's CPU time grows with the load (see ``playbook.env.choose_threads``).  OpenMP reads
these once, when torch loads it, so they are set here, before any module of the package imports torch.
``PLAYBOOK_OPENMP_DEFAULTS=0`` leaves the environment alone.
"""
from __future__ import annotations

import os as _os
import sys as _sys
import time as _time

__version__ = "0.1.0"

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
_SET_BY_PLAYBOOK = "PLAYBOOK_SET_OPENMP"  # names this package (here or in a parent process) put in the environment


def _set_openmp_defaults() -> dict[str, object]:
    """Put ``OPENMP_DEFAULTS`` in ``os.environ`` where the user has not set them; what was done, for the record."""
    torch_first = "torch" in _sys.modules  # then this process's OpenMP runtime has already read its settings
    if _os.environ.get("PLAYBOOK_OPENMP_DEFAULTS", "1").strip() == "0":
        return {"set_here": [], "torch_imported_first": torch_first, "disabled": True}
    set_here = [name for name in OPENMP_DEFAULTS if name not in _os.environ]
    for name in set_here:
        _os.environ[name] = OPENMP_DEFAULTS[name]
    if set_here:  # children inherit the values and this marker: they can tell the playbook's choice from the user's
        inherited = [n for n in _os.environ.get(_SET_BY_PLAYBOOK, "").split(",") if n]
        _os.environ[_SET_BY_PLAYBOOK] = ",".join(sorted(set(inherited) | set(set_here)))
    return {"set_here": set_here, "torch_imported_first": torch_first, "disabled": False}


OPENMP_AT_IMPORT = _set_openmp_defaults()
_IMPORTED_AT = _time.monotonic()  # about when this process started (playbook.env.busy_cores off Linux)
