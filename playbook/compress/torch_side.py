"""PyTorch-side compression: ``coremltools.optimize.torch`` on the trained model, ready for ``ct.convert``.

Fine-tunes (QAT, gradual pruning, DKM) run through ``playbook.train.fit`` with the compressor's
``step()`` as the per-step callback: one training loop for training, fine-tuning and distillation.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Mapping

import torch
from torch import nn

from playbook.compress.recipes import CompressionError, Recipe, get_recipe, hint_for, quiet_compression
from playbook.config import ConfigError
from playbook.data import Dataset
from playbook.train import TrainConfig, fit

SKM_MAX_SAMPLES = 128  # SKMPalettizer computes one gradient per calibration image: cap the cost
PRUNE_POWER = 3  # the exponent of MagnitudePruner's polynomial schedule (coremltools' default, Zhu & Gupta's choice)


def prune_updates(steps: int) -> list[int]:
    """The optimiser steps at which gradual pruning raises the sparsity: about 40 updates spread over the first
    half of the fine-tune (the polynomial schedule reaches the target at the last one), so the second half
    trains with the final mask."""
    half = max(steps // 2, 1)
    return list(range(0, half + 1, max(1, half // 40)))


def finetune(model: nn.Module, dataset: Dataset, steps: int, lr: float, batch_size: int, seed: int,
             on_step: Any) -> tuple[float, ...]:
    """``steps`` optimiser steps of ``train.fit`` (SGD, momentum 0.9, cosine decay from ``lr``, no weight decay,
    no validation passes: evaluating would feed the quantizers' observers); returns the per-step losses."""
    if steps <= 0:
        return ()
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, schedule="cosine", nesterov=False,
                      weight_decay=0.0, validate=False)
    losses = fit(model, dataset, cfg, progress=False, on_step=on_step).losses
    model.eval()
    return losses


LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def subclassed_layers(model: nn.Module) -> dict[str, int]:
    """The model's layers whose class derives from a torch layer type without being it, counted by qualified class
    name (e.g. ``efficientnet_lite_pytorch.utils.Conv2dStaticSamePadding``, an ``nn.Conv2d`` with its own padding
    step).  coremltools' ``DKMPalettizer`` finds the modules it palettizes by exact type
    (``DKMPalettizerModulesRegistry.get_palettizer_module``: ``type(module) in REGISTRY``), so it leaves such layers
    float without a word."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, LAYER_TYPES) and type(module) not in LAYER_TYPES:
            name = f"{type(module).__module__}.{type(module).__qualname__}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def _small_modules(model: nn.Module, weight_threshold: int) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.numel() <= weight_threshold]


@dataclasses.dataclass(frozen=True)
class TorchCompression:
    """A compressed PyTorch model ready for ``ct.convert`` and what it took."""

    model: nn.Module
    seconds: float
    finetune_steps: int
    losses: tuple[float, ...]
    details: dict[str, Any]
    finetune_seconds: float = 0.0


def compress_torch(recipe: str | Recipe, model: nn.Module, dataset: Dataset, finetune_steps: int = 200,
                   lr: float = 0.002, batch_size: int = 64, weight_threshold: int = 256,
                   seed: int = 0, module_bits: Mapping[str, int] | None = None) -> TorchCompression:
    """Apply a PyTorch-side recipe to a copy of ``model`` with ``coremltools.optimize.torch``.

    Weight tensors with at most ``weight_threshold`` elements are left alone (as on the Core ML
    side), except by the W8A8 recipes, which quantize every layer so activations stay int8
    end to end.  Calibration uses ``dataset.calib``; fine-tuning uses ``dataset.train``.
    ``module_bits`` (DKM only): a palette size per PyTorch module name, e.g. a mixed-bit allocation; only
    those modules are palettized (``module_name_configs``), each at its own size.
    """
    from coremltools.optimize.torch import palettization as pal
    from coremltools.optimize.torch import pruning as prn
    from coremltools.optimize.torch import quantization as qnt

    recipe = get_recipe(recipe)
    if recipe.side != "torch":
        raise ConfigError(f"{recipe.name!r} is a Core ML-side recipe; use compress_package")
    unknown = sorted(set(module_bits or {}) - {n for n, _ in model.named_modules()})
    if unknown:
        raise ConfigError(f"module_bits names {unknown}, which are not modules of the model")
    torch.manual_seed(seed)
    net = copy.deepcopy(model).cpu().eval()
    small = _small_modules(net, weight_threshold)
    calib = dataset.to_tensor(dataset.calib.images)
    example = (calib[:1],)
    opts = dict(recipe.options)
    details: dict[str, Any] = {"algorithm": recipe.algorithm, "options": opts, "kept_float": small}
    losses: list[float] = []
    steps = 0
    tuned = 0.0
    start = time.perf_counter()

    def tune(prepared: nn.Module, on_step: Any) -> list[float]:
        nonlocal tuned
        begin = time.perf_counter()
        out = list(finetune(prepared, dataset, steps, lr, batch_size, seed, on_step))
        tuned += time.perf_counter() - begin
        return out

    with quiet_compression() as captured:
        try:
            if recipe.algorithm == "ptq":
                cfg = qnt.PostTrainingQuantizerConfig.from_dict(
                    {"global_config": opts, "module_name_configs": {n: None for n in small}})
                net = qnt.PostTrainingQuantizer(net, cfg).compress()
            elif recipe.algorithm == "w8a8-static":
                # Observers on, fake quantization on, no optimiser: forward passes over the calibration
                # split fix the activation ranges (min/max), BatchNorm in eval mode keeps its statistics.
                cfg = qnt.LinearQuantizerConfig.from_dict({"global_config": {
                    "milestones": None, "quantization_scheme": "symmetric", "weight_observer": "min_max",
                    "activation_observer": opts.get("activation_observer", "min_max")}})
                quantizer = qnt.LinearQuantizer(net, cfg)
                prepared = quantizer.prepare(example_inputs=example).eval()
                with torch.no_grad():
                    for i in range(0, len(calib), 64):
                        prepared(calib[i:i + 64])
                net = quantizer.finalize(prepared)
                details["calibration_images"] = len(calib)
            elif recipe.algorithm == "qat":
                steps = finetune_steps
                # milestones: observers and fake quantization from step 0, BatchNorm statistics frozen
                # half-way, observers frozen at 3/4 so the last steps train against fixed scales.
                cfg = qnt.LinearQuantizerConfig.from_dict({"global_config": {
                    "quantization_scheme": "symmetric",
                    "milestones": [0, 0, max(1, 3 * steps // 4), max(1, steps // 2)]}})
                quantizer = qnt.LinearQuantizer(net, cfg)
                prepared = quantizer.prepare(example_inputs=example)
                losses = tune(prepared, quantizer.step)
                net = quantizer.finalize(prepared.eval())
            elif recipe.algorithm == "prune-finetune":
                steps = finetune_steps
                updates = prune_updates(steps)
                cfg = prn.MagnitudePrunerConfig.from_dict({
                    "global_config": {"target_sparsity": opts["target_sparsity"],
                                      "scheduler": {"update_steps": updates, "power": PRUNE_POWER}},
                    "module_name_configs": {n: None for n in small}})
                pruner = prn.MagnitudePruner(net, cfg)
                prepared = pruner.prepare()
                losses = tune(prepared, pruner.step)
                net = pruner.finalize(prepared)
                details["schedule"] = {"kind": "polynomial decay (Zhu & Gupta, arXiv:1710.01878)", "power": PRUNE_POWER,
                                       "update_steps": updates}
            elif recipe.algorithm == "skm":
                n = min(len(calib), SKM_MAX_SAMPLES)
                cfg = pal.SKMPalettizerConfig.from_dict({
                    "global_config": {"n_bits": opts["n_bits"]},
                    "module_name_configs": {m: None for m in small}, "calibration_nsamples": n})
                labels = torch.from_numpy(dataset.calib.labels)
                loader = [(calib[i:i + 16], labels[i:i + 16]) for i in range(0, n, 16)]
                net = pal.SKMPalettizer(net, cfg).compress(
                    dataloader=loader, loss_fn=lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1]))
                details["calibration_images"] = n
            elif recipe.algorithm == "dkm":
                steps = finetune_steps
                dkm_opts = {k: v for k, v in opts.items() if k != "allocation_from"}
                if module_bits:
                    cfg = pal.DKMPalettizerConfig.from_dict({"module_name_configs": {
                        name: {**dkm_opts, "n_bits": int(bits), "weight_threshold": weight_threshold}
                        for name, bits in module_bits.items()}})
                    details["module_bits"] = dict(module_bits)
                else:
                    cfg = pal.DKMPalettizerConfig.from_dict({
                        "global_config": {**dkm_opts, "weight_threshold": weight_threshold}})
                palettizer = pal.DKMPalettizer(net, cfg)
                prepared = palettizer.prepare()
                losses = tune(prepared, palettizer.step)
                net = palettizer.finalize(prepared)
        except (ValueError, NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError) as exc:
            raise CompressionError(recipe.name, str(exc).strip(), hint_for(str(exc), recipe)) from None
    details["messages"] = list(captured)
    return TorchCompression(net.eval(), time.perf_counter() - start, steps, tuple(losses), details, tuned)


