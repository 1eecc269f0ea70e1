"""Stage 03, knowledge distillation: the baseline teaches a compact student, which is then compressed and shipped.

``DistillationConfig`` is the parameter list of ``notebooks/03_distillation.ipynb``; ``DistillationRun`` holds the
notebook's steps in order (teacher and student, soft labels, cached teacher logits, temperature and alpha sweeps,
distilled-versus-scratch over seeds, ship); ``run_distillation`` runs them all and writes ``distillation.json``.

The technique (loss, cached logits, feature term) lives in ``playbook.distill`` and knows nothing of this stage.
The teacher is the baseline, rebuilt from ``baseline.json`` (``stages.common.load_baseline``), or the user's own
``checkpoint``.  Before any student trains, ``stages.distillation_student`` chooses the compression recipe (read
from ``quantization.json``, never by importing stage 02; else int8 weights) and the student's width (the widest of
``student_widths`` predicted to meet ``min_size_ratio``).  The student is compressed through the one entry point
``compress.compress``, like every variant of stage 02 (mixed bit-widths and joint recipes included), and a
PyTorch-side fine-tune learns from the teacher's cached logits.  Tables and narrative are functions of the record in
``playbook.views.distillation``.

Fairness of the comparison: for each seed the student is built from the same initial weights and trained on the
same images in the same order with the same optimiser, schedule and budget, once with plain cross-entropy
(*scratch*) and once with the distillation loss (*distilled*); only the loss differs.

Cost: a step's students are independent; they train side by side in one-thread worker processes when
``env.plan_workers`` says so (``student_training``; each step's plan is kept under ``worker_plans``), else here
one after another.  The seed comparison may use fewer images (``train_images``) than the shipped student.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from playbook.architectures import forward_flops
from playbook.compress import CompressionError, get_recipe, weight_layers
from playbook.compress.apply import CompressConfig, Compressed, FinetuneConfig, ModelSource, compress
from playbook.compress.search import AllocationSettings, BitAllocator, LayerProbes, ValidationReference
from playbook.config import ConfigError, check_choice, check_range
from playbook.coreml import ExportConfig, directory_size, export_model, predict_split
from playbook.distill import (DistillConfig, TeacherLogits, check_temperature, feature_shape, file_sha256, logit_loss,
                              paired_seed_test, soft_label_examples, subset, teacher_logits)
from playbook.env import CpuClock, core_budget
from playbook.metrics import compare_paired
from playbook.models import check_model_name, count_parameters
from playbook.paths import default_cache_dir
from playbook.records import StageRecord, VariantRecord, relative, sha256_path
from playbook.stages.common import SMOKE, DownstreamRun, MeasuredStageConfig
from playbook.stages.distillation_student import (choose_recipe, eligible_elements, fitted_sentence, plan_student,
                                                 recipe_rate, size_fitted_rate, usable_quantization_record,
                                                 width_package)
from playbook.student_training import StudentJob, StudentResult, train_pending
from playbook.train import ModelConfig, TrainConfig, build_model, evaluate, load_checkpoint, save_checkpoint


@dataclasses.dataclass(frozen=True)
class DistillationConfig(MeasuredStageConfig):
    """The parameters of ``03_distillation`` (see the notebook's parameters cell for each one's meaning)."""

    dataset: str = ""
    checkpoint: str = ""
    student: str = "resnet"
    student_options: dict[str, Any] = dataclasses.field(default_factory=lambda: {"width": 8})
    student_widths: list[int] = dataclasses.field(default_factory=lambda: [8, 10, 12, 16])
    min_size_ratio: float = 20.0
    student_bits: float = 4.0
    temperature: float = 4.0
    alpha: float = 0.5
    beta: float = 0.0
    feature_layer: str = "stages"
    student_epochs: int = 3
    student_lr: float = 0.1
    batch_size: int = 128
    train_images: int = 18000
    ship_train_images: int = 0
    augment: bool = False
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    sweep_temperatures: list[float] = dataclasses.field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    sweep_alphas: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.5, 0.9])
    sweep_train_images: int = 10000
    sweep_epochs: int = 2
    recipe: str = "auto"
    precision: str = "fp16"
    weight_threshold: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_name(self.student)
        self.distill_config()  # validates temperature (> 0), alpha ([0, 1]), beta (>= 0), feature_layer
        check_range("student_epochs", self.student_epochs, 1)
        check_range("student_lr", self.student_lr, 0.0)
        if not self.student_lr > 0:
            raise ConfigError(f"student_lr={self.student_lr!r} must be > 0")
        check_range("batch_size", self.batch_size, 1)
        check_range("train_images", self.train_images, 0)
        check_range("ship_train_images", self.ship_train_images, 0)
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.student_widths):
            raise ConfigError(f"student_widths={self.student_widths!r} must be widths >= 1 (e.g. [8, 12, 16]), or [] "
                              "to train the student of student_options as given")
        check_range("min_size_ratio", self.min_size_ratio, 1.0)
        check_range("student_bits", self.student_bits, 1.0, 16.0)
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds={self.seeds!r} must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={self.seeds!r} must not repeat a seed (a repeat is the same run twice)")
        for t in self.sweep_temperatures:
            check_temperature("sweep_temperatures", t)
        for a in self.sweep_alphas:
            check_range("sweep_alphas", a, 0.0, 1.0)
        check_range("sweep_train_images", self.sweep_train_images, 1)
        check_range("sweep_epochs", self.sweep_epochs, 1)
        if self.recipe != "auto":
            recipe = get_recipe(self.recipe)  # unknown names raise ConfigError listing the catalogue
            if recipe.name == "fp16":
                raise ConfigError("recipe='fp16' compresses nothing (the student is exported in `precision` anyway); "
                                  "choose a compression recipe or 'auto'")
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_range("weight_threshold", self.weight_threshold, 0)

    def distill_config(self, temperature: float | None = None, alpha: float | None = None) -> DistillConfig:
        """The objective (``temperature``/``alpha`` override the configured ones, for the sweeps)."""
        return DistillConfig(temperature=self.temperature if temperature is None else float(temperature),
                             alpha=self.alpha if alpha is None else float(alpha), beta=self.beta,
                             feature_layer=self.feature_layer)

    def logit_images(self) -> int:
        """Training images that need the teacher's logits: the largest of the seed comparison's, the shipped
        student's and the sweeps' subsets, which are prefixes of one split (0: every training image)."""
        sizes = (self.train_images, self.ship_train_images, self.sweep_train_images)
        return max(sizes) if all(sizes) else 0

    def epochs(self) -> int:
        """Epochs of the seed comparison (the smoke policy caps them)."""
        return SMOKE.epochs(self.student_epochs) if self.smoke else self.student_epochs

    def sweep_epoch_count(self) -> int:
        return SMOKE.epochs(self.sweep_epochs) if self.smoke else self.sweep_epochs

    def train_config(self, seed: int, sweep: bool = False) -> TrainConfig:
        """One student training run: identical for scratch and distilled students of the same ``seed``."""
        return TrainConfig(epochs=self.sweep_epoch_count() if sweep else self.epochs(), batch_size=self.batch_size,
                           lr=self.student_lr, augment=self.augment, validate=False, seed=seed, threads=self.threads)


class DistillationRun(DownstreamRun):
    """Stage 03's steps, in the notebook's order: ``soft_label_examples()``, ``cache_teacher_logits()``,
    ``sweep_temperature()``, ``sweep_alpha()``, ``compare_seeds()``, ``ship()``, then ``finish()``."""

    stage = "distillation"

    def __init__(self, cfg: DistillationConfig) -> None:
        self._clock = CpuClock.now()
        super().__init__(cfg)
        self.cfg: DistillationConfig = cfg
        record = self.baseline.record
        self.export_cfg = ExportConfig.from_dict(record["exports"]["fp32"]["config"])
        self.teacher_checkpoint = Path(cfg.checkpoint or record["training"]["checkpoint"])
        if cfg.checkpoint:
            self.teacher = copy.deepcopy(self.model)
            with self.threads():
                load_checkpoint(self.teacher, self.teacher_checkpoint)
            self.teacher.eval()
            baseline_ckpt = Path(record["training"]["checkpoint"])
            if not baseline_ckpt.exists() or file_sha256(baseline_ckpt) != file_sha256(self.teacher_checkpoint):
                self.warnings.append(
                    f"the teacher is checkpoint={cfg.checkpoint!r}, not the checkpoint 01_baseline exported "
                    f"({baseline_ckpt}); every change below is still measured against the baseline's FP32 package")
        else:
            self.teacher = self.model
        self.teacher_sha256 = file_sha256(self.teacher_checkpoint)
        self.teacher_params = count_parameters(self.teacher)
        self.recipe_choice = self.choose_recipe()
        self.student_plan = self.plan_student()
        self.student_cfg = ModelConfig(cfg.student, self.student_plan["options"])
        with self.threads():
            probe = self.build_student(cfg.seeds[0])
        self.student_params = count_parameters(probe)
        self.teacher_flops = forward_flops(self.teacher, self.dataset)
        self.student_flops = forward_flops(probe, self.dataset)
        self.example = self.dataset.to_tensor(self.dataset.calib.images[:2])
        if cfg.beta > 0:  # fail early, with the field's name, when the feature layer does not fit
            self.feature_shapes = {"student": list(feature_shape(probe, cfg.feature_layer, self.example)[1:]),
                                   "teacher": list(feature_shape(self.teacher, cfg.feature_layer, self.example)[1:])}
        else:
            self.feature_shapes = None
        self.logits: TeacherLogits | None = None
        self.sweeps: dict[str, list[dict[str, Any]]] = {"temperature": [], "alpha": []}
        self.sweep_scratch: StudentResult | None = None
        self._sweep_memo: dict[tuple[float, float], StudentResult] = {}
        self.seed_results: list[dict[str, Any]] = []
        self.seed_stats: dict[str, Any] | None = None
        self.students: dict[int, dict[str, StudentResult]] = {}
        self.shipped: dict[str, Any] | None = None
        self.allocations: dict[str, Any] = {}
        self.worker_plans: dict[str, dict[str, Any]] = {}  # step -> how its students were trained (env.WorkerPlan)
        self.trained_in_workers: dict[str, Any] = {}  # student cache key -> distill.StudentTraining, this run
        self.cache_hits: dict[str, bool] = {}  # student cache key -> loaded from the cache (True) or trained now
        self.timings: dict[str, float] = {}

    # ---- the two networks
    def build_student(self, seed: int) -> nn.Module:
        """A freshly initialised student: the initial weights depend only on ``seed``."""
        torch.manual_seed(seed)
        return build_model(self.student_cfg, self.dataset)

    @property
    def param_ratio(self) -> float:
        return self.student_params / self.teacher_params

    # ---- what the teacher says
    def soft_label_examples(self, count: int = 3) -> dict[str, Any]:
        """The teacher's logits on the first test image of ``count`` different classes, for the soft-label plot."""
        with self.threads():
            return soft_label_examples(self.teacher, self.dataset,
                                       sorted(set(self.cfg.sweep_temperatures) | {1.0, self.cfg.temperature}), count)

    def cache_teacher_logits(self, progress: bool = True) -> TeacherLogits:
        """The teacher's logits on the training images the students use (``logit_images``), from the on-disk cache
        or computed once now."""
        start = time.perf_counter()
        with self.threads(), self.timer.step("teacher_logits"):
            self.logits = teacher_logits(self.teacher, subset(self.dataset, self.cfg.logit_images()),
                                         self.teacher_sha256, default_cache_dir(), progress=progress)
        self.timings["teacher_logits"] = time.perf_counter() - start
        return self.logits

    # ---- training one student
    def student_job(self, seed: int, distill: bool, temperature: float | None = None, alpha: float | None = None,
                    sweep: bool = False, ship: bool = False) -> StudentJob:
        """One student's training as data (``StudentJob``) on the sweeps', the shipped student's (``ship``) or the
        seed comparison's images; the teacher's logits lazily (a cached student never computes them)."""
        logits = None if self.cfg.augment else (  # augmented images: the teacher runs live on every batch
            lambda: (self.logits or self.cache_teacher_logits(progress=False)).logits)
        return StudentJob(self.build_student(seed),
                          subset(self.dataset, self.cfg.sweep_train_images if sweep else
                                 self.cfg.ship_train_images if ship else self.cfg.train_images),
                          self.cfg.train_config(seed, sweep),
                          self.cfg.distill_config(temperature, alpha) if distill else None, self.teacher,
                          self.teacher_sha256, logits, self.example, self.student_cfg.to_dict())

    def train_in_workers(self, step: str, runs: list[tuple[Any, ...]]) -> None:
        """Train the uncached students of ``runs`` (``student_job``'s arguments) in worker processes
        when the free cores allow (``train_pending``); ``train_student`` then finds them in the cache."""
        plan, done = train_pending([self.student_job(*run) for run in runs], core_budget(), self.cfg.threads,
                                   None if self.cfg.augment else lambda: (
                                       self.logits or self.cache_teacher_logits(progress=False)).logits)
        self.worker_plans[step] = plan.to_dict()
        self.trained_in_workers.update(done)

    def train_student(self, seed: int, distill: bool, temperature: float | None = None, alpha: float | None = None,
                      sweep: bool = False, ship: bool = False) -> StudentResult:
        """Train one student (``distill=False``: plain cross-entropy), or load what a worker or an earlier run
        trained, and score it: on the validation split for the sweeps (the test split stays out of every choice),
        on the test split for the seed comparison."""
        start = time.perf_counter()
        with self.threads():
            job = self.student_job(seed, distill, temperature, alpha, sweep, ship)
            trained = job.run()
            split = self.dataset.val if sweep and len(self.dataset.val) else self.dataset.test
            metrics = evaluate(job.student, self.dataset, split)
        fresh = trained.key in self.trained_in_workers  # trained by a worker of this run, not by an earlier run
        self.cache_hits[trained.key] = trained.from_cache and not fresh
        return StudentResult(
            kind="distilled" if distill else "scratch", seed=seed,
            temperature=(temperature if temperature is not None else self.cfg.temperature) if distill else None,
            alpha=(alpha if alpha is not None else self.cfg.alpha) if distill else None,
            split="val" if split is self.dataset.val else "test", top1=metrics.top1,
            seconds=trained.seconds if trained.from_cache else time.perf_counter() - start,
            final_loss=trained.final_loss, model=job.student.eval(),
            correct=np.asarray(metrics.correct, dtype=bool))

    # ---- sweeps (one seed, a training subset, validation split)
    def _sweep_point(self, temperature: float, alpha: float) -> StudentResult:
        key = (float(temperature), float(alpha))
        if key not in self._sweep_memo:
            self._sweep_memo[key] = self.train_student(self.cfg.seeds[0], True, temperature, alpha, sweep=True)
        return self._sweep_memo[key]

    def _sweep_reference(self) -> StudentResult:
        if self.sweep_scratch is None:
            self.sweep_scratch = self.train_student(self.cfg.seeds[0], False, sweep=True)
        return self.sweep_scratch

    def sweep_temperature(self) -> list[dict[str, Any]]:
        """Validation top-1 of students distilled at each of ``sweep_temperatures`` (``alpha`` fixed), one seed,
        ``sweep_train_images`` training images, ``sweep_epochs`` epochs; the scratch student is the reference."""
        start = time.perf_counter()
        with self.timer.step("sweep_temperature"):
            seed = self.cfg.seeds[0]
            self.train_in_workers("sweep_temperature", [(seed, False, None, None, True)] + [
                (seed, True, t, self.cfg.alpha, True) for t in self.cfg.sweep_temperatures
                if (float(t), float(self.cfg.alpha)) not in self._sweep_memo])
            scratch = self._sweep_reference()
            self.sweeps["temperature"] = [self._sweep_row(self._sweep_point(t, self.cfg.alpha), scratch)
                                          for t in self.cfg.sweep_temperatures]
        self.timings["sweep_temperature"] = time.perf_counter() - start
        return self.sweeps["temperature"]

    def sweep_alpha(self) -> list[dict[str, Any]]:
        """Validation top-1 of students distilled with each of ``sweep_alphas`` at the configured ``temperature``."""
        start = time.perf_counter()
        with self.timer.step("sweep_alpha"):
            seed = self.cfg.seeds[0]
            self.train_in_workers("sweep_alpha", [(seed, True, self.cfg.temperature, a, True) for a in self.cfg.sweep_alphas
                                                  if (float(self.cfg.temperature), float(a)) not in self._sweep_memo])
            scratch = self._sweep_reference()
            self.sweeps["alpha"] = [self._sweep_row(self._sweep_point(self.cfg.temperature, a), scratch)
                                    for a in self.cfg.sweep_alphas]
        self.timings["sweep_alpha"] = time.perf_counter() - start
        return self.sweeps["alpha"]

    def _sweep_row(self, r: StudentResult, scratch: StudentResult) -> dict[str, Any]:
        return {"temperature": r.temperature, "alpha": r.alpha, "val_top1": r.top1, "scratch_val_top1": scratch.top1,
                "gain": r.top1 - scratch.top1, "seconds": r.seconds, "final_loss": r.final_loss}

    def sweep_summary(self) -> dict[str, Any]:
        """What the sweeps say (for the narrative and the record), with the measured figures."""
        out: dict[str, Any] = {"seed": self.cfg.seeds[0], "epochs": self.cfg.sweep_epoch_count(),
                               "train_images": len(subset(self.dataset, self.cfg.sweep_train_images).train),
                               "split": "val" if len(self.dataset.val) else "test",
                               "scratch_val_top1": self.sweep_scratch.top1 if self.sweep_scratch else None}
        for which in ("temperature", "alpha"):
            rows = self.sweeps[which]
            if rows:
                best = max(rows, key=lambda r: r["val_top1"])
                worst = min(rows, key=lambda r: r["val_top1"])
                out[which] = {"best": best[which], "best_val_top1": best["val_top1"], "worst": worst[which],
                              "worst_val_top1": worst["val_top1"], "spread": best["val_top1"] - worst["val_top1"]}
        return out

    # ---- the fair comparison
    def compare_seeds(self) -> list[dict[str, Any]]:
        """For each seed, the same student from the same initial weights and data order, trained with plain
        cross-entropy and with distillation; test top-1, McNemar's exact test per seed, paired t-test over seeds.
        The shipped student (first seed, distilled, ``ship_train_images``) trains beside them in the same workers."""
        start = time.perf_counter()
        self.seed_results = []
        with self.timer.step("compare_seeds"):
            self.train_in_workers("compare_seeds", [(self.cfg.seeds[0], True, None, None, False, True)]  # longest
                                  + [(seed, distill) for seed in self.cfg.seeds for distill in (False, True)])
        for seed in self.cfg.seeds:
            with self.timer.step("compare_seeds"):
                scratch = self.train_student(seed, distill=False)
                distilled = self.train_student(seed, distill=True)
            self.students[seed] = {"scratch": scratch, "distilled": distilled}
            paired = compare_paired(scratch.correct, distilled.correct, resamples=self.mcfg.bootstrap_resamples)
            self.seed_results.append({"seed": seed, "scratch_top1": scratch.top1, "distilled_top1": distilled.top1,
                                      "gain": distilled.top1 - scratch.top1, "ci_low": paired.ci_low,
                                      "ci_high": paired.ci_high, "mcnemar_p": paired.p_value,
                                      "only_scratch_correct": paired.only_reference_correct,
                                      "only_distilled_correct": paired.only_variant_correct,
                                      "scratch_seconds": scratch.seconds, "distilled_seconds": distilled.seconds})
        self.seed_stats = paired_seed_test([r["scratch_top1"] for r in self.seed_results],
                                           [r["distilled_top1"] for r in self.seed_results])
        teacher_top1 = float(self.reference.correct.mean() * 100.0)
        gap = teacher_top1 - self.seed_stats["scratch_mean"]
        self.seed_stats.update(teacher_top1=teacher_top1, teacher_gap=gap,
                               recovered_share=self.seed_stats["gain_mean"] / gap if gap > 0 else None)
        self.timings["compare_seeds"] = time.perf_counter() - start
        return self.seed_results

    # ---- ship: export, compress, measure
    def choose_recipe(self) -> dict[str, Any]:
        """The compression recipe and why (``distillation_student.choose_recipe``: ``recipe``, or for ``auto`` the
        smallest package of ``quantization.json`` within that stage's accuracy budget, else int8 weights).  Reads
        ``quantization.json`` into ``self.quantization`` (``None`` when unusable), which the student plan and the
        chart use too."""
        self.quantization, self.quantization_why_not = usable_quantization_record(self.model_dir, self.cfg.smoke)
        choice = choose_recipe(self.cfg.recipe, self.quantization, self.quantization_why_not)
        if choice["source"] == "quantization.json":
            self.lineage["quantization.json"] = sha256_path(self.model_dir / "quantization.json")
        return choice

    def plan_student(self) -> dict[str, Any]:
        """The student's width: the widest of ``student_widths`` whose package, compressed with the chosen recipe at
        the rate it reached on the teacher (a mixed-bit recipe, fitted to the size: at least ``student_bits`` per
        weight), is predicted ``min_size_ratio`` times smaller than the teacher's FP32 package."""
        widths = list(self.cfg.student_widths[:2] if self.cfg.smoke else self.cfg.student_widths)
        fp16 = next((v for v in self.baseline_variants if v.get("precision") == "fp16"), None)
        if not widths or fp16 is None:
            return plan_student([], dict(self.cfg.student_options), None, {}, self.fp32_bytes, self.cfg.min_size_ratio)
        teacher_fp16 = fp16.package_path(self.model_dir)
        rate = recipe_rate(self.recipe_choice["recipe"], self.quantization, self.quantization_why_not,
                           directory_size(teacher_fp16), eligible_elements(teacher_fp16, self.cfg.weight_threshold))
        if get_recipe(self.recipe_choice["recipe"]).allocation == "sensitivity":  # its package is fitted to the size
            rate = size_fitted_rate(rate, self.cfg.student_bits)
        with self.threads(), self.timer.step("plan_student"):
            return plan_student(widths, dict(self.cfg.student_options),
                                lambda width: width_package(self.cfg.student, self.cfg.student_options, width,
                                                            self.dataset, self.export_cfg, self.cfg.weight_threshold),
                                rate, self.fp32_bytes, self.cfg.min_size_ratio)

    def ship(self) -> list[VariantRecord]:
        """Export the shipped student, distilled with the first seed (fixed in advance: no choice on the test split)
        on ``ship_train_images`` (the seed comparison's student when those are its images), compress it with the
        chosen recipe, and measure both packages like every other variant."""
        if not self.students:
            raise RuntimeError("DistillationRun: call compare_seeds() before ship()")
        start = time.perf_counter()
        seed = self.cfg.seeds[0]
        with self.timer.step("ship_student"):
            trained = self.train_student(seed, True, ship=True)
        student = trained.model
        choice = self.recipe_choice
        recipe = get_recipe(choice["recipe"])
        facts = {"technique": "distillation", "teacher": self.baseline.record["model_config"],
                 "teacher_parameters": self.teacher_params, "student": self.cfg.student,
                 "student_options": dict(self.student_cfg.knobs), "student_parameters": self.student_params,
                 "parameter_ratio": self.param_ratio, "temperature": self.cfg.temperature, "alpha": self.cfg.alpha,
                 "beta": self.cfg.beta, "seed": seed, "epochs": self.cfg.epochs(),
                 "train_images": len(subset(self.dataset, self.cfg.ship_train_images).train),
                 "pytorch_test_top1": trained.top1}
        weights = self.out_dir / "student.pt"  # the shipped student's weights: reload with train.load_checkpoint
        save_checkpoint(student, weights, {"model": self.student_cfg.to_dict(), **{
            k: facts[k] for k in ("temperature", "alpha", "beta", "seed", "epochs", "train_images")},
            "teacher_checkpoint_sha256": self.teacher_sha256})
        facts["student_checkpoint"] = relative(weights, self.model_dir)
        with self.threads():
            base = export_model(student, self.dataset, self.export_cfg.replace(precision=self.cfg.precision),
                                self.out_dir, f"student-{self.cfg.precision}",
                                metadata={**self._package_metadata(), "playbook.variant": f"student-{self.cfg.precision}"}
                                ).path
        plain = self.measure(f"student-{self.cfg.precision}", base,
                             f"distilled {self.cfg.student} student ({self.student_params:,} parameters, "
                             f"{self.param_ratio:.0%} of the teacher), {self.cfg.precision.upper()}, uncompressed",
                             **facts, recipe=None, precision=self.cfg.precision,
                             deployment_target=self.export_cfg.minimum_deployment_target,
                             size_ratio_vs_fp32=self.fp32_bytes / max(1, directory_size(base)))
        name = f"student-{recipe.name}"
        try:
            with self.threads(), self.timer.step("ship_compress"):
                made = self.compress_student(student, base, recipe.name, choice, name)
        except CompressionError as exc:
            self.add_pitfall(f"{recipe.name} refused on the student", f"{exc.coremltools_message} -- {exc.hint}")
            self.shipped = {"choice": choice, "variants": [plain.name], "refused": exc.to_dict()}
            return [plain]
        size, allocation = directory_size(made.path), self.allocations.get(recipe.name)
        packed = self.measure(name, made.path, f"distilled {self.cfg.student} student compressed with {recipe.name}: "
                                               + (fitted_sentence("per-layer palettes", allocation, size)
                                                  or recipe.description),
                              **facts, **made.facts(), recipe=recipe.to_dict(), deployment_target=made.target,
                              weight_threshold=self.cfg.weight_threshold, details=made.details,
                              size_ratio_vs_fp32=self.fp32_bytes / max(1, size))
        self.shipped = {"choice": choice, "variants": [plain.name, packed.name], "shipped": packed.name,
                        "size_ratio_vs_teacher_fp32": self.fp32_bytes / packed.size_bytes,
                        "delta_top1_vs_teacher_fp32": packed.delta_top1,
                        "predicted_bytes": self.student_plan.get("predicted_bytes"),
                        "finetune_loss": "distillation (teacher logits)" if made.finetune_steps and self.logits
                        is not None and not self.cfg.augment else "cross-entropy" if made.finetune_steps else None,
                        "compression_delta_top1": packed.top1 - plain.top1,
                        "fitted": fitted_sentence(recipe.name, allocation, size)}
        self.timings["ship"] = time.perf_counter() - start
        return [plain, packed]

    def _package_metadata(self) -> dict[str, str]:
        return {"playbook.stage": "distillation", "playbook.model": self.cfg.model, "playbook.student": self.cfg.student}

    def compress_student(self, student: nn.Module, base: Path, recipe: str, choice: dict[str, Any],
                         stem: str) -> Compressed:
        """``recipe`` applied to the student through ``compress.compress``, the entry point stage 02 uses: ``base`` is
        the student's uncompressed package (re-exported where the recipe needs another precision or target); a
        mixed-bit recipe chooses its per-layer palette sizes on the student's own validation outputs, the widest
        allocation whose package is ``min_size_ratio`` times smaller than the teacher's FP32 package; PyTorch-side
        recipes fine-tune with stage 02's settings when ``choice`` came from its record (``FinetuneConfig``
        otherwise), capped by the smoke policy."""
        finetune = FinetuneConfig.from_dict(choice.get("finetune") or {})
        if self.cfg.smoke:
            finetune = finetune.replace(steps=SMOKE.steps(finetune.steps))
        cfg = CompressConfig(precision=self.cfg.precision, weight_threshold=self.cfg.weight_threshold,
                             finetune=finetune)
        # a PyTorch-side fine-tune learns from the teacher's cached logits (the distillation loss), not only labels
        loss = (logit_loss(self.logits, self.cfg.temperature, self.cfg.alpha)
                if self.logits is not None and not self.cfg.augment else None)
        source = ModelSource(student, subset(self.dataset, self.cfg.logit_images()) if loss else self.dataset,
                             self.export_cfg, self.out_dir,
                             {(self.cfg.precision, self.export_cfg.minimum_deployment_target): base},
                             metadata=self._package_metadata(), loss_fn=loss)
        example = self.dataset.to_tensor(self.dataset.calib.images[:1])
        allocation = AllocationSettings(bit_choices=SMOKE.mixed_bit_choices if self.cfg.smoke else (),
                                        **{**(choice.get("allocation") or {}),
                                           "max_bytes": int(self.fp32_bytes / self.cfg.min_size_ratio)})
        reference = ValidationReference(base, lambda p, split: predict_split(p, self.dataset, split,
                                                                             self.mcfg.runtime)[0])
        allocator = BitAllocator(LayerProbes(reference, self.cfg.weight_threshold, self.out_dir), self.dataset,
                                 allocation, lambda p: weight_layers(p, self.cfg.weight_threshold, student, example))
        made = compress(recipe, source, cfg, out_dir=self.out_dir, stem=stem, allocator=allocator,
                        metadata={"playbook.stage": "distillation"})
        if allocator.allocations:
            self.allocations = dict(allocator.allocations)
        return made

    # ---- chart data
    def chart_variants(self) -> list[VariantRecord]:
        """What the accuracy-versus-size chart plots: the baseline's packages, the compressed teachers of
        ``quantization.json`` when that record is usable (same smoke setting, inputs unchanged), and this stage's
        students, so a distilled student is seen next to the compressed teacher of about the same size."""
        teachers = self.quantization.variants if self.quantization is not None else []
        return [*self.baseline_variants, *teachers, *self.variants]

    # ---- pitfalls and the record
    def collect_pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run met, each with the measured numbers."""
        rows = self.sweeps["temperature"]
        if len(rows) >= 2:
            best = max(rows, key=lambda r: r["val_top1"])
            worst = min(rows, key=lambda r: r["val_top1"])
            if best["val_top1"] - worst["val_top1"] >= 0.5:
                self.add_pitfall(
                    f"wrong temperature: T = {worst['temperature']:g} costs {best['val_top1'] - worst['val_top1']:.2f} "
                    f"points against T = {best['temperature']:g}",
                    f"validation top-1 {worst['val_top1']:.2f}% at T = {worst['temperature']:g} vs "
                    f"{best['val_top1']:.2f}% at T = {best['temperature']:g} "
                    f"(scratch {worst['scratch_val_top1']:.2f}%; "
                    f"alpha = {worst['alpha']:g}, one seed, {self.sweep_summary()['train_images']} training images): "
                    "sweep T on validation data for each teacher-student pair")
        s = self.seed_stats
        if s and (s["gain_mean"] < 1.0 or s["p_value"] is None or s["p_value"] >= 0.01):
            self.add_pitfall(
                "distillation's gain is small or not established over seeds",
                f"gain {s['gain_mean']:+.2f}" + ("" if s["gain_std"] is None else f" ± {s['gain_std']:.2f}")
                + f" points over {s['n']} seeds, paired t-test p = "
                f"{s['p_value'] if s['p_value'] is None else format(s['p_value'], '.3g')}: more seeds, more epochs, "
                "another temperature or the feature term (beta) before concluding")
        if self.param_ratio > 0.2:
            self.add_pitfall("the student is more than 1/5 of the teacher",
                             f"{self.student_params:,} vs {self.teacher_params:,} parameters ({self.param_ratio:.0%}): "
                             "the size gain comes mostly from compression, not from distillation")
        if self.shipped and "shipped" in self.shipped and self.student_plan.get("chosen"):
            ratio, predicted = self.shipped["size_ratio_vs_teacher_fp32"], self.shipped["predicted_bytes"]
            if ratio < self.cfg.min_size_ratio:
                size = self.fp32_bytes / ratio
                self.add_pitfall(f"the shipped student misses min_size_ratio={self.cfg.min_size_ratio:g}",
                                 f"{ratio:.1f}x smaller than the teacher's FP32 package: {size / 1e3:.1f} KB "
                                 f"measured against {predicted / 1e3:.1f} KB predicted from the recipe's rate on the "
                                 "teacher; a small network keeps more bits per weight (its layers are less "
                                 "redundant, and look-up tables and small tensors weigh more): lower the width")
        if self.shipped and "shipped" in self.shipped:
            choice = self.shipped["choice"]
            student_cost = self.shipped["compression_delta_top1"]
            teacher_cost = choice.get("teacher_delta_top1")
            if teacher_cost is not None and student_cost < teacher_cost - 0.5:
                self.add_pitfall(
                    f"{choice['recipe']} hurts the small student more than the teacher",
                    f"{student_cost:+.2f} points on the student against {teacher_cost:+.2f} on the teacher: small "
                    "networks have less redundancy; try int8 weights (recipe='int8-weights') for the student")
        return self.pitfalls

    def details(self) -> dict[str, Any]:
        teacher_cfg = self.baseline.record["model_config"]
        return {
            "dataset": self.dataset.summary(),
            "baseline": {"record": "baseline.json", "fp32_package": relative(self.baseline.fp32_package,
                                                                              self.model_dir),
                         "fp32_size_bytes": self.fp32_bytes, "fp32_top1": self.reference.correct.mean() * 100.0},
            "reference_variant": self.reference.name,
            "teacher": {"architecture": teacher_cfg, "parameters": self.teacher_params,
                        "checkpoint": str(self.teacher_checkpoint), "checkpoint_sha256": self.teacher_sha256,
                        "user_checkpoint": bool(self.cfg.checkpoint)},
            "student": {"architecture": self.student_cfg.to_dict(), "parameters": self.student_params,
                        "plan": self.student_plan,
                        "parameter_ratio": self.param_ratio, "feature_shapes": self.feature_shapes,
                        "flops": self.student_flops, "teacher_flops": self.teacher_flops},
            "objective": {**self.cfg.distill_config().to_dict(),
                          "loss": "alpha*CE(student, labels) + (1-alpha)*T^2*KL(softmax(teacher/T) || "
                                  "softmax(student/T))" + (" + beta*MSE(adapter(student features), teacher features)"
                                                           if self.cfg.beta else "")},
            "training": {**self.cfg.train_config(self.cfg.seeds[0]).to_dict(),
                         "train_images": len(subset(self.dataset, self.cfg.train_images).train),
                         "same_for": "scratch and distilled students of a seed: initial weights, data order, "
                                     "optimiser, schedule, epochs"},
            "teacher_logits": self.logits.to_dict() if self.logits else None,
            "sweeps": {**self.sweeps, "summary": self.sweep_summary()},
            "seeds": self.seed_results,
            "seed_statistics": self.seed_stats,
            "shipped": self.shipped,
            "mixed_bits": self.allocations,
            "timings": self.timings,
            "student_cache": {"students": len(self.cache_hits), "from_cache": sum(self.cache_hits.values()),
                              "trained_in_workers": len(self.trained_in_workers)},
            "worker_plans": self.worker_plans,
            "cpu_seconds": CpuClock.now().since(self._clock)["cpu_s"],
            "threads": self.thread_choice.threads,
        }

    def finish(self) -> StageRecord:
        self.collect_pitfalls()
        return super().finish()


def run_distillation(cfg: DistillationConfig) -> StageRecord:
    """The whole stage without the notebook, the same steps in the same order as ``03_distillation``."""
    run = DistillationRun(cfg)
    run.soft_label_examples()
    run.cache_teacher_logits(progress=False)
    run.sweep_temperature()
    run.sweep_alpha()
    run.compare_seeds()
    run.ship()
    return run.finish()
