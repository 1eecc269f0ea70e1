"""Reference executor for Core ML ML programs (``.mlpackage``) on any machine, in PyTorch.

What it is
----------
coremltools converts and compresses models on Linux, but ``MLModel.predict`` only runs on
macOS.  This module evaluates the *very package we ship*: it reads the ML program back with
coremltools' own MIL loader, materialises every compressed weight once (through the
``decompress`` functions of coremltools' ``constexpr_*`` op classes) and then runs the program's
operations, in the program's order, as PyTorch tensor ops on the CPU -- a whole batch at a time::

    prog = ReferenceProgram.load("model.mlpackage")
    prog.input_names, prog.output_names            # ['x'], ['logits']
    out = prog.predict({"x": images})              # images: (N, C, H, W) float32, any N
    ranges = prog.activation_ranges([batch1, batch2])   # {var_name: (min, max)}

Batch: exported programs usually declare a fixed batch of 1.  The executor runs N images in
one pass anyway, treating the leading dimension of every input as the batch.  Most ops are
batch-agnostic; the few whose parameters hold absolute sizes find the batch axis by comparing
the runtime shape with the declared one (so a ``transpose`` may have moved it): ``reshape``
gives the runtime batch to the target axis that carries the batch (same elements before and
after it), ``slice_by_index``/``slice_by_size`` keep the whole batch, ``squeeze`` keeps it,
``concat`` repeats constant parts along it.  A program that really mixes images of the batch
(e.g. reshapes the batch into another axis) raises :class:`ProgramExecutionError`: run it with
its declared batch size.  ``predict(..., batch_size=B)`` splits large inputs into chunks.

Image inputs (``ct.ImageType``) take an ``(N, C, H, W)`` float array of pixel values, channels
in the image's colour layout (``G``, ``RGB`` or ``BGR``), exactly the values the image would
hold; the program's own preprocessing ops (scale/bias) then run as part of the program.
Classifier programs (``ct.ClassifierConfig``): the ``classify`` op returns, for the label
output, an ``(N,)`` array of class labels (``class_labels[argmax]``), and, for the probability
output (a dictionary in Core ML), the ``(N, K)`` float32 array of its ``probabilities`` input,
column ``k`` belonging to ``class_labels[k]``.

Numerical model
---------------
* Every tensor is held as a torch tensor; floating tensors are held as float32.
* FP32 programs: every op computes in float32 (the same torch kernels an eager model uses).
* FP16 programs (``compute_precision=FLOAT16``): wherever the program types a tensor as fp16,
  the op computes in float32 from fp16-representable inputs and its result is rounded to the
  nearest fp16 (IEEE round-to-nearest-even; overflow gives inf).  ``cast`` to fp16 therefore
  rounds, ``cast`` to fp32 is exact, and fp16 outputs are returned as ``np.float16``.  This is
  "fp16 storage, fp32 arithmetic per op": it matches a device that accumulates in float32
  and stores fp16; a device that accumulates in fp16 (e.g. parts of the Neural Engine) can
  differ by a few fp16 ulps more.
* ``quantize``: ``q = clip(round_half_even(x * (1/scale)) + zero_point)`` -- the reciprocal is
  taken first (as the Core ML runtime does; a tie rounded the other way moved W8A8 logits by
  8%), in the scale's precision (fp16 programs round ``1/scale`` and ``x * (1/scale)`` to
  fp16).  ``dequantize``: ``(q - zero_point) * scale``.  ``round`` rounds half to even.
* Compressed weights (``constexpr_*``) are materialised at load time in the dtype the program
  declares (fp16 LUTs/scales give fp16 values held exactly in float32).
* Sub-graphs whose inputs are all constants are evaluated once at load time.

What is supported
-----------------
Single-block programs (no control flow) made of the ops in :data:`OPS` --
``sorted(supported_ops())`` lists them: the CNN set (conv, linear, pooling, batch_norm,
activations incl. ``sigmoid_hard``-based hardswish, element-wise arithmetic, reductions,
reshape/transpose/concat/split/slice/pad/tile, upsampling/resizing, softmax, layer/instance
norm, matmul), W8A8 ``quantize``/``dequantize``, ``classify`` and every compression op
(``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``,
``constexpr_lut_to_dense``, ``constexpr_lut_to_sparse``, ``constexpr_sparse_to_dense``,
``constexpr_sparse_blockwise_shift_scale``, ``constexpr_cast``; iOS16 and iOS18 versions).
The program is walked at load time; an op outside the table raises
:class:`UnsupportedOpError` naming the op type, where it is (function, op index, op name,
output vars) and the supported ops.  Nothing is skipped silently.  Not supported: control
flow (``cond``/``while_loop``), stateful programs, recurrent ops, NMS, random ops.

How to add an op
----------------
Add one entry to :data:`OPS` (or decorate a function with ``@register_op("name")``).  An op
function takes the :class:`Node` (static facts about the op: name, declared input/output
shapes and dtypes) and the op's MIL inputs as keyword arguments, and returns a tensor (or a
tuple for multi-output ops).  Runtime tensors arrive as ``torch.Tensor``; constant inputs
arrive pre-converted: strings as ``str``, 0-d numbers as Python scalars, arrays as torch
tensors (floats as float32) -- use ``_ints(v)`` to read an int list whatever its origin.
Give optional MIL inputs the MIL default in the signature.  The result's dtype is fixed up
afterwards from the program's declared output dtype (fp16 rounding, integer casts), so the
function need not care.  Ops whose inputs are compile-time constants and that need NumPy
(the ``constexpr_*`` family) are wrapped with ``_numpy_inputs`` and receive/return NumPy.
Check the op's semantics in ``coremltools/converters/mil/mil/ops/defs`` and add a case to
``tests/test_mlprogram.py`` (the op-zoo test converts torch snippets and compares).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OPS",
    "Node",
    "ProgramExecutionError",
    "CorruptPackageError",
    "ReferenceProgram",
    "TensorSpec",
    "UnsupportedOpError",
    "register_op",
    "supported_ops",
]


# --------------------------------------------------------------------------- errors
class UnsupportedOpError(ValueError):
    """The program contains an op the reference executor does not implement."""

    def __init__(self, op_type: str, function: str, index: int, op_name: str, outputs: Sequence[str],
                 supported: Sequence[str], others: Sequence[str] = ()) -> None:
        self.op_type, self.function, self.index, self.op_name = op_type, function, index, op_name
        self.outputs, self.supported, self.others = list(outputs), sorted(supported), sorted(others)
        more = f"; the program also uses other unsupported op types {self.others}" if self.others else ""
        super().__init__(
            f"unsupported Core ML op {op_type!r} in function {function!r} at op #{index} "
            f"(name {op_name!r}, outputs {self.outputs}){more}. The reference executor supports "
            f"{self.supported}. Add an entry to playbook.mlprogram.OPS to support it."
        )


class ProgramExecutionError(RuntimeError):
    """An op failed while the program ran; the message says which op and why."""


class CorruptPackageError(ValueError):
    """A ``.mlpackage`` cannot be read: a missing or truncated file, flipped bits, weights that do not match."""

    def __init__(self, path: str | os.PathLike, what: str, cause: BaseException) -> None:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(
            f"{path} is not a readable Core ML package: {what} ({type(cause).__name__}: {detail[:160]}). It may be "
            "truncated or corrupted (an interrupted copy, save or download): export it again, e.g. re-run the "
            "stage that made it")


def read_spec(path: str | os.PathLike) -> Any:
    """``coremltools.utils.load_spec`` of a package, with ``CorruptPackageError`` naming the package when it fails
    (coremltools alone says e.g. "Item does not exist for identifier <uuid>")."""
    ct = _quiet_coremltools()
    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:
        raise CorruptPackageError(path, "its model description (Manifest.json / model.mlmodel) cannot be read",
                                  exc) from exc


# --------------------------------------------------------------------------- static op facts
@dataclasses.dataclass(frozen=True)
class VarType:
    """Declared type of a program variable: shape (None for unknown dims / rank) and MIL dtype string."""

    shape: tuple[int | None, ...] | None
    dtype: str


@dataclasses.dataclass(frozen=True)
class Node:
    """Static facts about one op of the program, handed to its op function."""

    function: str
    index: int
    op_type: str
    name: str
    inputs: Mapping[str, "str | tuple[str, ...]"]  # MIL parameter -> var name(s)
    outputs: tuple[str, ...]
    input_types: Mapping[str, VarType]  # MIL parameter -> declared type (first var of a tuple)
    output_types: tuple[VarType, ...]

    @property
    def where(self) -> str:
        return (f"op #{self.index} {self.op_type!r} (name {self.name!r}, outputs {list(self.outputs)}) "
                f"of function {self.function!r}")

    def in_shape(self, param: str) -> tuple[int | None, ...] | None:
        t = self.input_types.get(param)
        return None if t is None else t.shape

    def in_dtype(self, param: str) -> str | None:
        t = self.input_types.get(param)
        return None if t is None else t.dtype


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A program input or output as the package declares it.

    ``shape`` is the declared shape (``None`` for a flexible dim); ``kind`` is ``"tensor"``,
    ``"image"`` (input), ``"label"`` or ``"probabilities"`` (classifier outputs);
    ``color_layout`` is ``"G"``, ``"RGB"``, ``"BGR"`` or ``"G_FLOAT16"`` for images.
    """

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str
    kind: str = "tensor"
    color_layout: str | None = None


# --------------------------------------------------------------------------- helpers
def _ints(v: Any) -> list[int] | None:
    """An int list from a tensor / array / sequence / scalar (``None`` stays ``None``)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return [int(i) for i in v.reshape(-1).tolist()]
    if isinstance(v, np.ndarray):
        return [int(i) for i in v.reshape(-1).tolist()]
    if isinstance(v, (list, tuple)):
        return [int(i) for i in v]
    return [int(v)]


def _bools(v: Any, n: int) -> list[bool]:
    if v is None:
        return [False] * n
    if isinstance(v, torch.Tensor):
        return [bool(b) for b in v.reshape(-1).tolist()]
    if isinstance(v, (list, tuple, np.ndarray)):
        return [bool(b) for b in np.asarray(v).reshape(-1).tolist()]
    return [bool(v)] * n


def _axes(v: Any, rank: int) -> list[int] | None:
    a = _ints(v)
    return None if a is None else [i % rank if rank else 0 for i in a]


def _round_fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32) if t.is_floating_point() else t


def _tensor(v: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor from a runtime value (Python scalars take ``like``'s dtype, else their own kind)."""
    if isinstance(v, torch.Tensor):
        return v
    if like is not None:
        return torch.tensor(v, dtype=like.dtype)
    dtype = torch.bool if isinstance(v, bool) else torch.int32 if isinstance(v, int) else torch.float32
    return torch.tensor(v, dtype=dtype)


def _channel_param(p: Any, rank: int, axis: int = 1) -> Any:
    """Reshape a per-channel vector so that it broadcasts along ``axis`` of a rank-``rank`` tensor."""
    if not isinstance(p, torch.Tensor) or p.dim() == 0:
        return p
    shape = [1] * rank
    shape[axis % rank] = -1
    return p.reshape(shape)


def _spatial_pads(n: Node, x: torch.Tensor, pad_type: str, pad: Any, kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """MIL padding -> per-dim [before_0, after_0, before_1, after_1, ...] for the spatial dims."""
    dims = len(kernel)
    pad_type = (pad_type or "valid").lower()
    if pad_type == "valid":
        return [0] * (2 * dims)
    if pad_type == "custom":
        p = _ints(pad) or [0] * (2 * dims)
        return p
    out: list[int] = []
    for i in range(dims):
        size = x.shape[2 + i]
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        out_size = math.ceil(size / strides[i])
        total = max((out_size - 1) * strides[i] + k_eff - size, 0)
        small, big = total // 2, total - total // 2
        out += [small, big] if pad_type == "same" else [big, small]  # same_lower: extra on top/left
    return out


def _pad_spatial(x: torch.Tensor, pads: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad the trailing spatial dims with [before_0, after_0, ...] (dim 0 = first spatial dim)."""
    torch_pad: list[int] = []
    for i in reversed(range(len(pads) // 2)):
        torch_pad += [pads[2 * i], pads[2 * i + 1]]
    return F.pad(x, torch_pad, value=value)


def _symmetric(pads: Sequence[int]) -> list[int] | None:
    pairs = [(pads[2 * i], pads[2 * i + 1]) for i in range(len(pads) // 2)]
    return [a for a, b in pairs] if all(a == b for a, b in pairs) else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# --------------------------------------------------------------------------- op functions
def _conv(n: Node, x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None,
          groups=1):
    dims = x.dim() - 2
    kernel = list(weight.shape[2:])
    strides = _ints(strides) or [1] * dims
    dilations = _ints(dilations) or [1] * dims
    pads = _spatial_pads(n, x, pad_type, pad, kernel, strides, dilations)
    padding = _symmetric(pads)
    if padding is None:
        x, padding = _pad_spatial(x, pads), [0] * dims
    return _CONV[dims](x, weight, bias, strides, padding, dilations, int(groups))


def _conv_transpose(n: Node, x, weight, bias=None, pad=None, output_shape=None, pad_type="valid",
                    strides=None, dilations=None, groups=1):
    dims = x.dim() - 2
    strides = _ints(strides) or [1] * dims
    dilations = _ints(dilations) or [1] * dims
    y = _CONV_T[dims](x, weight, bias, strides, 0, 0, int(groups), dilations)
    full = list(y.shape[2:])
    pad_type = (pad_type or "valid").lower()
    if output_shape is not None:
        target = _ints(output_shape)[-dims:]
    elif pad_type in ("same", "same_lower"):
        target = [x.shape[2 + i] * strides[i] for i in range(dims)]
    else:
        p = _ints(pad) if pad_type == "custom" and pad is not None else [0] * (2 * dims)
        target = [full[i] - p[2 * i] - p[2 * i + 1] for i in range(dims)]
    if pad_type == "custom" and pad is not None:
        befores = _ints(pad)[0::2]
    else:
        totals = [full[i] - target[i] for i in range(dims)]
        befores = [t // 2 if pad_type != "same_lower" else t - t // 2 for t in totals]
    index = [slice(None), slice(None)] + [slice(b, b + t) for b, t in zip(befores, target)]
    y = y[tuple(index)]
    if any(y.shape[2 + i] < target[i] for i in range(dims)):  # output_shape asks for extra trailing rows
        extra = [0, 0] * dims
        for i in range(dims):
            extra[2 * i + 1] = target[i] - y.shape[2 + i]
        y = _pad_spatial(y, extra)
        if bias is not None:
            raise NotImplementedError("conv_transpose with output_shape beyond the full output and a bias")
    return y


def _pool(kind: str):
    def pool(n: Node, x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False,
             exclude_padding_from_average=False):
        dims = x.dim() - 2
        kernel = _ints(kernel_sizes)
        strides = _ints(strides) or [1] * dims
        pads = _spatial_pads(n, x, pad_type, pad, kernel, strides, [1] * dims)
        padding = _symmetric(pads)
        if padding is not None and any(p > k // 2 for p, k in zip(padding, kernel)):
            padding = None  # torch limits implicit padding to half the kernel
        if kind == "max":
            if padding is None:
                x, padding = _pad_spatial(x, pads, value=-math.inf), [0] * dims
            return _MAX_POOL[dims](x, kernel, strides, padding, 1, bool(ceil_mode))
        if kind == "l2":
            x = x * x
        if padding is not None:
            y = _AVG_POOL[dims](x, kernel, strides, padding, bool(ceil_mode),
                                not bool(exclude_padding_from_average))
        else:
            xp = _pad_spatial(x, pads)
            y = _AVG_POOL[dims](xp, kernel, strides, 0, bool(ceil_mode), True)
            if exclude_padding_from_average:
                ones = _pad_spatial(torch.ones_like(x[:1, :1]), pads)
                y = y / _AVG_POOL[dims](ones, kernel, strides, 0, bool(ceil_mode), True)
        if kind == "l2":
            return torch.sqrt(y * math.prod(kernel))
        return y
    return pool


def _batch_norm(n: Node, x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    return F.batch_norm(x, mean, variance, gamma, beta, False, 0.0, float(epsilon))


def _instance_norm(n: Node, x, gamma=None, beta=None, epsilon=1e-5):
    return F.instance_norm(x, None, None, gamma, beta, True, 0.0, float(epsilon))


def _layer_norm(n: Node, x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    axes = _axes(axes, x.dim()) if axes is not None else list(range(x.dim()))
    if axes == list(range(x.dim() - len(axes), x.dim())):
        return F.layer_norm(x, x.shape[-len(axes):], gamma, beta, float(epsilon))
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    y = (x - mean) / torch.sqrt(var + float(epsilon))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.dim())]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _l2_norm(n: Node, x, axes=None, epsilon=1e-6):
    axes = _axes(axes, x.dim()) if axes is not None else list(range(max(x.dim() - 3, 0), x.dim()))
    return x / torch.sqrt((x * x).sum(dim=axes, keepdim=True) + float(epsilon))


def _reduce(fn: Callable[..., torch.Tensor]):
    def reduce(n: Node, x, axes=None, keep_dims=False):
        axes = _axes(axes, x.dim()) if axes is not None else list(range(x.dim()))
        return fn(x, axes, bool(keep_dims))
    return reduce


def _reduce_arg(fn: Callable[..., torch.Tensor]):
    def reduce_arg(n: Node, x, axis=-1, keep_dims=False, output_dtype="int32"):
        return fn(x, dim=int(axis), keepdim=bool(keep_dims)).to(torch.int32)
    return reduce_arg


def _amax(x, axes, keep):
    return torch.amax(x, dim=axes, keepdim=keep)


def _amin(x, axes, keep):
    return torch.amin(x, dim=axes, keepdim=keep)


def _prod(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = torch.prod(x, dim=a, keepdim=keep)
    return x


def _batch_axis(n: Node, param: str, t: torch.Tensor) -> int | None:
    """The axis along which the runtime tensor is longer/shorter than declared: the batch axis.

    ``None`` when the tensor has its declared shape (flexible dims match anything).  The batch
    need not be dim 0: a ``transpose`` may have moved it.
    """
    declared = n.in_shape(param)
    if declared is None or len(declared) != t.dim():
        return None
    diff = [i for i, d in enumerate(declared) if d is not None and t.shape[i] != d]
    if not diff:
        return None
    if len(diff) > 1:
        raise ProgramExecutionError(f"{n.where}: input {param!r} has shape {tuple(t.shape)} but the program "
                                    f"declares {declared}; only one (batch) dimension may differ")
    return diff[0]


def _reshape(n: Node, x, shape):
    target = _ints(shape)
    declared = n.in_shape("x")
    axis = _batch_axis(n, "x", x)
    if axis is None:
        if len(target) == x.dim():  # 0 copies the input's dim
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)
    # The program was written for the declared batch: find the output axis that carries the batch
    # (same elements before and after it) and give it the runtime batch size.
    if len(target) == len(declared):
        target = [declared[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        k = target.index(-1)
        target[k] = math.prod(declared) // math.prod(d for i, d in enumerate(target) if i != k)
    before, after, b0 = math.prod(declared[:axis]), math.prod(declared[axis + 1:]), declared[axis]
    candidates = [j for j in range(len(target)) if target[j] == b0 and math.prod(target[:j]) == before
                  and math.prod(target[j + 1:]) == after]
    if not candidates:
        raise ProgramExecutionError(
            f"{n.where}: reshape {declared} -> {_ints(shape)} merges or splits the batch dimension "
            f"(axis {axis}), so a batch of {x.shape[axis]} cannot run through it; run with the declared batch size"
        )
    j = axis if axis in candidates else candidates[0]
    target[j] = x.shape[axis]
    return x.reshape(target)


def _squeeze(n: Node, x, axes=None):
    axis = _batch_axis(n, "x", x)
    if axes is None:
        dims = [i for i in range(x.dim()) if x.shape[i] == 1 and i != axis]
    else:
        dims = _axes(axes, x.dim())
        if axis is not None and axis in dims:
            raise ProgramExecutionError(f"{n.where}: squeezes the batch dimension; run with the declared batch size")
    for d in sorted(dims, reverse=True):
        x = x.squeeze(d)
    return x


def _expand_dims(n: Node, x, axes):
    rank = x.dim() + len(_ints(axes))
    for a in sorted(i % rank for i in _ints(axes)):
        x = x.unsqueeze(a)
    return x


def _slice_by_index(n: Node, x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    rank = x.dim()
    begin, end = _ints(begin), _ints(end)
    stride = _ints(stride) or [1] * rank
    begin_mask, end_mask = _bools(begin_mask, rank), _bools(end_mask, rank)
    squeeze_mask = _bools(squeeze_mask, rank)
    axis = _batch_axis(n, "x", x)
    if axis is not None:  # the program must keep the whole (declared) batch: keep the runtime batch
        d = n.in_shape("x")[axis]
        whole = (not squeeze_mask[axis] and stride[axis] == 1
                 and (begin_mask[axis] or begin[axis] in (0, -d)) and (end_mask[axis] or end[axis] >= d))
        if not whole:
            raise ProgramExecutionError(f"{n.where}: slices the batch dimension; run with the declared batch size")
        begin_mask[axis] = end_mask[axis] = True
    index: list[Any] = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(begin[i])
            continue
        b = None if begin_mask[i] else begin[i]
        e = None if end_mask[i] else end[i]
        s = stride[i]
        if s < 0:
            index.append(("rev", b, e, s))
        else:
            index.append(slice(b, e, s))
    if any(isinstance(i, tuple) for i in index):  # negative strides: torch has none, use flip
        for axis, item in enumerate(index):
            if isinstance(item, tuple):
                _, b, e, s = item
                size = x.shape[axis]
                idx = list(range(size))[slice(b, e, s)]
                index[axis] = torch.tensor(idx, dtype=torch.long)
        out = x
        for axis in reversed(range(rank)):
            item = index[axis]
            if isinstance(item, torch.Tensor):
                out = out.index_select(axis, item)
            elif isinstance(item, slice):
                out = out[(slice(None),) * axis + (item,)]
            else:
                out = out.select(axis, item)
        return out
    return x[tuple(index)]


def _slice_by_size(n: Node, x, begin, size):
    begin, size = _ints(begin), _ints(size)
    axis = _batch_axis(n, "x", x)
    if axis is not None:
        if begin[axis] != 0 or size[axis] not in (-1, n.in_shape("x")[axis]):
            raise ProgramExecutionError(f"{n.where}: slices the batch dimension; run with the declared batch size")
        size[axis] = -1
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


def _concat(n: Node, values, axis, interleave=False):
    values = [_tensor(v) for v in values]
    axis = int(axis) % values[0].dim()
    others = {tuple(v.shape[:axis]) + tuple(v.shape[axis + 1:]) for v in values}
    if len(others) > 1:  # a constant part written for the declared batch: repeat it along the runtime batch
        size = [max(v.shape[i] for v in values) for i in range(values[0].dim())]
        values = [v.expand([-1 if i == axis else d for i, d in enumerate(size)]) for v in values]
    if not interleave:
        return torch.cat(values, dim=axis)
    stacked = torch.stack(values, dim=axis + 1)
    shape = list(values[0].shape)
    shape[axis] = -1
    return stacked.reshape(shape)


def _split(n: Node, x, axis, num_splits=None, split_sizes=None):
    if split_sizes is not None:
        return tuple(torch.split(x, _ints(split_sizes), dim=int(axis)))
    return tuple(torch.chunk(x, int(num_splits), dim=int(axis)))


def _pad(n: Node, x, pad, mode="constant", constant_val=0.0):
    p = _ints(pad)
    while len(p) > 2 and p[0] == 0 and p[1] == 0:  # torch's reflect/replicate pad only the trailing dims
        p = p[2:]
    torch_pad: list[int] = []
    for i in reversed(range(len(p) // 2)):
        torch_pad += [p[2 * i], p[2 * i + 1]]
    if mode == "constant":
        return F.pad(x, torch_pad, mode="constant", value=float(constant_val))
    return F.pad(x, torch_pad, mode=mode)


def _tile(n: Node, x, reps):
    return x.repeat(_ints(reps))


def _gather(n: Node, x, indices, axis=0, batch_dims=0, validate_indices=False):
    axis = int(axis) % x.dim()
    idx = indices.long() if isinstance(indices, torch.Tensor) else torch.tensor(indices, dtype=torch.long)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if int(batch_dims) != 0:
        raise NotImplementedError("gather with batch_dims != 0")
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def _gather_along_axis(n: Node, x, indices, axis=0, validate_indices=False):
    axis = int(axis) % x.dim()
    idx = indices.long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


def _matmul(n: Node, x, y, transpose_x=False, transpose_y=False):
    x, y = _tensor(x), _tensor(y)
    if transpose_x and x.dim() > 1:
        x = x.transpose(-1, -2)
    if transpose_y and y.dim() > 1:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _interp_matrix(n_in: int, n_out: int, grid: Sequence[float]) -> torch.Tensor:
    """(n_out, n_in) linear-interpolation weights for sample positions ``grid`` in [0, n_in-1]."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i, g in enumerate(grid):
        g = min(max(g, 0.0), n_in - 1.0)
        lo = int(math.floor(g))
        hi = min(lo + 1, n_in - 1)
        frac = g - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m.to(torch.float32)


def _bilinear(x: torch.Tensor, grid_h: Sequence[float], grid_w: Sequence[float]) -> torch.Tensor:
    mh = _interp_matrix(x.shape[-2], len(grid_h), grid_h)
    mw = _interp_matrix(x.shape[-1], len(grid_w), grid_w)
    return torch.matmul(torch.matmul(mh, x), mw.t())


def _upsample_bilinear(n: Node, x, scale_factor_height=1, scale_factor_width=1, align_corners=True,
                       half_pixel_centers=None):
    h_in, w_in = x.shape[-2], x.shape[-1]
    h_out = int(math.floor(h_in * float(scale_factor_height)))
    w_out = int(math.floor(w_in * float(scale_factor_width)))
    half = (not align_corners) if half_pixel_centers is None else bool(half_pixel_centers)

    def grid(n_in: int, n_out: int) -> list[float]:
        if align_corners:
            step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            return [i * step for i in range(n_out)]
        step = n_in / n_out
        return [i * step + (0.5 * step - 0.5 if half else 0.0) for i in range(n_out)]

    return _bilinear(x, grid(h_in, h_out), grid(w_in, w_out))


def _resize_bilinear(n: Node, x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    mode = str(sampling_mode).upper()

    def grid(n_in: int, n_out: int) -> list[float]:
        if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
            if n_out == 1:
                return [(n_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0]
            return [i * (n_in - 1) / (n_out - 1) for i in range(n_out)]
        if mode == "DEFAULT":
            step = (n_in - n_in / n_out) / (n_out - 1) if n_out > 1 else 0.0
            return [i * step for i in range(n_out)]
        if mode == "OFFSET_CORNERS":
            delta = max(1, n_in - 1) / n_out
            return [0.5 * delta + i * delta for i in range(n_out)]
        if mode == "UNALIGN_CORNERS":
            step = n_in / n_out
            return [i * step + 0.5 * step - 0.5 for i in range(n_out)]
        raise NotImplementedError(f"resize_bilinear sampling_mode {sampling_mode!r}")

    return _bilinear(x, grid(x.shape[-2], int(target_size_height)), grid(x.shape[-1], int(target_size_width)))


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source rows for nearest-neighbour resampling, scale recomputed from the sizes (as torch does)."""
    src = torch.floor(torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)).long()
    return torch.clamp(src, max=n_in - 1)


def _upsample_nearest(n: Node, x, scale_factor_height=1, scale_factor_width=1):
    # The output size is floor(size * scale); like upsample_bilinear, the sampling step is then
    # recomputed from the sizes (the converter stores e.g. 6/16 as 0.3750063 so that the floor works).
    sh, sw = float(scale_factor_height), float(scale_factor_width)
    h_out, w_out = int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw))
    if sh.is_integer() and sw.is_integer():
        return x.repeat_interleave(int(sh), dim=-2).repeat_interleave(int(sw), dim=-1)
    return _resize_nearest(n, x, h_out, w_out)


def _resize_nearest(n: Node, x, target_size_height=1, target_size_width=1):
    x = x.index_select(-2, _nearest_index(x.shape[-2], int(target_size_height)))
    return x.index_select(-1, _nearest_index(x.shape[-1], int(target_size_width)))


_GELU = {"EXACT": "none", "TANH_APPROXIMATION": "tanh"}


def _gelu(n: Node, x, mode="EXACT"):
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate=_GELU[mode])


_TORCH_DTYPE = {
    "fp16": torch.float32, "fp32": torch.float32, "fp64": torch.float32, "bool": torch.bool,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int32, "uint16": torch.int32,
    "int32": torch.int32, "int64": torch.int64, "uint32": torch.int64,
}


def _cast(n: Node, x, dtype):
    x = _tensor(x)
    if dtype == "bool":
        return x != 0
    return x.to(_TORCH_DTYPE[dtype])  # float->int truncates toward zero; fp16 rounding applied afterwards


def _quant_params(x: torch.Tensor, scale, zero_point, axis):
    axis = None if axis is None else int(axis)
    if isinstance(scale, torch.Tensor) and scale.dim() == 1 and axis is not None:
        scale = _channel_param(scale, x.dim(), axis)
        if isinstance(zero_point, torch.Tensor) and zero_point.dim() == 1:
            zero_point = _channel_param(zero_point, x.dim(), axis)
    return scale, zero_point


_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _quantize(n: Node, input, scale, output_dtype, zero_point=None, axis=None):
    x = input
    scale, zero_point = _quant_params(x, scale, zero_point, axis)
    fp16 = n.in_dtype("scale") == "fp16" or n.in_dtype("input") == "fp16"
    inv = 1.0 / _tensor(scale)  # the runtime multiplies by the reciprocal
    if fp16:
        inv = _round_fp16(inv)
    y = x * inv
    if fp16:
        y = _round_fp16(y)
    q = torch.round(y)  # half to even
    if zero_point is not None:
        q = q + (zero_point.to(torch.float32) if isinstance(zero_point, torch.Tensor) else float(zero_point))
    lo, hi = _QRANGE[output_dtype]
    return torch.clamp(q, lo, hi).to(torch.int8 if output_dtype == "int8" else torch.uint8)


def _dequantize(n: Node, input, scale, zero_point=None, axis=None):
    q = input.to(torch.float32)
    scale, zero_point = _quant_params(input, scale, zero_point, axis)
    if zero_point is not None:
        q = q - (zero_point.to(torch.float32) if isinstance(zero_point, torch.Tensor) else float(zero_point))
    return q * scale


def _classify(n: Node, probabilities, classes):
    p = probabilities
    declared = n.in_shape("probabilities")
    if declared is not None and len(declared) <= 1:
        p = p.reshape(1, -1)
    flat = p.reshape(p.shape[0], -1)
    labels = np.asarray(list(classes))[flat.argmax(dim=1).numpy()]
    return labels, flat


def _softmax(n: Node, x, axis=-1):
    return torch.softmax(x, dim=int(axis))


def _clamped_relu(n: Node, x, alpha=0.0, beta=6.0):
    return torch.clamp(torch.where(x >= 0, x, x * float(alpha)), max=float(beta))


def _prelu(n: Node, x, alpha):
    return torch.where(x >= 0, x, x * _channel_param(alpha, x.dim(), -3 if x.dim() >= 3 else 1))


def _softplus_parametric(n: Node, x, alpha, beta):
    axis = -3 if x.dim() >= 3 else 1
    return _channel_param(alpha, x.dim(), axis) * F.softplus(x * _channel_param(beta, x.dim(), axis))


def _stack(n: Node, values, axis=0):
    return torch.stack([_tensor(v) for v in values], dim=int(axis))


def _fill(n: Node, shape, value=0.0):
    return torch.full(_ints(shape), value, dtype=torch.float32 if isinstance(value, float) else torch.int32)


def _range_1d(n: Node, end, start, step):
    vals = [v.item() if isinstance(v, torch.Tensor) else v for v in (start, end, step)]
    dtype = torch.float32 if any(isinstance(v, float) for v in vals) else torch.int32
    return torch.arange(vals[0], vals[1], vals[2], dtype=dtype)


def _select(n: Node, cond, a, b):
    return torch.where(_tensor(cond).bool(), _tensor(a), _tensor(b))


def _crop(n: Node, x, crop_height, crop_width):
    (top, bottom), (left, right) = _ints(crop_height), _ints(crop_width)
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def _flatten2d(n: Node, x, axis=1):
    axis = int(axis) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


# --- compression (constexpr_*) ops: compile-time constants, NumPy in and out, coremltools' own decompress
def _numpy_inputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn.numpy_inputs = True  # type: ignore[attr-defined]
    return fn


def _mil_op_class(op_type: str, new: bool) -> Any:
    """The coremltools op class: the iOS18 version when ``new`` else the iOS16 one."""
    if new:
        from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as mod
    else:
        from coremltools.converters.mil.mil.ops.defs.iOS16 import constexpr_ops as mod
    return getattr(mod, op_type)


@_numpy_inputs
def _constexpr_affine_dequantize(n: Node, quantized_data, zero_point, scale, axis):
    return _mil_op_class("constexpr_affine_dequantize", False).decompress(quantized_data, zero_point, scale, int(axis))


@_numpy_inputs
def _constexpr_blockwise_shift_scale(n: Node, data, scale, offset=None):
    return _mil_op_class("constexpr_blockwise_shift_scale", True).decompress(data, scale, offset)


@_numpy_inputs
def _constexpr_lut_to_dense(n: Node, lut, indices, shape=None, vector_axis=None):
    if shape is not None:  # iOS16: packed indices + flat LUT + shape
        return _mil_op_class("constexpr_lut_to_dense", False).decompress(lut, indices, shape)
    return _mil_op_class("constexpr_lut_to_dense", True).decompress(indices, lut, vector_axis)


@_numpy_inputs
def _constexpr_sparse_to_dense(n: Node, nonzero_data, mask, shape=None):
    if shape is not None:  # iOS16: packed uint8 mask + shape
        return _mil_op_class("constexpr_sparse_to_dense", False).decompress(nonzero_data, mask, shape)
    return _mil_op_class("constexpr_sparse_to_dense", True).decompress(nonzero_data, mask)


@_numpy_inputs
def _constexpr_lut_to_sparse(n: Node, indices_mask, indices_nonzero_data, lut, vector_axis=None):
    return _mil_op_class("constexpr_lut_to_sparse", True).decompress(indices_mask, indices_nonzero_data, lut,
                                                                      vector_axis)


@_numpy_inputs
def _constexpr_sparse_blockwise_shift_scale(n: Node, data_mask, nonzero_data, scale, offset=None):
    return _mil_op_class("constexpr_sparse_blockwise_shift_scale", True).decompress(data_mask, nonzero_data,
                                                                                     scale, offset)


@_numpy_inputs
def _constexpr_cast(n: Node, source_val, output_dtype):
    return np.asarray(source_val, dtype=np.float32)


def _f(v: Any) -> float:
    return float(v)


# --------------------------------------------------------------------------- THE op table
OpFn = Callable[..., Any]

OPS: dict[str, OpFn] = {
    # --- structure / dtype
    "identity": lambda n, x: x,
    "cast": _cast,
    # --- linear algebra
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "linear": lambda n, x, weight, bias=None: F.linear(x, weight, bias),
    "matmul": _matmul,
    # --- pooling
    "max_pool": _pool("max"),
    "avg_pool": _pool("avg"),
    "l2_pool": _pool("l2"),
    # --- normalisation
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "layer_norm": _layer_norm,
    "l2_norm": _l2_norm,
    # --- activations
    "relu": lambda n, x: torch.relu(x),
    "relu6": lambda n, x: torch.clamp(x, 0.0, 6.0),
    "clip": lambda n, x, alpha, beta: torch.clamp(x, _f(alpha), _f(beta)),
    "clamped_relu": _clamped_relu,
    "thresholded_relu": lambda n, x, alpha=1.0: torch.where(x > _f(alpha), x, torch.zeros_like(x)),
    "leaky_relu": lambda n, x, alpha=0.01: torch.where(x >= 0, x, x * _f(alpha)),
    "elu": lambda n, x, alpha=1.0: torch.where(x > 0, x, _f(alpha) * torch.expm1(x)),
    "prelu": _prelu,
    "sigmoid": lambda n, x: torch.sigmoid(x),
    "sigmoid_hard": lambda n, x, alpha=0.2, beta=0.5: torch.clamp(_f(alpha) * x + _f(beta), 0.0, 1.0),
    "silu": lambda n, x: F.silu(x),
    "tanh": lambda n, x: torch.tanh(x),
    "scaled_tanh": lambda n, x, alpha=1.0, beta=1.0: _f(alpha) * torch.tanh(_f(beta) * x),
    "gelu": _gelu,
    "softplus": lambda n, x: F.softplus(x),
    "softplus_parametric": _softplus_parametric,
    "softsign": lambda n, x: x / (1 + torch.abs(x)),
    "linear_activation": lambda n, x, alpha=1.0, beta=0.0: _f(alpha) * x + _f(beta),
    "softmax": _softmax,
    # --- element-wise unary
    "abs": lambda n, x: torch.abs(x),
    "exp": lambda n, x: torch.exp(x),
    "exp2": lambda n, x: torch.exp2(x),
    "log": lambda n, x, epsilon=1e-45: torch.log(x + _f(epsilon)),
    "sqrt": lambda n, x: torch.sqrt(x),
    "rsqrt": lambda n, x, epsilon=1e-12: torch.rsqrt(x + _f(epsilon)),
    "inverse": lambda n, x, epsilon=1e-4: 1.0 / (x + _f(epsilon)),
    "square": lambda n, x: x * x,
    "erf": lambda n, x: torch.erf(x),
    "floor": lambda n, x: torch.floor(x),
    "ceil": lambda n, x: torch.ceil(x),
    "round": lambda n, x: torch.round(x),  # half to even, as the MIL spec says (0.5 -> 0)
    "sign": lambda n, x: torch.sign(x),
    "sin": lambda n, x: torch.sin(x),
    "cos": lambda n, x: torch.cos(x),
    "logical_not": lambda n, x: torch.logical_not(x),
    # --- element-wise binary (broadcasting)
    "add": lambda n, x, y: x + y,
    "sub": lambda n, x, y: x - y,
    "mul": lambda n, x, y: x * y,
    "real_div": lambda n, x, y: x / y,
    "floor_div": lambda n, x, y: torch.floor_divide(_tensor(x), y),
    "mod": lambda n, x, y: torch.remainder(_tensor(x), y),
    "pow": lambda n, x, y: torch.pow(x, y),
    "maximum": lambda n, x, y: torch.maximum(_tensor(x), _tensor(y, _tensor(x))),
    "minimum": lambda n, x, y: torch.minimum(_tensor(x), _tensor(y, _tensor(x))),
    "equal": lambda n, x, y: _tensor(x) == y,
    "not_equal": lambda n, x, y: _tensor(x) != y,
    "greater": lambda n, x, y: _tensor(x) > y,
    "greater_equal": lambda n, x, y: _tensor(x) >= y,
    "less": lambda n, x, y: _tensor(x) < y,
    "less_equal": lambda n, x, y: _tensor(x) <= y,
    "logical_and": lambda n, x, y: torch.logical_and(_tensor(x), _tensor(y)),
    "logical_or": lambda n, x, y: torch.logical_or(_tensor(x), _tensor(y)),
    "logical_xor": lambda n, x, y: torch.logical_xor(_tensor(x), _tensor(y)),
    "select": _select,
    # --- reductions
    "reduce_mean": _reduce(lambda x, a, k: torch.mean(x, dim=a, keepdim=k)),
    "reduce_sum": _reduce(lambda x, a, k: torch.sum(x, dim=a, keepdim=k)),
    "reduce_max": _reduce(_amax),
    "reduce_min": _reduce(_amin),
    "reduce_prod": _reduce(_prod),
    "reduce_sum_square": _reduce(lambda x, a, k: torch.sum(x * x, dim=a, keepdim=k)),
    "reduce_l1_norm": _reduce(lambda x, a, k: torch.sum(torch.abs(x), dim=a, keepdim=k)),
    "reduce_l2_norm": _reduce(lambda x, a, k: torch.sqrt(torch.sum(x * x, dim=a, keepdim=k))),
    "reduce_log_sum": _reduce(lambda x, a, k: torch.log(torch.sum(x, dim=a, keepdim=k))),
    "reduce_log_sum_exp": _reduce(lambda x, a, k: torch.logsumexp(x, dim=a, keepdim=k)),
    "reduce_argmax": _reduce_arg(torch.argmax),
    "reduce_argmin": _reduce_arg(torch.argmin),
    # --- shape / layout
    "reshape": _reshape,
    "flatten2d": _flatten2d,
    "transpose": lambda n, x, perm: x.permute(_ints(perm)),
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "concat": _concat,
    "split": _split,
    "stack": _stack,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "pad": _pad,
    "tile": _tile,
    "gather": _gather,
    "gather_along_axis": _gather_along_axis,
    "shape": lambda n, x: torch.tensor(list(x.shape), dtype=torch.int32),
    "fill": _fill,
    "fill_like": lambda n, ref_tensor, value=0.0: torch.full_like(ref_tensor, value, dtype=torch.float32),
    "range_1d": _range_1d,
    "pixel_shuffle": lambda n, x, upscale_factor: F.pixel_shuffle(x, int(upscale_factor)),
    "pixel_unshuffle": lambda n, x, downscale_factor: F.pixel_unshuffle(x, int(downscale_factor)),
    # --- resampling
    "upsample_nearest_neighbor": _upsample_nearest,
    "upsample_bilinear": _upsample_bilinear,
    "resize_nearest_neighbor": _resize_nearest,
    "resize_bilinear": _resize_bilinear,
    "crop": _crop,
    # --- activation quantisation (W8A8)
    "quantize": _quantize,
    "dequantize": _dequantize,
    # --- classifier head
    "classify": _classify,
    # --- weight compression (evaluated once, at load time)
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
    "constexpr_blockwise_shift_scale": _constexpr_blockwise_shift_scale,
    "constexpr_lut_to_dense": _constexpr_lut_to_dense,
    "constexpr_lut_to_sparse": _constexpr_lut_to_sparse,
    "constexpr_sparse_to_dense": _constexpr_sparse_to_dense,
    "constexpr_sparse_blockwise_shift_scale": _constexpr_sparse_blockwise_shift_scale,
    "constexpr_cast": _constexpr_cast,
}
"""op_type -> op function.  ``const`` ops are read directly by the loader and need no entry."""


def supported_ops() -> list[str]:
    """Sorted op types the executor runs (``const`` included)."""
    return sorted(set(OPS) | {"const"})


def register_op(op_type: str) -> Callable[[OpFn], OpFn]:
    """Decorator adding (or replacing) an entry of :data:`OPS`."""
    def deco(fn: OpFn) -> OpFn:
        OPS[op_type] = fn
        return fn
    return deco


# --------------------------------------------------------------------------- loading helpers
def _quiet_coremltools() -> Any:
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct  # noqa: WPS433 (deferred: heavy import)

    return ct


def _var_type(var: Any) -> VarType:
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    sym_type = var.sym_type
    if types.is_tensor(sym_type):
        shape = tuple(None if is_symbolic(d) else int(d) for d in var.shape)
        return VarType(shape, types.builtin_to_string(var.dtype))
    if types.is_dict(sym_type):
        return VarType(None, "dict")
    if types.is_list(sym_type):
        return VarType(None, "list")
    try:
        return VarType((), types.builtin_to_string(sym_type))
    except KeyError:
        return VarType(None, str(sym_type))


def _as_runtime(value: Any) -> Any:
    """A compile-time value in the form op functions receive it."""
    if isinstance(value, torch.Tensor):
        return value
    if value is None or isinstance(value, (str, bool, int, float, list, tuple)):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return str(arr.item()) if arr.ndim == 0 else arr.tolist()
    if arr.ndim == 0:
        return arr.item()
    if arr.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.dtype.kind == "b":
        return torch.from_numpy(np.ascontiguousarray(arr))
    if arr.dtype in (np.int8, np.uint8, np.int32, np.int64):
        return torch.from_numpy(np.ascontiguousarray(arr))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def _as_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _fixup(t: Any, dtype: str) -> Any:
    """Bring an op result to the runtime representation of the declared MIL dtype."""
    if not isinstance(t, torch.Tensor):
        return t
    if dtype == "fp16":
        return _round_fp16(t.float() if not t.is_floating_point() else t)
    if dtype in ("fp32", "fp64"):
        return t if t.dtype == torch.float32 else t.float()
    target = _TORCH_DTYPE.get(dtype)
    if target is not None and t.dtype != target:
        return t.to(target)
    return t


_COLOR_LAYOUTS = {10: "G", 20: "RGB", 30: "BGR", 40: "G_FLOAT16"}


@dataclasses.dataclass
class _Step:
    node: Node
    fn: OpFn
    consts: dict[str, Any]
    slots: tuple[tuple[str, int], ...]
    lists: tuple[tuple[str, tuple[tuple[bool, Any], ...]], ...]
    out_slots: tuple[int, ...]
    out_dtypes: tuple[str, ...]
    free: tuple[int, ...] = ()


# --------------------------------------------------------------------------- the executor
class ReferenceProgram:
    """A loaded ML program, ready to run batches with PyTorch on the CPU.

    Build it with :meth:`load` (a ``.mlpackage`` path) or :meth:`from_model` (an in-memory
    ``ct.models.MLModel``).  Attributes: ``inputs`` / ``outputs`` (lists of :class:`TensorSpec`),
    ``input_names``, ``output_names``, ``class_labels`` (classifiers, else ``None``),
    ``nodes`` (every non-const op as a :class:`Node`, program order), ``precision``
    (``"fp32"``, ``"fp16"`` or ``"mixed"``: the float dtype(s) the ops produce, casts and
    constexprs aside), ``function_name``, ``source``.
    """

    def __init__(self, program: Any, spec: Any = None, function_name: str | None = None,
                 source: str = "<program>") -> None:
        self.source = source
        if function_name is None:
            default = getattr(getattr(spec, "description", None), "defaultFunctionName", "") if spec else ""
            function_name = default or ("main" if "main" in program.functions else next(iter(program.functions)))
        if function_name not in program.functions:
            raise ValueError(f"{source}: no function {function_name!r}; the program has {list(program.functions)}")
        self.function_name = function_name
        func = program.functions[function_name]
        self._check_supported(func)
        self._build(func, spec)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, package_path: str | os.PathLike, function_name: str | None = None) -> "ReferenceProgram":
        """Load a saved ``.mlpackage`` (ML program).  Raises :class:`UnsupportedOpError` on unknown ops."""
        _quiet_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load as _load_mil

        path = Path(package_path)
        if not path.exists():
            raise FileNotFoundError(f"no Core ML package at {path}")
        spec = read_spec(path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{path} is a {spec.WhichOneof('Type')!r} model; the reference executor "
                             "runs ML programs only (convert with convert_to='mlprogram')")
        weights = path / "Data" / "com.apple.CoreML" / "weights"
        try:
            program = _load_mil(spec, specification_version=spec.specificationVersion,
                                file_weights_dir=str(weights))
            return cls(program, spec, function_name, source=str(path))
        except (UnsupportedOpError, CorruptPackageError):
            raise
        except Exception as exc:  # truncated weight.bin, flipped bits: numpy/protobuf errors that name nothing
            raise CorruptPackageError(path, "its program or weights cannot be decoded", exc) from exc

    @classmethod
    def from_model(cls, model: Any, function_name: str | None = None) -> "ReferenceProgram":
        """Build from an in-memory ``MLModel`` of type ML program (reads its weights directory)."""
        _quiet_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load as _load_mil

        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"the model is a {spec.WhichOneof('Type')!r} model; the reference executor "
                             "runs ML programs only (convert with convert_to='mlprogram')")
        program = _load_mil(spec, specification_version=spec.specificationVersion,
                            file_weights_dir=str(model.weights_dir))
        return cls(program, spec, function_name, source="<MLModel>")

    def _check_supported(self, func: Any) -> None:
        bad: list[Any] = []
        for index, op in enumerate(func.operations):
            if op.op_type != "const" and op.op_type not in OPS:
                bad.append((index, op))
        if bad:
            index, op = bad[0]
            raise UnsupportedOpError(op.op_type, self.function_name, index, op.name,
                                     [v.name for v in op.outputs], supported_ops(),
                                     sorted({o.op_type for _, o in bad[1:]} - {op.op_type}))

    def _build(self, func: Any, spec: Any) -> None:
        # Variables are keyed by identity, not by name: coremltools' MIL loader names the consts it
        # makes for immediate values "const_<n>", which can repeat a name already in the program.
        const_np: dict[int, Any] = {}  # var id -> NumPy/Python value (as stored in the program)
        const_rt: dict[int, Any] = {}  # var id -> runtime value (torch / python)
        slot_of: dict[int, int] = {}
        var_types: dict[int, VarType] = {}
        const_names: dict[str, list[int]] = {}

        self.inputs = self._input_specs(func, spec)
        for name, var in func.inputs.items():
            slot_of[id(var)] = len(slot_of)
            var_types[id(var)] = _var_type(var)
        self._input_slots = {name: slot_of[id(var)] for name, var in func.inputs.items()}
        self._input_types = {name: var_types[id(var)] for name, var in func.inputs.items()}

        def is_const(var: Any) -> bool:
            return id(var) in const_np or id(var) in const_rt

        def rt(var: Any) -> Any:
            key = id(var)
            if key not in const_rt:
                const_rt[key] = _as_runtime(const_np[key])
            return const_rt[key]

        def np_value(var: Any) -> Any:
            key = id(var)
            if key not in const_np:
                const_np[key] = _as_numpy(const_rt[key])
            return const_np[key]

        steps: list[_Step] = []
        self.nodes: list[Node] = []
        self._node_consts: dict[tuple[int, str], int] = {}  # (op index, param) -> constant key
        for index, op in enumerate(func.operations):
            out_types = tuple(_var_type(v) for v in op.outputs)
            for v, t in zip(op.outputs, out_types):
                var_types[id(v)] = t
            if op.op_type == "const":
                const_np[id(op.outputs[0])] = op.outputs[0].val
                const_names.setdefault(op.outputs[0].name, []).append(id(op.outputs[0]))
                continue
            in_vars = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in op.inputs.items()}
            in_names = {k: (tuple(x.name for x in v) if isinstance(v, tuple) else v.name) for k, v in in_vars.items()}
            in_types = {k: var_types.get(id(v[0] if isinstance(v, tuple) else v), VarType(None, "?"))
                        for k, v in in_vars.items() if not (isinstance(v, tuple) and not v)}
            node = Node(self.function_name, index, op.op_type, op.name, in_names,
                        tuple(v.name for v in op.outputs), in_types, out_types)
            self.nodes.append(node)
            for k, v in in_vars.items():
                if not isinstance(v, tuple) and is_const(v):
                    self._node_consts[(index, k)] = id(v)
            fn = OPS[op.op_type]
            all_const = all(all(is_const(x) for x in v) if isinstance(v, tuple) else is_const(v)
                            for v in in_vars.values())
            if all_const and op.op_type != "classify":  # fold at load time
                numpy_in = getattr(fn, "numpy_inputs", False)
                get = np_value if numpy_in else rt
                kwargs = {k: ([get(x) for x in v] if isinstance(v, tuple) else get(v)) for k, v in in_vars.items()}
                try:
                    with torch.inference_mode():
                        result = fn(node, **kwargs)
                except Exception as exc:  # noqa: BLE001
                    raise ProgramExecutionError(f"{self.source}: {node.where} failed at load time: "
                                                f"{type(exc).__name__}: {exc}") from exc
                results = result if isinstance(result, tuple) and len(op.outputs) > 1 else (result,)
                for v, t, r in zip(op.outputs, out_types, results):
                    if numpy_in:
                        const_np[id(v)] = r
                    else:
                        const_rt[id(v)] = _fixup(r, t.dtype)
                    const_names.setdefault(v.name, []).append(id(v))
                continue
            consts: dict[str, Any] = {}
            slots: list[tuple[str, int]] = []
            lists: list[tuple[str, tuple[tuple[bool, Any], ...]]] = []
            for k, v in in_vars.items():
                if isinstance(v, tuple):
                    lists.append((k, tuple((False, rt(x)) if is_const(x) else (True, slot_of[id(x)]) for x in v)))
                elif is_const(v):
                    consts[k] = rt(v)
                else:
                    slots.append((k, slot_of[id(v)]))
            out_slots = []
            for v in op.outputs:
                slot_of[id(v)] = len(slot_of)
                out_slots.append(slot_of[id(v)])
            steps.append(_Step(node, fn, consts, tuple(slots), tuple(lists), tuple(out_slots),
                               tuple(t.dtype for t in out_types)))

        self._n_slots = len(slot_of)
        self._output_refs: list[tuple[str, bool, Any]] = []  # (name, is_slot, slot or constant)
        for var in func.outputs:
            if id(var) in slot_of:
                self._output_refs.append((var.name, True, slot_of[id(var)]))
            else:
                self._output_refs.append((var.name, False, rt(var)))
        self.outputs = self._output_specs(func, spec, {v.name: var_types.get(id(v), _var_type(v))
                                                       for v in func.outputs})
        self.input_names = [s.name for s in self.inputs]
        self.output_names = [s.name for s in self.outputs]
        self._output_dtypes = {s.name: s.dtype for s in self.outputs}

        # liveness: free every slot right after its last reader (outputs are kept)
        last_use: dict[int, int] = {}
        for i, st in enumerate(steps):
            for _, s in st.slots:
                last_use[s] = i
            for _, items in st.lists:
                for is_slot, ref in items:
                    if is_slot:
                        last_use[ref] = i
        keep = {ref for _, is_slot, ref in self._output_refs if is_slot}
        frees: dict[int, list[int]] = {}
        for s, i in last_use.items():
            if s not in keep:
                frees.setdefault(i, []).append(s)
        for i, st in enumerate(steps):
            st.free = tuple(frees.get(i, ()))
        self._steps = steps
        self._constants_np = const_np
        self._constants_rt = const_rt
        self._const_names = const_names
        float_types = {t.dtype for n in self.nodes if n.op_type != "cast" and not n.op_type.startswith("constexpr")
                       for t in n.output_types if t.dtype in ("fp16", "fp32")}
        self.precision = "mixed" if len(float_types) > 1 else (float_types.pop() if float_types else "fp32")
        classify = [n for n in self.nodes if n.op_type == "classify"]
        self.class_labels = list(self.const_input(classify[0], "classes")) if classify else None

    def _input_specs(self, func: Any, spec: Any) -> list[TensorSpec]:
        described = {d.name: d for d in spec.description.input} if spec is not None else {}
        specs = []
        for name, var in func.inputs.items():
            t = _var_type(var)
            kind, layout = "tensor", None
            d = described.get(name)
            if d is not None and d.type.WhichOneof("Type") == "imageType":
                kind, layout = "image", _COLOR_LAYOUTS.get(d.type.imageType.colorSpace, "?")
            specs.append(TensorSpec(name, t.shape, t.dtype, kind, layout))
        return specs

    def _output_specs(self, func: Any, spec: Any, var_types: Mapping[str, VarType]) -> list[TensorSpec]:
        classify = {n.outputs[i]: ("label", "probabilities")[i] for n in self.nodes if n.op_type == "classify"
                    for i in range(len(n.outputs))}
        out = []
        for var in func.outputs:
            t = var_types.get(var.name, _var_type(var))
            kind = classify.get(var.name, "tensor")
            if kind == "probabilities":
                t = VarType(None, "fp32")
            out.append(TensorSpec(var.name, t.shape, t.dtype, kind))
        return out

    # ------------------------------------------------------------------ introspection
    def _const_value(self, key: int) -> np.ndarray:
        if key in self._constants_rt:
            return np.asarray(_as_numpy(self._constants_rt[key]))
        return np.asarray(self._constants_np[key])

    def const_input(self, node: Node, param: str) -> np.ndarray | None:
        """The compile-time value an op receives for ``param`` (e.g. a conv's decompressed weight),
        as NumPy; ``None`` when that input is computed at run time or absent."""
        key = self._node_consts.get((node.index, param))
        return None if key is None else self._const_value(key)

    def constant(self, var_name: str) -> np.ndarray:
        """The compile-time value of the variable named ``var_name`` (e.g. a decompressed weight)."""
        keys = self._const_names.get(var_name, [])
        if len(keys) != 1:
            raise KeyError(f"{var_name!r} is not a compile-time constant of this program" if not keys else
                           f"{var_name!r} names {len(keys)} constants; use const_input(node, param)")
        return self._const_value(keys[0])

    def op_counts(self) -> dict[str, int]:
        """Op type -> number of (non-const) ops in the program."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return dict(sorted(counts.items()))

    def __repr__(self) -> str:
        return (f"ReferenceProgram({self.source!r}, inputs={[(s.name, s.shape, s.dtype) for s in self.inputs]}, "
                f"outputs={self.output_names}, precision={self.precision!r}, ops={len(self._steps)} to run)")

    # ------------------------------------------------------------------ running
    def _prepare_inputs(self, inputs: Mapping[str, Any]) -> tuple[list[Any], int]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self._input_slots]
        if missing or extra:
            raise ValueError(f"predict expects inputs {self.input_names}; missing {missing}, unexpected {extra}")
        env: list[Any] = [None] * self._n_slots
        batch = None
        for name, slot in self._input_slots.items():
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                t = value
            else:
                arr = np.ascontiguousarray(value)
                t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
            declared = self._input_types[name]
            if declared.shape is not None:
                if t.dim() != len(declared.shape) or any(
                        d is not None and i > 0 and t.shape[i] != d for i, d in enumerate(declared.shape)):
                    raise ValueError(f"input {name!r} has shape {tuple(t.shape)}; the program declares "
                                     f"{declared.shape} (any batch size in dim 0)")
            if declared.dtype in ("fp16", "fp32", "fp64"):
                t = t.to(torch.float32)
            t = _fixup(t, declared.dtype)
            env[slot] = t
            if t.dim():
                batch = t.shape[0] if batch is None else batch
        return env, batch or 1

    def _run(self, env: list[Any], observer: Callable[[str, torch.Tensor], None] | None = None,
             emulate_fp16: bool = True) -> dict[str, Any]:
        if observer is not None:
            for name, slot in self._input_slots.items():
                observer(name, env[slot])
        for st in self._steps:
            kwargs = dict(st.consts)
            for k, s in st.slots:
                kwargs[k] = env[s]
            for k, items in st.lists:
                kwargs[k] = [env[ref] if is_slot else ref for is_slot, ref in items]
            try:
                result = st.fn(st.node, **kwargs)
            except ProgramExecutionError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the failing op
                raise ProgramExecutionError(f"{self.source}: {st.node.where} failed: {type(exc).__name__}: {exc}") from exc
            if len(st.out_slots) == 1:
                r = _fixup(result, st.out_dtypes[0] if emulate_fp16 or st.out_dtypes[0] != "fp16" else "fp32")
                env[st.out_slots[0]] = r
                if observer is not None:
                    observer(st.node.outputs[0], r)
            else:
                for name, s, dt, r in zip(st.node.outputs, st.out_slots, st.out_dtypes, result):
                    r = _fixup(r, dt if emulate_fp16 or dt != "fp16" else "fp32")
                    env[s] = r
                    if observer is not None:
                        observer(name, r)
            for s in st.free:
                env[s] = None
        return {name: (env[ref] if is_slot else ref) for name, is_slot, ref in self._output_refs}

    def _to_numpy_outputs(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in raw.items():
            dtype = self._output_dtypes[name]
            if isinstance(value, torch.Tensor):
                arr = value.detach().cpu().numpy()
                if dtype == "fp16":
                    arr = arr.astype(np.float16)
            else:
                arr = np.asarray(value)
            out[name] = arr
        return out

    def predict(self, inputs: Mapping[str, Any], batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Run the program on a batch: ``{input name: (N, ...) array}`` -> ``{output name: (N, ...) array}``.

        The leading dimension of every input is the batch (any N, whatever the declared
        batch).  ``batch_size`` splits the work into chunks of that many rows (less memory);
        results are concatenated.  Float outputs declared fp16 come back as ``np.float16``.
        """
        if batch_size is not None:
            return self._predict_chunked(inputs, batch_size)
        with torch.inference_mode():
            env, _ = self._prepare_inputs(inputs)
            return self._to_numpy_outputs(self._run(env))

    # ------------------------------------------------------------------ host timing (playbook.bench, torch backend)
    def run_float32(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Run the program's ops as plain float32 PyTorch, *without* rounding every fp16-typed result to fp16.

        What the same graph costs as PyTorch kernels on this host (``playbook.bench``'s ``torch`` backend):
        a timing path, not a correctness one -- use :meth:`predict` for numbers that follow the program's
        precision.  Inputs are tensors already on the program's device (see :meth:`to`); outputs stay there.
        """
        with torch.inference_mode():
            env, _ = self._prepare_inputs(inputs)
            return self._run(env, emulate_fp16=False)

    def to(self, device: str | torch.device) -> "ReferenceProgram":
        """Move every runtime constant (weights, folded sub-graphs) to ``device``, in place; returns ``self``.

        Ops that build tensors of their own on the CPU may still fail on another device: the caller records that.
        """
        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        for st in self._steps:
            st.consts = {k: move(v) for k, v in st.consts.items()}
            st.lists = tuple((k, tuple((is_slot, ref if is_slot else move(ref)) for is_slot, ref in items))
                             for k, items in st.lists)
        self._output_refs = [(name, is_slot, ref if is_slot else move(ref)) for name, is_slot, ref in self._output_refs]
        return self

    def _chunks(self, inputs: Mapping[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        sizes = {len(v) for v in inputs.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: { {k: len(v) for k, v in inputs.items()} }")
        total = sizes.pop()
        for start in range(0, total, batch_size):
            yield {k: v[start:start + batch_size] for k, v in inputs.items()}

    def _predict_chunked(self, inputs: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
        parts = [self.predict(chunk) for chunk in self._chunks(inputs, batch_size)]
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in self.output_names}

    def _batches(self, batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
        for b in batches:
            if isinstance(b, Mapping):
                yield b
            elif len(self.input_names) == 1:
                yield {self.input_names[0]: b}
            else:
                raise ValueError(f"the program has inputs {self.input_names}; pass each batch as a dict")

    def activation_ranges(self, batches: Iterable[Any], names: Iterable[str] | None = None,
                          percentile: float | None = None,
                          max_samples: int = 1 << 20) -> dict[str, tuple[float, float]]:
        """Per-tensor activation ranges over calibration batches, for activation quantisation.

        ``batches`` yields input dicts (or bare arrays for a single-input program).  Every
        floating-point tensor the program computes (and its inputs) is observed; ``names``
        restricts the result.  Returns ``{var_name: (min, max)}`` over all batches.  With
        ``percentile=p`` (e.g. 99.99) each batch contributes its ``(100-p)``-th and ``p``-th
        percentiles (estimated on at most ``max_samples`` evenly strided values) instead of
        min/max, and the result is the mean over batches -- a range robust to outliers.
        """
        wanted = None if names is None else set(names)
        acc: dict[str, list[tuple[float, float]]] = {}

        def observe(name: str, t: torch.Tensor) -> None:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
                return
            if wanted is not None and name not in wanted:
                return
            if percentile is None:
                lo, hi = torch.aminmax(t)
                acc.setdefault(name, []).append((float(lo), float(hi)))
                return
            flat = t.reshape(-1)
            if flat.numel() > max_samples:
                flat = flat[:: math.ceil(flat.numel() / max_samples)]
            q = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0], dtype=torch.float32)
            lo, hi = torch.quantile(flat.float(), q).tolist()
            acc.setdefault(name, []).append((lo, hi))

        with torch.inference_mode():
            for batch in self._batches(batches):
                env, _ = self._prepare_inputs(batch)
                self._run(env, observe)
        if percentile is None:
            return {k: (min(v[0] for v in vals), max(v[1] for v in vals)) for k, vals in acc.items()}
        return {k: (float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals])))
                for k, vals in acc.items()}
