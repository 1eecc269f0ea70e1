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
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from playbook.config import ConfigError, StrictConfig, check_choice, check_range
from playbook.data import Dataset, Split
from playbook.env import torch_threads
from playbook.paths import default_cache_dir
from playbook.records import sha256_path
from playbook.metrics import ClassificationMetrics, classification_metrics
from playbook.models import count_parameters, create_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


class TrainingError(RuntimeError):
    """Training diverged (NaN/inf loss) or collapsed to chance; nothing was cached."""


RECOMMENDED_MIN_STEPS = 2000  # below this many optimiser steps a model still rising on validation gets a warning


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
        min_steps: at least this many optimiser steps: on a small dataset ``epochs`` is raised to reach it, so
            the training budget scales with the data (0 = exactly ``epochs``).
        patience: stop early when validation top-1 has not improved for this many epochs after the warm-up
            (the best epoch's weights are kept); 0 = never stop early.
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
        head: train only the module of this name (e.g. a pretrained network's classifier ``_fc``); every other
            parameter is frozen and BatchNorm layers without a trainable parameter keep their statistics.
            Empty: train everything.
        seed: seed for initialisation and data order.
        device: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        threads: CPU threads for torch during training (0 = leave torch's default); restored afterwards.
    """

    epochs: int = 6
    min_steps: int = 0
    patience: int = 0
    steps: int = 0
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "onecycle"
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = False
    validate: bool = True
    head: str = ""
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("epochs", self.epochs, 0)
        check_range("min_steps", self.min_steps, 0)
        check_range("patience", self.patience, 0)
        check_range("steps", self.steps, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0)
        if self.lr == 0:
            raise ConfigError("lr=0 would leave the weights where they started; use a positive learning rate "
                              "(the default is 0.1 for training from scratch)")
        check_choice("schedule", self.schedule, ["onecycle", "cosine"])
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_choice("device", self.device, ["auto", "cpu", "cuda", "mps"])
        check_range("threads", self.threads, 0)

    def length(self) -> str:
        """How long this config trains, in words: ``"400 steps"`` for a fixed-step fine-tune, else
        ``"6 epoch(s)"``."""
        return f"{self.steps} steps" if self.steps else f"{self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training produced (or what the cache held), why it stopped, and what a reader should be warned of.

    ``stop_reason``: ``budget`` (every planned step ran), ``early_stop`` (validation stopped improving; the best
    epoch's weights kept), ``stopped`` (``fit``'s ``on_step`` ended it), ``cache`` (loaded from the checkpoint
    cache: see the history) or ``checkpoint``
    (the user's own weights, not trained here).
    """

    checkpoint: str
    from_cache: bool
    seconds: float
    device: str
    parameters: int
    history: tuple[dict[str, float], ...]
    steps: int = 0
    stop_reason: str = "budget"
    warnings: tuple[str, ...] = ()
    checkpoint_sha256: str = ""  # of the weights file as loaded or written: later stages check they get the same


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


def _state_dict_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """What does not fit between a state dict and a model: missing and unexpected keys, shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {list(getattr(state[k], 'shape', []))} vs model {list(own[k].shape)}"
              for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("shape mismatches", shapes), ("missing from the checkpoint", missing),
                         ("not in the model", unexpected)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {'; '.join(items[:3])})")
    return ", ".join(parts) or "the state dict does not load"


def read_state_dict(path: Path, user_file: bool = False) -> tuple[dict[str, Any], Any]:
    """The state dict a checkpoint holds (and the whole payload), loaded with ``weights_only=True``.

    Raises ``CheckpointError`` when the file is missing, corrupt, holds pickled objects other than tensors (never
    loaded, and ``weights_only=False`` is never suggested), is not a state dict, or holds NaN or infinite values
    (the weights of a diverged run would be measured and reported as if they were a model).  ``playbook run``
    calls it on ``-p checkpoint=`` before anything runs."""
    path = Path(path)
    fix = ("pass a state dict saved with torch.save(model.state_dict(), path) for this architecture"
           if user_file else "delete it to retrain")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        # torch's own message suggests weights_only=False, which would run the file's code: never pass that on
        found = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global:?) ?(?:GLOBAL )?([\w.]+)", text)
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text and found:
            what = f" ({found.group(1)})"
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects other than tensors{what}, which the playbook refuses to "
                f"load (they could run code); {fix}") from None
        first = next((line for line in text.splitlines() if line.strip()), "")
        if "Weights only load failed" in text:  # junk bytes: say what is wrong without torch's advice
            first = next((line.strip() for line in text.splitlines() if "load key" in line or "Error" in line),
                         "not a torch file")
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only torch file ({type(exc).__name__}: "
            f"{first}); {fix}") from exc
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(payload).__name__}, not a state dict; {fix}")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        floating = sum(1 for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite values in {len(bad)} of its {floating} "
                              f"floating-point tensors (e.g. {', '.join(bad[:3])}): the weights of a diverged "
                              f"training run measure nothing; {fix}")
    return state, payload


def load_checkpoint(model: nn.Module, path: Path, user_file: bool = False) -> dict[str, Any]:
    """Load weights into ``model`` with ``weights_only=True``; returns the stored metadata.

    ``user_file``: the path is the user's own checkpoint (not the cache), so the advice is to fix the file or
    the model, never to delete it.  What is refused before the model is touched: ``read_state_dict``.
    """
    path = Path(path)
    fix = ("pass a state dict saved with torch.save(model.state_dict(), path) for this architecture"
           if user_file else "delete it to retrain")
    state, payload = read_state_dict(path, user_file)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model {type(model).__name__}: "
                              f"{_state_dict_mismatch(model, state)}; {fix}") from exc
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> bool:
    """Write ``{"state_dict", "meta"}`` atomically, first writer wins; ``False`` when ``path`` already existed.

    Concurrent runs may share a cache and train the same key at once.  The file is written under a unique
    temporary name and then hard-linked into place, which fails if another run got there first: a checkpoint
    that a finished stage already recorded (with its SHA-256) is never replaced under it.  Where the file
    system has no hard links, an atomic rename is used instead (last writer wins there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # unique: concurrent runs may share a cache
    os.close(fd)
    try:
        torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta)}, tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FAT file systems)
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


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
    """What one ``fit`` did: per-epoch history, optimiser steps taken, every step's loss, and why it stopped."""

    history: list[dict[str, float]]
    steps: int
    losses: tuple[float, ...]
    stop_reason: str = "budget"
    planned_steps: int = 0


def planned_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimiser steps ``fit`` plans for ``n_train`` images: ``steps``, else ``epochs`` raised to ``min_steps``."""
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    if cfg.steps:
        return cfg.steps
    if cfg.epochs == 0:
        return 0
    return max(cfg.epochs * steps_per_epoch, cfg.min_steps)


def _lower_lr(lr: float) -> str:
    """A learning rate to suggest after ``lr`` diverged: the default (which trains every registered model) when
    ``lr`` is above it, else a tenth of ``lr``."""
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "lr")
    if lr > default:
        return f"the default lr={default:g}"
    return f"lr={lr / 10:g}"


def fit(model: nn.Module, dataset: Dataset, cfg: TrainConfig, progress: bool = True, loss_fn: LossFn | None = None,
        on_step: Callable[[], None] | None = None) -> FitResult:
    """Train ``model`` in place on ``dataset.train`` (training from scratch, fine-tuning and distillation).

    ``loss_fn(logits, labels, index)`` replaces cross-entropy: distillation passes one that looks up
    cached teacher logits by the images' ``index`` in the training split.  ``on_step()`` runs after
    every optimiser step (coremltools' compressors advance their schedules there); when it returns true, training
    ends there (``stop_reason="stopped"``: e.g. ``compress.torch_side.AgreementWatch``'s early stop).  Only parameters
    with ``requires_grad`` are optimised.  torch's thread count is restored afterwards.

    Raises ``TrainingError`` as soon as the loss is NaN or infinite (the model is then left as it was at that
    step; callers cache nothing).
    """
    device = pick_device(cfg.device)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        x_train = dataset.to_tensor(dataset.train.images)
        y_train = torch.from_numpy(dataset.train.labels)
        model.to(device)
        steps_per_epoch = max(1, math.ceil(len(y_train) / cfg.batch_size))
        total_steps = planned_steps(cfg, len(y_train))
        epochs = math.ceil(total_steps / steps_per_epoch)
        warmup_steps = int(0.25 * total_steps) if cfg.schedule == "onecycle" else 0
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
        step, stop_reason = 0, "budget"
        best_top1, best_state, since_best = -math.inf, None, 0
        for epoch in range(epochs):
            _train_mode(model)
            order = torch.randperm(len(y_train), generator=generator)
            total, count = 0.0, 0
            in_epoch = min(steps_per_epoch, total_steps - step)
            bar = tqdm(range(in_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       disable=not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0"))
            for i in bar:
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                xb = x_train[idx]
                if cfg.augment:
                    xb = _augment(xb, flip, generator)
                xb, yb = xb.to(device), y_train[idx].to(device)
                logits = model(xb)
                loss = loss_fn(logits, yb, idx.to(device)) if loss_fn else ce(logits, yb)
                value = float(loss.detach())
                if not math.isfinite(value):
                    model.to("cpu").eval()
                    raise TrainingError(
                        f"training diverged: the loss became {value} at step {step + 1} (epoch {epoch + 1}); "
                        f"lr={cfg.lr:g} is too high for this model and data, try {_lower_lr(cfg.lr)}. Nothing was "
                        "cached")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(value)
                total += value * len(idx)
                count += len(idx)
                step += 1
                if on_step is not None and on_step():
                    stop_reason = "stopped"
                    break
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{total / count:.3f}")
            val_top1 = (evaluate(model, dataset, dataset.val).top1 if cfg.validate and len(dataset.val)
                        else float("nan"))
            _train_mode(model)
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_top1": val_top1,
                            "lr": float(opt.param_groups[0]["lr"])})
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}, val top-1 {val_top1:.2f}%")
            if stop_reason == "stopped":
                break
            if cfg.patience and math.isfinite(val_top1):
                if val_top1 > best_top1:
                    best_top1, since_best = val_top1, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since_best += 1
                if step >= warmup_steps and since_best >= cfg.patience and step < total_steps:
                    stop_reason = "early_stop"
                    break
        if stop_reason == "early_stop" and best_state is not None:
            model.load_state_dict(best_state)
        model.to("cpu").eval()
    return FitResult(history, step, tuple(losses), stop_reason, total_steps)


def _train_mode(model: nn.Module) -> None:
    """``model.train()``, except that BatchNorm layers whose parameters are all frozen stay in eval mode: a frozen
    (e.g. pretrained) layer must not drift its running statistics towards the fine-tuning batches."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()


def freeze_all_but(model: nn.Module, head: str) -> int:
    """Freeze every parameter of ``model`` except those of its submodule ``head``; returns the trainable count."""
    try:
        keep = model.get_submodule(head)
    except AttributeError as exc:
        names = [n for n, _ in model.named_children()]
        raise ConfigError(f"head={head!r} is not a module of {type(model).__name__}; its top-level modules are "
                          f"{names}") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    for p in keep.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in keep.parameters())


def training_warnings(history: Sequence[dict[str, float]], steps: int, num_classes: int) -> list[str]:
    """What a reader must know about a training run: validation top-1 at or near chance, or still rising when a
    short run (fewer than ``RECOMMENDED_MIN_STEPS`` steps) stopped."""
    out = []
    vals = [h["val_top1"] for h in history if math.isfinite(h.get("val_top1", math.nan))]
    if not vals:
        return out
    chance = 100.0 / max(num_classes, 1)
    if vals[-1] < 1.5 * chance:
        out.append(f"the model is at or near chance: validation top-1 {vals[-1]:.1f}% with {num_classes} classes "
                   f"(chance {chance:.1f}%); every figure below describes a model that has not learned the task")
    if len(vals) >= 2 and steps < RECOMMENDED_MIN_STEPS and vals[-1] >= max(vals) and vals[-1] - vals[-2] > 0.5:
        out.append(f"training stopped after {steps} optimiser steps while validation top-1 was still rising "
                   f"({vals[-2]:.1f}% -> {vals[-1]:.1f}% in the last epoch): the model is likely undertrained; train "
                   f"longer (at least {RECOMMENDED_MIN_STEPS} steps, e.g. raise epochs or min_steps)")
    return out


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
                  progress: bool = True, chance_is_error: bool = True) -> tuple[nn.Module, TrainResult]:
    """The trained model for these configs: a user checkpoint, the cache, or a fresh training run.

    A user ``checkpoint`` path wins; else the cache under ``cache_dir`` (see ``cache_key``); else the model is
    trained with ``fit`` and cached.  A fresh run that diverges, or (with ``chance_is_error``) ends at or near
    chance on validation, raises ``TrainingError`` and caches nothing.  A corrupt file raises ``CheckpointError``.
    """
    model = build_model(model_cfg, dataset)
    n_params = count_parameters(model)
    if checkpoint:
        start = time.perf_counter()
        load_checkpoint(model, Path(checkpoint), user_file=True)
        return model.eval(), TrainResult(str(checkpoint), True, time.perf_counter() - start, "cpu", n_params, (),
                                         stop_reason="checkpoint", checkpoint_sha256=sha256_path(Path(checkpoint)))
    key = cache_key(model_cfg, dataset, train_cfg, architecture_signature(model))
    path = (cache_dir or default_cache_dir()) / f"{key}.pt"
    if path.exists():
        return _from_cache(model, path, n_params, dataset)
    start = time.perf_counter()
    if train_cfg.head:
        freeze_all_but(model, train_cfg.head)
    result = fit(model, dataset, train_cfg, progress=progress)
    for p in model.parameters():
        p.requires_grad_(True)
    seconds = time.perf_counter() - start
    warnings = training_warnings(result.history, result.steps, dataset.num_classes)
    if chance_is_error and result.steps and any("near chance" in w for w in warnings):
        raise TrainingError(
            f"training collapsed: {warnings[0]}. Nothing was cached. Check the learning rate (lr={train_cfg.lr:g}), "
            "the labels of the data, or train longer")
    device = str(pick_device(train_cfg.device))
    written = save_checkpoint(model, path, {"history": result.history, "seconds": seconds, "device": device,
                                            "steps": result.steps, "stop_reason": result.stop_reason,
                                            "model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    if not written:  # another run cached this key while we trained: use its weights, so model == cache file
        return _from_cache(model, path, n_params, dataset)
    return model.eval(), TrainResult(str(path), False, seconds, device, n_params, tuple(result.history), result.steps,
                                     result.stop_reason, tuple(warnings), sha256_path(path))


def _from_cache(model: nn.Module, path: Path, n_params: int, dataset: Dataset) -> tuple[nn.Module, TrainResult]:
    digest = sha256_path(path)  # before loading: the weights loaded are those of this digest
    meta = load_checkpoint(model, path)
    history = tuple(meta.get("history", ()))
    steps = int(meta.get("steps", 0))
    return model.eval(), TrainResult(str(path), True, float(meta.get("seconds", 0.0)), meta.get("device", "?"),
                                     n_params, history, steps, str(meta.get("stop_reason", "cache")),
                                     tuple(training_warnings(history, steps, dataset.num_classes)), digest)
