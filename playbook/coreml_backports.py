"""Fixes that coremltools merged after the release installed here, applied only where that release lacks them.

Each one names the coremltools issue and pull request it backports and checks the installed code before it changes
anything, so a coremltools release with the fix leaves it unused.  ``coreml.conversion_passes`` applies them: every
conversion the playbook makes takes its passes from there.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def backport_scalar_cast() -> bool:
    """Make coremltools' torch frontend fold ``aten::Int`` / ``aten::Bool`` of a one-element tensor under NumPy 2.4.

    coremltools 9.0's ``_cast`` calls ``int(x.val)`` on the folded value, a one-element array when the value comes
    from a tensor (e.g. ``bs = inputs.size(0)`` in efficientnet-lite0's ``forward`` once coreai-opt has rewritten the
    model); NumPy 2.4 made that a ``TypeError`` ("only 0-dimensional arrays can be converted to Python scalars",
    coremltools issue #2633, fixed after 9.0 by pull request #2632 with ``squeeze()``).  This registers both ops
    again with that fix, only where the installed ``_cast`` still has the old line; returns whether it did.
    Idempotent (cached)."""
    import inspect

    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    if "dtype(x.val)" not in inspect.getsource(ops._cast):
        return False

    def cast(context: Any, node: Any, dtype: type, dtype_name: str) -> None:
        x = ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and not isinstance(x.val, dtype):
            context.add(mb.const(val=dtype(np.asarray(x.val).squeeze()), name=node.name), node.name)
        else:
            ops._cast(context, node, dtype, dtype_name)

    def _int(context: Any, node: Any) -> None:
        cast(context, node, int, "int32")

    def _bool(context: Any, node: Any) -> None:
        cast(context, node, bool, "bool")

    register_torch_op(_int, torch_alias=["int"], override=True)
    register_torch_op(_bool, torch_alias=["bool"], override=True)
    return True
