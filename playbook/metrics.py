"""Accuracy metrics and the statistics that make a difference meaningful.

"It got 0.3 points worse" means nothing without an interval: ``compare_paired`` gives the
change in top-1 between two models evaluated on the *same* images with a paired
bootstrap 95% interval and McNemar's exact test (``scipy.stats.binomtest`` on the
discordant pairs).  ``fidelity`` measures how closely a variant follows a reference
model (top-1 agreement, KL divergence of the softmax outputs).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, TypeVar

import numpy as np
from scipy import stats
from scipy.special import log_softmax


@dataclasses.dataclass(frozen=True)
class ClassificationMetrics:
    """Top-1/top-5 (percent), per-class accuracy (percent) and the confusion matrix (rows = true class)."""

    top1: float
    top5: float
    n: int
    per_class: dict[str, float]
    confusion: list[list[int]]
    correct: tuple[bool, ...] = dataclasses.field(repr=False, default=())

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d.pop("correct")
        return d


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per sample: is the label among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> ClassificationMetrics:
    """All accuracy figures from scores (logits or probabilities) and integer labels."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score rows for {len(labels)} labels")
    n_classes = len(class_names)
    pred = scores.argmax(axis=1)
    correct = pred == labels
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for c, name in enumerate(class_names):
        total = confusion[c].sum()
        per_class[name] = float(100.0 * confusion[c, c] / total) if total else float("nan")
    return ClassificationMetrics(
        top1=float(100.0 * correct.mean()) if len(labels) else float("nan"),
        top5=float(100.0 * topk_correct(scores, labels, 5).mean()) if len(labels) else float("nan"),
        n=int(len(labels)), per_class=per_class, confusion=confusion.tolist(), correct=tuple(bool(c) for c in correct),
    )


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Change in top-1 (variant minus reference, points) with a paired bootstrap CI and McNemar's p-value."""

    delta_top1: float
    ci_low: float
    ci_high: float
    p_value: float
    only_reference_correct: int
    only_variant_correct: int
    n: int
    confidence: float = 0.95
    resamples: int = 2000

    @property
    def significant(self) -> bool:
        return self.p_value < (1.0 - self.confidence)

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["significant"] = self.significant
        return d

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "PairedComparison":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})  # "significant" is derived


def compare_paired(reference_correct: np.ndarray, variant_correct: np.ndarray, confidence: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """Paired comparison of two models on the same samples (boolean arrays of correctness)."""
    a = np.asarray(reference_correct, dtype=bool)
    b = np.asarray(variant_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same samples: {a.shape} vs {b.shape}")
    n = len(a)
    diff = b.astype(np.float64) - a.astype(np.float64)
    delta = 100.0 * diff.mean()
    res = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples,
                          method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    low, high = 100.0 * res.confidence_interval.low, 100.0 * res.confidence_interval.high
    if np.isnan(low):  # all differences identical (e.g. zero): the interval collapses to the point
        low = high = delta
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_b, discordant, 0.5).pvalue)
    return PairedComparison(float(delta), float(low), float(high), p, only_a, only_b, n, confidence, resamples)


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """How closely a variant follows a reference on the same inputs."""

    top1_agreement: float
    kl_divergence: float
    max_abs_error: float
    max_rel_error: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> "Fidelity":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def fidelity(reference_logits: np.ndarray, variant_logits: np.ndarray) -> Fidelity:
    """Top-1 agreement (percent), mean KL(reference || variant) of softmaxes, max abs/rel logit error."""
    ref = np.asarray(reference_logits, dtype=np.float64)
    var = np.asarray(variant_logits, dtype=np.float64)
    if ref.shape != var.shape:
        raise ValueError(f"fidelity needs outputs of one shape: {ref.shape} vs {var.shape}")
    agree = float(100.0 * (ref.argmax(1) == var.argmax(1)).mean())
    log_p, log_q = log_softmax(ref, axis=1), log_softmax(var, axis=1)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
    abs_err = np.abs(ref - var)
    max_abs = float(abs_err.max()) if abs_err.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    return Fidelity(agree, max(kl, 0.0), max_abs, max_abs / max(scale, 1e-12))


T = TypeVar("T")


def pareto_front(items: Sequence[T], cost: Callable[[T], float | None], value: Callable[[T], float | None]) -> list[T]:
    """The items no other item beats on both axes (lower ``cost``, higher ``value``), cheapest first.

    Items missing either figure are left out; of two items with the same cost the better one is kept.
    """
    pts = sorted((i for i in items if cost(i) is not None and value(i) is not None),
                 key=lambda i: (cost(i), -value(i)))
    front, best = [], -math.inf
    for item in pts:
        if value(item) > best + 1e-12:
            front.append(item)
            best = value(item)
    return front
