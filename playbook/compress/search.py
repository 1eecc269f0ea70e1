"""Data-guided choices on a Core ML program: per-layer probes, the mixed bit-width allocation, the layer sensitivity.

Three objects, each owning its cache and taking the data through one scoring function, ``predict(package, split)
-> scores`` (the caller's prediction interface), so nothing here knows which runtime, stage or notebook asks:

* ``LayerProbes``: validation figures with only one layer compressed (one recipe step, optionally at another
  palette size), cached by what the compressor receives, so the analyses below share the probes they have in
  common (a uniform ``palettize-3bit`` probe is the mixed analysis's 3-bit probe);
* ``BitAllocator``: per-layer palette sizes for a mixed-bit recipe (``compress.mixed``: measure the damage per
  layer and size, walk the greedy path, check points of it on validation) and the package of the chosen point;
* ``LayerSensitivity``-ranking ``rank_layers`` and ``keep_curve``: the layers ranked by the damage that compressing
  each alone does, and validation top-1 as the ``k`` most damaging stay float (with a control keeping the least
  damaging ones).

The test split is never used here: every figure comes from the validation images the caller passes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from playbook.compress.coreml_side import CompressedPackage, WeightLayer, compress_package, weight_file_bytes
from playbook.compress.mixed import (LayerSensitivity, PathSearch, allocation_bytes, allocation_path,
                                     bits_per_weight, predicted_damage, search_path)
from playbook.compress.recipes import CompressionError, Recipe
from playbook.coreml import directory_size, package_info
from playbook.data import Dataset, Split
from playbook.metrics import fidelity

Predict = Callable[[Path, Split], np.ndarray]
"""The scoring function: class scores of a saved package on the images of a split."""


def validation_subset(dataset: Dataset, n: int = 0) -> Split:
    """The validation split (the calibration split when there is none), its first ``n`` images; ``n=0``: all."""
    split = dataset.val if len(dataset.val) else dataset.calib
    return split.head(min(n, len(split))) if n else split


def scores_summary(ref: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Validation top-1, KL divergence from the reference's outputs and top-1 agreement with it."""
    fid = fidelity(ref, scores)
    return {"val_top1": float(100.0 * (scores.argmax(1) == labels).mean()), "kl": fid.kl_divergence,
            "agreement": fid.top1_agreement}


class ValidationReference:
    """The uncompressed package's scores on validation splits (computed once per split): what probes compare to."""

    def __init__(self, package: Path, predict: Predict) -> None:
        self.package = Path(package)
        self.predict = predict
        self._scores: dict[str, np.ndarray] = {}

    def scores(self, split: Split) -> tuple[np.ndarray, float]:
        """The reference's scores on ``split`` and its top-1 there."""
        key = hashlib.sha256(split.labels.tobytes() + split.images[:8].tobytes()).hexdigest() + str(len(split))
        if key not in self._scores:
            self._scores[key] = self.predict(self.package, split)
        scores = self._scores[key]
        return scores, float(100.0 * (scores.argmax(1) == split.labels).mean())


class LayerProbes:
    """Validation figures with only one layer compressed by a recipe's first Core ML step.

    ``work_root`` is where the throw-away probe packages are written (a temporary folder inside it, removed after
    each probe)."""

    def __init__(self, reference: ValidationReference, weight_threshold: int, work_root: Path) -> None:
        self.reference = reference
        self.weight_threshold = weight_threshold
        self.work_root = Path(work_root)
        self._cache: dict[tuple[str, ...], dict[str, float]] = {}

    def probe(self, recipe: Recipe, base: Path, layer: str, split: Split, nbits: int | None = None) -> dict[str, float]:
        """``scores_summary`` of ``base`` with only ``layer`` compressed by ``recipe`` (at ``nbits`` when given)."""
        kind, options = recipe.steps[0]
        effective = {**options, **({"nbits": nbits} if nbits is not None else {})}
        key = (str(base), kind, json.dumps(effective, sort_keys=True, default=str), layer, str(len(split)))
        if key not in self._cache:
            ref_scores, _ = self.reference.scores(split)
            with self.workspace("probe") as work:
                made = compress_package(recipe, base, work, "probe", self.weight_threshold, only=[layer],
                                        overrides={layer: {"nbits": nbits}} if nbits is not None else None)
                scores = self.reference.predict(made.path, split)
            self._cache[key] = scores_summary(ref_scores, scores, split.labels)
        return self._cache[key]

    def evaluate(self, recipe: Recipe, base: Path, split: Split, **options: Any) -> dict[str, float]:
        """``scores_summary`` (and ``size_mb``) of the whole recipe applied with ``options`` of ``compress_package``
        (``exclude``, ``overrides``), on ``split``; the package is thrown away."""
        ref_scores, _ = self.reference.scores(split)
        with self.workspace("check") as work:
            made = compress_package(recipe, base, work, "check", self.weight_threshold, **options)
            scores = self.reference.predict(made.path, split)
            out: dict[str, float] = scores_summary(ref_scores, scores, split.labels)
            out["size_mb"] = package_info(made.path).size_mb
            out["weights_bytes"] = float(weight_file_bytes(made.path))
        return out

    @contextlib.contextmanager
    def workspace(self, prefix: str) -> Iterator[Path]:
        """A temporary folder inside ``work_root`` (created if needed), removed on exit."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{prefix}-", dir=self.work_root, ignore_cleanup_errors=True) as name:
            yield Path(name)


# --------------------------------------------------------------------------- mixed bit-widths
@dataclasses.dataclass(frozen=True)
class AllocationSettings:
    """How a mixed-bit allocation is chosen.

    Attributes:
        bit_choices: palette sizes a layer may get (the recipe's when empty); e.g. fewer in smoke runs.
        probe_images: validation images of each per-layer probe.
        check_images: validation images of each allocation check (0: the whole validation split).
        max_top1_drop: the accuracy budget in points; a recipe's ``budget_share`` takes a share of it.
        max_bytes: a size budget for the package (0: none).  With one, the allocation is the *widest* point of the
            path whose package, compressed and measured, is at most this many bytes: the least damage the size
            allows (a distilled student that must be N times smaller than its teacher).  The accuracy check is
            then run on that point and recorded, but does not choose.
    """

    bit_choices: tuple[int, ...] = ()
    probe_images: int = 1000
    check_images: int = 0
    max_top1_drop: float = 1.0
    max_bytes: int = 0

    def choices_for(self, recipe: Recipe) -> tuple[int, ...]:
        """The palette sizes ``recipe`` may give a layer here: the recipe's, narrowed to ``bit_choices`` when at least
        two of them remain."""
        narrowed = tuple(b for b in recipe.bit_choices if b in self.bit_choices)
        return narrowed if self.bit_choices and len(narrowed) >= 2 else recipe.bit_choices


class BitAllocator:
    """Per-layer palette sizes for mixed-bit recipes, measured on validation images, and their packages.

    ``layers_of(base)`` lists the program's weights (``compress.weight_layers`` with the PyTorch module names).  The
    per-layer damage table is measured once per (program, choices); the allocation checks are cached per program
    and choices too.  ``allocations`` keeps, per recipe name, the details of what was chosen (the record's
    ``mixed_bits``)."""

    def __init__(self, probes: LayerProbes, dataset: Dataset, settings: AllocationSettings,
                 layers_of: Callable[[Path], Sequence[WeightLayer]]) -> None:
        self.probes = probes
        self.dataset = dataset
        self.settings = settings
        self.layers_of = layers_of
        self.allocations: dict[str, dict[str, Any]] = {}
        self._tables: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        self._checks: dict[tuple[str, tuple[int, ...]], dict[tuple[tuple[str, int], ...], dict[str, Any]]] = {}

    def layer_damage(self, recipe: Recipe, base: Path) -> list[LayerSensitivity]:
        """Per-layer damage at every palette size below the widest: one layer palettized at a time (the others
        float), KL divergence of the outputs from the reference's on ``probe_images`` validation images.

        The widest choice is not probed: it is where the allocation path starts, and that whole allocation is
        checked on validation like every other point (its per-layer damage enters the path as 0)."""
        choices = self.settings.choices_for(recipe)
        key = (str(base), tuple(choices))
        if key in self._tables:
            return self._tables[key]["layers"]
        start = time.perf_counter()
        layers = [layer for layer in self.layers_of(base) if layer.eligible]
        split = validation_subset(self.dataset, self.settings.probe_images)
        ref_scores, ref_top1 = self.probes.reference.scores(split)
        rows, table = [], []
        for layer in tqdm(layers, desc="damage per layer and palette size", leave=False):
            damage: dict[int, float] = {choices[-1]: 0.0}
            delta: dict[int, float | None] = {choices[-1]: None}
            for bits in choices[:-1]:
                summary = self.probes.probe(recipe, base, layer.name, split, nbits=bits)
                damage[bits] = summary["kl"]
                delta[bits] = summary["val_top1"] - ref_top1
            table.append(LayerSensitivity(layer.name, layer.label, layer.size, damage))
            rows.append({"name": layer.name, "label": layer.label, "module": layer.module,
                         "shape": list(layer.shape), "size": layer.size,
                         "kl": {str(b): (damage[b] if b != choices[-1] else None) for b in choices},
                         "val_delta_top1": {str(b): delta[b] for b in choices}})
        self._tables[key] = {"layers": table, "rows": rows, "val_images": len(split),
                             "seconds": time.perf_counter() - start}
        return table

    def allocate(self, recipe: Recipe, base: Path, out_dir: Path, stem: str,
                 metadata: dict[str, Any] | None = None) -> tuple[CompressedPackage, dict[str, Any]]:
        """Choose ``recipe``'s per-layer palette sizes on ``base`` and write ``out_dir/<stem>.mlpackage``.

        The greedy path of ``compress.mixed.allocation_path`` runs from every layer at the widest choice to every
        layer at the narrowest; points of it are palettized together and checked on ``check_images`` validation
        images: accepted when validation top-1 is within ``budget_share * max_top1_drop`` points of the reference's.
        The smallest accepted point is written (or, if none is, the widest one, with ``met_budget=False``)."""
        start = time.perf_counter()
        choices = self.settings.choices_for(recipe)
        layers = self.layer_damage(recipe, base)
        path = allocation_path(layers, choices)
        share = float(recipe.options.get("budget_share", 1.0))
        budget = share * self.settings.max_top1_drop
        split = validation_subset(self.dataset, self.settings.check_images)
        ref_scores, ref_top1 = self.probes.reference.scores(split)
        cache = self._checks.setdefault((str(base), tuple(choices)), {})

        def accept(allocation: dict[str, int]) -> tuple[bool, dict[str, Any]]:
            key = tuple(sorted(allocation.items()))
            if key not in cache:
                summary = self.probes.evaluate(recipe, base, split,
                                               overrides={n: {"nbits": b} for n, b in allocation.items()})
                cache[key] = {"val_delta_top1": summary["val_top1"] - ref_top1, "val_kl": summary["kl"],
                              "weights_bytes": int(summary["weights_bytes"])}
            facts = {**cache[key], "bits_per_weight": bits_per_weight(layers, allocation),
                     "predicted_kl": predicted_damage(layers, allocation)}
            return facts["val_delta_top1"] >= -budget, facts

        sized = self.settings.max_bytes > 0
        size_checks: list[dict[str, Any]] = []
        if sized:  # the widest point within the size budget; its accuracy is checked and recorded, not chosen by
            index, size_checks = self._fit_size(recipe, base, path, stem, metadata)
            checks: tuple[dict[str, Any], ...] = ()
            if index is not None:
                ok, facts = accept(path[index])
                checks = ({"index": index, "accepted": bool(ok), **facts},)
            search = PathSearch(index, checks)
        else:
            search = search_path(path, accept)
        chosen = path[search.chosen if search.chosen is not None else (len(path) - 1 if sized else 0)]
        made = compress_package(recipe, base, out_dir, stem, self.probes.weight_threshold,
                                overrides={n: {"nbits": b} for n, b in chosen.items()}, metadata=metadata)
        by_name = {layer.name: layer for layer in layers}
        table = self._tables[(str(base), tuple(choices))]
        allocation = [{"name": row["name"], "label": row["label"], "module": row["module"], "shape": row["shape"],
                       "size": row["size"], "bits": chosen[row["name"]], "kl": row["kl"]} for row in table["rows"]]
        details = {
            "messages": list(made.messages), "bit_choices": list(choices), "budget_points": budget,
            "budget_share": share, "val_images": len(split), "probe_images": table["val_images"],
            "val_reference_top1": ref_top1, "allocation": allocation,
            "met_budget": search.chosen is not None and (not sized or search.checks[-1]["accepted"]),
            "path_length": len(path), "chosen_index": search.chosen, "checks": list(search.checks),
            "estimated_bytes": allocation_bytes(layers, chosen), "bits_per_weight": bits_per_weight(layers, chosen),
            "predicted_kl": predicted_damage([by_name[n] for n in chosen], chosen),
            "probe_seconds": table["seconds"], "seconds": time.perf_counter() - start,
        }
        if sized:
            details.update(max_bytes=self.settings.max_bytes, size_checks=size_checks,
                           fits_size=search.chosen is not None)
        self.allocations[recipe.name] = details
        return made, details

    def _fit_size(self, recipe: Recipe, base: Path, path: Sequence[dict[str, int]], stem: str,
                  metadata: dict[str, Any] | None) -> tuple[int | None, list[dict[str, Any]]]:
        """The widest point of ``path`` whose package is at most ``settings.max_bytes`` bytes: bisection on the
        measured size of packages compressed into a scratch folder as the final one will be (same name and
        metadata); sizes fall along the path, so about ``log2(len(path))`` compressions.  Returns the index (``None``
        when even the narrowest point is too large) and the size checks."""
        limit = self.settings.max_bytes

        def fits(allocation: dict[str, int]) -> tuple[bool, dict[str, Any]]:
            with self.probes.workspace("size") as work:
                made = compress_package(recipe, base, work, stem, self.probes.weight_threshold,
                                        overrides={n: {"nbits": b} for n, b in allocation.items()}, metadata=metadata)
                size = directory_size(made.path)
            return size <= limit, {"package_bytes": size}

        backwards = list(reversed(path))  # smallest first: "fits" holds from the start and fails past some point
        found = search_path(backwards, fits)
        index = None if found.chosen is None else len(path) - 1 - found.chosen
        return index, [{**c, "index": len(path) - 1 - c["index"]} for c in found.checks]

    def module_bits(self, recipe: Recipe, source: Recipe, base: Path) -> dict[str, int]:
        """The palette size per PyTorch module that the mixed-bit recipe ``source`` chose on ``base`` (what a DKM
        recipe with ``allocation_from`` trains with).  When ``source`` has not been allocated yet, its allocation
        is chosen here (its package thrown away) and kept in ``allocations`` like any other."""
        if source.name not in self.allocations:
            with self.probes.workspace("allocation") as work:
                self.allocate(source, base, work, source.name)
        rows = self.allocations[source.name]["allocation"]
        unnamed = [row["name"] for row in rows if not row["module"]]
        if unnamed:
            raise CompressionError(recipe.name, f"weights {unnamed} could not be matched to PyTorch modules",
                                   "the mixed allocation names program weights; DKM needs module names")
        return {row["module"]: int(row["bits"]) for row in rows}


# --------------------------------------------------------------------------- layer sensitivity
def rank_layers(probes: LayerProbes, recipe: Recipe, base: Path, layers: Sequence[WeightLayer],
                split: Split) -> list[dict[str, Any]]:
    """The eligible ``layers`` ranked by the damage (KL from the reference's outputs, then validation top-1) that
    compressing each one alone with ``recipe`` does, most damaging first."""
    _, ref_top1 = probes.reference.scores(split)
    ranked = []
    for layer in layers:
        res = probes.probe(recipe, base, layer.name, split)
        ranked.append({"name": layer.name, "label": layer.label, "module": layer.module,
                       "shape": list(layer.shape), "size": layer.size, "consumer": layer.consumer,
                       "kl": res["kl"], "val_top1": res["val_top1"],
                       "val_delta_top1": res["val_top1"] - ref_top1, "agreement": res["agreement"]})
    ranked.sort(key=lambda e: (-e["kl"], e["val_delta_top1"]))
    return ranked


def keep_curve(probes: LayerProbes, recipe: Recipe, base: Path, ranked: Sequence[dict[str, Any]], split: Split,
               max_exceptions: int, max_top1_drop: float) -> dict[str, Any]:
    """Validation figures of the whole recipe with the ``k`` most damaging layers kept float, ``k = 0..max_exceptions``;
    the smallest ``k >= 1`` within ``max_top1_drop`` points (else the largest ``k``) is ``chosen``; a control keeps the
    ``k`` least damaging layers instead."""
    _, ref_top1 = probes.reference.scores(split)
    curve = []
    for k in range(0, min(max_exceptions, len(ranked)) + 1):
        res = probes.evaluate(recipe, base, split, exclude=[e["name"] for e in ranked[:k]])
        curve.append({"kept": k, "kept_layers": [e["label"] for e in ranked[:k]],
                      "val_delta_top1": res["val_top1"] - ref_top1, **_public(res)})
    fits = [c for c in curve if c["kept"] >= 1 and c["val_delta_top1"] >= -max_top1_drop]
    chosen = fits[0]["kept"] if fits else curve[-1]["kept"]
    control = None
    if chosen >= 1 and len(ranked) > chosen:
        res = probes.evaluate(recipe, base, split, exclude=[e["name"] for e in ranked[-chosen:]])
        control = {"kept": chosen, "kept_layers": [e["label"] for e in ranked[-chosen:]],
                   "val_delta_top1": res["val_top1"] - ref_top1, **_public(res)}
    return {"keep_curve": curve, "chosen_kept": chosen, "control": control,
            "keep": [e["name"] for e in ranked[:chosen]], "kept_labels": [e["label"] for e in ranked[:chosen]]}


def _public(summary: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in summary.items() if k != "weights_bytes"}
