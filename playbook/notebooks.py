"""Stage notebooks as papermill jobs: discover them, read their parameters, run them.

papermill only *warns* about a parameter the notebook does not declare; here an unknown
name is an error raised before anything runs (``check_parameters``), and the notebooks
themselves reject unknown names again when they build their config from ``globals()``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from playbook.config import ConfigError

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
STAGE_ORDER = ("01_baseline", "02_quantization", "03_distillation", "04_architecture", "05_benchmark", "06_report")
SMOKE_PARAMETERS = {"dataset": "digits", "smoke": True}


def stage_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The stage notebooks that exist, in pipeline order."""
    return [notebooks_dir / f"{stem}.ipynb" for stem in STAGE_ORDER if (notebooks_dir / f"{stem}.ipynb").exists()]


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


def kernel_environment() -> None:
    """Let notebook kernels import ``playbook`` from this checkout whether or not it is pip-installed
    (the kernel inherits ``os.environ``; its working folder is not the repository root)."""
    root = str(Path(__file__).resolve().parent.parent)
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in current:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *current])


def execute(path: Path, output: Path, params: dict[str, Any], prepare_only: bool = False,
            log_output: bool = False, cwd: Path | str | None = None, stdout_file: Any = None,
            stderr_file: Any = None) -> Path:
    """Run (or, with ``prepare_only``, just parameterise) a notebook with papermill after checking its parameters.

    ``cwd`` is the kernel's working folder (default: the notebook's folder); ``stdout_file`` and
    ``stderr_file`` (open text files) receive what the cells print, as they print it.
    """
    import papermill

    check_parameters(path, params)
    kernel_environment()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    env_cwd = Path(cwd) if cwd is not None else Path(path).resolve().parent
    os.environ.setdefault("TQDM_MININTERVAL", "5")
    papermill.execute_notebook(str(path), str(output), parameters=params, cwd=str(env_cwd),
                               prepare_only=prepare_only, log_output=log_output, progress_bar=False,
                               kernel_name="python3", stdout_file=stdout_file, stderr_file=stderr_file)
    return output


def prepare_smoke_notebooks(out_dir: Path, reports_dir: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Parameterised (not executed) smoke copies of every stage notebook, for nbval.

    Each copy gets the smoke parameters it declares and ``reports_dir``, so the chain
    01 -> 02 -> ... -> 06 runs on tiny data into a throw-away reports folder.
    """
    out = []
    wanted = {**SMOKE_PARAMETERS, "reports_dir": str(reports_dir)}
    for path in stage_notebooks(notebooks_dir):
        declared = notebook_parameters(path)
        params = {k: v for k, v in wanted.items() if k in declared}
        out.append(execute(path, Path(out_dir) / path.name, params, prepare_only=True))
    return out


# --------------------------------------------------------------------------- stages, stamps, skip-if-done
def stage_name(path_or_stem: Path | str) -> str:
    """``01_baseline.ipynb`` -> ``baseline``: the name of the record the stage writes (``06_report`` -> ``report``)."""
    stem = Path(path_or_stem).stem if str(path_or_stem).endswith(".ipynb") else str(path_or_stem)
    return stem.split("_", 1)[1] if "_" in stem else stem


def select_stages(spec: str | None, notebooks: list[Path]) -> list[Path]:
    """The notebooks named by ``spec`` ("01,06", "1,6", "baseline,report"; empty: all), in pipeline order.

    Raises ``ConfigError`` for a name that matches no existing stage notebook.
    """
    if not spec:
        return list(notebooks)
    wanted = [s.strip() for s in str(spec).split(",") if s.strip()]
    chosen: set[Path] = set()
    for item in wanted:
        hits = [p for p in notebooks
                if item in (p.stem, stage_name(p), p.stem.split("_", 1)[0]) or
                (item.isdigit() and p.stem.split("_", 1)[0].isdigit() and int(item) == int(p.stem.split("_", 1)[0]))]
        if not hits:
            valid = [f"{p.stem.split('_', 1)[0]} ({stage_name(p)})" for p in notebooks]
            raise ConfigError(f"--stages: no stage notebook matches {item!r}; the stages here are {valid}")
        chosen.update(hits)
    return [p for p in notebooks if p in chosen]


def notebook_source_hash(path: Path) -> str:
    """SHA-256 of a notebook's cell types and sources (outputs and metadata do not count)."""
    import hashlib
    import json

    nb = json.loads(Path(path).read_text())
    cells = [[c.get("cell_type"), "".join(c.get("source", ""))] for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def upstream_hashes(model_dir: Path, stage: str) -> dict[str, str]:
    """SHA-256 of each stage record written *before* ``stage`` that exists in ``model_dir``.

    A stage's results depend on its upstream records, so they are part of its fingerprint:
    when the baseline changes, every later stage runs again.
    """
    import hashlib

    from playbook.records import STAGES

    earlier = STAGES if stage not in STAGES else STAGES[: STAGES.index(stage)]
    out = {}
    for name in earlier:
        path = Path(model_dir) / f"{name}.json"
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def stage_fingerprint(path: Path, params: dict[str, Any], upstream: dict[str, str]) -> str:
    """Hash of what determines a stage's results: the notebook source, its parameters, its inputs.

    ``reports_dir`` is left out (where results are stored does not change them).
    """
    import hashlib
    import json

    payload = {"notebook": Path(path).name, "source": notebook_source_hash(path),
               "params": {k: v for k, v in sorted(params.items()) if k != "reports_dir"}, "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:20]


def stamp_path(model_dir: Path, stage: str) -> Path:
    """``reports/<model>/<stage>.stamp.json``: beside the stage's record."""
    return Path(model_dir) / f"{stage}.stamp.json"


def read_stamp(model_dir: Path, stage: str) -> dict[str, Any] | None:
    """The stamp of a stage's last successful run, or ``None`` (missing or unreadable)."""
    import json

    try:
        return json.loads(stamp_path(model_dir, stage).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(model_dir: Path, stage: str, fingerprint: str, params: dict[str, Any], notebook: Path,
                seconds: float) -> Path:
    """Record that ``stage`` finished with this fingerprint (written after its outputs, atomically)."""
    import datetime as dt

    from playbook.records import write_json

    return write_json(stamp_path(model_dir, stage), {
        "stage": stage, "fingerprint": fingerprint, "notebook": Path(notebook).name,
        "notebook_sha256": notebook_source_hash(notebook), "params": {k: repr(v) for k, v in params.items()},
        "seconds": round(seconds, 2), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


def is_up_to_date(model_dir: Path, stage: str, fingerprint: str, outputs: list[Path]) -> bool:
    """True when the stage's stamp has this fingerprint and every output it made still exists."""
    stamp = read_stamp(model_dir, stage)
    return bool(stamp) and stamp.get("fingerprint") == fingerprint and all(Path(p).exists() for p in outputs)


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal (``3``, ``0.5``, ``True``, ``{'width': 16}``), else the string itself."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def format_assignment(name: str, value: Any) -> str:
    """``name=value`` as ``-p`` takes it: text that reads back as itself stays bare, the rest is a literal."""
    return f"{name}={value}" if isinstance(value, str) and parse_value(value) == value else f"{name}={value!r}"


def run_command(model: str, dataset: str = "", smoke: bool = False, params: dict[str, Any] | None = None,
                stages: str = "", extra: Sequence[str] = ()) -> str:
    """The ``python -m playbook run`` command line (shell-quoted) for these settings: the one way
    every stage record and the CLI spell their reproduction command."""
    import shlex

    parts = ["python", "-m", "playbook", "run", "--model", model]
    if dataset:
        parts += ["--dataset", dataset]
    if smoke:
        parts.append("--smoke")
    if stages:
        parts += ["--stages", stages]
    for name, value in (params or {}).items():
        parts += ["-p", format_assignment(name, value)]
    parts += list(extra)
    return " ".join(shlex.quote(p) for p in parts)
