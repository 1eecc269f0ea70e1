"""Knowledge distillation: the loss, cached teacher logits, and an optional feature-map term.

The loss (Hinton, Vinyals, Dean 2015, arXiv:1503.02531), with ``alpha`` the weight of the hard labels::

    L = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
        + beta * MSE(adapter(student feature map), teacher feature map)

The ``T^2`` factor keeps the soft term's gradients the same size whatever ``T`` is (they scale as
``1/T^2``).  The optional feature term is a FitNets-style hint (Romero et al. 2014, arXiv:1412.6550): a 1x1
convolution (the *adapter*) maps the student's feature map to the teacher's channel count, and the squared error
between the two is added with weight ``beta``.

Training goes through ``playbook.train.fit`` (the one training loop): ``Distiller`` wraps the student and the
adapter in one ``nn.Module`` so that both are optimised, and ``Distiller.loss`` is the ``loss_fn`` ``fit`` calls
with ``(logits, labels, index)``.  The teacher is frozen, in eval mode, and never a registered sub-module (``fit``
moves and switches its model to train mode; the teacher must stay in eval mode with its BatchNorm statistics).

Teacher logits are computed once per training image and cached on disk (``teacher_logits``), keyed by the
teacher checkpoint's hash and the training split's identity; ``fit``'s ``index`` argument looks them up.  With
augmentation the images change every epoch, so the teacher runs on each augmented batch instead.

Trained students (scratch or distilled) are cached too (``train_or_load_student``): keyed by the student's initial
weights and architecture, the training config, the training images and labels, the objective and the teacher's hash,
so a rerun with the same config trains nothing and gets the same weights.

This module knows nothing of notebooks, stages or records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from playbook.config import ConfigError, StrictConfig, check_range
from playbook.data import Dataset


# --------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class DistillConfig(StrictConfig):
    """The distillation objective.

    Attributes:
        temperature: softmax temperature ``T`` of both teacher and student in the soft term (> 0).
        alpha: weight of the cross-entropy with the true labels, in [0, 1]; the soft term gets ``1 - alpha``.
        beta: weight of the feature-map term (>= 0; 0 switches it off and builds no adapter).
        feature_layer: name of the sub-module (``model.get_submodule``) whose output is the feature map matched
            by the feature term, the same name in teacher and student (the registry's models: ``stages``).
    """

    temperature: float = 4.0
    alpha: float = 0.5
    beta: float = 0.0
    feature_layer: str = "stages"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_temperature("temperature", self.temperature)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("beta", self.beta, 0.0)
        if self.beta > 0 and not self.feature_layer.strip():
            raise ConfigError(f"feature_layer={self.feature_layer!r} must name a sub-module when beta > 0")


def check_temperature(field: str, value: float) -> None:
    """Raise ``ConfigError`` naming ``field`` unless ``value`` is a number > 0 (a softmax temperature)."""
    check_range(field, value, 0.0)
    if not value > 0:
        raise ConfigError(f"{field}={value!r} must be > 0 (a softmax temperature; 1 is the plain softmax)")


# --------------------------------------------------------------------------- the loss
def soft_targets(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` row by row, as a numpy array (what the student is asked to match)."""
    check_temperature("temperature", temperature)
    t = torch.as_tensor(np.asarray(logits, dtype=np.float64) if isinstance(logits, np.ndarray) else logits.detach())
    return torch.softmax(t.double() / temperature, dim=-1).numpy()


def soft_label_examples(teacher: nn.Module, dataset: Dataset, temperatures: Sequence[float],
                        count: int = 3) -> dict[str, Any]:
    """The teacher's logits on the first test image of ``count`` different classes and their soft targets at each of
    ``temperatures`` (for the soft-label plot)."""
    labels = dataset.test.labels
    picks: list[int] = []
    for i, y in enumerate(labels):
        if int(y) not in {int(labels[j]) for j in picks}:
            picks.append(i)
        if len(picks) == count:
            break
    with torch.inference_mode():
        logits = teacher.eval()(dataset.to_tensor(dataset.test.images[picks])).numpy()
    return {"images": dataset.test.images[picks], "labels": [int(labels[i]) for i in picks], "logits": logits,
            "temperatures": list(temperatures), "class_names": list(dataset.class_names),
            "probabilities": {t: soft_targets(logits, t) for t in temperatures}}


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` (Hinton et al. 2015)."""
    hard = F.cross_entropy(student_logits, labels) if alpha > 0 else student_logits.new_zeros(())
    soft = soft_loss(student_logits, teacher_logits, temperature) if alpha < 1 else student_logits.new_zeros(())
    return alpha * hard + (1.0 - alpha) * soft


def logit_loss(logits: TeacherLogits | np.ndarray, temperature: float, alpha: float
               ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(student_logits, labels, index)`` for ``train.fit``: ``distillation_loss`` against the cached
    teacher logits of the batch's training images (``index`` = their rows in ``dataset.train``).  Compression
    fine-tunes use it so that a compressed student keeps learning from its teacher, not only from the labels."""
    table = torch.from_numpy(np.asarray(logits.logits if isinstance(logits, TeacherLogits) else logits,
                                        dtype=np.float32))
    check_temperature("temperature", temperature)

    def loss(student_logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        teacher = table[index.cpu()].to(student_logits.device)
        return distillation_loss(student_logits, teacher, labels, temperature, alpha)

    return loss


# --------------------------------------------------------------------------- a student sized by the budget
def bytes_per_element(fp16_bytes: int, eligible_elements: int, compressed_bytes: int) -> float:
    """Bytes one eligible weight element takes after a recipe, measured on one network: its FP16 package minus the
    recipe's package is what the recipe saved, spread over the elements it could compress (2 bytes each in FP16)."""
    if eligible_elements <= 0:
        raise ValueError("eligible_elements must be > 0")
    return 2.0 - (fp16_bytes - compressed_bytes) / eligible_elements


def choose_student(candidates: Sequence[dict[str, Any]], rate: float, max_bytes: float) -> dict[str, Any]:
    """The student to train: the one with the most parameters whose predicted compressed package (its FP16 package
    less ``2 - rate`` bytes per eligible element) is at most ``max_bytes``; when none is, the smallest prediction.

    ``candidates``: ``{"width", "parameters", "fp16_bytes", "eligible"}`` each (sizes of untrained students: exact,
    since a package's size does not depend on the weights' values).  Returns ``chosen``, ``fits`` and every
    candidate with its ``predicted_bytes``."""
    if not candidates:
        raise ValueError("choose_student needs at least one candidate")
    rows = [{**c, "predicted_bytes": float(c["fp16_bytes"]) - float(c["eligible"]) * (2.0 - rate)} for c in candidates]
    fitting = [r for r in rows if r["predicted_bytes"] <= max_bytes]
    chosen = (max(fitting, key=lambda r: (r["parameters"], -r["predicted_bytes"])) if fitting
              else min(rows, key=lambda r: r["predicted_bytes"]))
    return {"chosen": chosen, "fits": bool(fitting), "candidates": rows}


# --------------------------------------------------------------------------- cached teacher logits
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (the teacher checkpoint's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_split_id(dataset: Dataset) -> str:
    """A hash of what the teacher sees: the training split's images and labels, in order, and the normalisation."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"name": dataset.name, "shape": list(dataset.train.images.shape),
                              "mean": list(dataset.mean), "std": list(dataset.std)}).encode())
    digest.update(np.ascontiguousarray(dataset.train.images).tobytes())
    digest.update(np.ascontiguousarray(dataset.train.labels).astype(np.int64).tobytes())
    return digest.hexdigest()


def subset(dataset: Dataset, n: int) -> Dataset:
    """``dataset`` with only the first ``n`` training images (the split is already a seeded permutation, so this is
    a random subset; positions are unchanged, so cached teacher logits still line up).  ``n = 0``: all of them."""
    if n <= 0 or n >= len(dataset.train):
        return dataset
    return dataclasses.replace(dataset, train=dataset.train.head(n))


@dataclasses.dataclass(frozen=True)
class TeacherLogits:
    """The teacher's logits for every training image (row ``i`` = ``dataset.train`` image ``i``)."""

    logits: np.ndarray
    path: Path
    from_cache: bool
    seconds: float
    key: str
    train_top1: float  # the teacher's top-1 on those training images (how hard its soft labels are)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "from_cache": self.from_cache, "seconds": self.seconds, "key": self.key,
                "images": int(self.logits.shape[0]), "classes": int(self.logits.shape[1]),
                "train_top1": self.train_top1}


def teacher_logits_path(dataset: Dataset, checkpoint_sha256: str, cache_dir: Path) -> Path:
    """Where ``teacher_logits`` caches the logits of the teacher checkpoint ``checkpoint_sha256`` on ``dataset.train``
    (whether or not they are there yet): named by a hash of both, so a stage can tell before it starts."""
    key = hashlib.sha256(f"{checkpoint_sha256}:{training_split_id(dataset)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "teacher-logits" / f"{key}.npy"


def teacher_logits(teacher: nn.Module, dataset: Dataset, checkpoint_sha256: str, cache_dir: Path,
                   batch_size: int = 1024, progress: bool = True) -> TeacherLogits:
    """The frozen teacher's logits on ``dataset.train``, computed once and cached as ``.npy`` under ``cache_dir``.

    The cache file is named by a hash of the teacher checkpoint's SHA-256 and ``training_split_id(dataset)``, so a
    retrained teacher or another split never reuses stale logits.  Written atomically (concurrent runs may share the
    folder).  The teacher is put in eval mode and run without gradients.
    """
    path = teacher_logits_path(dataset, checkpoint_sha256, cache_dir)
    key = path.stem
    start = time.perf_counter()
    logits = None
    if path.exists():
        try:
            logits = np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            logits = None  # a truncated or foreign file: recompute and replace it
        if logits is not None and logits.shape[0] != len(dataset.train):
            logits = None
    from_cache = logits is not None
    if logits is None:
        teacher.eval()
        device = next(teacher.parameters()).device
        out = []
        bar = tqdm(range(0, len(dataset.train), batch_size), desc="teacher logits", disable=not progress, leave=False)
        with torch.inference_mode():
            for i in bar:
                xb = dataset.to_tensor(dataset.train.images[i:i + batch_size]).to(device)
                out.append(teacher(xb).float().cpu().numpy())
        logits = np.concatenate(out) if out else np.zeros((0, dataset.num_classes), np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
        os.close(fd)
        try:
            np.save(tmp, logits.astype(np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    top1 = float(100.0 * (logits.argmax(1) == dataset.train.labels).mean()) if len(logits) else float("nan")
    return TeacherLogits(logits.astype(np.float32), path, from_cache, time.perf_counter() - start, key, top1)


# --------------------------------------------------------------------------- feature maps
def feature_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, or ``ConfigError`` listing the top-level names that would be valid."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        valid = [n for n, _ in model.named_children()]
        raise ConfigError(f"feature_layer={name!r} is not a sub-module of {type(model).__name__}; its top-level "
                          f"sub-modules are {valid} (dotted paths such as 'stages.2' work too)") from None


class _Capture:
    """Records a module's output during one forward pass (a forward hook registered only for that pass)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.output: torch.Tensor | None = None
        self._handle: Any = None

    def __enter__(self) -> "_Capture":
        self.output = None
        self._handle = self.module.register_forward_hook(lambda _m, _i, out: setattr(self, "output", out))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def feature_shape(model: nn.Module, layer: str, example: torch.Tensor) -> tuple[int, ...]:
    """The shape of ``layer``'s output for one example batch (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), _Capture(feature_module(model, layer)) as cap:
        model(example)
    model.train(was_training)
    if not isinstance(cap.output, torch.Tensor) or cap.output.dim() != 4:
        shape = tuple(cap.output.shape) if isinstance(cap.output, torch.Tensor) else type(cap.output).__name__
        raise ConfigError(f"feature_layer={layer!r} must output a feature map (N, C, H, W); it gives {shape}")
    return tuple(cap.output.shape)


# --------------------------------------------------------------------------- the training module
class Distiller(nn.Module):
    """Student + optional 1x1 adapter, trained with ``train.fit(distiller, dataset, cfg, loss_fn=distiller.loss)``.

    ``forward`` returns the student's logits (what ``fit`` and evaluation see).  While training it also keeps what
    the loss needs: the student's feature map (feature term) and, when no cached logits are given or the feature
    term is on, the frozen teacher's outputs on the same (possibly augmented) batch.  Only ``student`` and
    ``adapter`` are sub-modules: they are what the optimiser updates.  Export ``distiller.student`` alone.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: DistillConfig, example: torch.Tensor,
                 cached_logits: np.ndarray | None = None) -> None:
        super().__init__()
        self.student = student
        self.cfg = cfg
        self._teacher = [teacher.eval()]  # a list: not a registered sub-module (fit must not train or move it)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._cached = torch.from_numpy(np.asarray(cached_logits, dtype=np.float32)) if cached_logits is not None \
            else None
        self.adapter: nn.Module | None = None
        if cfg.beta > 0:
            s_shape = feature_shape(student, cfg.feature_layer, example)
            t_shape = feature_shape(teacher, cfg.feature_layer, example)
            self.adapter = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
            self.feature_shapes = {"student": list(s_shape[1:]), "teacher": list(t_shape[1:])}
        self._batch: dict[str, torch.Tensor] = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @property
    def runs_teacher(self) -> bool:
        """Whether the teacher runs on every training batch (no cached logits, or the feature term is on)."""
        return self._cached is None or self.adapter is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.student(x)
        batch: dict[str, torch.Tensor] = {}
        if self.adapter is not None:
            with _Capture(feature_module(self.student, self.cfg.feature_layer)) as cap:
                logits = self.student(x)
            batch["student_features"] = cap.output
        else:
            logits = self.student(x)
        if self.runs_teacher:
            teacher = self.teacher.to(x.device).eval()
            with torch.no_grad():
                if self.adapter is not None:
                    with _Capture(feature_module(teacher, self.cfg.feature_layer)) as cap:
                        batch["teacher_logits"] = teacher(x)
                    batch["teacher_features"] = cap.output
                else:
                    batch["teacher_logits"] = teacher(x)
        self._batch = batch
        return logits

    def feature_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        """Mean squared error between ``adapter(student features)`` and the teacher's (pooled to its size)."""
        assert self.adapter is not None
        mapped = self.adapter(student_features)
        if mapped.shape[-2:] != teacher_features.shape[-2:]:
            mapped = F.adaptive_avg_pool2d(mapped, teacher_features.shape[-2:])
        return F.mse_loss(mapped, teacher_features)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The ``loss_fn`` for ``fit``: distillation loss of the batch ``forward`` just saw (``index`` = its
        positions in ``dataset.train``, used to look up cached teacher logits)."""
        if self._cached is not None and "teacher_logits" not in self._batch:
            teacher_out = self._cached.to(logits.device)[index]
        else:
            teacher_out = self._batch["teacher_logits"]
        loss = distillation_loss(logits, teacher_out, labels, self.cfg.temperature, self.cfg.alpha)
        if self.adapter is not None:
            loss = loss + self.cfg.beta * self.feature_loss(self._batch["student_features"],
                                                            self._batch["teacher_features"])
        self._batch = {}
        return loss


# --------------------------------------------------------------------------- trained students, cached by config
STUDENT_CACHE_FORMAT = 1  # raise when a change to the training code changes the weights a config gives


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values, in order): its architecture and weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def _split_id(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(list(images.shape)).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return digest.hexdigest()


def student_cache_key(student: nn.Module, dataset: Dataset, train_cfg: Any, distill: DistillConfig | None = None,
                      teacher_sha256: str = "", model_cfg: dict[str, Any] | None = None) -> str:
    """The cache name of a student trained from ``student``'s current (initial) weights with ``train_cfg`` on
    ``dataset.train`` (images and labels, by content: ``training_split_id``), plain cross-entropy (``distill`` None)
    or distilled with ``distill`` from the teacher of ``teacher_sha256``.  The validation split is in the key when
    ``train_cfg.validate`` (early stopping reads it); the device and the thread count are not (they do not change
    what is computed beyond rounding)."""
    if distill is not None and not teacher_sha256:
        raise ValueError("a distilled student's cache key needs the teacher checkpoint's sha256")
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in ("device", "threads")}
    blob = {"format": STUDENT_CACHE_FORMAT, "model": model_cfg, "initial_weights": state_sha256(student),
            "data": training_split_id(dataset), "train": train,
            "val": _split_id(dataset.val.images, dataset.val.labels) if train.get("validate") else None,
            "distill": distill.to_dict() if distill is not None else None,
            "teacher": teacher_sha256 if distill is not None else None}
    text = json.dumps(blob, sort_keys=True, default=str)
    kind = "distilled" if distill is not None else "scratch"
    return f"student-{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class StudentTraining:
    """How a student got its weights: trained now, or loaded from the cache (``from_cache``; ``seconds`` is then
    the original training time, ``load_seconds`` what loading took)."""

    key: str
    path: str
    from_cache: bool
    seconds: float
    final_loss: float  # mean loss of the last 20 optimiser steps
    steps: int
    stop_reason: str
    checkpoint_sha256: str
    load_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_or_load_student(student: nn.Module, dataset: Dataset, train_cfg: Any, *, distill: DistillConfig | None = None,
                  teacher: nn.Module | None = None, teacher_sha256: str = "",
                  cached_logits: np.ndarray | Callable[[], np.ndarray | None] | None = None,
                  example: torch.Tensor | None = None, model_cfg: dict[str, Any] | None = None,
                  cache_dir: Path | None = None, progress: bool = False) -> StudentTraining:
    """Train ``student`` in place on ``dataset.train`` (``train.fit``), or load the weights the same training gave
    before from ``<checkpoint cache>/students/`` (see ``student_cache_key``).

    ``distill`` None: plain cross-entropy.  Otherwise a ``Distiller`` with ``teacher`` (frozen) and
    ``cached_logits`` (the teacher's logits on every training image; ``None`` runs the teacher on each batch, as
    with augmentation).  ``cached_logits`` may be a function, called only when the student has to be trained, so a
    rerun that finds every student in the cache never computes or loads the teacher's logits.  ``example`` (a
    batch of two inputs) shapes the feature term's adapter (default: two calibration images).  A diverging run
    raises ``TrainingError`` and caches nothing; a corrupt cache file is replaced.
    """
    from playbook.paths import default_cache_dir
    from playbook.records import sha256_path
    from playbook.train import CheckpointError, fit, load_checkpoint, save_checkpoint

    key = student_cache_key(student, dataset, train_cfg, distill, teacher_sha256, model_cfg)
    path = Path(cache_dir or default_cache_dir()) / "students" / f"{key}.pt"

    def from_cache() -> StudentTraining | None:
        start = time.perf_counter()
        try:
            digest = sha256_path(path)
            meta = load_checkpoint(student, path)
        except (CheckpointError, OSError):
            return None
        return StudentTraining(key, str(path), True, float(meta.get("seconds", 0.0)),
                               float(meta.get("final_loss", float("nan"))), int(meta.get("steps", 0)),
                               str(meta.get("stop_reason", "cache")), digest, time.perf_counter() - start)

    if path.exists():
        found = from_cache()
        if found is not None:
            return found
        path.unlink(missing_ok=True)  # truncated or foreign: train again and replace it
    start = time.perf_counter()
    if distill is not None:
        if teacher is None:
            raise ValueError("a distilled student needs its teacher")
        logits = cached_logits() if callable(cached_logits) else cached_logits
        if example is None:
            example = dataset.to_tensor(dataset.calib.images[:2])
        distiller = Distiller(student, teacher, distill, example, cached_logits=logits)
        result = fit(distiller, dataset, train_cfg, progress=progress, loss_fn=distiller.loss)
    else:
        result = fit(student, dataset, train_cfg, progress=progress)
    seconds = time.perf_counter() - start
    final_loss = float(np.mean(result.losses[-20:])) if result.losses else float("nan")
    meta = {"seconds": seconds, "final_loss": final_loss, "steps": result.steps, "stop_reason": result.stop_reason,
            "history": result.history, "train": train_cfg.to_dict(), "model": model_cfg,
            "distill": distill.to_dict() if distill is not None else None, "teacher_sha256": teacher_sha256 or None}
    if not save_checkpoint(student, path, meta):  # another run cached this key meanwhile: take its weights
        found = from_cache()
        if found is not None:
            return found
    return StudentTraining(key, str(path), False, seconds, final_loss, result.steps, result.stop_reason,
                           sha256_path(path))


# --------------------------------------------------------------------------- distilled versus scratch, over seeds
def paired_seed_test(scratch_top1: Sequence[float], distilled_top1: Sequence[float],
                     confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test of distilled minus scratch top-1 over seeds (``scipy.stats.ttest_rel``, two-sided).

    Each seed is one pair: the same initial weights and data order, trained once with each loss, so the seed is
    the unit of replication and the per-seed differences are what varies.  Returns the means and sample standard
    deviations (``ddof=1``), the mean gain with its t-based ``confidence`` interval, ``t``, the p-value and how
    many seeds distillation won.  With one seed, or identical differences, no test is possible: ``p_value`` is
    ``None``.
    """
    from scipy import stats

    a = np.asarray(scratch_top1, dtype=np.float64)
    b = np.asarray(distilled_top1, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal, non-empty lists of per-seed top-1; got {a.shape} and {b.shape}")
    diff = b - a
    n = len(diff)

    def sd(x: np.ndarray) -> float | None:
        return float(x.std(ddof=1)) if n > 1 else None

    out: dict[str, Any] = {
        "test": "paired t-test over seeds (scipy.stats.ttest_rel), two-sided", "n": n,
        "scratch_mean": float(a.mean()), "scratch_std": sd(a), "distilled_mean": float(b.mean()),
        "distilled_std": sd(b), "gain_mean": float(diff.mean()), "gain_std": sd(diff),
        "wins": int((diff > 0).sum()), "t": None, "p_value": None, "ci_low": None, "ci_high": None,
        "confidence": confidence,
    }
    if n > 1 and float(diff.std(ddof=1)) > 0:
        res = stats.ttest_rel(b, a)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(diff.std(ddof=1)) / np.sqrt(n)
        out.update(t=float(res.statistic), p_value=float(res.pvalue), ci_low=float(diff.mean() - half),
                   ci_high=float(diff.mean() + half))
    return out
