"""Stage 03's two choices made before any student trains: the compression recipe, and the student's width.

Plain functions of records and measured sizes (the stage reads ``quantization.json`` once, with
``usable_quantization_record``, and passes it in):

* ``choose_recipe``: ``recipe``, or for ``auto`` the smallest package of ``quantization.json`` that met that stage's
  accuracy budget on the teacher (read from the record, never by importing stage 02), else int8 weights.
* ``recipe_rate``: how many bytes one eligible weight element took on the teacher with the chosen recipe
  (``distill.bytes_per_element``), the rate ``plan_student`` predicts a student's compressed size with.
* ``plan_student``: the widest candidate student whose compressed package is predicted to be at least
  ``min_size_ratio`` times smaller than the teacher's FP32 package (``distill.choose_student``), with the reason.

The size of an untrained student's FP16 package is exact (it does not depend on the weights' values), so the only
estimate is the recipe's rate, which the record states beside the package finally measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from playbook.compress.apply import FinetuneConfig
from playbook.compress.search import AllocationSettings
from playbook.distill import bytes_per_element, choose_student
from playbook.records import RecordError, StageRecord, read_stage_record, stale_inputs

FALLBACK_RECIPE = "int8-weights"  # without a usable quantization.json: the recipe coremltools documents as nearly lossless
INT8_BYTES_PER_ELEMENT = 1.0  # int8 weights: one byte per element (per-channel scales are negligible)


def usable_quantization_record(root: Path, smoke: bool) -> tuple[StageRecord | None, str]:
    """``quantization.json`` when it exists, reads, was made with the same ``smoke`` and its inputs are unchanged;
    else ``None`` and why not."""
    if not (root / "quantization.json").exists():
        return None, "no quantization.json (stage 02 has not run)"
    try:
        record = read_stage_record(root, "quantization")
    except RecordError as exc:
        return None, f"quantization.json unreadable ({exc})"
    if record.smoke != smoke:
        return None, f"quantization.json was made with smoke={record.smoke}, this run has smoke={smoke}"
    stale = stale_inputs(root, record)
    if stale:
        return None, f"quantization.json is stale (inputs changed: {', '.join(stale)}); re-run 02"
    return record, ""


def budget_recipes(record: StageRecord) -> list[Any]:
    """The variants of stage 02 that met its accuracy budget on the teacher and are a recipe as run there (not a
    ``-keep`` variant, whose exceptions name the teacher's layers, and not plain FP16)."""
    return [v for v in record.variants if v.get("within_budget") and isinstance(v.get("recipe"), dict)
            and v.name == v.get("recipe").get("name") and v.get("recipe")["name"] != "fp16"]


def choose_recipe(recipe: str, record: StageRecord | None, why_not: str) -> dict[str, Any]:
    """The compression recipe and why: ``recipe`` when set, for ``"auto"`` the smallest package of ``record`` (the
    usable ``quantization.json``, else ``None`` and ``why_not``) within its accuracy budget, with stage 02's
    fine-tune and allocation settings; else ``int8-weights``.  A mixed-bit recipe within the budget is preferred to a
    smaller uniform one: the student's allocation is fitted again to its own size budget, at as many bits per weight
    as fit, where a uniform recipe fixes them (2-bit DKM, the smallest within budget in one run, cost the width-12
    student -2.48 points; the fitted palettes of another run cost the width-10 student -1.03)."""
    if recipe != "auto":
        return {"recipe": recipe, "why": "set by the `recipe` parameter", "source": None}
    if record is None:
        return {"recipe": FALLBACK_RECIPE, "source": None,
                "why": why_not + (": int8 weights, the recipe coremltools documents as nearly lossless"
                                  if why_not.startswith("no quantization.json") else "")}
    candidates = budget_recipes(record)
    if not candidates:
        return {"recipe": FALLBACK_RECIPE, "source": "quantization.json",
                "why": "no recipe of quantization.json met its accuracy budget"}
    def smallest(variants: list[Any]) -> Any:
        return min(variants, key=lambda v: (v.size_bytes or 0, -(v.top1 or 0.0)))

    best = overall = smallest(candidates)
    fitted = [v for v in candidates if v.get("recipe").get("allocation") == "sensitivity"]
    if fitted:
        best = smallest(fitted)
    qcfg = record.config
    measured = ", ".join(([f"{best.size_mb:.3f} MB"] if best.size_mb is not None else [])
                         + ([f"{best.delta_top1:+.2f} points on the teacher"] if best.delta_top1 is not None else []))
    budget = f"within its {record.get('accuracy_budget')}-point budget"
    why = (f"the smallest package of quantization.json {budget}" if best is overall else
           f"the smallest mixed-bit recipe of quantization.json {budget}, preferred to its smallest package "
           f"({overall.name}, {overall.size_bytes:,} bytes): the student's palettes are fitted again to its own "
           "size budget, at as many bits per weight as fit")
    return {"recipe": best.name, "source": "quantization.json", "why": why + (f": {measured}" if measured else ""),
            "teacher_delta_top1": best.delta_top1, "teacher_size_bytes": best.size_bytes,
            # the fine-tune stage 02 ran (steps resolved, early stopping, its learning rate; not where the rate came
            # from); a record older than that field: its config
            "finetune": {k: v for k, v in (record.get("finetune") or {}).items() if k in FinetuneConfig.field_names()}
            or {
                "steps": int(qcfg.get("finetune_steps", FinetuneConfig.steps)),
                "lr": float(qcfg.get("finetune_lr") or FinetuneConfig.lr),
                "batch_size": int(qcfg.get("batch_size", FinetuneConfig.batch_size)),
                "seed": int(qcfg.get("seed", FinetuneConfig.seed))},
            "allocation": {"probe_images": int(qcfg.get("sensitivity_images", AllocationSettings.probe_images)),
                           "check_images": int(qcfg.get("search_images", AllocationSettings.check_images)),
                           "max_top1_drop": float(record.get("accuracy_budget") or 1.0)}}


def recipe_rate(recipe: str, record: StageRecord | None, why_not: str, teacher_fp16_bytes: int,
                teacher_eligible: int) -> dict[str, Any]:
    """Bytes per eligible weight element that ``recipe`` took on the teacher (from ``record``, the usable
    ``quantization.json``), or the nominal int8 rate for the fallback recipe; ``bytes_per_element`` is ``None`` when
    neither is known."""
    measured = {v.name: v for v in budget_recipes(record)} if record is not None else {}
    if record is not None:  # a recipe set by hand may have missed stage 02's budget: its size is still measured
        measured.update({v.name: v for v in record.variants if v.name == recipe and v.size_bytes})
    if recipe in measured and teacher_eligible > 0:
        size = int(measured[recipe].size_bytes)
        return {"recipe": recipe, "bytes_per_element": bytes_per_element(teacher_fp16_bytes, teacher_eligible, size),
                "source": f"quantization.json: the teacher's {recipe} package, {size:,} bytes, against its FP16 "
                          f"package, {teacher_fp16_bytes:,} bytes, over {teacher_eligible:,} eligible weight elements"}
    if recipe == FALLBACK_RECIPE:
        return {"recipe": recipe, "bytes_per_element": INT8_BYTES_PER_ELEMENT,
                "source": "nominal: int8 weights take one byte per element" + (f" ({why_not})" if why_not else "")}
    return {"recipe": recipe, "bytes_per_element": None,
            "source": f"{recipe} has no measured package in quantization.json" + (f" ({why_not})" if why_not else "")}


def size_fitted_rate(rate: dict[str, Any], bits: float) -> dict[str, Any]:
    """``rate`` raised to ``bits`` per weight element when it is lower: the plan for a mixed-bit recipe, whose
    allocation on the student is fitted to the size budget.  Measured on the default ResNet student (Fashion-MNIST,
    size budget 35.7 KB): width 12 fitted at 2.96 bits per weight lost 0.76 points to compression (-1.58 in all),
    width 10 at 4.30 bits lost 0.27 (-1.18 in all); a narrower student with more bits per weight won."""
    per_element = rate.get("bytes_per_element")
    if per_element is None or per_element >= bits / 8:
        return rate
    return {**rate, "bytes_per_element": bits / 8, "teacher_bytes_per_element": per_element,
            "source": f"{rate['source']}; planned at {bits:g} bits per weight (student_bits) instead of the "
                      f"teacher's {8 * per_element:.2f}: the allocation is fitted to the size budget, and fewer bits "
                      "per weight cost a student more accuracy than a narrower width"}


def fitted_sentence(subject: str, allocation: dict[str, Any] | None, size_bytes: int) -> str | None:
    """How a mixed-bit allocation (``BitAllocator.allocate``'s details) was fitted to a size budget, in one sentence
    about ``subject`` (the recipe's name, or "per-layer palettes"); ``None`` when it had no size budget (or the recipe
    is not mixed)."""
    info = allocation or {}
    if not info.get("max_bytes"):
        return None
    check = (info.get("checks") or [{}])[-1]
    return (f"{subject} fitted to {info['max_bytes']:,} bytes: the widest of {info['path_length']} allocations whose "
            f"package fits ({len(info['size_checks'])} compressed to find it), {info['bits_per_weight']:.2f} bits per "
            f"weight, {size_bytes:,} bytes"
            + (f", validation top-1 {check['val_delta_top1']:+.2f} points against the uncompressed student"
               if "val_delta_top1" in check else "")
            + ("" if info.get("fits_size") else "; even the narrowest allocation is larger"))


def plan_student(widths: Sequence[int], configured: dict[str, Any], measure_candidate: Callable[[int], dict[str, Any]],
                 rate: dict[str, Any], fp32_bytes: int, min_size_ratio: float) -> dict[str, Any]:
    """The student's options: ``configured`` with the chosen ``width``, and why.  ``measure_candidate(width)``
    returns ``{"parameters", "fp16_bytes", "eligible"}`` of an untrained student of that width; with no
    ``widths`` or no known rate the configured student is kept."""
    if not widths:
        return {"options": dict(configured), "chosen": False, "why": "student_widths=[]: the configured student"}
    if rate.get("bytes_per_element") is None:
        return {"options": dict(configured), "chosen": False,
                "why": f"no size rate for the recipe ({rate['source']}): the configured student"}
    candidates = [{"width": int(w), **measure_candidate(int(w))} for w in widths]
    max_bytes = fp32_bytes / min_size_ratio
    plan = choose_student(candidates, float(rate["bytes_per_element"]), max_bytes)
    chosen = plan["chosen"]
    return {"options": {**configured, "width": chosen["width"]}, "chosen": True, "candidates": plan["candidates"],
            "max_bytes": max_bytes, "min_size_ratio": min_size_ratio, "rate": rate, "fits": plan["fits"],
            "predicted_bytes": chosen["predicted_bytes"],
            "why": (f"the widest of widths {list(widths)} whose {rate['recipe']} package is predicted at most "
                    f"{max_bytes / 1e3:,.1f} KB ({min_size_ratio:g}x smaller than the teacher's FP32 package): width "
                    f"{chosen['width']}, {chosen['parameters']:,} parameters, predicted "
                    f"{chosen['predicted_bytes'] / 1e3:,.1f} KB" if plan["fits"] else
                    f"no width of {list(widths)} is predicted to reach {min_size_ratio:g}x with {rate['recipe']} "
                    f"(at most {max_bytes / 1e3:,.1f} KB): the smallest, width {chosen['width']}, predicted "
                    f"{chosen['predicted_bytes'] / 1e3:,.1f} KB")}


def eligible_elements(package: Path, threshold: int) -> int:
    """Elements of the weights a compression recipe would touch in a saved package (``compress.weight_layers``)."""
    from playbook.compress import weight_layers

    return sum(x.size for x in weight_layers(package, threshold) if x.eligible)


def width_package(student: str, options: dict[str, Any], width: int, dataset: Any, export_cfg: Any,
                  threshold: int) -> dict[str, Any]:
    """An untrained ``student`` of ``width`` exported as FP16: its parameters, package bytes (those of a trained one:
    training changes no size once every value is distinct) and eligible weight elements, which ``plan_student``
    scales by the recipe's rate."""
    import tempfile

    import torch

    from playbook.coreml import directory_size, export_model
    from playbook.models import count_parameters
    from playbook.train import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(student, {**options, "width": width}), dataset)
    with torch.no_grad():  # fresh BatchNorm weights (all 1, biases 0) would share one const each in the package
        for value in model.state_dict().values():  # (coreml.conversion_passes), which a trained student's do not
            if value.is_floating_point():
                value.add_(torch.rand(value.shape) * 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, dataset, export_cfg.replace(precision="fp16"), Path(tmp), f"width-{width}").path
        return {"parameters": count_parameters(model), "fp16_bytes": directory_size(path),
                "eligible": eligible_elements(path, threshold)}
