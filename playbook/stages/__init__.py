"""The stage registry: the one list of stages, their notebooks and their records.

Every stage is one notebook in ``notebooks/`` and one module here, with the same shape:

* ``XConfig`` (a ``stages.common.StageConfig``): the notebook's parameters, validated;
* ``XRun`` (a ``stages.common.StageRun``): the steps the notebook calls one by one, ending with
  ``finish()``, which writes ``reports/<model>/<record>`` through ``records.write_stage_record``;
* ``run_x(cfg) -> StageRecord``: the same steps in the same order without the notebook.

Stages never import each other's modules: a later stage reads an earlier one's *record*
(``stages.common.load_baseline`` rebuilds the trained model and data from ``baseline.json``).
The CLI, the stamps and the report learn from ``STAGES`` which stages exist.

Adding a stage, in order:

1. a technique module in ``playbook/`` that knows nothing of notebooks or stages (e.g. ``distill.py``);
2. ``playbook/stages/<name>.py`` with ``<Name>Config(StageConfig)``, ``<Name>Run(StageRun)`` and
   ``run_<name>(cfg)``; variants are measured with ``StageRun.measure`` so they share one record type;
3. ``notebooks/NN_<name>.ipynb``: a ``parameters`` cell whose names are exactly the config's fields,
   narrative, short calls to the run's steps, ``run.finish()``; no output committed;
4. its entry below (already present for the planned stages);
5. tests: the config's bad inputs, ``run_<name>`` on digits in smoke mode; the notebook runs under
   nbval automatically (``conftest.py`` prepares every stage notebook that exists).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: its number, name, notebook file, record file and module."""

    number: str
    name: str
    title: str

    @property
    def notebook(self) -> str:
        return f"{self.number}_{self.name}.ipynb"

    @property
    def stem(self) -> str:
        return f"{self.number}_{self.name}"

    @property
    def record(self) -> str:
        return f"{self.name}.json"

    @property
    def module(self) -> str:
        return f"playbook.stages.{self.name}"

    def config_class(self) -> type:
        """The stage's config class (``BaselineConfig``...), imported on demand (stage modules import torch)."""
        import importlib

        return getattr(importlib.import_module(self.module), f"{self.name.capitalize()}Config")

    @property
    def measures_variants(self) -> bool:
        """Every stage but the report measures variants and writes them into its record."""
        return self.name != "report"


STAGES: tuple[Stage, ...] = (
    Stage("01", "baseline", "Baseline"),
    Stage("02", "quantization", "Quantization and compression"),
    Stage("03", "distillation", "Knowledge distillation"),
    Stage("04", "architecture", "Architecture swap"),
    Stage("05", "benchmark", "Device benchmarking"),
    Stage("06", "report", "Report"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
VARIANT_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.measures_variants)


def get_stage(key: str) -> Stage:
    """The stage called ``key``: a name (``baseline``), a number (``01`` or ``1``) or a stem (``01_baseline``)."""
    key = str(key).strip()
    for s in STAGES:
        if key in (s.name, s.number, s.stem, s.notebook) or (key.isdigit() and int(key) == int(s.number)):
            return s
    from playbook.config import ConfigError

    raise ConfigError(f"no stage {key!r}; the stages are {[f'{s.number} ({s.name})' for s in STAGES]}")


def upstream_of(name: str) -> tuple[Stage, ...]:
    """The stages that come before ``name`` in the pipeline."""
    index = STAGE_NAMES.index(get_stage(name).name)
    return STAGES[:index]
