"""Stage 02's layer sensitivity analysis: compress one layer at a time, rank the layers by damage, keep the worst float.

``LayerSensitivityMixin`` is part of ``QuantizationRun`` (``playbook.stages.quantization``).  It uses the run's
``cfg``, ``dataset``, ``model``, ``_example``, ``mcfg``, ``stage``, ``out_dir``, ``threads``, ``variants``,
``variant``, ``base_package``, ``target_for``, ``_measure_recipe``, the ``sensitivity`` attribute it fills and, from
``MixedBitsMixin``, the shared per-layer probes (``_probe``) and the FP32 validation reference (``_val_reference``).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from playbook.compress import compress_package, get_recipe, weight_layers
from playbook.config import ConfigError
from playbook.coreml import package_info, predict_split
from playbook.records import VariantRecord
from playbook.stages.quantization_bits import _scores_summary, _val_subset
from playbook.views import Table


class LayerSensitivityMixin:
    """``QuantizationRun``'s sensitivity steps: ``choose_sensitivity_recipe``, ``layer_sensitivity`` and its
    tables; the result is kept in ``self.sensitivity``."""

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
        ref_scores, ref_top1 = self._val_reference(split)
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
                res = self._probe(rec, base, layer.name, split, ref_scores, work)
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

