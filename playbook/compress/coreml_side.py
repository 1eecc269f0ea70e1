"""Core ML-side compression: ``coremltools.optimize.coreml`` on a saved ML program.

``compress_package`` applies a recipe's steps (quantize, palettize, prune; two steps make a joint
recipe) to a package and saves the result; ``weight_layers`` lists the program's weights in order with
the PyTorch module each came from, for per-layer configs and sensitivity tables.

``weight_threshold``: coremltools leaves tensors with at most this many elements uncompressed
(default 2048).  The playbook's models are small, so its stages use 256 and record it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from playbook.compress.recipes import CompressionError, Recipe, get_recipe, hint_for, quiet_compression
from playbook.compress.torch_side import LAYER_TYPES
from playbook.config import ConfigError
from playbook.coreml import ct, release_on_collect, safe_package_path, save_package

_OP_CONFIG = {"quantize": "OpLinearQuantizerConfig", "palettize": "OpPalettizerConfig",
              "prune": "OpMagnitudePrunerConfig"}
_COMPRESS_FN = {"quantize": "linear_quantize_weights", "palettize": "palettize_weights", "prune": "prune_weights"}
WEIGHT_CONSUMERS = ("conv", "conv_transpose", "linear", "matmul")


def op_config(kind: str, options: dict[str, Any], weight_threshold: int) -> Any:
    """The coremltools per-op config for one Core ML step (``OpPalettizerConfig(...)`` etc.)."""
    import coremltools.optimize.coreml as oc

    return getattr(oc, _OP_CONFIG[kind])(**options, weight_threshold=weight_threshold)


def load_mlmodel(package: Path | Any) -> Any:
    """An ``MLModel`` for compression: a path is loaded with ``skip_model_load=True`` (works on Linux)."""
    if isinstance(package, (str, Path)):
        return ct.models.MLModel(str(package), skip_model_load=True)
    return package


def compress_mlmodel(recipe: str | Recipe, package: Path | Any, weight_threshold: int = 256,
                     exclude: Sequence[str] = (), only: Sequence[str] | None = None,
                     messages: list[str] | None = None,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """Apply a Core ML recipe to a package (path) or ``MLModel``; returns the compressed ``MLModel``.

    Args:
        recipe: a Core ML side recipe (name or ``Recipe``).
        package: the ``.mlpackage`` path or a loaded ``MLModel`` (not modified).
        weight_threshold: tensors with at most this many elements stay uncompressed.
        exclude: weight (const op) names kept uncompressed: ``op_name_configs={name: None}``.
        only: if given, compress only these weights (``global_config=None`` plus one
            ``op_name_configs`` entry each) -- the per-layer sensitivity analysis uses this.
        messages: a list that receives coremltools' warnings (e.g. layers ``per_block`` skipped).
        overrides: per-weight changes to the first step's options, e.g. ``{name: {"nbits": 3}}`` for a
            mixed-bit palette: each becomes that weight's own ``op_name_configs`` entry.

    Raises:
        CompressionError: coremltools refused (e.g. an iOS18-only recipe on an iOS17 program),
            with coremltools' message and a hint.
        ConfigError: a name in ``exclude``/``only`` is not a weight of the program.
    """
    recipe = get_recipe(recipe)
    if recipe.side != "coreml":
        raise ConfigError(f"{recipe.name!r} is a PyTorch-side recipe; use compress_torch (then compress_converted "
                          "for its Core ML steps)")
    return _apply_steps(recipe, load_mlmodel(package), weight_threshold, exclude, only, messages, overrides,
                        joint_from=1)


def _apply_steps(recipe: Recipe, mlmodel: Any, weight_threshold: int, exclude: Sequence[str],
                 only: Sequence[str] | None, messages: list[str] | None,
                 overrides: Mapping[str, Mapping[str, Any]] | None, joint_from: int) -> Any:
    """Run ``recipe.steps`` on ``mlmodel``; steps from index ``joint_from`` on build on what is already compressed
    (``joint_compression=True``)."""
    import coremltools.optimize.coreml as oc

    overrides = {name: dict(opts) for name, opts in (overrides or {}).items()}
    names = set(exclude) | set(only or ()) | set(overrides)
    metadata = oc.get_weights_metadata(mlmodel, weight_threshold=0) if recipe.steps else {}
    unknown = sorted(names - set(metadata))
    if unknown:
        raise ConfigError(f"{unknown} are not weights of this program; see weight_layers(package) for the names")
    notes: list[str] = []
    with quiet_compression() as captured:
        try:
            for index, (kind, options) in enumerate(recipe.steps):
                cfg = op_config(kind, options, weight_threshold)
                per_op = _block_size_overrides(kind, options, metadata, weight_threshold, notes) if index == 0 else {}
                if index == 0:
                    per_op.update({n: op_config(kind, {**options, **o}, weight_threshold)
                                   for n, o in overrides.items()})
                if only is not None:
                    opt = oc.OptimizationConfig(global_config=None,
                                                op_name_configs={n: per_op.get(n, cfg) for n in only})
                else:
                    opt = oc.OptimizationConfig(global_config=cfg,
                                                op_name_configs={**per_op, **{n: None for n in exclude}})
                fn = getattr(oc, _COMPRESS_FN[kind])
                mlmodel = release_on_collect(fn(mlmodel, opt, joint_compression=True) if index >= joint_from
                                             else fn(mlmodel, opt))
        except (ValueError, NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError) as exc:
            raise CompressionError(recipe.name, str(exc).strip(), hint_for(str(exc), recipe)) from None
    if messages is not None:
        messages.extend(m for m in notes + captured if m not in messages)
    return mlmodel


def _block_size_overrides(kind: str, options: dict[str, Any], metadata: dict[str, Any], weight_threshold: int,
                          notes: list[str]) -> dict[str, Any]:
    """Per-op configs where a recipe's block (``per_block`` quantization: input channels) or group
    (``per_grouped_channel`` palettization: output channels) does not divide a weight's channel count:
    the largest divisor of the count not above the recipe's size (at least 4) is used instead, and a
    note says so.  Without it coremltools leaves such weights float and logs a warning, which on a
    24/48/96-channel network is most layers.  Weights with no such divisor are left to coremltools (which skips
    them with its warning)."""
    if kind == "quantize" and options.get("granularity") == "per_block":
        key, axis, size = "block_size", 1, int(options.get("block_size", 32))
    elif kind == "palettize" and options.get("granularity") == "per_grouped_channel":
        key, axis, size = "group_size", int(options.get("channel_axis") or 0), int(options.get("group_size", 32))
    else:
        return {}
    overrides = {}
    for name, meta in metadata.items():
        shape = meta.val.shape
        if meta.val.size <= weight_threshold or len(shape) <= axis or shape[axis] % size == 0:
            continue
        divisor = next((d for d in range(min(size, shape[axis]), 3, -1) if shape[axis] % d == 0), None)
        if divisor is not None:
            overrides[name] = op_config(kind, {**options, key: divisor}, weight_threshold)
            notes.append(f"{options['granularity']}: {key} {size} does not divide the {shape[axis]} channels (axis "
                         f"{axis}) of {name}; used {divisor}")
    return overrides


def compress_package(recipe: str | Recipe, package: Path, out_dir: Path, stem: str | None = None,
                     weight_threshold: int = 256, exclude: Sequence[str] = (),
                     only: Sequence[str] | None = None, metadata: dict[str, Any] | None = None,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> "CompressedPackage":
    """Compress ``package`` with a Core ML recipe and save ``out_dir/<stem>.mlpackage`` (atomically).

    ``exclude``, ``only`` and ``overrides`` are those of ``compress_mlmodel``.  The compressed program inherits its
    parent's metadata; this rewrites what differs, so Xcode shows the variant, not its parent (``_variant_metadata``).
    """
    recipe = get_recipe(recipe)
    start = time.perf_counter()
    messages: list[str] = []
    mlmodel = compress_mlmodel(recipe, package, weight_threshold, exclude, only, messages, overrides)
    seconds = time.perf_counter() - start
    target = safe_package_path(Path(out_dir), stem or recipe.name)
    kept = f"; {len(exclude)} layer(s) kept float" if exclude else ""
    save_package(mlmodel, target, _variant_metadata(recipe, stem, kept, metadata))
    return CompressedPackage(target, seconds, tuple(messages), {})


def _variant_metadata(recipe: Recipe, stem: str | None, note: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What a compressed package's metadata says about itself: ``playbook.variant`` (the stem), ``playbook.recipe``,
    ``playbook.weights`` (the recipe's description), and ``playbook.stage`` from ``metadata`` (removed when not
    given: the parent's stage is not this package's).  The compute precision and the source model hash stay the
    parent's, which they are; ``save_package`` records the deployment target from the saved program."""
    return {"playbook.stage": None, "playbook.frontend": None, "playbook.variant": stem or recipe.name,
            "playbook.recipe": recipe.name, "playbook.weights": recipe.description + note, **(metadata or {})}


def compress_converted(recipe: str | Recipe, package: Path, out_dir: Path, stem: str | None = None,
                       weight_threshold: int = 256, metadata: dict[str, Any] | None = None) -> "CompressedPackage":
    """Apply a PyTorch-side recipe's Core ML ``steps`` to its converted package, on top of what the PyTorch
    algorithm stored (``joint_compression=True``: e.g. a palette for the survivors of fine-tuned pruning), and
    save ``out_dir/<stem>.mlpackage``.  A recipe without steps raises ``ConfigError``."""
    recipe = get_recipe(recipe)
    if recipe.side != "torch" or not recipe.steps:
        raise ConfigError(f"{recipe.name!r} has no Core ML steps to apply after conversion")
    start = time.perf_counter()
    messages: list[str] = []
    # Joint compression only where the steps build on what the PyTorch algorithm stored (a palette for the survivors
    # of pruning).  Otherwise the steps take what it left float (the depthwise convolutions GPTQ cannot compress) and
    # leave its weights alone: in joint mode coremltools would quantize its palettes too, and it refuses a
    # per-channel int8 on a palette shared by a layer's channels.
    joint_from = 0 if recipe.algorithm in ("prune-finetune", "sparsegpt") else len(recipe.steps)
    mlmodel = _apply_steps(recipe, load_mlmodel(package), weight_threshold, (), None, messages, None, joint_from)
    seconds = time.perf_counter() - start
    target = safe_package_path(Path(out_dir), stem or recipe.name)
    save_package(mlmodel, target, _variant_metadata(recipe, stem, "", metadata))
    return CompressedPackage(target, seconds, tuple(messages), {})


@dataclasses.dataclass(frozen=True)
class CompressedPackage:
    """A compressed package and how long compression took (``seconds``: compressor only, not the save)."""

    path: Path
    seconds: float
    messages: tuple[str, ...]
    details: dict[str, Any]


# --------------------------------------------------------------------------- weights / layers
@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """A weight tensor of the program that a compressor can act on.

    Attributes:
        name: the const op's name (what ``op_name_configs`` / ``exclude`` take).
        shape: the tensor's shape.
        size: number of elements.
        consumer: the op type using it (``conv``, ``linear``...).
        module: the PyTorch module it came from (matched by execution order and shape), or ``""``.
        eligible: ``size > weight_threshold``: compressors act on it.
    """

    name: str
    shape: tuple[int, ...]
    size: int
    consumer: str
    module: str
    eligible: bool

    @property
    def label(self) -> str:
        return self.module or self.name


def _torch_call_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    calls: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, LAYER_TYPES) and \
                isinstance(weight, torch.Tensor):
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, _n=name: calls.append((_n, tuple(mod.weight.shape)))))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return calls


def weight_layers(package: Path | Any, weight_threshold: int = 256, model: nn.Module | None = None,
                  example: torch.Tensor | None = None) -> list[WeightLayer]:
    """The conv/linear weights of a program in program order, with the PyTorch module each came from.

    ``model`` and ``example`` (one input batch) are optional: with them, each weight is matched
    to the module that ran with the same weight shape, in execution order (the converter keeps
    the trace order), which gives readable names like ``stages.1.body.0``.
    """
    import coremltools.optimize.coreml as oc

    metadata = oc.get_weights_metadata(load_mlmodel(package), weight_threshold=0)
    calls = _torch_call_order(model, example) if model is not None and example is not None else []
    used = [False] * len(calls)
    layers = []
    for name, meta in metadata.items():
        consumers = [c.op_type for c in meta.child_ops]
        consumer = next((c for c in consumers if c in WEIGHT_CONSUMERS), None)
        if consumer is None or meta.val.ndim < 2:
            continue
        shape = tuple(int(s) for s in meta.val.shape)
        module = ""
        for i, (mod_name, mod_shape) in enumerate(calls):
            if not used[i] and mod_shape == shape:
                used[i], module = True, mod_name
                break
        size = int(np.prod(shape))
        layers.append(WeightLayer(name, shape, size, consumer, module, size > weight_threshold))
    return layers


@dataclasses.dataclass(frozen=True)
class ChannelRange:
    """How far apart the output channels of one weight tensor are: each channel's largest absolute weight.

    Attributes:
        name: the const op's name.
        shape: the tensor's shape.
        widest: the largest channel's absolute maximum.
        median: the median channel's absolute maximum.
        narrowest: the smallest channel's absolute maximum.
        dead: channels whose every weight is at most ``1e-6 * widest`` (folding a batch norm whose scale is near
            zero into the convolution before it leaves such channels).
    """

    name: str
    shape: tuple[int, ...]
    widest: float
    median: float
    narrowest: float
    dead: int

    @property
    def spread(self) -> float:
        """``widest / median``: how much wider the widest channel is than a typical one."""
        return self.widest / self.median if self.median > 0 else math.inf


def channel_ranges(package: Path | Any, weight_threshold: int = 256) -> list[ChannelRange]:
    """Per-output-channel weight ranges of the conv/linear weights above ``weight_threshold`` elements, widest spread
    first.  One palette, one linear scale or one magnitude threshold per tensor has to serve every channel at once;
    a spread of 100x or dead channels mean the narrow channels get a handful of levels or none (the effect of
    batch-norm folding on depthwise convolutions that Nagel et al. describe, arXiv:1906.04721)."""
    import coremltools.optimize.coreml as oc

    out = []
    for name, meta in oc.get_weights_metadata(load_mlmodel(package), weight_threshold=weight_threshold).items():
        if not any(c.op_type in WEIGHT_CONSUMERS for c in meta.child_ops) or meta.val.ndim < 2:
            continue
        per_channel = np.abs(np.asarray(meta.val, dtype=np.float32).reshape(meta.val.shape[0], -1)).max(axis=1)
        widest = float(per_channel.max())
        out.append(ChannelRange(name, tuple(int(s) for s in meta.val.shape), widest, float(np.median(per_channel)),
                                float(per_channel.min()), int((per_channel <= 1e-6 * widest).sum())))
    return sorted(out, key=lambda r: (-r.spread, -r.dead, r.name))


def weight_file_bytes(package: Path) -> int:
    """Bytes of the package's weight file (``Data/com.apple.CoreML/weights/weight.bin``): the part compression
    shrinks; the rest of the package (program, metadata, manifest) is a fixed overhead."""
    path = Path(package) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return path.stat().st_size if path.exists() else 0


def compressed_weight_count(op_histogram: dict[str, int]) -> int:
    """How many weights the program stores compressed (the outermost ``constexpr_*`` op per weight)."""
    lut_sparse = op_histogram.get("constexpr_lut_to_sparse", 0) + \
        op_histogram.get("constexpr_sparse_blockwise_shift_scale", 0)
    total = sum(v for k, v in op_histogram.items() if k.startswith("constexpr_") and k != "constexpr_cast")
    return total - lut_sparse  # a joint weight is one sparse_to_dense fed by one lut_to_sparse/shift_scale


