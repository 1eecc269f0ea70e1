"""Stage 01, the baseline: train (or load), evaluate, export FP32 and FP16, check parity, measure.

``BaselineConfig`` *is* the parameter list of ``notebooks/01_baseline.ipynb``; ``BaselineRun`` holds
the steps the notebook calls in order; ``run_baseline`` runs them all and writes ``baseline.json``.
Later stages rebuild what they need from that record (``stages.common.load_baseline``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from playbook.config import ConfigError, check_choice, check_range, technique_field
from playbook.coreml import DEPLOYMENT_TARGETS, ExportConfig, ExportResult, ParityResult, check_parity, export_model
from playbook.data import Dataset, DatasetConfig, load_dataset
from playbook.measure import reference_from
from playbook.metrics import ClassificationMetrics
from playbook.models import model_entry
from playbook.records import StageRecord, VariantRecord, relative
from playbook.stages.common import SMOKE, MeasuredStageConfig, StageRun
from playbook.train import ModelConfig, TrainConfig, TrainResult, evaluate, predict_logits, train_or_load


# Transfer-learning budgets for pretrained models (``training`` = ``head`` or ``finetune``): a fixed number of
# optimiser steps whatever the dataset's size, a cosine-decayed learning rate well below the from-scratch 0.1.
# Values you set yourself (epochs, lr, batch_size) win over these.
FINETUNE_DEFAULTS = {"head": {"steps": 600, "lr": 0.05, "batch_size": 64},
                     "finetune": {"steps": 400, "lr": 0.01, "batch_size": 64}}
TRAINING_MODES = ("auto", "scratch", "finetune", "head")


@dataclasses.dataclass(frozen=True)
class BaselineConfig(MeasuredStageConfig):
    """The parameters of ``01_baseline`` (see the notebook for each one's meaning).  ``epochs`` to ``seed`` are
    ``TrainConfig``'s fields, defaults and checks included; stage 01 sets its own defaults for three of them (epochs,
    a step floor and early stopping for training from scratch)."""

    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    image_size: int = 0
    training: str = "auto"
    epochs: int = technique_field(TrainConfig, "epochs", stage_default=3)
    min_steps: int = technique_field(TrainConfig, "min_steps", stage_default=1200)
    patience: int = technique_field(TrainConfig, "patience", stage_default=3)
    batch_size: int = technique_field(TrainConfig, "batch_size")
    lr: float = technique_field(TrainConfig, "lr")
    augment: bool = technique_field(TrainConfig, "augment")
    seed: int = technique_field(TrainConfig, "seed")
    checkpoint: str = ""
    precision: str = "fp16"
    deployment_target: str = "iOS17"
    input_kind: str = "tensor"
    classifier: bool = False
    max_test_images: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("training", self.training, TRAINING_MODES)
        check_range("max_test_images", self.max_test_images, 0)
        check_range("image_size", self.image_size, 0)
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_choice("deployment_target", self.deployment_target, DEPLOYMENT_TARGETS)
        check_choice("input_kind", self.input_kind, ["tensor", "image"])
        if self.checkpoint and not Path(self.checkpoint).expanduser().is_file():
            raise ConfigError(f"checkpoint={self.checkpoint!r} is not a file; give the path of a state dict saved with "
                              "torch.save(model.state_dict(), path), or leave it empty to train")
        # Building the sub-configs validates the remaining fields (the training ones as typed, whatever the mode).
        self.dataset_config(), self.technique_config(TrainConfig), self.train_config(), self.export_config()

    def dataset_config(self) -> DatasetConfig:
        """The data: smoke runs shrink it; images smaller than the model's minimum input are upscaled to it;
        ``max_test_images`` bounds the test split (and with it every stage's measuring cost)."""
        extra: dict[str, Any] = {"limit_train": SMOKE.limit_train, "limit_test": SMOKE.limit_test,
                                 "calib_size": SMOKE.calib_size} if self.smoke else {}
        if self.max_test_images:
            extra["limit_test"] = min(self.max_test_images, extra.get("limit_test", self.max_test_images))
        entry = model_entry(self.model)
        minimum = entry.min_image_size if entry is not None and entry.min_image_size > 1 else None
        return DatasetConfig(name=self.dataset, data_dir=self.data_dir or None, image_size=self.image_size or None,
                             min_image_size=minimum, seed=self.seed, **extra)

    def training_mode(self) -> str:
        """``scratch``, ``finetune`` or ``head``: ``auto`` fine-tunes every layer of a model registered as pretrained
        and trains the others from scratch.  (A user's ``checkpoint`` is used as it is: no training.)

        Whole-network fine-tuning is the default because a client's images rarely look like ImageNet's: measured on
        Fashion-MNIST (upscaled to 56 px, 2,000 test images), efficientnet-lite0 reached 89.45% top-1 fine-tuned
        (400 steps, 156 s on 2 CPU cores) but only 37.35% with its ImageNet features frozen and the classifier alone
        trained (600 steps).  ``head`` stays available for data close to the pretraining set."""
        if self.training != "auto":
            return self.training
        entry = model_entry(self.model)
        return "finetune" if entry is not None and entry.pretrained else "scratch"

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.model, dict(self.model_options))

    def train_config(self) -> TrainConfig:
        """How to train: from scratch with the epochs/lr/min_steps/patience given, or, for a pretrained model, a
        transfer-learning budget (``FINETUNE_DEFAULTS``) in which the values you set yourself win."""
        mode = self.training_mode()
        if mode == "scratch":
            if self.smoke:  # the smoke policy shrinks the budget: one epoch, no step floor, no early stop
                return self.technique_config(TrainConfig, epochs=SMOKE.epochs(self.epochs), min_steps=0, patience=0)
            return self.technique_config(TrainConfig)
        preset = dict(FINETUNE_DEFAULTS[mode])
        mine = self.non_defaults()
        if "lr" in mine:
            preset["lr"] = self.lr
        if "batch_size" in mine:
            preset["batch_size"] = self.batch_size
        steps, epochs = preset.pop("steps"), 0
        if "epochs" in mine:
            steps, epochs = 0, self.epochs
        if self.smoke:
            steps, epochs = SMOKE.steps(steps or 10 ** 6), 0
        head = ""
        if mode == "head":
            entry = model_entry(self.model)
            head = entry.head if entry is not None else "fc"
        # a fixed step budget: no step floor, no early stop
        return self.technique_config(TrainConfig, epochs=epochs, steps=steps, min_steps=0, patience=0,
                                     schedule="cosine", head=head, **preset)

    def export_config(self) -> ExportConfig:
        return ExportConfig(precision=self.precision, minimum_deployment_target=self.deployment_target,
                            input_kind=self.input_kind, classifier=self.classifier)


class BaselineRun(StageRun):
    """Stage 01's steps, in the notebook's order: data, train, evaluate, export, parity, measure, finish."""

    stage = "baseline"

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__(cfg)
        self.cfg: BaselineConfig = cfg
        self.model: nn.Module | None = None
        self.training: TrainResult | None = None
        self.pytorch: ClassificationMetrics | None = None
        self.exports: dict[str, ExportResult] = {}
        self.parity: dict[str, ParityResult] = {}

    def load_data(self) -> Dataset:
        """The dataset with the config's fixed split (smoke runs shrink it)."""
        self.dataset = load_dataset(self.cfg.dataset_config())
        return self.dataset

    def train(self, progress: bool = True) -> tuple[nn.Module, TrainResult]:
        """Train, or load from the checkpoint cache / the user's checkpoint.

        A run whose loss diverges, or (outside smoke runs) that ends at chance, stops here with ``TrainingError``
        and caches nothing; warnings (near chance, still improving) go into the record for every later stage."""
        self.model, self.training = train_or_load(self.cfg.model_config(), self._data(), self.cfg.train_config(),
                                                  checkpoint=self.cfg.checkpoint or None, progress=progress,
                                                  chance_is_error=not self.cfg.smoke)
        self.warnings += [w for w in self.training.warnings if w not in self.warnings]
        return self.model, self.training

    def evaluate(self) -> ClassificationMetrics:
        """Top-1/top-5, per-class accuracy and the confusion matrix in PyTorch, on the test split."""
        data = self._data()
        self.pytorch = evaluate(self._model(), data, data.test)
        chance = 100.0 / data.num_classes
        if self.pytorch.top1 < 1.5 * chance and not any("near chance" in w for w in self.warnings):
            self.warnings.append(f"the model is at or near chance: test top-1 {self.pytorch.top1:.1f}% with "
                                 f"{data.num_classes} classes (chance {chance:.1f}%); every figure below describes a "
                                 "model that has not learned the task")
        return self.pytorch

    def export(self) -> dict[str, ExportResult]:
        """The FP32 reference and the FP16 deployment package under ``reports/<model>/baseline/``."""
        base = self.cfg.export_config()
        self.exports = {
            precision: export_model(self._model(), self._data(), base.replace(precision=precision), self.out_dir,
                                    precision, metadata={"playbook.stage": "baseline", "playbook.model": self.cfg.model,
                                                         "playbook.variant": f"baseline-{precision}"})
            for precision in ("fp32", "fp16")}
        return self.exports

    def check_parity(self) -> dict[str, ParityResult]:
        """PyTorch vs each exported package on the whole test split."""
        data = self._data()
        logits = predict_logits(self._model(), data, data.test)
        self.parity = {p: check_parity(logits, e.path, data, data.test, p, runtime=self.cfg.runtime)
                       for p, e in self.exports.items()}
        for precision, result in self.parity.items():
            if not result.passed:
                self.add_pitfall(f"{precision.upper()} parity outside tolerance",
                                 f"max relative error {result.fidelity.max_rel_error:.2e} (tolerance "
                                 f"{result.tolerance_rel:.0e}), top-1 agreement {result.fidelity.top1_agreement:.2f}%")
        return self.parity

    def measure_packages(self) -> list[VariantRecord]:
        """Both packages on the five axes; FP32 is the reference every later variant is compared with."""
        self.estimate_cost(len(self.exports), self.exports["fp32"].path)
        fp32 = self.measure("baseline-fp32", self.exports["fp32"].path,
                            "FP32 ML program: the reference for every comparison", precision="fp32",
                            deployment_target=self.cfg.deployment_target)
        self.reference = reference_from(fp32.name, self.scores[fp32.name], self._data())
        self.measure("baseline-fp16", self.exports["fp16"].path, "FP16 ML program: the default Core ML export",
                     precision="fp16", deployment_target=self.cfg.deployment_target)
        for precision, export in self.exports.items():
            dtypes = {o.get("dtype") for o in export.package.inputs + export.package.outputs if "dtype" in o}
            if "FLOAT16" in dtypes:
                self.add_pitfall(f"{precision.upper()} package has FP16 I/O",
                                 "pass dtype=np.float32 on inputs and outputs to keep FP32 I/O")
        return self.variants

    def details(self) -> dict[str, Any]:
        assert self.training is not None and self.pytorch is not None
        return {
            "dataset": self._data().summary(),
            "dataset_config": self.cfg.dataset_config().to_dict(),
            "model_config": self.cfg.model_config().to_dict(),
            "train_config": self.cfg.train_config().to_dict(),
            "training_mode": self.cfg.training_mode(),
            "training": dataclasses.asdict(self.training),
            "pytorch": self.pytorch.to_dict(),
            "exports": {p: {**e.to_dict(), "package": {**e.package.to_dict(), "path": relative(e.path, self.model_dir)}}
                        for p, e in self.exports.items()},
            "parity": {p: r.to_dict() for p, r in self.parity.items()},
            "reference_variant": "baseline-fp32",
            "deploy_precision": self.cfg.precision,
        }

    def _data(self) -> Dataset:
        if self.dataset is None:
            raise RuntimeError("BaselineRun: call load_data() first")
        return self.dataset

    def _model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("BaselineRun: call train() first")
        return self.model


def run_baseline(cfg: BaselineConfig, progress: bool = False) -> StageRecord:
    """The whole stage without the notebook (scripts, tests): the same steps in the same order."""
    run = BaselineRun(cfg)
    run.load_data()
    run.train(progress=progress)
    run.evaluate()
    run.export()
    run.check_parity()
    run.measure_packages()
    return run.finish()
