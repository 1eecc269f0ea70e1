"""``playbook batch``: on a Dask cluster (``--scheduler local:N``), and stopped by SIGTERM (with or without one).

The fast tests check the pieces (scheduler addresses, the workers' environment check, the atomic swap of a
model's folder, the index's counts).  The batch tests drive the real command in a subprocess: over two tiny
stand-in notebooks (``--notebooks-dir``) where the point is the batch machinery (a worker killed mid-model,
SIGTERM), and over the real notebooks on digits in smoke mode for the three-model cluster batch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stand_ins import write_notebook

from playbook import cli
from playbook.config import ConfigError
from playbook.pipeline import record_failure
from playbook.report import pages

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- pieces
def test_scheduler_addresses():
    from playbook.distributed import Scheduler

    assert Scheduler.parse("local:3") == Scheduler(local_workers=3)
    assert Scheduler.parse("tcp://10.0.0.5:8786") == Scheduler(address="tcp://10.0.0.5:8786")
    assert Scheduler.parse("scheduler.lan:8786") == Scheduler(address="tcp://scheduler.lan:8786")
    for bad, message in [("local:0", "N >= 1"), ("local", "N >= 1"), ("local:two", "N >= 1"),
                         ("http://x:8786", "neither"), ("scheduler", "neither"), ("tcp://x", "neither")]:
        with pytest.raises(ConfigError, match=message):
            Scheduler.parse(bad)


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "2", "--scheduler", "local:2"], "exclude each other"),
    (["--transfer", "archive"], "only with --scheduler"),
    (["--scheduler", "local:0"], "local:N needs"),
    (["--scheduler", "8786"], "neither a scheduler address nor local:N"),
])
def test_batch_flags_are_checked_before_anything_runs(tmp_path, capsys, argv, message):
    batch = tmp_path / "batch.yaml"
    batch.write_text("- resnet\n")
    reports = tmp_path / "reports"
    assert cli.main(["batch", str(batch), *argv, "--reports-dir", str(reports)]) == 2
    assert message in capsys.readouterr().err
    assert not reports.exists()


def test_a_worker_whose_environment_differs_is_named_and_refused():
    from playbook.distributed import check_worker, environment_fingerprint, fingerprint_differences

    mine = environment_fingerprint()
    assert mine["packages"]["torch"] and mine["packages"]["distributed"]  # the pins are read from requirements.txt
    assert fingerprint_differences(mine, environment_fingerprint()) == []
    other = {**mine, "code_sha256": "0" * 64, "packages": {**mine["packages"], "torch": "2.12.0"}}
    other["packages"].pop("dask")
    found = fingerprint_differences(other, mine)
    assert len(found) == 3
    assert any(f.startswith("playbook code hash") for f in found)
    assert f"torch {mine['packages']['torch']} here, 2.12.0 on the client" in found
    assert f"dask {mine['packages']['dask']} here, not installed on the client" in found
    assert check_worker(other)["differences"] == found


def test_a_model_folder_is_swapped_in_whole(tmp_path):
    from playbook.distributed import install_model_dir, pack_model_dir

    worker_side = tmp_path / "scratch" / "resnet"
    (worker_side / "notebooks").mkdir(parents=True)
    (worker_side / "report.html").write_text("new report")
    (worker_side / "notebooks" / "01_baseline.ipynb").write_text("{}")
    (worker_side / ".lock").write_text("")
    root = tmp_path / "reports"
    old = root / "resnet"
    old.mkdir(parents=True)
    (old / "report.html").write_text("old report")
    (old / "quantization.json").write_text("{}")  # from an older run: must not survive next to the new report
    archive = pack_model_dir(worker_side)

    assert install_model_dir(root, "resnet", archive) == old
    assert (old / "report.html").read_text() == "new report"
    assert (old / "notebooks" / "01_baseline.ipynb").exists()
    assert not (old / "quantization.json").exists() and not (old / ".lock").exists()
    assert sorted(p.name for p in root.iterdir()) == ["resnet"]  # nothing left beside it

    with pytest.raises(ValueError, match="not one folder 'squeezenet'"):
        install_model_dir(root, "squeezenet", archive)
    assert sorted(p.name for p in root.iterdir()) == ["resnet"]


def test_the_index_counts_interrupted_models(tmp_path):
    for model, interrupted in (("resnet", False), ("squeezenet", True), ("mobilenetv2", True)):
        record_failure(tmp_path / model, model, "stopped", "python -m playbook run", stage="01_baseline",
                       interrupted=interrupted)
    html = pages.index_html(tmp_path)
    assert "3 model(s), 1 failed, 2 interrupted." in html
    assert html.count("INTERRUPTED in stage 01_baseline") == 2 and html.count("FAILED in stage 01_baseline") == 1


def test_the_reason_a_task_was_given_up_is_recorded():
    from distributed import KilledWorker

    from playbook.distributed import ModelProcessLost, _task_error

    class Last:
        address = "tcp://10.0.0.7:40000"

    reason = _task_error(KilledWorker("playbook-resnet-x", Last(), 1))
    assert "2 worker(s) died while running this model" in reason and "tcp://10.0.0.7:40000" in reason
    assert "tried 2 times" in _task_error(ModelProcessLost("resnet: playbook run was killed by signal SIGKILL"))


# --------------------------------------------------------------------------- stand-in notebooks
FAKE_01 = """\
model: str = "resnet"  # model
sleep: float = 0.0  # seconds the stage takes
once: str = ""  # a file: only the attempt that creates it sleeps (a retried model then finishes at once)
fail: bool = False  # the stage raises, as a broken model would
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
FAKE_01_BODY = """\
import os, time
from playbook.env import environment
from playbook.paths import model_dir
from playbook.records import StageRecord, write_stage_record
if not once:
    time.sleep(sleep)
elif not os.path.exists(once):
    open(once, "w").write(str(os.getpid()))  # the cell is running: this attempt is mid-stage now
    time.sleep(sleep)
if fail:
    raise RuntimeError("broken on purpose")
write_stage_record(model_dir(model, reports_dir or None), StageRecord(
    stage="baseline", model=model, config={"sleep": sleep, "smoke": smoke}, environment=environment(),
    run={"model": model}, reproduce=""))
"""
FAKE_06 = """\
model: str = "resnet"  # model
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
FAKE_06_BODY = """\
from playbook.paths import model_dir
from playbook.records import write_json
write_json(model_dir(model, reports_dir or None) / "report.json",
           {"model": model, "recommended": {"name": "fresh-variant", "top1": 50.0, "size_mb": 1.0}})
print(f"REPORT for {model}")
# the real stage renders its pages itself (ReportRun.finish)
(model_dir(model, reports_dir or None) / "report.html").write_text(f"<p>REPORT for {model}</p>")
"""




def _fake_notebooks(folder: Path) -> Path:
    nbs = folder / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "01_baseline.ipynb", FAKE_01, FAKE_01_BODY)
    write_notebook(nbs / "06_report.ipynb", FAKE_06, FAKE_06_BODY)
    return nbs


def _batch_env(folder: Path, base: dict[str, str]) -> dict[str, str]:
    env = dict(base, TQDM_DISABLE="1", PLAYBOOK_HEARTBEAT_S="0", PLAYBOOK_CACHE_DIR=str(folder / "cache"))
    env.pop("PLAYBOOK_REPORTS_DIR", None)
    return env


@pytest.fixture()
def fake_notebooks(tmp_path):
    return _fake_notebooks(tmp_path)


def _start_batch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "playbook", "batch", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{log.read_text() if log else ''}")


def _running_pid(model_dir: Path) -> int | None:
    try:
        status = json.loads((model_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return status["pid"] if status.get("status") == "running" else None


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_of(env: dict[str, str], grace_s: float = 15.0) -> list[str]:
    """Processes still alive (after up to ``grace_s``) whose environment carries this test's own cache folder:
    the batch's children, their notebook kernels, Dask workers."""
    marker = f"PLAYBOOK_CACHE_DIR={env['PLAYBOOK_CACHE_DIR']}".encode()
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc_dir / "environ").read_bytes().split(b"\0") and _alive(int(proc_dir.name)):
                    cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                    found.append(f"{proc_dir.name}: {cmdline.decode(errors='replace')}")
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


# --------------------------------------------------------------------------- a worker dies mid-model
def _worker_killed(tmp_path: Path, base_env: dict[str, str]) -> None:
    """Kill -9 the Dask worker process running a model: the scheduler runs the model again on the other worker,
    it completes there, and its record says so; the killed run's own process does not linger."""
    fake_notebooks, batch_env = _fake_notebooks(tmp_path), _batch_env(tmp_path, base_env)
    batch = tmp_path / "batch.yaml"
    in_stage = tmp_path / "first-attempt-in-stage"  # the first attempt's stage writes it, then sleeps 120 s
    batch.write_text(f"- {{model: resnet, params: {{sleep: 120, once: '{in_stage}'}}}}\n")
    reports, log = tmp_path / "reports", tmp_path / "batch.log"
    proc = _start_batch([str(batch), "--scheduler", "local:2", "--reports-dir", str(reports),
                         "--notebooks-dir", str(fake_notebooks)], batch_env, log)
    try:
        child = _wait_for(lambda: _running_pid(reports / "resnet"), 240, "the model to start", proc, log)
        worker = _parent_pid(child)
        assert "multiprocessing" in Path(f"/proc/{worker}/cmdline").read_text()  # a Dask worker process
        _wait_for(in_stage.exists, 120, "the first attempt's stage cell to run", proc, log)
        os.kill(worker, signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 0, out
    assert "[batch] resnet: started on" in out and ", attempt 2" in out and "[batch] 1/1 done: resnet ok" in out
    status = json.loads((reports / "resnet" / "run.json").read_text())
    assert status["status"] == "ok" and status["worker"]["pid"] not in (worker, None)
    assert status["worker"]["reports"] == "written to the shared reports folder"  # local workers see the folder
    record = json.loads((reports / "resnet" / "baseline.json").read_text())
    assert record["environment"]["worker"].startswith(f"{status['worker']['host']} pid {status['worker']['pid']}")
    from playbook.env import core_share
    assert record["environment"]["core_budget"] == core_share(2)  # two local workers share the machine's cores
    assert "REPORT for resnet" in (reports / "resnet" / "report.html").read_text()
    run_log = (reports / "resnet" / "run.log").read_text()
    assert "interrupted in 01_baseline" in run_log and run_log.count("===== ") == 2  # the killed attempt, the retry
    assert not _alive(child) and _processes_of(batch_env) == []
    index = (reports / "index.html").read_text()
    assert "1 model(s), 0 failed, 0 interrupted" in index and 'href="resnet/report.html"' in index


# --------------------------------------------------------------------------- SIGTERM to a batch
def _sigterm(tmp_path: Path, base_env: dict[str, str], mode: list[str]) -> None:
    """Three models that finished "ok" in an earlier batch are run again; SIGTERM arrives while two run and one
    waits.  Every model then has an INTERRUPTED page and run.json, the index counts three interrupted and shows
    no old "ok" row or figure, no child process is left, and the exit status is 128 + SIGTERM."""
    fake_notebooks, batch_env = _fake_notebooks(tmp_path), _batch_env(tmp_path, base_env)
    reports = tmp_path / "reports"
    for model in ("resnet", "squeezenet", "mobilenetv2"):  # what a previous, successful batch left
        d = reports / model
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps({"model": model, "recommended": {"name": "old-variant"}}))
        (d / "report.html").write_text("<p>old report</p>")
        (d / "run.json").write_text(json.dumps({"model": model, "status": "ok", "finished": "earlier"}))
    pages.write_index(reports)
    assert "old-variant" in (reports / "index.html").read_text()
    batch, log = tmp_path / "batch.yaml", tmp_path / "batch.log"
    batch.write_text("defaults: {params: {sleep: 120}}\nmodels: [resnet, squeezenet, mobilenetv2]\n")
    proc = _start_batch([str(batch), *mode, "--reports-dir", str(reports), "--notebooks-dir", str(fake_notebooks)],
                        batch_env, log)
    try:
        _wait_for(lambda: log.read_text().count("01_baseline: running") >= 2, 240, "two models to run", proc, log)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 128 + signal.SIGTERM, out
    assert "[batch] SIGTERM: stopping" in out and "batch stopped by SIGTERM" in out
    for model in ("resnet", "squeezenet", "mobilenetv2"):
        status = json.loads((reports / model / "run.json").read_text())
        assert status["status"] == "interrupted", (model, status)
        page = (reports / model / "report.html").read_text()
        assert "FAILED" in page and "interrupted" in page and "old report" not in page
    index = (reports / "index.html").read_text()
    assert "3 model(s), 0 failed, 3 interrupted" in index
    assert "old-variant" not in index and 'class="pb-ok"' not in index
    assert index.count("INTERRUPTED in stage 01_baseline") == 2  # the two that ran; the third never started
    assert "before this model finished" in index
    assert _processes_of(batch_env) == []  # no child, kernel or worker left running


# --------------------------------------------------------------------------- the cluster refuses other code
def test_a_cluster_whose_workers_all_differ_is_refused_before_anything_runs(fake_notebooks, tmp_path, monkeypatch):
    from playbook import distributed
    from playbook.command import RunCommand
    from playbook.pipeline import RunSpec

    real = distributed.environment_fingerprint
    monkeypatch.setattr(distributed, "environment_fingerprint",  # the client only: workers are other processes
                        lambda notebooks=None: {**real(notebooks), "playbook_version": "9.9.9"})
    reports = tmp_path / "reports"
    spec = RunSpec(command=RunCommand(model="resnet"), reports_root=reports, notebooks_dir=fake_notebooks)
    lines: list[str] = []
    with pytest.raises(ConfigError, match="none of the 1 worker"):
        distributed.run_batch_on_cluster([spec], "local:1", say=lines.append)
    assert any("MISMATCH" in line and "playbook version 0.1.0 here, 9.9.9 on the client" in line
               for line in lines), lines
    assert not (reports / "resnet").exists()
    assert [p.name for p in reports.iterdir()] == []  # its marker file is gone too


# --------------------------------------------------------------------------- a cluster batch, one model failing
def _cluster_batch_one_failing(tmp_path: Path, base_env: dict[str, str]) -> None:
    """``--scheduler local:2`` (two worker processes), results returned as archives as from workers that share no
    folder: a report, a FAILED page with the worker's log, an index of both, each record saying where it ran.  The
    stage notebooks are stand-ins: two real smoke models side by side, reports and all, are ``test_cli``'s
    ``test_batch_isolates_a_failing_model`` (through ``--jobs``)."""
    fake_notebooks, batch_env = _fake_notebooks(tmp_path), _batch_env(tmp_path, base_env)
    batch = tmp_path / "batch.yaml"
    batch.write_text(textwrap.dedent("""\
        models:
          - resnet
          - {model: squeezenet, params: {fail: true}}
        """))
    reports, log = tmp_path / "reports", tmp_path / "batch.log"
    proc = _start_batch([str(batch), "--scheduler", "local:2", "--transfer", "archive", "--reports-dir", str(reports),
                         "--notebooks-dir", str(fake_notebooks)], batch_env, log)
    try:
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 1, out  # one model failed
    assert out.count("returns an archive") == 2 and "[batch] 2/2 done" in out
    assert "REPORT for resnet" in (reports / "resnet" / "report.html").read_text()
    status = json.loads((reports / "resnet" / "run.json").read_text())
    assert status["status"] == "ok" and status["worker"]["reports"] == "returned as an archive"
    assert status["worker"]["host"] and status["worker"]["pid"] != proc.pid
    record = json.loads((reports / "resnet" / "baseline.json").read_text())
    assert record["environment"]["worker"].startswith(f"{status['worker']['host']} pid {status['worker']['pid']}")
    assert not (reports / "resnet" / ".run-tmp").exists()
    failed_dir = reports / "squeezenet"
    page = (failed_dir / "report.html").read_text()
    assert "FAILED" in page and "broken on purpose" in page and "Log tail" in page
    assert f"--reports-dir {reports.resolve()}" in page  # the command names this folder, not the worker's scratch
    assert 'href="run.log"' in page and (failed_dir / "run.log").exists()  # the worker's log came back with it
    failed_status = json.loads((failed_dir / "run.json").read_text())
    assert failed_status["status"] == "failed" and failed_status["failed_stage"] == "01_baseline"
    assert failed_status["worker"]["reports"] == "returned as an archive"
    index = (reports / "index.html").read_text()
    assert "2 model(s), 1 failed, 0 interrupted" in index and 'href="resnet/report.html"' in index
    assert 'href="squeezenet/report.html"' in index and index.count("FAILED") == 1
    assert sorted(p.name for p in reports.iterdir() if p.name.startswith(".")) == []  # no marker, no .incoming


# --------------------------------------------------------------------------- the four batches, in the background
SCENARIOS = {
    "worker-killed": _worker_killed,
    "sigterm-jobs": lambda folder, env: _sigterm(folder, env, ["--jobs", "2"]),
    "sigterm-dask-archive": lambda folder, env: _sigterm(folder, env, ["--scheduler", "local:2", "--transfer",
                                                                       "archive"]),
    "cluster-one-failing": _cluster_batch_one_failing,
}


def _batch_scenarios(folder: Path, base_env: dict[str, str]) -> dict[str, BaseException | None]:
    """The four batches above, one after the other, each in its own folder: what each raised (``None``: passed).

    Each only waits on its batch's subprocesses (Dask workers, notebook kernels mostly asleep in stand-in cells), so
    they run in the background from the session's first test (see conftest's ``background``) instead of holding
    the unit tests up for two to three minutes; each test below re-raises its own batch's failure."""
    outcomes: dict[str, BaseException | None] = {}
    for name, scenario in SCENARIOS.items():
        (folder / name).mkdir()
        try:
            scenario(folder / name, base_env)
            outcomes[name] = None
        except BaseException as exc:  # noqa: BLE001 -- pytest.fail raises an OutcomeException; the test re-raises it
            outcomes[name] = exc
    return outcomes


def _outcome(background, name: str) -> None:
    exc = background[_batch_scenarios].result(timeout=1800)[name]
    if exc is not None:
        raise exc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker process through /proc")
@pytest.mark.background.with_args(_batch_scenarios)
def test_a_worker_killed_mid_model_is_retried_on_the_other_worker(background):
    _outcome(background, "worker-killed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks for left-over processes through /proc")
@pytest.mark.background.with_args(_batch_scenarios)
@pytest.mark.parametrize("mode", ["jobs", "dask-archive"])
def test_sigterm_leaves_interrupted_pages_and_an_index_that_agrees(background, mode):
    _outcome(background, f"sigterm-{mode}")


@pytest.mark.background.with_args(_batch_scenarios)
def test_a_cluster_batch_with_one_model_failing(background):
    _outcome(background, "cluster-one-failing")
