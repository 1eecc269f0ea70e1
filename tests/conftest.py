"""Shared fixtures: small real data (sklearn digits) and an isolated cache/reports folder."""
from __future__ import annotations

import logging

import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def digits():
    from playbook.data import DatasetConfig, load_dataset

    return load_dataset(DatasetConfig(name="digits", calib_size=32))


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """Point the checkpoint cache and the reports folder at a temp dir."""
    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PLAYBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path
