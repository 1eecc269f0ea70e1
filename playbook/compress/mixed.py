"""Mixed per-layer bit-widths: which layer gets how many bits, from a measured per-layer sensitivity table.

The idea (per-layer bit allocation from a per-layer sensitivity measure: HAWQ, arXiv:1905.03696; Apple's
mixed-bit palettization of Stable Diffusion, which picks each layer's palette size from the damage that
palettizing that layer alone does) in three steps, each a plain function here:

1. **measure** (done by the caller, who owns the data): for every layer and every candidate bit-width, the damage
   when *only that layer* is compressed at that width -- ``LayerSensitivity.damage[bits]`` (the quantization
   stage uses the KL divergence of the outputs from the FP32 package's on validation images);
2. **path** (``allocation_path``): start with every layer at the widest choice, then repeatedly lower the one
   layer whose next-narrower width adds the least damage per byte saved.  Every allocation visited is kept:
   a path from the largest to the smallest model, along which the summed per-layer damage grows as slowly as
   the table allows;
3. **verify** (``search_path``): the summed damage is only a prediction (layers interact), so points on the
   path are compressed *together* and checked by the caller's ``accept(allocation)`` (e.g. validation top-1
   within the budget).  Bisection finds the smallest accepted allocation in about log2(path length) checks,
   assuming acceptance only gets harder along the path; every check is recorded, so a reader can see where
   that assumption held.

Sizes are estimated with ``palette_bytes`` (indices plus the look-up table); the package measured afterwards is
what the stage reports.  Knows nothing of notebooks or stages.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

from playbook.config import ConfigError

DEFAULT_BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 6, 8)
PALETTE_BITS = (1, 2, 3, 4, 6, 8)  # what Core ML's constexpr_lut_to_dense can store (coremltools' nbits)


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """One weight tensor: its name in the program, its PyTorch module, its size and the damage per bit-width.

    Attributes:
        name: the program's const op name (what ``op_name_configs`` takes).
        label: the PyTorch module name (``stages.2.body.3``) or, without one, ``name``.
        size: number of elements.
        damage: ``{bits: damage}`` with only this layer compressed at ``bits`` (lower is better).
    """

    name: str
    label: str
    size: int
    damage: Mapping[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "size": self.size,
                "damage": {str(b): float(d) for b, d in sorted(self.damage.items())}}


def check_bit_choices(choices: Sequence[int]) -> tuple[int, ...]:
    """The choices sorted and de-duplicated; each must be a palette size Core ML stores (1, 2, 3, 4, 6, 8)."""
    bad = [b for b in choices if b not in PALETTE_BITS]
    if bad or not choices:
        raise ConfigError(f"bit choices {list(choices)} must be a non-empty subset of {list(PALETTE_BITS)} "
                          "(the palette sizes of constexpr_lut_to_dense)")
    return tuple(sorted(set(int(b) for b in choices)))


def palette_bytes(size: int, bits: int, lut_entry_bytes: int = 2) -> int:
    """Bytes of one palettized tensor: ``size`` indices of ``bits`` bits plus a ``2**bits``-entry look-up table
    (fp16 entries by default).  Storage alignment and the op's metadata are left out."""
    return math.ceil(size * bits / 8) + (2 ** bits) * lut_entry_bytes


def allocation_bytes(layers: Sequence[LayerSensitivity], allocation: Mapping[str, int]) -> int:
    """Estimated bytes of the palettized layers under ``allocation`` (``palette_bytes`` summed)."""
    return sum(palette_bytes(layer.size, allocation[layer.name]) for layer in layers)


def predicted_damage(layers: Sequence[LayerSensitivity], allocation: Mapping[str, int]) -> float:
    """The summed per-layer damage of ``allocation`` (the additive prediction the path follows)."""
    return float(sum(layer.damage[allocation[layer.name]] for layer in layers))


def allocation_path(layers: Sequence[LayerSensitivity], choices: Sequence[int] = DEFAULT_BIT_CHOICES
                    ) -> list[dict[str, int]]:
    """Every allocation of the greedy descent, from all layers at ``max(choices)`` to all at ``min(choices)``.

    Each step lowers one layer to its next-narrower choice: the layer whose step adds the least damage per
    byte saved (a damage *decrease*, which measurement noise can produce, counts as zero; ties go to the
    larger saving).  The path has ``1 + len(layers) * (len(choices) - 1)`` allocations.

    Raises:
        ConfigError: a layer's ``damage`` lacks one of the ``choices``.
    """
    choices = check_bit_choices(choices)
    for layer in layers:
        missing = [b for b in choices if b not in layer.damage]
        if missing:
            raise ConfigError(f"layer {layer.label!r} has no damage measured at {missing} bits; measure every "
                              f"choice in {list(choices)}")
    current = {layer.name: choices[-1] for layer in layers}
    path = [dict(current)]
    while True:
        best: tuple[float, float, str] | None = None
        for layer in layers:
            index = choices.index(current[layer.name])
            if index == 0:
                continue
            wider, narrower = choices[index], choices[index - 1]
            saved = palette_bytes(layer.size, wider) - palette_bytes(layer.size, narrower)
            added = max(layer.damage[narrower] - layer.damage[wider], 0.0)
            key = (added / max(saved, 1), -saved, layer.name)
            if best is None or key < best:
                best = key
        if best is None:
            return path
        name = best[2]
        current[name] = choices[choices.index(current[name]) - 1]
        path.append(dict(current))


@dataclasses.dataclass(frozen=True)
class PathSearch:
    """The outcome of ``search_path``: the chosen index on the path and every check made, in order."""

    chosen: int | None
    checks: tuple[dict[str, Any], ...]


def search_path(path: Sequence[Mapping[str, int]], accept: Callable[[Mapping[str, int]], tuple[bool, dict[str, Any]]]
                ) -> PathSearch:
    """The last (smallest) allocation on ``path`` that ``accept`` takes, by bisection.

    ``accept(allocation)`` returns ``(ok, facts)``; ``facts`` (e.g. measured validation top-1) are recorded with
    each check.  The search assumes acceptance is monotone along the path (true of the predicted damage, not
    guaranteed of a measurement): it starts in the middle and halves the interval between the last accepted and
    the first refused index, so it needs about ``log2(len(path))`` checks, and it checks the first (widest, and
    dearest to compress) allocation only when everything after it was refused.  ``chosen`` is ``None`` when even
    the widest allocation is refused.
    """
    checks: list[dict[str, Any]] = []
    low, high = -1, len(path)  # low: last index known accepted (-1: none yet); high: first known refused
    while high - low > 1:
        middle = (low + high) // 2
        ok, facts = accept(path[middle])
        checks.append({"index": middle, "accepted": bool(ok), **facts})
        if ok:
            low = middle
        else:
            high = middle
    return PathSearch(low if low >= 0 else None, tuple(checks))


def bits_per_weight(layers: Sequence[LayerSensitivity], allocation: Mapping[str, int]) -> float:
    """Average bits per weight of the palettized layers, look-up tables included (``allocation_bytes`` * 8 / n)."""
    n = sum(layer.size for layer in layers)
    return 8.0 * allocation_bytes(layers, allocation) / max(n, 1)
