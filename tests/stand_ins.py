"""Helpers shared by the tests that run stand-in notebooks instead of the real stages (batch, CLI, faults)."""
from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, params: str, body: str) -> None:
    """A two-cell notebook: a ``parameters`` cell with ``params``, then ``body``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(body)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, str(path))
