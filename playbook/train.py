"""Seeded training, evaluation and a checkpoint cache keyed by the training config.

``train_or_load`` is what notebooks call: it returns the cached model when the same
(model, dataset, training) config was trained before, so ``02_quantization`` and later
stages reuse the baseline instead of training it again.  Checkpoints are plain state
dicts loaded with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from playbook.config import ConfigError, StrictConfig, check_choice, check_range
from playbook.data import Dataset, Split
from playbook.env import torch_threads
from playbook.paths import default_cache_dir
from playbook.metrics import ClassificationMetrics, classification_metrics
from playbook.models import count_parameters, create_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class ModelConfig(StrictConfig):
    """Which architecture to build.  ``knobs`` are its width/depth options, e.g. ``{"width": 32}``."""

    name: str = "resnet"
    knobs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainConfig(StrictConfig):
    """How to train (from scratch, fine-tune, or distill: ``fit`` is the one training loop).

    Attributes:
        epochs: passes over the training split (0 = use the model as built, e.g. pretrained).
        steps: a fixed number of optimiser steps instead of ``epochs`` (fine-tunes); 0 = use ``epochs``.
        batch_size: images per step.
        lr: peak learning rate (SGD with momentum 0.9).
        schedule: ``onecycle`` (warm-up to ``lr`` then anneal; training from scratch) or ``cosine``
            (start at ``lr`` and decay; fine-tunes).
        nesterov: Nesterov momentum.
        weight_decay: L2 weight decay.
        label_smoothing: cross-entropy label smoothing.
        augment: random shifts (+-2 px) and, for non-digit data, horizontal flips.
        validate: compute validation top-1 after every epoch (and at the end of a ``steps`` run).
        seed: seed for initialisation and data order.
        device: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        threads: CPU threads for torch during training (0 = leave torch's default); restored afterwards.
    """

    epochs: int = 6
    steps: int = 0
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "onecycle"
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = False
    validate: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("epochs", self.epochs, 0)
        check_range("steps", self.steps, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0)
        check_choice("schedule", self.schedule, ["onecycle", "cosine"])
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_choice("device", self.device, ["auto", "cpu", "cuda", "mps"])
        check_range("threads", self.threads, 0)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training produced (or what the cache held)."""

    checkpoint: str
    from_cache: bool
    seconds: float
    device: str
    parameters: int
    history: tuple[dict[str, float], ...]


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple's MPS, then CPU for ``auto``; the named device otherwise."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' requested but CUDA is not available; use device='auto' or 'cpu'")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' requested but Apple MPS is not available; use device='auto' or 'cpu'")
    return torch.device(requested)


def architecture_signature(model: nn.Module) -> list[tuple[str, list[int]]]:
    """Names and shapes of the state dict: changes whenever the architecture (or a default knob) does."""
    return [(name, list(t.shape)) for name, t in model.state_dict().items()]


def cache_key(model_cfg: ModelConfig, dataset: Dataset, train_cfg: TrainConfig,
              architecture: list[tuple[str, list[int]]] | None = None) -> str:
    """Checkpoint name: model (config and architecture), data (name, sizes, input shape) and training config.

    The device, the thread count and whether validation ran are left out: they do not change the weights.
    """
    data_id = {"name": dataset.name, "train": len(dataset.train), "shape": list(dataset.input_shape),
               "classes": dataset.num_classes, "mean": dataset.mean}
    if architecture is None:
        architecture = architecture_signature(build_model(model_cfg, dataset))
    blob = json.dumps({"model": model_cfg.to_dict(), "architecture": architecture, "data": data_id,
                       "train": {k: v for k, v in train_cfg.to_dict().items() if k not in ("device", "threads", "validate")}},
                      sort_keys=True, default=str)
    return f"{model_cfg.name.replace(':', '_').replace('/', '_')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def build_model(model_cfg: ModelConfig, dataset: Dataset) -> nn.Module:
    """The architecture of ``model_cfg`` shaped for ``dataset`` (classes, channels, image size)."""
    return create_model(model_cfg.name, dataset.num_classes, dataset.in_channels,
                        image_size=dataset.image_size, **model_cfg.knobs)


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights into ``model`` with ``weights_only=True``; returns the stored metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only torch file ({type(exc).__name__}: {exc}); "
            "delete it to retrain, or pass a valid state dict"
        ) from exc
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(payload).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {str(exc).splitlines()[0]}") from exc
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # unique: concurrent runs may share a cache
    os.close(fd)
    try:
        torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta)}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _augment(x: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    pad = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    return x


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What one ``fit`` did: per-epoch history, optimiser steps taken, and the losses of every step."""

    history: list[dict[str, float]]
    steps: int
    losses: tuple[float, ...]


def fit(model: nn.Module, dataset: Dataset, cfg: TrainConfig, progress: bool = True, loss_fn: LossFn | None = None,
        on_step: Callable[[], None] | None = None) -> FitResult:
    """Train ``model`` in place on ``dataset.train`` (training from scratch, fine-tuning and distillation).

    ``loss_fn(logits, labels, index)`` replaces cross-entropy: distillation passes one that looks up
    cached teacher logits by the images' ``index`` in the training split.  ``on_step()`` runs after
    every optimiser step (coremltools' compressors advance their schedules there).  Only parameters
    with ``requires_grad`` are optimised.  torch's thread count is restored afterwards.
    """
    device = pick_device(cfg.device)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        x_train = dataset.to_tensor(dataset.train.images)
        y_train = torch.from_numpy(dataset.train.labels)
        model.to(device)
        steps_per_epoch = max(1, math.ceil(len(y_train) / cfg.batch_size))
        total_steps = cfg.steps or cfg.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        if cfg.schedule == "onecycle":
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, total_steps),
                                                             pct_start=0.25)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
        ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        flip = dataset.name != "digits"
        history: list[dict[str, float]] = []
        losses: list[float] = []
        step = 0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(y_train), generator=generator)
            total, count = 0.0, 0
            in_epoch = min(steps_per_epoch, total_steps - step)
            bar = tqdm(range(in_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for i in bar:
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                xb = x_train[idx]
                if cfg.augment:
                    xb = _augment(xb, flip, generator)
                xb, yb = xb.to(device), y_train[idx].to(device)
                logits = model(xb)
                loss = loss_fn(logits, yb, idx.to(device)) if loss_fn else ce(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if on_step is not None:
                    on_step()
                value = float(loss.detach())
                losses.append(value)
                total += value * len(idx)
                count += len(idx)
                step += 1
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{total / count:.3f}")
            val_top1 = (evaluate(model, dataset, dataset.val).top1 if cfg.validate and len(dataset.val)
                        else float("nan"))
            model.train()
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_top1": val_top1})
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}, val top-1 {val_top1:.2f}%")
        model.to("cpu").eval()
    return FitResult(history, step, tuple(losses))


@torch.inference_mode()
def predict_logits(model: nn.Module, dataset: Dataset, split: Split, batch_size: int = 1024) -> np.ndarray:
    """PyTorch logits for a split, in batches, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(split), batch_size):
        xb = dataset.to_tensor(split.images[start : start + batch_size]).to(device)
        out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, dataset.num_classes), np.float32)


def evaluate(model: nn.Module, dataset: Dataset, split: Split) -> ClassificationMetrics:
    """Top-1/top-5, per-class accuracy and confusion matrix of ``model`` on ``split``."""
    return classification_metrics(predict_logits(model, dataset, split), split.labels, dataset.class_names)


def train_or_load(model_cfg: ModelConfig, dataset: Dataset, train_cfg: TrainConfig,
                  cache_dir: Path | None = None, checkpoint: str | None = None,
                  progress: bool = True) -> tuple[nn.Module, TrainResult]:
    """The trained model for these configs: a user checkpoint, the cache, or a fresh training run.

    A user ``checkpoint`` path wins; else the cache under ``cache_dir`` (see ``cache_key``);
    else the model is trained with ``fit`` and cached.  A corrupt file raises ``CheckpointError``.
    """
    model = build_model(model_cfg, dataset)
    n_params = count_parameters(model)
    if checkpoint:
        start = time.perf_counter()
        load_checkpoint(model, Path(checkpoint))
        return model.eval(), TrainResult(str(checkpoint), True, time.perf_counter() - start, "cpu", n_params, ())
    key = cache_key(model_cfg, dataset, train_cfg, architecture_signature(model))
    path = (cache_dir or default_cache_dir()) / f"{key}.pt"
    if path.exists():
        start = time.perf_counter()
        meta = load_checkpoint(model, path)
        history = tuple(meta.get("history", ()))
        return model.eval(), TrainResult(str(path), True, float(meta.get("seconds", 0.0)), meta.get("device", "?"),
                                         n_params, history)
    start = time.perf_counter()
    history = fit(model, dataset, train_cfg, progress=progress).history
    seconds = time.perf_counter() - start
    device = str(pick_device(train_cfg.device))
    save_checkpoint(model, path, {"history": history, "seconds": seconds, "device": device,
                                  "model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    return model.eval(), TrainResult(str(path), False, seconds, device, n_params, tuple(history))
