"""Registry families trained at a matched budget: parsing ``family:knob=value`` specs, and training several
families through the checkpoint cache, side by side in worker processes.

Knows nothing of notebooks, stages or records (stage 04 uses it).  Workers are started with ``spawn``: the worker
function stays a top-level function of this module, so that it can be imported by name in the worker.  Workers and
their threads are sized from the cores other work leaves free (``env.plan_workers``): workers x threads never exceeds
them; with fewer than two free, one-thread workers share the busy cores where the scheduler shares per process.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from typing import Any

from playbook.config import ConfigError
from playbook.data import Dataset
from playbook.env import WorkerPlan, plan_workers, progress_options  # noqa: F401 (re-exported)
from playbook.models import ModelError, create_model

FAMILY_NAMES = ("resnet", "mobilenetv2", "squeezenet", "efficientnet")
_KNOB_ABBREV = {"width": "w", "depth": "d", "expand": "e"}


# --------------------------------------------------------------------------- families
@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture to train: a registry family and its knobs (``mobilenetv2:width=11``)."""

    family: str
    knobs: dict[str, int]

    @property
    def name(self) -> str:
        """The variant's name: ``mobilenetv2-w11`` (``-d2``, ``-e6`` for depth and expand)."""
        return "-".join([self.family] + [f"{_KNOB_ABBREV.get(k, k)}{v}" for k, v in sorted(self.knobs.items())])

    @property
    def spec(self) -> str:
        return f"{self.family}:" + ",".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))


def parse_family(spec: str) -> Family:
    """``"mobilenetv2:width=11,expand=6"`` -> ``Family``; raises ``ConfigError`` naming what would be valid."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"families entry {spec!r} must look like 'mobilenetv2:width=11' (family:knob=value,...) "
                          f"with a family among {list(FAMILY_NAMES)}")
    family, _, rest = spec.partition(":")
    family = family.strip()
    if family not in FAMILY_NAMES:
        raise ConfigError(f"families entry {spec!r}: family {family!r} is not one of {list(FAMILY_NAMES)}")
    knobs: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"families entry {spec!r}: {item!r} must be knob=positive integer, e.g. width=11")
        knobs[key.strip()] = int(value)
    if not knobs:
        raise ConfigError(f"families entry {spec!r} names no knob; give at least a width, e.g. {family}:width=8")
    try:
        create_model(family, 10, 1, 28, **knobs)
    except ModelError as exc:
        raise ConfigError(f"families entry {spec!r}: {exc}") from exc
    return Family(family, knobs)


# --------------------------------------------------------------------------- training in worker processes
def _train_worker(model_cfg: dict[str, Any], dataset_cfg: dict[str, Any], train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Train one family (or find it in the cache) in a worker process; the parent loads it from the cache."""
    from playbook.data import DatasetConfig as _DatasetConfig, load_dataset as _load_dataset
    from playbook.train import ModelConfig, TrainConfig, train_or_load

    import torch

    data = _load_dataset(_DatasetConfig.from_dict(dataset_cfg))
    cfg = TrainConfig.from_dict(train_cfg)
    torch.manual_seed(cfg.seed)  # the initial weights must not depend on which job this worker ran before
    _, result = train_or_load(ModelConfig.from_dict(model_cfg), data, cfg, progress=False)
    return dataclasses.asdict(result)


def train_families(families: list[Family], dataset: Dataset, dataset_cfg: dict[str, Any], train_cfgs: dict[str, Any],
                   jobs: int = 2, threads: int = 0, progress: bool = False,
                   plan: WorkerPlan | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every family trained with its config (``train_cfgs[family.name]``, a ``TrainConfig``) through the checkpoint
    cache: ``{name: (model, training facts)}``.  A rerun with the same configs and data trains nothing.

    Families not yet in the cache train side by side in worker processes (``spawn``) when ``plan`` (default:
    ``plan_workers(jobs, pending, threads)``, from the cores free now) says so: at most ``jobs`` workers, workers x
    threads <= free cores (or one thread each, sharing the busy cores).  Then every model is loaded here (from the
    cache, or trained here with the plan's ``main_threads``: ``threads``, or 0 = as many as the free cores).  The
    per-epoch validation pass is skipped: it changes neither the weights nor the cache key.  The global torch seed
    is set to the config's seed before each model is built, so a family's initial weights do not depend on the
    process or on the order of the jobs.
    ``training facts`` is ``TrainResult`` as a dict plus ``process`` (``worker`` or ``main``), ``threads`` (torch
    threads it trained with; ``None`` when it came from the cache) and ``plan`` (``WorkerPlan.to_dict()``).
    """
    from tqdm.auto import tqdm

    from playbook.env import torch_threads
    from playbook.paths import default_cache_dir
    from playbook.train import ModelConfig, cache_key, train_or_load

    cfgs = {f.name: train_cfgs[f.name].replace(validate=False) for f in families}
    configs = {f.name: ModelConfig(f.family, dict(f.knobs)) for f in families}
    uncached = [f for f in families
                if not (default_cache_dir() / f"{cache_key(configs[f.name], dataset, cfgs[f.name])}.pt").exists()]
    if plan is None:
        plan = plan_workers(jobs, len(uncached), threads)
    facts: dict[str, dict[str, Any]] = {}
    if plan.workers >= 2 and len(uncached) >= 2:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=plan.workers, mp_context=context) as pool:
            futures = {pool.submit(_train_worker, configs[f.name].to_dict(), dataset_cfg,
                                   cfgs[f.name].replace(threads=plan.threads_per_worker).to_dict()): f
                       for f in uncached}
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="families",
                               **progress_options(progress)):
                facts[futures[future].name] = {**future.result(), "process": "worker",
                                               "threads": plan.threads_per_worker}
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    import torch

    main_threads = plan.main_threads
    with torch_threads(main_threads):
        for f in families:
            torch.manual_seed(cfgs[f.name].seed)  # train_or_load builds the model before seeding: seed the init here
            model, result = train_or_load(configs[f.name], dataset, cfgs[f.name].replace(threads=main_threads),
                                          progress=progress)
            here = {**dataclasses.asdict(result), "process": "main",
                    "threads": None if result.from_cache else torch.get_num_threads()}
            out[f.name] = (model, {**(facts.get(f.name) or here), "plan": plan.to_dict()})
    return out
