"""Prepare smoke copies of the stage notebooks for nbval before collection.

papermill parameterises each notebook (``prepare_only``: nothing runs here) with the
smoke parameters it declares and a fresh reports folder; nbval then executes them in
pipeline order (01 before 02 ... 06), so every code path of every notebook runs in CI.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SMOKE_NOTEBOOKS = ROOT / "build" / "smoke-notebooks"
SMOKE_REPORTS = ROOT / "build" / "smoke-reports"


def pytest_configure(config):  # noqa: D103 - pytest hook
    config.addinivalue_line("markers", "after_notebooks: runs after the smoke notebooks (uses the reports they write)")
    config.addinivalue_line("markers", "background(check): the test's long check runs in the background from the "
                                       "first test on (see the `background` fixture)")
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
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        resolved = {Path(a).resolve() for a in config.args}
        if SMOKE_NOTEBOOKS.resolve() not in resolved:
            config.args.append(str(SMOKE_NOTEBOOKS))


def pytest_collection_modifyitems(session, config, items):  # noqa: D103 - pytest hook
    # Tests that read a background check's result (see `background`) run after every other test and notebook, so
    # that the unit tests and notebooks run while the checks do, instead of waiting for them; tests that read the
    # smoke notebooks' reports (the report in a browser) run after the notebooks.
    waiting = [item for item in items if item.get_closest_marker("background")
               and not item.get_closest_marker("after_notebooks")]
    late = [item for item in items if item.get_closest_marker("after_notebooks")]
    items[:] = [item for item in items if item not in waiting and item not in late] + waiting + late


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """Checks that only wait on subprocesses (the wheel installed and run in a fresh environment, the CLI's smoke
    chain and a batch into its reports, the four stand-in batches of ``test_batch``) start when the session's first
    test does, each in a thread, and run beside the unit tests, which are mostly single-threaded and leave one of
    CI's two cores idle; the tests that read their results run last (``pytest_collection_modifyitems``).

    A test marked ``@pytest.mark.background.with_args(check)`` gets ``background[check].result()``: whatever ``check(folder,
    env)`` returned, or the assertion it raised.  ``env`` is ``os.environ`` as it was before any test changed it.
    Only checks of selected tests start."""
    checks = []
    for item in request.session.items:
        mark = item.get_closest_marker("background")
        if mark and mark.args[0] not in checks:
            checks.append(mark.args[0])
    pool = ThreadPoolExecutor(max_workers=max(len(checks), 1), thread_name_prefix="background-check")
    env = dict(os.environ)
    futures = {check: pool.submit(check, tmp_path_factory.mktemp(check.__name__.strip("_")), dict(env))
               for check in checks}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
