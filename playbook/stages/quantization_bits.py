"""Stage 02's mixed bit-widths (issue 15): per-layer palette sizes chosen from the measured per-layer damage.

``MixedBitsMixin`` is part of ``QuantizationRun`` (``playbook.stages.quantization``): the per-layer probes (shared
with the layer sensitivity analysis), the FP32 package's validation reference, the allocation search, and the
tables the notebook shows.  It uses the run's ``cfg``, ``dataset``, ``model``, ``baseline``, ``mcfg``, ``stage``,
``out_dir``, ``threads``, ``base_package``, ``target_for`` and what ``QuantizationRun.__init__`` creates
(``_example`` and the caches ``_bit_tables``, ``_path_checks``, ``_val_refs``, ``_probes``, ``mixed``).  The
allocation itself lives in ``playbook.compress.mixed``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from playbook.compress import CompressionError, Recipe, compress_package, get_recipe, weight_file_bytes, weight_layers
from playbook.compress.mixed import (LayerSensitivity, allocation_bytes, allocation_path, bits_per_weight,
                                     predicted_damage, search_path)
from playbook.coreml import predict_split
from playbook.data import Dataset, Split
from playbook.metrics import fidelity
from playbook.stages.common import SMOKE
from playbook.views import Table


def _val_subset(dataset: Dataset, n: int = 0) -> Split:
    """The validation split (the calibration split when there is none), its first ``n`` images; ``n=0``: all."""
    split = dataset.val if len(dataset.val) else dataset.calib
    return split.head(min(n, len(split))) if n else split


def _scores_summary(ref: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fid = fidelity(ref, scores)
    return {"val_top1": float(100.0 * (scores.argmax(1) == labels).mean()), "kl": fid.kl_divergence,
            "agreement": fid.top1_agreement}


class MixedBitsMixin:
    """``QuantizationRun``'s mixed bit-width steps: ``bit_sensitivity``, the allocation of a mixed-bit recipe,
    ``module_bits`` for the DKM recipes that reuse it, and its tables."""

    # ---- mixed bit-widths (issue 15): per-layer palette sizes from the measured per-layer damage
    def bit_sensitivity(self, recipe: Recipe, target: str | None = None) -> list[LayerSensitivity]:
        """Per-layer damage at every palette size a mixed-bit ``recipe`` may choose (``bit_choices``): one layer
        palettized at a time (the others float), KL divergence of the outputs from the FP32 package's on
        ``sensitivity_images`` validation images.

        The widest choice is not probed: it is where the allocation path starts, every layer at that width, and
        that whole allocation is checked on validation like every other point (its per-layer damage enters the
        path as 0; the table shows it as not measured).  Measured once per (target, choices) and shared by every
        mixed-bit recipe of the run; layers are named by their PyTorch modules.  The test split is never used."""
        target = target or self.target_for(recipe)
        choices = self.bit_choices(recipe)
        key = (target, tuple(choices))
        if key in self._bit_tables:
            return self._bit_tables[key]["layers"]
        start = time.perf_counter()
        base = self.base_package(target)
        layers = [layer for layer in weight_layers(base, self.cfg.weight_threshold, self.model, self._example)
                  if layer.eligible]
        split = _val_subset(self.dataset, self.cfg.sensitivity_images)
        ref_scores, _ = self._val_reference(split)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".bits-", dir=self.out_dir))
        rows, table = [], []
        try:
            for layer in tqdm(layers, desc="damage per layer and palette size", leave=False):
                damage: dict[int, float] = {choices[-1]: 0.0}
                delta: dict[int, float | None] = {choices[-1]: None}
                for bits in choices[:-1]:
                    summary = self._probe(recipe, base, layer.name, split, ref_scores, work, nbits=bits)
                    damage[bits] = summary["kl"]
                    delta[bits] = summary["val_top1"] - float(100.0 * (ref_scores.argmax(1) == split.labels).mean())
                table.append(LayerSensitivity(layer.name, layer.label, layer.size, damage))
                rows.append({"name": layer.name, "label": layer.label, "module": layer.module,
                             "shape": list(layer.shape), "size": layer.size,
                             "kl": {str(b): (damage[b] if b != choices[-1] else None) for b in choices},
                             "val_delta_top1": {str(b): delta[b] for b in choices}})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._bit_tables[key] = {"layers": table, "rows": rows, "val_images": len(split),
                                 "seconds": time.perf_counter() - start}
        return table

    def _probe(self, recipe: Recipe, base: Path, layer: str, split: Split, ref_scores: np.ndarray, work: Path,
               nbits: int | None = None) -> dict[str, float]:
        """Validation figures with only ``layer`` compressed by ``recipe``'s step (at ``nbits`` if given).

        Cached by what the compressor receives (program, step kind and options, layer, images), so the layer
        sensitivity analysis and the mixed bit-widths share the probes they have in common (a uniform
        ``palettize-3bit`` probe is the mixed analysis's 3-bit probe)."""
        kind, options = recipe.steps[0]
        effective = {**options, **({"nbits": nbits} if nbits is not None else {})}
        key = (str(base), kind, json.dumps(effective, sort_keys=True, default=str), layer, len(split))
        if key not in self._probes:
            made = compress_package(recipe, base, work, "probe", self.cfg.weight_threshold, only=[layer],
                                    overrides={layer: {"nbits": nbits}} if nbits is not None else None)
            scores, _ = predict_split(made.path, self.dataset, split, self.mcfg.runtime)
            self._probes[key] = _scores_summary(ref_scores, scores, split.labels)
        return self._probes[key]

    def bit_choices(self, recipe: Recipe) -> tuple[int, ...]:
        """The palette sizes a mixed-bit recipe may give a layer: the recipe's, or in smoke runs those of them in
        the smoke policy (fewer and cheaper probes and checks), when at least two are."""
        choices = recipe.bit_choices
        smoke = tuple(b for b in choices if b in SMOKE.mixed_bit_choices)
        return smoke if self.cfg.smoke and len(smoke) >= 2 else choices

    def _val_reference(self, split: Split) -> tuple[np.ndarray, float]:
        """The FP32 package's scores on a validation split (cached) and its top-1 there."""
        key = hashlib.sha256(split.labels.tobytes() + split.images[:8].tobytes()).hexdigest() + str(len(split))
        if key not in self._val_refs:
            scores, _ = predict_split(self.baseline.fp32_package, self.dataset, split, self.mcfg.runtime)
            self._val_refs[key] = scores
        scores = self._val_refs[key]
        return scores, float(100.0 * (scores.argmax(1) == split.labels).mean())

    def _mixed_bits(self, recipe: Recipe, base: Path, out_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
        """Choose a recipe's per-layer palette sizes and write its package.

        The greedy path of ``compress.mixed.allocation_path`` runs from every layer at the widest choice to every
        layer at the narrowest; points of it are palettized together and checked on the validation split (its first
        ``search_images`` images when that is set, else all of it):
        accepted when validation top-1 is within ``budget_share * max_top1_drop`` points of the FP32 package's.
        The smallest accepted point is written (or, if none is, the widest one, flagged ``within_budget=False``)."""
        start = time.perf_counter()
        choices = self.bit_choices(recipe)
        target = self.target_for(recipe)
        layers = self.bit_sensitivity(recipe, target)
        path = allocation_path(layers, choices)
        budget = float(recipe.options.get("budget_share", 1.0)) * self.cfg.max_top1_drop
        split = _val_subset(self.dataset, self.cfg.search_images)
        ref_scores, ref_top1 = self._val_reference(split)
        cache = self._path_checks.setdefault((target, tuple(choices)), {})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".mixed-", dir=self.out_dir))

        def accept(allocation: dict[str, int]) -> tuple[bool, dict[str, Any]]:
            key = tuple(sorted(allocation.items()))
            if key not in cache:
                made = compress_package(recipe, base, work, "check", self.cfg.weight_threshold,
                                        overrides={n: {"nbits": b} for n, b in allocation.items()})
                scores, _ = predict_split(made.path, self.dataset, split, self.mcfg.runtime)
                summary = _scores_summary(ref_scores, scores, split.labels)
                cache[key] = {"val_delta_top1": summary["val_top1"] - ref_top1, "val_kl": summary["kl"],
                              "weights_bytes": weight_file_bytes(made.path)}
            facts = {**cache[key], "bits_per_weight": bits_per_weight(layers, allocation),
                     "predicted_kl": predicted_damage(layers, allocation)}
            return facts["val_delta_top1"] >= -budget, facts

        try:
            search = search_path(path, accept)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        chosen = path[search.chosen if search.chosen is not None else 0]
        made = compress_package(recipe, base, out_dir or self.out_dir, recipe.name, self.cfg.weight_threshold,
                                overrides={n: {"nbits": b} for n, b in chosen.items()},
                                metadata={"playbook.stage": self.stage})
        by_name = {layer.name: layer for layer in layers}
        table = self._bit_tables[(target, tuple(choices))]
        allocation = [{"name": row["name"], "label": row["label"], "module": row["module"], "shape": row["shape"],
                       "size": row["size"], "bits": chosen[row["name"]], "kl": row["kl"]} for row in table["rows"]]
        details = {
            "messages": list(made.messages), "bit_choices": list(choices), "budget_points": budget,
            "budget_share": float(recipe.options.get("budget_share", 1.0)), "val_images": len(split),
            "probe_images": table["val_images"], "val_reference_top1": ref_top1,
            "allocation": allocation, "met_budget": search.chosen is not None,
            "path_length": len(path), "chosen_index": search.chosen, "checks": list(search.checks),
            "estimated_bytes": allocation_bytes(layers, chosen),
            "bits_per_weight": bits_per_weight(layers, chosen),
            "predicted_kl": predicted_damage([by_name[n] for n in chosen], chosen),
            "probe_seconds": table["seconds"], "seconds": time.perf_counter() - start,
        }
        self.mixed[recipe.name] = details
        return made, details

    def module_bits(self, recipe: Recipe) -> dict[str, int] | None:
        """For a DKM recipe with ``allocation_from``: the palette size per PyTorch module that mixed-bit recipe chose
        (run first if this run has not run it yet); otherwise ``None``."""
        source = recipe.options.get("allocation_from")
        if not source:
            return None
        if source not in self.mixed:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".allocation-", dir=self.out_dir))
            try:
                with self.threads():
                    self._mixed_bits(get_recipe(source), self.base_package(self.target_for(get_recipe(source))), work)
            finally:
                shutil.rmtree(work, ignore_errors=True)  # only the allocation is needed here
        rows = self.mixed[source]["allocation"]
        unnamed = [row["name"] for row in rows if not row["module"]]
        if unnamed:
            raise CompressionError(recipe.name, f"weights {unnamed} could not be matched to PyTorch modules",
                                   "the mixed allocation names program weights; DKM needs module names")
        return {row["module"]: int(row["bits"]) for row in rows}

    def bit_allocation_table(self, name: str) -> Table:
        """One row per layer of a mixed-bit variant: PyTorch module, shape, elements, the palette size chosen, and
        the measured damage (validation KL) of that layer alone at each candidate size."""
        info = self.mixed.get(name)
        if not info:
            return Table([])
        return Table([{"layer": row["label"], "shape": "x".join(map(str, row["shape"])), "elements": row["size"],
                       "bits": row["bits"], **{f"KL@{b}": row["kl"][str(b)] for b in info["bit_choices"]}}
                      for row in info["allocation"]])

    def bit_search_table(self, name: str) -> Table:
        """The allocations checked on validation while choosing a mixed-bit variant, in search order."""
        info = self.mixed.get(name)
        if not info:
            return Table([])
        return Table([{"path point": c["index"], "bits/weight": c["bits_per_weight"], "weights KB":
                       c["weights_bytes"] / 1e3, "val Δ top-1": c["val_delta_top1"], "val KL": c["val_kl"],
                       "predicted KL": c["predicted_kl"], "accepted": c["accepted"]} for c in info["checks"]])
