"""What every stage shares: the base config, the smoke policy, loading the baseline's record, and
``StageRun``, whose ``measure`` is the one way a variant is measured and whose ``finish`` is the one
way a stage record is written (with environment, command, lineage, warnings and pitfalls).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
from torch import nn

from playbook.command import BUDGET_NAMES, RunCommand
from playbook.config import ConfigError, StrictConfig, check_choice, check_range, parameters_from_namespace
from playbook.coreml import RUNTIMES, predict_split
from playbook.data import Dataset, DatasetConfig, load_dataset
from playbook.env import StepTimer, choose_threads, environment, playbook_version, torch_threads
from playbook.measure import MeasureConfig, Reference, measure_variant, reference_from
from playbook.paths import model_dir
from playbook.records import (RecordError, StageRecord, VariantRecord, lineage_of, missing_outputs,
                              read_stage_record, sha256_path, write_stage_record)
from playbook.stages import get_stage


# --------------------------------------------------------------------------- smoke policy
@dataclasses.dataclass(frozen=True)
class SmokePolicy:
    """What ``smoke=True`` shrinks, in one place.  It shrinks sizes, never skips a step, so every code
    path of every stage runs in CI in minutes.  Its figures mean nothing about the model."""

    dataset: str = "digits"
    limit_train: int = 1000
    limit_test: int = 500
    calib_size: int = 64
    max_epochs: int = 1
    max_finetune_steps: int = 20
    latency_warmup: int = 2
    latency_repeats: int = 5
    bootstrap_resamples: int = 200
    bench_packages: int = 4  # stage 05 times the first few packages (the baseline's two, then the next stage's)
    # one quantization recipe per code path of the default run: every Core ML compressor, joint
    # compression, the iOS18 re-export, every PyTorch algorithm, mixed bit-widths and Core ML steps after a
    # PyTorch algorithm
    quantization_recipes: tuple[str, ...] = (
        "int8-weights", "int4-block", "palettize-4bit", "palettize-2bit", "prune-75", "prune-50+palettize-4bit",
        "torch-w8a8-static", "torch-w8a8-qat", "torch-prune-75-ft", "torch-palettize-4bit-skm",
        "palettize-mixed", "torch-palettize-2bit-dkm", "torch-prune-75-ft+palettize-4bit", "torch-int4-gptq-channel",
        "torch-prune-50-sparsegpt")
    # what ``slow_recipes=True`` adds in smoke runs: DKM on a mixed allocation (the slow recipes' one new code path)
    slow_quantization_recipes: tuple[str, ...] = ("torch-palettize-mixed-dkm",)
    # palette sizes a mixed-bit recipe may give a layer in smoke runs: one per-layer probe, and no 8-bit k-means
    # (256 clusters: the slowest palette to fit); same steps
    mixed_bit_choices: tuple[int, ...] = (2, 4)
    # Core AI beside Core ML in smoke runs: the FP16 export and one coreai-opt compression with its oracle (Apple's
    # Linux runtime is a slow interpreter; every Core AI code path still runs)
    coreai_techniques: tuple[str, ...] = ("int8",)

    def epochs(self, requested: int) -> int:
        return min(requested, self.max_epochs)

    def steps(self, requested: int) -> int:
        return min(requested, self.max_finetune_steps)


SMOKE = SmokePolicy()


# --------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class StageConfig(StrictConfig):
    """Fields every stage notebook declares.  ``INTERNAL`` fields are how and where a stage runs, not what it
    computes: they are left out of the fingerprint and the reproduction command."""

    INTERNAL: ClassVar[tuple[str, ...]] = ("reports_dir", "runtime", "threads", "interactive")

    model: str = "resnet"
    smoke: bool = False
    reports_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model.strip():
            raise ConfigError(f"model={self.model!r} must be a non-empty model name")

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> "StageConfig":
        """From a notebook's ``globals()``: unknown names (e.g. a mistyped papermill parameter) are an error."""
        return cls.from_dict(parameters_from_namespace(namespace))

    @property
    def stage(self) -> str:
        """The stage this config belongs to (``BaselineConfig`` -> ``baseline``)."""
        return type(self).__name__.removesuffix("Config").lower()

    def model_dir(self) -> Path:
        """``reports/<model>/`` (not created)."""
        return model_dir(self.model, self.reports_dir or None)

    def run_command(self) -> RunCommand:
        """The ``playbook run`` command that reruns this stage with these values."""
        skip = set(self.INTERNAL) | {"model", "dataset", "smoke"}
        changed = self.non_defaults(skip=tuple(skip))
        return RunCommand(model=self.model, dataset=str(getattr(self, "dataset", "") or ""), smoke=self.smoke,
                          params={k: v for k, v in changed.items() if k not in BUDGET_NAMES},
                          budget={k: v for k, v in changed.items() if k in BUDGET_NAMES},
                          stages=get_stage(self.stage).number)

    def fingerprint_values(self) -> str:
        return self.fingerprint(exclude=self.INTERNAL)


@dataclasses.dataclass(frozen=True)
class MeasuredStageConfig(StageConfig):
    """A stage that measures packages: which runtime predicts, and how many CPU threads torch may use."""

    runtime: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("runtime", self.runtime, RUNTIMES)
        check_range("threads", self.threads, 0)

    def measure_config(self) -> MeasureConfig:
        """How variants are measured: full repeats, or the smoke policy's few."""
        if self.smoke:
            return MeasureConfig(runtime=self.runtime, latency_warmup=SMOKE.latency_warmup,
                                 latency_repeats=SMOKE.latency_repeats,
                                 bootstrap_resamples=SMOKE.bootstrap_resamples)
        return MeasureConfig(runtime=self.runtime)

    def work_threads(self) -> int:
        """torch threads for the stage's work: ``threads``, or 1 in smoke runs (tiny tensors gain nothing from
        threads, and on a shared machine the synchronisation makes every small op several times slower)."""
        return self.threads or (1 if self.smoke else 0)


# --------------------------------------------------------------------------- the baseline, from its record
@dataclasses.dataclass(frozen=True)
class Baseline:
    """What later stages need from stage 01, rebuilt from ``baseline.json`` (no import of stage 01's module)."""

    record: StageRecord
    dataset: Dataset
    model: nn.Module
    fp32_package: Path
    reference: Reference
    model_dir: Path
    lineage: dict[str, str]


def load_baseline(cfg: MeasuredStageConfig) -> Baseline:
    """Read ``reports/<model>/baseline.json`` and rebuild the dataset, the trained model and the FP32 reference.

    The reference's test scores are recomputed from the FP32 package through the prediction interface
    (cheap), so every later stage compares against the same measured numbers.  Raises ``RecordError``
    when the record is missing, was made with another ``smoke`` setting, or its packages are gone.
    """
    from playbook.train import ModelConfig, build_model, load_checkpoint

    root = cfg.model_dir()
    record = read_stage_record(root, "baseline")
    if record.smoke != cfg.smoke:
        raise RecordError(f"{root / 'baseline.json'} was made with smoke={record.smoke}, this stage runs with "
                          f"smoke={cfg.smoke}; re-run 01_baseline with the same setting")
    gone = missing_outputs(root, record)
    if gone:
        raise RecordError(f"{root / 'baseline.json'} names packages that no longer exist ({gone}); re-run 01_baseline")
    dataset = load_dataset(DatasetConfig.from_dict(record["dataset_config"]))
    net = build_model(ModelConfig.from_dict(record["model_config"]), dataset)
    checkpoint = Path(record["training"]["checkpoint"])
    recorded = record["training"].get("checkpoint_sha256")
    if recorded and checkpoint.is_file() and sha256_path(checkpoint) != recorded:
        raise RecordError(f"{checkpoint} is not the checkpoint {root / 'baseline.json'} was measured with (its "
                          "SHA-256 changed: replaced by another run or by hand); re-run 01_baseline")
    load_checkpoint(net, checkpoint)
    fp32 = record.variant(record["reference_variant"])
    fp32_package = fp32.package_path(root)
    scores, _ = predict_split(fp32_package, dataset, dataset.test, cfg.runtime)
    return Baseline(record, dataset, net.eval(), fp32_package, reference_from(fp32.name, scores, dataset), root,
                    lineage_of(root, [root / "baseline.json", fp32_package]))


# --------------------------------------------------------------------------- the run
class StageRun:
    """A stage in progress: its config, dataset, reference, measured variants, pitfalls and warnings.

    Subclasses add the stage's steps (what its notebook calls, in order) and override ``details`` with the
    stage-specific part of the record.  ``finish`` writes the record; nothing else writes one.
    """

    stage: ClassVar[str] = ""

    def __init__(self, cfg: MeasuredStageConfig) -> None:
        self.cfg = cfg
        self.model_dir = cfg.model_dir()
        self.mcfg = cfg.measure_config()
        self.dataset: Dataset | None = None
        self.reference: Reference | None = None
        self.variants: list[VariantRecord] = []
        self.scores: dict[str, np.ndarray] = {}
        self.pitfalls: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.lineage: dict[str, str] = {}
        self.record: StageRecord | None = None
        self.cost: dict[str, Any] | None = None
        self.started = time.perf_counter()
        # wall and CPU seconds per step; torch threads chosen once from the cores other work leaves free (a user's
        # `threads` wins), so a busy machine slows the stage in proportion instead of making threads spin
        self.timer = StepTimer()
        self.thread_choice = choose_threads(getattr(cfg, "work_threads", lambda: 0)() or None)
        print(f"[{self.stage}] threads: {self.thread_choice.reason}")
        # packages are made in a staging folder and swapped in with the record by finish(): an interrupted stage
        # leaves its previous outputs (or none), never a mix of old and new beside the old record
        self.staging_dir = self.model_dir / STAGING / self.stage
        shutil.rmtree(self.staging_dir, ignore_errors=True)  # what an earlier interrupted run of this stage left
        self._staged = True

    @contextlib.contextmanager
    def threads(self) -> Iterator[int]:
        """torch's CPU threads for this stage's work (see ``work_threads``), restored afterwards."""
        with torch_threads(self.thread_choice) as n:
            yield n

    @property
    def out_dir(self) -> Path:
        """Where this stage's packages go: ``reports/<model>/.staging/<stage>/`` while the stage runs, swapped in as
        ``reports/<model>/<stage>/`` together with the record by ``finish``, and that folder afterwards."""
        return self.staging_dir if getattr(self, "_staged", False) else self.model_dir / self.stage

    def measure(self, name: str, package: Path, description: str = "", **extra: Any) -> VariantRecord:
        """Measure one package on the five axes against the reference; keeps (and returns) its record.

        A variant measured again under the same name replaces the earlier one."""
        if self.dataset is None:
            raise RuntimeError(f"{type(self).__name__}: load the data before measuring")
        with self.threads():
            record, scores = measure_variant(name, self.stage, package, self.dataset, self.mcfg, self.reference,
                                             description, root=self.model_dir, extra=extra)
        self.variants = [v for v in self.variants if v.name != name] + [record]
        self.scores[name] = scores
        return record

    def variant(self, name: str) -> VariantRecord | None:
        return next((v for v in self.variants if v.name == name), None)

    def estimate_cost(self, n_variants: int, package: Path) -> dict[str, Any]:
        """Say what measuring will cost before it starts: ``n_variants`` packages, each scored on every test image
        through the prediction interface (the dominant cost for a large network on a CPU), projected from one
        timed batch of ``package``.  Printed, kept in the record, and the way to bound it is named."""
        data = self.dataset
        assert data is not None
        probe = data.test.head(min(64, len(data.test)))
        with self.threads():
            predict_split(package, data, probe.head(min(4, len(probe))), self.cfg.runtime)  # load and warm up
            start = time.perf_counter()
            predict_split(package, data, probe, self.cfg.runtime)
        per_image = (time.perf_counter() - start) / max(len(probe), 1)
        n = len(data.test)
        top1 = 100.0 * float(self.reference.correct.mean()) if self.reference is not None else 90.0
        halfwidth = 196.0 * float(np.sqrt(max(top1 / 100 * (1 - top1 / 100), 1e-4) / max(n, 1)))
        cost = {"variants": n_variants, "test_images": n, "seconds_per_image": per_image,
                "accuracy_seconds": n_variants * n * per_image, "top1_halfwidth_pt": halfwidth}
        print(f"measuring {n_variants} variant(s) on {n:,} test images: about {per_image * 1000:.1f} ms per image here, "
              f"{cost['accuracy_seconds'] / 60:.1f} min for accuracy alone (plus latency and memory). To bound it, set "
              f"the baseline's max_test_images: the 95% interval of a top-1 near {top1:.0f}% is about "
              f"±{halfwidth:.2f} points at {n:,} images and widens as 1/sqrt(images).")
        self.cost = cost
        return cost

    def add_pitfall(self, title: str, detail: str) -> None:
        item = {"title": title, "detail": detail}
        if item not in self.pitfalls:
            self.pitfalls.append(item)

    def details(self) -> dict[str, Any]:
        """The stage-specific part of the record (overridden by each stage)."""
        return {}

    def snapshot(self) -> StageRecord:
        """The record as it stands, not written: what the views show while the notebook runs (``finish`` writes
        the same record once the stage is done)."""
        command = self.cfg.run_command()
        details = {**self.details(), "stage_seconds": time.perf_counter() - self.started,
                   "config_fingerprint": self.cfg.fingerprint_values(), "cost_estimate": self.cost,
                   "thread_choice": self.thread_choice.to_dict(), "cost": self.timer.to_dict()}
        if self.dataset is not None and "dataset" not in details:
            details["dataset"] = self.dataset.summary()
        return StageRecord(
            stage=self.stage, model=self.cfg.model, config=self.cfg.to_dict(), environment=environment(),
            run=command.to_dict(), reproduce=command.shell(), lineage=dict(self.lineage), variants=list(self.variants),
            pitfalls=list(self.pitfalls), warnings=list(self.warnings), details=details,
            playbook_version=playbook_version())

    def finish(self) -> StageRecord:
        """Write ``reports/<model>/<stage>.json`` (atomically) and return the record."""
        self.record = self.snapshot()
        self.path = self._commit(self.record)
        return self.record

    def _commit(self, record: StageRecord) -> Path:
        """Swap the staged packages in as ``<stage>/`` and write the record, with SIGINT/SIGTERM held until both are
        done; paths inside the record that point into the staging folder are rewritten to the final folder."""
        final = self.model_dir / self.stage
        if not getattr(self, "_staged", False) or not self.staging_dir.exists():
            self._staged = False
            return write_stage_record(self.model_dir, record)
        moves = [(str(self.staging_dir.resolve()), str(final.resolve())), (str(self.staging_dir), str(final)),
                 (f"{STAGING}/{self.stage}", self.stage)]
        for v in record.variants:
            v.package = _relocated(v.package, moves)
            v.extra, v.io, v.provenance = (_relocated(x, moves) for x in (v.extra, v.io, v.provenance))
        record.details, record.pitfalls, record.warnings = (_relocated(x, moves) for x in
                                                            (record.details, record.pitfalls, record.warnings))
        pending = write_stage_record(self.staging_dir.parent, record)  # reports/<model>/.staging/<stage>.json
        old = self.staging_dir.parent / f"{self.stage}.previous"
        shutil.rmtree(old, ignore_errors=True)
        path = self.model_dir / f"{self.stage}.json"
        with _signals_held():
            if final.exists():
                os.replace(final, old)
            os.replace(self.staging_dir, final)
            os.replace(pending, path)
            self._staged = False
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.staging_dir.parent.rmdir()  # empty now, unless another stage is staging beside it
        return path


STAGING = ".staging"


def _relocated(value: Any, moves: list[tuple[str, str]]) -> Any:
    """``value`` with every path (string or ``Path``) that lies inside a staging folder moved to the final folder;
    dicts, lists and tuples are rebuilt, other objects returned as they are."""
    if isinstance(value, Path):
        return type(value)(_relocated(str(value), moves))
    if isinstance(value, str):
        for old, new in moves:
            if old.startswith("/") and old in value:
                return value.replace(old, new)
            if value == old or value.startswith(old + "/"):
                return new + value[len(old):]
        return value
    if isinstance(value, dict):
        return {k: _relocated(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, moves) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_relocated(v, moves) for v in value)
    return value


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (then act as they would have): a stage's packages and record
    are swapped in together.  Outside the main thread signals cannot be redirected, and the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


class DownstreamRun(StageRun):
    """A stage that starts from the baseline's record: dataset, trained model, FP32 reference, lineage, warnings."""

    def __init__(self, cfg: MeasuredStageConfig) -> None:
        super().__init__(cfg)
        with self.threads():
            self.baseline = load_baseline(cfg)
        made_on = self.baseline.record["dataset"]["name"]
        wanted = getattr(cfg, "dataset", "")
        if wanted and wanted != made_on:
            raise ConfigError(f"dataset={wanted!r} but the baseline in {self.baseline.model_dir} was made on "
                              f"{made_on!r}; leave dataset empty to use the baseline's, or re-run 01_baseline")
        self.dataset = self.baseline.dataset
        self.model = self.baseline.model
        self.reference = self.baseline.reference
        self.lineage = dict(self.baseline.lineage)
        self.warnings = list(self.baseline.record.warnings)
        self.baseline_variants = list(self.baseline.record.variants)
        self.fp32_bytes = int(next(v for v in self.baseline_variants if v.name == self.reference.name).size_bytes)
