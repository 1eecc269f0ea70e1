"""The ``playbook`` command: one handler per subcommand and ``main``; the parser is in ``playbook.cli_parser``,
the work in ``playbook.pipeline``.

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
import contextlib
import errno
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from playbook.cli_parser import build_parser
from playbook.command import RunCommand, canonical_budget, option_for, parse_assignments, parse_budget
from playbook.config import ConfigError
from playbook.paths import default_reports_root, model_dir, notebooks_dir

if TYPE_CHECKING:
    from playbook.pipeline import RunSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _reports_root(args: argparse.Namespace) -> Path:
    return (args.reports_dir or default_reports_root()).resolve()


def _spec(args: argparse.Namespace, command: RunCommand, update_index: bool, verbose: bool = False) -> "RunSpec":
    from playbook.pipeline import RunSpec

    return RunSpec(command=command, reports_root=_reports_root(args),
                   notebooks_dir=args.notebooks_dir or notebooks_dir(), update_index=update_index, verbose=verbose)


def cmd_run(args: argparse.Namespace) -> int:
    from playbook.pipeline import plan_and_run

    command = RunCommand(model=args.model, dataset=args.dataset, smoke=args.smoke,
                         params=parse_assignments(args.params, "-p"), budget=parse_budget(args.budget),
                         stages=args.stages, force=args.force,
                         reports_dir=str(args.reports_dir) if args.reports_dir else "")
    spec = _spec(args, command, update_index=not args.no_index, verbose=args.verbose)
    return EXIT_OK if plan_and_run(spec).ok else EXIT_FAILED


def cmd_batch(args: argparse.Namespace) -> int:
    from playbook.batch import BatchInterrupted, load_batch, run_batch
    from playbook.pipeline import check_parameter_names, check_reports_folder, declared_parameters

    if args.scheduler and args.jobs is not None:
        raise ConfigError("--jobs and --scheduler exclude each other: on a cluster each worker thread runs one model "
                          "at a time (local:N starts N single-threaded workers)")
    if args.transfer != "auto" and not args.scheduler:
        raise ConfigError("--transfer applies only with --scheduler")
    if args.scheduler:
        from playbook.distributed import Scheduler, run_batch_on_cluster

        scheduler = Scheduler.parse(args.scheduler)
    check_reports_folder(_reports_root(args))  # each model's failure page would fail to be written there too
    specs = [_spec(args, RunCommand(model=e["model"], dataset=e["dataset"] or "", smoke=e["smoke"] or args.smoke,
                                    params=dict(e["params"]), budget=canonical_budget(e["budget"]),
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
    if root.exists() and not root.is_dir():
        raise ConfigError(f"reports folder {root} is a file, not a folder; name the folder that holds reports/<model>/ "
                          "with --reports-dir")
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
        budgets = models.run_budgets(name)
        declares = (f" [declares {len(budgets)} bounded run budgets ({models.declared_size(name)}); -p overrides "
                    "them]" if budgets else "")
        print(f"{name:<22} {entry.description if entry else 'any torchvision.models architecture'}{declares}")
    print(f"{'module:function':<22} your own factory (also path/to/file.py:function); called with num_classes, "
          "in_channels and, if it takes it, image_size")
    return EXIT_OK


def cmd_list_params(args: argparse.Namespace) -> int:
    from playbook.notebooks import notebook_parameters, stage_notebooks

    for stage, path in stage_notebooks(args.notebooks_dir):
        print(f"{stage.stem}:")
        for name, info in notebook_parameters(path).items():
            print(f"  {name:<18} {info.get('inferred_type_name', ''):<6} = {info.get('default', ''):<16} "
                  f"[{option_for(name)}]  {info.get('help', '')}")
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
    from playbook.cli_bench import run_bench

    out = run_bench(args.model, str(_reports_root(args)), args.smoke, parse_assignments(args.params, "-p"), args.out)
    print(f"benchmark record: {model_dir(args.model, _reports_root(args)) / 'benchmark.json'}; results file: {out}")
    return EXIT_OK


def cmd_import_bench(args: argparse.Namespace) -> int:
    from playbook.cli_bench import import_results

    done = import_results(args.file, args.model, _reports_root(args))
    print(f"imported {done['n']} measurement(s) from {done['file']} ({done['produced_by']}; "
          f"{', '.join(done['devices'])}; {', '.join(done['os'])}) into {model_dir(args.model, _reports_root(args))}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``playbook`` and ``python -m playbook``; returns the exit status."""
    args = build_parser().parse_args(argv)  # before the heavy imports: --version and -h answer at once
    handlers = {"run": cmd_run, "batch": cmd_batch, "status": cmd_status, "list-models": cmd_list_models,
                "list-params": cmd_list_params, "notebooks": cmd_notebooks, "bench": cmd_bench,
                "import-bench": cmd_import_bench}
    _RECEIVED.clear()
    previous = {}
    if args.command == "run" and threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, a scheduler's timeout) is handled like Ctrl-C: an INTERRUPTED page, exit 128 + the signal
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _dispatch(handlers[args.command], args)
    finally:
        if not _RECEIVED:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _dispatch(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand's handler; every error the user can act on becomes one ``playbook:`` line."""
    from playbook.pipeline import RunFailed

    try:
        return handler(args)
    except (ConfigError, RunFailed) as exc:
        print(f"playbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        signum = _RECEIVED[0] if _RECEIVED else signal.SIGINT
        _quiet_shutdown()
        print(f"playbook: interrupted by {signal.Signals(signum).name}; the stage that was running left its previous "
              "outputs in place (see the INTERRUPTED page)" if args.command == "run" else
              f"playbook: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)
    except OSError as exc:  # a full disk, a folder that became read-only: one line here, the traceback in run.log
        print(f"playbook: error: {_os_error_text(exc, args)}", file=sys.stderr)
        return EXIT_USAGE if exc.errno in _PERMISSION else EXIT_FAILED


_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_RECEIVED: list[int] = []


def _os_error_text(exc: OSError, args: argparse.Namespace) -> str:
    """One line for an ``OSError``: what failed where, whether it is a permission problem or a full disk, and the
    option of *this* command that picks another folder."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    option = "another DIR" if args.command == "notebooks" else "another folder with --reports-dir"
    if exc.errno in _PERMISSION:
        return (f"{exc.strerror or exc}{where}: a permission problem, this user may not write there; choose "
                f"{option}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.strerror or exc}{where}; free space or choose {option}"
    return f"{exc.strerror or exc}{where}; check the folder or choose {option}"


def _interrupt(signum: int, frame: object) -> None:
    if not _RECEIVED:
        _RECEIVED.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _quiet_shutdown() -> None:
    """After an interruption, papermill's kernel client leaves asyncio tasks whose exceptions nobody retrieves;
    asyncio would print each ("Task exception was never retrieved", with a traceback) when they are collected at
    exit.  The run's log already has what happened: silence them, and any second signal during the exit."""
    import logging

    for name in ("asyncio", "traitlets", "papermill", "nbclient"):
        logging.getLogger(name).disabled = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
