"""One call compresses a model: ``compress(recipe, source, cfg)`` for every recipe of the catalogue.

A recipe takes one of four paths, and this module is the only place that chooses between them:

1. **Core ML side** (``side="coreml"``): the uncompressed program of the right precision and deployment target
   (``ModelSource.program``) goes through ``compress_package``;
2. **Core ML side, per-layer allocation** (``allocation=True``): a ``search.BitAllocator`` chooses each layer's
   palette size on validation images and writes that package;
3. **PyTorch side** (``side="torch"``): ``compress_torch`` on a copy of the model (a DKM recipe with
   ``allocation_from`` trains at the per-module sizes the allocator chose), then ``export_model``;
4. **PyTorch side, then Core ML steps** (a torch recipe with ``steps``): the converted package gets the recipe's
   Core ML steps on top of what the PyTorch algorithm stored (``compress_converted``; joint compression).

The contract, as in coremltools' ``optimize`` (one function per technique taking ``(model, config)``):

* in: a ``Recipe`` (or its name), a ``ModelSource`` (the PyTorch model, the data, how it exports, and the
  uncompressed programs already made), a ``CompressConfig``; optionally a ``BitAllocator`` (paths 2 and DKM with
  ``allocation_from``: without one they raise ``ConfigError``), ``exclude`` (program weights kept float, Core ML
  side), ``out_dir`` and ``stem`` (where the package goes) and ``metadata`` (written into the package);
* out: a ``Compressed`` (the package path, its deployment target and precision, the seconds spent, fine-tune
  figures and the compressor's details);
* raises ``CompressionError`` when coremltools refuses the recipe (the caller records it and goes on).

Knows nothing of notebooks or stages.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from playbook.compress.coreml_side import compress_converted, compress_package
from playbook.compress.recipes import Recipe, get_recipe, required_target
from playbook.compress.search import BitAllocator
from playbook.compress.torch_side import TorchCompression, compress_torch
from playbook.config import ConfigError, StrictConfig, check_choice, check_range
from playbook.coreml import ExportConfig, export_model, model_sha256
from playbook.data import Dataset


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(StrictConfig):
    """The fine-tune of the PyTorch-side recipes (QAT, gradual pruning, DKM): at most ``steps`` optimiser steps of
    ``batch_size`` images, SGD with momentum 0.9 and cosine decay from ``lr``, seeded by ``seed``.

    ``checks`` > 0 stops it early on the validation split (``compress.torch_side.EarlyStop``): that many checks
    spread over the steps, each the share of the first ``check_images`` validation images whose top-1 class is the
    FP32 model's; after ``patience`` checks without a higher share the fine-tune ends with the best check's weights.
    0: every step runs.  A fine-tune shorter than ``checks`` steps is checked after every step."""

    steps: int = 200
    lr: float = 0.002
    batch_size: int = 64
    seed: int = 0
    checks: int = 0
    patience: int = 2
    check_images: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("finetune_steps", self.steps, 0)
        check_range("finetune_lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("finetune_checks", self.checks, 0)
        check_range("finetune_patience", self.patience, 1)
        check_range("finetune_check_images", self.check_images, 1)


@dataclasses.dataclass(frozen=True)
class CompressConfig(StrictConfig):
    """How every recipe is applied.

    Attributes:
        precision: compute precision of the compressed programs (a recipe may name its own): ``fp16`` or ``fp32``.
        weight_threshold: tensors with at most this many elements stay uncompressed.
        retarget: raise the deployment target to what the recipe needs (else coremltools refuses the recipe).
        finetune: the PyTorch-side fine-tune.
    """

    precision: str = "fp16"
    weight_threshold: int = 256
    retarget: bool = True
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_range("weight_threshold", self.weight_threshold, 0)


class ModelSource:
    """What a recipe compresses: the PyTorch model, its data, how it exports, and its uncompressed programs.

    ``programs`` maps ``(precision, deployment target)`` to packages that already exist (e.g. the baseline's
    exports); any other combination is exported once into ``out_dir/_base`` and kept.  ``metadata`` goes into
    every package exported here.  ``loss_fn(logits, labels, index)`` is the PyTorch-side fine-tune's loss
    (``train.fit``'s hook, e.g. ``distill.logit_loss`` for a student with its teacher's logits); ``None``:
    cross-entropy on the labels.  A fine-tuned PyTorch-side compression is kept (``torch_compression``) so that a
    joint recipe whose Core ML steps go on top of the same fine-tune does not train it again."""

    def __init__(self, model: nn.Module, dataset: Dataset, export_cfg: ExportConfig, out_dir: Path,
                 programs: dict[tuple[str, str], Path] | None = None, metadata: dict[str, Any] | None = None,
                 loss_fn: Any = None) -> None:
        self.model = model
        self.dataset = dataset
        self.export_cfg = export_cfg
        self.out_dir = Path(out_dir)
        self.metadata = dict(metadata or {})
        self.loss_fn = loss_fn
        self._programs: dict[tuple[str, str], Path] = {k: Path(v) for k, v in (programs or {}).items()}
        self._tuned: dict[str, tuple[str, TorchCompression]] = {}

    @property
    def target(self) -> str:
        """The deployment target the model is exported at unless a recipe needs a newer one."""
        return self.export_cfg.minimum_deployment_target

    def program(self, precision: str, target: str) -> Path:
        """The uncompressed package at ``precision`` and ``target``: a given one, else exported once."""
        key = (precision, target)
        if key not in self._programs:
            cfg = self.export_cfg.replace(precision=precision, minimum_deployment_target=target)
            self._programs[key] = export_model(self.model, self.dataset, cfg, self.out_dir / "_base",
                                               f"{precision}-{target}", metadata=self.metadata).path
        return self._programs[key]

    def torch_compression(self, key: str, recipe: str, make: Callable[[], TorchCompression]) -> TorchCompression:
        """The PyTorch-side compression that ``key`` describes (algorithm, options, preparation, fine-tune,
        threshold, per-module bits): ``make()`` once.  A later recipe with the same key gets the same compressed
        model at no cost: its seconds are 0 and ``details["finetune_reused_from"]`` names the recipe that made it.
        Only fine-tuned compressions are kept (they cost minutes on a large network); the others are made each
        time."""
        if key in self._tuned:
            first, made = self._tuned[key]
            return dataclasses.replace(made, seconds=0.0, finetune_seconds=0.0,
                                       details={**made.details, "finetune_reused_from": first})
        made = make()
        if made.finetune_steps:
            self._tuned[key] = (recipe, made)
        return made

    def target_for(self, recipe: Recipe, retarget: bool = True) -> str:
        """The deployment target ``recipe``'s package gets: raised to the recipe's minimum when ``retarget``."""
        return required_target(self.target, recipe.min_target) if retarget else self.target


@dataclasses.dataclass(frozen=True)
class Compressed:
    """A compressed package and what it took.

    ``seconds`` is compression and export together (fine-tune included); ``facts()`` is what a variant record
    keeps of it."""

    path: Path
    recipe: Recipe
    target: str
    precision: str
    seconds: float
    export_seconds: float = 0.0
    finetune_steps: int = 0
    finetune_seconds: float = 0.0
    finetune_images: int = 0
    finetune_loss: tuple[float, float] | None = None
    allocation: dict[str, Any] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """The record fields of this compression (``compress_seconds``, fine-tune figures, bits per weight)."""
        out: dict[str, Any] = {"compress_seconds": self.seconds, "export_seconds": self.export_seconds,
                               "finetune_steps": self.finetune_steps, "precision": self.precision}
        if self.recipe.side == "torch":
            out.update(finetune_seconds=self.finetune_seconds, finetune_images=self.finetune_images,
                       finetune_loss=list(self.finetune_loss) if self.finetune_loss else None,
                       finetune_lr=self.details.get("lr") if self.finetune_steps else None)
        if self.allocation is not None:
            out.update(allocation_seconds=self.allocation["seconds"],
                       bits_per_weight=self.allocation["bits_per_weight"])
        return out


def compress(recipe: str | Recipe, source: ModelSource, cfg: CompressConfig, *, out_dir: Path,
             stem: str | None = None, allocator: BitAllocator | None = None, exclude: Sequence[str] = (),
             metadata: dict[str, Any] | None = None) -> Compressed:
    """Compress ``source`` with ``recipe`` into ``out_dir/<stem>.mlpackage`` (``stem``: the recipe's name).

    See the module's docstring for the four paths and the contract.  ``CompressionError`` (coremltools refused)
    propagates; a recipe that needs validation data without an ``allocator`` raises ``ConfigError``."""
    recipe = get_recipe(recipe)
    stem = stem or recipe.name
    target = source.target_for(recipe, cfg.retarget)
    precision = recipe.precision or cfg.precision
    tag = {"playbook.recipe": recipe.name, "playbook.weights": recipe.description, **(metadata or {})}
    if recipe.side == "coreml":
        base = source.program(precision, target)
        if recipe.allocation:
            if allocator is None:
                raise ConfigError(f"{recipe.name!r} chooses a palette size per layer on validation images: pass a "
                                  "BitAllocator (compress.search) to compress()")
            made, allocation = allocator.allocate(recipe, base, out_dir, stem, metadata=metadata)
            return Compressed(made.path, recipe, target, precision, made.seconds, allocation=allocation,
                              details=allocation)
        made = compress_package(recipe, base, out_dir, stem, cfg.weight_threshold, exclude=exclude,
                                metadata=metadata)
        return Compressed(made.path, recipe, target, precision, made.seconds,
                          details={"messages": list(made.messages)})
    if exclude:
        raise ConfigError(f"exclude names program weights, which only Core ML-side recipes take ({recipe.name!r} "
                          "is a PyTorch-side recipe)")
    module_bits = None
    source_name = recipe.options.get("allocation_from")
    if source_name:
        if allocator is None:
            raise ConfigError(f"{recipe.name!r} trains at the palette sizes {source_name!r} chooses on validation "
                              "images: pass a BitAllocator (compress.search) to compress()")
        origin = get_recipe(source_name)
        module_bits = allocator.module_bits(recipe, origin, source.program(cfg.precision,
                                                                           source.target_for(origin, cfg.retarget)))
    ft = cfg.finetune
    key = json.dumps({"algorithm": recipe.algorithm, "options": recipe.options, "prepare": list(recipe.prepare),
                      "finetune": dataclasses.asdict(ft), "weight_threshold": cfg.weight_threshold,
                      "module_bits": module_bits}, sort_keys=True, default=str)
    tc = source.torch_compression(key, recipe.name, lambda: compress_torch(
        recipe, source.model, source.dataset, ft.steps, ft.lr, ft.batch_size, cfg.weight_threshold, ft.seed,
        module_bits=module_bits, loss_fn=source.loss_fn, checks=ft.checks, patience=ft.patience,
        check_images=ft.check_images))
    with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors, at trace time
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        export = export_model(tc.model, source.dataset,
                              source.export_cfg.replace(precision=precision, minimum_deployment_target=target),
                              out_dir, stem, metadata={**source.metadata, **tag,
                                                       "playbook.source_model_sha256": model_sha256(source.model)})
    path, details, seconds = export.path, dict(tc.details), tc.seconds + export.seconds
    if recipe.steps:  # Core ML steps on top of what the PyTorch algorithm stored (joint compression)
        made = compress_converted(recipe, export.path, out_dir, stem, cfg.weight_threshold, metadata=metadata)
        path, seconds = made.path, seconds + made.seconds
        details["messages"] = [*details.get("messages", []), *made.messages]
    return Compressed(path, recipe, target, precision, seconds, export_seconds=export.seconds,
                      finetune_steps=tc.finetune_steps, finetune_seconds=tc.finetune_seconds,
                      finetune_images=tc.finetune_steps * ft.batch_size,
                      finetune_loss=(tc.losses[0], tc.losses[-1]) if tc.losses else None, details=details)
