"""Core ML export, the one prediction interface, and the PyTorch-vs-Core ML parity check.

Export: ``torch.jit.trace`` (falling back to ``torch.export`` where TorchScript tracing
breaks, as for efficientnet-lite0) then ``ct.convert(convert_to="mlprogram")`` in FP16 or FP32,
a chosen ``minimum_deployment_target``, a ``TensorType`` with FP32 I/O (explicit dtypes:
without them an FP16 program on iOS16+ gets FP16 inputs *and* outputs) or an
``ImageType`` with the dataset's normalisation folded into scale/bias, optional class
labels through ``ct.ClassifierConfig``, and model metadata.

Prediction: ``load_runtime(package, runtime="auto")`` returns an object with
``predict(inputs)``; on macOS ``auto`` is Apple's Core ML runtime (``MLModel.predict``
with the requested compute units), elsewhere the playbook's reference executor
(``playbook.mlprogram``), which runs the saved program's ops with PyTorch on the CPU.
Every result carries ``provenance`` saying which one produced it.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from playbook.config import ConfigError, StrictConfig, check_choice
from playbook.coreml_backports import backport_scalar_cast
from playbook.data import Dataset, Split
from playbook.metrics import Fidelity, fidelity
from playbook.package_files import directory_size, release_on_collect, share_permissions, zipped_size
from playbook.targets import DEPLOYMENT_TARGETS, TARGET_BY_SPEC

for _noisy in ("coremltools", "torchao", "torch.utils._pytree"):  # import-time chatter of coremltools and torchao
    logging.getLogger(_noisy).setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

INPUT_NAME = "image"
LOGITS_NAME = "logits"
LABEL_NAME = "classLabel"
PROBS_NAME = "classProbs"
COMPUTE_UNITS = ["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"]
RUNTIMES = ["auto", "coreml", "reference"]
# Metadata keys every package the playbook saves carries (read back by tests and shown in the report).
VARIANT_METADATA = ("playbook.stage", "playbook.variant", "playbook.recipe", "playbook.precision",
                    "playbook.deployment_target", "playbook.source_model_sha256")
# Parity tolerances on logits, relative to the largest reference logit, per program precision.
PARITY_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2}
MIN_TOP1_AGREEMENT = 99.9


class ExportError(RuntimeError):
    """Conversion or saving failed; the message names the step and a hint."""


@dataclasses.dataclass(frozen=True)
class ExportConfig(StrictConfig):
    """How to export.

    Attributes:
        precision: ``fp16`` or ``fp32`` compute precision of the ML program.
        minimum_deployment_target: one of ``DEPLOYMENT_TARGETS`` (iOS18 unlocks per-block int4 and joint compression).
        input_kind: ``tensor`` (normalised FP32 multiarray) or ``image`` (pixels; normalisation folded into scale/bias).
        classifier: add class labels (``classLabel`` + ``classProbs`` outputs, softmax included) instead of raw logits.
        author, license, description: model metadata shown in Xcode.
    """

    precision: str = "fp16"
    minimum_deployment_target: str = "iOS17"
    input_kind: str = "tensor"
    classifier: bool = False
    author: str = "coreml-playbook"
    license: str = "MIT"
    description: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("precision", self.precision, ["fp16", "fp32"])
        check_choice("minimum_deployment_target", self.minimum_deployment_target, DEPLOYMENT_TARGETS)
        check_choice("input_kind", self.input_kind, ["tensor", "image"])


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    """Facts read from a saved ``.mlpackage``: sizes from the files, ops from the program."""

    path: str
    size_bytes: int
    zip_bytes: int
    op_histogram: dict[str, int]
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    specification_version: int

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    @property
    def zip_mb(self) -> float:
        return self.zip_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(size_mb=self.size_mb, zip_mb=self.zip_mb)
        return d


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """An exported package and how it was made."""

    package: PackageInfo
    config: ExportConfig
    seconds: float

    @property
    def path(self) -> Path:
        return Path(self.package.path)

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package.to_dict(), "config": self.config.to_dict(), "seconds": self.seconds}


class _ExportWrapper(nn.Module):
    """What gets traced: optional per-channel normalisation (image input) and softmax (classifier)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                 softmax: bool) -> None:
        super().__init__()
        self.model = model
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1))
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) * self.inv_std
        y = self.model(x)
        return torch.softmax(y, dim=1) if self.softmax else y


def safe_package_path(out_dir: Path, stem: str) -> Path:
    """``out_dir/stem.mlpackage``, refusing names that would escape ``out_dir``."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ConfigError(f"package name {stem!r} must be a plain file name (no '/' or '..')")
    return Path(out_dir) / f"{stem}.mlpackage"


def _input_type(dataset: Dataset, cfg: ExportConfig) -> tuple[Any, tuple[float, ...] | None, tuple[float, ...] | None]:
    shape = dataset.input_shape
    if cfg.input_kind == "tensor":
        return ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32), None, None
    channels = dataset.in_channels
    if channels not in (1, 3):
        raise ConfigError(f"input_kind='image' needs 1 or 3 channels, the dataset has {channels}")
    layout = ct.colorlayout.GRAYSCALE if channels == 1 else ct.colorlayout.RGB
    if len(set(dataset.std)) == 1:  # fold normalisation exactly: x_norm = x * 1/(255 std) - mean/std
        std = dataset.std[0]
        bias = [-m / std for m in dataset.mean]
        image = ct.ImageType(name=INPUT_NAME, shape=shape, scale=1.0 / (255.0 * std),
                             bias=bias if channels == 3 else bias[0], color_layout=layout)
        return image, None, None
    # Per-channel std cannot be folded into ImageType's scalar scale: scale to [0, 1], normalise in the graph.
    image = ct.ImageType(name=INPUT_NAME, shape=shape, scale=1.0 / 255.0, color_layout=layout)
    return image, dataset.mean, dataset.std


def conversion_passes(const_threshold: int = 1) -> Any:
    """coremltools' default passes, with ``common::const_deduplication`` on constants of ``const_threshold`` elements
    and more (its default, 100, leaves every conv its own ``strides``/``pad``/``dilations``; 1 is what coremltools
    uses to share constants across functions; set on the pass class).  A width-12 ResNet's FP16 program: 16,183 bytes
    with 100, 11,113 with 1; its package 106,548 -> 100,454 bytes, 6,094 less: 17 % of a 35.7 KB student budget.
    Every conversion takes its passes from here, so this also applies ``backport_scalar_cast``."""
    backport_scalar_cast()
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.set_options("common::const_deduplication", {"const_threshold": const_threshold})
    return pipeline


def export_model(model: nn.Module, dataset: Dataset, cfg: ExportConfig, out_dir: Path, stem: str,
                 metadata: dict[str, str] | None = None) -> ExportResult:
    """Trace and convert ``model`` to ``out_dir/<stem>.mlpackage``; returns sizes and op histogram.

    The package is written to a temporary folder inside ``out_dir`` and renamed into place,
    so an interrupted export never leaves a half-written package, and nothing is written
    outside ``out_dir``.
    """
    start = time.perf_counter()
    target = safe_package_path(out_dir, stem)
    input_type, mean, std = _input_type(dataset, cfg)
    wrapper = _ExportWrapper(model.eval().cpu(), mean, std, softmax=cfg.classifier).eval()
    example = torch.rand(dataset.input_shape) * (255.0 if mean is not None else 1.0)
    kwargs: dict[str, Any] = {}
    if cfg.classifier:
        kwargs["classifier_config"] = ct.ClassifierConfig(list(dataset.class_names), predicted_feature_name=LABEL_NAME,
                                                          predicted_probabilities_output=PROBS_NAME)
        kwargs["outputs"] = [ct.TensorType(name=PROBS_NAME)]
    else:
        kwargs["outputs"] = [ct.TensorType(name=LOGITS_NAME, dtype=np.float32)]
    kwargs.update(convert_to="mlprogram", inputs=[input_type], pass_pipeline=conversion_passes(),
                  compute_precision=ct.precision.FLOAT16 if cfg.precision == "fp16" else ct.precision.FLOAT32,
                  minimum_deployment_target=getattr(ct.target, cfg.minimum_deployment_target))
    errors = []
    for frontend in ("torch.jit.trace", "torch.export"):
        try:
            with torch.no_grad():
                program = (torch.jit.trace(wrapper, example) if frontend == "torch.jit.trace"
                           else torch.export.export(wrapper, (example,)).run_decompositions({}))
            mlmodel = release_on_collect(ct.convert(program, **kwargs))
            break
        except Exception as exc:  # e.g. efficientnet-lite0's `x.view(inputs.size(0), -1)` breaks the TorchScript path
            errors.append(f"{frontend}: {type(exc).__name__}: {exc}")
    else:
        raise ExportError(f"ct.convert failed for {stem!r} with both frontends; " + " | ".join(errors))
    check_inference_graph(mlmodel.get_spec(), f"{stem} ({', '.join(f'{k}={v}' for k, v in (metadata or {}).items())})")
    describe_model(mlmodel, dataset, cfg, {"playbook.frontend": frontend, "playbook.variant": stem,
                                           "playbook.source_model_sha256": model_sha256(model), **(metadata or {})})
    save_package(mlmodel, target)
    return ExportResult(package_info(target), cfg, time.perf_counter() - start)


def model_sha256(model: nn.Module) -> str:
    """SHA-256 of a PyTorch model's state dict (every tensor's name, dtype, shape and bytes, in order): the
    identity of the trained weights a package was converted from."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):  # e.g. a qscheme
            digest.update(f"{name}|{value!r}|".encode())
            continue
        if value.is_quantized:
            value = value.int_repr()
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.float().numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return digest.hexdigest()


def read_metadata(package: Path) -> dict[str, str]:
    """The user metadata stored in a saved package's spec (``playbook.*`` and coremltools' own keys)."""
    spec = ct.utils.load_spec(str(package))
    return dict(spec.description.metadata.userDefined)


def describe_model(mlmodel: Any, dataset: Dataset, cfg: ExportConfig, metadata: dict[str, str]) -> None:
    """Set author, license, description, input/output docs and user metadata on ``mlmodel``."""
    mlmodel.author = cfg.author
    mlmodel.license = cfg.license
    mlmodel.short_description = cfg.description or (
        f"{dataset.name} classifier ({dataset.num_classes} classes), exported by the Core ML optimization playbook"
    )
    if cfg.input_kind == "tensor":
        mlmodel.input_description[INPUT_NAME] = (
            f"Normalised image, shape {list(dataset.input_shape)}: (pixel/255 - mean) / std with "
            f"mean={[round(m, 4) for m in dataset.mean]}, std={[round(s, 4) for s in dataset.std]}"
        )
    else:
        mlmodel.input_description[INPUT_NAME] = f"{dataset.image_size}x{dataset.image_size} image"
    if cfg.classifier:
        for feature in mlmodel.get_spec().description.output:
            kind = feature.type.WhichOneof("Type")
            mlmodel.output_description[feature.name] = (
                "Probability of each class" if kind == "dictionaryType" else "Most likely class")
    else:
        mlmodel.output_description[LOGITS_NAME] = f"Logits for classes {list(dataset.class_names)}"
    meta = {"playbook.classes": json.dumps(list(dataset.class_names)), "playbook.dataset": dataset.name,
            "playbook.precision": cfg.precision, "playbook.deployment_target": cfg.minimum_deployment_target,
            "playbook.recipe": "none (uncompressed export)", **metadata}
    mlmodel.user_defined_metadata.update({k: str(v) for k, v in meta.items()})
    set_variant_metadata(mlmodel, {}, describe=not cfg.description)


def set_variant_metadata(mlmodel: Any, metadata: dict[str, Any], describe: bool = True) -> None:
    """Update a model's ``playbook.*`` metadata before it is saved: ``metadata`` overrides (a ``None`` value removes
    the key), ``playbook.deployment_target`` follows the program's specification version, and the short
    description names the variant, so Xcode shows what the package really is (not its parent's facts)."""
    user = mlmodel.user_defined_metadata
    for key, value in metadata.items():
        if value is None:
            if key in user:
                del user[key]
        else:
            user[key] = str(value)
    spec_version = int(mlmodel.get_spec().specificationVersion)
    target = TARGET_BY_SPEC.get(spec_version)
    if target and not str(user.get("playbook.deployment_target", "")).startswith("macOS"):
        user["playbook.deployment_target"] = target
    parts = [user.get("playbook.variant"), user.get("playbook.weights") or None,
             f"{str(user.get('playbook.precision', '')).upper()} compute" if user.get("playbook.precision") else None,
             f"{user.get('playbook.deployment_target')}+" if user.get("playbook.deployment_target") else None]
    dataset = user.get("playbook.dataset")
    described = ", ".join(p for p in parts if p)
    if described and describe:
        mlmodel.short_description = (f"{dataset} classifier: " if dataset else "") + described + \
            " (Core ML optimization playbook)"


def save_package(mlmodel: Any, target: Path, metadata: dict[str, Any] | None = None) -> None:
    """Save ``mlmodel`` to ``target`` atomically (temp folder beside it, then rename), after ``metadata`` (see
    ``set_variant_metadata``) is written into it.  Its temporary package goes when it is collected."""
    release_on_collect(mlmodel)
    if metadata is not None:
        set_variant_metadata(mlmodel, metadata)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        tmp_pkg = tmp_dir / target.name
        mlmodel.save(str(tmp_pkg))
        share_permissions(tmp_pkg)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp_pkg, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _feature_dict(feature: Any) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    info: dict[str, Any] = {"name": feature.name, "type": kind}
    if kind == "multiArrayType":
        arr = feature.type.multiArrayType
        info["shape"] = list(arr.shape)
        info["dtype"] = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
    elif kind == "imageType":
        img = feature.type.imageType
        info.update(width=img.width, height=img.height,
                    color_space=ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace))
    elif kind == "dictionaryType":
        info["key_type"] = feature.type.dictionaryType.WhichOneof("KeyType")
    return info


def op_histogram(spec: Any) -> dict[str, int]:
    """How many ops of each type an ML program's spec holds (nested blocks included)."""
    histogram: collections.Counter[str] = collections.Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            histogram[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    if spec.WhichOneof("Type") == "mlProgram":
        for function in spec.mlProgram.functions.values():
            for block in function.block_specializations.values():
                walk(block)
    return dict(sorted(histogram.items()))


# Ops that only belong to training: randomness (dropout or drop-connect traced in training mode) has no place in
# an inference graph; the deployed model would give a different answer at every call.
TRAINING_ONLY_OPS = ("random_bernoulli", "random_categorical", "random_normal", "random_uniform")


def check_inference_graph(spec: Any, what: str) -> None:
    """Raise ``ExportError`` naming ``what`` (the package, recipe or stage) when the program holds a training-only
    op: a model traced in training mode (a quantization-aware or pruning wrapper, ``model.train()``) carries its
    dropout or drop-connect randomness into the graph."""
    found = {op: n for op, n in op_histogram(spec).items() if op in TRAINING_ONLY_OPS}
    if found:
        raise ExportError(f"{what}: the converted program contains training-only op(s) "
                          f"{', '.join(f'{op} x{n}' for op, n in found.items())} (dropout or drop-connect traced in "
                          "training mode); trace the model in eval mode, or set its dropout/drop-connect rate to 0 "
                          "before a training-mode wrapper traces it")


def package_info(path: Path) -> PackageInfo:
    """Sizes (from the files), op histogram (from the program) and I/O of a saved package."""
    from playbook.mlprogram import read_spec

    path = Path(path)
    spec = read_spec(path)
    return PackageInfo(
        path=str(path), size_bytes=directory_size(path), zip_bytes=zipped_size(path),
        op_histogram=op_histogram(spec),
        inputs=tuple(_feature_dict(f) for f in spec.description.input),
        outputs=tuple(_feature_dict(f) for f in spec.description.output),
        specification_version=int(spec.specificationVersion),
    )


# --------------------------------------------------------------------------- prediction
@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where and how a prediction was computed."""

    runtime: str  # "coreml" (Apple's runtime) or "reference" (playbook.mlprogram on PyTorch)
    compute_units: str | None
    device: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def coreml_runtime_available() -> bool:
    """True on macOS, where ``MLModel.predict`` works."""
    return platform.system() == "Darwin"


class CoreMLRuntime:
    """Apple's Core ML runtime (macOS only), used through coremltools' documented ``MLModel`` API."""

    def __init__(self, package: Path, compute_units: str = "ALL") -> None:
        if not coreml_runtime_available():
            raise RuntimeError("the Core ML runtime needs macOS; use runtime='reference' (or 'auto') here")
        check_choice("compute_units", compute_units, COMPUTE_UNITS)
        self.model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input_names = [f.name for f in spec.description.input]
        self.output_names = [f.name for f in spec.description.output]
        self._image_inputs = {f.name for f in spec.description.input if f.type.WhichOneof("Type") == "imageType"}
        self._class_labels = json.loads(self.model.user_defined_metadata.get("playbook.classes", "[]"))
        self.provenance = Provenance("coreml", compute_units, f"{platform.platform()} {platform.machine()}",
                                     "Apple Core ML runtime via coremltools MLModel.predict")

    def _to_feature(self, name: str, x: np.ndarray) -> Any:
        if name in self._image_inputs:
            from PIL import Image

            pixels = np.clip(np.round(x), 0, 255).astype(np.uint8)
            return Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        return x[None].astype(np.float32)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        batch = [{k: self._to_feature(k, v[i]) for k, v in inputs.items()} for i in range(n)]
        results = self.model.predict(batch)
        out: dict[str, list[Any]] = collections.defaultdict(list)
        for res in results:
            for key, value in res.items():
                if isinstance(value, dict):  # classifier probabilities: {label: p}
                    value = np.array([value[c] for c in self._class_labels], dtype=np.float32)
                out[key].append(np.asarray(value).reshape(-1) if not isinstance(value, str) else value)
        return {k: np.stack(v) if not isinstance(v[0], str) else np.array(v) for k, v in out.items()}


class ReferenceRuntime:
    """The playbook's reference executor (``playbook.mlprogram``): PyTorch ops on the CPU."""

    def __init__(self, package: Path) -> None:
        from playbook.mlprogram import ReferenceProgram

        self.program = ReferenceProgram.load(Path(package))
        self.input_names = list(self.program.input_names)
        self.output_names = list(self.program.output_names)
        self.provenance = Provenance(
            "reference", None, f"{platform.system()} {platform.machine()} CPU, torch {torch.__version__}",
            "playbook reference executor: the saved ML program's ops run with PyTorch on CPU (not Apple's runtime)",
        )

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.program.predict(inputs)


def load_runtime(package: Path, runtime: str = "auto", compute_units: str = "ALL") -> CoreMLRuntime | ReferenceRuntime:
    """A loaded model with ``predict(inputs)`` and ``provenance``.

    ``auto`` uses Apple's Core ML runtime on macOS and the reference executor elsewhere;
    ``coreml`` insists on Apple's runtime (error elsewhere); ``reference`` always uses ours.
    """
    check_choice("runtime", runtime, RUNTIMES)
    check_choice("compute_units", compute_units, COMPUTE_UNITS)
    if not Path(package).exists():
        raise FileNotFoundError(f"Core ML package {package} does not exist")
    from playbook.records import verify_package

    verify_package(Path(package))  # a package a record names must still be the one it measured
    if runtime == "coreml" or (runtime == "auto" and coreml_runtime_available()):
        return CoreMLRuntime(Path(package), compute_units)
    return ReferenceRuntime(Path(package))


def predict(package: Path, inputs: dict[str, np.ndarray], runtime: str = "auto",
            compute_units: str = "ALL") -> tuple[dict[str, np.ndarray], Provenance]:
    """One-shot prediction: outputs for a batch of inputs, and which runtime computed them."""
    loaded = load_runtime(package, runtime, compute_units)
    return loaded.predict(inputs), loaded.provenance


def score_array(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The per-class scores of a classification model's outputs (logits or class probabilities)."""
    for name in (LOGITS_NAME, PROBS_NAME):
        if name in outputs:
            return np.asarray(outputs[name], dtype=np.float32).reshape(len(outputs[name]), -1)
    numeric = [v for v in outputs.values() if np.asarray(v).dtype.kind == "f"]
    if len(numeric) != 1:
        raise ValueError(f"cannot tell which output holds class scores among {sorted(outputs)}")
    return np.asarray(numeric[0], dtype=np.float32).reshape(len(numeric[0]), -1)


def package_inputs(package_kind: str, dataset: Dataset, images: np.ndarray) -> dict[str, np.ndarray]:
    """The package's input dict for uint8 images: normalised tensors, or pixels for an image input."""
    if package_kind == "imageType":
        return {INPUT_NAME: images.astype(np.float32)}
    return {INPUT_NAME: dataset.to_tensor(images).numpy()}


def predict_split(package: Path, dataset: Dataset, split: Split, runtime: str = "auto", compute_units: str = "ALL",
                  batch_size: int = 500, progress: bool = False) -> tuple[np.ndarray, Provenance]:
    """Class scores of a saved package on every image of ``split``, batched."""
    from tqdm.auto import tqdm

    loaded = load_runtime(package, runtime, compute_units)
    kind = package_info_kind(Path(package))
    chunks = []
    for start in tqdm(range(0, len(split), batch_size), desc=f"predict {Path(package).name}", disable=not progress,
                      leave=False):
        inputs = package_inputs(kind, dataset, split.images[start : start + batch_size])
        chunks.append(score_array(loaded.predict(inputs)))
    return np.concatenate(chunks), loaded.provenance


def package_info_kind(package: Path) -> str:
    """``multiArrayType`` or ``imageType``: how the package takes its (first) input."""
    spec = ct.utils.load_spec(str(package))
    return spec.description.input[0].type.WhichOneof("Type")


# --------------------------------------------------------------------------- parity
@dataclasses.dataclass(frozen=True)
class ParityResult:
    """PyTorch vs the exported program on the same inputs."""

    precision: str
    fidelity: Fidelity
    tolerance_rel: float
    min_top1_agreement: float
    passed: bool
    n: int
    provenance: Provenance
    compared: str

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, **self.fidelity.to_dict(), "tolerance_rel": self.tolerance_rel,
                "min_top1_agreement": self.min_top1_agreement, "passed": self.passed, "n": self.n,
                "compared": self.compared, "provenance": self.provenance.to_dict()}


def check_parity(reference_logits: np.ndarray, package: Path, dataset: Dataset, split: Split, precision: str,
                 runtime: str = "auto") -> ParityResult:
    """Compare PyTorch's logits for ``split`` (``reference_logits``) with the package's outputs on the same images,
    with the precision's tolerance.

    Classifier packages output probabilities, so those are compared to the softmax of the logits;
    otherwise logits are compared.  KL is computed on the softmax of each side.
    """
    check_choice("precision", precision, list(PARITY_TOLERANCE))
    reference = np.asarray(reference_logits, dtype=np.float32)
    if len(reference) != len(split):
        raise ValueError(f"{len(reference)} reference rows for a split of {len(split)} images")
    scores, provenance = predict_split(package, dataset, split, runtime)
    # Only the output types are needed: read the spec, not package_info (which also zips the package for its size).
    outputs = ct.utils.load_spec(str(package)).description.output
    compared = "logits"
    if any(o.type.WhichOneof("Type") == "dictionaryType" for o in outputs):
        reference = torch.softmax(torch.from_numpy(reference), dim=1).numpy()
        compared = "probabilities"
        # fidelity's KL treats its inputs as logits; log-probabilities make that exact.
        reference, scores = np.log(np.clip(reference, 1e-30, None)), np.log(np.clip(scores, 1e-30, None))
    fid = fidelity(reference, scores)
    tol = PARITY_TOLERANCE[precision]
    passed = fid.max_rel_error <= tol and fid.top1_agreement >= MIN_TOP1_AGREEMENT
    return ParityResult(precision, fid, tol, MIN_TOP1_AGREEMENT, bool(passed), len(split), provenance, compared)
