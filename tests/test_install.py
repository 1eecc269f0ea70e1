"""The playbook as a user installs it: declared dependencies, shipped notebooks, ``--version``, ``notebooks DIR``,
a kernel that cannot run the playbook, and a wheel installed into a fresh virtual environment that runs the
whole chain from an empty folder.

The wheel test needs no network: the wheel is built with the setuptools already installed
(``--no-build-isolation``), and the fresh environment takes its dependencies from the environment running the
tests (one ``.pth`` line), so ``pip install --no-index`` must find every declared dependency already installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import playbook
from playbook import cli
from playbook.notebooks import kernel_environment, kernel_problem
from playbook.paths import PACKAGE_DIR, notebooks_dir

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    return pins


# --------------------------------------------------------------------------- declared dependencies
def test_requirements_pins_fall_inside_the_declared_ranges():
    """requirements.txt (exact pins, the repository's set-up) and pyproject.toml (ranges, what pip installs) agree."""
    pins = _pins()
    base = [Requirement(r) for r in PYPROJECT["dependencies"]]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["optional-dependencies"].items()}
    declared = {canonicalize_name(r.name): r for r in base + [r for reqs in extras.values() for r in reqs]
                if canonicalize_name(r.name) != canonicalize_name(PYPROJECT["name"])}
    for req in base:
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"runtime dependency {req} has no exact pin in requirements.txt"
    for name, pin in pins.items():
        assert name in declared, f"requirements.txt pins {pin} but pyproject.toml declares it nowhere"
        (version,) = [s.version for s in pin.specifier]
        assert declared[name].specifier.contains(version, prereleases=True), \
            f"requirements.txt pins {pin}, outside pyproject.toml's {declared[name]}"
    assert str(pins["torch"].specifier) == "==2.13.0"  # never a bare torch (a multi-GB CUDA build)
    dev = {canonicalize_name(r.name) for r in extras["dev"]}
    assert {"pytest", "nbval"} <= dev


# --------------------------------------------------------------------------- --version, notebooks DIR, the kernel
def test_version_prints_the_playbook_coremltools_and_torch_versions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"playbook {playbook.__version__} (checkout {REPO}")
    assert lines[1:] == [f"coremltools {version('coremltools')}", f"torch {version('torch')}"]


def test_notebooks_command_copies_every_walkthrough_notebook_and_keeps_edits(tmp_path, capsys):
    target = tmp_path / "walkthrough"
    sources = sorted(notebooks_dir().glob("*.ipynb"))
    assert len(sources) >= 3
    assert cli.main(["notebooks", str(target)]) == cli.EXIT_OK
    assert sorted(p.name for p in target.iterdir()) == [s.name for s in sources]
    for source in sources:
        assert (target / source.name).read_bytes() == source.read_bytes()
    edited = target / sources[0].name
    edited.write_text("{}")
    assert cli.main(["notebooks", str(target)]) == cli.EXIT_USAGE
    assert "--force" in capsys.readouterr().err and edited.read_text() == "{}"
    assert cli.main(["notebooks", str(target), "--force"]) == cli.EXIT_OK
    assert edited.read_bytes() == sources[0].read_bytes()
    assert cli.main(["notebooks", str(edited)]) == cli.EXIT_USAGE  # a file, not a folder


def test_a_kernel_on_another_interpreter_without_the_playbook_is_a_clear_error(tmp_path, monkeypatch):
    assert kernel_problem() is None  # this environment's own kernel (the Makefile installs it) runs the notebooks
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    python = bare / "bin" / "python"
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "bare",
                                                  "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # earlier on the Jupyter path than any other
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # kernel_environment may extend it
    kernel_environment()
    problem = kernel_problem()
    assert problem is not None and str(python) in problem and "No module named" in problem
    assert f"{sys.executable} -m ipykernel install --sys-prefix --name python3" in problem


# --------------------------------------------------------------------------- the wheel, installed anywhere
def _source_tree(dest: Path) -> Path:
    """The files a commit would hold (tracked plus untracked-not-ignored), copied away from build/ and .egg-info
    leftovers that an in-tree build could pick up."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _fresh_environment(venv: Path) -> Path:
    """A new virtual environment (no packages) that sees the running environment's packages through one ``.pth``
    line.  ``venv --system-site-packages`` would not do: its "system" is the base interpreter, not this venv.

    Data files that pip installs under ``<prefix>/share/jupyter`` beside a package (nbconvert's HTML templates)
    are linked in from this environment, as an ordinary install of those packages would put them there; its
    ``kernels/`` is left out on purpose: the fresh environment must find its own ``python3`` kernel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    fresh = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                 "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                                check=True, timeout=60).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (fresh / "_playbook_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    share = Path(sys.prefix) / "share" / "jupyter"
    (venv / "share" / "jupyter").mkdir(parents=True)
    for entry in share.iterdir() if share.is_dir() else []:
        if entry.name != "kernels":
            (venv / "share" / "jupyter" / entry.name).symlink_to(entry)
    return fresh


def _pip_env() -> dict[str, str]:
    """pip with only the sources named on its command line: no config file, find-links or constraints of the
    machine (with --no-index, every dependency must then be satisfied by what is already installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # pip's own settings only
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _package_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if "__pycache__" not in p.parts}


def _user_env(tmp_path: Path, venv: Path, base: dict[str, str]) -> dict[str, str]:
    """A user's shell: nothing pointing into the repository, the platform cache in a temp folder."""
    env = {k: v for k, v in base.items()
           if k not in ("PYTHONPATH", "PLAYBOOK_CACHE_DIR", "PLAYBOOK_REPORTS_DIR", "JUPYTER_PATH", "VIRTUAL_ENV",
                        "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", XDG_CACHE_HOME=str(tmp_path / "user-cache"),
               OMP_NUM_THREADS="1", TQDM_DISABLE="1", MPLBACKEND="Agg")
    return env


def _wheel_check(tmp_path: Path, base_env: dict[str, str]) -> None:
    """`pip wheel .`, install it into a new virtual environment, then from an empty folder
    `playbook run --model resnet --dataset digits --smoke` writes ./reports/resnet/report.html (1-3 min)."""
    source = _source_tree(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(source)], env=_pip_env(), check=True, timeout=600)
    (wheel,) = dist.glob("coreml_playbook-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("playbook/notebooks/")}
    assert shipped == {f"playbook/notebooks/{p.name}" for p in (REPO / "notebooks").glob("*.ipynb")}
    modules = {p.relative_to(REPO).as_posix() for p in PACKAGE_DIR.rglob("*.py")}
    assert modules <= names and not any(n.startswith(("tests/", "notebooks/", "conftest")) for n in names)

    venv = tmp_path / "venv"
    site_packages = _fresh_environment(venv)
    python = venv / "bin" / "python"
    # --no-index: every declared dependency must already be installed (nothing is downloaded)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q", str(wheel)],
                   env=_pip_env(), check=True, timeout=600)
    installed = site_packages / "playbook"
    assert (installed / "notebooks" / "01_baseline.ipynb").is_file()

    work = tmp_path / "client-project"
    work.mkdir()
    env = _user_env(tmp_path, venv, base_env)
    playbook_cmd = venv / "bin" / "playbook"
    version = subprocess.run([str(playbook_cmd), "--version"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines()[0] == f"playbook {playbook.__version__} (installed at {installed})"

    before = _package_files(installed)
    run = subprocess.run([str(playbook_cmd), "run", "--model", "resnet", "--dataset", "digits", "--smoke"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = work / "reports" / "resnet" / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    assert json.loads((work / "reports" / "resnet" / "run.json").read_text())["status"] == "ok"
    assert (work / "reports" / "index.html").is_file()
    baseline = json.loads((work / "reports" / "resnet" / "baseline.json").read_text())
    # the notebooks' kernel ran the installed package (a checkout would record its git commit) ...
    assert baseline["environment"]["git_commit"] is None
    assert baseline["playbook_version"] == playbook.__version__
    # ... and trained into the platform's cache folder, not into the repository or the package
    checkpoint = Path(baseline["training"]["checkpoint"])
    assert checkpoint.parent == tmp_path / "user-cache" / "coreml-playbook" / "checkpoints" and checkpoint.is_file()
    assert _package_files(installed) == before, "the run wrote into the installed package"
    assert not (site_packages / "reports").exists()

    copied = subprocess.run([str(playbook_cmd), "notebooks", "walkthrough"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in (work / "walkthrough").iterdir()) == sorted(
        p.name for p in (REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.skipif(not (REPO / ".git").exists(),
                    reason="builds the wheel from a git checkout of the repository")
@pytest.mark.background.with_args(_wheel_check)
def test_wheel_installs_into_a_fresh_venv_and_runs_from_an_empty_folder(background):
    """The wheel, installed anywhere (``_wheel_check``, run in the background from the session's first test)."""
    background[_wheel_check].result(timeout=1800)
