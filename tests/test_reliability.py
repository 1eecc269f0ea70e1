"""Nothing stale, nothing lost, every failure explained: one test per case a new user met (issue 9).

Most runs here drive ``playbook run`` over small stand-in notebooks (``--notebooks-dir``) so that signals,
stamps and failure pages are exercised in seconds; the value checks run against the real notebooks (they fail
before anything runs); the bring-your-own-data case trains the real baseline on an image folder.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from playbook import cli, pipeline
from playbook.config import ConfigError
from playbook.records import StageRecord, lineage_of, read_stage_record, write_stage_record

REPO = Path(__file__).resolve().parent.parent

PARAMS_01 = """\
model: str = "resnet"  # model
value: int = 1  # changes the record
sleep: float = 0.0  # seconds to wait before writing (so a signal can arrive mid-stage)
started: str = ""  # a file the cell writes before it sleeps: the stage is then running in the kernel
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
BODY_01 = """\
import time
from pathlib import Path
from tqdm import tqdm  # the plain tqdm coremltools uses for its conversion bars
from playbook.paths import model_dir
from playbook.records import StageRecord, VariantRecord, write_stage_record
print("stage one starts")
for _ in tqdm(range(3), desc="fake progress"):
    pass
if started:
    Path(started).write_text("in the cell")
time.sleep(sleep)
root = model_dir(model, reports_dir or None)
package = root / "baseline" / "fake.mlpackage"
package.mkdir(parents=True, exist_ok=True)
(package / "weights.bin").write_text(str(value))
write_stage_record(root, StageRecord(stage="baseline", model=model, config={"value": value, "smoke": smoke},
                   environment={}, run={"model": model}, reproduce="",
                   variants=[VariantRecord(name="fake", stage="baseline", package="baseline/fake.mlpackage")]))
"""
PARAMS_06 = """\
model: str = "resnet"  # model
max_top1_drop: float = 1.0  # budget
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
BODY_06 = """\
from playbook.paths import model_dir
from playbook.records import read_json, write_json
d = model_dir(model, reports_dir or None)
write_json(d / "report.json", {"model": model, "recommended": {"name": "fake", "top1": 50.0, "size_mb": 1.0}})
(d / "report.html").write_text("<p>fake report</p>")  # the real stage renders its pages in ReportRun.finish
print("REPORT value", read_json(d / "baseline.json")["config"]["value"])
"""


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(body)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, str(path))


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "01_baseline.ipynb", PARAMS_01, BODY_01)
    _notebook(nbs / "06_report.ipynb", PARAMS_06, BODY_06)
    monkeypatch.setenv("PLAYBOOK_HEARTBEAT_S", "0")
    return nbs, tmp_path / "reports"


def _start(nbs: Path, reports: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PLAYBOOK_HEARTBEAT_S="0", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "playbook", "run", "--model", "resnet", "--reports-dir",
                             str(reports), "--notebooks-dir", str(nbs), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never saw {text!r}; output: {''.join(seen)}")


def _wait_started(proc: subprocess.Popen, marker: Path, timeout: float = 90) -> None:
    """Until the stage cell has written ``marker`` (the kernel has started and sleeps in the cell)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"the stage cell never started (exit status {proc.poll()})")
        time.sleep(0.1)


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out |= {child} | _descendants(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


# --------------------------------------------------------------------------- 1. a report that mixes two runs
def _real_records(model_dir: Path) -> None:
    write_stage_record(model_dir, StageRecord(stage="baseline", model="resnet", config={"smoke": True},
                                              environment={}, run={"model": "resnet"}, reproduce=""))
    quant = StageRecord(stage="quantization", model="resnet", config={"smoke": True}, environment={},
                        run={"model": "resnet"}, reproduce="",
                        lineage=lineage_of(model_dir, [model_dir / "baseline.json"]))
    write_stage_record(model_dir, quant)


def test_1_a_report_over_records_of_two_runs_is_refused_before_anything_runs(tmp_path, capsys):
    reports = tmp_path / "reports"
    model_dir = reports / "resnet"
    _real_records(model_dir)
    (model_dir / "report.html").write_text("previous report")
    # what an interrupted `-p seed=1` run leaves: a new baseline.json beside the old quantization.json
    base = read_stage_record(model_dir, "baseline")
    base.config["seed"] = 1
    write_stage_record(model_dir, base)
    rc = cli.main(["run", "--model", "resnet", "--dataset", "digits", "--smoke", "--stages", "06", "--reports-dir",
                   str(reports)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "stale records" in err and "quantization.json (baseline.json (changed))" in err
    assert "--stages 02,06" in err and err.count("\n") == 1  # one line, no traceback
    assert (model_dir / "report.html").read_text() == "previous report" and not (model_dir / "run.json").exists()


# --------------------------------------------------------------------------- 2. diverged or collapsed training
def test_2_diverged_training_stops_with_a_clear_error_and_caches_nothing(tmp_path, monkeypatch):
    from playbook.stages.baseline import BaselineConfig, run_baseline
    from playbook.train import TrainingError

    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    reports = tmp_path / "reports"
    with pytest.raises(TrainingError, match=r"training diverged: the loss became (nan|inf).*try the default lr=0\.1\."):
        run_baseline(BaselineConfig(dataset="digits", smoke=True, lr=1e6, reports_dir=str(reports)))
    assert not list((tmp_path / "cache").glob("*.pt")) and not (reports / "resnet" / "baseline.json").exists()
    with pytest.raises(ConfigError, match="lr=0 would leave the weights where they started"):
        BaselineConfig(dataset="digits", lr=0.0)


def test_2_training_that_collapses_to_chance_is_an_error_outside_smoke_runs(tmp_path, digits):
    import dataclasses

    from playbook.data import Split
    from playbook.train import ModelConfig, TrainConfig, TrainingError, train_or_load

    rng = np.random.default_rng(0)
    noise = dataclasses.replace(digits, train=Split(digits.train.images, rng.permutation(digits.train.labels)),
                                val=Split(digits.val.images, rng.permutation(digits.val.labels)))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, threads=1)
    with pytest.raises(TrainingError, match="training collapsed: the model is at or near chance"):
        train_or_load(ModelConfig("resnet", {"width": 8}), noise, cfg, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.pt"))
    _, result = train_or_load(ModelConfig("resnet", {"width": 8}), noise, cfg, cache_dir=tmp_path, progress=False,
                              chance_is_error=False)
    assert any("near chance" in w for w in result.warnings)


def test_2_a_baseline_at_chance_carries_a_warning_into_later_stages(tmp_path, monkeypatch):
    """A smoke run on images without signal: no error (smoke), but a warning every later stage repeats."""
    from PIL import Image

    from playbook.stages.baseline import BaselineConfig, run_baseline
    from playbook.stages.quantization import QuantizationConfig, QuantizationRun

    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    folder = tmp_path / "noise"
    for cls in ("a", "b", "c", "d"):
        (folder / cls).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    cfg = BaselineConfig(dataset=f"imagefolder:{folder}", model_options={"width": 8}, smoke=True,
                         reports_dir=str(tmp_path / "reports"), threads=1)
    record = run_baseline(cfg)
    assert any("near chance" in w for w in record.warnings), record.warnings
    later = QuantizationRun(QuantizationConfig(smoke=True, reports_dir=cfg.reports_dir, recipes=["int8-weights"]))
    assert later.warnings == record.warnings


# --------------------------------------------------------------------------- 3. SIGTERM and kill -9
def test_3_sigterm_stops_the_run_cleanly_with_an_interrupted_page(fake):
    nbs, reports = fake
    marker = nbs.parent / "in-the-cell"
    proc = _start(nbs, reports, "-p", "sleep=60", "-p", f"started={marker}")
    _wait_for(proc, "01_baseline: running")
    _wait_started(proc, marker)  # the kernel has started and sleeps in the cell
    children = _descendants(proc.pid)
    assert children, "the notebook kernel should be a child process"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, out + err  # 128 + SIGTERM
    model_dir = reports / "resnet"
    status = json.loads((model_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and status["failed_stage"] == "01_baseline"
    page = (model_dir / "report.html").read_text()
    assert "interrupted" in page and "FAILED" in page
    assert not (model_dir / ".run-tmp").exists()
    index = (reports / "index.html").read_text()
    assert 'href="resnet/report.html"' in index and "interrupted" in index
    assert not _wait_gone(children), "the kernel outlived the run"
    assert "Traceback" not in err and "IPKernelApp" not in err


def test_3_after_kill_9_status_finds_the_dead_run_and_cleans_up(fake, capsys):
    nbs, reports = fake
    marker = nbs.parent / "in-the-cell"
    proc = _start(nbs, reports, "-p", "sleep=60", "-p", f"started={marker}")
    _wait_for(proc, "01_baseline: running")
    _wait_started(proc, marker)  # mid-stage: the kernel sleeps in the cell
    children = _descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    model_dir = reports / "resnet"
    assert json.loads((model_dir / "run.json").read_text())["status"] == "running"  # nothing could clean up
    assert (model_dir / ".run-tmp").exists()
    _wait_gone(children)  # the kernel notices its parent is gone and exits
    assert cli.main(["status", "--reports-dir", str(reports)]) == 0
    out = capsys.readouterr().out
    assert "resnet" in out and "interrupted" in out and "cleaned up" in out and "killed" in out
    status = json.loads((model_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and not (model_dir / ".run-tmp").exists()
    assert "interrupted" in (model_dir / "report.html").read_text()
    assert "interrupted" in (reports / "index.html").read_text()
    assert cli.main(["status", "--reports-dir", str(reports)]) == 0 and "cleaned up" not in capsys.readouterr().out


# --------------------------------------------------------------------------- 5. every value checked up front
@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    (["-p", "checkpoint=/no/such/weights.pt"], "checkpoint='/no/such/weights.pt' is not a file"),
    (["-p", "recipes=['int3']"], "unknown recipe 'int3'"),
    (["--budget", "max_top1_drop=-1"], "max_top1_drop=-1 is out of range"),
    (["-p", "epochs=text"], "write numbers bare"),
])
def test_5_bad_values_fail_before_anything_is_deleted(tmp_path, capsys, args, message):
    model_dir = tmp_path / "reports" / "resnet"
    model_dir.mkdir(parents=True)
    (model_dir / "report.html").write_text("previous report")
    rc = cli.main(["run", "--model", "resnet", "--reports-dir", str(tmp_path / "reports"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("playbook: error: ") and err.count("\n") == 1, err
    assert (model_dir / "report.html").read_text() == "previous report"
    assert sorted(p.name for p in model_dir.iterdir()) == ["report.html"]


# --------------------------------------------------------------------------- 6. stamps trust files and versions
def test_6_a_deleted_package_or_a_new_playbook_version_reruns_the_stage(fake, capsys, monkeypatch):
    nbs, reports = fake

    def run() -> str:
        assert cli.main(["run", "--model", "resnet", "--reports-dir", str(reports), "--notebooks-dir",
                         str(nbs)]) == 0
        return capsys.readouterr().out

    assert "01_baseline: running" in run()
    assert run().count("up to date, skipped") == 2
    package = reports / "resnet" / "baseline" / "fake.mlpackage"
    import shutil

    shutil.rmtree(package)
    assert "01_baseline: running" in run() and package.exists()  # the record named a package that was gone
    assert run().count("up to date, skipped") == 2
    from playbook import run_plan

    monkeypatch.setattr(run_plan, "playbook_version", lambda: "99.0.0")  # the stamps' fingerprint (run_plan)
    out = run()
    assert "01_baseline: running" in out and "06_report: running" in out


# --------------------------------------------------------------------------- 7. the reports folder itself
def test_7_a_file_or_a_read_only_folder_as_reports_folder_is_one_clear_line(tmp_path, capsys):
    target = tmp_path / "reports"
    target.write_text("not a folder")
    assert cli.main(["run", "--model", "resnet", "--dataset", "digits", "--reports-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and err.count("\n") == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here, and root ignores permission bits")
    try:
        assert cli.main(["run", "--model", "resnet", "--dataset", "digits", "--reports-dir", str(locked)]) == 2
        err = capsys.readouterr().err
        assert "is not writable" in err and "Operation not permitted" in err and err.count("\n") == 1
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_7_a_full_disk_is_a_failure_page_and_one_line_not_a_traceback(fake, capsys, monkeypatch):
    nbs, reports = fake

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(reports / "resnet" / "baseline.stamp.json"))

    monkeypatch.setattr(pipeline, "write_stamp", full)
    rc = cli.main(["run", "--model", "resnet", "--reports-dir", str(reports), "--notebooks-dir", str(nbs)])
    out = capsys.readouterr()
    assert rc == 1 and "No space left on device" in out.out and "Traceback" not in out.out + out.err
    assert "No space left on device" in (reports / "resnet" / "report.html").read_text()
    assert "Traceback" in (reports / "resnet" / "run.log").read_text()  # the details stay in the log


# --------------------------------------------------------------------------- 8. messages that say what is wrong
@pytest.fixture(scope="module")
def package(tmp_path_factory, digits):
    from playbook.coreml import ExportConfig, export_model
    from playbook.models import create_model

    torch.manual_seed(0)
    return export_model(create_model("resnet", 10, 1, width=8).eval(), digits, ExportConfig(precision="fp32"),
                        tmp_path_factory.mktemp("pkg"), "model").path


@pytest.mark.parametrize("damage", ["truncated weights", "flipped bits", "missing model file"])
def test_8_a_corrupt_package_names_itself_and_the_fix(tmp_path, package, damage):
    import shutil

    from playbook.coreml import load_runtime
    from playbook.mlprogram import CorruptPackageError

    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(package, broken)
    weights = broken / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = weights.read_bytes()
    if damage == "truncated weights":
        weights.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped bits":
        weights.write_bytes(raw[:64] + bytes(b ^ 0xFF for b in raw[64:128]) + raw[128:])
    else:
        (broken / "Data" / "com.apple.CoreML" / "model.mlmodel").unlink()
    with pytest.raises(CorruptPackageError, match=rf"{broken} is not a readable Core ML package.*export it again"):
        load_runtime(broken, "reference")


def test_8_models_checkpoints_and_images_fail_with_what_to_do(tmp_path, digits):
    from PIL import Image

    from playbook.data import DatasetConfig, DatasetError, load_dataset
    from playbook.models import ModelError, create_model
    from playbook.train import CheckpointError, ModelConfig, TrainConfig, load_checkpoint, train_or_load

    factory = tmp_path / "mine.py"
    factory.write_text("def build(num_classes, in_channels):\n    return 3\n")
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        create_model(f"{factory}:build", 10, 1)
    wide = tmp_path / "wide.pt"
    torch.save(create_model("resnet", 10, 1, width=16).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e\.g\. stem\.0\.weight: checkpoint \[16, 1, 3, 3\] "
                                              r"vs model \[8, 1, 3, 3\]") as err:
        train_or_load(ModelConfig("resnet", {"width": 8}), digits, TrainConfig(epochs=0), checkpoint=str(wide))
    assert "delete" not in str(err.value)  # the user's own file: fix it, never delete it
    cached = tmp_path / "cache.pt"
    cached.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="delete it to retrain"):
        load_checkpoint(create_model("resnet", 10, 1, width=8), cached)
    folder = tmp_path / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / cls / "1.png")
    (folder / "a" / "0.png").write_bytes(b"")  # sorts first
    with pytest.raises(DatasetError, match=r"cannot read image .*a/0\.png \(0 bytes: UnidentifiedImageError\)"):
        load_dataset(DatasetConfig(name=f"imagefolder:{folder}"))


# --------------------------------------------------------------------------- 9. training budgets that fit the data
def test_9_bring_your_own_folder_trains_until_it_converges(tmp_path, monkeypatch):
    """3,594 images of 16x16 digits (upscaled, plus a shifted copy) in class folders: the default baseline budget
    (at least 2,000 steps, early stopping after warm-up) trains until validation stops improving."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from playbook.stages.baseline import BaselineConfig, BaselineRun

    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    bunch = load_digits()
    folder = tmp_path / "digits16"
    for i, (image, label) in enumerate(zip(bunch.images, bunch.target)):
        pixels = np.round(image * 255 / 16).astype(np.uint8)
        big = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BILINEAR))
        for k, variant in enumerate((big, np.roll(big, 1, axis=1))):
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(variant).save(folder / str(label) / f"{i}_{k}.png")
    cfg = BaselineConfig(dataset=f"imagefolder:{folder}", reports_dir=str(tmp_path / "reports"), threads=2)
    run = BaselineRun(cfg)
    data = run.load_data()
    assert len(data.train) > 2500 and cfg.epochs * -(-len(data.train) // cfg.batch_size) < cfg.min_steps  # too few
    _, training = run.train(progress=False)
    metrics = run.evaluate()
    assert training.stop_reason in ("early_stop", "budget")
    assert training.steps >= cfg.min_steps or training.stop_reason == "early_stop"
    assert len(training.history) > cfg.epochs and metrics.top1 > 90.0, (training.history[-3:], metrics.top1)
    assert not training.warnings and not run.warnings


# --------------------------------------------------------------------------- 10. cosmetics
def test_10_runs_are_quiet_and_packages_are_shared(fake, capsys, package):
    nbs, reports = fake
    proc = _start(nbs, reports)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    assert "IPKernelApp" not in err and "without encryption" not in err and "KeyboardInterrupt" not in err
    executed = nbformat.read(str(reports / "resnet" / "notebooks" / "01_baseline.ipynb"), as_version=4)
    printed = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "stage one starts" in printed and "fake progress" not in printed  # progress bars off in batch runs
    umask = os.umask(0)
    os.umask(umask)
    mode = (package / "Data" / "com.apple.CoreML" / "model.mlmodel").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask
