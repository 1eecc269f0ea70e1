"""An external oracle for the playbook's reference executor: Apple's Core AI runtime on the same weights.

``compress_coreai`` exports one coreai-opt compression both ways from the same prepared weights: a ``.aimodel``
(run here by coreai-core's own runtime, Apple's code) and a ``.mlpackage`` (run on Linux by the playbook's
reference executor, ``playbook.mlprogram``, through the prediction interface ``playbook.coreml``).  Where the two
agree, the executor's reading of the Core ML compressed-weight ops (``constexpr_blockwise_shift_scale``,
``constexpr_lut_to_dense``, ``constexpr_sparse_to_dense``) is checked against Apple's independent implementation of
the same compression.  Apple's runtime is the reference side of ``metrics.fidelity``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from playbook.compress.coreai_runtime import coreai_provenance, predict_aimodel
from playbook.compress.coreai_side import CoreAICompressed
from playbook.config import ConfigError
from playbook.coreml import INPUT_NAME, Provenance, load_runtime, predict_split, score_array
from playbook.metrics import Fidelity, fidelity

# What "agree" means for two runtimes on the same FP32 weights: the same class everywhere but ties, logits within
# float32 rounding of different op orders.  FP16 programs get the playbook's FP16 parity tolerance.
ORACLE_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
MIN_ORACLE_AGREEMENT = 99.9


@dataclasses.dataclass(frozen=True)
class OracleResult:
    """Apple's Core AI runtime (reference) vs the playbook's executor on the same compressed weights."""

    recipe: str
    technique: str
    n: int
    fidelity: Fidelity
    tolerance_rel: float
    passed: bool
    aimodel: str
    mlpackage: str
    coreai: Provenance
    executor: Provenance
    seconds: float
    coreai_top1: float | None = None
    executor_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "technique": self.technique, "n": self.n, **self.fidelity.to_dict(),
                "tolerance_rel": self.tolerance_rel, "min_top1_agreement": MIN_ORACLE_AGREEMENT,
                "passed": self.passed, "aimodel": self.aimodel, "mlpackage": self.mlpackage,
                "coreai_provenance": self.coreai.to_dict(), "executor_provenance": self.executor.to_dict(),
                "seconds": self.seconds, "coreai_top1": self.coreai_top1, "executor_top1": self.executor_top1}


def _result(compressed: CoreAICompressed, coreai_scores: np.ndarray, executor_scores: np.ndarray,
            executor: Provenance, seconds: float, labels: np.ndarray | None = None) -> OracleResult:
    fid = fidelity(coreai_scores, executor_scores)
    tol = ORACLE_TOLERANCE[compressed.aimodel.precision]
    passed = fid.max_rel_error <= tol and fid.top1_agreement >= MIN_ORACLE_AGREEMENT

    def top1(scores: np.ndarray) -> float | None:
        return None if labels is None else float(100.0 * (np.asarray(scores).argmax(1) == labels).mean())

    return OracleResult(compressed.recipe, compressed.technique, len(coreai_scores), fid, tol, bool(passed),
                        compressed.aimodel.path, str(compressed.mlpackage), coreai_provenance(), executor, seconds,
                        top1(coreai_scores), top1(executor_scores))


def _check(compressed: CoreAICompressed) -> Path:
    if not isinstance(compressed, CoreAICompressed):
        raise ConfigError("compressed must be a CoreAICompressed (from compress_coreai), got "
                          f"{type(compressed).__name__}")
    if not compressed.mlpackage:
        raise ConfigError(f"{compressed.recipe!r} was compressed with coreml=False: there is no .mlpackage to compare")
    return Path(compressed.mlpackage)


def oracle_agreement(compressed: CoreAICompressed, inputs: np.ndarray, batch_size: int = 256) -> OracleResult:
    """Top-1 agreement and max relative error between Apple's runtime on ``compressed.aimodel`` and the reference
    executor (``playbook.coreml.load_runtime(..., runtime="reference")``) on ``compressed.mlpackage``, for
    ``inputs`` (normalised ``(N, C, H, W)`` floats)."""
    package = _check(compressed)
    inputs = np.asarray(inputs, dtype=np.float32)
    start = time.perf_counter()
    coreai = predict_aimodel(Path(compressed.aimodel.path), inputs, batch_size)
    runtime = load_runtime(package, "reference")
    executor = np.concatenate([score_array(runtime.predict({INPUT_NAME: inputs[s : s + batch_size]}))
                               for s in range(0, len(inputs), batch_size)])
    return _result(compressed, coreai, executor, runtime.provenance, time.perf_counter() - start)


def oracle_on_split(compressed: CoreAICompressed, dataset: Any, split: Any, batch_size: int = 500,
                    coreai_scores: np.ndarray | None = None) -> OracleResult:
    """``oracle_agreement`` on every image of a ``playbook.data.Split``; the executor side goes through
    ``playbook.coreml.predict_split`` (the playbook's prediction interface).  ``coreai_scores``: Apple's runtime's
    scores for the split when already computed (e.g. for the accuracy), so they are not computed twice.  The result
    also carries each runtime's top-1 on the split's labels."""
    package = _check(compressed)
    start = time.perf_counter()
    if coreai_scores is None:
        from playbook.compress.coreai_runtime import predict_aimodel_split

        coreai_scores, _ = predict_aimodel_split(Path(compressed.aimodel.path), dataset, split, batch_size)
    if len(coreai_scores) != len(split):
        raise ConfigError(f"{len(coreai_scores)} Core AI score rows for a split of {len(split)} images")
    executor, provenance = predict_split(package, dataset, split, runtime="reference", batch_size=batch_size)
    return _result(compressed, np.asarray(coreai_scores), executor, provenance, time.perf_counter() - start,
                   np.asarray(split.labels))
