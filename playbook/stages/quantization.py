"""Stage 02, quantization and compression: every recipe of the catalogue, measured on the five axes.

``QuantizationConfig`` is the parameter list of ``notebooks/02_quantization.ipynb``; ``QuantizationRun``
holds the notebook's steps (one technique at a time, then the layer sensitivity analysis);
``run_quantization`` runs them all and writes ``quantization.json``.  The compressors themselves live
in ``playbook.compress`` and know nothing of this stage.  Two mixins of ``QuantizationRun`` hold the analyses:
the mixed bit-widths in ``quantization_bits``, the layer sensitivity analysis in ``quantization_sensitivity``.

Recipes that need an iOS18 program get one: the stage re-exports the baseline model at iOS18
(``retarget=True``).  A recipe coremltools refuses is recorded with coremltools' message and a hint.
"""
from __future__ import annotations

import dataclasses
import functools
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from playbook.compress import (DEFAULT_RECIPES, RECIPES, SLOW_RECIPES, CompressionError, Recipe, WeightLayer,
                               channel_ranges, compress_converted, compress_package, compress_torch,
                               compressed_weight_count, get_recipe, recipe_rows, required_target, subclassed_layers,
                               weight_file_bytes, weight_layers)
from playbook.compress.recipes import TECHNIQUES
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import ExportConfig, export_model, model_sha256, package_info
from playbook.metrics import compare_paired, pareto_front
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig
from playbook.stages.quantization_bits import MixedBitsMixin
from playbook.stages.quantization_cost import StageCostMixin
from playbook.stages.quantization_sensitivity import LayerSensitivityMixin
from playbook.views import Table, results_table


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
    finetune_steps: int = 200
    finetune_lr: float = 0.002
    batch_size: int = 64
    sensitivity_recipe: str = "auto"
    sensitivity_images: int = 1000
    search_images: int = 0
    max_exceptions: int = 3
    seed: int = 0
    interactive: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.recipes:
            get_recipe(name)
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_range("weight_threshold", self.weight_threshold, 0)
        check_range("finetune_steps", self.finetune_steps, 0)
        check_range("finetune_lr", self.finetune_lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        if self.sensitivity_recipe not in ("auto", "none"):
            recipe = get_recipe(self.sensitivity_recipe)
            if not recipe.single_step:
                raise ConfigError(f"sensitivity_recipe={self.sensitivity_recipe!r} must be a single-step Core ML "
                                  f"recipe (one of {[r.name for r in RECIPES.values() if r.single_step]}), "
                                  "'auto' or 'none'")
        check_range("sensitivity_images", self.sensitivity_images, 1)
        check_range("search_images", self.search_images, 0)
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

    def steps(self) -> int:
        """Fine-tune steps actually used (the smoke policy caps them)."""
        return SMOKE.steps(self.finetune_steps) if self.smoke else self.finetune_steps


# Paired comparisons the record and the notebook report when both variants were measured: (a, b) = b minus a.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("torch-w8a8-static", "torch-w8a8-qat"), ("prune-75", "torch-prune-75-ft"),
    ("palettize-4bit", "torch-palettize-4bit-skm"), ("palettize-3bit", "palettize-mixed"),
    ("palettize-3bit", "torch-palettize-3bit-dkm"), ("palettize-2bit", "torch-palettize-2bit-dkm"),
    ("palettize-mixed", "torch-palettize-mixed-dkm"), ("palettize-mixed-tight", "torch-palettize-mixed-tight-dkm"),
    ("torch-prune-75-ft", "torch-prune-75-ft+palettize-4bit"),
)


class QuantizationRun(StageCostMixin, MixedBitsMixin, LayerSensitivityMixin, DownstreamRun):
    """Stage 02's steps: ``run(technique)`` for each technique (or ``run()`` for all selected recipes),
    ``layer_sensitivity()``, then ``finish()``."""

    stage = "quantization"

    def __init__(self, cfg: QuantizationConfig) -> None:
        super().__init__(cfg)
        self.cfg: QuantizationConfig = cfg
        record = self.baseline.record
        self.export_cfg = ExportConfig.from_dict(record["exports"]["fp32"]["config"])
        self.fp32_weight_bytes = weight_file_bytes(self.baseline.fp32_package)
        self.recipes = cfg.recipe_names()
        self.skipped: list[dict[str, str]] = []
        self.failed: list[dict[str, str]] = []
        self.retargeted: list[dict[str, str]] = []
        self.sensitivity: dict[str, Any] | None = None
        self.mixed: dict[str, dict[str, Any]] = {}
        self.channel_ranges: list[dict[str, Any]] | None = None  # set when data-free recipes collapse
        self._bit_tables: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        self._path_checks: dict[tuple[str, tuple[int, ...]], dict[tuple[tuple[str, int], ...], dict[str, Any]]] = {}
        self._val_refs: dict[str, np.ndarray] = {}
        self._probes: dict[tuple[str, ...], dict[str, float]] = {}
        self._bases: dict[tuple[str, str], Path] = {}
        self._example = self.dataset.to_tensor(self.dataset.calib.images[:1])

    @functools.cached_property
    def fp32_layers(self) -> list[WeightLayer]:
        """The FP32 package's conv/linear weights with their PyTorch modules (``compress.weight_layers``), read once:
        the cost estimate and the pitfalls share them."""
        return weight_layers(self.baseline.fp32_package, self.cfg.weight_threshold, self.model, self._example)

    def _far_outside(self, data_free: bool) -> list[VariantRecord]:
        """The variants that lost more than 5x the accuracy budget, with (``data_free``) or without a data-free
        recipe."""
        limit = -5 * max(self.cfg.max_top1_drop, 0.1)
        return [v for v in self.variants if v.vs_reference is not None and v.vs_reference.delta_top1 < limit
                and (v.get("recipe")["data"] == "none") == data_free]

    # ---- what the notebook shows first
    def recipe_table(self) -> Table:
        """The recipes this run measures: side, technique, scheme, bits, oldest target, data, description."""
        return Table(recipe_rows(self.recipes))

    # ---- packages
    def base_package(self, target: str, precision: str | None = None) -> Path:
        """The uncompressed program to compress: the baseline's own package when it matches, else a re-export."""
        precision = precision or self.cfg.precision
        key = (precision, target)
        if key not in self._bases:
            exports = self.baseline.record["exports"]
            if precision in exports and exports[precision]["config"]["minimum_deployment_target"] == target:
                self._bases[key] = self.model_dir / exports[precision]["package"]["path"]
            else:
                cfg = self.export_cfg.replace(precision=precision, minimum_deployment_target=target)
                result = export_model(self.model, self.dataset, cfg, self.out_dir / "_base", f"{precision}-{target}",
                                      metadata={"playbook.stage": "quantization", "playbook.model": self.cfg.model})
                self._bases[key] = result.path
        return self._bases[key]

    def target_for(self, recipe: Recipe) -> str:
        """The deployment target a recipe's package gets (raised to the recipe's minimum when ``retarget``)."""
        current = self.export_cfg.minimum_deployment_target
        return required_target(current, recipe.min_target) if self.cfg.retarget else current

    # ---- one recipe
    def run_recipe(self, name: str) -> VariantRecord | None:
        """Compress, save and measure one recipe; returns its record, or ``None`` when it could not be made.

        One recipe never stops the stage: coremltools refusing it is recorded in ``skipped`` (its message and a
        hint); any other failure (conversion, an op the prediction interface cannot run, a bug) in ``failed``
        with the error and the phase it happened in, the traceback goes to the log, and the stage goes on with
        the next recipe.  Both lists are in the record and become pitfalls in the report."""
        phase = {"name": "compress"}
        try:
            return self._run_recipe(name, phase)
        except Exception as exc:  # noqa: BLE001 -- isolated per recipe, recorded with its reason (issue 18)
            reason = " ".join(str(exc).split())[:600] or type(exc).__name__
            self.failed.append({"recipe": name, "phase": phase["name"], "error": type(exc).__name__,
                                "reason": reason})
            print(f"FAILED {name} ({phase['name']}): {type(exc).__name__}: {reason}\n"
                  f"{traceback.format_exc()}the stage goes on with the other recipes")
            return None

    def _run_recipe(self, name: str, phase: dict[str, str]) -> VariantRecord | None:
        with self.threads():
            recipe = get_recipe(name)
            target = self.target_for(recipe)
            precision = recipe.precision or self.cfg.precision
            current = self.export_cfg.minimum_deployment_target
            if target != current:
                self.retargeted.append({"recipe": recipe.name, "from": current, "to": target})
            try:
                if recipe.side == "coreml" and recipe.allocation:
                    made, details = self._mixed_bits(recipe, self.base_package(target, precision))
                    path = made.path
                    extra = {"compress_seconds": made.seconds, "export_seconds": 0.0, "finetune_steps": 0,
                             "allocation_seconds": details["seconds"], "bits_per_weight": details["bits_per_weight"]}
                elif recipe.side == "coreml":
                    made = compress_package(recipe, self.base_package(target, precision), self.out_dir, recipe.name,
                                            self.cfg.weight_threshold, metadata={"playbook.stage": self.stage})
                    path, details = made.path, {"messages": list(made.messages)}
                    extra = {"compress_seconds": made.seconds, "export_seconds": 0.0, "finetune_steps": 0}
                else:
                    tc = compress_torch(recipe, self.model, self.dataset, self.cfg.steps(), self.cfg.finetune_lr,
                                        self.cfg.batch_size, self.cfg.weight_threshold, self.cfg.seed,
                                        module_bits=self.module_bits(recipe))
                    with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors, at trace time
                        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
                        export = export_model(tc.model, self.dataset,
                                              self.export_cfg.replace(precision=precision,
                                                                      minimum_deployment_target=target),
                                              self.out_dir, recipe.name,
                                              metadata={"playbook.stage": "quantization",
                                                        "playbook.recipe": recipe.name,
                                                        "playbook.weights": recipe.description,
                                                        "playbook.source_model_sha256": model_sha256(self.model)})
                    path, details = export.path, tc.details
                    extra = {"compress_seconds": tc.seconds + export.seconds, "export_seconds": export.seconds,
                             "finetune_steps": tc.finetune_steps, "finetune_seconds": tc.finetune_seconds,
                             "finetune_images": tc.finetune_steps * self.cfg.batch_size,
                             "finetune_loss": [tc.losses[0], tc.losses[-1]] if tc.losses else None}
                    if recipe.steps:  # Core ML steps on top of what the PyTorch algorithm stored (joint)
                        made = compress_converted(recipe, export.path, self.out_dir, recipe.name,
                                                  self.cfg.weight_threshold, metadata={"playbook.stage": self.stage})
                        path = made.path
                        details = {**details, "messages": [*details.get("messages", []), *made.messages]}
                        extra["compress_seconds"] += made.seconds
            except CompressionError as exc:
                self.skipped.append(exc.to_dict())
                print(f"skipped {recipe.name}: {exc}")
                return None
        phase["name"] = "measure"
        return self._measure_recipe(recipe.name, path, recipe, target, {**extra, "precision": precision}, details)

    def _measure_recipe(self, name: str, path: Path, recipe: Recipe, target: str, extra: dict[str, Any],
                        details: dict[str, Any], description: str = "") -> VariantRecord:
        info = package_info(path)
        record = self.measure(
            name, path, description or recipe.description,
            recipe=recipe.to_dict(), side=recipe.side, technique=recipe.technique, scheme=recipe.scheme,
            deployment_target=target, weight_threshold=self.cfg.weight_threshold,
            compressed_weights=compressed_weight_count(info.op_histogram),
            size_ratio_vs_fp32=self.fp32_bytes / info.size_bytes, weights_bytes=weight_file_bytes(path),
            weights_ratio_vs_fp32=self.fp32_weight_bytes / max(weight_file_bytes(path), 1), details=details,
            **{"precision": self.cfg.precision, **extra})
        record.extra["within_budget"] = bool(record.delta_top1 >= -self.cfg.max_top1_drop)
        return record

    # ---- several recipes
    def run(self, technique: str | None = None) -> Table:
        """Run the selected recipes of one technique (all when ``None``) and return their table."""
        if technique is not None:
            check_choice("technique", technique, TECHNIQUES)
        names = [n for n in self.recipes if technique is None or RECIPES[n].technique == technique]
        if self.cost is None:  # once, before the first recipe: what measuring every selected recipe will cost
            self.estimate_cost(len(self.recipes), self.baseline.fp32_package)
        for name in names:
            self.run_recipe(name)
        return self.table(names)

    def table(self, names: Sequence[str] | None = None) -> Table:
        """The measured variants (optionally only ``names``) as a table."""
        return results_table(self.variants, self.fp32_bytes, names)

    # ---- narrative helpers (numbers for the markdown)
    def explain(self, name: str) -> str:
        """One sentence with the measured figures of a variant (or why it is missing)."""
        v = self.variant(name)
        refused = next((x for x in self.skipped if x["recipe"] == name), None)
        if refused is not None:
            return f"`{name}` was refused by coremltools: {refused['coremltools_message']} ({refused['hint']})."
        if v is None:
            return f"`{name}` was not run in this configuration (see `recipes`)."
        vs = v.vs_reference
        verdict = "within" if v.get("within_budget") else "outside"
        extra = ""
        if v.get("bits_per_weight") is not None:
            extra += f"; {v.get('bits_per_weight'):.2f} bits per compressed weight on average"
        if v.get("finetune_steps"):
            steps, images = v.get("finetune_steps"), v.get("finetune_images")
            epochs = images / max(len(self.dataset.train), 1)
            extra += (f"; fine-tune budget {steps} steps x {self.cfg.batch_size} images = {images} images "
                      f"({epochs:.2f} epochs), {v.get('finetune_seconds', 0.0):.0f} s on this CPU")
        return (f"`{name}`: {v.size_mb:.3f} MB ({v.get('size_ratio_vs_fp32'):.1f}x smaller than FP32; the weight "
                f"file alone {v.get('weights_ratio_vs_fp32'):.1f}x{extra}), top-1 "
                f"{v.top1:.2f}% [{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}]; change vs FP32 "
                f"{vs.delta_top1:+.2f} points, 95% CI [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}], McNemar p = "
                f"{vs.p_value:.3g}; top-1 agreement with FP32 {v.fidelity.top1_agreement:.2f}% -- "
                f"{verdict} the {self.cfg.max_top1_drop:g}-point budget.")

    def smallest_within(self, max_drop: float, strict: bool = True) -> VariantRecord | None:
        """The variant of this stage with the smallest weight file whose change in top-1 stays within ``max_drop``
        points of FP32: with ``strict``, the whole paired 95% interval (its lower end >= -max_drop); otherwise the
        point estimate.  ``None`` when no variant qualifies."""
        fits = [v for v in self.variants if v.vs_reference is not None and
                (v.vs_reference.ci_low if strict else v.vs_reference.delta_top1) >= -max_drop]
        return min(fits, key=lambda v: v.get("weights_bytes") or v.size_bytes, default=None)

    def headline_table(self, drops: Sequence[float] | None = None) -> Table:
        """For each accuracy limit (default: the budget and 30% of it), the smallest variant that stays within it,
        judged by the paired interval's lower end and by the point estimate, with its weight-file and package
        ratios against FP32 (the package also holds a fixed program and metadata part that compression does not
        shrink)."""
        drops = drops or (self.cfg.max_top1_drop, 0.3 * self.cfg.max_top1_drop)
        rows = []
        for drop in drops:
            for strict in (True, False):
                v = self.smallest_within(drop, strict)
                rows.append({"limit (points)": drop, "judged by": "95% CI lower end" if strict else "point estimate",
                             "variant": v.name if v else "none", "weights x smaller":
                             v.get("weights_ratio_vs_fp32") if v else None,
                             "package x smaller": v.get("size_ratio_vs_fp32") if v else None,
                             "Δ top-1": v.delta_top1 if v else None,
                             "Δ 95% CI": f"[{v.vs_reference.ci_low:.2f}, {v.vs_reference.ci_high:.2f}]" if v else "",
                             "weights KB": (v.get("weights_bytes") or 0) / 1e3 if v else None,
                             "package KB": v.size_bytes / 1e3 if v else None})
        return Table(rows)

    def _brief(self, name: str) -> str | None:
        v = self.variant(name)
        if v is None or v.vs_reference is None:
            return None
        vs = v.vs_reference
        return (f"`{name}` {vs.delta_top1:+.2f} points [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}] at "
                f"{v.get('weights_ratio_vs_fp32'):.1f}x smaller weights")

    def findings(self) -> str:
        """A markdown list of what this run measured, one line per finding, every figure from this run's variants
        (lines whose variants were not run are left out)."""
        lines = []

        def add(text: str, *names: str) -> None:
            briefs = [b for b in (self._brief(n) for n in names) if b]
            if briefs:
                lines.append(f"* {text}: " + "; ".join(briefs) + ".")

        add("8-bit weights", "int8-weights")
        add("4-bit, data-free", "palettize-4bit", "int4-block")
        add("below 4 bits, data-free", "palettize-3bit", "palettize-2bit")
        add("below 4 bits, palettes learned while fine-tuning (DKM)", "torch-palettize-3bit-dkm",
            "torch-palettize-2bit-dkm")
        add("mixed bit-widths chosen on validation", "palettize-mixed", "palettize-mixed-tight")
        add("those mixed bit-widths learned while fine-tuning (DKM)", "torch-palettize-mixed-dkm",
            "torch-palettize-mixed-tight-dkm")
        add("75% pruning, one-shot vs reached gradually while fine-tuning", "prune-75", "torch-prune-75-ft")
        add("gradual pruning with a 4-bit palette on the survivors", "torch-prune-50-ft+palettize-4bit",
            "torch-prune-75-ft+palettize-4bit")
        add("W8A8, calibrated vs trained", "torch-w8a8-static", "torch-w8a8-qat")
        s = self.sensitivity
        if s and s.get("test", {}).get("recipe"):
            kept, base = s["test"]["guided"], s["test"]["recipe"]
            lines.append(f"* keeping {s['chosen_kept']} layer(s) of `{s['recipe']}` float moved top-1 by "
                         f"{kept['delta_top1'] - base['delta_top1']:+.2f} points and cost "
                         f"{(kept['size_mb'] - base['size_mb']) * 1e3:.1f} KB of package.")
        for drop in (self.cfg.max_top1_drop, 0.3 * self.cfg.max_top1_drop):
            v = self.smallest_within(drop)
            if v is not None:
                lines.append(f"* smallest variant whose whole 95% interval stays within {drop:g} points: `{v.name}`, "
                             f"weights {v.get('weights_ratio_vs_fp32'):.1f}x and package "
                             f"{v.get('size_ratio_vs_fp32'):.1f}x smaller than FP32.")
            else:
                lines.append(f"* no variant's whole 95% interval stays within {drop:g} points.")
        for v in self.variants:
            steps, seconds = v.get("finetune_steps"), v.get("finetune_seconds", 0.0)
            if steps:
                lines.append(f"* `{v.name}` fine-tuned {steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s per "
                             "step on this machine).")
        return "\n".join(lines) if lines else "*(no variants measured)*"

    def package_overhead_bytes(self) -> dict[str, int]:
        """Package bytes outside the weight file (program, metadata, manifest) per variant, FP32 included: the part
        compression does not shrink."""
        out = {self.reference.name: self.fp32_bytes - self.fp32_weight_bytes}
        out.update({v.name: v.size_bytes - (v.get("weights_bytes") or 0) for v in self.variants})
        return out

    def compare(self, a: str, b: str) -> dict[str, Any] | None:
        """Paired comparison of two measured variants (``b`` minus ``a``) on the same test images."""
        if a not in self.scores or b not in self.scores:
            return None
        labels = self.dataset.test.labels
        result = compare_paired(self.scores[a].argmax(1) == labels, self.scores[b].argmax(1) == labels,
                                resamples=self.mcfg.bootstrap_resamples).to_dict()
        return {"a": a, "b": b, **result}

    def comparison_table(self) -> Table:
        """The paired comparisons of this run (``COMPARISONS`` whose two variants were measured): trained vs
        data-free, gradual vs one-shot, mixed vs uniform; the change is the second minus the first."""
        rows = []
        for a, b in COMPARISONS:
            c = self.compare(a, b)
            if c is not None:
                rows.append({"variant": b, "minus": a, "Δ top-1": c["delta_top1"],
                             "Δ 95% CI": f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]", "McNemar p": c["p_value"]})
        return Table(rows)

    def recipe_names(self, technique: str) -> list[str]:
        """The recipes of one technique this run measures (catalogue order)."""
        check_choice("technique", technique, TECHNIQUES)
        return [n for n in self.recipes if RECIPES[n].technique == technique]

    # ---- chart data, pitfalls, record
    def chart_variants(self) -> list[VariantRecord]:
        """The baseline's packages and every variant of this stage: what the accuracy chart plots."""
        return [*self.baseline_variants, *self.variants]

    def pareto(self) -> list[str]:
        """Names of the variants on the size/top-1 Pareto front (baseline packages included), smallest first."""
        return [v.name for v in pareto_front(self.chart_variants(), lambda v: v.size_bytes, lambda v: v.top1)]

    def collect_pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run actually met, each with the measured numbers."""
        advice = {True: "without data this is too aggressive for this model: try the training-time recipes (DKM "
                        "palettes, gradual pruning), mixed bit-widths or layer exceptions, and compare their measured "
                        "change",
                  False: "more fine-tuning steps, a lower target, or layer exceptions"}
        for data_free in (True, False):  # one pitfall per kind, listing every variant it hit
            hit = self._far_outside(data_free)
            if not hit:
                continue
            what = "collapses without data" if data_free else "loses far more than the budget"
            if len(hit) > 1:
                what = ("collapse without data" if data_free else "lose far more than the budget")
            figures = "; ".join(f"{v.name}: top-1 {v.top1:.2f}% ({v.vs_reference.delta_top1:+.2f} points vs FP32, "
                                f"95% CI [{v.vs_reference.ci_low:+.2f}, {v.vs_reference.ci_high:+.2f}]) at "
                                f"{v.size_mb:.3f} MB" for v in hit)
            self.add_pitfall(f"over-compression: {', '.join(v.name for v in hit)} {what}",
                             f"{figures}; {advice[data_free]}")
        self._channel_pitfall()
        self._coverage_pitfall()
        layers = weight_layers(self.base_package(self.export_cfg.minimum_deployment_target), self.cfg.weight_threshold,
                               self.model, self._example)
        small = [x for x in layers if not x.eligible]
        if small:
            self.add_pitfall(f"weight_threshold={self.cfg.weight_threshold}: {len(small)} weight tensor(s) stay "
                             "uncompressed on the Core ML side",
                             f"{', '.join(f'{x.label} {list(x.shape)}' for x in small)}; coremltools' default (2048) "
                             f"would leave {sum(x.size <= 2048 for x in layers)} of {len(layers)} weights of this "
                             "small model uncompressed")
        seen: set[tuple[str, ...]] = set()
        for v in self.variants:
            skipped = [m for m in v.get("details", {}).get("messages", []) if "Invalid block_sizes" in m
                       or "Unable to" in m or "skipped" in m.lower() or "does not divide" in m]
            if skipped and tuple(skipped) not in seen:  # a -keep<k> variant repeats its recipe's messages
                seen.add(tuple(skipped))
                self.add_pitfall(f"{v.name}: some weights were skipped or got an adapted block size",
                                 "; ".join(skipped[:3]) + f" ({v.get('compressed_weights')} weights compressed)")
        unfolded = [(v.name, v.op_histogram.get("batch_norm", 0)) for v in self.variants
                    if v.op_histogram.get("batch_norm", 0)]
        if unfolded:
            self.add_pitfall("batch_norm op(s) left in " + (f"the program of {unfolded[0][0]}" if len(unfolded) == 1
                                                             else f"{len(unfolded)} programs"),
                             f"{', '.join(f'{name}: {n}' for name, n in unfolded)}; the converted program applies "
                             "BatchNorm as separate ops after the compressed convolutions instead of folding it into "
                             "their weights (the FP32 and FP16 exports have "
                             f"{self.baseline_variants[0].op_histogram.get('batch_norm', 0)}): one more op per layer at "
                             "run time")
        for name, info in self.mixed.items():
            if not info["met_budget"]:
                self.add_pitfall(f"{name}: no allocation met {info['budget_points']:.2f} points on validation",
                                 "even every layer at the widest palette was refused; the variant written is that "
                                 "widest allocation (raise max_top1_drop or add float exceptions)")
        for v in self.variants:
            if v.get("recipe", {}).get("algorithm") == "dkm" and v.get("finetune_steps"):
                steps = v.get("finetune_steps")
                self.add_pitfall(f"{v.name}: DKM fine-tuning is slow on a CPU",
                                 f"{v.get('finetune_seconds', 0.0):.0f} s for {steps} steps "
                                 f"({v.get('finetune_seconds', 0.0) / steps:.2f} s per step of {self.cfg.batch_size} "
                                 "images on this machine); train.fit runs it on a GPU where one is available "
                                 "(device='auto'), or use fewer finetune_steps")
        if self.retargeted:
            names = sorted({r["recipe"] for r in self.retargeted})
            self.add_pitfall(f"{len(names)} recipe(s) needed a newer deployment target",
                             f"{', '.join(names)} were re-exported at {self.retargeted[0]['to']}: the app must "
                             "require iOS 18 / macOS 15 to ship them")
        for s in self.skipped:
            self.add_pitfall(f"{s['recipe']} refused by coremltools", f"{s['coremltools_message']} -- {s['hint']}")
        for f in self.failed:
            self.add_pitfall(f"{f['recipe']} failed ({f['phase']}) and was left out",
                             f"{f['error']}: {f['reason']} -- the other recipes were measured; the traceback is in "
                             "the stage's output (for a CLI run, reports/<model>/run.log)")
        import platform

        if platform.system() != "Darwin":
            self.add_pitfall("W8A8 on the Core ML model needs macOS",
                             "ct.optimize.coreml.linear_quantize_activations calibrates by running Core ML "
                             "predictions, which only work on macOS; the W8A8 recipes here quantize on the PyTorch "
                             "side (LinearQuantizer) and convert")
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
        (layers it kept float aside) is named, with the figures and, when the model has them, the subclassed layer
        types the compressor could not see (``compress.subclassed_layers``)."""
        eligible = sum(1 for x in self.fp32_layers if x.eligible)
        subclassed = subclassed_layers(self.model)
        for v in self.variants:
            if v.get("side") != "torch":
                continue
            expected = eligible - len(v.get("kept_float") or v.get("details", {}).get("kept_float") or [])
            done = int(v.get("compressed_weights") or 0)
            if done >= expected:
                continue
            why = (f"; {sum(subclassed.values())} of the model's layers are subclasses of torch layer types "
                   f"({', '.join(f'{n} x{c}' for n, c in subclassed.items())}), and coremltools' torch-side "
                   "compressors that find modules by exact type leave them float" if subclassed else "")
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
    run.layer_sensitivity()
    return run.finish()
