"""Model preparation before compression: pure PyTorch, on a copy of the model, knows nothing of stages.

Four steps a recipe may name (``Recipe.prepare``; ``prepare_model`` applies them in the order given):

* ``plain_convs`` (``plain_convs``): a subclassed convolution such as efficientnet_lite_pytorch's
  ``Conv2dStaticSamePadding`` (an ``nn.Conv2d`` that zero-pads in its own ``forward``) becomes an explicit
  ``nn.ZeroPad2d`` + a plain ``nn.Conv2d`` holding the same weight tensors (or one plain ``nn.Conv2d`` when the
  padding is symmetric), so coremltools' exact-type registries (``DKMPalettizer``, ``MagnitudePruner``,
  ``LinearQuantizer``'s fusion patterns) see every convolution.
* ``fold_bn`` (``fold_batchnorm``): every BatchNorm that consumes a convolution's output (and nothing else does) is
  folded into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and replaced by ``nn.Identity``;
  the pairs are found on a ``torch.fx`` graph (convolutions, linears and norms are leaves, so a BatchNorm held as an
  attribute, as in EfficientNet's blocks, is found as well as one in an ``nn.Sequential``).
* ``equalize`` (``equalize_cross_layer``): data-free cross-layer equalization (Nagel et al., "Data-Free Quantization
  Through Weight Equalization and Bias Correction", ICCV 2019, arXiv:1906.04721): for each convolution pair joined
  through ReLU / ReLU6 / zero padding / pooling, output channel ``i`` of the first is divided and input channel ``i``
  of the second multiplied by ``s_i = sqrt(r1_i / r2_i)`` (``r`` = the channel's largest absolute weight), so both
  channels end with the range ``sqrt(r1_i * r2_i)``; iterated over all pairs (depthwise pairs included) until the
  scales settle.  ReLU6 is not scale-equivariant: by default its cap becomes a per-channel cap ``6 / s_i``
  (``relu6="cap"``, exact), or it is replaced by ReLU as Nagel et al. did (``relu6="relu"``, changes the function).
* ``correct_bias`` (``correct_bias``): *empirical* bias correction (Nagel et al., section 4.2, the variant with
  data): after compression, each layer's bias absorbs the difference between the mean output of the float layer and
  the compressed one on a few calibration images, layer by layer in execution order so each correction sees the
  corrected layers before it.  Runs on the compressed PyTorch model, so it belongs after a PyTorch-side compressor.

Contract of every step: the input model is never modified; the returned model is a deep copy (its tensors are the
copy's, their values unchanged except where the step says); in eval mode it computes the same function as the input
within float rounding (``equalize`` with ``relu6="relu"`` and ``correct_bias`` excepted, by design); what was changed
and what was left is listed in the returned ``Prepared``.  ``example`` inputs are used to check that contract
numerically (``GraphError`` when it fails).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PAD_TYPES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
# Functions f with f(s * x) = s * f(x) for a positive per-channel s: equalization passes through them unchanged.
HOMOGENEOUS_MODULES = (nn.ReLU, nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
HOMOGENEOUS_FUNCTIONS = (torch.relu, F.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)
STEPS = ("plain_convs", "fold_bn", "equalize")
RELU6_MODES = ("cap", "relu", "skip")


class GraphError(RuntimeError):
    """A preparation step could not keep its contract (e.g. the prepared model's outputs moved)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared copy of a model and what the step did.

    Attributes:
        model: the new model (eval mode).
        step: the step's name (``plain_convs``, ``fold_bn``, ``equalize``, ``correct_bias``).
        changed: the module names it changed (convolutions replaced, BatchNorms folded, pairs equalized as
            ``"first -> second"``, layers whose bias was corrected).
        left: what it could have changed but did not, each with the reason.
        max_abs_change: the largest absolute change of the model's outputs on ``example`` (``nan`` without one).
        seconds: wall time of the step.
        notes: facts worth recording (iterations, the largest scale, the ReLU6 handling).
    """

    model: nn.Module
    step: str
    changed: tuple[str, ...]
    left: tuple[str, ...]
    max_abs_change: float = math.nan
    seconds: float = 0.0
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, for a record."""
        return {"step": self.step, "changed": len(self.changed), "left": list(self.left),
                "max_abs_change": self.max_abs_change, "seconds": round(self.seconds, 3), **self.notes}


class _LeafTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps convolutions (subclassed ones too), linears, norms, activations and pads as
    single ``call_module`` nodes, so a module's name in the graph is its name in the model."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, WEIGHT_TYPES + (_BatchNorm, nn.ReLU6, nn.Hardtanh) + PAD_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The model's ``torch.fx`` graph with convolutions, linears, norms, activations and pads as leaves.

    Raises:
        GraphError: the model cannot be traced symbolically (data-dependent control flow), with torch's message.
    """
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, NotImplementedError ...)
        raise GraphError(f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc


def _outputs(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor | None:
    if example is None:
        return None
    with torch.no_grad():
        out = model.eval()(example)
    return out if isinstance(out, torch.Tensor) else None


def _check_same(step: str, before: torch.Tensor | None, model: nn.Module, example: torch.Tensor | None,
                rtol: float = 1e-4) -> float:
    """Largest absolute output change; ``GraphError`` when it exceeds ``rtol`` of the output's scale."""
    after = _outputs(model, example)
    if before is None or after is None:
        return math.nan
    change = float((after - before).abs().max())
    scale = float(before.abs().max()) or 1.0
    if change > rtol * scale + 1e-6:
        raise GraphError(f"{step}: the prepared model's outputs moved by {change:.3g} (outputs up to {scale:.3g}); "
                         "the model's structure is not one this step understands")
    return change


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


# --------------------------------------------------------------------------- plain convolutions
def _padding_child(module: nn.Module) -> tuple[nn.Module | None, str]:
    """The zero-padding child a subclassed layer applies first, or None; a reason when it has other children."""
    pad = None
    for name, child in module.named_children():
        if isinstance(child, PAD_TYPES) and float(getattr(child, "value", 0.0)) == 0.0:
            if pad is not None:
                return None, f"two padding children ({name})"
            pad = child
        elif any(True for _ in child.parameters()):
            return None, f"child {name!r} holds parameters"
        # a parameterless child (efficientnet_lite_pytorch's own Identity) is assumed to be the identity; the
        # numeric check below refuses the replacement when it is not
    return pad, ""


def _plain_layer(module: nn.Module, pad: nn.Module | None) -> nn.Module:
    """The exact-type equivalent of a subclassed layer: same weight and bias tensors (shared, not copied)."""
    if isinstance(module, nn.Linear):
        new: nn.Module = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        base = next(t for t in CONV_TYPES if isinstance(module, t))
        padding = module.padding
        dims = len(module.kernel_size)
        if pad is not None and isinstance(padding, tuple) and module.padding_mode == "zeros":
            p = tuple(int(v) for v in (pad.padding if isinstance(pad.padding, tuple) else (pad.padding,) * 2 * dims))
            pairs = [(p[2 * i], p[2 * i + 1]) for i in range(dims)][::-1]  # F.pad order: last dim first
            if all(a == b for a, b in pairs):  # symmetric: the convolution's own padding does it
                padding, pad = tuple(int(q) + a for q, (a, _) in zip(padding, pairs)), None
        new = base(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride, padding=padding,
                   dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                   padding_mode=module.padding_mode)
    new.weight = module.weight
    if module.bias is not None:
        new.bias = module.bias
    new.train(module.training)
    return nn.Sequential(copy.deepcopy(pad), new) if pad is not None else new


def plain_convs(model: nn.Module, example: torch.Tensor) -> Prepared:
    """Replace every subclassed conv/linear (``isinstance`` of a torch layer type, ``type`` not one of them) by an
    explicit zero pad + the plain torch layer over the same tensors.

    Contract: works on a deep copy; a layer is replaced only when the replacement gives the same output (within 1e-5
    of its scale) on the input the layer received from ``example``; a replaced layer ``name`` becomes either a plain
    layer under the same name or ``nn.Sequential(pad, layer)`` (the weight then under ``name + ".1"``).  Layers it
    cannot replace are listed in ``left`` with the reason.
    """
    start = time.perf_counter()
    net = copy.deepcopy(model).eval()
    targets = {n: m for n, m in net.named_modules() if isinstance(m, WEIGHT_TYPES) and type(m) not in WEIGHT_TYPES}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=n: seen.setdefault(_n, args[0].detach()))
             for n, m in targets.items()]
    try:
        before = _outputs(net, example)
    finally:
        for h in hooks:
            h.remove()
    changed, left = [], []
    for name, module in targets.items():
        pad, reason = _padding_child(module)
        if reason:
            left.append(f"{name}: {reason}")
            continue
        if name not in seen:
            left.append(f"{name}: not called on the example input")
            continue
        new = _plain_layer(module, pad).eval()
        with torch.no_grad():
            want, got = module(seen[name]), new(seen[name])
        if want.shape != got.shape or float((want - got).abs().max()) > 1e-5 * (float(want.abs().max()) or 1.0):
            left.append(f"{name}: its forward is not a zero pad followed by {type(new).__name__}")
            continue
        _set_module(net, name, new)
        changed.append(name)
    change = _check_same("plain_convs", before, net, example)
    kinds = Counter(f"{type(m).__module__}.{type(m).__qualname__}" for m in targets.values())
    return Prepared(net.eval(), "plain_convs", tuple(changed), tuple(left), change, time.perf_counter() - start,
                    {"subclassed": dict(kinds)})


# --------------------------------------------------------------------------- BatchNorm folding
def _conv_bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    graph = trace(net)
    modules = dict(net.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm) or len(node.args) != 1:
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], CONV_TYPES)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> Prepared:
    """Fold every BatchNorm whose only input is a convolution's output (used by nothing else, each module called
    once) into that convolution, in eval mode (running statistics), and replace the BatchNorm by ``nn.Identity``.

    Contract: a deep copy; convolutions keep their names and gain a bias; module names of the BatchNorms stay (as
    ``nn.Identity``); the function is unchanged in eval mode (checked on ``example`` when given).  BatchNorms not
    fed by a convolution are listed in ``left``.  Needs a model ``torch.fx`` can trace (``GraphError`` otherwise).
    """
    start = time.perf_counter()
    net = copy.deepcopy(model).eval()
    before = _outputs(net, example)
    pairs = _conv_bn_pairs(net)
    folded = {bn for _, bn in pairs}
    for conv_name, bn_name in pairs:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias, transpose=False)
        conv.weight, conv.bias = weight, bias
        _set_module(net, bn_name, nn.Identity())
    left = [f"{n}: not fed by a convolution alone" for n, m in net.named_modules()
            if isinstance(m, _BatchNorm) and n not in folded]
    change = _check_same("fold_bn", before, net, example)
    return Prepared(net.eval(), "fold_bn", tuple(bn for _, bn in pairs), tuple(left), change,
                    time.perf_counter() - start)


# --------------------------------------------------------------------------- cross-layer equalization
class ChannelCap(nn.Module):
    """``min(relu(x), upper[c])`` per channel: a ReLU6 whose cap followed its channel's equalization scale."""

    def __init__(self, upper: torch.Tensor, spatial_dims: int = 2) -> None:
        super().__init__()
        # shaped (1, C, 1, ...) once, so the forward holds no shape arithmetic for a tracer to observe
        self.register_buffer("upper", upper.detach().clone().float().view(1, -1, *[1] * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.upper)


def _is_relu6(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.ReLU6) or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0)
    return node.op == "call_function" and node.target in (F.relu6,)


def _is_homogeneous(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, PAD_TYPES):
            return float(getattr(m, "value", 0.0)) == 0.0
        return type(m) in HOMOGENEOUS_MODULES
    return node.op == "call_function" and node.target in HOMOGENEOUS_FUNCTIONS


@dataclasses.dataclass
class _Pair:
    first: str
    second: str
    relu6: list[fx.Node]
    cap: torch.Tensor  # the first layer's accumulated 1/s per channel (what a ReLU6 cap becomes: 6 * cap)


def _equalization_pairs(graph: fx.Graph, modules: dict[str, nn.Module]) -> tuple[list[_Pair], list[str]]:
    """Convolution pairs joined by a single-user path of scale-equivariant nodes (and ReLU6s, listed)."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs, left = [], []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], CONV_TYPES):
            continue
        cur, relu6, found = node, [], False
        while len(cur.users) == 1:
            (cur,) = cur.users
            if cur.op == "call_module" and isinstance(modules[cur.target], CONV_TYPES):
                found = True
                break
            if _is_relu6(cur, modules):
                relu6.append(cur)
            elif not _is_homogeneous(cur, modules):
                break
        if not found:
            continue
        first, second = modules[node.target], modules[cur.target]
        if calls[node.target] != 1 or calls[cur.target] != 1 or second.in_channels != first.out_channels:
            left.append(f"{node.target} -> {cur.target}: a layer called twice, or the channel counts differ")
            continue
        pairs.append(_Pair(str(node.target), str(cur.target), relu6, torch.ones(first.out_channels)))
    return pairs, left


def _input_channel_view(conv: nn.Module) -> torch.Tensor:
    """The second layer's weight as (groups, out per group, in per group, ...): input channel c is
    ``[c // in_per_group, :, c % in_per_group]``."""
    w = conv.weight
    return w.view(conv.groups, w.shape[0] // conv.groups, w.shape[1], *w.shape[2:])


def _input_ranges(conv: nn.Module) -> torch.Tensor:
    v = _input_channel_view(conv).abs().transpose(1, 2)  # (groups, in per group, out per group, ...)
    return v.reshape(v.shape[0] * v.shape[1], -1).max(dim=1).values


def _equalize_pair(first: nn.Module, second: nn.Module, eps: float) -> torch.Tensor:
    r1 = first.weight.detach().abs().reshape(first.weight.shape[0], -1).max(dim=1).values
    r2 = _input_ranges(second).detach()
    ok = (r1 > eps * r1.max()) & (r2 > eps * r2.max())
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
    with torch.no_grad():
        first.weight.div_(s.view(-1, *[1] * (first.weight.dim() - 1)))
        if first.bias is not None:
            first.bias.div_(s)
        view = _input_channel_view(second)
        view.mul_(s.view(second.groups, -1).view(second.groups, 1, -1, *[1] * (second.weight.dim() - 2)))
    return s


def equalize_cross_layer(model: nn.Module, example: torch.Tensor | None = None, relu6: str = "cap",
                         max_iterations: int = 50, tolerance: float = 1e-3, eps: float = 1e-8) -> Prepared:
    """Data-free cross-layer equalization (Nagel et al. 2019) of every convolution pair joined through ReLU, ReLU6,
    zero padding, pooling or identity (each layer called once, the first one's output used by that path alone).

    Args:
        model: best with BatchNorm folded first (``fold_batchnorm``): a BatchNorm between two convolutions ends
            the pair.
        example: an input batch; the outputs are checked unchanged on it (``relu6="cap"`` or no ReLU6).
        relu6: ``cap``: a ReLU6 between a pair becomes a ``ChannelCap`` with cap ``6 / s_i`` per channel (exact; the
            model is returned as an ``fx.GraphModule`` then, with the same module names); ``relu``: it becomes a
            ReLU, as Nagel et al. did for MobileNetV2 (changes the function where activations exceeded 6);
            ``skip``: such pairs are left alone.
        max_iterations: sweeps over all pairs at most; stops earlier once every scale is within ``tolerance`` of 1.
        eps: channels whose range is below ``eps`` times the layer's widest keep scale 1 (dead channels).

    Contract: a deep copy; positive per-channel scales only; convolution weights and the first layer's bias change,
    nothing else (but ReLU6 caps, as above).  ``changed`` lists ``"first -> second"`` pairs.
    """
    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6={relu6!r}: choose one of {RELU6_MODES}")
    start = time.perf_counter()
    net = copy.deepcopy(model).eval()
    before = _outputs(net, example) if relu6 != "relu" else None
    graph = trace(net)
    modules = dict(net.named_modules())
    pairs, left = _equalization_pairs(graph, modules)
    if relu6 == "skip":
        left += [f"{p.first} -> {p.second}: ReLU6 between them (relu6='skip')" for p in pairs if p.relu6]
        pairs = [p for p in pairs if not p.relu6]
    iterations, worst = 0, math.inf
    while iterations < max_iterations and worst > tolerance:
        worst = 0.0
        for p in pairs:
            s = _equalize_pair(modules[p.first], modules[p.second], eps)
            p.cap /= s
            worst = max(worst, float(torch.log(s).abs().max()))
        iterations += 1
    result: nn.Module = net
    capped = [p for p in pairs if p.relu6]
    if capped:
        for k, p in enumerate(capped):
            for j, node in enumerate(p.relu6):
                name = f"equalized_cap_{k}_{j}"
                if relu6 == "cap":
                    net.add_module(name, ChannelCap(6.0 * p.cap, modules[p.first].weight.dim() - 2))
                else:
                    net.add_module(name, nn.ReLU())
                node.op, node.target, node.args, node.kwargs = "call_module", name, (node.args[0],), {}
        graph.lint()
        result = fx.GraphModule(net, graph, class_name=type(model).__name__ + "Equalized")
    change = _check_same("equalize", before, result, example) if before is not None else math.nan
    scales = [float(v) for p in pairs for v in (p.cap.min(), p.cap.max())]
    notes = {"iterations": iterations, "relu6": relu6, "pairs_through_relu6": len(capped),
             "scale_range": [1.0 / max(scales), 1.0 / min(scales)] if scales else [1.0, 1.0]}
    return Prepared(result.eval(), "equalize", tuple(f"{p.first} -> {p.second}" for p in pairs), tuple(left), change,
                    time.perf_counter() - start, notes)


# --------------------------------------------------------------------------- bias correction
def _layer_means(model: nn.Module, names: Sequence[str], images: torch.Tensor,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """Per-output-channel mean of each named layer's output over ``images`` (batch and spatial positions)."""
    sums: dict[str, torch.Tensor] = {}
    counts: Counter[str] = Counter()

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            dims = [d for d in range(out.dim()) if d != 1]
            total = out.detach().double().sum(dim=dims)
            sums[name] = sums[name] + total if name in sums else total
            counts[name] += out.numel() // out.shape[1]
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()
            for i in range(0, len(images), batch_size):
                model(images[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in names if n in sums}


def correct_bias(reference: nn.Module, compressed: nn.Module, images: torch.Tensor, batch_size: int = 64,
                 layers: Iterable[str] | None = None) -> Prepared:
    """Empirical bias correction (Nagel et al. 2019, section 4.2 with data): for each conv/linear layer of
    ``compressed`` in execution order, add ``E[float layer output] - E[compressed layer output]`` per output channel,
    the expectations taken over ``images`` (a calibration batch, e.g. 128-512 images), each layer measured after the
    corrections before it.

    Args:
        reference: the float model (the one ``compressed`` was made from, after the same preparation steps so the
            layer names match).
        compressed: the compressed PyTorch model (e.g. from ``PostTrainingQuantizer`` / ``PostTrainingPalettizer``,
            whose weights hold the compressed values); not modified.
        images: model inputs.
        layers: the layer names to correct (default: every conv/linear present in both with the same weight shape).

    Contract: a deep copy of ``compressed``; only biases change (a layer without one gains one; the compression
    metadata coremltools needs to convert it stays); one forward pass over ``images`` per layer.
    """
    start = time.perf_counter()
    net = copy.deepcopy(compressed).eval()
    ref_modules = dict(reference.named_modules())
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, _n=n: order.append(_n) if _n not in order else None)
             for n, m in net.named_modules() if isinstance(m, WEIGHT_TYPES)]
    try:
        with torch.no_grad():
            net(images[:1])
    finally:
        for h in hooks:
            h.remove()
    wanted = set(layers) if layers is not None else None
    names = [n for n in order if n in ref_modules and isinstance(ref_modules[n], WEIGHT_TYPES)
             and ref_modules[n].weight.shape == net.get_submodule(n).weight.shape and (wanted is None or n in wanted)]
    target = _layer_means(reference, names, images, batch_size)
    changed, shifts = [], {}
    for name in names:
        got = _layer_means(net, [name], images, batch_size)[name]
        delta = target[name] - got
        layer = net.get_submodule(name)
        with torch.no_grad():
            if layer.bias is None:
                layer.bias = nn.Parameter(delta.clone())
            else:
                layer.bias.add_(delta.to(layer.bias.dtype))
        changed.append(name)
        shifts[name] = float(delta.abs().max())
    notes = {"images": int(len(images)), "kind": "empirical (calibration images)",
             "largest_shift": max(shifts.values()) if shifts else 0.0}
    return Prepared(net.eval(), "correct_bias", tuple(changed), (), math.nan, time.perf_counter() - start, notes)


# --------------------------------------------------------------------------- several steps
def prepare_model(model: nn.Module, steps: Sequence[str], example: torch.Tensor,
                  relu6: str = "cap") -> tuple[nn.Module, list[Prepared]]:
    """Apply ``steps`` (names from ``STEPS``) in order on a copy of ``model``; returns the model and each step's
    ``Prepared`` (without repeating the model).  Typical: ``("plain_convs", "fold_bn", "equalize")``."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown preparation step(s) {unknown}; valid: {list(STEPS)}")
    reports, net = [], model
    for step in steps:
        if step == "plain_convs":
            made = plain_convs(net, example)
        elif step == "fold_bn":
            made = fold_batchnorm(net, example)
        else:
            made = equalize_cross_layer(net, example, relu6=relu6)
        net = made.model
        reports.append(made)
    return (net if steps else copy.deepcopy(model).eval()), reports
