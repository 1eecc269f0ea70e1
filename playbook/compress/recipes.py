"""The compression recipe catalogue: named, documented recipes built on coremltools' own compressors.

Every recipe is a ``Recipe`` in ``RECIPES`` (``available_recipes()`` lists them).  Two families:

* **Core ML side** (``side="coreml"``, ``compress.coreml_side``): ``coremltools.optimize.coreml`` applied
  to an exported ML program (``linear_quantize_weights``, ``palettize_weights``, ``prune_weights``,
  chained with ``joint_compression=True`` for the joint recipes).  Data-free: no images are needed.
* **PyTorch side** (``side="torch"``, ``compress.torch_side``): ``coremltools.optimize.torch`` on the
  trained model (``PostTrainingQuantizer``, ``LinearQuantizer`` for calibrated or trained W8A8,
  ``MagnitudePruner`` with a short fine-tune, ``SKMPalettizer``, ``DKMPalettizer``), then
  ``ct.convert``; the converter turns the compression metadata into the same ``constexpr_*`` ops.

Naming used throughout (it matches what the package computes):

* **weight-only**: weights are *stored* compressed (int8/int4 with scales, a palette + indices, or a
  sparse mask) and expanded back to float when the model loads or runs; activations stay FP16/FP32
  and the arithmetic stays float.  (PyTorch's and TFLite's *dynamic* quantization is different: it
  quantizes activations on the fly and computes in int8.)
* **static W8A8**: weights *and* activations are int8; activation scales are fixed ahead of time from
  a calibration set (``quantize``/``dequantize`` ops in the program).

Below 4 bits (issue 15) two more kinds of recipe:

* **mixed bit-widths** (``allocation="sensitivity"``, Core ML side): each layer gets its own palette size,
  chosen by ``compress.mixed`` from the damage every layer does alone at every candidate size, measured on
  *validation* images, to meet an accuracy budget (``options["budget_share"]`` of the stage's
  ``max_top1_drop``) at the smallest size; applied with one ``OpPalettizerConfig(nbits=...)`` per weight
  (``op_name_configs``).
* **training-time** compression: DKM palettization (``DKMPalettizer``) or gradual pruning while fine-tuning; a
  PyTorch-side recipe may name Core ML ``steps`` to apply after conversion (joint compression on top of the
  sparse weights, e.g. a 4-bit palette for the survivors of fine-tuned pruning).

``bits`` is the nominal storage per weight of the compressed layers, *including* the sparsity mask (1 bit per
weight, ``constexpr_sparse_to_dense``): 50% sparse FP16 is 0.5 * 16 + 1 = 9 bits, 50% sparse with a 4-bit
palette 0.5 * 4 + 1 = 3 bits.

Preparation (issue 23, ``compress.graph``): a recipe may name ``prepare`` steps, applied to a copy of the PyTorch
model *before* compression: ``plain_convs`` (subclassed convolutions become explicit pad + plain ``nn.Conv2d`` so
coremltools' exact-type registries reach them), ``fold_bn`` (BatchNorm folded into the convolution before it, so no
``batch_norm`` op is left beside a compressed weight) and ``equalize`` (Nagel et al.'s data-free cross-layer
equalization, so one palette or one scale per tensor serves every channel).  ``compress_torch`` applies them; for a
Core ML-side recipe the caller must apply them (``compress.graph.prepare_model``) before it exports the program the
recipe compresses, and then compress only conv/linear weights: ``equalize`` turns each ReLU6 between an equalized
pair into a per-channel cap (a const feeding ``minimum``), and coremltools compresses every const above the threshold
unless told otherwise (pass such consts in ``exclude``, so the caps stay exact).  A PyTorch-side recipe may add ``options["correct_bias"] = N``: empirical bias correction on N
calibration images after compression.

Recipes that need an iOS18 program (int4 per-block, per-grouped-channel palettes, joint compression)
name it in ``min_target``; applied to an older program they raise ``CompressionError`` carrying
coremltools' own message and a hint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from typing import Any, Iterable, Iterator

from playbook.compress.mixed import DEFAULT_BIT_CHOICES, check_bit_choices
from playbook.config import ConfigError, check_choice
from playbook.targets import DEPLOYMENT_TARGETS, OS_RELEASES, os_level, target_at

SIDES = ("coreml", "torch")
TECHNIQUES = ("precision", "quantization", "palettization", "pruning", "joint", "activation-quantization",
              "data-aware", "mixed-bits", "training-time")
SCHEMES = ("float", "weight-only", "static W8A8")
TORCH_ALGORITHMS = ("ptq", "w8a8-static", "qat", "prune-finetune", "skm", "dkm", "ptp", "gptq", "sparsegpt")
PREPARE_STEPS = ("plain_convs", "fold_bn", "equalize")  # compress.graph.STEPS, in the order they make sense
FOLD = ("plain_convs", "fold_bn")
EQUALIZE = ("plain_convs", "fold_bn", "equalize")
COREML_STEPS = ("quantize", "palettize", "prune")
ALLOCATIONS = ("", "sensitivity")
DATA = ("none", "calibration", "validation", "training")


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
        bits: nominal bits per compressed weight, the sparsity mask included (1 bit per weight); for a
            mixed-bit recipe, the widest choice (the allocation decides the average, recorded per variant).
        min_target: oldest ``minimum_deployment_target`` whose ops can hold the result.
        steps: Core ML side: ``(kind, options)`` pairs, ``kind`` in ``quantize``/``palettize``/``prune``;
            options are passed to ``OpLinearQuantizerConfig``/``OpPalettizerConfig``/``OpMagnitudePrunerConfig``.
            Two steps make a joint recipe (``joint_compression=True`` on the second); none is the
            plain export.  PyTorch side: Core ML steps applied to the converted program, on top of what
            the PyTorch algorithm stored (``joint_compression=True``).
        algorithm: PyTorch side: one of ``TORCH_ALGORITHMS``.
        options: PyTorch side: the algorithm's settings; a DKM recipe's ``allocation_from`` names a mixed-bit
            recipe whose per-layer palette sizes it fine-tunes; ``lr`` and ``steps_factor`` set a fine-tune's own
            learning rate and multiply the stage's fine-tune steps, and ``early_stop=False`` runs every step,
            unchecked (``steps_factor`` and ``early_stop`` are read through the properties of the same names).  Mixed-bit recipes: ``bit_choices`` (palette sizes
            a layer may get) and ``budget_share`` (the share of the stage's accuracy budget the choice may use).
        data: what data the recipe needs: ``none``, ``calibration``, ``validation`` (to choose, e.g. bit-widths)
            or ``training``.
        allocation: ``""`` (every layer the same) or ``sensitivity`` (per-layer bit-widths, ``compress.mixed``).
        precision: forces the program's compute precision (``fp16``/``fp32``); empty: the stage's ``precision``.
        description: one line for tables and the report.
        prepare: ``compress.graph`` steps applied, in order, to a copy of the PyTorch model before anything else
            (``plain_convs``, ``fold_bn``, ``equalize``).  PyTorch side: ``compress_torch`` applies them.  Core ML
            side: the caller applies them (``compress.graph.prepare_model``) and exports that model for the recipe.
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
    allocation: str = ""
    prepare: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for step in self.prepare:
            check_choice("prepare step", step, PREPARE_STEPS)
        check_choice("side", self.side, SIDES)
        check_choice("technique", self.technique, TECHNIQUES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("min_target", self.min_target, DEPLOYMENT_TARGETS)
        check_choice("data", self.data, DATA)
        check_choice("precision", self.precision, ["", "fp16", "fp32"])
        check_choice("allocation", self.allocation, ALLOCATIONS)
        for kind, _ in self.steps:
            check_choice("step", kind, COREML_STEPS)
        if self.side == "torch":
            check_choice("algorithm", self.algorithm, TORCH_ALGORITHMS)
        if self.allocation:
            if self.side != "coreml" or [k for k, _ in self.steps] != ["palettize"]:
                raise ConfigError(f"recipe {self.name!r}: allocation={self.allocation!r} needs one Core ML "
                                  "palettize step (the per-layer bit-widths are palette sizes)")
            check_bit_choices(self.options.get("bit_choices", DEFAULT_BIT_CHOICES))
            share = self.options.get("budget_share", 1.0)
            if not 0.0 < float(share) <= 1.0:
                raise ConfigError(f"recipe {self.name!r}: budget_share={share!r} must be in (0, 1]")

    @property
    def steps_factor(self) -> float:
        """How many times the stage's fine-tune steps this recipe's fine-tune runs (option ``steps_factor``)."""
        return float(self.options.get("steps_factor", 1.0))

    @property
    def early_stop(self) -> bool:
        """Whether this recipe's fine-tune may stop early on its agreement checks (option ``early_stop``)."""
        return bool(self.options.get("early_stop", True))

    @property
    def single_step(self) -> bool:
        """A uniform Core ML recipe with one compressor (per-layer sensitivity and exceptions apply)."""
        return self.side == "coreml" and len(self.steps) == 1 and not self.allocation

    @property
    def bit_choices(self) -> tuple[int, ...]:
        """Mixed-bit recipes: the palette sizes a layer may get (sorted); others: ``()``."""
        return check_bit_choices(self.options.get("bit_choices", DEFAULT_BIT_CHOICES)) if self.allocation else ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = [[kind, dict(opts)] for kind, opts in self.steps]
        d["prepare"] = list(self.prepare)
        return d


def palette_target(bits: Iterable[int]) -> str:
    """The oldest deployment target whose ``constexpr_lut_to_dense`` holds palettes of these sizes: 3-bit
    palettes (8 entries) need iOS18; iOS16 and iOS17 take 2, 4, 16, 64 or 256 entries (coremltools 9.0 says
    "lut should be a vector of size from one of {2, 4, 16, 64, 256}" otherwise)."""
    return "iOS18" if 3 in set(bits) else "iOS16"


def _q(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("quantize", kw)


def _p(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("palettize", kw)


def _s(**kw: Any) -> tuple[str, dict[str, Any]]:
    return ("prune", kw)


def _catalogue() -> dict[str, Recipe]:
    int8_per_channel = _q(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    r = [
        Recipe("fp16", "coreml", "precision", "float", 16,
               "FP16 ML program, no weight compression (the default Core ML export; 01 measures it as baseline-fp16)",
               precision="fp16"),
        # ---- Core ML side, data-free, weight-only
        Recipe("int8-weights", "coreml", "quantization", "weight-only", 8,
               "int8 weights, per-output-channel symmetric scales (linear_quantize_weights)",
               steps=(int8_per_channel,)),
        Recipe("int4-block", "coreml", "quantization", "weight-only", 4,
               "int4 weights, one scale per block of 32 input channels, or of the largest divisor of a layer's "
               "channel count below 32 (linear_quantize_weights, per_block)",
               min_target="iOS18",
               steps=(_q(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32),)),
        *[Recipe(f"palettize-{n}bit", "coreml", "palettization", "weight-only", n,
                 f"{n}-bit k-means palette per tensor ({2 ** n} distinct values per weight tensor)",
                 min_target=palette_target((n,)),
                 steps=(_p(mode="kmeans", nbits=n, granularity="per_tensor"),)) for n in (8, 6, 4, 3, 2)],
        Recipe("palettize-4bit-grouped", "coreml", "palettization", "weight-only", 4,
               "4-bit k-means palettes, one per group of 16 output channels, or of the largest divisor of a layer's "
               "channel count below 16 (per_grouped_channel)",
               min_target="iOS18",
               steps=(_p(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16),)),
        Recipe("prune-50", "coreml", "pruning", "weight-only", 9,
               "50% of weights set to zero by magnitude, stored sparse (prune_weights)",
               steps=(_s(target_sparsity=0.5),)),
        Recipe("prune-75", "coreml", "pruning", "weight-only", 5,
               "75% of weights set to zero by magnitude, stored sparse, no fine-tune",
               steps=(_s(target_sparsity=0.75),)),
        Recipe("prune-2of4", "coreml", "pruning", "weight-only", 9,
               "2:4 structured sparsity: 2 of every 4 consecutive weights zero (n_m_ratio=(2, 4))",
               steps=(_s(n_m_ratio=(2, 4)),)),
        Recipe("prune-50+palettize-4bit", "coreml", "joint", "weight-only", 3,
               "50% magnitude pruning, then the remaining weights on a 4-bit palette (joint compression)",
               min_target="iOS18", steps=(_s(target_sparsity=0.5), _p(mode="kmeans", nbits=4))),
        Recipe("prune-50+int8", "coreml", "joint", "weight-only", 5,
               "50% magnitude pruning, then the remaining weights as int8 (joint compression)",
               min_target="iOS18",
               steps=(_s(target_sparsity=0.5), int8_per_channel)),
        # ---- PyTorch side
        Recipe("torch-ptq-int8", "torch", "quantization", "weight-only", 8,
               "int8 weights per channel from the PyTorch model (PostTrainingQuantizer), then converted",
               algorithm="ptq", options={"weight_dtype": "int8", "granularity": "per_channel"}),
        Recipe("torch-w8a8-static", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations; activation ranges calibrated on the calibration split, no training "
               "(LinearQuantizer, observers only)",
               min_target="iOS17", algorithm="w8a8-static", data="calibration",
               options={"activation_observer": "min_max"}, prepare=FOLD),
        Recipe("torch-w8a8-static-affine", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations with a zero point per tensor (affine), so a ReLU6 output uses all 256 "
               "levels; ranges calibrated on the calibration split, no training (LinearQuantizer, observers only)",
               min_target="iOS17", algorithm="w8a8-static", data="calibration",
               options={"activation_observer": "min_max", "quantization_scheme": "affine"}, prepare=FOLD),
        Recipe("torch-w8a8-qat", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations learned with quantization-aware training (LinearQuantizer, short "
               "fine-tune with fake quantization at a learning rate of 1e-4, a zero point per activation tensor)",
               min_target="iOS17", algorithm="qat", data="training", prepare=FOLD,
               options={"lr": 1e-4, "quantization_scheme": "affine"}),
        Recipe("torch-prune-75-ft", "torch", "data-aware", "weight-only", 5,
               "75% magnitude pruning reached gradually while fine-tuning (MagnitudePruner, polynomial schedule: "
               "sparsity rises as 1 - (1 - t)^3 over the first half of the fine-tune, then the network trains "
               "around the zeros)",
               algorithm="prune-finetune", data="training", options={"target_sparsity": 0.75}, prepare=FOLD),
        Recipe("torch-prune-50-ft", "torch", "data-aware", "weight-only", 9,
               "50% magnitude pruning reached gradually while fine-tuning (MagnitudePruner, polynomial schedule), "
               "BatchNorm folded first",
               algorithm="prune-finetune", data="training", options={"target_sparsity": 0.5}, prepare=FOLD),
        Recipe("torch-palettize-4bit-skm", "torch", "data-aware", "weight-only", 4,
               "4-bit palettes from sensitivity-weighted k-means: gradients on calibration images decide which "
               "weights the palette must fit best (SKMPalettizer)",
               algorithm="skm", data="calibration", options={"n_bits": 4}, prepare=FOLD),
        # ---- below 4 bits: mixed per-layer bit-widths, training-time palettization, gradual pruning + palettes
        Recipe("palettize-mixed", "coreml", "mixed-bits", "weight-only", 8,
               "one k-means palette size per layer (2, 3, 4, 6 or 8 bits), chosen on validation images from each "
               "layer's measured damage to stay within the accuracy budget at the smallest size (op_name_configs)",
               min_target=palette_target(DEFAULT_BIT_CHOICES),
               steps=(_p(mode="kmeans", nbits=8, granularity="per_tensor"),), data="validation",
               allocation="sensitivity", options={"bit_choices": DEFAULT_BIT_CHOICES, "budget_share": 1.0}),
        Recipe("palettize-mixed-tight", "coreml", "mixed-bits", "weight-only", 8,
               "as palettize-mixed, within 30% of the accuracy budget (0.3 points at the default budget of 1)",
               min_target=palette_target(DEFAULT_BIT_CHOICES),
               steps=(_p(mode="kmeans", nbits=8, granularity="per_tensor"),), data="validation",
               allocation="sensitivity", options={"bit_choices": DEFAULT_BIT_CHOICES, "budget_share": 0.3}),
        Recipe("torch-palettize-3bit-dkm", "torch", "training-time", "weight-only", 3,
               "3-bit palettes learned while fine-tuning with differentiable k-means (DKMPalettizer)",
               min_target=palette_target((3,)), algorithm="dkm", data="training", options={"n_bits": 3}, prepare=FOLD),
        Recipe("torch-palettize-2bit-dkm", "torch", "training-time", "weight-only", 2,
               "2-bit palettes learned while fine-tuning with differentiable k-means (DKMPalettizer)",
               algorithm="dkm", data="training", options={"n_bits": 2}, prepare=FOLD),
        # one palette per output channel: after BatchNorm folding a layer's output channels can lie 100x apart, and a
        # palette shared across them collapses (efficientnet-lite0, 10 steps at lr 0.005 with the teacher, 500 test
        # images, FP32 87.8 %: 11.0 % top-1 with one palette per tensor, 7.8 % per 16 channels, 44.8 % per channel;
        # benchmarks/bench_lite0_recipes.py); after 800 steps (16 checks, weights of step 650) +0.46 [-0.22, +1.20] on
        # 5,000 test images at 12.0x, in 6,707 s on 2 threads.  Batch mode clusters a layer's equal-sized partitions
        # as one tensor instead of one Python loop per channel.
        Recipe("torch-palettize-2bit-dkm-channel", "torch", "training-time", "weight-only", 2,
               "2-bit palettes, one per output channel, learned while fine-tuning with differentiable k-means "
               "(DKMPalettizer, per_grouped_channel granularity with group_size 1, the partitions clustered in batch "
               "mode); needs iOS 18 for a palette per channel",
               min_target="iOS18", algorithm="dkm", data="training",
               options={"n_bits": 2, "granularity": "per_grouped_channel", "group_size": 1,
                        "palett_batch_mode": True}, prepare=FOLD),
        Recipe("torch-palettize-mixed-dkm", "torch", "training-time", "weight-only", 8,
               "the per-layer palette sizes palettize-mixed chose on validation, learned while fine-tuning with "
               "differentiable k-means (DKMPalettizer, one module_name_configs entry per layer)",
               min_target="iOS18", algorithm="dkm", data="training", options={"allocation_from": "palettize-mixed"},
               prepare=FOLD),
        Recipe("torch-palettize-mixed-tight-dkm", "torch", "training-time", "weight-only", 8,
               "the per-layer palette sizes palettize-mixed-tight chose on validation, learned while fine-tuning "
               "with differentiable k-means",
               min_target="iOS18", algorithm="dkm", data="training",
               options={"allocation_from": "palettize-mixed-tight"}, prepare=FOLD),
        Recipe("torch-prune-50-ft+palettize-4bit", "torch", "training-time", "weight-only", 3,
               "50% magnitude pruning reached gradually while fine-tuning (polynomial schedule), then the "
               "survivors on a 4-bit k-means palette after conversion (joint compression)",
               min_target="iOS18", algorithm="prune-finetune", data="training", options={"target_sparsity": 0.5},
               steps=(_p(mode="kmeans", nbits=4, granularity="per_tensor"),), prepare=FOLD),
        Recipe("torch-prune-75-ft+palettize-4bit", "torch", "training-time", "weight-only", 2,
               "75% magnitude pruning reached gradually while fine-tuning (polynomial schedule), then the "
               "survivors on a 4-bit k-means palette after conversion (joint compression)",
               min_target="iOS18", algorithm="prune-finetune", data="training", options={"target_sparsity": 0.75},
               steps=(_p(mode="kmeans", nbits=4, granularity="per_tensor"),), prepare=FOLD),
        # ---- issue 23: prepared graphs (compress.graph) and coremltools' data-aware post-training compressors
        Recipe("palettize-4bit-eq", "coreml", "palettization", "weight-only", 4,
               "4-bit k-means palette per tensor after BatchNorm folding and data-free cross-layer equalization "
               "(Nagel et al. 2019), so one palette serves every channel",
               steps=(_p(mode="kmeans", nbits=4, granularity="per_tensor"),), prepare=EQUALIZE),
        Recipe("palettize-4bit-grouped-eq", "coreml", "palettization", "weight-only", 4,
               "4-bit k-means palettes per group of 16 output channels (or the largest divisor below 16) after "
               "BatchNorm folding and cross-layer equalization",
               min_target="iOS18",
               steps=(_p(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16),),
               prepare=EQUALIZE),
        Recipe("int4-block-eq", "coreml", "quantization", "weight-only", 4,
               "int4 weights per block of 32 input channels after BatchNorm folding and cross-layer equalization",
               min_target="iOS18",
               steps=(_q(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32),),
               prepare=EQUALIZE),
        Recipe("torch-w8a8-static-eq", "torch", "activation-quantization", "static W8A8", 8,
               "int8 weights and activations calibrated on the calibration split after BatchNorm folding and "
               "cross-layer equalization (LinearQuantizer, observers only)",
               min_target="iOS17", algorithm="w8a8-static", data="calibration",
               options={"activation_observer": "min_max"}, prepare=EQUALIZE),
        Recipe("torch-int4-gptq", "torch", "data-aware", "weight-only", 4,
               "int4 weights per block of 16 input channels chosen by GPTQ (Frantar et al. 2022) from calibration "
               "images (coremltools layerwise_compression); grouped/depthwise convolutions stay float (GPTQ fails "
               "on them)",
               min_target="iOS18", algorithm="gptq", data="calibration",
               options={"weight_dtype": "uint4", "granularity": "per_block", "block_size": 16}, prepare=FOLD),
        Recipe("torch-int8-gptq", "torch", "data-aware", "weight-only", 8,
               "int8 weights per channel chosen by GPTQ from calibration images; grouped/depthwise convolutions stay "
               "float",
               algorithm="gptq", data="calibration",
               options={"weight_dtype": "uint8", "granularity": "per_channel"}, prepare=FOLD),
        # Bias correction: -1.60 points -> -0.58 on efficientnet-lite0 (5,000 test images); GPTQ one layer at a time
        # did not help here (-2.08 alone, -1.00 with bias correction), unlike the palette below.
        Recipe("torch-int4-gptq-channel", "torch", "data-aware", "weight-only", 4,
               "int4 weights, one scale per output channel, chosen by GPTQ from calibration images, columns in "
               "order of their Hessian diagonal (act-order); biases then corrected on up to 256 calibration images; "
               "grouped/depthwise convolutions as int8 per channel after conversion (GPTQ fails on them)",
               min_target="iOS18", algorithm="gptq", data="calibration",
               options={"weight_dtype": "uint4", "granularity": "per_channel", "use_activation_order_heuristic": True,
                        "correct_bias": 256},
               steps=(int8_per_channel,), prepare=FOLD),
        # iOS26: for an older target coremltools' canonicalize_quantized_lut_pattern pass multiplies the scale into
        # the palette and stores one 16-entry palette per output channel (its comment: "This issue was fixed in
        # iOS26"); on efficientnet-lite0 that is 6.44x instead of 6.97x, with the same top-1.  Sequential GPTQ and
        # bias correction: -1.34 points -> -0.96 -> -0.64 on lite0 (5,000 test images).
        Recipe("torch-palettize-4bit-gptq", "torch", "data-aware", "weight-only", 4,
               "4-bit palette: one table of 16 normal-float values per layer and a scale per output channel, each "
               "weight's entry chosen by GPTQ from calibration images (enable_normal_float, Hessian dampening 0.1), "
               "one layer at a time in the order the network runs them; biases then corrected on up to 256 calibration "
               "images; grouped/depthwise convolutions as int8 per channel after conversion; needs iOS 26, where "
               "the palette is stored once per layer",
               min_target="iOS26", algorithm="gptq", data="calibration",
               options={"weight_dtype": "uint4", "granularity": "per_channel", "enable_normal_float": True,
                        "hessian_dampening": 0.1, "sequential": True, "correct_bias": 256},
               steps=(int8_per_channel,), prepare=FOLD),
        Recipe("torch-int4-qat", "torch", "training-time", "weight-only", 4,
               "int4 weights, one scale per output channel, learned with quantization-aware training (LinearQuantizer, "
               "weight-only fake quantization, learning rate 5e-4, twice the stage's fine-tune steps, every one run: "
               "no early stop); grouped/depthwise convolutions as int8 per channel after conversion",
               min_target="iOS18", algorithm="qat", data="training",
               # twice the steps: on efficientnet-lite0 (fine-tune B, 5,000 test images, teacher logits) 211 steps
               # measured -0.40 [-1.08, +0.24] and 422 steps +0.24 [-0.46, +0.90], its agreement with FP32 on
               # validation still rising at step 208 (benchmarks/bench_lite0_recipes.py --checks 8).
               # No early stop: on the no-flag run's network at 7edca66 (its 2,000 test images) the stage's checks on
               # 500 validation images ended it at step 260 with the weights of step 104, -0.65 [-1.80, +0.50]; all
               # 422 steps unchecked measured +0.80 [-0.20, +1.85], and checks on 2,000 images never stopped it
               # (agreement 0.899 at step 52 to 0.926 at 312 and after), +0.65 [-0.35, +1.70] with step 312's weights.
               options={"lr": 5e-4, "steps_factor": 2.0, "early_stop": False, "weight_dtype": "qint4",
                        "activation_dtype": "float32"},
               steps=(int8_per_channel,), prepare=FOLD),
        Recipe("torch-prune-50-sparsegpt", "torch", "data-aware", "weight-only", 9,
               "half of all conv/linear weights zero, chosen and compensated by SparseGPT (Frantar & Alistarh 2023) "
               "from calibration images, depthwise convolutions dense and the others pruned more to make up; then a "
               "fine-tune of the survivors that keeps every zero (coremltools layerwise_compression)",
               algorithm="sparsegpt", data="training", options={"target_sparsity": 0.5}, prepare=FOLD),
        Recipe("torch-palettize-4bit-eq-bc", "torch", "data-aware", "weight-only", 4,
               "4-bit k-means palette per tensor (PostTrainingPalettizer) after BatchNorm folding and cross-layer "
               "equalization, then empirical bias correction on up to 256 calibration images",
               algorithm="ptp", data="calibration", options={"n_bits": 4, "correct_bias": 256}, prepare=EQUALIZE),
        Recipe("torch-palettize-4bit-skm-eq", "torch", "data-aware", "weight-only", 4,
               "4-bit sensitivity-weighted k-means palettes (SKMPalettizer, 128 calibration images) after BatchNorm "
               "folding and cross-layer equalization",
               algorithm="skm", data="calibration", options={"n_bits": 4}, prepare=EQUALIZE),
    ]
    catalogue = {x.name: x for x in r}
    for x in r:
        source = x.options.get("allocation_from")
        if source is not None and (source not in catalogue or not catalogue[source].allocation):
            raise ConfigError(f"recipe {x.name!r}: allocation_from={source!r} must name a mixed-bit recipe")
    return catalogue


RECIPES: dict[str, Recipe] = _catalogue()
# What the stage runs when ``recipes`` is empty.  In the catalogue but not the default, because each
# costs a full test-split evaluation (or minutes of CPU) for no new finding on a 2-core machine:
# ``prune-50+int8`` and ``torch-ptq-int8`` (same code paths as ``prune-50+palettize-4bit`` and
# ``int8-weights``), ``palettize-8bit`` and ``palettize-6bit`` (indistinguishable from FP32 in every run
# we made: the cliff is below 4 bits) and ``torch-prune-50-ft+palettize-4bit`` (the same code path as its
# 75% sibling, which is the smaller of the two).  The 2-bit DKM palette is the smallest variant within the
# default budget in our runs, so it runs by default despite its cost.
DEFAULT_RECIPES: tuple[str, ...] = (
    "int8-weights", "int4-block",
    "palettize-4bit", "palettize-3bit", "palettize-2bit", "palettize-4bit-grouped",
    "prune-50", "prune-75", "prune-2of4", "prune-50+palettize-4bit",
    "torch-w8a8-static", "torch-w8a8-qat", "torch-prune-75-ft", "torch-palettize-4bit-skm",
    "palettize-mixed", "palettize-mixed-tight", "torch-palettize-2bit-dkm", "torch-prune-75-ft+palettize-4bit",
    "torch-int4-gptq",  # efficientnet-lite0: -0.42 points at 5.25x where per-block int4 without data lost 12.4
    # efficientnet-lite0 on 5,000 test images (benchmarks/bench_lite0_recipes.py), one fine-tune of the network:
    # -0.58 at 6.99x, -0.64 at 6.97x (the data-free 4-bit palette: -69.2), +0.18 at 7.01x after 200 steps (-2.32 after
    # 60); an earlier fine-tune: -0.88 at 50 % sparsity (magnitude pruning with the same fine-tune: -4.28)
    "torch-int4-gptq-channel", "torch-palettize-4bit-gptq", "torch-int4-qat", "torch-prune-50-sparsegpt",
)
# In the catalogue, not the default: ``torch-w8a8-static-affine`` (-1.26 against -1.42 symmetric, within each other's
# interval).
# Added to the default set by the stage's ``slow_recipes=True``: more DKM fine-tunes.  DKM re-assigns every
# weight to every palette entry at each step, several times the cost of a plain training step on a CPU
# (benchmarks/bench_compress.py prints seconds per step).
SLOW_RECIPES: tuple[str, ...] = ("torch-palettize-3bit-dkm", "torch-palettize-2bit-dkm-channel",
                                 "torch-palettize-mixed-dkm", "torch-palettize-mixed-tight-dkm")


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


def recipe_rows(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per recipe: name, side, technique, scheme, bits, oldest target, data needed, description."""
    return [{"recipe": r.name, "side": r.side, "technique": r.technique, "scheme": r.scheme, "bits": r.bits,
             "min target": r.min_target, "data": r.data, "what it does": r.description}
            for r in (get_recipe(n) for n in (names if names is not None else RECIPES))]


def required_target(current: str, needed: str) -> str:
    """``current`` if it is at least ``needed``; else ``needed``'s level in ``current``'s OS family."""
    check_choice("deployment target", current, DEPLOYMENT_TARGETS)
    check_choice("deployment target", needed, DEPLOYMENT_TARGETS)
    if os_level(current) >= os_level(needed):
        return current
    return target_at(os_level(needed), "macOS" if current.startswith("macOS") else "iOS")


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


def hint_for(message: str, recipe: Recipe) -> str:
    low = message.lower()
    if "ios18" in low or "re-convert" in low or "deployment" in low:
        return (f"{recipe.name} needs an ML program with minimum_deployment_target {recipe.min_target} or newer: "
                f"re-export with playbook.coreml.export_model(..., ExportConfig(minimum_deployment_target="
                f"'{recipe.min_target}')) -- the quantization stage does this for you unless retarget=False; "
                f"the app then requires {' / '.join(OS_RELEASES[recipe.min_target])}")
    if "lut should be a vector of size" in low:
        return ("3-bit palettes (8 entries) need an iOS18 program: re-export with minimum_deployment_target "
                "'iOS18' (the quantization stage does this unless retarget=False)")
    if "scikit-learn" in low or "sklearn" in low:
        return "k-means palettization needs scikit-learn: pip install scikit-learn"
    if "divisible" in low or "block" in low:
        return "choose a block_size / group_size that divides the weight's channel counts"
    return f"see the recipe's documentation: {recipe.description}"


