"""Prepare smoke copies of the stage notebooks for nbval before collection.

papermill parameterises each notebook (``prepare_only``: nothing runs here) with the
smoke parameters it declares and a fresh reports folder; nbval then executes them in
pipeline order (01 before 02 ... 06), so every code path of every notebook runs in CI.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SMOKE_NOTEBOOKS = ROOT / "build" / "smoke-notebooks"
SMOKE_REPORTS = ROOT / "build" / "smoke-reports"


def pytest_configure(config):  # noqa: D103 - pytest hook
    config.addinivalue_line("markers", "after_notebooks: runs after the smoke notebooks (uses the reports they write)")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    if getattr(config.option, "nbval_lax", False) is False or os.environ.get("PLAYBOOK_SKIP_NOTEBOOKS"):
        SMOKE_NOTEBOOKS.mkdir(parents=True, exist_ok=True)
        return
    from playbook.notebooks import prepare_smoke_notebooks

    shutil.rmtree(SMOKE_NOTEBOOKS, ignore_errors=True)
    shutil.rmtree(SMOKE_REPORTS, ignore_errors=True)
    prepare_smoke_notebooks(SMOKE_NOTEBOOKS, SMOKE_REPORTS)
    # pytest resolved `testpaths` before this hook, when a fresh clone had no build/ folder yet:
    # add the notebooks to a default (testpaths) run; explicit command-line paths are left alone.
    import pytest

    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        resolved = {Path(a).resolve() for a in config.args}
        if SMOKE_NOTEBOOKS.resolve() not in resolved:
            config.args.append(str(SMOKE_NOTEBOOKS))


def pytest_collection_modifyitems(session, config, items):  # noqa: D103 - pytest hook
    # Tests that read the smoke notebooks' reports (the report in a browser) run after the notebooks.
    late = [item for item in items if item.get_closest_marker("after_notebooks")]
    items[:] = [item for item in items if item not in late] + late
