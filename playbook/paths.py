"""Where things live: the reports folder, the checkpoint cache and the stage notebooks.

Inside a checkout of the repository (the package sits next to ``notebooks/`` and ``pyproject.toml``)
reports go to ``<repo>/reports``, checkpoints to ``<repo>/.cache/checkpoints`` and the notebooks are read
from ``<repo>/notebooks``.  Installed (a wheel; see ``setup.py``), reports go to ``./reports`` of the
working folder, checkpoints to the platform's user cache folder (``platformdirs``: ``~/.cache/coreml-playbook``
on Linux, ``~/Library/Caches/coreml-playbook`` on macOS) and the notebooks are the copies shipped inside the
package.  ``$PLAYBOOK_REPORTS_DIR`` and ``$PLAYBOOK_CACHE_DIR`` override both.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def repository_root() -> Path | None:
    """The checkout this package runs from, or ``None`` when it is installed (no ``notebooks/`` beside it)."""
    root = PACKAGE_DIR.parent
    if (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file():
        return root
    return None


def notebooks_dir() -> Path:
    """The stage notebooks: ``<repo>/notebooks`` in a checkout, else the copies the wheel ships as package data
    (``playbook/notebooks/``, found through ``importlib.resources``)."""
    root = repository_root()
    if root is not None:
        return root / "notebooks"
    from importlib.resources import files

    shipped = files("playbook").joinpath("notebooks")
    if not isinstance(shipped, Path) or not shipped.is_dir():
        from playbook.config import ConfigError

        raise ConfigError(f"this playbook installation ({PACKAGE_DIR}) has no stage notebooks at {shipped}: install "
                          "it from a wheel or sdist built from the repository (its setup.py ships notebooks/*.ipynb), "
                          "unzipped")
    return shipped


def default_reports_root() -> Path:
    """``$PLAYBOOK_REPORTS_DIR``, else ``<repo>/reports`` in a checkout, else ``./reports``."""
    env = os.environ.get("PLAYBOOK_REPORTS_DIR")
    if env:
        return Path(env).expanduser()
    root = repository_root()
    return root / "reports" if root is not None else Path.cwd() / "reports"


def default_cache_dir() -> Path:
    """``$PLAYBOOK_CACHE_DIR``, else ``<repo>/.cache/checkpoints`` in a checkout, else the user cache folder."""
    env = os.environ.get("PLAYBOOK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    root = repository_root()
    if root is not None:
        return root / ".cache" / "checkpoints"
    import platformdirs

    return Path(platformdirs.user_cache_dir("coreml-playbook", appauthor=False)) / "checkpoints"


def model_slug(model: str) -> str:
    """A file-system-safe folder name for a model name (factories may contain ':' and '/')."""
    from playbook.config import ConfigError

    slug = _SAFE.sub("_", str(model)).strip("_.")
    if not slug:
        raise ConfigError(f"model name {model!r} gives an empty report folder name")
    return slug


def model_dir(model: str, reports_root: Path | str | None = None) -> Path:
    """``<reports root>/<model slug>/`` (not created: writers create what they write)."""
    root = Path(reports_root) if reports_root else default_reports_root()
    return root / model_slug(model)
