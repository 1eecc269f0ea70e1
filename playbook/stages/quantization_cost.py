"""Stage 02's cost, said before its first recipe: what measuring, probing, compressing and fine-tuning will take.

Plain functions of what they count (the stage passes its config, recipes, layers and data): ``validation_work``
counts the validation images the analyses will predict, ``time_one_probe`` times the unit of compression,
``teacher_work`` says whether the fine-tunes' teacher logits are still to compute, and ``stage_cost`` adds these and
the fine-tunes to the test-split measuring cost (``StageRun.estimate_cost``) and prints the whole with the parameter
that bounds each part (issue 18: a 4.65 M-parameter network spends most of the stage outside the test-split
measurement).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

from playbook.compress import RECIPES, WeightLayer, compress_package, get_recipe
from playbook.compress.search import AllocationSettings, LayerProbes, validation_subset
from playbook.data import Dataset
from playbook.distill import teacher_logits_path
from playbook.paths import default_cache_dir


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


def teacher_work(enabled: bool, dataset: Dataset, baseline: Any,
                 cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The FP32 model's logits the fine-tunes learn from (``finetune_teacher``, ``QuantizationRun.teach_finetunes``):
    how many training images they cover and whether ``distill.teacher_logits`` has them cached under ``cache_dir``
    (default: ``default_cache_dir()``) already; ``None`` when the teacher is off."""
    if not enabled:
        return None
    path = teacher_logits_path(dataset, baseline["training"]["checkpoint_sha256"], cache_dir or default_cache_dir())
    return {"images": len(dataset.train), "cached": path.exists(), "path": str(path)}


def fine_tunes_learn_from_teacher(enabled: bool, recipes: Sequence[str], finetune_steps: int) -> bool:
    """Whether the stage computes the FP32 model's logits for its fine-tunes: ``finetune_teacher`` is on, some recipe
    fine-tunes (``data="training"``) and the fine-tunes take steps.  The stage and its cost estimate both ask this."""
    return bool(enabled and finetune_steps and any(RECIPES[n].data == "training" for n in recipes))


def stage_cost(measuring: dict[str, Any], work: dict[str, Any], probe_seconds: float, recipes: Sequence[str],
               finetune_steps: int, batch_size: int, baseline: Any, teacher: dict[str, Any] | None,
               checks: int = 0, check_images: int = 0) -> dict[str, Any]:
    """``measuring`` (``StageRun.estimate_cost``: the test split) plus this stage's other work, counted before it
    starts: prediction on validation images (``work``, from ``validation_work``) at the pace just measured, the
    programs compressed on the way at ``probe_seconds`` each (``time_one_probe``), the teacher's logits on the
    training images when some recipe fine-tunes and they are not cached (``teacher``, from ``teacher_work``) at the
    test split's pace, fine-tune steps at the baseline training's pace (from the baseline's record) and each
    fine-tune's ``checks`` of agreement on ``check_images`` validation images (early stopping) at the test split's
    pace; a fine-tune that stops early costs less.  Each part
    is a lower bound (a palette over every layer, and DKM's clustering, take longer than what is timed); printed with
    the parameter that bounds it."""
    cost = dict(measuring)
    per_image = cost["seconds_per_image"]
    training = baseline.get("training") or {}
    batch = int((baseline.get("train_config") or {}).get("batch_size") or 0)
    pace = (float(training["seconds"]) / (int(training["steps"]) * batch)
            if training.get("steps") and training.get("seconds") and batch else None)
    tuned = [n for n in recipes if RECIPES[n].data == "training"]
    checks = min(checks, finetune_steps) if check_images else 0
    checked = [n for n in tuned if RECIPES[n].early_stop]  # a recipe may run every step unchecked
    checking = len(checked) * checks * check_images * per_image
    # a recipe's steps_factor (e.g. torch-int4-qat's 2) multiplies its steps
    total_steps = round(sum(RECIPES[n].steps_factor for n in tuned) * finetune_steps)
    finetune = {"recipes": tuned, "steps": finetune_steps, "total_steps": total_steps, "batch_size": batch_size,
                "seconds_per_image": pace, "checks": checks, "check_images": check_images, "check_seconds": checking,
                "seconds": total_steps * batch_size * pace + checking if pace is not None else None}
    taught = None  # the record's teacher_logits: set when the fine-tunes will use the teacher
    if teacher is not None and fine_tunes_learn_from_teacher(True, recipes, finetune_steps):
        taught = {**teacher, "seconds_per_image": per_image,
                  "seconds": 0.0 if teacher["cached"] else teacher["images"] * per_image}
    programs = work["sensitivity"]["probes"] + work["mixed"]["probes"] + work["mixed"]["checks"] + cost["variants"]
    compression = {"programs": programs, "seconds_per_program": probe_seconds, "seconds": programs * probe_seconds}
    validation_seconds = work["images"] * per_image
    cost.update(validation=work, validation_seconds=validation_seconds, finetune=finetune, compression=compression,
                teacher_logits=taught, total_seconds=cost["accuracy_seconds"] + validation_seconds
                + compression["seconds"] + (finetune["seconds"] or 0.0) + (taught["seconds"] if taught else 0.0))
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
    if taught and not taught["cached"]:
        parts.append(f"teacher logits: the FP32 model on {taught['images']:,} training images, once (about "
                     f"{per_image * 1000:.1f} ms per image at the test split's pace, {taught['seconds'] / 60:.1f} min; "
                     "cached for later runs; bound: finetune_teacher=False)")
    if tuned:
        pace_text = (f"about {pace * batch_size:.2f} s per step at the baseline training's pace, "
                     f"{finetune['seconds'] / 60:.1f} min" if pace is not None else "pace unknown")
        check_text = (f", {checks} checks x {check_images:,} validation images each (finetune_checks)"
                      if checks else "")
        parts.append(f"fine-tunes: {len(tuned)} recipe(s), at most {total_steps:,} steps in all ({finetune_steps} "
                     f"each, more where a recipe asks){check_text} ({pace_text}; bound: finetune_steps or "
                     "finetune_epochs, or leave recipes out)")
    parts.append(f"about {programs} programs compressed, at least {probe_seconds:.1f} s each (one single-layer 4-bit "
                 f"palette timed here; a palette over every layer takes longer), {compression['seconds'] / 60:.1f} "
                 "min")
    print("then: " + "; ".join(parts) + f". Prediction on validation images: about "
          f"{validation_seconds / 60:.1f} min; in all at least {cost['total_seconds'] / 60:.1f} min.")
    return cost
