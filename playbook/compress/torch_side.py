"""PyTorch-side compression: ``coremltools.optimize.torch`` on the trained model, ready for ``ct.convert``.

Fine-tunes (QAT, gradual pruning, DKM) run through ``playbook.train.fit`` with the compressor's
``step()`` as the per-step callback: one training loop for training, fine-tuning and distillation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from playbook.compress.recipes import CompressionError, Recipe, get_recipe, hint_for, quiet_compression
from playbook.config import ConfigError
from playbook.data import Dataset
from playbook.train import TrainConfig, fit

SKM_MAX_SAMPLES = 128  # SKMPalettizer computes one gradient per calibration image: cap the cost
GPTQ_MAX_SAMPLES = 256  # GPTQ's Hessians converge with a few hundred images (Frantar et al. use 128 sequences)
BIAS_CORRECTION_IMAGES = 256  # the default calibration images of the empirical bias correction
PRUNE_POWER = 3  # the exponent of MagnitudePruner's polynomial schedule (coremltools' default, Zhu & Gupta's choice)


def prune_updates(steps: int) -> list[int]:
    """The optimiser steps at which gradual pruning raises the sparsity: about 40 updates spread over the first
    half of the fine-tune (the polynomial schedule reaches the target at the last one), so the second half
    trains with the final mask."""
    half = max(steps // 2, 1)
    return list(range(0, half + 1, max(1, half // 40)))


def finetune(model: nn.Module, dataset: Dataset, steps: int, lr: float, batch_size: int, seed: int,
             on_step: Any, loss_fn: Any = None) -> tuple[float, ...]:
    """At most ``steps`` optimiser steps of ``train.fit`` (SGD, momentum 0.9, cosine decay from ``lr``, no weight
    decay, none of ``fit``'s validation passes: they would feed the quantizers' observers); returns the per-step
    losses.  ``on_step()`` runs after every step and ends the fine-tune when it returns true (``AgreementWatch``).
    ``loss_fn(logits, labels, index)``: ``fit``'s loss hook (e.g. ``distill.logit_loss``); default cross-entropy."""
    if steps <= 0:
        return ()
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, schedule="cosine", nesterov=False,
                      weight_decay=0.0, validate=False)
    losses = fit(model, dataset, cfg, progress=False, loss_fn=loss_fn, on_step=on_step).losses
    model.eval()
    return losses


@dataclasses.dataclass(frozen=True)
class EarlyStop:
    """Early stopping of a fine-tune on the validation images' agreement with the FP32 model: every ``every``
    optimiser steps (from ``from_step`` on, where the compression has reached its final strength) the model being
    fine-tuned classifies ``images``; the fine-tune ends after ``patience`` checks without a higher share of
    top-1 classes equal to ``reference`` (the FP32 model's), and the weights of the best check are kept."""

    images: torch.Tensor
    reference: torch.Tensor
    every: int
    patience: int
    from_step: int = 0


def agreement(model: nn.Module, images: torch.Tensor, reference: torch.Tensor, batch_size: int = 256) -> float:
    """The share of ``images`` whose top-1 class from ``model`` equals ``reference``: in eval mode, with every
    quantization observer paused (a fake-quantize module's ``observer_enabled`` buffer; otherwise the check would
    move the activation ranges), each module's mode and observer flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(b, b.clone()) for m in model.modules()
             if isinstance(b := getattr(m, "observer_enabled", None), torch.Tensor)]
    model.eval()
    for flag, _ in flags:
        flag.fill_(0)
    try:
        with torch.no_grad():
            predicted = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    finally:
        for flag, value in flags:
            flag.copy_(value)
        for module, mode in modes:
            module.training = mode
    return float((predicted == reference).float().mean())


class AgreementWatch:
    """``fit``'s ``on_step`` for a fine-tune with an ``EarlyStop``: runs the compressor's own ``step`` first, then
    the agreement checks; returns true to end the fine-tune.  ``finish()`` puts back the best check's weights and
    returns what the record keeps (checks, best step, where it stopped)."""

    def __init__(self, model: nn.Module, stop: EarlyStop, on_step: Any) -> None:
        self.model, self.stop, self.on_step = model, stop, on_step
        self.step = 0
        self.checks: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict[str, Any]] | None = None
        self.since_best = 0

    def __call__(self) -> bool:
        self.on_step()
        self.step += 1
        if self.step < self.stop.from_step or self.step % self.stop.every:
            return False
        share = agreement(self.model, self.stop.images, self.stop.reference)
        self.checks.append((self.step, share))
        if self.best is None or share > self.best[1]:
            # a deep copy keeps the state's ``_metadata``, which DKM's modules read back when it is loaded
            state = copy.deepcopy(self.model.state_dict())
            self.best, self.since_best = (self.step, share, state), 0
        else:
            self.since_best += 1
        return self.since_best >= self.stop.patience

    def finish(self, planned: int) -> dict[str, Any]:
        """Load the best check's weights when a later step was worse; what happened, for the record."""
        restored = self.best is not None and self.best[0] != self.step
        if restored:
            self.model.load_state_dict(self.best[2])
        return {"images": len(self.stop.images), "every": self.stop.every, "patience": self.stop.patience,
                "from_step": self.stop.from_step, "planned_steps": planned, "steps_run": self.step,
                "stopped_early": self.step < planned, "checks": [[s, round(a, 5)] for s, a in self.checks],
                "best_step": self.best[0] if self.best else None,
                "best_agreement": round(self.best[1], 5) if self.best else None, "restored_best": restored}


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


def compressed_share(model: nn.Module) -> dict[str, Any]:
    """How much of the model's conv/linear weight coremltools' torch compressors marked as compressed: a layer counts
    when it carries coremltools' compression metadata (``_COREML_/weight/...`` buffers, which every
    ``coremltools.optimize.torch`` compressor registers and ``ct.convert`` turns into ``constexpr_*`` ops).

    Returns ``weights_compressed`` and ``weights_total`` (elements), ``layers_compressed`` / ``layers_total`` and
    ``float_layers`` (the names left float)."""
    done = total = layers = count = 0
    left = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, LAYER_TYPES) or not isinstance(weight, torch.Tensor):
            continue
        count += 1
        total += weight.numel()
        if any(b.startswith("_COREML_/weight/") for b, _ in module.named_buffers(recurse=False)):
            done += weight.numel()
            layers += 1
        else:
            left.append(name)
    return {"weights_compressed": done, "weights_total": total, "layers_compressed": layers, "layers_total": count,
            "float_layers": left}


def zero_channel_layers(model: nn.Module) -> list[str]:
    """The conv/linear layers with an output channel whose weights are all zero (what folding a BatchNorm of scale 0
    leaves), in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)
            and isinstance(getattr(m, "weight", None), torch.Tensor)
            and bool((m.weight.detach().flatten(1).abs().amax(1) == 0).any())]


def depthwise_modules(model: nn.Module) -> list[str]:
    """Grouped convolutions (depthwise ones included): coremltools' GPTQ unfolds a convolution's input as if it had
    one group and fails on them (``layerwise_compression``: the Hessian's size does not match the weight's)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def float_with_grouped(model: nn.Module, small: Sequence[str]) -> tuple[list[str], list[str]]:
    """The modules a recipe that cannot handle grouped convolutions leaves float: ``small`` plus the grouped ones
    (``depthwise_modules``); and those grouped ones not already in ``small`` (``skipped_grouped_convs``); both sorted."""
    grouped = depthwise_modules(model)
    return sorted(set(small) | set(grouped)), sorted(m for m in grouped if m not in small)


def layerwise_compress(model: nn.Module, global_config: dict[str, Any], skip: Sequence[str],
                       calib: torch.Tensor, sequential: bool = False) -> nn.Module:
    """coremltools' ``LayerwiseCompressor`` (GPTQ, SparseGPT) with ``global_config`` on ``model``, ``skip`` left
    float, on the images ``calib`` in batches of 16.

    By default the whole model is one "layer": every conv/linear collects its Hessian from the float inputs in one
    pass (coremltools' sequential mode needs a chain of blocks called one after the other).  ``sequential=True``
    compresses one conv/linear at a time in the order the model calls them, each from its inputs in the model as
    compressed so far, so a layer compensates the error of the layers before it: what coremltools' sequential mode
    does for a chain of blocks ("propagate quantization error to the next layer", ``LayerwiseCompressor``), here for
    any call graph.  It costs one partial forward pass of ``calib`` per layer."""
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    batches = [calib[i:i + 16] for i in range(0, len(calib), 16)]
    if not sequential:
        cfg = LayerwiseCompressorConfig.from_dict({
            "global_config": global_config, "layers": [""], "module_name_configs": {m: None for m in skip},
            "calibration_nsamples": len(batches)})
        return LayerwiseCompressor(model, cfg).compress(batches, device="cpu")
    model = copy.deepcopy(model)
    cfg = LayerwiseCompressorConfig.from_dict({"global_config": global_config, "layers": [""],
                                               "calibration_nsamples": len(batches)})
    for name in _call_order(model, batches[0]):
        if name not in skip:
            layer = model.get_submodule(name)
            LayerwiseCompressor(layer, cfg).compress(_inputs_of(model, layer, batches), device="cpu", inplace=True)
    return model


class _Reached(Exception):
    """Stops a forward pass once the layer whose inputs are wanted has them."""


def _call_order(model: nn.Module, batch: torch.Tensor) -> list[str]:
    """The conv/linear modules of ``model`` in the order one forward pass calls them."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, _args: order.append(names[m])) for m in names]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))


def _inputs_of(model: nn.Module, layer: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What ``layer`` receives when ``model`` runs on each of ``batches`` (the forward pass stops there)."""
    seen: list[torch.Tensor] = []

    def catch(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())
        raise _Reached

    hook = layer.register_forward_pre_hook(catch)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Reached):
                    model(batch)
    finally:
        hook.remove()
    return seen


@contextlib.contextmanager
def zeros_kept(model: nn.Module, skipped: Sequence[str]) -> Iterator[None]:
    """While inside, the zero weights of every conv/linear layer outside ``skipped`` get no gradient; on exit they are
    set to exactly zero again (a fine-tune that keeps a pruned model's sparsity pattern)."""
    masks: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and name not in skipped:
            mask = (module.weight.detach() != 0).to(module.weight.dtype)
            masks[name] = mask
            hooks.append(module.weight.register_hook(lambda grad, mask=mask: grad * mask))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for name, mask in masks.items():
                model.get_submodule(name).weight.mul_(mask)


def sparsity_over_reached(model: nn.Module, skipped: Sequence[str], target: float) -> float:
    """The sparsity each conv/linear layer outside ``skipped`` needs so that ``target`` of all conv/linear weight
    elements are zero (the skipped ones stay dense); at most 0.95.  ``ConfigError`` if ``target`` is not in (0, 1)."""
    if not 0.0 < target < 1.0:
        raise ConfigError(f"target_sparsity={target!r} must be between 0 and 1")
    total = reached = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, LAYER_TYPES) and isinstance(weight, torch.Tensor):
            total += weight.numel()
            reached += 0 if name in skipped else weight.numel()
    return round(min(0.95, target * total / max(reached, 1)), 4)


# Ops that only move or keep values (no arithmetic): a re-quantization after them can take the quantization
# parameters of the value they read.  coremltools turns them into MIL ``reshape`` (or drops them: dropout, identity).
_VALUE_KEEPING_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_VALUE_KEEPING_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_VALUE_KEEPING_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)


def share_requantization(model: nn.Module) -> list[str]:
    """Give every activation re-quantization that follows a value-keeping op (``view``/``flatten``/dropout...) the
    quantization parameters of the tensor it re-quantizes; returns the re-quantizations changed.

    Why: a finalized W8A8 model (``LinearQuantizer``) observes some such ops on their own, e.g. efficientnet-lite0's
    ``x.view(n, -1)`` -> ``_dropout`` re-quantizes the pooled features from (scale 6/255, zero point 0) to
    (12/255, 128).  coremltools 9's pass ``common::int_op_canonicalization`` rewrites
    ``dequantize -> reshape -> quantize`` into a bare ``reshape`` of the integers *without* comparing the two
    pairs of parameters, so the program's next ``dequantize`` reads the codes with the wrong scale and zero point
    (features v -> 2 v - 6 before the classifier: 89 % in torch, 38 % through the package).  With equal parameters
    the re-quantization is the identity (the values already lie on that grid), the rewrite is exact, and torch and
    the package compute the same thing.  Models other than ``torch.fx.GraphModule`` are left alone.
    """
    import torch.fx

    if not isinstance(model, torch.fx.GraphModule):
        return []
    modules = dict(model.named_modules())

    def keeps_values(node: torch.fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in _VALUE_KEEPING_METHODS
        if node.op == "call_function":
            return node.target in _VALUE_KEEPING_FUNCTIONS
        return node.op == "call_module" and isinstance(modules.get(node.target), _VALUE_KEEPING_MODULES)

    def value(arg: Any) -> float:
        return float(_attr(model, arg.target) if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" else arg)

    changed = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target is not torch.quantize_per_tensor:
            continue
        src = node.args[0]
        while isinstance(src, torch.fx.Node) and keeps_values(src) and src.args:
            src = src.args[0]
        if src is node.args[0] or not (isinstance(src, torch.fx.Node) and src.op == "call_method"
                                       and src.target == "dequantize"):
            continue  # no value-keeping op in between, or it does not read a dequantized tensor
        upstream = src.args[0]
        if not (isinstance(upstream, torch.fx.Node) and upstream.op == "call_function"
                and upstream.target is torch.quantize_per_tensor):
            continue
        if len(node.args) != 4 or len(upstream.args) != 4:
            continue
        (_, s_new, z_new, dtype), (_, s_old, z_old, dtype_old) = node.args, upstream.args
        if (value(s_new), value(z_new), dtype) != (value(s_old), value(z_old), dtype_old):
            node.args = (node.args[0], s_old, z_old, dtype_old)
            changed.append(node.name)
    if changed:
        model.graph.eliminate_dead_code()  # the re-quantizations' own scale/zero-point reads
        model.graph.lint()
        model.recompile()
    return changed


def _attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


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
                   seed: int = 0, module_bits: Mapping[str, int] | None = None, *,
                   prepare: Sequence[str] | None = None, calibration_images: int | None = None,
                   loss_fn: Any = None, checks: int = 0, patience: int = 2,
                   check_images: int = 500) -> TorchCompression:
    """Apply a PyTorch-side recipe to a copy of ``model`` with ``coremltools.optimize.torch``.

    Weight tensors with at most ``weight_threshold`` elements are left alone (as on the Core ML
    side), except by the W8A8 recipes, which quantize every layer so activations stay int8
    end to end.  Calibration uses ``dataset.calib``; fine-tuning uses ``dataset.train``.
    ``module_bits`` (DKM only): a palette size per PyTorch module name, e.g. a mixed-bit allocation; only
    those modules are palettized (``module_name_configs``), each at its own size.

    ``prepare`` (default: the recipe's ``prepare``): ``compress.graph`` steps applied to the copy first, in order
    (``plain_convs``, ``fold_bn``, ``equalize``); a ``module_bits`` name whose layer ``plain_convs`` wrapped with its
    padding (``name`` -> ``name.1``) follows it.  ``calibration_images`` caps the calibration images of the
    data-aware post-training algorithms (SKM, GPTQ, bias correction; default: their own caps).  ``details`` records
    each preparation step, the share of conv/linear weights compressed (``weights_compressed`` / ``weights_total``,
    elements, from coremltools' metadata on the result) and, with a recipe option ``correct_bias``, the empirical
    bias correction after compression.  ``loss_fn(logits, labels, index)`` replaces the fine-tune's
    cross-entropy (``train.fit``'s hook): a distilled student passes ``distill.logit_loss`` to keep its teacher.
    A recipe option ``lr`` replaces ``lr`` for that recipe's fine-tune (``details["lr"]`` records the one used), and
    ``steps_factor`` multiplies ``finetune_steps`` for it, and ``early_stop=False`` runs all of them, unchecked;
    ``finetune=False`` skips SparseGPT's fine-tune.

    ``checks`` > 0 stops a fine-tune early (``EarlyStop``): that many checks spread over its steps, each the share
    of the first ``check_images`` validation images whose top-1 class equals the FP32 model's; after ``patience``
    checks without a better share it ends, and the best check's weights are kept.  Gradual pruning is checked only
    once it has reached its target sparsity.  ``details["early_stop"]`` records the checks; ``finetune_steps`` is
    the steps that ran.
    """
    from playbook.compress.graph import correct_bias, prepare_model
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
    calib = dataset.to_tensor(dataset.calib.images)
    steps_wanted = tuple(recipe.prepare if prepare is None else prepare)
    net, prepared_steps = prepare_model(copy.deepcopy(model).cpu().eval(), steps_wanted, calib[:8])
    reference = net
    net = copy.deepcopy(net)
    if module_bits:
        names = {n for n, _ in net.named_modules()}
        module_bits = {(f"{n}.1" if f"{n}.1" in names and not isinstance(net.get_submodule(n), LAYER_TYPES) else n): b
                       for n, b in module_bits.items()}
    small = _small_modules(net, weight_threshold)
    example = (calib[:1],)
    opts = dict(recipe.options)
    lr = float(opts.pop("lr", lr))  # a recipe's own fine-tune learning rate wins over the caller's
    finetune_steps = round(finetune_steps * recipe.steps_factor)  # a recipe may need longer
    checks = checks if recipe.early_stop else 0  # ... or every step it is given
    for own in ("steps_factor", "early_stop"):  # the fine-tune's options, not coremltools'
        opts.pop(own, None)
    n_calib = len(calib) if calibration_images is None else max(1, min(int(calibration_images), len(calib)))
    details: dict[str, Any] = {"algorithm": recipe.algorithm, "options": opts, "kept_float": small, "lr": lr,
                               "prepare": [p.to_dict() for p in prepared_steps]}
    losses: list[float] = []
    steps = 0
    tuned = 0.0
    start = time.perf_counter()

    def tune(prepared: nn.Module, on_step: Any, from_step: int = 0) -> list[float]:
        nonlocal tuned
        begin = time.perf_counter()
        watch = None
        if checks > 0 and steps > 0 and len(dataset.val):
            images = dataset.to_tensor(dataset.val.images[:check_images])
            with torch.no_grad():
                fp32_top1 = torch.cat([reference(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
            stop = EarlyStop(images, fp32_top1, max(1, steps // checks), patience, from_step)
            watch = AgreementWatch(prepared, stop, on_step)
        out = list(finetune(prepared, dataset, steps, lr, batch_size, seed, watch or on_step, loss_fn))
        if watch is not None:
            details["early_stop"] = watch.finish(steps)
        tuned += time.perf_counter() - begin
        return out

    with quiet_compression() as captured:
        try:
            if recipe.algorithm == "ptq":
                cfg = qnt.PostTrainingQuantizerConfig.from_dict(
                    {"global_config": {k: v for k, v in opts.items() if k != "correct_bias"},
                     "module_name_configs": {n: None for n in small}})
                net = qnt.PostTrainingQuantizer(net, cfg).compress()
            elif recipe.algorithm == "w8a8-static":
                # Observers on, fake quantization on, no optimiser: forward passes over the calibration
                # split fix the activation ranges (min/max), BatchNorm in eval mode keeps its statistics.
                cfg = qnt.LinearQuantizerConfig.from_dict({"global_config": {
                    "milestones": None, "quantization_scheme": opts.get("quantization_scheme", "symmetric"),
                    "weight_observer": "min_max",
                    "activation_observer": opts.get("activation_observer", "min_max")}})
                quantizer = qnt.LinearQuantizer(net, cfg)
                prepared = quantizer.prepare(example_inputs=example).eval()
                with torch.no_grad():
                    for i in range(0, len(calib), 64):
                        prepared(calib[i:i + 64])
                net = quantizer.finalize(prepared)
                details["calibration_images"] = len(calib)
                details["shared_requantization"] = share_requantization(net)
            elif recipe.algorithm == "qat":
                steps = finetune_steps
                weight_only = opts.get("activation_dtype") == "float32"
                # Weight-only QAT leaves small layers float like the other weight-only recipes, and grouped
                # convolutions too (int4 per channel without training cost efficientnet-lite0's depthwise convs
                # 25 points); a recipe's Core ML steps may quantize them after conversion.
                skip, grouped = float_with_grouped(net, small) if weight_only else ([], [])
                # milestones: observers and fake quantization from step 0, BatchNorm statistics frozen
                # half-way, observers frozen at 3/4 so the last steps train against fixed scales.
                cfg = qnt.LinearQuantizerConfig.from_dict({"global_config": {
                    "quantization_scheme": opts.get("quantization_scheme", "symmetric"),
                    "activation_observer": opts.get("activation_observer", "moving_average_min_max"),
                    **{k: opts[k] for k in ("weight_dtype", "activation_dtype") if k in opts},
                    "milestones": [0, 0, max(1, 3 * steps // 4), max(1, steps // 2)]},
                    "module_name_configs": {m: None for m in skip}})
                quantizer = qnt.LinearQuantizer(net, cfg)
                prepared = quantizer.prepare(example_inputs=example)
                losses = tune(prepared, quantizer.step)
                net = quantizer.finalize(prepared.eval())
                if weight_only:
                    details["skipped_grouped_convs"] = grouped
                else:
                    details["shared_requantization"] = share_requantization(net)
            elif recipe.algorithm == "prune-finetune":
                steps = finetune_steps
                updates = prune_updates(steps)
                cfg = prn.MagnitudePrunerConfig.from_dict({
                    "global_config": {"target_sparsity": opts["target_sparsity"],
                                      "scheduler": {"update_steps": updates, "power": PRUNE_POWER}},
                    "module_name_configs": {n: None for n in small}})
                pruner = prn.MagnitudePruner(net, cfg)
                prepared = pruner.prepare()
                losses = tune(prepared, pruner.step, from_step=updates[-1] + 1)
                net = pruner.finalize(prepared)
                details["schedule"] = {"kind": "polynomial decay (Zhu & Gupta, arXiv:1710.01878)", "power": PRUNE_POWER,
                                       "update_steps": updates}
            elif recipe.algorithm == "ptp":
                ptp_opts = {k: v for k, v in opts.items() if k != "correct_bias"}
                cfg = pal.PostTrainingPalettizerConfig.from_dict(
                    {"global_config": ptp_opts, "module_name_configs": {n: None for n in small}})
                net = pal.PostTrainingPalettizer(net, cfg).compress()
            elif recipe.algorithm == "gptq":
                n = min(n_calib if calibration_images is not None else GPTQ_MAX_SAMPLES, len(calib))
                skip, grouped = float_with_grouped(net, small)
                gptq = {k: v for k, v in opts.items() if k not in ("correct_bias", "sequential")}
                net = layerwise_compress(net, {"algorithm": "gptq", **gptq}, skip, calib[:n],
                                         sequential=bool(opts.get("sequential", False)))
                details.update(calibration_images=n, skipped_grouped_convs=grouped)
            elif recipe.algorithm == "sparsegpt":
                n = min(n_calib if calibration_images is not None else GPTQ_MAX_SAMPLES, len(calib))
                skip, grouped = float_with_grouped(net, small)
                sparsity = sparsity_over_reached(net, skip, float(opts["target_sparsity"]))
                net = layerwise_compress(net, {"algorithm": "sparse_gpt", "target_sparsity": sparsity,
                                               "weight_dtype": "float32"}, skip, calib[:n])
                details.update(calibration_images=n, skipped_grouped_convs=grouped, layer_sparsity=sparsity)
                steps = finetune_steps if opts.get("finetune", True) else 0
                if steps:
                    # The survivors train and the zeros stay zero, so SparseGPT's pruning metadata stays true.  Not
                    # coremltools' MagnitudePruner: its magnitude threshold ties at 0 once half the weights are
                    # zero, and it then keeps every weight.
                    with zeros_kept(net, skip):
                        losses = tune(net, lambda: None)
            elif recipe.algorithm == "skm":
                n = min(n_calib if calibration_images is not None else SKM_MAX_SAMPLES, len(calib))
                cfg = pal.SKMPalettizerConfig.from_dict({
                    "global_config": {k: v for k, v in opts.items() if k != "correct_bias"},
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
                    # coremltools divides each output channel by its scale before k-means: an all-zero channel (a
                    # folded BatchNorm whose scale is 0) gives NaN and the k-means fails ("index_add_(): argument
                    # 'index' ... must be Tensor, not NoneType"); such layers get one palette per 16 output channels
                    grouped = ({n: {**dkm_opts, "enable_per_channel_scale": False, "granularity": "per_grouped_channel",
                                    "group_size": min(16, net.get_submodule(n).weight.shape[0]),
                                    "weight_threshold": weight_threshold}
                                for n in zero_channel_layers(net)} if dkm_opts.get("enable_per_channel_scale") else {})
                    cfg = pal.DKMPalettizerConfig.from_dict({
                        "global_config": {**dkm_opts, "weight_threshold": weight_threshold},
                        "module_name_configs": grouped})
                    if grouped:
                        details["grouped_for_zero_channels"] = sorted(grouped)
                palettizer = pal.DKMPalettizer(net, cfg)
                prepared = palettizer.prepare()
                losses = tune(prepared, palettizer.step)
                net = palettizer.finalize(prepared)
            if opts.get("correct_bias"):
                n = min(int(opts["correct_bias"]) if calibration_images is None else n_calib, len(calib))
                fixed = correct_bias(reference, net, calib[:n])
                net = fixed.model
                details["bias_correction"] = fixed.to_dict()
        except (ValueError, NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError) as exc:
            raise CompressionError(recipe.name, str(exc).strip(), hint_for(str(exc), recipe)) from None
    details.update(compressed_share(net))
    details["messages"] = list(captured)
    return TorchCompression(net.eval(), time.perf_counter() - start, len(losses), tuple(losses), details, tuned)


