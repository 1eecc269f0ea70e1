"""The ``playbook`` command: argument checks before anything runs, skip-if-done, failure pages, batch runs.

The fast tests drive ``playbook run`` over two tiny stand-in notebooks (``--notebooks-dir``); the
slow ones run the real notebooks on digits in smoke mode, as a user would.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from stand_ins import write_notebook

from playbook import cli
from playbook.command import parse_assignments, parse_budget
from playbook.config import ConfigError
from playbook.batch import load_batch
from playbook.report.render import embedded_images, offline_problems

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- parsing
def test_values_are_python_literals_with_a_string_fallback():
    assert parse_assignments(["epochs=3", "lr=0.05", "augment=True", "model_options={'width': 16}",
                                  "data_dir=/tmp/x", "precision=fp16", "note=a=b"], "-p") == {
        "epochs": 3, "lr": 0.05, "augment": True, "model_options": {"width": 16}, "data_dir": "/tmp/x",
        "precision": "fp16", "note": "a=b"}
    assert parse_budget(["top1_drop=0.5", "max_size_mb=1"]) == {"max_top1_drop": 0.5, "max_size_mb": 1}
    for bad in (["epochs"], ["=3"], ["two words=1"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_assignments(bad, "-p")
    for bad in (["size=1"], ["top1_drop=1", "max_top1_drop=2"]):
        with pytest.raises(ConfigError):
            parse_budget(bad)


def test_a_command_parses_back_into_itself_and_budgets_are_never_reparsed_from_text():
    """The parser's options are ``command.OPTIONS``: the argv a ``RunCommand`` builds parses back into the same
    command; a batch file's budget (a mapping) is canonicalised as values, so a string stays a string."""
    from playbook.cli_parser import build_parser
    from playbook.command import OPTIONS, RunCommand, canonical_budget, option_for

    command = RunCommand(model="resnet", dataset="digits", smoke=True, params={"epochs": 1, "note": "a b"},
                         budget={"max_top1_drop": 0.5}, stages="01,06", reports_dir="/tmp/r", force=True)
    args = build_parser().parse_args(command.argv()[3:])
    again = RunCommand(model=args.model, dataset=args.dataset, smoke=args.smoke, stages=args.stages, force=args.force,
                       params=parse_assignments(args.params, "-p"), budget=parse_budget(args.budget),
                       reports_dir=str(args.reports_dir))
    assert again == command
    listed = RunCommand(model="efficientnet-lite0", params={"recipes": ["int8-weights", "int4-block"], "note": "it's $x"})
    line = listed.shell()  # a list reads as a list: double quotes, not shlex's '"'"' splices; "$x" stays literal
    assert "-p \"recipes=['int8-weights', 'int4-block']\"" in line and "'\"'\"'" not in line.split("note")[0]
    assert shlex.split(line) == listed.argv()
    assert canonical_budget({"top1_drop": "0.5", "size_mb": 1}) == {"max_top1_drop": "0.5", "max_size_mb": 1}
    with pytest.raises(ConfigError, match="twice"):
        canonical_budget({"top1_drop": 1, "max_top1_drop": 2})
    assert [option_for(n) for n in ("reports_dir", "max_size_mb", "epochs")] == [
        OPTIONS["reports_dir"], "--budget max_size_mb=", "-p epochs="]


def test_batch_file_validation(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent("""\
        defaults: {dataset: digits, smoke: true, params: {epochs: 1}, budget: {top1_drop: 2}}
        models:
          - resnet
          - {model: squeezenet, params: {lr: 0.05}, budget: {size_mb: 1}}
        """))
    entries = load_batch(good)
    assert entries[1] == {"model": "squeezenet", "dataset": "digits", "smoke": True,
                          "params": {"epochs": 1, "lr": 0.05}, "budget": {"top1_drop": 2, "size_mb": 1}}
    for text, message in [("models: []", "non-empty list"), ("- {model: resnet, epochs: 3}", "unknown key"),
                          ("- resnet\n- resnet", "more than once"), ("defaults: {model: x}\nmodels: [resnet]",
                                                                      "unknown defaults key"),
                          ("- {model: resnet, params: [1]}", "mapping"), ("a: [", "not valid YAML")]:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_batch(path)


# --------------------------------------------------------------------------- errors before anything runs
def test_unknown_parameter_is_rejected_before_any_notebook_runs(tmp_path, capsys):
    # in this process (``cli.main`` is what ``python -m playbook`` calls; the batch and reliability tests run that
    # entry point as a subprocess): a fresh interpreter only added its import time
    reports = tmp_path / "reports"
    rc = cli.main(["run", "--model", "resnet", "--dataset", "digits", "--smoke", "-p", "epochz=3", "--reports-dir",
                   str(reports)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "epochz" in err and "epochs" in err and "nothing was run" in err
    assert not reports.exists() or not any(reports.rglob("*"))


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet9000"], "valid models are"),
    (["--model", "resnet", "--budget", "size=1"], "--budget 'size' is not a budget"),
    (["--model", "resnet", "--budget", "top1_drop=-1"], "02_quantization: max_top1_drop=-1 is out of range"),
    (["--model", "resnet", "-p", "recipes=['int3']"], "02_quantization: unknown recipe 'int3'"),
    (["--model", "resnet", "--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    (["--model", "resnet", "-p", "dataset=digits"], "use --model, --dataset"),
    (["--model", "resnet", "-p", "epochs=three"], "declares epochs as int"),
    (["--model", "resnet", "--stages", "09"], "no stage notebook matches '09'"),
    (["--model", "no/such/file.py:make"], "does not exist"),
])
def test_bad_arguments_fail_with_a_clear_message_and_write_nothing(tmp_path, capsys, argv, message):
    reports = tmp_path / "reports"
    assert cli.main(["run", *argv, "--reports-dir", str(reports)]) == 2
    assert message in capsys.readouterr().err
    assert not reports.exists() or not any(reports.rglob("*"))


# --------------------------------------------------------------------------- fast runner tests
FAKE_01 = """\
model: str = "resnet"  # model
value: int = 1  # changes the record
fail: bool = False  # raise in the second cell
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
FAKE_01_BODY = """\
from playbook.paths import model_dir
from playbook.records import StageRecord, write_stage_record
print("stage one says hello")
if fail:
    raise RuntimeError("stage failed on purpose")
write_stage_record(model_dir(model, reports_dir or None), StageRecord(
    stage="baseline", model=model, config={"value": value, "smoke": smoke}, environment={}, run={"model": model},
    reproduce=""))
"""
FAKE_06 = """\
model: str = "resnet"  # model
max_top1_drop: float = 1.0  # budget
smoke: bool = False  # smoke mode
reports_dir: str = ""  # reports folder
"""
FAKE_06_BODY = """\
from playbook.paths import model_dir
from playbook.records import read_json, write_json
d = model_dir(model, reports_dir or None)
value = read_json(d / "baseline.json")["config"]["value"]
write_json(d / "report.json", {"model": model, "recommended": {"name": f"v{value}", "top1": 50.0, "size_mb": 1.0}})
print(f"REPORT value={value} budget={max_top1_drop}")
(d / "report.html").write_text(f"<p>REPORT value={value} budget={max_top1_drop}</p>")  # the real 06 renders it
"""




@pytest.fixture()
def fake(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "01_baseline.ipynb", FAKE_01, FAKE_01_BODY)
    write_notebook(nbs / "06_report.ipynb", FAKE_06, FAKE_06_BODY)
    monkeypatch.setenv("PLAYBOOK_HEARTBEAT_S", "0")
    reports = tmp_path / "reports"

    def run(*args: str) -> tuple[int, str]:
        rc = cli.main(["run", "--model", "resnet", "--reports-dir", str(reports), "--notebooks-dir", str(nbs), *args])
        captured = capsys.readouterr()
        return rc, captured.out + captured.err

    return run, reports / "resnet"


def test_run_skips_up_to_date_stages_and_reruns_what_changed(fake):
    run, model_dir = fake
    rc, out = run()
    assert rc == 0, out
    html = model_dir / "report.html"
    assert "01_baseline: done" in out and "06_report: done" in out
    assert "REPORT value=1 budget=1.0" in html.read_text() and offline_problems(html.read_text()) == []
    assert (model_dir / "notebooks" / "01_baseline.ipynb").exists() and (model_dir / "baseline.stamp.json").exists()
    assert json.loads((model_dir / "run.json").read_text())["status"] == "ok"
    assert not (model_dir / ".run-tmp").exists()
    first = html.stat().st_mtime_ns

    rc, out = run()
    assert rc == 0 and out.count("up to date, skipped") == 2 and html.stat().st_mtime_ns == first

    rc, out = run("--stages", "06", "--budget", "top1_drop=0.5")  # only the report's parameters changed
    assert rc == 0 and "01_baseline" not in out.split("stages", 1)[1].split("\n", 1)[0]
    assert "REPORT value=1 budget=0.5" in html.read_text()

    rc, out = run("-p", "value=2", "--budget", "top1_drop=0.5")  # the baseline changed: the report follows
    assert rc == 0 and "01_baseline: done" in out and "06_report: done" in out
    assert "REPORT value=2" in html.read_text()

    rc, out = run("-p", "value=3", "--stages", "01")  # new records, report not selected: no stale report left
    assert rc == 0 and "no report rendered" in out and not html.exists()

    rc, out = run("-p", "value=3", "--budget", "top1_drop=0.5", "--force", "--verbose")
    assert rc == 0 and "skipped" not in out and "stage one says hello" in out  # --verbose shows cell output
    assert "REPORT value=3" in html.read_text()


def test_a_failing_stage_leaves_a_failure_page_not_a_stale_report(fake):
    run, model_dir = fake
    assert run()[0] == 0
    assert "REPORT value=1" in (model_dir / "report.html").read_text()
    rc, out = run("-p", "fail=True")
    assert rc == 1 and "FAILED in 01_baseline" in out
    page = (model_dir / "report.html").read_text()
    assert "REPORT value" not in page  # the old report is gone
    assert "FAILED" in page and "stage failed on purpose" in page and "stage one says hello" in page  # log tail
    assert "notebooks/01_baseline.ipynb" in page
    status = json.loads((model_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["failed_stage"] == "01_baseline"
    assert not (model_dir / "report.stamp.json").exists() and not (model_dir / "baseline.stamp.json").exists()
    index = (model_dir.parent / "index.html").read_text()
    assert "FAILED in stage 01_baseline" in index
    assert run()[0] == 0  # fixed: runs again and the report is back
    assert "REPORT value=1" in (model_dir / "report.html").read_text()


def test_a_second_run_of_the_same_model_is_refused_while_one_holds_the_lock(fake):
    import fcntl

    run, model_dir = fake
    model_dir.mkdir(parents=True)
    with open(model_dir / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, out = run()
    assert rc == 2 and "another playbook run is using" in out  # refused before anything runs, like every check
    assert not (model_dir / "report.html").exists()


# --------------------------------------------------------------------------- budgets a model declares
def _planned(tmp_path, **command) -> dict:
    """Each stage's planned parameters over the real notebooks (nothing runs; no weights are loaded)."""
    from playbook.command import RunCommand
    from playbook.run_plan import RunSpec, plan

    return {s.stage.name: (s.params, s.notebook) for s in plan(RunSpec(RunCommand(**command), tmp_path / "reports"))}


def test_a_large_pretrained_model_runs_with_the_budgets_it_declares(tmp_path):
    from playbook.models import run_budgets
    from playbook.notebooks import notebook_parameters

    declared = run_budgets("efficientnet-lite0")
    assert declared["max_test_images"] == 2000 and declared["lite0"] is False and len(declared) == 14
    from playbook.compress import DEFAULT_RECIPES  # stage 02: the default set but the three size-bound recipes and
    assert set(DEFAULT_RECIPES) - set(declared["recipes"]) == {  # five that a cheaper sibling answers
        "palettize-mixed", "palettize-mixed-tight", "torch-palettize-2bit-dkm", "palettize-3bit", "palettize-2bit",
        "prune-75", "prune-50+palettize-4bit", "torch-int4-gptq"}
    assert set(declared["recipes"]) <= set(DEFAULT_RECIPES)
    planned = _planned(tmp_path, model="efficientnet-lite0")
    seen = set()
    for stage, (params, notebook) in planned.items():
        names = set(notebook_parameters(notebook))
        for name, value in declared.items():
            if name in names:
                assert params[name] == value, (stage, name)
                seen.add(name)
            else:
                assert name not in params, (stage, name)  # only names the stage's notebook declares
    assert seen == set(declared)  # every declared budget is a parameter some stage notebook declares


def test_the_users_value_wins_over_a_declared_budget(tmp_path):
    planned = _planned(tmp_path, model="efficientnet-lite0", params={"max_test_images": 500})
    assert planned["baseline"][0]["max_test_images"] == 500
    assert planned["quantization"][0]["finetune_epochs"] == 0.25  # the others still apply


@pytest.mark.parametrize("command", [{"model": "resnet"}, {"model": "efficientnet-lite0", "smoke": True}],
                         ids=["small-model", "smoke"])
def test_small_models_and_smoke_runs_get_no_declared_budgets(tmp_path, command):
    from playbook.models import BOUNDED_BUDGETS

    for stage, (params, _) in _planned(tmp_path, **command).items():
        assert not set(params) & set(BOUNDED_BUDGETS), stage


def test_the_run_prints_and_records_the_declared_budgets_apart_from_the_command(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "01_baseline.ipynb", FAKE_01 + "max_test_images: int = 0  # bound\n", FAKE_01_BODY)
    monkeypatch.setenv("PLAYBOOK_HEARTBEAT_S", "0")
    reports = tmp_path / "reports"
    rc = cli.main(["run", "--model", "efficientnet-lite0", "--reports-dir", str(reports), "--notebooks-dir", str(nbs)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("efficientnet-lite0 declares bounded budgets (4.65 M parameters, 56 px input): max_test_images=2000; "
            "-p NAME=VALUE overrides any of them") in out
    status = json.loads((reports / "efficientnet-lite0" / "run.json").read_text())
    assert status["declared_budgets"] == {"max_test_images": 2000}
    assert "max_test_images" not in status["command"]  # the user's command, which re-derives them when rerun
    assert cli.main(["list-models"]) == 0
    assert "declares 14 bounded run budgets" in capsys.readouterr().out


def test_batch_reports_an_unknown_model_and_runs_the_rest(fake, tmp_path, capsys):
    _, model_dir = fake
    reports = model_dir.parent
    batch = tmp_path / "batch.yaml"
    batch.write_text("- resnet\n- resnet9000\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {model: resnet, params: {valu: 2}}\n- squeezenet\n")
    common = ["--reports-dir", str(reports), "--notebooks-dir", str(tmp_path / "notebooks")]
    assert cli.main(["batch", str(bad), *common]) == 2  # a misspelled parameter stops the whole batch up front
    assert "'valu'" in capsys.readouterr().err and not reports.exists()

    assert cli.main(["batch", str(batch), "--jobs", "2", *common]) == 1
    out = capsys.readouterr().out
    assert "[resnet9000] FAILED before running" in out and "/2 done: resnet ok" in out
    assert "REPORT value=1" in (model_dir / "report.html").read_text()
    page = (reports / "resnet9000" / "report.html").read_text()
    assert "FAILED" in page and "valid models are" in page
    index = (reports / "index.html").read_text()
    assert 'href="resnet/report.html"' in index and 'href="resnet9000/report.html"' in index
    assert "FAILED in stage validation" in index


# --------------------------------------------------------------------------- the real notebooks
def _playbook(args: list[str], env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_complete_report(path: Path) -> str:
    html = path.read_text()
    assert "pb-summary" in html and ("Recommended:" in html or "Provisional choice:" in html  # smoke runs: provisional
                                     or "No variant meets your budget" in html)
    assert 'class="pb-table"' in html and "baseline-fp32" in html and "baseline-fp16" in html
    assert embedded_images(html) >= 1
    assert offline_problems(html) == []
    assert "<script src=" not in html and 'src="http' not in html  # a reader's <a href> to a source is fine
    assert "not measured" in html and "reference executor" in html  # provenance
    assert "MLMultiArray(shape: [1, 1, 8, 8]" in html and "python -m playbook run --model" in html
    return html


@dataclasses.dataclass
class ChainRuns:
    """What ``_resnet_smoke_chain`` ran, in order, in one reports folder."""

    first: subprocess.CompletedProcess  # `playbook run --model resnet --dataset digits --smoke`
    again: subprocess.CompletedProcess  # the same command once more, with another checkpoint cache
    batch: subprocess.CompletedProcess  # a three-model batch (one broken) into the same reports folder
    reports: Path


def _resnet_smoke_chain(folder: Path, base_env: dict[str, str]) -> ChainRuns:
    """`playbook run --model resnet --dataset digits --smoke`: every stage notebook there is, as a user runs it; then
    the same command again; then a batch of three models (one broken) that shares its reports folder.  All three
    only wait on subprocesses, so they run in the background from the session's first test (see conftest's
    ``background``), one after the other: the second and third need the first's reports."""
    env = dict(base_env, TQDM_DISABLE="1", PLAYBOOK_HEARTBEAT_S="30", PLAYBOOK_CACHE_DIR=str(folder / "checkpoints"))
    env.pop("PLAYBOOK_REPORTS_DIR", None)
    reports = folder / "reports"
    first = _playbook(["run", "--model", "resnet", "--dataset", "digits", "--smoke", "--reports-dir", str(reports)],
                      env, timeout=1200)
    other_cache = dict(env, PLAYBOOK_CACHE_DIR=str(folder / "checkpoints-2"))
    again = _playbook(["run", "--model", "resnet", "--dataset", "digits", "--smoke", "--reports-dir", str(reports)],
                      other_cache)
    broken = folder / "broken_model.py"
    broken.write_text("def broken(num_classes, in_channels):\n    raise RuntimeError('broken on purpose')\n")
    batch = folder / "batch.yaml"
    batch.write_text(textwrap.dedent(f"""\
        defaults: {{dataset: digits, smoke: true, budget: {{top1_drop: 2.0}}}}
        models:
          - resnet
          - {{model: squeezenet, params: {{lr: 0.05}}}}
          - {broken}:broken
        """))
    batch_run = _playbook(["batch", str(batch), "--jobs", "2", "--stages", "01,06", "--reports-dir", str(reports)],
                          other_cache)
    return ChainRuns(first, again, batch_run, reports)


@pytest.fixture(scope="module")
def chain(background) -> ChainRuns:
    return background[_resnet_smoke_chain].result(timeout=1800)


@pytest.mark.background.with_args(_resnet_smoke_chain)
def test_run_resnet_smoke_writes_the_report_and_reruns_nothing(chain):
    proc, reports = chain.first, chain.reports
    assert proc.returncode == 0, proc.stdout + proc.stderr  # its time is a benchmark's figure (bench_chain.py)
    assert "[resnet] 01_baseline: running" in proc.stdout and "[resnet] 06_report: done in" in proc.stdout
    html = _assert_complete_report(reports / "resnet" / "report.html")
    assert "Smoke run" in html
    index = (reports / "index.html").read_text()
    assert 'href="resnet/report.html"' in index and "digits (smoke run)" in index
    summary = json.loads((reports / "resnet" / "report.json").read_text())
    best = summary["recommended"] or summary["closest"]
    assert best["name"] in html and best["package"].endswith(".mlpackage") and (reports / "resnet" / best["package"]).exists()

    again = chain.again  # the same command once more (another checkpoint cache: the stamps alone say up to date)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("up to date, skipped") == len(list((REPO / "notebooks").glob("0*_*.ipynb")))
    assert ": running" not in again.stdout


@pytest.mark.background.with_args(_resnet_smoke_chain)
def test_batch_isolates_a_failing_model(chain):
    """Three models, one of them broken: two complete reports, one failure page, an index of all three.

    The batch shares the reports folder of the run above, so resnet's baseline is up to date and only
    its report is redone (the batch's budget differs): re-runs skip finished work across commands too.
    """
    proc, reports = chain.batch, chain.reports
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one model failed
    assert "[resnet] 01_baseline: up to date, skipped" in out and "[resnet] 06_report: running" in out
    for model in ("resnet", "squeezenet"):
        _assert_complete_report(reports / model / "report.html")
        assert json.loads((reports / model / "run.json").read_text())["status"] == "ok"
    from playbook.env import core_share
    squeezenet = json.loads((reports / "squeezenet" / "baseline.json").read_text())["environment"]
    assert squeezenet["core_budget"] == core_share(2)  # two jobs side by side: each gets half of the cores
    failed_dir = next(d for d in reports.iterdir() if d.name.endswith("broken"))
    page = (failed_dir / "report.html").read_text()
    assert "FAILED" in page and "broken on purpose" in page and "Log tail" in page
    assert offline_problems(page) == []
    index = (reports / "index.html").read_text()
    assert 'href="resnet/report.html"' in index and 'href="squeezenet/report.html"' in index
    assert f'href="{failed_dir.name}/report.html"' in index and index.count("FAILED") == 1
    assert "[squeezenet] 01_baseline: running" in out and "[batch] 3/3 done" in out


def test_list_commands(capsys):
    assert cli.main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "resnet" in out and "mobilenetv2" in out and "file.py:function" in out
    assert cli.main(["list-params"]) == 0
    out = capsys.readouterr().out
    assert "01_baseline:" in out and "06_report:" in out
    assert "[--budget max_top1_drop=]" in out and "[-p epochs=]" in out and "[--smoke]" in out
