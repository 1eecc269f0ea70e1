"""Notebooks are committed without outputs; every stage notebook starts with a valid parameters cell."""
import json

import pytest

from playbook.notebooks import notebook_parameters, stage_notebooks

STAGES = stage_notebooks()
NOTEBOOKS = [path for _, path in STAGES]


def test_there_are_stage_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_baseline.ipynb"


@pytest.mark.parametrize("stage, path", STAGES, ids=lambda x: getattr(x, "name", ""))
def test_notebook_parameters_are_exactly_the_stage_config(stage, path):
    """The parameters cell *is* the stage's config: same names, same defaults (so papermill, the CLI's checks
    and ``XConfig.from_namespace`` agree)."""
    import ast

    declared = notebook_parameters(path)
    config = stage.config_class()
    assert sorted(declared) == sorted(config.field_names())
    defaults = config()
    for name, info in declared.items():
        if name == "interactive":  # the notebook shows the explorer; the config's default is the same
            assert ast.literal_eval(info["default"]) is True
            continue
        assert ast.literal_eval(info["default"]) == getattr(defaults, name), name


def test_notebooks_import_only_stages_and_views():
    import re

    for path in NOTEBOOKS:
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        modules = set(re.findall(r"^\s*(?:from|import) (playbook[\w.]*)", code, flags=re.M))
        assert modules <= {"playbook", "playbook.views"} | {
            m for m in modules if m.startswith("playbook.stages.")}, (path.name, modules)


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
