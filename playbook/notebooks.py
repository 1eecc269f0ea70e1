"""Stage notebooks as papermill jobs: find them, read their parameters, run them.

papermill only *warns* about a parameter the notebook does not declare; here an unknown name is an
error raised before anything runs (``check_parameters``), and the notebooks themselves reject
unknown names again when they build their config from ``globals()``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

from playbook.config import ConfigError
from playbook.paths import PACKAGE_DIR, notebooks_dir, repository_root
from playbook.stages import STAGES, Stage


def stage_notebooks(folder: Path | None = None) -> list[tuple[Stage, Path]]:
    """The stages whose notebook exists in ``folder`` (default: the playbook's), in pipeline order."""
    folder = Path(folder) if folder is not None else notebooks_dir()
    return [(s, folder / s.notebook) for s in STAGES if (folder / s.notebook).exists()]


def notebook_parameters(path: Path) -> dict[str, dict[str, Any]]:
    """The names declared in a notebook's ``parameters`` cell, with papermill's inferred type, default and help."""
    import papermill

    return {name: dict(info) for name, info in papermill.inspect_notebook(str(path)).items()}


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Raise ``ConfigError`` if ``params`` names anything the notebook's parameters cell does not declare."""
    declared = notebook_parameters(path)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"{Path(path).name} has no parameter(s) {unknown}; its parameters are {sorted(declared)}")


def notebook_source_hash(path: Path) -> str:
    """SHA-256 of a notebook's cell types and sources (outputs and metadata do not count)."""
    nb = json.loads(Path(path).read_text())
    cells = [[c.get("cell_type"), "".join(c.get("source", ""))] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def kernel_environment() -> None:
    """Let notebook kernels import ``playbook`` from this checkout whether or not it is pip-installed
    (the kernel inherits ``os.environ``; its working folder is not the repository root)."""
    root = repository_root()
    if root is None:
        return
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in current:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *current])


KERNEL_NAME = "python3"
# what the notebooks need from their kernel: the playbook with its dependencies (torch, coremltools, matplotlib)
_KERNEL_PROBE = "import playbook.stages.common, playbook.views, coremltools; print(playbook.__file__)"


def kernel_problem(name: str = KERNEL_NAME) -> str | None:
    """Why the Jupyter kernel ``name`` cannot run the playbook's notebooks, or ``None`` when it can.

    papermill starts the kernel spec of that name.  A spec whose interpreter is ``python``/``python3`` (as
    ipykernel ships it) or lives in this environment (``python -m ipykernel install --sys-prefix``, what the
    Makefile does), and ipykernel's built-in ``python3`` when no spec exists, all run this interpreter.  A spec
    pointing at another interpreter (e.g. a user-wide ``~/.local/share/jupyter/kernels/python3``) is started once
    to check that it imports this same playbook with its dependencies."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = (f"install one for this environment with `{sys.executable} -m ipykernel install --sys-prefix --name {name}`"
           " (or remove the kernel spec that points elsewhere)")
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return f"no Jupyter kernel named {name!r} (ipykernel is not importable here?); {fix}"
    program = spec.argv[0] if spec.argv else ""
    if program in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return None  # jupyter_client runs sys.executable for these
    if Path(program).parent.resolve() == Path(sys.executable).parent.resolve():
        return None
    env = {**os.environ, **(spec.env or {})}
    try:
        probe = subprocess.run([program, "-c", _KERNEL_PROBE], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the Jupyter kernel {name!r} ({spec.resource_dir}) runs {program}, which could not start ({exc}); {fix}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"the Jupyter kernel {name!r} ({spec.resource_dir}) runs {program}, which cannot import the playbook "
                f"and its dependencies ({last}); {fix}")
    printed = probe.stdout.strip().splitlines()
    imported = Path(printed[-1]).resolve().parent if printed else None
    if imported != PACKAGE_DIR:
        return (f"the Jupyter kernel {name!r} ({spec.resource_dir}) runs {program}, which imports another playbook "
                f"({imported}) than this command ({PACKAGE_DIR}); {fix}")
    return None


def _kernel_manager_class(kernel_stderr: IO[str] | None = None) -> type:
    """jupyter_client's kernel manager on the IPC transport (Unix sockets): local kernels need no TCP ports, and
    the kernel does not print its warning about unencrypted TCP into every run.

    ``kernel_stderr`` (an open file) receives the kernel process's own stderr -- what ipykernel prints outside
    any cell, e.g. its tracebacks when a run is interrupted and its sockets close under it -- instead of the
    terminal of the command that started it."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc" if os.name == "posix" else "tcp"

        @default("ip")
        def _default_ip(self) -> str:
            # jupyter_client's default IPC prefix is "kernel-ipc" in the working folder, the same for every kernel
            # started there: two runs side by side (a batch with --jobs 2) would bind each other's sockets and
            # one kernel never answers.  A prefix of its own per kernel, in the temp folder (Unix socket paths
            # must stay under ~100 characters); jupyter_client removes the socket files at shutdown.
            if self.transport != "ipc":
                return super()._ip_default()
            return str(Path(tempfile.gettempdir()) / f"pb-kernel-{uuid.uuid4().hex[:16]}")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            if kernel_stderr is not None:
                kernel_stderr.flush()
                kw["stderr"] = kernel_stderr
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return LocalKernelManager


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, output: Path, params: dict[str, Any], prepare_only: bool = False,
            log_output: bool = False, cwd: Path | str | None = None, stdout_file: Any = None,
            stderr_file: Any = None, quiet: bool = False, kernel_stderr: IO[str] | None = None,
            start_timeout: float = 300) -> Path:
    """Run (or, with ``prepare_only``, just parameterise) a notebook with papermill after checking its parameters.

    ``cwd`` is the kernel's working folder (default: the notebook's folder); ``stdout_file`` and
    ``stderr_file`` (open text files) receive what the cells print, as they print it.  ``quiet`` (unattended
    runs) turns progress bars off in the kernel: coremltools' and training bars would fill the executed notebook.
    ``kernel_stderr`` (an open file) takes the kernel process's own stderr.  ``start_timeout``: seconds the
    kernel may take to start (papermill's default, 60 s, is too short on a loaded 2-core machine running
    several models side by side).
    """
    import papermill

    check_parameters(path, params)
    kernel_environment()
    if not prepare_only:
        problem = kernel_problem()
        if problem:
            raise ConfigError(problem)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    env_cwd = Path(cwd) if cwd is not None else Path(path).resolve().parent
    env = {"TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "5")}
    if quiet:
        env["TQDM_DISABLE"] = "1"
    with _environment(**env):
        papermill.execute_notebook(str(path), str(output), parameters=params, cwd=str(env_cwd),
                                   prepare_only=prepare_only, log_output=log_output, progress_bar=False,
                                   kernel_name=KERNEL_NAME, stdout_file=stdout_file, stderr_file=stderr_file,
                                   start_timeout=start_timeout,
                                   kernel_manager_class=_kernel_manager_class(kernel_stderr))
    return output


def batch_parameters(declared: dict[str, Any], reports_dir: Path | str, smoke: bool) -> dict[str, Any]:
    """What an unattended run (CLI, CI) passes besides the user's values: the reports folder, smoke mode and
    ``interactive=False`` (no ipywidgets without a live kernel) -- each only where the notebook declares it."""
    from playbook.stages.common import SMOKE

    wanted: dict[str, Any] = {"reports_dir": str(reports_dir), "interactive": False}
    if smoke:
        wanted.update(smoke=True, dataset=SMOKE.dataset)
    return {k: v for k, v in wanted.items() if k in declared}


def prepare_smoke_notebooks(out_dir: Path, reports_dir: Path, folder: Path | None = None) -> list[Path]:
    """Parameterised (not executed) smoke copies of every stage notebook, for nbval.

    Each copy gets the smoke parameters it declares and ``reports_dir``, so the chain 01 -> 02 -> ... -> 06
    runs on tiny data into a throw-away reports folder.
    """
    out = []
    for _, path in stage_notebooks(folder):
        params = batch_parameters(notebook_parameters(path), reports_dir, smoke=True)
        out.append(execute(path, Path(out_dir) / path.name, params, prepare_only=True))
    return out


def copy_notebooks(target: Path, overwrite: bool = False) -> list[Path]:
    """Copy the walkthrough notebooks (every ``*.ipynb`` of ``notebooks_dir()``) into ``target`` for a reader.

    Refuses to replace a notebook already in ``target`` unless ``overwrite``: the reader may have edited it."""
    sources = sorted(notebooks_dir().glob("*.ipynb"))
    if not sources:
        raise ConfigError(f"no notebooks to copy in {notebooks_dir()}")
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file, not a folder: name a folder (it is created if missing)")
    clashes = [s.name for s in sources if (target / s.name).exists()]
    if clashes and not overwrite:
        raise ConfigError(f"{target} already has {clashes}; pass --force to overwrite them or name another folder")
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{target}: {probe} is a file, not a folder: name a folder (it is created if missing)")
    try:  # before anything is copied: a folder this user may not write to fails whole, with its reason
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the notebooks into {target} ({probe}: {exc.strerror}): a permission "
                          "problem, this user may not write there; name another DIR: playbook notebooks DIR") from None
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(s, target / s.name)) for s in sources]
