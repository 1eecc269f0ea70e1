"""The ``playbook`` command: argument parsing only; the work is in ``playbook.pipeline``.

::

    playbook run --model resnet [--dataset digits] [--smoke] [-p epochs=3 lr=0.05] \\
                 [--budget max_top1_drop=0.5 max_size_mb=1] [--stages 01,06] [--reports-dir DIR] [--force]
    playbook batch models.yaml [--jobs 2 | --scheduler tcp://host:8786 | --scheduler local:2] [--reports-dir DIR] \\
                 [--stages 01,06] [--force]
    playbook list-models
    playbook list-params
    playbook notebooks DIR [--force]
    playbook --version
    playbook bench --model resnet [--smoke] [-p backends="['coreml']"] [--out results.json] [--reports-dir DIR]
    playbook import-bench results.json --model resnet [--reports-dir DIR]
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from playbook.command import BUDGET_NAMES, RunCommand, parse_assignments, parse_budget
from playbook.config import ConfigError
from playbook.paths import default_reports_root, model_dir, notebooks_dir, repository_root

if TYPE_CHECKING:
    from playbook.pipeline import RunSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _PrintVersion(argparse.Action):
    """``--version``: like argparse's ``version`` action, but multi-line and computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playbook", description="Core ML optimization playbook: train, export, "
                                     "compress and report, one notebook per stage.")
    parser.add_argument("--version", action=_PrintVersion,
                        help="print the playbook's version and the coremltools and torch it uses, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reports-dir", type=Path, default=None,
                       help="folder for reports/<model>/ (default: $PLAYBOOK_REPORTS_DIR, the repository's reports/ "
                            "in a checkout, else ./reports)")
        p.add_argument("--stages", default="",
                       help="stages to run, e.g. 01,06 or baseline,report (default: every stage notebook that exists)")
        p.add_argument("--force", action="store_true", help="re-run stages even when their results are up to date")
        p.add_argument("--notebooks-dir", type=Path, default=None, help=argparse.SUPPRESS)

    run = sub.add_parser("run", help="run the stage notebooks for one model and write its report")
    run.add_argument("--model", required=True, help="model name (playbook list-models), torchvision:NAME, "
                     "module:function or path/to/file.py:function")
    run.add_argument("--dataset", default="", help="digits, fashion-mnist or imagefolder:PATH (default: 01's)")
    run.add_argument("--smoke", action="store_true", help="tiny data and one epoch: checks the pipeline quickly")
    run.add_argument("-p", "--param", dest="params", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                     help="notebook parameter; VALUE is a Python literal (3, 0.5, True, {'width': 16}) or text")
    run.add_argument("--budget", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                     help=f"report budget: {', '.join(BUDGET_NAMES)} (or without max_); 0 = no limit")
    run.add_argument("-v", "--verbose", action="store_true", help="also print what the notebooks print")
    run.add_argument("--no-index", action="store_true", help=argparse.SUPPRESS)
    common(run)

    batch = sub.add_parser("batch", help="run many models from a YAML file, a few at a time")
    batch.add_argument("file", type=Path, help="YAML: a list of {model, dataset?, smoke?, params?, budget?}, "
                       "or {defaults: {...}, models: [...]}")
    batch.add_argument("--jobs", "-j", type=int, default=None, help="models run at once on this machine (default 2)")
    batch.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on a Dask cluster, one task per model: tcp://HOST:8786 (a running `dask scheduler`) "
                            "or local:N (N worker processes here)")
    batch.add_argument("--transfer", choices=("auto", "archive", "shared"), default="auto",
                       help="with --scheduler: how results come back; auto writes in place when workers see "
                            "--reports-dir, else each model's folder returns as an archive (default auto)")
    batch.add_argument("--smoke", action="store_true", help="smoke mode for every model")
    common(batch)

    status = sub.add_parser("status", help="each model's last run: ok, failed, interrupted or running; cleans up "
                                           "after runs that were killed")
    status.add_argument("--reports-dir", type=Path, default=None, help="folder holding reports/<model>/")
    bench = sub.add_parser("bench", help="stage 05 without its notebook: time every package with the backends "
                           "this machine has (Core ML on a Mac) and write benchmark.json")
    bench.add_argument("--model", required=True, help="model whose packages are timed (its records must exist)")
    bench.add_argument("--smoke", action="store_true", help="the records were made with --smoke; few runs")
    bench.add_argument("-p", "--param", dest="params", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                       help="a 05_benchmark parameter, e.g. backends=\"['coreml']\" max_seconds=5")
    bench.add_argument("--out", default=None, help="also write the portable results file here (for import-bench)")
    bench.add_argument("--reports-dir", type=Path, default=None, help="folder holding reports/<model>/")
    imp = sub.add_parser("import-bench", help="validate a results file from a Mac or iPhone and merge it into "
                         "reports/<model>/benchmark.json")
    imp.add_argument("file", type=Path, help="results JSON (playbook bench --out, or PlaybookBenchmark.swift)")
    imp.add_argument("--model", required=True, help="the model the file measured")
    imp.add_argument("--reports-dir", type=Path, default=None, help="folder holding reports/<model>/")

    sub.add_parser("list-models", help="the registered model names")
    lp = sub.add_parser("list-params", help="every notebook parameter, its type, default and meaning")
    lp.add_argument("--notebooks-dir", type=Path, default=None, help=argparse.SUPPRESS)
    nb = sub.add_parser("notebooks", help="copy the walkthrough notebooks into DIR, to read and run in JupyterLab")
    nb.add_argument("dir", type=Path, metavar="DIR", help="folder to copy them into (created if missing)")
    nb.add_argument("--force", action="store_true", help="overwrite notebooks of the same name already in DIR")
    return parser


def version_text() -> str:
    """What ``playbook --version`` prints: the playbook's version and where it runs from, then the versions of
    coremltools and torch installed beside it (read from package metadata, without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    from playbook import __version__
    from playbook.paths import PACKAGE_DIR

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    root = repository_root()
    where = f"checkout {root}" if root is not None else f"installed at {PACKAGE_DIR}"
    return "\n".join([f"playbook {__version__} ({where})", f"coremltools {installed('coremltools')}",
                      f"torch {installed('torch')}"])


def _reports_root(args: argparse.Namespace) -> Path:
    return (args.reports_dir or default_reports_root()).resolve()


def _spec(args: argparse.Namespace, command: RunCommand, update_index: bool, verbose: bool = False) -> "RunSpec":
    from playbook.pipeline import RunSpec

    return RunSpec(command=command, reports_root=_reports_root(args),
                   notebooks_dir=args.notebooks_dir or notebooks_dir(), update_index=update_index, verbose=verbose)


def cmd_run(args: argparse.Namespace) -> int:
    from playbook.pipeline import plan, run_model

    command = RunCommand(model=args.model, dataset=args.dataset, smoke=args.smoke,
                         params=parse_assignments(args.params, "-p"), budget=parse_budget(args.budget),
                         stages=args.stages, force=args.force,
                         reports_dir=str(args.reports_dir) if args.reports_dir else "")
    spec = _spec(args, command, update_index=not args.no_index, verbose=args.verbose)
    return EXIT_OK if run_model(spec, plan(spec)).ok else EXIT_FAILED


def cmd_batch(args: argparse.Namespace) -> int:
    from playbook.batch import BatchInterrupted, load_batch, run_batch
    from playbook.pipeline import check_parameter_names, declared_parameters

    if args.scheduler and args.jobs is not None:
        raise ConfigError("--jobs and --scheduler exclude each other: on a cluster each worker thread runs one model "
                          "at a time (local:N starts N single-threaded workers)")
    if args.transfer != "auto" and not args.scheduler:
        raise ConfigError("--transfer applies only with --scheduler")
    if args.scheduler:
        from playbook.distributed import Scheduler, run_batch_on_cluster

        scheduler = Scheduler.parse(args.scheduler)
    specs = [_spec(args, RunCommand(model=e["model"], dataset=e["dataset"] or "", smoke=e["smoke"] or args.smoke,
                                    params=dict(e["params"]), budget=parse_budget([f"{k}={v!r}" for k, v in
                                                                                   e["budget"].items()]),
                                    stages=args.stages, force=args.force), update_index=False)
             for e in load_batch(args.file)]
    # a misspelled parameter is the batch author's mistake, not one model's: refuse the batch before anything runs
    declared = declared_parameters(specs[0])
    for spec in specs:
        try:
            check_parameter_names(spec.command, declared)
        except ConfigError as exc:
            raise ConfigError(f"batch entry {spec.model!r}: {exc}") from exc
    try:
        if args.scheduler:
            outcomes = run_batch_on_cluster(specs, scheduler, reports_root=_reports_root(args),
                                            transfer=args.transfer)
        else:
            outcomes = run_batch(specs, jobs=2 if args.jobs is None else args.jobs, reports_root=_reports_root(args))
    except BatchInterrupted as exc:
        print(f"playbook: batch stopped by {exc}; unfinished models have INTERRUPTED pages; index: "
              f"{_reports_root(args) / 'index.html'}", file=sys.stderr)
        return 128 + exc.signum
    width = max(len(o.model) for o in outcomes)
    print("\nbatch summary:")
    for o in outcomes:
        print(f"  {o.model:<{width}}  {'ok    ' if o.ok else 'FAILED'}  {o.report}" + (f"  ({o.error})" if o.error else ""))
    print(f"index: {_reports_root(args) / 'index.html'}")
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from playbook.pipeline import model_status
    from playbook.report.pages import write_index

    root = _reports_root(args)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []
    if not folders:
        print(f"no model has been run in {root}")
        return EXIT_OK
    recovered = False
    for folder in folders:
        state = model_status(folder)
        recovered |= bool(state.get("recovered"))
        line = f"{folder.name:<24} {state.get('status', '?'):<12} {state.get('finished') or state.get('started') or ''}"
        if state.get("failed_stage"):
            line += f"  in {state['failed_stage']}"
        if state.get("recovered"):
            line += f"  (cleaned up: {state['recovered']})"
        elif state.get("error"):
            line += f"  {state['error'][:120]}"
        print(line)
    if recovered:
        write_index(root)
    return EXIT_OK


def cmd_list_models(args: argparse.Namespace) -> int:
    from playbook import models

    for name in models.available_models():
        entry = models.model_entry(name)
        print(f"{name:<22} {entry.description if entry else 'any torchvision.models architecture'}")
    print(f"{'module:function':<22} your own factory (also path/to/file.py:function); called with num_classes, "
          "in_channels and, if it takes it, image_size")
    return EXIT_OK


def cmd_list_params(args: argparse.Namespace) -> int:
    from playbook.notebooks import notebook_parameters, stage_notebooks

    flags = {"model": "--model", "dataset": "--dataset", "smoke": "--smoke", "reports_dir": "--reports-dir"}
    for stage, path in stage_notebooks(args.notebooks_dir):
        print(f"{stage.stem}:")
        for name, info in notebook_parameters(path).items():
            flag = flags.get(name, f"--budget {name}=" if name in BUDGET_NAMES else f"-p {name}=")
            print(f"  {name:<18} {info.get('inferred_type_name', ''):<6} = {info.get('default', ''):<16} "
                  f"[{flag}]  {info.get('help', '')}")
    return EXIT_OK


def cmd_notebooks(args: argparse.Namespace) -> int:
    from playbook.notebooks import copy_notebooks

    copied = copy_notebooks(args.dir, overwrite=args.force)
    for path in copied:
        print(path)
    print(f"{len(copied)} notebooks in {args.dir}; open them with `jupyter lab {args.dir}` (pip install "
          "'coreml-playbook[lab]' for JupyterLab). Run from there, they write to ./reports of that folder.")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from playbook.stages.benchmark import cli_bench

    out = cli_bench(args.model, str(_reports_root(args)), args.smoke, parse_assignments(args.params, "-p"), args.out)
    print(f"benchmark record: {model_dir(args.model, _reports_root(args)) / 'benchmark.json'}; results file: {out}")
    return EXIT_OK


def cmd_import_bench(args: argparse.Namespace) -> int:
    from playbook.stages.benchmark import import_results

    done = import_results(args.file, args.model, _reports_root(args))
    print(f"imported {done['n']} measurement(s) from {done['file']} ({done['produced_by']}; "
          f"{', '.join(done['devices'])}; {', '.join(done['os'])}) into {model_dir(args.model, _reports_root(args))}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``playbook`` and ``python -m playbook``; returns the exit status."""
    args = build_parser().parse_args(argv)  # before the heavy imports: --version and -h answer at once
    from playbook.pipeline import RunFailed

    handlers = {"run": cmd_run, "batch": cmd_batch, "status": cmd_status, "list-models": cmd_list_models,
                "list-params": cmd_list_params, "notebooks": cmd_notebooks, "bench": cmd_bench,
                "import-bench": cmd_import_bench}
    if args.command == "run":  # SIGTERM (kill, a scheduler's timeout) is handled like Ctrl-C: an INTERRUPTED page
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return handlers[args.command](args)
    except (ConfigError, RunFailed) as exc:
        print(f"playbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("playbook: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a folder that became read-only: one line here, the traceback in run.log
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"playbook: error: {exc.strerror or exc}{where}; free space or choose another folder with "
              "--reports-dir", file=sys.stderr)
        return EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
