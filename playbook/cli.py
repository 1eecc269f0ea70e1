"""The ``playbook`` command: argument parsing only; the work is in ``playbook.pipeline``.

::

    playbook run --model resnet [--dataset digits] [--smoke] [-p epochs=3 lr=0.05] \\
                 [--budget max_top1_drop=0.5 max_size_mb=1] [--stages 01,06] [--reports-dir DIR] [--force]
    playbook batch models.yaml [--jobs 2 | --scheduler tcp://host:8786 | --scheduler local:2] [--reports-dir DIR] \\
                 [--stages 01,06] [--force]
    playbook list-models
    playbook list-params
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from playbook.command import BUDGET_NAMES, RunCommand, parse_assignments, parse_budget
from playbook.config import ConfigError
from playbook.paths import default_reports_root, notebooks_dir

if TYPE_CHECKING:
    from playbook.pipeline import RunSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playbook", description="Core ML optimization playbook: train, export, "
                                     "compress and report, one notebook per stage.")
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

    sub.add_parser("list-models", help="the registered model names")
    lp = sub.add_parser("list-params", help="every notebook parameter, its type, default and meaning")
    lp.add_argument("--notebooks-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``playbook`` and ``python -m playbook``; returns the exit status."""
    from playbook.pipeline import RunFailed

    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "batch": cmd_batch, "list-models": cmd_list_models, "list-params": cmd_list_params}
    try:
        return handlers[args.command](args)
    except (ConfigError, RunFailed) as exc:
        print(f"playbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("playbook: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
