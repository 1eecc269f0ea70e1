"""Build step that ships the stage notebooks inside the package.

The notebooks stay where readers and nbval expect them, in the repository's top-level ``notebooks/``;
this ``build_py`` copies ``notebooks/*.ipynb`` into ``playbook/notebooks/`` of the build, so a wheel
(and an install from the sdist, which carries them through ``MANIFEST.in``) holds them as package
data that ``playbook.paths.notebooks_dir`` finds with ``importlib.resources``.  Everything else is
declared in ``pyproject.toml``.  An editable install needs no copy: the package then runs from the
checkout and reads ``notebooks/`` directly.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
PACKAGE_NOTEBOOKS = Path("playbook") / "notebooks"


class build_py_with_notebooks(build_py):
    """``build_py`` plus ``notebooks/*.ipynb`` -> ``<build>/playbook/notebooks/``."""

    def _notebooks(self) -> list[Path]:
        found = sorted(NOTEBOOKS.glob("*.ipynb"))
        if not found:
            raise FileError(f"no notebooks/*.ipynb in {NOTEBOOKS.parent}: build from a checkout of the repository "
                            "or from its sdist")
        return found

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / PACKAGE_NOTEBOOKS
        self.mkpath(str(target))
        for notebook in self._notebooks():
            self.copy_file(str(notebook), str(target / notebook.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib) / PACKAGE_NOTEBOOKS / nb.name) for nb in self._notebooks()]


setup(cmdclass={"build_py": build_py_with_notebooks})
