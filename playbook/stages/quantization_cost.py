"""Stage 02's cost, said before its first recipe: what measuring, probing, compressing and fine-tuning will take.

Plain functions of what they count (the stage passes its config, recipes, layers and data): ``validation_work``
counts the validation images the analyses will predict, ``time_one_probe`` times the unit of compression, and
``stage_cost`` adds both and the fine-tunes to the test-split measuring cost (``StageRun.estimate_cost``) and prints
the whole with the parameter that bounds each part (issue 18: a 4.65 M-parameter network spends most of the stage
outside the test-split measurement).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

from playbook.compress import RECIPES, WeightLayer, compress_package, get_recipe
from playbook.compress.search import AllocationSettings, LayerProbes, validation_subset
from playbook.data import Dataset


def validation_work(layers: Sequence[WeightLayer], recipes: Sequence[str], dataset: Dataset,
                    settings: AllocationSettings, sensitivity_recipe: str, max_exceptions: int) -> dict[str, Any]:
    """How many validation images the selected recipes will push through the prediction interface: the layer
    sensitivity analysis (one probe per eligible layer, then the keep-k curve and its control), the mixed
    bit-widths' per-layer probes (one per layer and palette size below the widest) and their allocation checks
    (bisection: about log2 of the path length each).  Upper bounds: probes shared between analyses are counted
    once per analysis, and ``sensitivity_recipe="auto"`` may choose no recipe."""
    eligible = [layer.name for layer in layers if layer.eligible]
    count = len(eligible)
    probe_images = len(validation_subset(dataset, settings.probe_images))
    check_images = len(validation_subset(dataset, settings.check_images))
    sensitivity = {"probes": 0, "images": probe_images}
    if sensitivity_recipe != "none":
        sensitivity["probes"] = count + min(max_exceptions, count) + 2
    mixed_names = {n for n in recipes if RECIPES[n].allocation}
    mixed_names |= {RECIPES[n].options["allocation_from"] for n in recipes if RECIPES[n].options.get("allocation_from")}
    mixed = sorted(mixed_names, key=list(RECIPES).index)
    choice_sets = {settings.choices_for(RECIPES[n]) for n in mixed}
    probes = sum(count * (len(choices) - 1) for choices in choice_sets)
    checks = sum(math.ceil(math.log2(2 + count * (len(settings.choices_for(RECIPES[n])) - 1))) for n in mixed)
    images = sensitivity["probes"] * probe_images + probes * probe_images + checks * check_images
    return {"layers": count, "first_layer": eligible[0] if eligible else None, "sensitivity": sensitivity,
            "images": images,
            "mixed": {"recipes": mixed, "probes": probes, "probe_images": probe_images, "checks": checks,
                      "check_images": check_images}}


def time_one_probe(probes: LayerProbes, package: Path, layer: str) -> float:
    """Seconds to write one program with a single layer palettized at 4 bits (what a per-layer probe costs, k-means
    on one tensor included): the unit of the compression part of the cost estimate."""
    with probes.workspace("cost") as work:
        start = time.perf_counter()
        compress_package(get_recipe("palettize-4bit"), package, work, "cost", probes.weight_threshold, only=[layer])
        return time.perf_counter() - start


def stage_cost(measuring: dict[str, Any], work: dict[str, Any], probe_seconds: float, recipes: Sequence[str],
               finetune_steps: int, batch_size: int, baseline: Any) -> dict[str, Any]:
    """``measuring`` (``StageRun.estimate_cost``: the test split) plus this stage's other work, counted before it
    starts: prediction on validation images (``work``, from ``validation_work``) at the pace just measured, the
    programs compressed on the way at ``probe_seconds`` each (``time_one_probe``), and fine-tune steps at the
    baseline training's pace (from the baseline's record).  Each part is a lower bound (a palette over every layer,
    and DKM's clustering, take longer than what is timed); printed with the parameter that bounds it."""
    cost = dict(measuring)
    per_image = cost["seconds_per_image"]
    training = baseline.get("training") or {}
    batch = int((baseline.get("train_config") or {}).get("batch_size") or 0)
    pace = (float(training["seconds"]) / (int(training["steps"]) * batch)
            if training.get("steps") and training.get("seconds") and batch else None)
    tuned = [n for n in recipes if RECIPES[n].data == "training"]
    finetune = {"recipes": tuned, "steps": finetune_steps, "batch_size": batch_size, "seconds_per_image": pace,
                "seconds": len(tuned) * finetune_steps * batch_size * pace if pace is not None else None}
    programs = work["sensitivity"]["probes"] + work["mixed"]["probes"] + work["mixed"]["checks"] + cost["variants"]
    compression = {"programs": programs, "seconds_per_program": probe_seconds, "seconds": programs * probe_seconds}
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
        pace_text = (f"about {pace * batch_size:.2f} s per step at the baseline training's pace, "
                     f"{finetune['seconds'] / 60:.1f} min" if pace is not None else "pace unknown")
        parts.append(f"fine-tunes: {len(tuned)} recipe(s) x {finetune_steps} steps ({pace_text}; bound: "
                     "finetune_steps, or leave recipes out)")
    parts.append(f"about {programs} programs compressed, at least {probe_seconds:.1f} s each (one single-layer 4-bit "
                 f"palette timed here; a palette over every layer takes longer), {compression['seconds'] / 60:.1f} "
                 "min")
    print("then: " + "; ".join(parts) + f". Prediction on validation images: about "
          f"{validation_seconds / 60:.1f} min; in all at least {cost['total_seconds'] / 60:.1f} min.")
    return cost
