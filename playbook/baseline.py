"""Stage 01, the baseline: train (or load), evaluate, export FP32 and FP16, check parity, measure.

``BaselineConfig`` *is* the parameter list of ``notebooks/01_baseline.ipynb``: the notebook
builds it from its namespace, so a parameter the notebook does not declare is an error.
``load_baseline`` is how later stages get the trained model, the dataset and the FP32
reference package back from ``reports/<model>/baseline.json`` without training again.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from playbook.config import ConfigError, StrictConfig, check_range, parameters_from_namespace
from playbook.coreml import ExportConfig, ExportResult, ParityResult, check_parity, export_model
from playbook.data import Dataset, DatasetConfig, load_dataset
from playbook.env import environment
from playbook.measure import MeasureConfig, Reference, measure_variant, reference_from
from playbook.notebooks import run_command
from playbook.metrics import ClassificationMetrics
from playbook.records import read_json, report_dir, write_stage_record
from playbook.train import ModelConfig, TrainConfig, TrainResult, evaluate, train_or_load

SMOKE_LIMITS = {"limit_train": 1000, "limit_test": 500, "calib_size": 64}


@dataclasses.dataclass(frozen=True)
class BaselineConfig(StrictConfig):
    """The parameters of ``01_baseline`` (see the notebook for each one's meaning)."""

    model: str = "resnet"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    image_size: int = 0
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    augment: bool = False
    seed: int = 0
    checkpoint: str = ""
    precision: str = "fp16"
    deployment_target: str = "iOS17"
    input_kind: str = "tensor"
    classifier: bool = False
    runtime: str = "auto"
    threads: int = 0
    smoke: bool = False
    reports_dir: str = ""

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0)
        check_range("image_size", self.image_size, 0)
        # Building the sub-configs validates every remaining field with a precise message.
        self.dataset_config(), self.train_config(), self.export_config(), self.measure_config()

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> "BaselineConfig":
        """From a notebook's ``globals()``: unknown names (e.g. a mistyped papermill parameter) are an error."""
        return cls.from_dict(parameters_from_namespace(namespace))

    def dataset_config(self) -> DatasetConfig:
        extra = SMOKE_LIMITS if self.smoke else {}
        return DatasetConfig(name=self.dataset, data_dir=self.data_dir or None, image_size=self.image_size or None,
                             seed=self.seed, **extra)

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.model, dict(self.model_options))

    def train_config(self) -> TrainConfig:
        epochs = min(self.epochs, 1) if self.smoke else self.epochs
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, augment=self.augment,
                           seed=self.seed, threads=self.threads)

    def export_config(self) -> ExportConfig:
        return ExportConfig(precision=self.precision, minimum_deployment_target=self.deployment_target,
                            input_kind=self.input_kind, classifier=self.classifier)

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig.for_run(self.runtime, self.smoke)

    def model_dir(self) -> Path:
        return report_dir(self.model, self.reports_dir or None)

    def reproduce_command(self) -> str:
        """The CLI command that reproduces this run."""
        return run_command(self.model, self.dataset, self.smoke,
                           self.non_defaults(skip=("model", "dataset", "smoke", "reports_dir")))


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """Everything stage 01 measured; ``record`` is what was written to ``baseline.json``."""

    pytorch: ClassificationMetrics
    training: TrainResult
    exports: dict[str, ExportResult]
    parity: dict[str, ParityResult]
    record: dict[str, Any]
    path: Path


def prepare(cfg: BaselineConfig) -> Dataset:
    """Load the dataset with the config's fixed split (smoke runs shrink it)."""
    return load_dataset(cfg.dataset_config())


def train_baseline(cfg: BaselineConfig, dataset: Dataset, progress: bool = True) -> tuple[nn.Module, TrainResult]:
    """Train, or load from the checkpoint cache / a user checkpoint."""
    return train_or_load(cfg.model_config(), dataset, cfg.train_config(), checkpoint=cfg.checkpoint or None,
                         progress=progress)


def export_baseline(model: nn.Module, dataset: Dataset, cfg: BaselineConfig) -> dict[str, ExportResult]:
    """Export the FP32 reference and the FP16 deployment package under ``reports/<model>/baseline/``."""
    out_dir = cfg.model_dir() / "baseline"
    base = cfg.export_config()
    return {precision: export_model(model, dataset, base.replace(precision=precision), out_dir, precision,
                                    metadata={"playbook.stage": "baseline", "playbook.model": cfg.model})
            for precision in ("fp32", "fp16")}


def parity_checks(model: nn.Module, dataset: Dataset, exports: dict[str, ExportResult],
                  cfg: BaselineConfig) -> dict[str, ParityResult]:
    """PyTorch vs each exported package on the whole test split."""
    return {p: check_parity(model, e.path, dataset, dataset.test, p, runtime=cfg.runtime) for p, e in exports.items()}


def measure_baseline(dataset: Dataset, exports: dict[str, ExportResult],
                     cfg: BaselineConfig) -> tuple[list[dict[str, Any]], Reference]:
    """Measure both packages on the five axes; FP32 is the reference every later variant is compared to."""
    mcfg = cfg.measure_config()
    fp32, fp32_scores = measure_variant("baseline-fp32", exports["fp32"].path, dataset, mcfg,
                                        description="FP32 ML program: the reference for every comparison")
    reference = reference_from(fp32, fp32_scores, dataset)
    fp16, _ = measure_variant("baseline-fp16", exports["fp16"].path, dataset, mcfg, reference=reference,
                              description="FP16 ML program: the default Core ML export")
    return [fp32, fp16], reference


def pitfalls_seen(parity: dict[str, ParityResult], exports: dict[str, ExportResult]) -> list[dict[str, str]]:
    """Conversion pitfalls this run actually met (from the measured parity and the packages)."""
    found = []
    for precision, result in parity.items():
        if not result.passed:
            found.append({"title": f"{precision.upper()} parity outside tolerance",
                          "detail": f"max relative error {result.fidelity.max_rel_error:.2e} "
                                    f"(tolerance {result.tolerance_rel:.0e}), top-1 agreement "
                                    f"{result.fidelity.top1_agreement:.2f}%"})
    for precision, export in exports.items():
        dtypes = {o.get("dtype") for o in export.package.inputs + export.package.outputs if "dtype" in o}
        if "FLOAT16" in dtypes:
            found.append({"title": f"{precision.upper()} package has FP16 I/O",
                          "detail": "pass dtype=np.float32 on inputs and outputs to keep FP32 I/O"})
    return found


def write_baseline(cfg: BaselineConfig, dataset: Dataset, pytorch: ClassificationMetrics, training: TrainResult,
                   exports: dict[str, ExportResult], parity: dict[str, ParityResult],
                   variants: list[dict[str, Any]]) -> BaselineResult:
    """Write ``reports/<model>/baseline.json`` (atomically) and return the stage result."""
    record = {
        "model": cfg.model,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(exclude=("reports_dir", "runtime", "threads")),
        "environment": environment(),
        "reproduce": cfg.reproduce_command(),
        "dataset": dataset.summary(),
        "dataset_config": cfg.dataset_config().to_dict(),
        "model_config": cfg.model_config().to_dict(),
        "train_config": cfg.train_config().to_dict(),
        "training": dataclasses.asdict(training),
        "pytorch": pytorch.to_dict(),
        "exports": {p: e.to_dict() for p, e in exports.items()},
        "parity": {p: r.to_dict() for p, r in parity.items()},
        "reference_variant": "baseline-fp32",
        "deploy_precision": cfg.precision,
        "variants": variants,
        "pitfalls": pitfalls_seen(parity, exports),
    }
    path = write_stage_record(cfg.model_dir(), "baseline", record)
    return BaselineResult(pytorch, training, exports, parity, record, path)


@dataclasses.dataclass(frozen=True)
class LoadedBaseline:
    """What later stages need from stage 01."""

    record: dict[str, Any]
    dataset: Dataset
    model: nn.Module
    fp32_package: Path
    reference: Reference
    model_dir: Path


def load_baseline(model: str, reports_dir: str | Path | None = None, smoke: bool | None = None) -> LoadedBaseline:
    """Read ``reports/<model>/baseline.json`` and rebuild the dataset, trained model and FP32 reference.

    The reference's test scores are recomputed from the FP32 package through the prediction
    interface (cheap), so every later stage compares against the same measured numbers.
    """
    from playbook.coreml import predict_split
    from playbook.train import build_model, load_checkpoint

    model_dir = report_dir(model, reports_dir)
    path = model_dir / "baseline.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebooks/01_baseline.ipynb (or `playbook run "
                                f"--model {model}`) first")
    record = read_json(path)
    if smoke is not None and bool(record["config"].get("smoke")) != bool(smoke):
        raise ConfigError(f"{path} was made with smoke={record['config'].get('smoke')}, this stage runs with "
                          f"smoke={smoke}; re-run 01_baseline with the same setting")
    dataset = load_dataset(DatasetConfig.from_dict(record["dataset_config"]))
    net = build_model(ModelConfig.from_dict(record["model_config"]), dataset)
    load_checkpoint(net, Path(record["training"]["checkpoint"]))
    fp32 = Path(record["exports"]["fp32"]["package"]["path"])
    runtime = record["config"].get("runtime", "auto")
    scores, _ = predict_split(fp32, dataset, dataset.test, runtime)
    return LoadedBaseline(record, dataset, net.eval(), fp32, Reference("baseline-fp32", scores,
                                                                        scores.argmax(1) == dataset.test.labels),
                          model_dir)


def run_baseline(cfg: BaselineConfig, progress: bool = False) -> BaselineResult:
    """The whole stage without the notebook (scripts, tests): the same steps in the same order."""
    dataset = prepare(cfg)
    model, training = train_baseline(cfg, dataset, progress=progress)
    pytorch = evaluate(model, dataset, dataset.test)
    exports = export_baseline(model, dataset, cfg)
    parity = parity_checks(model, dataset, exports, cfg)
    variants, _ = measure_baseline(dataset, exports, cfg)
    return write_baseline(cfg, dataset, pytorch, training, exports, parity, variants)
