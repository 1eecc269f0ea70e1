"""Stage 02's cost, said before its first recipe: what measuring, probing, compressing and fine-tuning will take.

``StageCostMixin`` is part of ``QuantizationRun`` (``playbook.stages.quantization``).  It uses the run's ``cfg``,
``dataset``, ``baseline``, ``recipes``, ``fp32_layers``, ``out_dir``, ``threads``, ``bit_choices``
(``MixedBitsMixin``) and
``StageRun.estimate_cost``, which it extends (issue 18: a 4.65 M-parameter network spends most of the stage outside
the test-split measurement).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from playbook.compress import RECIPES, compress_package, get_recipe
from playbook.stages.quantization_bits import _val_subset


class StageCostMixin:
    """``QuantizationRun``'s ``estimate_cost`` (printed and recorded before the first recipe) and its parts."""

    def estimate_cost(self, n_variants: int, package: Path) -> dict[str, Any]:
        """The test-split measuring cost (``StageRun.estimate_cost``) plus this stage's other work, counted before it
        starts: prediction on validation images (layer sensitivity probes, mixed bit-width probes and allocation
        checks) at the pace just measured, the programs compressed on the way at the time one single-layer probe
        takes here, and fine-tune steps at the baseline training's pace.  Each part is a lower bound (a palette over
        every layer, and DKM's clustering, take longer than what is timed); printed with the parameter that bounds
        it, and kept in the record."""
        cost = super().estimate_cost(n_variants, package)
        work = self.validation_work()
        per_image = cost["seconds_per_image"]
        training = self.baseline.record.get("training") or {}
        batch = int((self.baseline.record.get("train_config") or {}).get("batch_size") or 0)
        pace = (float(training["seconds"]) / (int(training["steps"]) * batch)
                if training.get("steps") and training.get("seconds") and batch else None)
        tuned = [n for n in self.recipes if RECIPES[n].data == "training"]
        steps = self.cfg.steps()
        finetune = {"recipes": tuned, "steps": steps, "batch_size": self.cfg.batch_size,
                    "seconds_per_image": pace,
                    "seconds": len(tuned) * steps * self.cfg.batch_size * pace if pace is not None else None}
        programs = work["sensitivity"]["probes"] + work["mixed"]["probes"] + work["mixed"]["checks"] + n_variants
        unit = self._time_one_probe(work["first_layer"]) if work["first_layer"] else 0.0
        compression = {"programs": programs, "seconds_per_program": unit, "seconds": programs * unit}
        validation_seconds = work["images"] * per_image
        cost.update(validation=work, validation_seconds=validation_seconds, finetune=finetune, compression=compression,
                    total_seconds=cost["accuracy_seconds"] + validation_seconds + compression["seconds"]
                    + (finetune["seconds"] or 0.0))
        parts = []
        if work["sensitivity"]["probes"]:
            w = work["sensitivity"]
            parts.append(f"layer sensitivity: up to {w['probes']} probes x {w['images']:,} validation images "
                         "(bound: sensitivity_images, or sensitivity_recipe=\"none\")")
        if work["mixed"]["recipes"]:
            w = work["mixed"]
            parts.append(f"mixed bit-widths ({', '.join(w['recipes'])}): {w['probes']} per-layer probes x "
                         f"{w['probe_images']:,} images (sensitivity_images) and about {w['checks']} allocation checks "
                         f"x {w['check_images']:,} images (search_images)")
        if tuned:
            pace_text = (f"about {pace * self.cfg.batch_size:.2f} s per step at the baseline training's pace, "
                         f"{finetune['seconds'] / 60:.1f} min" if pace is not None else "pace unknown")
            parts.append(f"fine-tunes: {len(tuned)} recipe(s) x {steps} steps ({pace_text}; bound: finetune_steps, "
                         "or leave recipes out)")
        parts.append(f"about {programs} programs compressed, at least {unit:.1f} s each (one single-layer 4-bit "
                     f"palette timed here; a palette over every layer takes longer), {compression['seconds'] / 60:.1f} "
                     "min")
        print("then: " + "; ".join(parts) + f". Prediction on validation images: about "
              f"{validation_seconds / 60:.1f} min; in all at least {cost['total_seconds'] / 60:.1f} min.")
        return cost

    def _time_one_probe(self, layer: str) -> float:
        """Seconds to write one program with a single layer palettized at 4 bits (what a per-layer probe costs, k-means
        on one tensor included): the unit of the compression part of the cost estimate."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".cost-", dir=self.out_dir))
        try:
            with self.threads():
                start = time.perf_counter()
                compress_package(get_recipe("palettize-4bit"), self.baseline.fp32_package, work, "cost",
                                 self.cfg.weight_threshold, only=[layer])
                return time.perf_counter() - start
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def validation_work(self) -> dict[str, Any]:
        """How many validation images the selected recipes will push through the prediction interface: the layer
        sensitivity analysis (one probe per eligible layer, then the keep-k curve and its control), the mixed
        bit-widths' per-layer probes (one per layer and palette size below the widest) and their allocation checks
        (bisection: about log2 of the path length each).  Upper bounds: probes shared between analyses are counted
        once per analysis, and ``sensitivity_recipe="auto"`` may choose no recipe."""
        eligible = [layer.name for layer in self.fp32_layers if layer.eligible]
        layers = len(eligible)
        probe_images = len(_val_subset(self.dataset, self.cfg.sensitivity_images))
        check_images = len(_val_subset(self.dataset, self.cfg.search_images))
        sensitivity = {"probes": 0, "images": probe_images}
        if self.cfg.sensitivity_recipe != "none":
            sensitivity["probes"] = layers + min(self.cfg.max_exceptions, layers) + 2
        mixed_names = {n for n in self.recipes if RECIPES[n].allocation}
        mixed_names |= {RECIPES[n].options["allocation_from"] for n in self.recipes
                        if RECIPES[n].options.get("allocation_from")}
        mixed = sorted(mixed_names, key=list(RECIPES).index)
        choice_sets = {self.bit_choices(RECIPES[n]) for n in mixed}
        probes = sum(layers * (len(choices) - 1) for choices in choice_sets)
        checks = sum(math.ceil(math.log2(2 + layers * (len(self.bit_choices(RECIPES[n])) - 1))) for n in mixed)
        images = sensitivity["probes"] * probe_images + probes * probe_images + checks * check_images
        return {"layers": layers, "first_layer": eligible[0] if eligible else None, "sensitivity": sensitivity,
                "images": images,
                "mixed": {"recipes": mixed, "probes": probes, "probe_images": probe_images, "checks": checks,
                          "check_images": check_images}}
