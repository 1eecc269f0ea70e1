"""The ``playbook`` command's argument parser: every subcommand, its options and help texts, and ``--version``.
Imports nothing heavy, so ``--version`` and ``-h`` answer at once; the handlers are in ``playbook.cli``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from playbook.command import BUDGET_NAMES, OPTIONS
from playbook.paths import repository_root


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
        p.add_argument(OPTIONS["reports_dir"], type=Path, default=None,
                       help="folder for reports/<model>/ (default: $PLAYBOOK_REPORTS_DIR, the repository's reports/ "
                            "in a checkout, else ./reports)")
        p.add_argument("--stages", default="",
                       help="stages to run, e.g. 01,06 or baseline,report (default: every stage notebook that exists)")
        p.add_argument("--force", action="store_true", help="re-run stages even when their results are up to date")
        p.add_argument("--notebooks-dir", type=Path, default=None, help=argparse.SUPPRESS)

    run = sub.add_parser("run", help="run the stage notebooks for one model and write its report")
    run.add_argument(OPTIONS["model"], required=True, help="model name (playbook list-models), torchvision:NAME, "
                     "module:function or path/to/file.py:function")
    run.add_argument(OPTIONS["dataset"], default="", help="digits, fashion-mnist or imagefolder:PATH (default: 01's)")
    run.add_argument(OPTIONS["smoke"], action="store_true", help="tiny data and one epoch: checks the pipeline quickly")
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
