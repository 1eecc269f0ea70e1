"""An interrupted or bad run never leaves a record that lies, and never reports success: one test per item of
issue 26, each with its fault injected here (a damaged package, a NaN checkpoint, a signal, a held lock...).

Most are unit-level (the plan, a stage run's commit, the checks themselves) so the file stays fast; the signal
test drives ``playbook run`` over a small stand-in notebook whose stage writes through ``StageRun``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from stand_ins import write_notebook
import torch

from playbook import cli, pipeline, run_plan
from playbook.command import RunCommand
from playbook.config import ConfigError
from playbook.records import (RecordError, StageRecord, VariantRecord, lineage_of, read_stage_record, sha256_path,
                              write_stage_record)

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers
def _main(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.err


def _one_line(err: str) -> str:
    assert err.startswith("playbook: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def _package(folder: Path, value: str) -> Path:
    """A stand-in package: a folder with a weight file (hashing and swapping do not care what is inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weight.bin").write_text(value)
    return folder


def _record(model_dir: Path, stage: str, smoke: bool = True, lineage: dict | None = None,
            packages: dict[str, Path] | None = None, **details) -> StageRecord:
    variants = [VariantRecord(name=name, stage=stage, package=str(path.relative_to(model_dir)),
                              package_sha256=sha256_path(path)) for name, path in (packages or {}).items()]
    record = StageRecord(stage=stage, model="resnet", config={"smoke": smoke, "dataset": "digits"}, environment={},
                         run={"model": "resnet"}, reproduce="", lineage=lineage or {}, variants=variants,
                         details=details)
    write_stage_record(model_dir, record)
    return record


def _smoke_reports(root: Path) -> Path:
    """What a complete smoke run leaves, in miniature: 01, 02 and 05 records with their packages, a report."""
    model_dir = root / "resnet"
    fp32 = _package(model_dir / "baseline" / "fp32.mlpackage", "fp32")
    _record(model_dir, "baseline", packages={"baseline-fp32": fp32}, dataset={"name": "digits"})
    int8 = _package(model_dir / "quantization" / "int8.mlpackage", "int8")
    _record(model_dir, "quantization", packages={"int8": int8},
            lineage=lineage_of(model_dir, [model_dir / "baseline.json", fp32]))
    _record(model_dir, "benchmark", lineage=lineage_of(model_dir, [model_dir / "baseline.json", fp32,
                                                                   model_dir / "quantization.json", int8]))
    (model_dir / "report.html").write_text("previous complete report")
    return model_dir




PARAMS = 'model: str = "resnet"  # model\nsmoke: bool = False  # smoke\nreports_dir: str = ""  # reports\n'


@pytest.fixture()
def stand_in_notebooks(tmp_path):
    """01, 02, 05 and 06 stand-ins that declare only model/smoke/reports_dir (the plan checks them, nothing runs)."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("01_baseline", "02_quantization", "05_benchmark", "06_report"):
        write_notebook(nbs / f"{name}.ipynb", PARAMS, "print('stand-in')")
    return nbs


def _spec(reports: Path, nbs: Path | None, **command) -> pipeline.RunSpec:
    kwargs = {"notebooks_dir": nbs} if nbs is not None else {}
    return pipeline.RunSpec(RunCommand(model="resnet", **command), reports, **kwargs)


# --------------------------------------------------------------------------- 1. a stage's outputs change together
def _staged_run(reports: Path, value: str):
    """A real ``StageRun`` (stage 01's config, digits smoke) that writes one package through ``out_dir``."""
    from playbook.stages.baseline import BaselineConfig
    from playbook.stages.common import StageRun

    class Run(StageRun):
        stage = "baseline"

    run = Run(BaselineConfig(dataset="digits", smoke=True, reports_dir=str(reports)))
    package = _package(run.out_dir / "fp32.mlpackage", value)
    run.variants.append(VariantRecord(name="baseline-fp32", stage="baseline", package=str(
        Path(os.path.relpath(package, run.model_dir))), package_sha256=sha256_path(package),
        extra={"where": str(package)}))
    return run


def test_1_an_interrupted_stage_leaves_its_previous_outputs_and_a_finished_one_swaps_them_in(tmp_path):
    reports = tmp_path / "reports"
    first = _staged_run(reports, "old")
    assert ".staging" in str(first.out_dir) and not (first.model_dir / "baseline").exists()  # nothing in place yet
    record = first.finish()
    model_dir = first.model_dir
    final = model_dir / "baseline" / "fp32.mlpackage"
    assert record.variants[0].package == "baseline/fp32.mlpackage" and final.is_dir()
    assert record.variants[0].get("where") == str(final.resolve())  # paths inside the record follow the swap
    assert not (model_dir / ".staging").exists()
    old_record = (model_dir / "baseline.json").read_text()

    second = _staged_run(reports, "new")  # interrupted before finish(): the new package only ever sat in staging
    del second
    assert (final / "weight.bin").read_text() == "old" and (model_dir / "baseline.json").read_text() == old_record

    third = _staged_run(reports, "new")  # a run that finishes replaces package and record together
    third.finish()
    rec = read_stage_record(model_dir, "baseline")
    assert (final / "weight.bin").read_text() == "new" and rec.variants[0].package_sha256 == sha256_path(final)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])
def test_1_a_signal_mid_stage_is_one_line_the_right_exit_status_and_no_half_written_stage(tmp_path, sig, code):
    reports = tmp_path / "reports"
    _staged_run(reports, "old").finish()  # the previous complete run of stage 01
    model_dir = reports / "resnet"
    before = (model_dir / "baseline.json").read_text()
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    # the stage stand-in writes into its staging folder, as StageRun.out_dir does, then waits for the signal
    body = ("import time\nfrom pathlib import Path\nstaging = Path(reports_dir) / model / '.staging' / 'baseline'\n"
            "staging.mkdir(parents=True)\n(staging / 'weight.bin').write_text('new')\ntime.sleep(120)\n")
    write_notebook(nbs / "01_baseline.ipynb", PARAMS, body)
    env = dict(os.environ, PLAYBOOK_HEARTBEAT_S="0", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "playbook", "run", "--model", "resnet", "--reports-dir",
                             str(reports), "--notebooks-dir", str(nbs)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (model_dir / ".staging" / "baseline" / "weight.bin").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == code, out + err
    lines = [line for line in err.splitlines() if "torchao" not in line and "pytree" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"playbook: interrupted by {sig.name}"), err
    assert "Task exception" not in err and "Traceback" not in err
    assert (model_dir / "baseline" / "fp32.mlpackage" / "weight.bin").read_text() == "old"  # previous outputs
    assert (model_dir / "baseline.json").read_text() == before and not (model_dir / ".staging").exists()
    assert json.loads((model_dir / "run.json").read_text())["status"] == "interrupted"
    assert "interrupted" in (model_dir / "report.html").read_text()


# --------------------------------------------------------------------------- 2. after kill -9, 02,06 is enough
def test_2_a_stage_that_reruns_moves_later_records_aside_so_they_do_not_block_the_plan(tmp_path,
                                                                                      stand_in_notebooks):
    reports = tmp_path / "reports"
    model_dir = _smoke_reports(reports)
    # what a kill -9 inside 02 left before stages were staged: 02's package rewritten, 05's lineage now stale
    (model_dir / "quantization" / "int8.mlpackage" / "weight.bin").write_text("half-written")
    with pytest.raises(ConfigError, match="stale records"):
        pipeline.plan(_spec(reports, stand_in_notebooks, smoke=True, stages="06"))
    steps = pipeline.plan(_spec(reports, stand_in_notebooks, smoke=True, stages="02,06"))  # 05 is moved aside
    assert [s.stage.number for s in steps] == ["02", "06"]


# --------------------------------------------------------------------------- 3. hashes, not just existence
def test_3_flipped_bytes_make_a_stage_out_of_date_and_predict_refuses_the_package(tmp_path, stand_in_notebooks):
    from playbook.coreml import load_runtime

    reports = tmp_path / "reports"
    model_dir = _smoke_reports(reports)
    step = pipeline.plan(_spec(reports, stand_in_notebooks, smoke=True, stages="01"))[0]
    fingerprint = pipeline.stage_fingerprint(step, model_dir)
    pipeline.write_stamp(model_dir, step, fingerprint, 1.0)
    assert pipeline.is_up_to_date(model_dir, step, fingerprint)
    weights = model_dir / "baseline" / "fp32.mlpackage" / "weight.bin"
    weights.write_text("fp33")  # same size, other bytes
    assert not pipeline.is_up_to_date(model_dir, step, fingerprint)
    with pytest.raises(RecordError, match=r"fp32\.mlpackage is not the package .*baseline\.json measured.*"
                                          r"re-run 01_baseline"):
        load_runtime(model_dir / "baseline" / "fp32.mlpackage", "reference")


# --------------------------------------------------------------------------- 4. advice that works as written
def test_4_the_refusal_names_the_stages_to_rerun_with_the_runs_own_flags(tmp_path, stand_in_notebooks):
    reports = tmp_path / "reports"
    model_dir = _smoke_reports(reports)
    (model_dir / "quantization" / "int8.mlpackage" / "weight.bin").write_text("rewritten")  # 02 interrupted
    with pytest.raises(ConfigError) as err:
        pipeline.plan(_spec(reports, stand_in_notebooks, smoke=True, stages="06", reports_dir="rel/reports"))
    message = str(err.value)
    advice = message.split("`")[1]
    assert "quantization.json (its package quantization/int8.mlpackage (changed" in message
    assert advice == (f"python -m playbook run --model resnet --smoke --stages 02,05,06 --reports-dir "
                      f"{reports.resolve()}"), advice
    steps = pipeline.plan(_spec(reports, stand_in_notebooks, smoke=True, stages="02,05,06"))  # followed: accepted
    assert not pipeline.is_up_to_date(model_dir, steps[0], pipeline.stage_fingerprint(steps[0], model_dir))


# --------------------------------------------------------------------------- 5. checked before anything is deleted
@pytest.mark.parametrize("args, first", [
    ([], "was made with smoke=True, this run smoke=False"),
    (["--smoke", "--dataset", "imagefolder:{folder}"], "was made with dataset 'digits', this run 'imagefolder:"),
])
def test_5_another_dataset_or_smoke_setting_is_refused_before_the_report_is_touched(tmp_path, capsys, args, first):
    from PIL import Image

    folder = tmp_path / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / cls / f"{i}.png")
    reports = tmp_path / "reports"
    model_dir = _smoke_reports(reports)
    listing = sorted(p.name for p in model_dir.iterdir())
    rc, err = _main(capsys, "run", "--model", "resnet", "--stages", "02", "--reports-dir", str(reports),
                    *[a.format(folder=folder) for a in args])
    assert rc == 2 and first in _one_line(err) and "nothing was run or deleted" in err, err
    assert (model_dir / "report.html").read_text() == "previous complete report"
    assert sorted(p.name for p in model_dir.iterdir()) == listing


# --------------------------------------------------------------------------- 6. the lock comes first
def test_6_a_second_run_is_refused_by_the_lock_before_it_checks_anything(tmp_path, capsys):
    reports = tmp_path / "reports"
    model_dir = _smoke_reports(reports)
    (model_dir / "quantization" / "int8.mlpackage" / "weight.bin").write_text("being rewritten by run one")
    with open(model_dir / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for stages in ("06", "01"):
            rc, err = _main(capsys, "run", "--model", "resnet", "--smoke", "--stages", stages, "--reports-dir",
                            str(reports))
            assert rc == 2 and "another playbook run is using" in _one_line(err) and "stale" not in err, err
    assert (model_dir / "report.html").read_text() == "previous complete report"


# --------------------------------------------------------------------------- 7, 10, 11. image folders
def _images(folder: Path, counts: dict[str, int]) -> Path:
    from PIL import Image

    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(folder / cls / f"{i}.png")
    return folder


def test_7_a_folder_too_small_to_split_fails_before_anything_is_written(tmp_path, capsys):
    folder = _images(tmp_path / "tiny", {"a": 2, "b": 2, "c": 2})
    reports = tmp_path / "reports"
    rc, err = _main(capsys, "run", "--model", "resnet", "--dataset", f"imagefolder:{folder}", "--smoke",
                    "--reports-dir", str(reports))
    assert rc == 2 and "is too small: class folder(s)" in _one_line(err) and "5 images per class" in err, err
    assert not (reports / "resnet").exists()


def test_10_11_empty_class_folders_are_refused_and_hidden_folders_are_no_classes(tmp_path):
    from playbook.data import DatasetConfig, DatasetError, load_dataset

    folder = _images(tmp_path / "pets", {"cats": 6, "dogs": 6})
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes((folder / "cats" / "0.png").read_bytes())
    data = load_dataset(DatasetConfig(name=f"imagefolder:{folder}", calib_size=2))
    assert data.class_names == ("cats", "dogs")
    (folder / "birds").mkdir()
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['birds'\] hold no images"):
        DatasetConfig(name=f"imagefolder:{folder}")


# --------------------------------------------------------------------------- 8, 16. checkpoints
def test_8_a_checkpoint_of_nan_tensors_is_refused(tmp_path, digits, capsys):
    from playbook.models import create_model
    from playbook.train import CheckpointError, ModelConfig, TrainConfig, train_or_load

    state = create_model("resnet", 10, 1, width=8).state_dict()
    path = tmp_path / "nan.pt"
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt holds NaN or infinite values in \d+ of its \d+ "
                                              r"floating-point tensors") as err:
        train_or_load(ModelConfig("resnet", {"width": 8}), digits, TrainConfig(epochs=0), checkpoint=str(path))
    assert "delete" not in str(err.value)
    reports = tmp_path / "reports"
    rc, out = _main(capsys, "run", "--model", "resnet", "--dataset", "digits", "--smoke", "-p", f"checkpoint={path}",
                    "--reports-dir", str(reports))  # refused by the plan: nothing runs, nothing is written
    assert rc == 2 and f"01_baseline: checkpoint {path} holds NaN or infinite values" in _one_line(out), out
    assert not reports.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_16_a_malicious_pickle_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    from playbook.models import create_model
    from playbook.train import CheckpointError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, path)
    with pytest.raises(CheckpointError, match="holds pickled objects other than tensors") as err:
        load_checkpoint(create_model("resnet", 10, 1, width=8), path, user_file=True)
    assert "weights_only" not in str(err.value) and "system" in str(err.value)
    rc, out = cli.main(["run", "--model", "resnet", "--dataset", "digits", "-p", f"checkpoint={path}",
                        "--reports-dir", str(tmp_path / "r")]), capsys.readouterr().err
    assert rc == 2 and "holds pickled objects other than tensors" in _one_line(out) and "weights_only" not in out


# --------------------------------------------------------------------------- 9, 15. model factories
def test_9_a_factory_with_the_wrong_number_of_outputs_is_refused(tmp_path):
    from playbook.models import ModelError, create_model

    factory = tmp_path / "mine.py"
    factory.write_text("from torch import nn\n"
                       "def build(num_classes, in_channels):\n"
                       "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 3))\n")
    with pytest.raises(ModelError, match=r"returns shape \[2, 13\] for a batch of 2 images; it must return logits "
                                         r"of shape \(batch, 10\)"):
        create_model(f"{factory}:build", 10, 1, image_size=8)


def test_15_a_factory_file_that_is_not_python_names_the_py_rule(tmp_path, capsys):
    path = tmp_path / "notmod.txt"
    path.write_text("def build(num_classes, in_channels): pass\n")
    rc, err = _main(capsys, "run", "--model", f"{path}:build", "--reports-dir", str(tmp_path / "r"))
    assert rc == 2 and "is not a Python file; a factory file must be a .py file" in _one_line(err), err


# --------------------------------------------------------------------------- 12. implausible latencies
def _results(latency: list[float]) -> dict:
    lat = np.asarray(latency, dtype=np.float64)
    with np.errstate(all="ignore"):
        stats = {"median": float(np.median(lat)), "p90": float(np.percentile(lat, 90)),
                 "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())}
    unmeasured = {"measured": False, "why": "not here"}
    m = {"model": "resnet", "stage": "baseline", "variant": "baseline-fp32", "package_sha256": "0" * 64,
         "backend": "coreml", "tier": "device", "setting": "coreml ALL", "compute_units": "ALL", "threads": "runtime",
         "batch": 1, "inputs": [{"name": "x", "shape": [1, 1, 8, 8]}],
         "environment": {"device": "iPhone", "os": "iOS 18", "versions": {"coreml": "8"}},
         "load": {**unmeasured, "unit": "ms", "first": None, "cached": None},
         "first_prediction": {**unmeasured, "unit": "ms", "value": None},
         "latency": {"unit": "ms", **stats, "cv": 0.0, "fps": 1.0, "runs": len(latency), "warmup": 1,
                     "stopped": "max_runs", "samples": latency},
         "memory": {**unmeasured, "unit": "MB", "peak": None},
         "energy": {**unmeasured, "unit": "J", "per_inference": None, "mah_per_inference": None},
         "compute_plan": {**unmeasured, "ops_total": None, "ops_by_device": None, "cost_by_device": None},
         "timestamp": "2026-01-01T00:00:00+00:00"}
    return {"format": "playbook-benchmark-results", "schema_version": 1, "model": "resnet", "produced_by": "test",
            "measurements": [m]}


@pytest.mark.parametrize("samples, shown", [([1e-300] * 3, "latency.median=1e-300"),
                                            ([1.0, float("inf"), 2.0], "latency.samples[1]=inf")])
def test_12_implausible_imported_latencies_are_refused_with_one_reason(samples, shown):
    from playbook.bench_schema import BenchResultsError, validate_results

    assert validate_results(_results([1.0, 1.5, 2.0]))  # the same file with real figures is valid
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning on the way
        with pytest.raises(BenchResultsError, match=r"implausible latency .*every latency must be a finite number "
                                                    r"of milliseconds from 0\.001") as err:
            validate_results(_results(samples), "mac.json")
    assert shown in str(err.value) and "is not the" not in str(err.value)


# --------------------------------------------------------------------------- 13, 14. messages
def test_13_a_diverged_lr_suggests_the_default_not_a_tenth(digits):
    from playbook.models import create_model
    from playbook.train import TrainConfig, TrainingError, fit

    net = create_model("resnet", 10, 1, width=4)
    with pytest.raises(TrainingError, match=r"lr=1e\+06 is too high for this model and data, try the default "
                                            r"lr=0\.1\."):
        fit(net, digits, TrainConfig(epochs=1, lr=1e6, threads=1), progress=False)


@pytest.mark.parametrize("args, first", [
    (["-p", "lr=nan"], "lr='nan': 01_baseline.ipynb declares lr as float; NaN and infinity are not valid values, "
                       "give a finite number, e.g. -p lr=0.1"),
    (["-p", "lr=1e999"], "lr=inf: 01_baseline.ipynb declares lr as float; NaN and infinity"),
    (["--budget", "max_top1_drop=abc"], "max_top1_drop='abc': 02_quantization.ipynb declares max_top1_drop as float, "
                                        "got str; write numbers bare, e.g. --budget max_top1_drop="),
])
def test_14_non_numbers_name_the_right_flag_and_nan_is_called_what_it_is(tmp_path, capsys, args, first):
    rc, err = _main(capsys, "run", "--model", "resnet", "--dataset", "digits", "--reports-dir",
                    str(tmp_path / "r"), *args)
    assert rc == 2 and first in _one_line(err), err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- 17, 18. folders this user may not write
def _deny(monkeypatch, module) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(module.tempfile, "TemporaryFile", denied)


def test_17_a_batch_into_a_folder_it_may_not_write_is_a_permission_error_with_exit_2(tmp_path, capsys,
                                                                                    monkeypatch):
    batch = tmp_path / "batch.yaml"
    batch.write_text("- resnet\n")
    reports = tmp_path / "reports"
    reports.mkdir()
    _deny(monkeypatch, run_plan)
    rc, err = _main(capsys, "batch", str(batch), "--reports-dir", str(reports))
    assert rc == 2 and "is not writable" in _one_line(err) and "a permission problem" in err, err
    assert "free space" not in err and list(reports.iterdir()) == []
    monkeypatch.undo()
    regular = tmp_path / "file"
    regular.write_text("")
    rc, err = _main(capsys, "status", "--reports-dir", str(regular))
    assert rc == 2 and "is a file, not a folder" in _one_line(err), err


def test_17_a_permission_error_during_a_command_is_exit_2_and_says_so(tmp_path, capsys, monkeypatch):
    def handler(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "cmd_status", handler)
    rc, err = _main(capsys, "status")
    assert rc == 2 and "a permission problem" in _one_line(err) and "free space" not in err, err


def test_18_notebooks_into_a_folder_it_may_not_write_names_its_own_argument(tmp_path, capsys, monkeypatch):
    from playbook import notebooks

    _deny(monkeypatch, notebooks)
    rc, err = _main(capsys, "notebooks", str(tmp_path / "walkthrough"))
    assert rc == 2 and "a permission problem" in _one_line(err) and "another DIR" in err, err
    assert "--reports-dir" not in err and not (tmp_path / "walkthrough").exists()
