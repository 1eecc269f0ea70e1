"""Stage 03's last step: the distilled student exported, compressed with a chosen recipe and measured.

``ShipMixin`` is part of ``DistillationRun`` (``playbook.stages.distillation``): the recipe choice (the ``recipe``
parameter, or read from ``quantization.json``, never by importing stage 02), ``ship()``, the export and compression
of the student, and the paragraph that explains the result.  It uses the run's ``cfg``, ``dataset``, ``baseline``,
``export_cfg``, ``model_dir``, ``out_dir``, ``lineage``, ``threads``, ``measure``, ``variant``, ``add_pitfall``,
``reference``, ``fp32_bytes``, the teacher and student facts ``DistillationRun.__init__`` sets, and the students
``compare_seeds()`` trained; it fills ``shipped`` and ``timings["ship"]``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from playbook.compress import CompressionError, compress_package, compress_torch, get_recipe, required_target
from playbook.coreml import export_model
from playbook.distill import subset
from playbook.records import RecordError, VariantRecord, read_stage_record, relative, sha256_path, stale_inputs
from playbook.stages.common import SMOKE
from playbook.train import save_checkpoint

FALLBACK_RECIPE = "int8-weights"


class ShipMixin:
    """``DistillationRun``'s ship steps: ``choose_recipe()``, ``ship()``, ``explain_shipped()``."""

    # ---- ship: export, compress, measure
    def choose_recipe(self) -> dict[str, Any]:
        """The compression recipe: ``recipe``, or for ``auto`` the smallest variant of ``quantization.json`` that
        met that stage's accuracy budget (a recipe name as run there, not a ``-keep`` variant, whose exceptions
        name the teacher's layers); ``int8-weights`` when there is no usable record."""
        if self.cfg.recipe != "auto":
            return {"recipe": self.cfg.recipe, "why": "set by the `recipe` parameter", "source": None}
        root = self.model_dir
        if not (root / "quantization.json").exists():
            return {"recipe": FALLBACK_RECIPE, "source": None,
                    "why": "no quantization.json (stage 02 has not run): int8 weights, the recipe coremltools "
                           "documents as nearly lossless"}
        try:
            record = read_stage_record(root, "quantization")
        except RecordError as exc:
            return {"recipe": FALLBACK_RECIPE, "source": None, "why": f"quantization.json unreadable ({exc})"}
        if record.smoke != self.cfg.smoke:
            return {"recipe": FALLBACK_RECIPE, "source": None,
                    "why": f"quantization.json was made with smoke={record.smoke}, this run has smoke={self.cfg.smoke}"}
        stale = stale_inputs(root, record)
        if stale:
            return {"recipe": FALLBACK_RECIPE, "source": None,
                    "why": f"quantization.json is stale (inputs changed: {', '.join(stale)}); re-run 02"}
        candidates = [v for v in record.variants if v.get("within_budget") and isinstance(v.get("recipe"), dict)
                      and v.name == v.get("recipe").get("name") and v.get("recipe")["name"] != "fp16"]
        if not candidates:
            return {"recipe": FALLBACK_RECIPE, "source": "quantization.json",
                    "why": "no recipe of quantization.json met its accuracy budget"}
        best = min(candidates, key=lambda v: (v.size_bytes or 0, -(v.top1 or 0.0)))
        self.lineage["quantization.json"] = sha256_path(root / "quantization.json")
        qcfg = record.config
        measured = ", ".join(([f"{best.size_mb:.3f} MB"] if best.size_mb is not None else [])
                             + ([f"{best.delta_top1:+.2f} points on the teacher"] if best.delta_top1 is not None
                                else []))
        return {"recipe": best.name, "source": "quantization.json",
                "why": f"the smallest package of quantization.json within its {record.get('accuracy_budget')}-point "
                       f"budget" + (f": {measured}" if measured else ""),
                "teacher_delta_top1": best.delta_top1, "teacher_size_bytes": best.size_bytes,
                "finetune": {"steps": int(qcfg.get("finetune_steps", 200)),
                             "lr": float(qcfg.get("finetune_lr", 0.002)),
                             "batch_size": int(qcfg.get("batch_size", 64)), "seed": int(qcfg.get("seed", 0))}}

    def ship(self) -> list[VariantRecord]:
        """Export the distilled student of the first seed (fixed in advance: no choice on the test split), compress
        it with the chosen recipe, and measure both packages like every other variant."""
        if not self.students:
            raise RuntimeError("DistillationRun: call compare_seeds() before ship()")
        start = time.perf_counter()
        seed = self.cfg.seeds[0]
        student = self.students[seed]["distilled"].model
        choice = self.choose_recipe()
        recipe = get_recipe(choice["recipe"])
        facts = {"technique": "distillation", "teacher": self.baseline.record["model_config"],
                 "teacher_parameters": self.teacher_params, "student": self.cfg.student,
                 "student_options": dict(self.cfg.student_options), "student_parameters": self.student_params,
                 "parameter_ratio": self.param_ratio, "temperature": self.cfg.temperature, "alpha": self.cfg.alpha,
                 "beta": self.cfg.beta, "seed": seed, "epochs": self.cfg.epochs(),
                 "train_images": len(subset(self.dataset, self.cfg.train_images).train),
                 "pytorch_test_top1": self.students[seed]["distilled"].top1}
        weights = self.out_dir / "student.pt"  # the shipped student's weights: reload with train.load_checkpoint
        save_checkpoint(student, weights, {"model": self.cfg.student_config().to_dict(), **{
            k: facts[k] for k in ("temperature", "alpha", "beta", "seed", "epochs", "train_images")},
            "teacher_checkpoint_sha256": self.teacher_sha256})
        facts["student_checkpoint"] = relative(weights, self.model_dir)
        with self.threads():
            current = self.export_cfg.minimum_deployment_target
            base = self._export(student, current, f"student-{self.cfg.precision}")
        plain = self.measure(f"student-{self.cfg.precision}", base,
                             f"distilled {self.cfg.student} student ({self.student_params:,} parameters, "
                             f"{self.param_ratio:.0%} of the teacher), {self.cfg.precision.upper()}, uncompressed",
                             **facts, recipe=None, precision=self.cfg.precision, deployment_target=current,
                             size_ratio_vs_fp32=self.fp32_bytes / max(1, self._size(base)))
        target = required_target(current, recipe.min_target)
        name = f"student-{recipe.name}"
        try:
            with self.threads():
                path, compress_details = self._compress(student, recipe, target, base if target == current else None,
                                                        choice, name)
        except CompressionError as exc:
            self.add_pitfall(f"{recipe.name} refused on the student", f"{exc.coremltools_message} -- {exc.hint}")
            self.shipped = {"choice": choice, "variants": [plain.name], "refused": exc.to_dict()}
            return [plain]
        packed = self.measure(name, path, f"distilled {self.cfg.student} student compressed with {recipe.name}: "
                                          f"{recipe.description}",
                              **facts, recipe=recipe.to_dict(), precision=recipe.precision or self.cfg.precision,
                              deployment_target=target, weight_threshold=self.cfg.weight_threshold,
                              size_ratio_vs_fp32=self.fp32_bytes / max(1, self._size(path)), details=compress_details)
        self.shipped = {"choice": choice, "variants": [plain.name, packed.name], "shipped": packed.name,
                        "size_ratio_vs_teacher_fp32": self.fp32_bytes / packed.size_bytes,
                        "delta_top1_vs_teacher_fp32": packed.delta_top1,
                        "compression_delta_top1": packed.top1 - plain.top1}
        self.timings["ship"] = time.perf_counter() - start
        return [plain, packed]

    def _export(self, student: nn.Module, target: str, stem: str, precision: str | None = None,
                folder: Path | None = None, recipe: Any = None) -> Path:
        cfg = self.export_cfg.replace(precision=precision or self.cfg.precision, minimum_deployment_target=target)
        made_by = {"playbook.recipe": recipe.name, "playbook.weights": recipe.description} if recipe else {}
        return export_model(student, self.dataset, cfg, folder or self.out_dir, stem,
                            metadata={"playbook.stage": "distillation", "playbook.model": self.cfg.model,
                                      "playbook.student": self.cfg.student, "playbook.variant": stem,
                                      **made_by}).path

    @staticmethod
    def _size(path: Path) -> int:
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

    def _compress(self, student: nn.Module, recipe: Any, target: str, base: Path | None, choice: dict[str, Any],
                  name: str) -> tuple[Path, dict[str, Any]]:
        precision = recipe.precision or self.cfg.precision
        if recipe.side == "coreml":
            if base is None or precision != self.cfg.precision:
                base = self._export(student, target, f"{precision}-{target}", precision, self.out_dir / "_base")
            made = compress_package(recipe, base, self.out_dir, name, self.cfg.weight_threshold,
                                    metadata={"playbook.stage": "distillation"})
            return made.path, {"messages": list(made.messages), "compress_seconds": made.seconds}
        ft = choice.get("finetune") or {"steps": 200, "lr": 0.002, "batch_size": 64, "seed": 0}
        steps = SMOKE.steps(ft["steps"]) if self.cfg.smoke else ft["steps"]
        tc = compress_torch(recipe, student, self.dataset, steps, ft["lr"], ft["batch_size"],
                            self.cfg.weight_threshold, ft["seed"])
        with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors, at trace time
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
            path = self._export(tc.model, target, name, precision, recipe=recipe)
        return path, {**tc.details, "compress_seconds": tc.seconds, "finetune_steps": tc.finetune_steps}

    def explain_shipped(self) -> str:
        """The stacked result in one paragraph: size against the FP32 teacher, accuracy against it."""
        if not self.shipped or "shipped" not in self.shipped:
            return "No compressed student was measured (see the pitfalls)."
        v = self.variant(self.shipped["shipped"])
        plain = self.variant(self.shipped["variants"][0])
        vs = v.vs_reference
        return (f"`{v.name}`: {v.size_bytes / 1e3:.1f} kB against the FP32 teacher's {self.fp32_bytes / 1e3:.1f} kB "
                f"(**{self.fp32_bytes / v.size_bytes:.1f}x smaller**), test top-1 {v.top1:.2f}% "
                f"[{v.top1_ci[0]:.2f}, {v.top1_ci[1]:.2f}] against the teacher's "
                f"{self.reference.correct.mean() * 100:.2f}%: "
                f"**{vs.delta_top1:+.2f} points**, paired 95% CI [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}], McNemar p = "
                f"{vs.p_value:.3g}. The uncompressed student ({plain.name}, {plain.size_bytes / 1e3:.1f} kB) scores "
                f"{plain.top1:.2f}%, so compression with `{self.shipped['choice']['recipe']}` costs "
                f"{v.top1 - plain.top1:+.2f} points. Recipe: {self.shipped['choice']['why']}.")
