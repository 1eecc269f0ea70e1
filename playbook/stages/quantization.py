"""Stage 02, quantization and compression: every recipe of the catalogue, measured on the five axes.

``QuantizationConfig`` is the parameter list of ``notebooks/02_quantization.ipynb``; ``QuantizationRun``
holds the notebook's steps (one technique at a time, then the layer sensitivity analysis);
``run_quantization`` runs them all and writes ``quantization.json``.  The compressors themselves live
in ``playbook.compress`` and know nothing of this stage.

Recipes that need an iOS18 program get one: the stage re-exports the baseline model at iOS18
(``retarget=True``).  A recipe coremltools refuses is recorded with coremltools' message and a hint.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from playbook.compress import (DEFAULT_RECIPES, RECIPES, CompressionError, Recipe, compress_package, compress_torch,
                               compressed_weight_count, get_recipe, recipe_rows, required_target, weight_file_bytes,
                               weight_layers)
from playbook.compress.recipes import TECHNIQUES
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import ExportConfig, export_model, model_sha256, package_info, predict_split
from playbook.data import Dataset, Split
from playbook.metrics import compare_paired, fidelity, pareto_front
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig
from playbook.views import Table, results_table


@dataclasses.dataclass(frozen=True)
class QuantizationConfig(MeasuredStageConfig):
    """The parameters of ``02_quantization`` (see the notebook's parameters cell for each one's meaning)."""

    dataset: str = ""
    recipes: list[str] = dataclasses.field(default_factory=list)
    max_top1_drop: float = 1.0
    precision: str = "fp16"
    weight_threshold: int = 256
    retarget: bool = True
    finetune_steps: int = 200
    finetune_lr: float = 0.002
    batch_size: int = 64
    sensitivity_recipe: str = "auto"
    sensitivity_images: int = 1000
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
        check_range("max_exceptions", self.max_exceptions, 1)

    def recipe_names(self) -> list[str]:
        """The recipes this run measures, in catalogue order: ``recipes`` or the (smoke) default set."""
        chosen = set(self.recipes) if self.recipes else set(SMOKE.quantization_recipes if self.smoke
                                                             else DEFAULT_RECIPES)
        return [n for n in RECIPES if n in chosen]

    def steps(self) -> int:
        """Fine-tune steps actually used (the smoke policy caps them)."""
        return SMOKE.steps(self.finetune_steps) if self.smoke else self.finetune_steps


def _val_subset(dataset: Dataset, n: int) -> Split:
    split = dataset.val if len(dataset.val) else dataset.calib
    return split.head(min(n, len(split)))


def _scores_summary(ref: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fid = fidelity(ref, scores)
    return {"val_top1": float(100.0 * (scores.argmax(1) == labels).mean()), "kl": fid.kl_divergence,
            "agreement": fid.top1_agreement}


class QuantizationRun(DownstreamRun):
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
        self.retargeted: list[dict[str, str]] = []
        self.sensitivity: dict[str, Any] | None = None
        self._bases: dict[tuple[str, str], Path] = {}
        self._example = self.dataset.to_tensor(self.dataset.calib.images[:1])

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
        """Compress, save and measure one recipe; returns its record (``None`` if coremltools refused it)."""
        with self.threads():
            recipe = get_recipe(name)
            target = self.target_for(recipe)
            precision = recipe.precision or self.cfg.precision
            current = self.export_cfg.minimum_deployment_target
            if target != current:
                self.retargeted.append({"recipe": recipe.name, "from": current, "to": target})
            try:
                if recipe.side == "coreml":
                    made = compress_package(recipe, self.base_package(target, precision), self.out_dir, recipe.name,
                                            self.cfg.weight_threshold, metadata={"playbook.stage": self.stage})
                    path, details = made.path, {"messages": list(made.messages)}
                    extra = {"compress_seconds": made.seconds, "export_seconds": 0.0, "finetune_steps": 0}
                else:
                    tc = compress_torch(recipe, self.model, self.dataset, self.cfg.steps(), self.cfg.finetune_lr,
                                        self.cfg.batch_size, self.cfg.weight_threshold, self.cfg.seed)
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
                             "finetune_steps": tc.finetune_steps,
                             "finetune_loss": [tc.losses[0], tc.losses[-1]] if tc.losses else None}
            except CompressionError as exc:
                self.skipped.append(exc.to_dict())
                print(f"skipped {recipe.name}: {exc}")
                return None
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
        return (f"`{name}`: {v.size_mb:.3f} MB ({v.get('size_ratio_vs_fp32'):.1f}x smaller than FP32; the weight "
                f"file alone {v.get('weights_ratio_vs_fp32'):.1f}x), top-1 "
                f"{v.top1:.2f}% [{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}]; change vs FP32 "
                f"{vs.delta_top1:+.2f} points, 95% CI [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}], McNemar p = "
                f"{vs.p_value:.3g}; top-1 agreement with FP32 {v.fidelity.top1_agreement:.2f}% -- "
                f"{verdict} the {self.cfg.max_top1_drop:g}-point budget.")

    def compare(self, a: str, b: str) -> dict[str, Any] | None:
        """Paired comparison of two measured variants (``b`` minus ``a``) on the same test images."""
        if a not in self.scores or b not in self.scores:
            return None
        labels = self.dataset.test.labels
        result = compare_paired(self.scores[a].argmax(1) == labels, self.scores[b].argmax(1) == labels,
                                resamples=self.mcfg.bootstrap_resamples).to_dict()
        return {"a": a, "b": b, **result}

    # ---- sensitivity
    def choose_sensitivity_recipe(self) -> str | None:
        """``sensitivity_recipe``, or for ``auto`` the smallest measured single-step Core ML recipe that loses
        at most 5x the accuracy budget (aggressive, yet recoverable); ``None`` when nothing qualifies."""
        if self.cfg.sensitivity_recipe == "none":
            return None
        if self.cfg.sensitivity_recipe != "auto":
            return self.cfg.sensitivity_recipe
        candidates = [v for v in self.variants if get_recipe(v.get("recipe")["name"]).single_step
                      and v.name == v.get("recipe")["name"]
                      and v.delta_top1 >= -5 * max(self.cfg.max_top1_drop, 0.1)]
        if not candidates:
            return None
        return min(candidates, key=lambda v: v.size_bytes).name

    def layer_sensitivity(self, recipe: str | None = None) -> dict[str, Any] | None:
        """Compress one layer at a time, rank layers by damage, keep the worst ``k`` float, measure the result.

        Damage = KL divergence from the FP32 package's outputs on ``sensitivity_images`` validation
        images (validation, so the test split stays untouched by the choice).  Then for
        ``k = 0..max_exceptions`` the whole recipe is applied with the ``k`` most damaging layers
        kept uncompressed (``op_name_configs={name: None}``); the smallest ``k >= 1`` whose
        validation loss fits the budget (else ``max_exceptions``) is measured on the test split
        as variant ``<recipe>-keep<k>``.  A control keeps the ``k`` *least* damaging layers instead.
        """
        with self.threads():
            return self._layer_sensitivity(recipe)

    def _layer_sensitivity(self, recipe: str | None = None) -> dict[str, Any] | None:
        name = recipe or self.choose_sensitivity_recipe()
        if name is None:
            self.sensitivity = None
            return None
        rec = get_recipe(name)
        if not rec.single_step:
            raise ConfigError(f"layer sensitivity needs a single-step Core ML recipe, not {name!r}")
        start = time.perf_counter()
        target = self.target_for(rec)
        base = self.base_package(target)
        layers = [layer for layer in weight_layers(base, self.cfg.weight_threshold, self.model, self._example)
                  if layer.eligible]
        split = _val_subset(self.dataset, self.cfg.sensitivity_images)
        runtime = self.mcfg.runtime
        ref_scores, _ = predict_split(self.baseline.fp32_package, self.dataset, split, runtime)
        ref_top1 = float(100.0 * (ref_scores.argmax(1) == split.labels).mean())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".sensitivity-", dir=self.out_dir))
        try:
            def evaluate(**kw: Any) -> dict[str, Any]:
                made = compress_package(rec, base, work, "probe", self.cfg.weight_threshold, **kw)
                scores, _ = predict_split(made.path, self.dataset, split, runtime)
                out = _scores_summary(ref_scores, scores, split.labels)
                out["size_mb"] = package_info(made.path).size_mb
                return out

            ranked = []
            for layer in layers:
                res = evaluate(only=[layer.name])
                ranked.append({"name": layer.name, "label": layer.label, "module": layer.module,
                               "shape": list(layer.shape), "size": layer.size, "consumer": layer.consumer,
                               "kl": res["kl"], "val_top1": res["val_top1"],
                               "val_delta_top1": res["val_top1"] - ref_top1, "agreement": res["agreement"]})
            ranked.sort(key=lambda e: (-e["kl"], e["val_delta_top1"]))
            curve = []
            for k in range(0, min(self.cfg.max_exceptions, len(ranked)) + 1):
                res = evaluate(exclude=[e["name"] for e in ranked[:k]])
                curve.append({"kept": k, "kept_layers": [e["label"] for e in ranked[:k]],
                              "val_delta_top1": res["val_top1"] - ref_top1, **res})
            fits = [c for c in curve if c["kept"] >= 1 and c["val_delta_top1"] >= -self.cfg.max_top1_drop]
            chosen = fits[0]["kept"] if fits else curve[-1]["kept"]
            control = None
            if chosen >= 1 and len(ranked) > chosen:
                res = evaluate(exclude=[e["name"] for e in ranked[-chosen:]])
                control = {"kept": chosen, "kept_layers": [e["label"] for e in ranked[-chosen:]],
                           "val_delta_top1": res["val_top1"] - ref_top1, **res}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        keep = [e["name"] for e in ranked[:chosen]]
        variant_name = f"{name}-keep{chosen}"
        made = compress_package(rec, base, self.out_dir, variant_name, self.cfg.weight_threshold, exclude=keep,
                                metadata={"playbook.stage": self.stage})
        kept_labels = [e["label"] for e in ranked[:chosen]]
        record = self._measure_recipe(
            variant_name, made.path, rec, target,
            {"compress_seconds": made.seconds, "export_seconds": 0.0, "finetune_steps": 0, "kept_float": kept_labels},
            {"messages": list(made.messages)},
            description=f"{rec.description}, with the {chosen} most damaging layer(s) kept float: "
                        f"{', '.join(kept_labels)}")
        base_variant = self.variant(name)

        def brief(v: VariantRecord) -> dict[str, Any]:
            return {"top1": v.top1, "delta_top1": v.delta_top1, "ci": [v.vs_reference.ci_low, v.vs_reference.ci_high],
                    "size_mb": v.size_mb}

        self.sensitivity = {
            "recipe": name, "method": "compress one layer at a time (op_name_configs), rank by KL(FP32 || variant) "
                                      "on validation images; keep the top-k float (op_name_configs={name: None})",
            "val_images": len(split), "val_reference_top1": ref_top1, "accuracy_budget": self.cfg.max_top1_drop,
            "weight_threshold": self.cfg.weight_threshold, "layers": ranked, "keep_curve": curve,
            "chosen_kept": chosen, "control": control, "variant": variant_name,
            "test": {"recipe": brief(base_variant) if base_variant else None, "guided": brief(record)},
            "seconds": time.perf_counter() - start,
        }
        return self.sensitivity

    def sensitivity_table(self) -> Table:
        """The per-layer ranking (most damaging first)."""
        if not self.sensitivity:
            return Table([])
        return Table([{"rank": i + 1, "layer": e["label"], "shape": "x".join(map(str, e["shape"])),
                       "elements": e["size"], "KL": e["kl"], "val Δ top-1": e["val_delta_top1"]}
                      for i, e in enumerate(self.sensitivity["layers"])])

    def keep_curve_table(self) -> Table:
        """Validation top-1 and size as the k most damaging layers stay float (and the control)."""
        if not self.sensitivity:
            return Table([])
        rows = [{"kept float": c["kept"], "layers": ", ".join(c["kept_layers"]) or "-", "size MB": c["size_mb"],
                 "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"], "KL": c["kl"]}
                for c in self.sensitivity["keep_curve"]]
        c = self.sensitivity.get("control")
        if c:
            rows.append({"kept float": f"{c['kept']} (control: least damaging)", "layers": ", ".join(c["kept_layers"]),
                         "size MB": c["size_mb"], "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"],
                         "KL": c["kl"]})
        return Table(rows)

    # ---- chart data, pitfalls, record
    def chart_variants(self) -> list[VariantRecord]:
        """The baseline's packages and every variant of this stage: what the accuracy chart plots."""
        return [*self.baseline_variants, *self.variants]

    def pareto(self) -> list[str]:
        """Names of the variants on the size/top-1 Pareto front (baseline packages included), smallest first."""
        return [v.name for v in pareto_front(self.chart_variants(), lambda v: v.size_bytes, lambda v: v.top1)]

    def collect_pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run actually met, each with the measured numbers."""
        budget = self.cfg.max_top1_drop
        for v in self.variants:
            vs = v.vs_reference
            if vs.delta_top1 < -5 * max(budget, 0.1):
                data_free = v.get("recipe")["data"] == "none"
                self.add_pitfall(
                    f"over-compression: {v.name} " + ("collapses without data" if data_free
                                                     else "loses far more than the budget"),
                    f"top-1 {v.top1:.2f}% ({vs.delta_top1:+.2f} points vs FP32, 95% CI [{vs.ci_low:+.2f}, "
                    f"{vs.ci_high:+.2f}]) at {v.size_mb:.3f} MB; "
                    + ("data-free compression this aggressive needs fine-tuning (DKM, QAT) or layer exceptions"
                       if data_free else "more fine-tuning steps, a lower target, or layer exceptions"))
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
            bn = v.op_histogram.get("batch_norm", 0)
            if bn:
                self.add_pitfall(f"{v.name}: {bn} batch_norm op(s) left in the program",
                                 "the converter cannot fold BatchNorm into a conv whose weight is compressed; this "
                                 "costs run time. QAT (LinearQuantizer) fuses conv+BN before quantizing")
        if self.retargeted:
            names = sorted({r["recipe"] for r in self.retargeted})
            self.add_pitfall(f"{len(names)} recipe(s) needed a newer deployment target",
                             f"{', '.join(names)} were re-exported at {self.retargeted[0]['to']}: the app must "
                             "require iOS 18 / macOS 15 to ship them")
        for s in self.skipped:
            self.add_pitfall(f"{s['recipe']} refused by coremltools", f"{s['coremltools_message']} -- {s['hint']}")
        import platform

        if platform.system() != "Darwin":
            self.add_pitfall("W8A8 on the Core ML model needs macOS",
                             "ct.optimize.coreml.linear_quantize_activations calibrates by running Core ML "
                             "predictions, which only work on macOS; the W8A8 recipes here quantize on the PyTorch "
                             "side (LinearQuantizer) and convert")
        return self.pitfalls

    def details(self) -> dict[str, Any]:
        comparisons = {}
        for a, b in (("torch-w8a8-static", "torch-w8a8-qat"), ("prune-75", "torch-prune-75-ft"),
                     ("palettize-2bit", "torch-palettize-2bit-dkm"), ("palettize-4bit", "torch-palettize-4bit-skm")):
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
            "pareto_front": self.pareto(),
            "comparisons": comparisons,
            "sensitivity": self.sensitivity,
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
