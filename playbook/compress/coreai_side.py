"""Core AI beside Core ML: Apple's new stack (``coreai-torch``, ``coreai-opt``, ``coreai-core``) on a PyTorch model.

* ``export_aimodel``: ``torch.export`` -> ``coreai_torch.TorchConverter`` -> a ``.aimodel`` folder (FP32, or FP16
  through ``coreai_opt.casting.cast_to_16_bit_precision``), with a dynamic batch dimension.
* ``compress_coreai``: one of coreai-opt's data-free weight compressions (``TECHNIQUES``: int8 / int4 per-channel
  weights, a 4-bit k-means palette per group of 16 channels, 50 % magnitude pruning) prepared once, then finalized
  twice from the same prepared weights: ``ExportBackend.CoreAI`` -> ``.aimodel`` and, optionally,
  ``ExportBackend.CoreML`` -> ``ct.convert`` -> ``.mlpackage`` (the same compressed weights as Core ML
  ``constexpr_*`` ops).  Failures raise ``CoreAICompressionError`` (a ``CompressionError``), which a caller records
  per recipe.
* running a ``.aimodel`` (Apple's runtime: scores and host-interpreter latency) is ``compress.coreai_runtime``'s job.
* ``coreai_available``: whether the three packages import, and why not.

coreai-opt runs in ``ExecutionMode.EAGER``: its default graph mode (PT2E) re-exports the model hundreds of times in
``prepare`` and again in ``finalize`` (minutes on a tiny CNN on a busy machine); the eager mode gives the same
weight-only compression in well under a second.  This module knows nothing of stages, notebooks or reports.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from playbook.compress.recipes import CompressionError
from playbook.config import ConfigError, check_choice
from playbook.coreml import (INPUT_NAME, LOGITS_NAME, conversion_passes, ct, directory_size, safe_package_path,
                             save_package)

PACKAGES = {"coreai-core": "coreai.runtime", "coreai-torch": "coreai_torch", "coreai-opt": "coreai_opt"}
PRECISIONS = ("fp32", "fp16")
MIN_OS = "27.0"  # what coreai-core 1.0.0b3 stamps into every .aimodel (iOS / macOS 27)
# Core ML targets for the counterpart package: compressed weights need iOS18's constexpr ops (or newer).
COREML_TARGETS = ("iOS18", "iOS26")
HOST_LATENCY_LABEL = ("host interpreter: coreai-core's runtime on this machine's CPU (on Linux a single-threaded "
                      "interpreter); not a device latency, never ranked")


@dataclasses.dataclass(frozen=True)
class Technique:
    """One coreai-opt compression: its preset, storage bits per compressed weight, one line for tables."""

    name: str
    bits: float
    description: str


TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Technique("int8", 8.0, "coreai-opt Quantizer, int8 weights per channel (symmetric), weight-only"),
    Technique("int4", 4.0, "coreai-opt Quantizer, int4 weights per channel (symmetric), weight-only"),
    Technique("palette4", 4.0, "coreai-opt KMeansPalettizer, 4-bit palette per group of 16 output channels "
                               "(layers whose channel count 16 does not divide stay float)"),
    Technique("prune50", 9.0, "coreai-opt MagnitudePruner, 50 % of each weight zeroed by magnitude, no fine-tune "
                              "(16-bit values of the survivors + a 1-bit mask)"),
)}


class CoreAIError(RuntimeError):
    """Export to, or prediction with, Core AI failed; the message names the step and the input."""


class CoreAICompressionError(CompressionError):
    """A coreai-opt compression failed.  Same attributes and ``to_dict`` keys as ``CompressionError`` (the message
    comes from coreai-opt, coreai-torch or coremltools, named in ``tool``), plus ``side`` and ``technique``."""

    def __init__(self, recipe: str, technique: str, step: str, message: str, hint: str) -> None:
        self.technique, self.step = technique, step
        RuntimeError.__init__(self, f"Core AI recipe {recipe!r} ({technique}) failed at {step}: {message}\n"
                                    f"hint: {hint}")
        self.recipe, self.coremltools_message, self.hint = recipe, message, hint

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "side": "coreai", "technique": self.technique, "step": self.step}


# --------------------------------------------------------------------------- availability
def coreai_available() -> tuple[bool, str]:
    """``(True, versions)`` when coreai-core, coreai-torch and coreai-opt import; else ``(False, why)``."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist, module in PACKAGES.items():
        try:
            installed = version(dist)
            with _quiet_python():
                import_module(module)
            found.append(f"{dist} {installed}")
        except PackageNotFoundError:
            return False, f"{dist} is not installed (pip install 'coreml-playbook[coreai]')"
        except Exception as exc:  # ImportError, or a native library that does not load on this platform
            return False, (f"{dist} does not import here ({type(exc).__name__}: {_first_line(exc)}); "
                           "pip install 'coreml-playbook[coreai]' on Linux x86-64/arm64 or macOS")
    return True, ", ".join(found)


def _require() -> None:
    ok, why = coreai_available()
    if not ok:
        raise CoreAIError(f"Core AI is not available: {why}")


# --------------------------------------------------------------------------- quiet
@contextlib.contextmanager
def _quiet_python() -> Iterator[None]:
    """Silence the version warnings coreai-torch / coreai-opt / torchao give at import and conversion."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = {n: logging.getLogger(n).level for n in ("coreai", "coreai_torch", "coreai_opt", "torchao")}
        for n in saved:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def quiet_native(messages: list[str] | None = None) -> Iterator[list[str]]:
    """Capture what is printed meanwhile, by native code on file descriptors 1 and 2 (the runtime's ``ODIE
    [default]: Loading function 'main'``) and by Python on ``sys.stdout``/``sys.stderr`` (the converter's progress
    line), into ``messages`` instead of the terminal or the notebook."""
    import io
    import sys

    out = messages if messages is not None else []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    text = io.StringIO()
    # coreai-torch prints its progress line through rich's global console, which in Jupyter is a display, not stdout
    console = None
    with contextlib.suppress(Exception):
        import rich

        console = rich.get_console()
    quiet = getattr(console, "quiet", False)
    if console is not None:
        console.quiet = True
    with contextlib.ExitStack() as restore:
        if console is not None:
            restore.callback(setattr, console, "quiet", quiet)
        with _quiet_native_streams(out, text):
            yield out


@contextlib.contextmanager
def _quiet_native_streams(out: list[str], text: Any) -> Iterator[None]:
    with tempfile.TemporaryFile(mode="w+b") as sink, _quiet_python():
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            printed = sink.read().decode(errors="replace") + "\n" + text.getvalue()
            out.extend(line.strip() for line in printed.replace("\r", "\n").splitlines() if line.strip())


@contextlib.contextmanager
def _capture_warnings(messages: list[str], logger: str = "coreai_opt") -> Iterator[None]:
    """Collect ``logger``'s warnings (e.g. the layers the palettizer skips) into ``messages``, deduplicated."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text not in messages:
                messages.append(text)

    log = logging.getLogger(logger)
    handler, saved = Collect(logging.WARNING), (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


# --------------------------------------------------------------------------- export
@dataclasses.dataclass(frozen=True)
class AIModelPackage:
    """A saved ``.aimodel`` (a folder: ``main.mlirb``, ``main.hash``, ``metadata.json``) and how it was made."""

    path: str
    size_bytes: int
    seconds: float
    precision: str
    min_os: str = MIN_OS
    technique: str = ""

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "size_mb": self.size_mb, "format": "aimodel"}


def safe_aimodel_path(out_dir: Path, name: str) -> Path:
    """``out_dir/name.aimodel``, refusing names that would escape ``out_dir``."""
    return safe_package_path(Path(out_dir), name).with_suffix(".aimodel")


def _check_model_input(model: Any, example_input: Any) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4 or not example_input.is_floating_point():
        got = (f"a {example_input.dim()}-d {example_input.dtype} tensor" if isinstance(example_input, torch.Tensor)
               else type(example_input).__name__)
        raise ConfigError(f"example_input must be a float (N, C, H, W) tensor (normalised images), got {got}")
    return example_input.detach().float().cpu()


def export_aimodel(model: nn.Module, example_input: torch.Tensor, out_dir: Path, name: str, precision: str = "fp32",
                   dynamic_batch: bool = True, metadata: dict[str, Any] | None = None,
                   technique: str = "") -> AIModelPackage:
    """Convert ``model`` to ``out_dir/<name>.aimodel`` through ``torch.export`` and coreai-torch.

    Args:
        model: a float model, or a coreai-opt model finalized with ``ExportBackend.CoreAI`` (its custom ops).
        example_input: a normalised ``(N, C, H, W)`` float tensor; only its shape (bar the batch) is kept.
        out_dir, name: where; the folder is written beside its target and renamed into place.
        precision: ``fp32``, or ``fp16`` (coreai-opt's ``cast_to_16_bit_precision``: FP16 weights and arithmetic).
        dynamic_batch: export the batch dimension as dynamic (1..4096); otherwise the example's batch is fixed.
        metadata: string/number values stored as custom metadata (``playbook.*`` keys by convention).
        technique: recorded on the result (``""`` for a float export).
    """
    check_choice("precision", precision, list(PRECISIONS))
    x = _check_model_input(model, example_input)
    target = safe_aimodel_path(out_dir, name)
    _require()
    import coreai_torch

    start = time.perf_counter()
    model = model.eval()
    example = x[:1].repeat(2, 1, 1, 1) if dynamic_batch else x  # torch.export specialises a batch of 1
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    step = "torch.export"
    try:
        with _quiet_python(), torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
            step = "run_decompositions(coreai_torch.get_decomp_table())"
            program = program.run_decompositions(coreai_torch.get_decomp_table())
            if precision == "fp16":
                step = "coreai_opt.casting.cast_to_16_bit_precision"
                from coreai_opt.casting import cast_to_16_bit_precision

                program = cast_to_16_bit_precision(program)
            step = "coreai_torch.TorchConverter"
            with quiet_native():
                converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
                ai_program = converter.add_exported_program(program, input_names=[INPUT_NAME],
                                                            output_names=[LOGITS_NAME]).to_coreai()
            step = "AIProgram.save_asset"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
            try:
                asset = ai_program.save_asset(tmp_dir / target.name)
                values = {"playbook.precision": precision, "playbook.technique": technique, **(metadata or {})}

                def stamp(m: Any) -> None:
                    m.author, m.license = "coreml-playbook", "MIT"
                    m.model_description = f"{name} ({precision.upper()}, Core AI, Core ML optimization playbook)"
                    for key, value in values.items():
                        m.set_custom(key, value if isinstance(value, (int, float, bool)) else str(value))

                asset.update_metadata(stamp)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp_dir / target.name, target)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
    except (ConfigError, CoreAIError):
        raise
    except Exception as exc:
        raise CoreAIError(f"export of {name!r} to Core AI failed at {step}: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from exc
    return AIModelPackage(str(target), directory_size(target), time.perf_counter() - start, precision,
                          technique=technique)


def read_aimodel_metadata(path: Path) -> dict[str, Any]:
    """The custom metadata of a saved ``.aimodel`` (``playbook.*`` keys) plus its author and description."""
    _require()
    from coreai.authoring import AIModelAsset

    meta = AIModelAsset.load(str(_check_aimodel(path))).metadata
    custom = getattr(meta, "creator_defined_metadata", None)  # 1.0.0b3's name; its type stub says custom_metadata
    custom = custom if custom is not None else getattr(meta, "custom_metadata", {})
    return {**dict(custom), "author": meta.author, "model_description": meta.model_description}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _check_aimodel(path: Path) -> Path:
    path = Path(path)
    if path.suffix != ".aimodel" or not path.is_dir() or not (path / "metadata.json").is_file():
        raise CoreAIError(f"{path} is not a saved .aimodel folder (with metadata.json inside)")
    return path


# --------------------------------------------------------------------------- compression
@dataclasses.dataclass(frozen=True)
class CoreAICompressed:
    """One coreai-opt compression exported both ways from the same prepared weights."""

    recipe: str
    technique: str
    aimodel: AIModelPackage
    mlpackage: str | None
    mlpackage_size_bytes: int | None
    coreml_target: str
    seconds: float
    messages: tuple[str, ...] = ()
    coreml_error: dict[str, str] | None = None  # why the Core ML counterpart was not made (the .aimodel was)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "technique": self.technique, "bits": TECHNIQUES[self.technique].bits,
                "description": TECHNIQUES[self.technique].description, "aimodel": self.aimodel.to_dict(),
                "mlpackage": self.mlpackage, "mlpackage_size_bytes": self.mlpackage_size_bytes,
                "coreml_target": self.coreml_target, "seconds": self.seconds, "messages": list(self.messages),
                "coreml_error": self.coreml_error}


def _compressor(technique: str, model: nn.Module) -> Any:
    from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig
    from coreai_opt.pruning import MagnitudePruner, MagnitudePrunerConfig
    from coreai_opt.quantization import ExecutionMode, Quantizer, QuantizerConfig

    # axis=0 (output channels of conv / linear weights) stated: the eager mode cannot infer it for layer classes it
    # does not know, e.g. efficientnet-lite0's Conv2dStaticSamePadding ("unresolved axis=None").
    if technique == "int8":
        return Quantizer(model, QuantizerConfig.presets.w8(axis=0, execution_mode=ExecutionMode.EAGER))
    if technique == "int4":
        return Quantizer(model, QuantizerConfig.presets.w4(axis=0, execution_mode=ExecutionMode.EAGER))
    if technique == "palette4":
        return KMeansPalettizer(model, KMeansPalettizerConfig.presets.w4())
    return MagnitudePruner(model, MagnitudePrunerConfig())  # 50 % everywhere


def _hint(technique: str, step: str, message: str) -> str:
    low = message.lower()
    if "scikit-learn" in low or "sklearn" in low:
        return "k-means palettization needs scikit-learn: pip install 'coreml-playbook[coreai]'"
    if "axis" in low and "unresolved" in low:
        return "state the per-channel axis of the weights (PerChannelGranularity(axis=0)) for these layer classes"
    if step.startswith("ct.convert"):
        return ("coremltools could not convert coreai-opt's Core ML export of this model; the .aimodel was kept "
                "and measured, only the comparison of the two runtimes on it is missing")
    if "export" in step:
        return "the model must be exportable with torch.export (no data-dependent control flow)"
    return f"see coreai-opt's documentation for {TECHNIQUES[technique].description.split(',')[0]}"


def _export_coreml(model: nn.Module, x: torch.Tensor, target: Path, precision: str, coreml_target: str,
                   metadata: dict[str, Any]) -> None:
    """Trace a model finalized with ``ExportBackend.CoreML`` and convert it; coremltools reads coreai-opt's
    ``_COREML_/*`` buffers and emits the compressed weights as ``constexpr_*`` ops."""
    with torch.no_grad(), _quiet_python():
        traced = torch.jit.trace(model.eval(), x[:1])
    inputs = [ct.TensorType(name=INPUT_NAME, shape=tuple(x[:1].shape), dtype=np.float32)]
    mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=inputs,
                         outputs=[ct.TensorType(name=LOGITS_NAME, dtype=np.float32)],
                         compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                         minimum_deployment_target=getattr(ct.target, coreml_target),
                         pass_pipeline=conversion_passes())
    save_package(mlmodel, target, metadata)


def compress_coreai(model: nn.Module, technique: str, example_input: torch.Tensor, out_dir: Path,
                    name: str | None = None, precision: str = "fp32", coreml: bool = True,
                    coreml_target: str = "iOS18", metadata: dict[str, Any] | None = None) -> CoreAICompressed:
    """Compress ``model`` (left untouched) with one coreai-opt technique and export the result both ways.

    Args:
        model: the trained float model.
        technique: one of ``TECHNIQUES`` (all data-free: no calibration images are needed).
        example_input: a normalised ``(N, C, H, W)`` float tensor (shape only).
        out_dir, name: ``<name>.aimodel`` and ``<name>.mlpackage`` go there (name defaults to ``coreai-<technique>``).
        precision: activations/arithmetic of both exports (``fp32`` keeps the comparison between runtimes exact).
        coreml: also finalize the same prepared weights for Core ML and convert them (``ct.convert``).
        coreml_target: the Core ML package's ``minimum_deployment_target`` (``COREML_TARGETS``).

    Raises:
        CoreAICompressionError: coreai-opt or the Core AI export failed (``step`` says which); ``ConfigError`` for
            a bad argument.  A failing Core ML counterpart does not raise: the result has ``mlpackage=None`` and
            ``coreml_error`` (``CoreAICompressionError.to_dict``) says why.
    """
    if technique not in TECHNIQUES:
        raise ConfigError(f"technique {technique!r} is not one of {sorted(TECHNIQUES)}")
    check_choice("precision", precision, list(PRECISIONS))
    check_choice("coreml_target", coreml_target, list(COREML_TARGETS))
    x = _check_model_input(model, example_input)
    name = name or f"coreai-{technique}"
    safe_aimodel_path(out_dir, name)
    _require()
    from coreai_opt import ExportBackend

    start = time.perf_counter()
    step, messages, printed = "coreai-opt prepare", [], []
    try:
        with quiet_native(printed), _capture_warnings(messages):
            compressor = _compressor(technique, copy.deepcopy(model).eval().cpu())
            prepared = compressor.prepare((x[:1],))
            prepared.eval()
            spare = copy.deepcopy(prepared) if coreml else None  # the CoreAI finalize frees the dense weights
            step = "coreai-opt finalize(backend=CoreAI)"
            finalized = compressor.finalize(backend=ExportBackend.CoreAI)
        step = "Core AI export"
        values = {"playbook.recipe": name, "playbook.technique": technique, **(metadata or {})}
        aimodel = export_aimodel(finalized, x, out_dir, name, precision, metadata=values, technique=technique)
    except ConfigError:
        raise
    except Exception as exc:
        raise _compression_error(name, technique, step, exc) from exc
    package, package_bytes, coreml_error = None, None, None
    if coreml:  # the Core ML counterpart serves the oracle only: when it fails, the .aimodel above still stands
        try:
            step = "coreai-opt finalize(backend=CoreML)"
            with quiet_native(printed), _capture_warnings(messages):
                for_coreml = compressor.finalize(model=spare, backend=ExportBackend.CoreML)
                step = f"ct.convert (minimum_deployment_target={coreml_target})"
                target = safe_package_path(Path(out_dir), name)
                _export_coreml(for_coreml, x, target, precision, coreml_target,
                               {"playbook.variant": name, "playbook.recipe": name, "playbook.precision": precision,
                                "playbook.weights": f"coreai-opt {technique}", **(metadata or {})})
            package, package_bytes = str(target), directory_size(target)
        except Exception as exc:  # noqa: BLE001
            coreml_error = _compression_error(name, technique, step, exc).to_dict()
    return CoreAICompressed(name, technique, aimodel, package, package_bytes, coreml_target,
                            time.perf_counter() - start, tuple(messages), coreml_error)


def _compression_error(name: str, technique: str, step: str, exc: BaseException) -> CoreAICompressionError:
    cause = exc.__cause__ if isinstance(exc, CoreAIError) and exc.__cause__ else exc
    message = f"{type(cause).__name__}: {_first_line(cause)}"
    return CoreAICompressionError(name, technique, step, message, _hint(technique, step, message))


def compress_coreai_all(model: nn.Module, techniques: Sequence[str], example_input: torch.Tensor, out_dir: Path,
                        **kwargs: Any) -> tuple[dict[str, CoreAICompressed], dict[str, CoreAICompressionError]]:
    """``compress_coreai`` for each technique; a failing one is returned in the second dict (keyed by technique),
    never raised, so a caller records it beside the others."""
    done: dict[str, CoreAICompressed] = {}
    failed: dict[str, CoreAICompressionError] = {}
    for technique in techniques:
        try:
            done[technique] = compress_coreai(model, technique, example_input, out_dir, **kwargs)
        except CoreAICompressionError as exc:
            failed[technique] = exc
    return done, failed
