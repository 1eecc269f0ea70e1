"""Notebooks are committed without outputs; every stage notebook starts with a valid parameters cell."""
import json

import pytest

from playbook.notebooks import notebook_parameters, stage_notebooks

NOTEBOOKS = stage_notebooks()


def test_there_are_stage_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_baseline.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_a_typed_commented_parameters_cell(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first.get("metadata", {}).get("tags", [])
    lines = [l for l in "".join(first["source"]).splitlines() if l.strip()]
    declared = notebook_parameters(path)
    assert len(declared) == len(lines), "every line must parse as `name: type = literal  # comment`"
    for info in declared.values():
        assert info["inferred_type_name"] != "None" and info["help"], info
    assert "smoke" in declared and "reports_dir" in declared
