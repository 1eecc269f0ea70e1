"""Stage 02, quantization and compression: a recipe catalogue built on coremltools' own compressors.

Every recipe is a named, documented ``Recipe`` in ``RECIPES`` (``available_recipes()`` lists them).
Two families:

* **Core ML side** (``side="coreml"``): ``coremltools.optimize.coreml`` applied to an exported ML
  program (``linear_quantize_weights``, ``palettize_weights``, ``prune_weights``, chained with
  ``joint_compression=True`` for the joint recipes).  Data-free: no images are needed.
* **PyTorch side** (``side="torch"``): ``coremltools.optimize.torch`` on the trained model
  (``PostTrainingQuantizer``, ``LinearQuantizer`` for calibrated or trained W8A8,
  ``MagnitudePruner`` with a short fine-tune, ``SKMPalettizer``, ``DKMPalettizer``), then
  ``ct.convert`` through ``playbook.coreml.export_model``; the converter turns the compression
  metadata into the same ``constexpr_*`` ops.

Naming used throughout (it matches what the package computes):

* **weight-only** ("dynamic" in some toolkits): weights are *stored* compressed (int8/int4
  with scales, a palette + indices, or a sparse mask) and expanded back to float when the
  model loads or runs; activations stay FP16/FP32.  Smaller download and memory, accuracy
  close to the float model, speed-up only where the hardware reads compressed weights.
* **static W8A8**: weights *and* activations are int8; activation scales are fixed ahead of
  time from a calibration set (``quantize``/``dequantize`` ops in the program).  Needs data;
  on Linux it is done on the PyTorch side because ``linear_quantize_activations`` calibrates by
  running Core ML predictions (macOS only).

Recipes that need an iOS18 program (int4 per-block, per-grouped-channel palettes, joint
compression) get one: the stage re-exports the model at iOS18 (``retarget=True``).  Applied to
an older program they raise ``CompressionError`` carrying coremltools' own message and a hint.

``weight_threshold``: coremltools leaves tensors with at most this many elements uncompressed
(default 2048).  The playbook's models are small, so the stage uses 256 by default and records
it with every variant; tensors below it (e.g. a 1-channel stem) stay float.

The stage (``QuantizationStage``) measures every variant with ``playbook.measure.measure_variant``
against the baseline's FP32 package, runs a per-layer sensitivity analysis, keeps the most
damaging layers uncompressed, and writes ``reports/<model>/quantization.json``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from playbook.config import ConfigError, StrictConfig, check_choice, check_range, parameters_from_namespace
from playbook.coreml import DEPLOYMENT_TARGETS, RUNTIMES, ExportConfig, export_model, package_info, \
    predict_split, save_package
from playbook.data import Dataset, Split
from playbook.env import environment
from playbook.measure import MeasureConfig, Reference, measure_variant
from playbook.notebooks import run_command
from playbook.metrics import compare_paired, fidelity

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

SIDES = ("coreml", "torch")
TECHNIQUES = ("precision", "quantization", "palettization", "pruning", "joint", "activation-quantization",
              "data-aware")
SCHEMES = ("float", "weight-only", "static W8A8")
TORCH_ALGORITHMS = ("ptq", "w8a8-static", "qat", "prune-finetune", "skm", "dkm")
COREML_STEPS = ("quantize", "palettize", "prune")
_OS_LEVEL = {"iOS15": 15, "iOS16": 16, "iOS17": 17, "iOS18": 18,
             "macOS12": 15, "macOS13": 16, "macOS14": 17, "macOS15": 18}


class CompressionError(RuntimeError):
    """A recipe cannot be applied: coremltools' own message plus the playbook's hint.

    Attributes:
        recipe: the recipe's name.
        coremltools_message: what coremltools (or torch) said.
        hint: what to do about it.
    """

    def __init__(self, recipe: str, coremltools_message: str, hint: str) -> None:
        self.recipe, self.coremltools_message, self.hint = recipe, coremltools_message, hint
        super().__init__(f"recipe {recipe!r} failed: coremltools says: {coremltools_message}\nhint: {hint}")

    def to_dict(self) -> dict[str, str]:
        return {"recipe": self.recipe, "coremltools_message": self.coremltools_message, "hint": self.hint}


# --------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    """One named compression recipe.

    Attributes:
        name: stable identifier (used in ``recipes=[...]`` and as the variant name).
        side: ``coreml`` (``ct.optimize.coreml`` on the exported program) or ``torch``
            (``ct.optimize.torch`` on the PyTorch model, then converted).
        technique: ``precision``, ``quantization``, ``palettization``, ``pruning``, ``joint``,
            ``activation-quantization`` or ``data-aware`` (uses training data or gradients).
        scheme: ``float`` (no weight compression), ``weight-only`` (stored compressed, expanded at
            load/run time; activations float) or ``static W8A8`` (int8 activations with calibrated,
            fixed scales).
        bits: nominal bits per compressed weight (sparsity counts as the stored density).
        min_target: oldest ``minimum_deployment_target`` whose ops can hold the result.
        steps: Core ML side: ``(kind, options)`` pairs, ``kind`` in ``quantize``/``palettize``/``prune``;
            options are passed to ``OpLinearQuantizerConfig``/``OpPalettizerConfig``/``OpMagnitudePrunerConfig``.
            Two steps make a joint recipe (``joint_compression=True`` on the second); none is the
            plain export.
        algorithm: PyTorch side: one of ``TORCH_ALGORITHMS``.
        options: PyTorch side: the algorithm's settings.
        data: what data the recipe needs: ``none``, ``calibration`` or ``training``.
        precision: forces the program's compute precision (``fp16``/``fp32``); empty: the stage's ``precision``.
        description: one line for tables and the report.
    """

    name: str
    side: str
    technique: str
    scheme: str
    bits: float
    description: str
    min_target: str = "iOS16"
    steps: tuple[tuple[str, dict[str, Any]], ...] = ()
    algorithm: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: str = "none"
    precision: str = ""

    def __post_init__(self) -> None:
        check_choice("side", self.side, SIDES)
        check_choice("technique", self.technique, TECHNIQUES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("min_target", self.min_target, DEPLOYMENT_TARGETS)
        check_choice("data", self.data, ["none", "calibration", "training"])
        check_choice("precision", self.precision, ["", "fp16", "fp32"])
        if self.side == "coreml":
            for kind, _ in self.steps:
                check_choice("step", kind, COREML_STEPS)
        else:
            check_choice("algorithm", self.algorithm, TORCH_ALGORITHMS)

    @property
    def single_step(self) -> bool:
        """A Core ML recipe with one compressor (per-layer sensitivity and exceptions apply)."""
        return self.side == "coreml" and len(self.steps) == 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = [[kind, dict(opts)] for kind, opts in self.steps]
        return d


def _q(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("quantize", kw)


def _p(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("palettize", kw)


def _s(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("prune", kw)


def _catalogue() -> dict[str, Recipe]:
    r = [
        Recipe("fp16", "coreml", "precision", "float", 16,
               "FP16 ML program, no weight compression (the default Core ML export; 01 measures it as baseline-fp16)",
               precision="fp16"),
        # ---- Core ML side, data-free, weight-only
        Recipe("int8-weights", "coreml", "quantization", "weight-only", 8,
               "int8 weights, per-output-channel symmetric scales (linear_quantize_weights)",
               steps=(_q(mode="linear_symmetric", dtype="int8", granularity="per_channel"),)),
        Recipe("int4-block", "coreml", "quantization", "weight-only", 4,
               "int4 weights, one scale per block of 32 input channels, or of the largest divisor of a layer's "
               "channel count below 32 (linear_quantize_weights, per_block)",
               min_target="iOS18",
               steps=(_q(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32),)),
        *[Recipe(f"palettize-{n}bit", "coreml", "palettization", "weight-only", n,
                 f"{n}-bit k-means palette per tensor ({2 ** n} distinct values per weight tensor)",
                 steps=(_p(mode="kmeans", nbits=n, granularity="per_tensor"),)) for n in (8, 6, 4, 2)],
        Recipe("palettize-4bit-grouped", "coreml", "palettization", "weight-only", 4,
               "4-bit k-means palettes, one per group of 16 output channels, or of the largest divisor of a layer's "
               "channel count below 16 (per_grouped_channel)",
               min_target="iOS18",
               steps=(_p(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16),)),
        Recipe("prune-50", "coreml", "pruning", "weight-only", 8.5,
               "50% of weights set to zero by magnitude, stored sparse (prune_weights)",
               steps=(_s(target_sparsity=0.5),)),
        Recipe("prune-75", "coreml", "pruning", "weight-only", 4.75,
               "75% of weights set to zero by magnitude, stored sparse, no fine-tune",
               steps=(_s(target_sparsity=0.75),)),
        Recipe("prune-2of4", "coreml", "pruning", "weight-only", 8.5,
               "2:4 structured sparsity: 2 of every 4 consecutive weights zero (n_m_ratio=(2, 4))",
               steps=(_s(n_m_ratio=(2, 4)),)),
        Recipe("prune-50+palettize-4bit", "coreml", "joint", "weight-only", 2.5,
               "50% magnitude pruning, then the remaining weights on a 4-bit palette (joint compression)",
               min_target="iOS18", steps=(_s(target_sparsity=0.5), _p(mode="kmeans", nbits=4))),
        Recipe("prune-50+int8", "coreml", "joint", "weight-only", 4.5,
               "50% magnitude pruning, then the remaining weights as int8 (joint compression)",
               min_target="iOS18",
               steps=(_s(target_sparsity=0.5), _q(mode="linear_symmetric", dtype="int8", granularity="per_channel"))),
        # ---- PyTorch side
        Recipe("torch-ptq-int8", "torch", "quantization", "weight-only", 8,
               "int8 weights per channel from the PyTorch model (PostTrainingQuantizer), then converted",
               algorithm="ptq", options={"weight_dtype": "int8", "granularity": "per_channel"}),
        Recipe("torch-w8a8-static", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations; activation ranges calibrated on the calibration split, no training "
               "(LinearQuantizer, observers only)",
               min_target="iOS17", algorithm="w8a8-static", data="calibration",
               options={"activation_observer": "min_max"}),
        Recipe("torch-w8a8-qat", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations learned with quantization-aware training (LinearQuantizer, short "
               "fine-tune with fake quantization)",
               min_target="iOS17", algorithm="qat", data="training"),
        Recipe("torch-prune-75-ft", "torch", "data-aware", "weight-only", 4.75,
               "75% magnitude pruning reached gradually while fine-tuning (MagnitudePruner, polynomial schedule)",
               algorithm="prune-finetune", data="training", options={"target_sparsity": 0.75}),
        Recipe("torch-palettize-4bit-skm", "torch", "data-aware", "weight-only", 4,
               "4-bit palettes from sensitivity-weighted k-means: gradients on calibration images decide which "
               "weights the palette must fit best (SKMPalettizer)",
               algorithm="skm", data="calibration", options={"n_bits": 4}),
        Recipe("torch-palettize-2bit-dkm", "torch", "data-aware", "weight-only", 2,
               "2-bit palettes learned during a short fine-tune with differentiable k-means (DKMPalettizer)",
               algorithm="dkm", data="training", options={"n_bits": 2}),
    ]
    return {x.name: x for x in r}


RECIPES: dict[str, Recipe] = _catalogue()
# What the stage runs when ``recipes`` is empty.  In the catalogue but not the default, because each
# costs a full test-split evaluation (or minutes of CPU) for no new finding on a 2-core machine:
# ``prune-50+int8`` and ``torch-ptq-int8`` (same code paths as ``prune-50+palettize-4bit`` and
# ``int8-weights``), ``palettize-8bit`` and ``palettize-6bit`` (indistinguishable from FP32 in every run
# we made: the cliff is between 4 and 2 bits) and ``torch-palettize-2bit-dkm`` (DKM re-clusters every
# weight at every step: slow on a CPU).
DEFAULT_RECIPES: tuple[str, ...] = (
    "int8-weights", "int4-block",
    "palettize-4bit", "palettize-2bit", "palettize-4bit-grouped",
    "prune-50", "prune-75", "prune-2of4", "prune-50+palettize-4bit",
    "torch-w8a8-static", "torch-w8a8-qat", "torch-prune-75-ft", "torch-palettize-4bit-skm",
)
# Smoke runs: one recipe per code path of the default run (every Core ML compressor, joint
# compression, the iOS18 re-export, every PyTorch algorithm), so CI exercises what the full run does.
SMOKE_RECIPES: tuple[str, ...] = (
    "int8-weights", "int4-block", "palettize-4bit", "palettize-2bit", "prune-75",
    "prune-50+palettize-4bit", "torch-w8a8-static", "torch-w8a8-qat", "torch-prune-75-ft",
    "torch-palettize-4bit-skm",
)
SKM_MAX_SAMPLES = 128  # SKMPalettizer computes one gradient per calibration image: cap the cost


def available_recipes() -> list[str]:
    """Every recipe name in the catalogue."""
    return list(RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name``; an unknown name raises ``ConfigError`` listing the valid ones."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes are {available_recipes()}")
    return RECIPES[name]


def describe_recipes(names: Iterable[str] | None = None) -> "Table":
    """A table of recipes: name, side, technique, scheme, bits, oldest target, data needed, description."""
    rows = [{"recipe": r.name, "side": r.side, "technique": r.technique, "scheme": r.scheme, "bits": r.bits,
             "min target": r.min_target, "data": r.data, "what it does": r.description}
            for r in (get_recipe(n) for n in (names if names is not None else RECIPES))]
    return Table(rows)


def required_target(current: str, needed: str) -> str:
    """``current`` if it is at least ``needed``; else ``needed``'s level in ``current``'s OS family."""
    check_choice("deployment target", current, DEPLOYMENT_TARGETS)
    check_choice("deployment target", needed, DEPLOYMENT_TARGETS)
    if _OS_LEVEL[current] >= _OS_LEVEL[needed]:
        return current
    level = _OS_LEVEL[needed]
    return f"macOS{level - 3}" if current.startswith("macOS") else f"iOS{level}"


# --------------------------------------------------------------------------- quiet coremltools
class _Captured(logging.Handler):
    """Collects coremltools' warnings (some go to the root logger: ``coremltools._getLogger()`` is root)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "coremltools" not in record.pathname and not record.name.startswith("coremltools"):
            return
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


@contextlib.contextmanager
def quiet_compression() -> Iterator[list[str]]:
    """Silence coremltools' INFO chatter; collect its warnings (deduplicated) instead of printing them.

    Yields the list the warnings are appended to, so a recipe can record e.g. which layers
    ``per_block`` quantization skipped.
    """
    handler = _Captured()
    names = ["coremltools"] + [n for n in logging.root.manager.loggerDict if n.startswith("coremltools")]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield handler.messages
        finally:
            root.removeHandler(handler)
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)
            for w in caught:
                text = str(w.message)
                if "coremltools" in str(w.filename) and text not in handler.messages:
                    handler.messages.append(text)


def _hint_for(message: str, recipe: Recipe) -> str:
    low = message.lower()
    if "ios18" in low or "re-convert" in low or "deployment" in low:
        return (f"{recipe.name} needs an ML program with minimum_deployment_target {recipe.min_target} or newer: "
                f"re-export with playbook.coreml.export_model(..., ExportConfig(minimum_deployment_target="
                f"'{recipe.min_target}')) -- the quantization stage does this for you unless retarget=False; "
                "the app then requires iOS 18 / macOS 15")
    if "scikit-learn" in low or "sklearn" in low:
        return "k-means palettization needs scikit-learn: pip install scikit-learn"
    if "divisible" in low or "block" in low:
        return "choose a block_size / group_size that divides the weight's channel counts"
    return f"see the recipe's documentation: {recipe.description}"


# --------------------------------------------------------------------------- Core ML side
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
                     messages: list[str] | None = None) -> Any:
    """Apply a Core ML recipe to a package (path) or ``MLModel``; returns the compressed ``MLModel``.

    Args:
        recipe: a Core ML side recipe (name or ``Recipe``).
        package: the ``.mlpackage`` path or a loaded ``MLModel`` (not modified).
        weight_threshold: tensors with at most this many elements stay uncompressed.
        exclude: weight (const op) names kept uncompressed: ``op_name_configs={name: None}``.
        only: if given, compress only these weights (``global_config=None`` plus one
            ``op_name_configs`` entry each) -- the per-layer sensitivity analysis uses this.
        messages: a list that receives coremltools' warnings (e.g. layers ``per_block`` skipped).

    Raises:
        CompressionError: coremltools refused (e.g. an iOS18-only recipe on an iOS17 program),
            with coremltools' message and a hint.
        ConfigError: a name in ``exclude``/``only`` is not a weight of the program.
    """
    import coremltools.optimize.coreml as oc

    recipe = get_recipe(recipe)
    if recipe.side != "coreml":
        raise ConfigError(f"{recipe.name!r} is a PyTorch-side recipe; use compress_torch")
    mlmodel = load_mlmodel(package)
    names = set(exclude) | set(only or ())
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
                if only is not None:
                    opt = oc.OptimizationConfig(global_config=None,
                                                op_name_configs={n: per_op.get(n, cfg) for n in only})
                else:
                    opt = oc.OptimizationConfig(global_config=cfg,
                                                op_name_configs={**per_op, **{n: None for n in exclude}})
                fn = getattr(oc, _COMPRESS_FN[kind])
                mlmodel = fn(mlmodel, opt, joint_compression=True) if index else fn(mlmodel, opt)
        except (ValueError, NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError) as exc:
            raise CompressionError(recipe.name, str(exc).strip(), _hint_for(str(exc), recipe)) from None
    if messages is not None:
        messages.extend(m for m in notes + captured if m not in messages)
    return mlmodel


def _block_size_overrides(kind: str, options: dict[str, Any], metadata: dict[str, Any], weight_threshold: int,
                          notes: list[str]) -> dict[str, Any]:
    """Per-op configs where a recipe's block (``per_block`` quantization: input channels) or group
    (``per_grouped_channel`` palettization: output channels) does not divide a weight's channel count:
    the largest divisor of the count not above the recipe's size (at least 4) is used instead, and a
    note says so.  Without it coremltools skips such weights (they stay float), which on a 24/48/96-channel
    network is most layers.  Weights with no such divisor are left to coremltools (which skips them)."""
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
                     only: Sequence[str] | None = None) -> "CompressedPackage":
    """Compress ``package`` with a Core ML recipe and save ``out_dir/<stem>.mlpackage`` (atomically)."""
    from playbook.coreml import safe_package_path

    recipe = get_recipe(recipe)
    start = time.perf_counter()
    messages: list[str] = []
    mlmodel = compress_mlmodel(recipe, package, weight_threshold, exclude, only, messages)
    seconds = time.perf_counter() - start
    target = safe_package_path(Path(out_dir), stem or recipe.name)
    save_package(mlmodel, target)
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
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)) and \
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


# --------------------------------------------------------------------------- PyTorch side
def finetune(model: nn.Module, dataset: Dataset, steps: int, lr: float, batch_size: int, seed: int = 0,
             on_step: Callable[[], None] | None = None) -> list[float]:
    """A short fine-tune on random training batches (SGD, momentum 0.9, cosine decay); returns the losses.

    ``on_step`` runs after every optimiser step (the compressors' ``step()``: QAT milestones,
    the pruning schedule, DKM's clustering).
    """
    if steps <= 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_train = dataset.to_tensor(dataset.train.images)
    y_train = torch.from_numpy(dataset.train.labels)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ce = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y_train), (min(batch_size, len(y_train)),), generator=generator)
        loss = ce(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


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


def compress_torch(recipe: str | Recipe, model: nn.Module, dataset: Dataset, finetune_steps: int = 200,
                   lr: float = 0.002, batch_size: int = 64, weight_threshold: int = 256,
                   seed: int = 0) -> TorchCompression:
    """Apply a PyTorch-side recipe to a copy of ``model`` with ``coremltools.optimize.torch``.

    Weight tensors with at most ``weight_threshold`` elements are left alone (as on the Core ML
    side), except by the W8A8 recipes, which quantize every layer so activations stay int8
    end to end.  Calibration uses ``dataset.calib``; fine-tuning uses ``dataset.train``.
    """
    from coremltools.optimize.torch import palettization as pal
    from coremltools.optimize.torch import pruning as prn
    from coremltools.optimize.torch import quantization as qnt

    recipe = get_recipe(recipe)
    if recipe.side != "torch":
        raise ConfigError(f"{recipe.name!r} is a Core ML-side recipe; use compress_package")
    torch.manual_seed(seed)
    net = copy.deepcopy(model).cpu().eval()
    small = _small_modules(net, weight_threshold)
    calib = dataset.to_tensor(dataset.calib.images)
    example = (calib[:1],)
    opts = dict(recipe.options)
    details: dict[str, Any] = {"algorithm": recipe.algorithm, "options": opts, "kept_float": small}
    losses: list[float] = []
    steps = 0
    start = time.perf_counter()
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
                losses = finetune(prepared, dataset, steps, lr, batch_size, seed, quantizer.step)
                net = quantizer.finalize(prepared.eval())
            elif recipe.algorithm == "prune-finetune":
                steps = finetune_steps
                updates = sorted({int(steps * f / 10) for f in range(6)})  # reach the target by 50% of the steps
                cfg = prn.MagnitudePrunerConfig.from_dict({
                    "global_config": {"target_sparsity": opts["target_sparsity"],
                                      "scheduler": {"update_steps": updates}},
                    "module_name_configs": {n: None for n in small}})
                pruner = prn.MagnitudePruner(net, cfg)
                prepared = pruner.prepare()
                losses = finetune(prepared, dataset, steps, lr, batch_size, seed, pruner.step)
                net = pruner.finalize(prepared)
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
                cfg = pal.DKMPalettizerConfig.from_dict({
                    "global_config": {**opts, "weight_threshold": weight_threshold}})
                palettizer = pal.DKMPalettizer(net, cfg)
                prepared = palettizer.prepare()
                losses = finetune(prepared, dataset, steps, lr, batch_size, seed, palettizer.step)
                net = palettizer.finalize(prepared)
        except (ValueError, NotImplementedError, AssertionError, ModuleNotFoundError, RuntimeError) as exc:
            raise CompressionError(recipe.name, str(exc).strip(), _hint_for(str(exc), recipe)) from None
    details["messages"] = list(captured)
    return TorchCompression(net.eval(), time.perf_counter() - start, steps, tuple(losses), details)


# --------------------------------------------------------------------------- stage config
@dataclasses.dataclass(frozen=True)
class QuantizationConfig(StrictConfig):
    """The parameters of ``02_quantization`` (see the notebook's parameters cell for each one's meaning)."""

    model: str = "resnet"
    dataset: str = ""
    recipes: list[str] = dataclasses.field(default_factory=list)
    max_top1_drop: float = 1.0
    precision: str = "fp16"
    weight_threshold: int = 256
    retarget: bool = True
    finetune_steps: int = 200
    finetune_lr: float = 0.002
    batch_size: int = 64
    sensitivity_recipe: str = "auto"
    sensitivity_images: int = 1000
    max_exceptions: int = 3
    runtime: str = "auto"
    threads: int = 0
    seed: int = 0
    smoke: bool = False
    reports_dir: str = ""
    interactive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.recipes, (list, tuple)):
            raise ConfigError(f"recipes={self.recipes!r} must be a list of recipe names (empty: the default set)")
        for name in self.recipes:
            get_recipe(name)
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_range("weight_threshold", self.weight_threshold, 0)
        check_range("finetune_steps", self.finetune_steps, 0)
        check_range("finetune_lr", self.finetune_lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        if self.sensitivity_recipe not in ("auto", "none"):
            recipe = get_recipe(self.sensitivity_recipe)
            if not recipe.single_step:
                raise ConfigError(f"sensitivity_recipe={self.sensitivity_recipe!r} must be a single-step Core ML "
                                  f"recipe (one of {[r.name for r in RECIPES.values() if r.single_step]}), "
                                  "'auto' or 'none'")
        check_range("sensitivity_images", self.sensitivity_images, 1)
        check_range("max_exceptions", self.max_exceptions, 1)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_range("threads", self.threads, 0)

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> "QuantizationConfig":
        """From a notebook's ``globals()``: unknown names (e.g. a mistyped papermill parameter) are an error."""
        return cls.from_dict(parameters_from_namespace(namespace))

    def recipe_names(self) -> list[str]:
        """The recipes this run measures, in catalogue order: ``recipes`` or the (smoke) default set."""
        chosen = set(self.recipes) if self.recipes else set(SMOKE_RECIPES if self.smoke else DEFAULT_RECIPES)
        return [n for n in RECIPES if n in chosen]

    def steps(self) -> int:
        """Fine-tune steps actually used (smoke runs cap them at 20)."""
        return min(self.finetune_steps, 20) if self.smoke else self.finetune_steps

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig.for_run(self.runtime, self.smoke)

    def reproduce_command(self) -> str:
        """The ``playbook`` CLI command that reruns this stage (``-p NAME=VALUE`` for non-default parameters)."""
        return run_command(self.model, self.dataset, self.smoke, stages="02", params=self.non_defaults(
            skip=("model", "dataset", "smoke", "reports_dir", "interactive")))


# --------------------------------------------------------------------------- tables
class Table:
    """Rows of dicts shown as an HTML table in Jupyter and as aligned text elsewhere."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    @staticmethod
    def _fmt(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
        if value is None:
            return ""
        return str(value)

    def columns(self) -> list[str]:
        cols: list[str] = []
        for row in self.rows:
            cols += [k for k in row if k not in cols]
        return cols

    def __repr__(self) -> str:
        cols = self.columns()
        cells = [[self._fmt(r.get(c)) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        cols = self.columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __len__(self) -> int:
        return len(self.rows)


def variant_row(v: dict[str, Any], fp32_bytes: int | None = None) -> dict[str, Any]:
    """One variant record as a table row: size, ratio, top-1 with CI, change with CI and p, fidelity, time."""
    vs = v.get("vs_reference") or {}
    fid = v.get("fidelity") or {}
    ci = v.get("top1_ci") or [float("nan")] * 2
    row = {
        "variant": v["name"],
        "size MB": v["size_mb"],
        "zip MB": v["zip_mb"],
        "x smaller": (fp32_bytes / v["size_bytes"]) if fp32_bytes else None,
        "top-1 %": v["top1"],
        "top-1 95% CI": f"[{ci[0]:.2f}, {ci[1]:.2f}]",
        "Δ top-1": vs.get("delta_top1"),
        "Δ 95% CI": f"[{vs['ci_low']:.2f}, {vs['ci_high']:.2f}]" if vs else "",
        "McNemar p": vs.get("p_value"),
        "agree %": fid.get("top1_agreement"),
        "KL": fid.get("kl_divergence"),
        "compress s": v.get("compress_seconds"),
    }
    return row


def results_table(variants: Sequence[dict[str, Any]], fp32_bytes: int | None = None,
                  names: Sequence[str] | None = None) -> Table:
    """The variants (optionally only ``names``) as a table."""
    chosen = [v for v in variants if names is None or v["name"] in names]
    return Table([variant_row(v, fp32_bytes) for v in chosen])


# --------------------------------------------------------------------------- Pareto front and chart
def pareto_front(variants: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the variants no other variant beats on both size (smaller) and top-1 (higher), smallest first."""
    ordered = sorted(variants, key=lambda v: (v["size_bytes"], -v["top1"]))
    front, best = [], -math.inf
    for v in ordered:
        if v["top1"] > best:
            front.append(v["name"])
            best = v["top1"]
    return front


_TECHNIQUE_COLOURS = {"baseline": "black", "quantization": "tab:blue", "palettization": "tab:orange",
                      "pruning": "tab:green", "joint": "tab:purple", "activation-quantization": "tab:red",
                      "data-aware": "tab:brown"}


def _label_points(ax: Any, points: Sequence[tuple[float, float, str]]) -> None:
    """Annotate points, stacking labels whose anchors are close so they do not print over each other."""
    placed: list[tuple[float, float, int]] = []
    low, high = ax.get_ylim()
    span = max(high - low, 1e-9)
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        lx = math.log10(max(x, 1e-12))
        level = 0
        while any(abs(lx - px) < 0.12 and abs(y - py) < 0.06 * span and lv == level for px, py, lv in placed):
            level += 1
        placed.append((lx, y, level))
        ax.annotate(text, (x, y), fontsize=6.5, xytext=(4, 3 + 8 * level), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if level else None)


def plot_accuracy_vs_size(variants: Sequence[dict[str, Any]], baseline_variants: Sequence[dict[str, Any]] = (),
                          accuracy_budget: float | None = None, title: str = "") -> Any:
    """Top-1 (with its 95% interval) against package size (log scale), the Pareto front drawn as a step line.

    Left panel: every variant; right panel: zoom on the band near FP32 (3x the budget), where the
    decisions are made.  ``baseline_variants`` (FP32/FP16 from ``baseline.json``) are drawn in black;
    the first one's top-1 minus ``accuracy_budget`` is the budget line.  Returns the matplotlib Figure.
    """
    import matplotlib

    if matplotlib.get_backend().lower() in ("", "agg"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [dict(v, technique="baseline") for v in baseline_variants] + list(variants)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    front = set(pareto_front(everything))
    pts = sorted((v["size_mb"], v["top1"]) for v in everything if v["name"] in front)
    ref = baseline_variants[0]["top1"] if baseline_variants else max((v["top1"] for v in everything), default=0.0)
    budget = accuracy_budget if accuracy_budget is not None else 1.0
    for panel, ax in enumerate(axes):
        shown = everything if panel == 0 else [v for v in everything if v["top1"] >= ref - 3 * max(budget, 0.1)]
        for v in shown:
            colour = _TECHNIQUE_COLOURS.get(v.get("technique", ""), "grey")
            ci = v.get("top1_ci") or [v["top1"], v["top1"]]
            ax.errorbar(v["size_mb"], v["top1"], yerr=[[v["top1"] - ci[0]], [ci[1] - v["top1"]]], fmt="o",
                        color=colour, ms=5, capsize=2, lw=1)
        if pts:
            xs, ys = zip(*pts)
            ax.step(xs, ys, where="post", color="tab:gray", ls="--", lw=1, label="Pareto front")
        if accuracy_budget is not None and baseline_variants:
            ax.axhline(ref - accuracy_budget, color="tab:red", lw=0.8, ls=":",
                       label=f"budget: {baseline_variants[0]['name']} - {accuracy_budget:g} pt")
        ax.set_xscale("log")
        ax.set_xlabel("package size on disk (MB, log scale)")
        ax.grid(alpha=0.3, which="both")
        if panel == 1 and shown:
            tops = [v["top1_ci"][0] if v.get("top1_ci") else v["top1"] for v in shown]
            ax.set_ylim(min(min(tops), ref - budget) - 0.3, max(v["top1"] for v in shown) + 0.8)
            sizes = [v["size_mb"] for v in shown]
            ax.set_xlim(min(sizes) / 1.25, max(sizes) * 1.6)
        # the left panel names only what the zoom does not show; the zoom names everything it shows
        near = ref - 3 * max(budget, 0.1)
        _label_points(ax, [(v["size_mb"], v["top1"], v["name"]) for v in shown if panel == 1 or v["top1"] < near])
    axes[0].set_ylabel("test top-1 (%), 95% CI")
    axes[0].set_title(title or "accuracy versus size", fontsize=10)
    anchor = baseline_variants[0]["name"] if baseline_variants else "the best"
    axes[1].set_title(f"zoom: within {3 * max(budget, 0.1):g} points of {anchor}", fontsize=10)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in _TECHNIQUE_COLOURS.items()
               if any(v.get("technique") == t for v in everything)]
    axes[0].legend(handles=handles + axes[0].get_legend_handles_labels()[0], fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_sensitivity(sensitivity: dict[str, Any]) -> Any:
    """Per-layer damage (KL to the FP32 outputs when only that layer is compressed) and the keep-k curve."""
    import matplotlib

    if matplotlib.get_backend().lower() in ("", "agg"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sensitivity["layers"]
    curve = sensitivity["keep_curve"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.barh([entry["label"] for entry in layers][::-1], [entry["kl"] for entry in layers][::-1], color="tab:orange")
    ax1.set_xlabel("KL(FP32 || only this layer compressed)")
    ax1.set_title(f"{sensitivity['recipe']}: damage per layer", fontsize=9)
    ax1.tick_params(axis="y", labelsize=7)
    ks = [c["kept"] for c in curve]
    ax3 = ax2.twinx()
    ax3.plot(ks, [c["kl"] for c in curve], "s--", color="tab:purple", alpha=0.6)
    ax3.set_ylabel("KL to FP32 (dashed)", color="tab:purple", fontsize=8)
    ax3.tick_params(axis="y", labelsize=7, colors="tab:purple")
    ax2.plot(ks, [c["val_top1"] for c in curve], "o-", label="keep most damaging k")
    if sensitivity.get("control"):
        c = sensitivity["control"]
        ax2.plot([c["kept"]], [c["val_top1"]], "x", color="tab:red", ms=8,
                 label=f"control: keep least damaging {c['kept']}")
    ax2.axhline(sensitivity["val_reference_top1"], color="black", lw=0.8, label="FP32 (validation)")
    ax2.axhline(sensitivity["val_reference_top1"] - sensitivity["accuracy_budget"], color="tab:red", lw=0.8, ls=":",
                label="budget")
    for c in curve:
        ax2.annotate(f"{c['size_mb']:.3f} MB", (c["kept"], c["val_top1"]), fontsize=7, xytext=(3, -10),
                     textcoords="offset points")
    ax2.set_xlabel("layers kept uncompressed (k)")
    ax2.set_ylabel("validation top-1 (%)")
    ax2.set_xticks(ks)
    ax2.legend(fontsize=7)
    ax2.set_title("recovery by keeping the worst layers float", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- interactive explorer
def explore(record: dict[str, Any]) -> Any:
    """An ipywidgets control: pick a variant, see its row and (where computed) the layer sensitivity.

    ``record`` is the stage record (what ``quantization.json`` holds).  Returns a ``VBox``;
    its ``children`` are the dropdown and an ``HTML`` panel updated on every selection.
    """
    import html as _html

    import ipywidgets as widgets

    variants = {v["name"]: v for v in record.get("variants", [])}
    fp32_bytes = (record.get("baseline") or {}).get("fp32_size_bytes")
    sensitivity = record.get("sensitivity") or {}
    dropdown = widgets.Dropdown(options=list(variants), description="variant")
    panel = widgets.HTML()

    def render(name: str) -> str:
        if name not in variants:
            return "<i>no variants in this record</i>"
        v = variants[name]
        parts = [f"<b>{_html.escape(name)}</b>: {_html.escape(v.get('description', ''))}",
                 results_table([v], fp32_bytes)._repr_html_()]
        recipe = v.get("recipe", {}).get("name") if isinstance(v.get("recipe"), dict) else None
        if sensitivity and recipe == sensitivity.get("recipe"):
            rows = [{"rank": i + 1, "layer": layer["label"], "shape": "x".join(map(str, layer["shape"])),
                     "KL": layer["kl"], "val Δ top-1": layer["val_delta_top1"]}
                    for i, layer in enumerate(sensitivity["layers"])]
            parts += [f"<b>layer sensitivity of {_html.escape(recipe)}</b> (one layer compressed at a time, "
                      f"{sensitivity['val_images']} validation images)", Table(rows)._repr_html_()]
        elif sensitivity:
            parts.append(f"<i>layer sensitivity was computed for {_html.escape(str(sensitivity.get('recipe')))}; "
                         "pick that recipe (or its -keep variant) to see it</i>")
        return "".join(parts)

    def on_change(change: dict[str, Any]) -> None:
        panel.value = render(change["new"])

    dropdown.observe(on_change, names="value")
    panel.value = render(dropdown.value) if dropdown.value is not None else "<i>no variants</i>"
    return widgets.VBox([dropdown, panel])


# --------------------------------------------------------------------------- the stage
def _val_subset(dataset: Dataset, n: int) -> Split:
    split = dataset.val if len(dataset.val) else dataset.calib
    return split.head(min(n, len(split)))


def _scores_summary(ref: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fid = fidelity(ref, scores)
    return {"val_top1": float(100.0 * (scores.argmax(1) == labels).mean()), "kl": fid.kl_divergence,
            "agreement": fid.top1_agreement}


class QuantizationStage:
    """Stage 02 state: the baseline, the packages made so far, their records, sensitivity, pitfalls.

    Use: ``stage = QuantizationStage(cfg)``; ``stage.run(technique)`` for each technique (or
    ``stage.run()`` for all selected recipes); ``stage.layer_sensitivity()``; ``stage.write()``.
    """

    def __init__(self, cfg: QuantizationConfig) -> None:
        from playbook.baseline import load_baseline

        self.cfg = cfg
        with self.threads():
            self.baseline = load_baseline(cfg.model, cfg.reports_dir or None, smoke=cfg.smoke)
        record = self.baseline.record
        made_on = record["dataset"]["name"]
        if cfg.dataset and cfg.dataset != made_on:
            raise ConfigError(f"dataset={cfg.dataset!r} but the baseline in {self.baseline.model_dir} was made on "
                              f"{made_on!r}; leave dataset empty to use the baseline's, or re-run 01_baseline")
        self.dataset = self.baseline.dataset
        self.model = self.baseline.model
        self.reference: Reference = self.baseline.reference
        self.out_dir = self.baseline.model_dir / "quantization"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.mcfg = cfg.measure_config()
        self.export_cfg = ExportConfig.from_dict(record["exports"]["fp32"]["config"])
        self.baseline_variants = [v for v in record["variants"]]
        fp32 = next(v for v in self.baseline_variants if v["name"] == "baseline-fp32")
        self.fp32_bytes = int(fp32["size_bytes"])
        self.fp32_weight_bytes = weight_file_bytes(self.baseline.fp32_package)
        self.recipes = cfg.recipe_names()
        self.variants: list[dict[str, Any]] = []
        self.scores: dict[str, np.ndarray] = {}
        self.skipped: list[dict[str, str]] = []
        self.retargeted: list[dict[str, str]] = []
        self.sensitivity: dict[str, Any] | None = None
        self._bases: dict[tuple[str, str], Path] = {}
        self._example = self.dataset.to_tensor(self.dataset.calib.images[:1])

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """torch's CPU threads for this stage's work (``threads``; smoke runs use 1), restored afterwards.

        Smoke-sized tensors gain nothing from threads, and on a shared machine the synchronisation
        between threads makes every small op several times slower.
        """
        wanted = self.cfg.threads or (1 if self.cfg.smoke else 0)
        previous = torch.get_num_threads()
        if wanted:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    # ---- packages
    def base_package(self, target: str, precision: str | None = None) -> Path:
        """The uncompressed program to compress: the baseline's own package when it matches, else a re-export."""
        precision = precision or self.cfg.precision
        key = (precision, target)
        if key not in self._bases:
            exports = self.baseline.record["exports"]
            if precision in exports and exports[precision]["config"]["minimum_deployment_target"] == target:
                self._bases[key] = Path(exports[precision]["package"]["path"])
            else:
                cfg = self.export_cfg.replace(precision=precision, minimum_deployment_target=target)
                result = export_model(self.model, self.dataset, cfg, self.out_dir / "_base", f"{precision}-{target}",
                                      metadata={"playbook.stage": "quantization", "playbook.model": self.cfg.model})
                self._bases[key] = result.path
        return self._bases[key]

    def target_for(self, recipe: Recipe) -> str:
        """The deployment target a recipe's package gets (raised to the recipe's minimum when ``retarget``)."""
        current = self.export_cfg.minimum_deployment_target
        return required_target(current, recipe.min_target) if self.cfg.retarget else current

    # ---- one recipe
    def run_recipe(self, name: str) -> dict[str, Any] | None:
        """Compress, save and measure one recipe; returns its record (``None`` if coremltools refused it)."""
        with self.threads():
            return self._run_recipe(name)

    def _run_recipe(self, name: str) -> dict[str, Any] | None:
        recipe = get_recipe(name)
        target = self.target_for(recipe)
        precision = recipe.precision or self.cfg.precision
        current = self.export_cfg.minimum_deployment_target
        if target != current:
            self.retargeted.append({"recipe": recipe.name, "from": current, "to": target})
        try:
            if recipe.side == "coreml":
                made = compress_package(recipe, self.base_package(target, precision), self.out_dir, recipe.name,
                                        self.cfg.weight_threshold)
                path, seconds, details = made.path, made.seconds, {"messages": list(made.messages)}
                extra = {"compress_seconds": seconds, "export_seconds": 0.0, "finetune_steps": 0,
                         "precision": precision}
            else:
                tc = compress_torch(recipe, self.model, self.dataset, self.cfg.steps(), self.cfg.finetune_lr,
                                    self.cfg.batch_size, self.cfg.weight_threshold, self.cfg.seed)
                with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors, at trace time
                    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
                    export = export_model(tc.model, self.dataset,
                                          self.export_cfg.replace(precision=precision,
                                                                  minimum_deployment_target=target),
                                          self.out_dir, recipe.name,
                                          metadata={"playbook.stage": "quantization", "playbook.recipe": recipe.name})
                path, details = export.path, tc.details
                extra = {"compress_seconds": tc.seconds + export.seconds, "export_seconds": export.seconds,
                         "precision": precision,
                         "finetune_steps": tc.finetune_steps,
                         "finetune_loss": [tc.losses[0], tc.losses[-1]] if tc.losses else None}
        except CompressionError as exc:
            self.skipped.append(exc.to_dict())
            print(f"skipped {recipe.name}: {exc}")
            return None
        return self._measure(recipe.name, path, recipe, target, extra, details)

    def _measure(self, name: str, path: Path, recipe: Recipe, target: str, extra: dict[str, Any],
                 details: dict[str, Any], description: str = "") -> dict[str, Any]:
        info = package_info(path)
        extra = {
            "recipe": recipe.to_dict(), "side": recipe.side, "technique": recipe.technique, "scheme": recipe.scheme,
            "precision": self.cfg.precision, "deployment_target": target,
            "weight_threshold": self.cfg.weight_threshold,
            "compressed_weights": compressed_weight_count(info.op_histogram),
            "size_ratio_vs_fp32": self.fp32_bytes / info.size_bytes,
            "weights_bytes": weight_file_bytes(path),
            "weights_ratio_vs_fp32": self.fp32_weight_bytes / max(weight_file_bytes(path), 1),
            "details": details, **extra,
        }
        record, scores = measure_variant(name, path, self.dataset, self.mcfg, self.reference,
                                         description or recipe.description, extra)
        record["within_budget"] = bool(record["vs_reference"]["delta_top1"] >= -self.cfg.max_top1_drop)
        self.variants = [v for v in self.variants if v["name"] != name] + [record]
        self.scores[name] = scores
        return record

    # ---- several recipes
    def run(self, technique: str | None = None) -> Table:
        """Run the selected recipes of one technique (all when ``None``) and return their table."""
        if technique is not None:
            check_choice("technique", technique, TECHNIQUES)
        names = [n for n in self.recipes if technique is None or RECIPES[n].technique == technique]
        for name in names:
            self.run_recipe(name)
        return self.table(names)

    def table(self, names: Sequence[str] | None = None) -> Table:
        """The measured variants (optionally only ``names``) as a table."""
        return results_table(self.variants, self.fp32_bytes, names)

    def variant(self, name: str) -> dict[str, Any] | None:
        return next((v for v in self.variants if v["name"] == name), None)

    # ---- narrative helpers (numbers for the markdown)
    def explain(self, name: str) -> str:
        """One sentence with the measured figures of a variant (or why it is missing)."""
        v = self.variant(name)
        refused = next((x for x in self.skipped if x["recipe"] == name), None)
        if refused is not None:
            return f"`{name}` was refused by coremltools: {refused['coremltools_message']} ({refused['hint']})."
        if v is None:
            return f"`{name}` was not run in this configuration (see `recipes`)."
        vs = v["vs_reference"]
        verdict = "within" if v["within_budget"] else "outside"
        return (f"`{name}`: {v['size_mb']:.3f} MB ({v['size_ratio_vs_fp32']:.1f}x smaller than FP32; the weight file "
                f"alone {v['weights_ratio_vs_fp32']:.1f}x), top-1 "
                f"{v['top1']:.2f}% [{v['top1_ci'][0]:.2f}, {v['top1_ci'][1]:.2f}]; change vs FP32 "
                f"{vs['delta_top1']:+.2f} points, 95% CI [{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}], McNemar p = "
                f"{vs['p_value']:.3g}; top-1 agreement with FP32 {v['fidelity']['top1_agreement']:.2f}% -- "
                f"{verdict} the {self.cfg.max_top1_drop:g}-point budget.")

    def compare(self, a: str, b: str) -> dict[str, Any] | None:
        """Paired comparison of two measured variants (``b`` minus ``a``) on the same test images."""
        if a not in self.scores or b not in self.scores:
            return None
        labels = self.dataset.test.labels
        result = compare_paired(self.scores[a].argmax(1) == labels, self.scores[b].argmax(1) == labels,
                                resamples=self.mcfg.bootstrap_resamples).to_dict()
        return {"a": a, "b": b, **result}

    # ---- sensitivity
    def choose_sensitivity_recipe(self) -> str | None:
        """``sensitivity_recipe``, or for ``auto`` the smallest measured single-step Core ML recipe that loses
        at most 5x the accuracy budget (aggressive, yet recoverable); ``None`` when nothing qualifies."""
        if self.cfg.sensitivity_recipe == "none":
            return None
        if self.cfg.sensitivity_recipe != "auto":
            return self.cfg.sensitivity_recipe
        candidates = [v for v in self.variants if get_recipe(v["recipe"]["name"]).single_step
                      and v["name"] == v["recipe"]["name"]
                      and v["vs_reference"]["delta_top1"] >= -5 * max(self.cfg.max_top1_drop, 0.1)]
        if not candidates:
            return None
        return min(candidates, key=lambda v: v["size_bytes"])["name"]

    def layer_sensitivity(self, recipe: str | None = None) -> dict[str, Any] | None:
        """Compress one layer at a time, rank layers by damage, keep the worst ``k`` float, measure the result.

        Damage = KL divergence from the FP32 package's outputs on ``sensitivity_images`` validation
        images (validation, so the test split stays untouched by the choice).  Then for
        ``k = 0..max_exceptions`` the whole recipe is applied with the ``k`` most damaging layers
        kept uncompressed (``op_name_configs={name: None}``); the smallest ``k >= 1`` whose
        validation loss fits the budget (else ``max_exceptions``) is measured on the test split
        as variant ``<recipe>-keep<k>``.  A control keeps the ``k`` *least* damaging layers instead.
        """
        with self.threads():
            return self._layer_sensitivity(recipe)

    def _layer_sensitivity(self, recipe: str | None = None) -> dict[str, Any] | None:
        """The work of ``layer_sensitivity``."""
        name = recipe or self.choose_sensitivity_recipe()
        if name is None:
            self.sensitivity = None
            return None
        rec = get_recipe(name)
        if not rec.single_step:
            raise ConfigError(f"layer sensitivity needs a single-step Core ML recipe, not {name!r}")
        start = time.perf_counter()
        target = self.target_for(rec)
        base = self.base_package(target)
        layers = [layer for layer in weight_layers(base, self.cfg.weight_threshold, self.model, self._example)
                  if layer.eligible]
        split = _val_subset(self.dataset, self.cfg.sensitivity_images)
        runtime = self.mcfg.runtime
        ref_scores, _ = predict_split(self.baseline.fp32_package, self.dataset, split, runtime)
        ref_top1 = float(100.0 * (ref_scores.argmax(1) == split.labels).mean())
        work = Path(tempfile.mkdtemp(prefix=".sensitivity-", dir=self.out_dir))
        try:
            def evaluate(**kw: Any) -> dict[str, Any]:
                made = compress_package(rec, base, work, "probe", self.cfg.weight_threshold, **kw)
                scores, _ = predict_split(made.path, self.dataset, split, runtime)
                out = _scores_summary(ref_scores, scores, split.labels)
                out["size_mb"] = package_info(made.path).size_mb
                return out

            ranked = []
            for layer in layers:
                res = evaluate(only=[layer.name])
                ranked.append({"name": layer.name, "label": layer.label, "module": layer.module,
                               "shape": list(layer.shape), "size": layer.size, "consumer": layer.consumer,
                               "kl": res["kl"], "val_top1": res["val_top1"],
                               "val_delta_top1": res["val_top1"] - ref_top1, "agreement": res["agreement"]})
            ranked.sort(key=lambda e: (-e["kl"], e["val_delta_top1"]))
            curve = []
            for k in range(0, min(self.cfg.max_exceptions, len(ranked)) + 1):
                res = evaluate(exclude=[e["name"] for e in ranked[:k]])
                curve.append({"kept": k, "kept_layers": [e["label"] for e in ranked[:k]],
                              "val_delta_top1": res["val_top1"] - ref_top1, **res})
            fits = [c for c in curve if c["kept"] >= 1 and c["val_delta_top1"] >= -self.cfg.max_top1_drop]
            chosen = fits[0]["kept"] if fits else curve[-1]["kept"]
            control = None
            if chosen >= 1 and len(ranked) > chosen:
                res = evaluate(exclude=[e["name"] for e in ranked[-chosen:]])
                control = {"kept": chosen, "kept_layers": [e["label"] for e in ranked[-chosen:]],
                           "val_delta_top1": res["val_top1"] - ref_top1, **res}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        keep = [e["name"] for e in ranked[:chosen]]
        variant_name = f"{name}-keep{chosen}"
        made = compress_package(rec, base, self.out_dir, variant_name, self.cfg.weight_threshold, exclude=keep)
        kept_labels = [e["label"] for e in ranked[:chosen]]
        record = self._measure(
            variant_name, made.path, rec, target,
            {"compress_seconds": made.seconds, "export_seconds": 0.0, "finetune_steps": 0, "kept_float": kept_labels},
            {"messages": list(made.messages)},
            description=f"{rec.description}, with the {chosen} most damaging layer(s) kept float: "
                        f"{', '.join(kept_labels)}")
        base_variant = self.variant(name)
        self.sensitivity = {
            "recipe": name, "method": "compress one layer at a time (op_name_configs), rank by KL(FP32 || variant) "
                                      "on validation images; keep the top-k float (op_name_configs={name: None})",
            "val_images": len(split), "val_reference_top1": ref_top1, "accuracy_budget": self.cfg.max_top1_drop,
            "weight_threshold": self.cfg.weight_threshold, "layers": ranked, "keep_curve": curve,
            "chosen_kept": chosen, "control": control, "variant": variant_name,
            "test": {"recipe": base_variant and {"top1": base_variant["top1"],
                                                 "delta_top1": base_variant["vs_reference"]["delta_top1"],
                                                 "ci": [base_variant["vs_reference"]["ci_low"],
                                                        base_variant["vs_reference"]["ci_high"]],
                                                 "size_mb": base_variant["size_mb"]},
                     "guided": {"top1": record["top1"], "delta_top1": record["vs_reference"]["delta_top1"],
                                "ci": [record["vs_reference"]["ci_low"], record["vs_reference"]["ci_high"]],
                                "size_mb": record["size_mb"]}},
            "seconds": time.perf_counter() - start,
        }
        return self.sensitivity

    def sensitivity_table(self) -> Table:
        """The per-layer ranking (most damaging first)."""
        if not self.sensitivity:
            return Table([])
        return Table([{"rank": i + 1, "layer": e["label"], "shape": "x".join(map(str, e["shape"])),
                       "elements": e["size"], "KL": e["kl"], "val Δ top-1": e["val_delta_top1"]}
                      for i, e in enumerate(self.sensitivity["layers"])])

    def keep_curve_table(self) -> Table:
        """Validation top-1 and size as the k most damaging layers stay float (and the control)."""
        if not self.sensitivity:
            return Table([])
        rows = [{"kept float": c["kept"], "layers": ", ".join(c["kept_layers"]) or "-", "size MB": c["size_mb"],
                 "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"], "KL": c["kl"]}
                for c in self.sensitivity["keep_curve"]]
        c = self.sensitivity.get("control")
        if c:
            rows.append({"kept float": f"{c['kept']} (control: least damaging)", "layers": ", ".join(c["kept_layers"]),
                         "size MB": c["size_mb"], "val top-1": c["val_top1"], "val Δ": c["val_delta_top1"],
                         "KL": c["kl"]})
        return Table(rows)

    # ---- chart, pitfalls, record
    def plot(self) -> Any:
        """Accuracy versus size for every variant plus the baseline FP32/FP16, with the Pareto front."""
        return plot_accuracy_vs_size(self.variants, self.baseline_variants, self.cfg.max_top1_drop,
                                     f"{self.cfg.model} on {self.dataset.name}: accuracy versus size")

    def pitfalls(self) -> list[dict[str, str]]:
        """Pitfalls this run actually met, each with the measured numbers."""
        found: list[dict[str, str]] = []
        budget = self.cfg.max_top1_drop
        for v in self.variants:
            vs = v["vs_reference"]
            if vs["delta_top1"] < -5 * max(budget, 0.1):
                data_free = v["recipe"]["data"] == "none"
                found.append({"title": f"over-compression: {v['name']} "
                                       + ("collapses without data" if data_free else "loses far more than the budget"),
                              "detail": f"top-1 {v['top1']:.2f}% ({vs['delta_top1']:+.2f} points vs FP32, 95% CI "
                                        f"[{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}]) at {v['size_mb']:.3f} MB; "
                                        + ("data-free compression this aggressive needs fine-tuning (DKM, QAT) or "
                                           "layer exceptions" if data_free else
                                           "more fine-tuning steps, a lower target, or layer exceptions")})
        layers = weight_layers(self.base_package(self.export_cfg.minimum_deployment_target),
                               self.cfg.weight_threshold)
        small = [x for x in layers if not x.eligible]
        if small:
            found.append({"title": f"weight_threshold={self.cfg.weight_threshold}: {len(small)} weight tensor(s) "
                                   "stay uncompressed on the Core ML side",
                          "detail": f"{[f'{x.name} {list(x.shape)}' for x in small]}; coremltools' default (2048) "
                                    f"would leave {sum(x.size <= 2048 for x in layers)} of {len(layers)} weights "
                                    "of this small model uncompressed"})
        seen: set[tuple[str, ...]] = set()
        for v in self.variants:
            skipped = [m for m in v.get("details", {}).get("messages", []) if "Invalid block_sizes" in m
                       or "Unable to" in m or "skipped" in m.lower() or "does not divide" in m]
            if skipped and tuple(skipped) not in seen:  # a -keep<k> variant repeats its recipe's messages
                seen.add(tuple(skipped))
                found.append({"title": f"{v['name']}: some weights were skipped or got an adapted block size",
                              "detail": "; ".join(skipped[:3])
                              + f" ({v['compressed_weights']} weights compressed)"})
            bn = v["op_histogram"].get("batch_norm", 0)
            if bn:
                found.append({"title": f"{v['name']}: {bn} batch_norm op(s) left in the program",
                              "detail": "the converter cannot fold BatchNorm into a conv whose weight is "
                                        "compressed; this costs run time. QAT (LinearQuantizer) fuses conv+BN "
                                        "before quantizing"})
        if self.retargeted:
            names = sorted({r["recipe"] for r in self.retargeted})
            found.append({"title": f"{len(names)} recipe(s) needed a newer deployment target",
                          "detail": f"{names} were re-exported at {self.retargeted[0]['to']}: the app must require "
                                    "iOS 18 / macOS 15 to ship them"})
        for s in self.skipped:
            found.append({"title": f"{s['recipe']} refused by coremltools", "detail": f"{s['coremltools_message']} "
                                                                                       f"-- {s['hint']}"})
        import platform

        if platform.system() != "Darwin":
            found.append({"title": "W8A8 on the Core ML model needs macOS",
                          "detail": "ct.optimize.coreml.linear_quantize_activations calibrates by running Core ML "
                                    "predictions, which only work on macOS; the W8A8 recipes here quantize on the "
                                    "PyTorch side (LinearQuantizer) and convert"})
        return found

    def record(self) -> dict[str, Any]:
        """The JSON record of this stage (what ``write`` saves)."""
        comparisons = {}
        for a, b in (("torch-w8a8-static", "torch-w8a8-qat"), ("prune-75", "torch-prune-75-ft"),
                     ("palettize-2bit", "torch-palettize-2bit-dkm"), ("palettize-4bit", "torch-palettize-4bit-skm")):
            c = self.compare(a, b)
            if c is not None:
                comparisons[f"{b} vs {a}"] = c
        fp16 = next((v for v in self.baseline_variants if v["name"] == "baseline-fp16"), None)
        return {
            "model": self.cfg.model,
            "config": self.cfg.to_dict(),
            "config_fingerprint": self.cfg.fingerprint(exclude=("reports_dir", "runtime", "threads", "interactive")),
            "environment": environment(),
            "reproduce": self.cfg.reproduce_command(),
            "dataset": self.dataset.summary(),
            "baseline": {"record": str(self.baseline.model_dir / "baseline.json"),
                         "fp32_package": str(self.baseline.fp32_package), "fp32_size_bytes": self.fp32_bytes,
                         "fp32_top1": next(v["top1"] for v in self.baseline_variants if v["name"] == "baseline-fp32"),
                         "fp16_size_bytes": fp16["size_bytes"] if fp16 else None,
                         "deployment_target": self.export_cfg.minimum_deployment_target},
            "reference_variant": self.reference.name,
            "accuracy_budget": self.cfg.max_top1_drop,
            "weight_threshold": self.cfg.weight_threshold,
            "recipes": {n: RECIPES[n].to_dict() for n in self.recipes},
            "retargeted": self.retargeted,
            "skipped": self.skipped,
            "variants": self.variants,
            "pareto_front": pareto_front(self.variants + [dict(v) for v in self.baseline_variants]),
            "comparisons": comparisons,
            "sensitivity": self.sensitivity,
            "pitfalls": self.pitfalls(),
        }

    def write(self) -> Path:
        """Write ``reports/<model>/quantization.json`` (atomically)."""
        from playbook.records import write_stage_record

        return write_stage_record(self.baseline.model_dir, "quantization", self.record())
