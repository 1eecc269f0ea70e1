"""The Neural Engine compatibility scan of saved ML programs, and its rules table.

``scan_package(package)``: reads a saved ``.mlpackage`` back with coremltools' own parsers
(``coremltools.utils.load_spec`` + ``coremltools.converters.mil.frontend.milproto.load``), walks every
operation (nested blocks included) and checks it against ``RULES``: ONE table of patterns known to make
an op leave Apple's Neural Engine (or Core ML refuse it) or be slow there, each row with its source.
The scan is static: it says what the documented rules predict, not what a given device does.
``scan_demo_packages(out_dir)`` saves a clean program and the same with a planted unfriendly pattern.
Knows nothing of notebooks, stages or records; ``playbook.architectures`` re-exports its public names.

Adding a rule: append one ``Rule`` row to ``RULES`` (and, if it needs a new per-op measurement, one entry
in ``FEATURES``).  Every row names its source; a pattern without a source does not go in the table.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import operator
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

for _noisy in ("coremltools", "torchao", "torch.utils._pytree"):  # import-time chatter of coremltools and torchao
    logging.getLogger(_noisy).setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

# --------------------------------------------------------------------------- reading a program


@dataclasses.dataclass(frozen=True)
class OpFacts:
    """Static facts about one operation of a saved ML program.

    ``location`` says where it is: function, block path, index in its block, op name and first output.
    Shapes hold ``None`` for a dimension that is not fixed (flexible input shapes).
    """

    function: str
    block: str
    index: int
    op_type: str
    name: str
    outputs: tuple[str, ...]
    output_shapes: tuple[tuple[int | None, ...] | None, ...]
    output_dtypes: tuple[str, ...]
    input_shapes: tuple[tuple[int | None, ...] | None, ...]
    input_dtypes: tuple[str, ...]
    weight_shape: tuple[int, ...] | None = None
    groups: int | None = None

    @property
    def role(self) -> str:
        """``constant`` (``const``, load-time ``constexpr_*``), ``image-preprocessing`` (the scale/bias ops
        coremltools inserts for an ``ImageType`` input, named ``<input>__scaled__``/``__biased__``) or ``compute``."""
        if _is_constant_op(self.op_type):
            return "constant"
        if self.op_type in ("mul", "add") and self.name.endswith(IMAGE_PREPROCESSING_SUFFIXES):
            return "image-preprocessing"
        return "compute"

    @property
    def location(self) -> str:
        first = self.outputs[0] if self.outputs else "-"
        return f"{self.function}{self.block} op #{self.index} {self.op_type} {self.name!r} -> {first!r}"

    @property
    def shapes(self) -> list[tuple[int | None, ...]]:
        return [s for s in (*self.input_shapes, *self.output_shapes) if s is not None]


@dataclasses.dataclass(frozen=True)
class ProgramFacts:
    """Every op of a program (constants included in ``ops``; ``op_histogram`` counts the computing ones too)."""

    package: str
    specification_version: int
    inputs: dict[str, tuple[tuple[int | None, ...] | None, str]]
    ops: tuple[OpFacts, ...]

    @property
    def op_histogram(self) -> dict[str, int]:
        """How many ops of each type (``const`` included, as in ``coreml.package_info``)."""
        return dict(sorted(collections.Counter(o.op_type for o in self.ops).items()))

    @property
    def computing_ops(self) -> list[OpFacts]:
        """Ops that run at prediction time: everything but ``const`` and the load-time ``constexpr_*`` ops."""
        return [o for o in self.ops if not _is_constant_op(o.op_type)]


# coremltools' insert_image_preprocessing_op pass names the ImageType scale and bias ops after the input.
IMAGE_PREPROCESSING_SUFFIXES = ("__scaled__", "__biased__")


def _is_constant_op(op_type: str) -> bool:
    return op_type == "const" or op_type.startswith("constexpr_")


def _var_facts(var: Any) -> tuple[tuple[int | None, ...] | None, str]:
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    try:
        dtype = types.builtin_to_string(var.dtype) or str(var.dtype)
    except Exception:  # list/tuple/state types have no scalar dtype
        dtype = str(getattr(var, "dtype", "?"))
    shape = getattr(var, "shape", None)
    if shape is None:
        return None, dtype
    return tuple(None if is_symbolic(d) else int(d) for d in shape), dtype


def _walk(block: Any, function: str, path: str) -> Iterator[OpFacts]:
    for index, op in enumerate(block.operations):
        ins: list[Any] = []
        for value in op.inputs.values():
            ins.extend(value if isinstance(value, (list, tuple)) else [value])
        in_facts = [_var_facts(v) for v in ins]
        out_facts = [_var_facts(v) for v in op.outputs]
        weight = op.inputs.get("weight") if op.op_type in ("conv", "conv_transpose", "linear") else None
        groups = op.inputs.get("groups")
        yield OpFacts(
            function=function, block=path, index=index, op_type=op.op_type, name=op.name,
            outputs=tuple(v.name for v in op.outputs),
            output_shapes=tuple(s for s, _ in out_facts), output_dtypes=tuple(d for _, d in out_facts),
            input_shapes=tuple(s for s, _ in in_facts), input_dtypes=tuple(d for _, d in in_facts),
            weight_shape=tuple(int(d) for d in weight.shape) if weight is not None and weight.shape else None,
            groups=int(groups.val) if groups is not None and groups.val is not None else None)
        for b, inner in enumerate(op.blocks):
            yield from _walk(inner, function, f"{path}/op #{index} {op.op_type} block {b}")


def read_program(package: Path | str) -> ProgramFacts:
    """Load ``package``'s ML program with coremltools' own parsers and list every op with its types."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    path = Path(package)
    if not path.exists():
        raise FileNotFoundError(f"Core ML package {path} does not exist")
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is a {spec.WhichOneof('Type')!r} model; the scan reads ML programs only "
                         "(convert with convert_to='mlprogram')")
    program = load_mil(spec, specification_version=spec.specificationVersion,
                       file_weights_dir=str(path / "Data" / "com.apple.CoreML" / "weights"))
    ops: list[OpFacts] = []
    inputs: dict[str, tuple[tuple[int | None, ...] | None, str]] = {}
    for fname, func in program.functions.items():
        for name, var in func.inputs.items():
            inputs[f"{fname}:{name}" if len(program.functions) > 1 else name] = _var_facts(var)
        ops.extend(_walk(func, fname, ""))
    return ProgramFacts(str(path), int(spec.specificationVersion), inputs, tuple(ops))


# --------------------------------------------------------------------------- the rules table

_DTYPE_BYTES = {"fp16": 2, "fp32": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "bool": 1}
ANE_LAST_AXIS_ALIGNMENT = 64  # bytes (Apple, "Deploying Transformers on the Apple Neural Engine", principle 1)


def _last_axis_padding(op: OpFacts) -> float:
    """Worst ratio, over the op's tensor outputs, of the bytes the last axis occupies once aligned to 64 bytes
    to the bytes it holds (1.0 = no waste; a singleton fp16 last axis gives 32.0)."""
    worst = 1.0
    for shape, dtype in zip(op.output_shapes, op.output_dtypes):
        if not shape or dtype not in _DTYPE_BYTES or shape[-1] is None or shape[-1] == 0:
            continue
        used = shape[-1] * _DTYPE_BYTES[dtype]
        padded = math.ceil(used / ANE_LAST_AXIS_ALIGNMENT) * ANE_LAST_AXIS_ALIGNMENT
        worst = max(worst, padded / used)
    return worst


# One measurement per name; a rule compares one of these with its threshold.
FEATURES: dict[str, Callable[[OpFacts], Any]] = {
    "present": lambda op: True,
    "unknown_dims": lambda op: sum(d is None for s in op.shapes for d in s),
    "max_rank": lambda op: max((len(s) for s in op.shapes), default=0),
    "fp32_outputs": lambda op: sum(d == "fp32" for d in op.output_dtypes),
    "last_axis_padding": _last_axis_padding,
}
TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "is": lambda value, _: bool(value), ">": operator.gt, ">=": operator.ge,
}
EFFECTS = {
    "unsupported": "Core ML cannot run it at all",
    "fallback": "the op leaves the Neural Engine (runs on GPU/CPU)",
    "slow": "the op can stay on the Neural Engine but costs memory or copies",
    "unit-dependent": "faster where it runs on the Neural Engine, slower on the compute units that decompress weights "
                      "at load time (the CPU, sometimes the GPU)",
}
BLOCKING_EFFECTS = ("unsupported", "fallback")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the rules table: which ops it looks at, what it measures, when it fires, why, and the source.

    ``ops``: op types it applies to (empty: every op that runs at prediction time); ``skip``: op types it
    ignores.  It fires when ``TESTS[test](FEATURES[feature](op), threshold)`` holds.  ``evidence`` is a
    format string for the finding (``{value}`` is the measurement).
    """

    id: str
    effect: str
    feature: str
    test: str
    threshold: Any
    says: str
    fix: str
    source: str
    evidence: str = "{value}"
    ops: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise ValueError(f"rule {self.id!r}: effect {self.effect!r} is not one of {list(EFFECTS)}")
        if self.feature not in FEATURES:
            raise ValueError(f"rule {self.id!r}: feature {self.feature!r} is not one of {list(FEATURES)}")
        if self.test not in TESTS:
            raise ValueError(f"rule {self.id!r}: test {self.test!r} is not one of {list(TESTS)}")
        if "http" not in self.source:
            raise ValueError(f"rule {self.id!r} needs a source with its address")

    def applies_to(self, op: OpFacts) -> bool:
        """Rules judge the ops that compute at prediction time; constants and coremltools' ImageType
        preprocessing (kept in float32 before the first cast, placed by Core ML itself) are not judged."""
        if op.role != "compute" or op.op_type in self.skip:
            return False
        return not self.ops or op.op_type in self.ops

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


APPLE_ANE_ARTICLE = ("Apple Machine Learning Research, \"Deploying Transformers on the Apple Neural Engine\" (2022), "
                     "https://machinelearning.apple.com/research/neural-engine-transformers")

RULES: tuple[Rule, ...] = (
    Rule("rank-above-5", "unsupported", "max_rank", ">", 5,
         says="a tensor of rank above 5: the Core ML framework does not support tensors of rank greater than five",
         fix="merge dimensions with a reshape before the op and split them after it",
         source="coremltools issue #1723, answer by a coremltools maintainer: "
                "https://github.com/apple/coremltools/issues/1723",
         evidence="rank {value}"),
    Rule("flexible-shape", "fallback", "unknown_dims", ">", 0,
         says="a tensor with a flexible (range) dimension: with the default reshape-frequency hint (frequent) Core ML "
              "avoids shape-specific optimisation, and a range-flexible model may leave the Neural Engine at shapes "
              "other than its default; from iOS 17.4 / macOS 14.4 the hint reshapeFrequency = .infrequent lets Core "
              "ML re-optimise for each new shape, so flexible shapes can run there",
         fix="export a fixed shape or ct.EnumeratedShapes (optimised on the device for each enumerated shape), or "
             "load the model with MLOptimizationHints.reshapeFrequency = .infrequent (iOS 17.4 and later)",
         source="coremltools guide, Flexible Input Shapes: "
                "https://apple.github.io/coremltools/docs-guides/source/flexible-inputs.html ; Apple, "
                "MLOptimizationHints.ReshapeFrequency (iOS 17.4+): "
                "https://developer.apple.com/documentation/coreml/mloptimizationhints-swift.struct/"
                "reshapefrequency-swift.enum",
         evidence="{value} flexible dimension(s)"),
    Rule("fp32-compute", "fallback", "fp32_outputs", ">", 0,
         says="an op computing in float32: a float32-typed ML program executes on the GPU and CPU; the "
              "float16-typed program is the one eligible for the Neural Engine",
         fix="convert with compute_precision=ct.precision.FLOAT16 (coremltools' default); keep only the ops "
             "that need it in float32 (ct.transform.FP16ComputePrecision(op_selector=...))",
         source="coremltools guide, Typed Execution Workflow Example: "
                "https://apple.github.io/coremltools/docs-guides/source/typed-execution-example.html",
         evidence="{value} float32 output(s)", skip=("cast",)),
    Rule("recurrent-layer", "fallback", "present", "is", True,
         says="a recurrent layer (LSTM, GRU, RNN): not supported on the Neural Engine",
         fix="replace the recurrence with convolutions or attention, or run it as a separate CPU model",
         source="coremltools issue #1780, answer by an Apple engineer: "
                "https://github.com/apple/coremltools/issues/1780",
         evidence="{op_type}", ops=("lstm", "gru", "rnn")),
    Rule("topk-gather", "fallback", "present", "is", True,
         says="top-k selection and the gather that consumes its indices: measured with MLComputePlan under "
              "CPU_AND_NE (Apple M3 Pro, coremltools 9.0), these ops were placed on the CPU",
         fix="do the top-k and its gather after the model (on the CPU, outside Core ML), or accept the switch",
         source="roboflow/rf-detr pull request #1495 (MLComputePlan measurements): "
                "https://github.com/roboflow/rf-detr/pull/1495",
         evidence="{op_type}", ops=("topk", "gather_along_axis")),
    Rule("last-axis-padding", "slow", "last_axis_padding", ">=", 4.0,
         says="a short last axis: the last axis of a Neural Engine buffer is not packed but aligned to 64 bytes, "
              "so a last axis of a few elements allocates several times the memory it holds (a singleton: 32x "
              "in float16), which lowers the chance of L2 cache residency",
         fix="keep the long axis last, e.g. (B, C, 1, S) instead of (B, S, C); for CNNs, late feature maps of "
             "width <= 8 and squeeze-excite's (B, C, 1, 1) tensors are where it shows",
         source=APPLE_ANE_ARTICLE + ", principle 1", evidence="last axis padded {value:.1f}x"),
    Rule("reshape-transpose", "slow", "present", "is", True,
         says="a reshape or transpose: because one axis of Neural Engine buffers is not packed, these are likely "
              "to trigger memory copies",
         fix="avoid layout changes inside the network (e.g. a 1x1 convolution classifier instead of "
             "flatten + linear); keep the remaining ones at the ends",
         source=APPLE_ANE_ARTICLE + ", principle 3", evidence="{op_type}", ops=("reshape", "transpose")),
    Rule("activation-quantization", "unit-dependent", "present", "is", True,
         says="int8 activations (W8A8): whether they help depends on the compute unit, not the chip -- on the Neural "
              "Engine W8A8 ran faster than weight-only compression in Apple's results table on the A16 as well as "
              "on later chips, which add int8-int8 throughput (A17 Pro, M4); on the compute units that "
              "decompress weights at load time (the CPU, sometimes the GPU) it can slow inference considerably",
         fix="use activation quantization only when the model runs fully or mostly on the Neural Engine (check the "
             "placement in Xcode's performance report); otherwise keep weight-only compression",
         source="coremltools guide, Quantization: Performance: "
                "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html",
         evidence="{op_type}", ops=("quantize",)),
)


def rules_table(rules: Sequence[Rule] = RULES) -> list[dict[str, str]]:
    """The rules as rows (id, effect, when it fires, why, fix, source) for display."""
    def fires_on(r: Rule) -> str:
        where = "" if r.feature == "present" else f" where {r.feature} {r.test} {r.threshold}"
        return (", ".join(r.ops) if r.ops else "every op") + where + (f" (not {', '.join(r.skip)})" if r.skip else "")

    return [{"rule": r.id, "effect": r.effect, "fires on": fires_on(r), "why": r.says, "fix": r.fix,
             "source": r.source} for r in rules]


# --------------------------------------------------------------------------- the scan


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule firing on one op: the rule, what it means, the op and where it is."""

    rule: str
    effect: str
    op_type: str
    op_name: str
    location: str
    evidence: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """The scan of one package: op histogram, every finding, and the verdict."""

    package: str
    computing_ops: int
    op_histogram: dict[str, int]
    findings: tuple[Finding, ...]
    rules: tuple[str, ...]

    @property
    def blocking(self) -> list[Finding]:
        """Findings that predict an op leaves the Neural Engine or cannot run at all."""
        return [f for f in self.findings if f.effect in BLOCKING_EFFECTS]

    @property
    def passed(self) -> bool:
        """No finding predicts that an op leaves the Neural Engine (advisories may remain)."""
        return not self.blocking

    @property
    def clean(self) -> bool:
        """No rule fired at all."""
        return not self.findings

    def by_rule(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        for f in self.findings:
            out.setdefault(f.rule, []).append(f)
        return out

    def counts(self) -> dict[str, int]:
        """Findings per rule."""
        return {rule: len(items) for rule, items in self.by_rule().items()}

    def verdict(self) -> str:
        if self.clean:
            return "clean: no rule fired"
        if self.passed:
            return f"passes: nothing predicted to leave the Neural Engine ({len(self.findings)} advisory finding(s))"
        kinds = sorted({f.rule for f in self.blocking})
        return f"{len(self.blocking)} op(s) predicted off the Neural Engine or unsupported ({', '.join(kinds)})"

    def to_dict(self, max_per_rule: int | None = 25) -> dict[str, Any]:
        """JSON-ready; at most ``max_per_rule`` findings are listed per rule (``counts`` has them all)."""
        listed = [f.to_dict() for items in self.by_rule().values() for f in items[:max_per_rule or None]]
        return {"package": self.package, "computing_ops": self.computing_ops, "op_histogram": self.op_histogram,
                "rules": list(self.rules), "counts": self.counts(), "passed": self.passed, "clean": self.clean,
                "verdict": self.verdict(), "findings": listed, "findings_listed_per_rule": max_per_rule}


def scan_program(program: ProgramFacts, rules: Sequence[Rule] = RULES) -> ScanResult:
    """Check every op of ``program`` against ``rules``; one finding per (rule, op) that fires."""
    findings: list[Finding] = []
    for op in program.ops:
        for rule in rules:
            if not rule.applies_to(op):
                continue
            value = FEATURES[rule.feature](op)
            if TESTS[rule.test](value, rule.threshold):
                findings.append(Finding(rule.id, rule.effect, op.op_type, op.name, op.location,
                                        rule.evidence.format(value=value, op_type=op.op_type)))
    return ScanResult(program.package, len(program.computing_ops), program.op_histogram, tuple(findings),
                      tuple(r.id for r in rules))


def scan_package(package: Path | str, rules: Sequence[Rule] = RULES) -> ScanResult:
    """Read ``package`` (a saved ``.mlpackage``) and scan it against ``rules``."""
    return scan_program(read_program(package), rules)


# --------------------------------------------------------------------------- a clean and a planted program


class _CleanNet(nn.Module):
    """Convolutions and ReLUs on a 32-wide map, output kept as a feature map: nothing in ``RULES`` fires."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _PlantedNet(_CleanNet):
    """The clean network with an LSTM run along the image width: the planted Neural Engine-unfriendly pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).mean(dim=2)  # (1, 32, W)
        out, _ = self.lstm(features.transpose(1, 2))  # (1, W, 32)
        return out.transpose(1, 2).unsqueeze(2)  # (1, 32, 1, W)


def scan_demo_packages(out_dir: Path | str) -> dict[str, tuple[Path, str]]:
    """Convert and save two tiny FP16 programs for the scan demonstration: ``clean`` (convolutions on a 32-wide
    map) and ``planted`` (the same plus an LSTM along the width).  Returns ``{name: (package, what it is)}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    example = torch.rand(1, 3, 32, 32)
    for name, net, what in (("clean", _CleanNet(), "two 3x3 convolutions + ReLU on a 32x32 map, FP16"),
                            ("planted", _PlantedNet(), "the clean program + an LSTM along the image width, FP16")):
        torch.manual_seed(0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # nn.LSTM's shape checks
            traced = torch.jit.trace(net.eval(), example)
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="image", shape=example.shape, dtype=np.float16)],
                             outputs=[ct.TensorType(name="features", dtype=np.float16)], convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16)
        path = out / f"{name}.mlpackage"
        from playbook.coreml import save_package

        save_package(mlmodel, path)
        made[name] = (path, what)
    return made
