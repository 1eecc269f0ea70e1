"""Stage 02, quantization and compression: every recipe of the catalogue, measured on the five axes.

Read top to bottom: ``QuantizationConfig`` (the parameters of ``notebooks/02_quantization.ipynb``), then
``QuantizationRun``, whose methods are the notebook's steps in order -- ``run(technique)`` compresses each selected
recipe through the one entry point ``compress.compress`` and measures it, ``layer_sensitivity()`` ranks the layers and
keeps the worst float, ``finish()`` writes ``quantization.json`` -- and ``run_quantization``, the same steps without
the notebook.  The compressors, the per-layer probes and the bit allocation live in ``playbook.compress`` (they know
nothing of this stage); what the stage says before it starts is counted in ``quantization_cost``; tables and
narrative are functions of the record in ``playbook.views.quantization``.

With ``coreai`` (and Apple's Core AI packages installed), ``run_coreai()`` also makes Core AI variants beside the
Core ML ones -- the trained model as ``.aimodel`` and coreai-opt's compressions, measured through Apple's Core AI
runtime (``compress.coreai_variants``); they carry ``target="coreai"`` and stay out of the Core ML steps below.

Recipes that need an iOS18 program get one (``retarget=True``).  A recipe coremltools refuses is recorded with
coremltools' message and a hint; any other failure is recorded with its phase, and the stage goes on.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from playbook.compress import (DEFAULT_RECIPES, RECIPES, SLOW_RECIPES, CompressionError, WeightLayer,
                               channel_ranges, compressed_weight_count, get_recipe, subclassed_layers,
                               weight_file_bytes, weight_layers)
from playbook.compress.apply import CompressConfig, Compressed, FinetuneConfig, ModelSource, compress
from playbook.compress.coreai_variants import CoreAIOutcome, CoreAISettings, make_coreai_variants
from playbook.compress.recipes import TECHNIQUES
from playbook.compress.search import (AllocationSettings, BitAllocator, LayerProbes, ValidationReference, keep_curve,
                                      rank_layers, validation_subset)
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import ExportConfig, package_info, predict_split
from playbook.data import Split
from playbook.distill import logit_loss, teacher_logits
from playbook.metrics import compare_paired, pareto_front
from playbook.paths import default_cache_dir
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages import quantization_cost, quantization_pitfalls
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig


# The fine-tunes' teacher term (``finetune_teacher``): efficientnet-lite0's int4 QAT lost 1.30 points with the labels
# alone and 0.18 with the FP32 model's logits at these values (benchmarks/bench_lite0_recipes.py --kd-temperature 2,
# 5,000 test images, one fine-tune of the network, 200 steps).
TEACHER_TEMPERATURE = 2.0
TEACHER_ALPHA = 0.5
# The fine-tunes' learning rate when ``finetune_lr`` is 0: this share of the peak learning rate stage 01 fine-tuned a
# pretrained network with (efficientnet-lite0: 0.01, so 0.002, the rate every lite0 figure in README.md was measured
# at).  A network stage 01 trained from scratch (one-cycle to 0.1), or a user's checkpoint, has no fine-tune schedule
# to derive from and keeps ``FinetuneConfig.lr`` (0.002, the rate the resnet figures were measured at).
FINETUNE_LR_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class QuantizationConfig(MeasuredStageConfig):
    """The parameters of ``02_quantization`` (see the notebook's parameters cell for each one's meaning)."""

    dataset: str = ""
    recipes: list[str] = dataclasses.field(default_factory=list)
    slow_recipes: bool = False
    max_top1_drop: float = 1.0
    precision: str = "fp16"
    weight_threshold: int = 256
    retarget: bool = True
    finetune_steps: int = FinetuneConfig.steps
    finetune_epochs: float = 0.0
    finetune_lr: float = 0.0
    finetune_teacher: bool = True
    finetune_checks: int = 8
    finetune_patience: int = 3
    batch_size: int = FinetuneConfig.batch_size
    sensitivity_recipe: str = "auto"
    sensitivity_images: int = 1000
    search_images: int = 0
    max_exceptions: int = 3
    coreai: bool = True
    coreai_images: int = 500
    coreai_seconds: float = 240.0
    seed: int = 0
    interactive: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.recipes:
            get_recipe(name)
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_range("finetune_epochs", self.finetune_epochs, 0.0, 100.0)
        self.compress_config()  # precision, weight_threshold and the fine-tune, checked where they are defined
        if self.sensitivity_recipe not in ("auto", "none"):
            recipe = get_recipe(self.sensitivity_recipe)
            if not recipe.single_step:
                raise ConfigError(f"sensitivity_recipe={self.sensitivity_recipe!r} must be a single-step Core ML "
                                  f"recipe (one of {[r.name for r in RECIPES.values() if r.single_step]}), "
                                  "'auto' or 'none'")
        check_range("sensitivity_images", self.sensitivity_images, 1)
        check_range("search_images", self.search_images, 0)
        check_range("coreai_images", self.coreai_images, 0)
        check_range("coreai_seconds", self.coreai_seconds, 0.0)
        check_range("max_exceptions", self.max_exceptions, 1)

    def recipe_names(self) -> list[str]:
        """The recipes this run measures, in catalogue order: ``recipes``, or the (smoke) default set plus, with
        ``slow_recipes``, the slow ones (``compress.SLOW_RECIPES``; in smoke runs one of them)."""
        if self.recipes:
            chosen = set(self.recipes)
        else:
            chosen = set(SMOKE.quantization_recipes if self.smoke else DEFAULT_RECIPES)
            if self.slow_recipes:
                chosen |= set(SMOKE.slow_quantization_recipes if self.smoke else SLOW_RECIPES)
        return [n for n in RECIPES if n in chosen]

    def steps(self, train_images: int = 0) -> int:
        """Fine-tune steps at most: ``finetune_epochs`` of ``train_images`` when both are set, else
        ``finetune_steps``; the smoke policy caps them."""
        steps = (math.ceil(self.finetune_epochs * math.ceil(train_images / self.batch_size))
                 if self.finetune_epochs and train_images else self.finetune_steps)
        return SMOKE.steps(steps) if self.smoke else steps

    def learning_rate(self, baseline: dict[str, Any] | None = None) -> tuple[float, str]:
        """The fine-tunes' learning rate and where it came from: ``finetune_lr`` when set; else ``FINETUNE_LR_SHARE``
        of the peak rate stage 01 fine-tuned a pretrained network with (``baseline``: its record's
        ``training_mode`` and ``train_config``); else ``FinetuneConfig.lr``."""
        if self.finetune_lr:
            return float(self.finetune_lr), "finetune_lr"
        train = (baseline or {}).get("train_config") or {}
        if (baseline or {}).get("training_mode") == "finetune" and train.get("lr"):
            lr = FINETUNE_LR_SHARE * float(train["lr"])
            return lr, (f"{FINETUNE_LR_SHARE:g} x the {float(train['lr']):g} that stage 01 fine-tuned the "
                        f"pretrained network at")
        how = {"scratch": "trained it from scratch", "head": "trained its classifier only"}.get(
            str((baseline or {}).get("training_mode")), "did not train it")
        return FinetuneConfig.lr, f"the stage's default: stage 01 {how}, so there is no fine-tune rate to derive from"

    def compress_config(self, train_images: int = 0, baseline: dict[str, Any] | None = None) -> CompressConfig:
        """How every recipe is applied (``compress.CompressConfig``), fine-tune steps capped in smoke runs, the
        learning rate from ``learning_rate(baseline)``."""
        return CompressConfig(precision=self.precision, weight_threshold=self.weight_threshold, retarget=self.retarget,
                              finetune=FinetuneConfig(steps=self.steps(train_images),
                                                      lr=self.learning_rate(baseline)[0],
                                                      batch_size=self.batch_size, seed=self.seed,
                                                      checks=self.finetune_checks, patience=self.finetune_patience))

    def coreai_settings(self) -> CoreAISettings:
        """Which Core AI variants ``run_coreai`` makes (the smoke policy's few in smoke runs) and how they are
        measured (the same repeats and resamples as the Core ML variants), on at most ``coreai_images`` test images
        within ``coreai_seconds`` of the runtime's measured speed (smoke runs too: the probe and the choice run on the
        smoke split)."""
        m = self.measure_config()
        techniques = SMOKE.coreai_techniques if self.smoke else CoreAISettings.techniques
        return CoreAISettings(techniques=tuple(techniques), fp32=not self.smoke, latency_warmup=m.latency_warmup,
                              latency_repeats=m.latency_repeats, bootstrap_resamples=m.bootstrap_resamples,
                              test_images=self.coreai_images, seconds_budget=float(self.coreai_seconds))

    def allocation_settings(self) -> AllocationSettings:
        """How mixed bit-widths are chosen: the images of the probes and checks, the budget, and in smoke runs the
        smoke policy's fewer palette sizes."""
        return AllocationSettings(bit_choices=SMOKE.mixed_bit_choices if self.smoke else (),
                                  probe_images=self.sensitivity_images, check_images=self.search_images,
                                  max_top1_drop=self.max_top1_drop)


# Paired comparisons the record and the notebook report when both variants were measured: (a, b) = b minus a.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("torch-w8a8-static", "torch-w8a8-qat"), ("prune-75", "torch-prune-75-ft"),
    ("palettize-4bit", "torch-palettize-4bit-skm"), ("palettize-3bit", "palettize-mixed"),
    ("palettize-3bit", "torch-palettize-3bit-dkm"), ("palettize-2bit", "torch-palettize-2bit-dkm"),
    ("palettize-mixed", "torch-palettize-mixed-dkm"), ("palettize-mixed-tight", "torch-palettize-mixed-tight-dkm"),
    ("torch-prune-75-ft", "torch-prune-75-ft+palettize-4bit"),
)


class QuantizationRun(DownstreamRun):
    """Stage 02's steps, in the notebook's order: ``run(technique)`` (or ``run()`` for every selected recipe),
    ``layer_sensitivity()``, ``finish()``."""

    stage = "quantization"

    def __init__(self, cfg: QuantizationConfig) -> None:
        super().__init__(cfg)
        self.cfg: QuantizationConfig = cfg
        record = self.baseline.record
        self.export_cfg = ExportConfig.from_dict(record["exports"]["fp32"]["config"])
        self.fp32_weight_bytes = weight_file_bytes(self.baseline.fp32_package)
        self.recipes = cfg.recipe_names()
        self.compress_cfg = cfg.compress_config(len(self.dataset.train), record)
        self.lr_source = cfg.learning_rate(record)[1]
        self.skipped: list[dict[str, str]] = []
        self.failed: list[dict[str, str]] = []
        self.retargeted: list[dict[str, str]] = []
        self.sensitivity: dict[str, Any] | None = None
        self.channel_ranges: list[dict[str, Any]] | None = None  # set when data-free recipes collapse
        self.coreai: dict[str, Any] | None = None  # what run_coreai made, skipped or could not do, and why
        self.finetune_teacher: dict[str, Any] | None = None  # set by teach_finetunes
        self._example = self.dataset.to_tensor(self.dataset.calib.images[:1])
        self._layers: dict[str, list[WeightLayer]] = {}
        # what every recipe compresses: the trained model, and the baseline's own packages where they fit
        programs = {(precision, e["config"]["minimum_deployment_target"]): self.model_dir / e["package"]["path"]
                    for precision, e in record["exports"].items()}
        self.source = ModelSource(self.model, self.dataset, self.export_cfg, self.out_dir, programs,
                                  metadata={"playbook.stage": self.stage, "playbook.model": cfg.model})
        # validation-guided choices (per-layer probes, mixed bit-widths), all against the FP32 package
        self.probes = LayerProbes(ValidationReference(self.baseline.fp32_package, self._predict),
                                  cfg.weight_threshold, self.out_dir)
        self.allocator = BitAllocator(self.probes, self.dataset, cfg.allocation_settings(), self.layers_of)

    def _predict(self, package: Path, split: Split) -> np.ndarray:
        return predict_split(package, self.dataset, split, self.mcfg.runtime)[0]

    def layers_of(self, package: Path) -> list[WeightLayer]:
        """A program's conv/linear weights with their PyTorch modules (``compress.weight_layers``), read once."""
        key = str(package)
        if key not in self._layers:
            self._layers[key] = weight_layers(package, self.cfg.weight_threshold, self.model, self._example)
        return self._layers[key]

    @functools.cached_property
    def fp32_layers(self) -> list[WeightLayer]:
        """The FP32 package's weights: the cost estimate and the pitfalls share them."""
        return self.layers_of(self.baseline.fp32_package)

    @property
    def mixed(self) -> dict[str, dict[str, Any]]:
        """The mixed-bit allocations chosen in this run, per recipe (the record's ``mixed_bits``)."""
        return self.allocator.allocations

    # ---- step 1: what it will cost (once, before the first recipe)
    def estimate_stage_cost(self) -> dict[str, Any]:
        """Print and keep what measuring, probing, compressing and fine-tuning the selected recipes will take."""
        measuring = self.estimate_cost(len(self.recipes), self.baseline.fp32_package)
        work = quantization_cost.validation_work(self.fp32_layers, self.recipes, self.dataset,
                                                 self.cfg.allocation_settings(), self.cfg.sensitivity_recipe,
                                                 self.cfg.max_exceptions)
        with self.threads():
            unit = (quantization_cost.time_one_probe(self.probes, self.baseline.fp32_package, work["first_layer"])
                    if work["first_layer"] else 0.0)
        teacher = quantization_cost.teacher_work(self.cfg.finetune_teacher, self.dataset, self.baseline.record)
        ft = self.compress_cfg.finetune
        self.cost = quantization_cost.stage_cost(measuring, work, unit, self.recipes, ft.steps, ft.batch_size,
                                                 self.baseline.record, teacher, ft.checks,
                                                 min(ft.check_images, len(self.dataset.val)))
        if self.cost["finetune"]["recipes"] and ft.steps:
            print(f"fine-tune learning rate {ft.lr:g}: {self.lr_source}")
        return self.cost

    # ---- step 2: the recipes, one technique at a time
    def run(self, technique: str | None = None) -> list[VariantRecord]:
        """Compress and measure the selected recipes of one technique (all when ``None``); returns their records."""
        if technique is not None:
            check_choice("technique", technique, TECHNIQUES)
        if self.cost is None:
            with self.timer.step("cost_estimate"):
                self.estimate_stage_cost()
        names = self.recipe_names(technique)
        if quantization_cost.fine_tunes_learn_from_teacher(self.cfg.finetune_teacher, names,
                                                           self.compress_cfg.finetune.steps):
            self.teach_finetunes()
        made = [self.run_recipe(n) for n in names]
        return [v for v in made if v is not None]

    def teach_finetunes(self) -> dict[str, Any]:
        """Make every fine-tune (QAT, pruning, DKM, SparseGPT's) learn from the FP32 model's logits as well as the
        labels (``distill.logit_loss`` at ``TEACHER_TEMPERATURE`` and ``TEACHER_ALPHA``): the logits on every
        training image, computed once and cached beside the checkpoints.  Idempotent."""
        if self.finetune_teacher is None:
            start = time.perf_counter()
            with self.threads(), self.timer.step("teacher_logits"):
                table = teacher_logits(self.model, self.dataset, self.baseline.record["training"]["checkpoint_sha256"],
                                       default_cache_dir(), progress=False)
            self.source.loss_fn = logit_loss(table, TEACHER_TEMPERATURE, TEACHER_ALPHA)
            self.finetune_teacher = {"temperature": TEACHER_TEMPERATURE, "alpha": TEACHER_ALPHA,
                                     "images": len(table.logits), "from_cache": table.from_cache,
                                     "seconds": time.perf_counter() - start}
            cost = "from the cache" if table.from_cache else f"{self.finetune_teacher['seconds']:.0f} s"
            print(f"fine-tunes learn from the FP32 model's logits on {len(table.logits):,} training images "
                  f"(T = {TEACHER_TEMPERATURE}, alpha = {TEACHER_ALPHA}; {cost})")
        return self.finetune_teacher

    def recipe_names(self, technique: str | None = None) -> list[str]:
        """The recipes of one technique (all when ``None``) this run measures, in catalogue order."""
        if technique is not None:
            check_choice("technique", technique, TECHNIQUES)
        return [n for n in self.recipes if technique is None or RECIPES[n].technique == technique]

    def run_recipe(self, name: str) -> VariantRecord | None:
        """Compress, save and measure one recipe; returns its record, or ``None`` when it could not be made.

        One recipe never stops the stage: coremltools refusing it is recorded in ``skipped`` (its message and a
        hint); any other failure (conversion, an op the prediction interface cannot run, a bug) in ``failed``
        with the error and the phase it happened in, the traceback goes to the log, and the stage goes on."""
        recipe = get_recipe(name)
        target = self.source.target_for(recipe, self.cfg.retarget)
        if target != self.source.target:
            self.retargeted.append({"recipe": recipe.name, "from": self.source.target, "to": target})
        try:
            with self.threads(), self.timer.step("compress"):
                made = compress(recipe, self.source, self.compress_cfg, out_dir=self.out_dir,
                                allocator=self.allocator, metadata={"playbook.stage": self.stage})
        except CompressionError as exc:
            self.skipped.append(exc.to_dict())
            print(f"skipped {recipe.name}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 -- isolated per recipe, recorded with its reason (issue 18)
            return self._failed(name, "compress", exc)
        try:
            with self.timer.step("measure"):
                return self.measure_compressed(made)
        except Exception as exc:  # noqa: BLE001
            return self._failed(name, "measure", exc)

    def _failed(self, name: str, phase: str, exc: Exception) -> None:
        reason = " ".join(str(exc).split())[:600] or type(exc).__name__
        self.failed.append({"recipe": name, "phase": phase, "error": type(exc).__name__, "reason": reason})
        print(f"FAILED {name} ({phase}): {type(exc).__name__}: {reason}\n"
              f"{traceback.format_exc()}the stage goes on with the other recipes")
        return None

    def measure_compressed(self, made: Compressed, name: str | None = None, description: str = "",
                           **extra: Any) -> VariantRecord:
        """Measure a compressed package on the five axes and keep its record (with the recipe, the sizes against
        FP32 and whether it stays within the accuracy budget)."""
        recipe, path = made.recipe, made.path
        info = package_info(path)
        record = self.measure(
            name or recipe.name, path, description or recipe.description,
            recipe=recipe.to_dict(), side=recipe.side, technique=recipe.technique, scheme=recipe.scheme,
            deployment_target=made.target, weight_threshold=self.cfg.weight_threshold,
            compressed_weights=compressed_weight_count(info.op_histogram),
            size_ratio_vs_fp32=self.fp32_bytes / info.size_bytes, weights_bytes=weight_file_bytes(path),
            weights_ratio_vs_fp32=self.fp32_weight_bytes / max(weight_file_bytes(path), 1), details=made.details,
            **made.facts(), **extra)
        record.extra["within_budget"] = bool(record.delta_top1 >= -self.cfg.max_top1_drop)
        return record

    # ---- step 2b: Core AI beside Core ML (issue 24)
    def run_coreai(self) -> list[VariantRecord]:
        """Export the trained model as Core AI ``.aimodel`` (FP16, and FP32 outside smoke runs) and apply coreai-opt's
        compressions, each measured through Apple's Core AI runtime (``compress.coreai_variants``).  A Core AI recipe
        that fails is recorded, never fatal; without the packages (or with ``coreai=False``) the record says why.
        The runtime's predictions are shared by worker processes when cores are free, and the test images are as many
        as ``coreai_images`` allows within ``coreai_seconds`` at the runtime's measured speed: the log and
        ``details["coreai"]["images"]`` / ``["processes"]`` say how many and why."""
        settings = self.cfg.coreai_settings()
        if not self.cfg.coreai:
            self.coreai = CoreAIOutcome(False, "coreai=False: Core AI variants were not asked for").details(settings)
            return []
        with self.threads(), self.timer.step("coreai"):
            outcome = make_coreai_variants(self.model, self.dataset, self.reference, self.out_dir, self.model_dir,
                                           self.stage, settings, {"playbook.model": self.cfg.model}, self.fp32_bytes)
        for record, scores in outcome.variants:
            self.variants = [v for v in self.variants if v.name != record.name] + [record]
            self.scores[record.name] = scores
        self.coreai = outcome.details(settings)
        return [v for v, _ in outcome.variants]

    @property
    def coreml_variants(self) -> list[VariantRecord]:
        """This run's Core ML packages (the Core AI models left out): what the Core ML steps compare."""
        return [v for v in self.variants if v.target == "coreml"]

    # ---- step 3: the layer sensitivity analysis
    def choose_sensitivity_recipe(self) -> str | None:
        """``sensitivity_recipe``, or for ``auto`` the smallest measured single-step Core ML recipe that loses
        at most 5x the accuracy budget (aggressive, yet recoverable); ``None`` when nothing qualifies."""
        if self.cfg.sensitivity_recipe == "none":
            return None
        if self.cfg.sensitivity_recipe != "auto":
            return self.cfg.sensitivity_recipe
        candidates = [v for v in self.coreml_variants if get_recipe(v.get("recipe")["name"]).single_step
                      and v.name == v.get("recipe")["name"]
                      and v.delta_top1 >= -5 * max(self.cfg.max_top1_drop, 0.1)]
        return min(candidates, key=lambda v: v.size_bytes).name if candidates else None

    def layer_sensitivity(self, recipe: str | None = None) -> dict[str, Any] | None:
        """Compress one layer at a time, rank layers by damage, keep the worst ``k`` float, measure the result.

        Damage = KL divergence from the FP32 package's outputs on ``sensitivity_images`` validation images
        (validation, so the test split stays untouched by the choice).  Then for ``k = 0..max_exceptions`` the whole
        recipe is applied with the ``k`` most damaging layers kept uncompressed; the smallest ``k >= 1`` whose
        validation loss fits the budget (else ``max_exceptions``) is measured on the test split as variant
        ``<recipe>-keep<k>``.  A control keeps the ``k`` *least* damaging layers instead (``compress.search``)."""
        name = recipe or self.choose_sensitivity_recipe()
        self.sensitivity = None
        if name is None:
            return None
        rec = get_recipe(name)
        if not rec.single_step:
            raise ConfigError(f"layer sensitivity needs a single-step Core ML recipe, not {name!r}")
        start = time.perf_counter()
        with self.threads(), self.timer.step("layer_sensitivity"):
            base = self.source.program(self.cfg.precision, self.source.target_for(rec, self.cfg.retarget))
            layers = [layer for layer in self.layers_of(base) if layer.eligible]
            split = validation_subset(self.dataset, self.cfg.sensitivity_images)
            _, ref_top1 = self.probes.reference.scores(split)
            ranked = rank_layers(self.probes, rec, base, layers, split)
            curve = keep_curve(self.probes, rec, base, ranked, split, self.cfg.max_exceptions, self.cfg.max_top1_drop)
            variant_name = f"{name}-keep{curve['chosen_kept']}"
            made = compress(rec, self.source, self.compress_cfg, out_dir=self.out_dir, stem=variant_name,
                            exclude=curve["keep"], metadata={"playbook.stage": self.stage})
        record = self.measure_compressed(
            made, variant_name, f"{rec.description}, with " + (
                "its most damaging layer" if curve["chosen_kept"] == 1 else
                f"its {curve['chosen_kept']} most damaging layers") + f" kept float: {', '.join(curve['kept_labels'])}",
            kept_float=curve["kept_labels"])
        base_variant = self.variant(name)

        def brief(v: VariantRecord) -> dict[str, Any]:
            return {"top1": v.top1, "delta_top1": v.delta_top1, "ci": [v.vs_reference.ci_low, v.vs_reference.ci_high],
                    "size_mb": v.size_mb}

        self.sensitivity = {
            "recipe": name, "method": "compress one layer at a time (op_name_configs), rank by KL(FP32 || variant) "
                                      "on validation images; keep the top-k float (op_name_configs={name: None})",
            "val_images": len(split), "val_reference_top1": ref_top1, "accuracy_budget": self.cfg.max_top1_drop,
            "weight_threshold": self.cfg.weight_threshold, "layers": ranked, "keep_curve": curve["keep_curve"],
            "chosen_kept": curve["chosen_kept"], "control": curve["control"], "variant": variant_name,
            "test": {"recipe": brief(base_variant) if base_variant else None, "guided": brief(record)},
            "seconds": time.perf_counter() - start,
        }
        return self.sensitivity

    # ---- step 4: comparisons, the Pareto front, pitfalls, the record
    def compare(self, a: str, b: str) -> dict[str, Any] | None:
        """Paired comparison of two measured variants (``b`` minus ``a``) on the same test images."""
        if a not in self.scores or b not in self.scores:
            return None
        labels = self.dataset.test.labels
        result = compare_paired(self.scores[a].argmax(1) == labels, self.scores[b].argmax(1) == labels,
                                resamples=self.mcfg.bootstrap_resamples).to_dict()
        return {"a": a, "b": b, **result}

    def chart_variants(self, coreai: bool = False) -> list[VariantRecord]:
        """The baseline's packages and every Core ML variant of this stage (with ``coreai``, the Core AI models too):
        what the accuracy chart plots."""
        return [*self.baseline_variants, *(self.variants if coreai else self.coreml_variants)]

    def pareto(self, coreai: bool = False) -> list[str]:
        """Names of the variants on the size/top-1 Pareto front (baseline packages included), smallest first: the
        Core ML packages, or with ``coreai`` the front an app for iOS / macOS 27+ chooses from (both targets)."""
        return [v.name for v in pareto_front(self.chart_variants(coreai), lambda v: v.size_bytes, lambda v: v.top1)]

    def _far_outside(self, data_free: bool) -> list[VariantRecord]:
        """The variants that lost more than 5x the accuracy budget, with (``data_free``) or without a data-free
        recipe."""
        limit = -5 * max(self.cfg.max_top1_drop, 0.1)
        return [v for v in self.coreml_variants if v.vs_reference is not None and v.vs_reference.delta_top1 < limit
                and (v.get("recipe")["data"] == "none") == data_free]

    def collect_pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run actually met, each with the measured numbers (``quantization_pitfalls.collect``)."""
        quantization_pitfalls.collect(self)
        return self.pitfalls

    def _channel_pitfall(self) -> None:
        """When data-free palettes or pruning collapse, say whether the weights explain it: output channels of very
        different widths in one tensor (``compress.channel_ranges``), with the measured figures (kept in
        ``self.channel_ranges`` for the record)."""
        collapsed = [v for v in self._far_outside(data_free=True)
                     if v.get("technique") in ("palettization", "pruning", "joint")]
        if not collapsed:
            return
        labels = {x.name: x.label for x in self.fp32_layers}
        ranges = channel_ranges(self.baseline.fp32_package, self.cfg.weight_threshold)
        wide = [r for r in ranges if r.spread >= 10]
        dead = sum(r.dead for r in ranges)
        self.channel_ranges = [{"name": r.name, "label": labels.get(r.name, r.name), "shape": list(r.shape),
                                "widest": r.widest, "median": r.median, "narrowest": r.narrowest, "dead": r.dead,
                                "spread": r.spread} for r in ranges[:10]]
        if not wide and not dead:
            return
        top = ranges[0]
        far = {v.name for v in self._far_outside(True) + self._far_outside(False)}
        held = [f"{v.name} {v.vs_reference.delta_top1:+.2f}" for v in self.variants
                if v.get("technique") in ("quantization", "mixed-bits") and v.vs_reference is not None
                and v.name not in far]
        self.add_pitfall(
            "why the data-free palettes and pruning collapse here: channels of very different widths in one tensor",
            f"{len(wide)} of {len(ranges)} compressed weight tensors have an output channel over 10x wider than their "
            f"median channel (the widest spread: {labels.get(top.name, top.name)} {list(top.shape)}, "
            f"{top.widest:.3g} against a median {top.median:.3g}), and {dead} channel(s) are all but zero. One "
            "palette or one magnitude threshold per tensor serves the wide channels and flattens the narrow ones; "
            "batch-norm folding leaves such ranges in convolutions, depthwise ones above all (Nagel et al., ICCV "
            "2019, arXiv:1906.04721). "
            f"Collapsed: {', '.join(f'{v.name} {v.vs_reference.delta_top1:+.2f}' for v in collapsed)} points"
            + (f"; one scale per channel or per block, or one palette size per layer, held: {', '.join(held)} points"
               if held else "") + ".")

    def _coverage_pitfall(self) -> None:
        """A PyTorch-side recipe that compressed fewer weights than the program holds above ``weight_threshold``
        (layers it kept float aside, and the grouped convolutions its recipe leaves float by design) is named, with
        the figures and, when the model has them and the recipe did not make them plain (``plain_convs``), the
        subclassed layer types the compressor could not see (``compress.subclassed_layers``)."""
        eligible = sum(1 for x in self.fp32_layers if x.eligible)
        subclassed = subclassed_layers(self.model)
        for v in self.variants:
            if v.get("side") != "torch":
                continue
            details = v.get("details") or {}
            declared = len(v.get("kept_float") or details.get("kept_float") or [])
            declared += len(details.get("skipped_grouped_convs") or [])
            expected = eligible - declared
            done = int(v.get("compressed_weights") or 0)
            if done >= expected:
                continue
            hidden = subclassed and "plain_convs" not in ((v.get("recipe") or {}).get("prepare") or [])
            why = (f"; {sum(subclassed.values())} of the model's layers are subclasses of torch layer types "
                   f"({', '.join(f'{n} x{c}' for n, c in subclassed.items())}), and coremltools' torch-side "
                   "compressors that find modules by exact type leave them float" if hidden else "")
            self.add_pitfall(f"{v.name} compressed only {done} of {expected} weights",
                             f"its package is {v.get('size_ratio_vs_fp32'):.2f}x smaller than FP32, not what its "
                             f"recipe promises{why}; its size and accuracy are those of a model with only {done} "
                             "weight(s) compressed")

    def details(self) -> dict[str, Any]:
        comparisons = {}
        for a, b in COMPARISONS:
            c = self.compare(a, b)
            if c is not None:
                comparisons[f"{b} vs {a}"] = c
        fp16 = next((v for v in self.baseline_variants if v.name == "baseline-fp16"), None)
        return {
            "dataset": self.dataset.summary(),
            "baseline": {"record": "baseline.json", "fp32_package": relative(self.baseline.fp32_package,
                                                                              self.model_dir),
                         "fp32_size_bytes": self.fp32_bytes, "fp32_top1": self.reference.correct.mean() * 100.0,
                         "fp32_weights_bytes": self.fp32_weight_bytes,
                         "fp16_size_bytes": fp16.size_bytes if fp16 else None,
                         "deployment_target": self.export_cfg.minimum_deployment_target},
            "reference_variant": self.reference.name,
            "accuracy_budget": self.cfg.max_top1_drop,
            "weight_threshold": self.cfg.weight_threshold,
            "recipes": {n: RECIPES[n].to_dict() for n in self.recipes},
            "retargeted": self.retargeted,
            "skipped": self.skipped,
            "failed": self.failed,
            "pareto_front": self.pareto(),
            "pareto_front_coreai27": self.pareto(coreai=True) if self.coreai and self.coreai["variants"] else None,
            "coreai": self.coreai,
            "finetune_teacher": self.finetune_teacher,
            # steps resolved from finetune_epochs (smoke cap applied), the learning rate and where it came from
            "finetune": {**self.compress_cfg.finetune.to_dict(), "lr_source": self.lr_source},
            "comparisons": comparisons,
            "sensitivity": self.sensitivity,
            "mixed_bits": self.mixed,
            "channel_ranges": self.channel_ranges,
        }

    def finish(self) -> StageRecord:
        self.collect_pitfalls()
        return super().finish()


def run_quantization(cfg: QuantizationConfig) -> StageRecord:
    """The whole stage without the notebook: every selected recipe, the sensitivity analysis, the record."""
    run = QuantizationRun(cfg)
    run.run()
    run.run_coreai()
    run.layer_sensitivity()
    return run.finish()
