"""The layering rules, enforced on the source (issue 22): read with ``ast``, nothing is imported.

* technique libraries (everything outside ``stages``, ``views``, ``report`` and the command-line layer) import no
  stage, view or report module; the stage registry ``playbook.stages`` is a leaf any layer may read;
* a stage imports no other stage (``quantization_cost`` belongs to ``quantization``; ``common`` is shared);
* notebooks import only stages and views (and IPython's display);
* no import cycle among the playbook's modules, function-level imports included;
* no module over 600 lines, except the reference executor.

Each rule is a function over a ``{module: imported modules}`` graph, and ``test_each_rule_fails_on_a_tree_that_breaks_it``
feeds each one a small tree that breaks it, so a rule that could never fail would be seen.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "playbook"
LAYERS = ("playbook.stages.", "playbook.views", "playbook.report")
REGISTRY = "playbook.stages"
# the command-line layer: it runs stages and renders reports, so it may import them
ENTRY_POINTS = {"playbook", "playbook.__main__", "playbook.cli", "playbook.cli_parser", "playbook.cli_bench",
                "playbook.pipeline", "playbook.run_plan",
                "playbook.batch", "playbook.notebooks", "playbook.distributed", "playbook.distributed_transfer"}
LONG_MODULES_ALLOWED = {"playbook.mlprogram"}
MAX_LINES = 600


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name.removesuffix(".__init__")


def imported(source: str, known: set[str]) -> set[str]:
    """The known modules ``source`` imports anywhere (module level or inside functions); ``from a import b`` counts
    ``a.b`` when that is a module, else ``a``."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in known}


def import_graph(package: Path) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    known = set(files)
    return {m: imported(p.read_text(), known) - {m} for m, p in files.items()}


def _stage_of(module: str) -> str | None:
    if not module.startswith("playbook.stages.") or module == "playbook.stages.common":
        return None
    return module.split(".")[2].split("_")[0]


def technique_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {x}" for m in sorted(graph) if m not in ENTRY_POINTS and not m.startswith(LAYERS)
            and m != REGISTRY for x in sorted(graph[m]) if x.startswith(LAYERS)]


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {x}" for m in sorted(graph) if _stage_of(m) for x in sorted(graph[m])
            if _stage_of(x) and _stage_of(x) != _stage_of(m)]


def registry_violations(graph: dict[str, set[str]], package: Path) -> list[str]:
    """The registry is a leaf: at module level it imports no playbook module."""
    path = package / "stages" / "__init__.py"
    if not path.exists():
        return []
    top = ast.parse(path.read_text()).body
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    return [f"{REGISTRY} imports {x} at module level" for x in sorted(names) if x.startswith("playbook")]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def notebook_violations(notebooks: Path) -> list[str]:
    bad = []
    for nb in sorted(notebooks.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            source = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.startswith(("%", "!")))
            for node in ast.walk(ast.parse(source)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if isinstance(node, ast.ImportFrom) and name == "playbook":
                        wrong = [a.name for a in node.names if a.name not in ("views", "stages")]
                        bad += [f"{nb.name} imports playbook.{w}" for w in wrong]
                    elif not name.startswith(("playbook.stages", "playbook.views", "IPython.display")):
                        bad.append(f"{nb.name} imports {name}")
    return bad


def long_modules(package: Path) -> list[str]:
    return [f"{module_name(p, package)}: {n} lines" for p in sorted(package.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES
            and module_name(p, package) not in LONG_MODULES_ALLOWED]


# --------------------------------------------------------------------------- the rules on the real tree
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_technique_libraries_import_no_stage_view_or_report(graph):
    assert "playbook.compress.apply" in graph and "playbook.compress.search" in graph
    assert technique_violations(graph) == []


def test_stages_import_no_other_stage_and_the_registry_is_a_leaf(graph):
    assert stage_violations(graph) == []
    assert registry_violations(graph, PACKAGE) == []


def test_notebooks_import_only_stages_and_views():
    assert len(list((ROOT / "notebooks").glob("*.ipynb"))) == 6
    assert notebook_violations(ROOT / "notebooks") == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_module_over_600_lines_except_the_executor():
    assert long_modules(PACKAGE) == []


# --------------------------------------------------------------------------- each rule can fail
def test_each_rule_fails_on_a_tree_that_breaks_it(tmp_path):
    pkg = tmp_path / "playbook"
    files = {
        "__init__.py": "",
        "compress/__init__.py": "",
        "compress/apply.py": "from playbook.views import Table\n",  # a technique importing a view
        "stages/__init__.py": "from playbook.config import ConfigError\n",  # the registry is not a leaf
        "stages/common.py": "",
        "stages/quantization.py": "def f():\n    from playbook.stages.distillation import x\n",  # stage -> stage
        "stages/quantization_cost.py": "from playbook.stages.quantization import y\n",  # same stage: allowed
        "stages/distillation.py": "",
        "views/__init__.py": "",
        "config.py": "",
        "bench.py": "from playbook.bench_probes import p\n",
        "bench_probes.py": "def g():\n    from playbook.bench import q\n",  # a cycle through a function-level import
        "big.py": "x = 1\n" * (MAX_LINES + 1),
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    g = import_graph(pkg)
    assert technique_violations(g) == ["playbook.compress.apply imports playbook.views"]
    assert stage_violations(g) == ["playbook.stages.quantization imports playbook.stages.distillation"]
    assert registry_violations(g, pkg) == ["playbook.stages imports playbook.config at module level"]
    assert cycles(g) == [["playbook.bench", "playbook.bench_probes"]]
    assert long_modules(pkg) == [f"playbook.big: {MAX_LINES + 1} lines"]
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    cell = {"cell_type": "code", "source": ["from playbook import views\n", "from playbook.compress import compress\n"]}
    (notebooks / "02_quantization.ipynb").write_text(json.dumps({"cells": [cell]}))
    assert notebook_violations(notebooks) == ["02_quantization.ipynb imports playbook.compress"]
