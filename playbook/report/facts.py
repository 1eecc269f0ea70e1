"""Facts about the run and its variants that several report sections state: the baseline record and the reference
row, a variant's deployment target and description, the delivered package's target and metadata, readable layer
names, where a latency was measured, the baseline's own warnings and the environment line.  Read from records (and
the delivered package's own metadata), never notebook outputs.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from playbook.report.i18n import MESSAGES, Locale
from playbook.report.recommend import ReportData, Row, latency_runtime
from playbook.targets import TARGET_BY_SPEC

_MIL_NAME = re.compile(r"\b(?:const_\d+_to_fp16|const_\d+|[A-Za-z_][\w.]*_weight(?:_to_fp16)?)\b")


# --------------------------------------------------------------------------- small helpers
def _baseline(data: ReportData) -> Any:
    return data.records.get("baseline")


def _reference(data: ReportData) -> Row | None:
    return next((r for r in data.rows if r.is_reference), None)


def deployment_target(row: Row) -> str | None:
    """The variant's minimum deployment target: its record's, else the one its spec version implies."""
    target = row.raw.get("deployment_target")
    if target:
        return str(target)
    spec = (row.raw.io or {}).get("specification_version")
    return TARGET_BY_SPEC.get(int(spec)) if spec else None


def package_target(path: Path | None) -> str | None:
    """The deployment target a saved package's specification version implies (``None`` without the package)."""
    if path is None or not Path(path).exists():
        return None
    try:
        import coremltools as ct

        return TARGET_BY_SPEC.get(int(ct.utils.load_spec(str(path)).specificationVersion))
    except Exception:  # noqa: BLE001 - a damaged package: no target shown
        return None


def package_metadata(path: Path | None) -> dict[str, str] | None:
    """The delivered package's metadata as Xcode shows it (author, license, description, user metadata),
    read from its spec; ``None`` when the package is not on this machine."""
    if path is None or not Path(path).exists():
        return None
    try:
        import logging

        logging.getLogger("coremltools").setLevel(logging.ERROR)
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
    except Exception:  # noqa: BLE001 - a damaged package: the report says it cannot show the metadata
        return None
    meta = spec.description.metadata
    out = {"author": meta.author, "license": meta.license, "shortDescription": meta.shortDescription,
           "versionString": meta.versionString}
    out.update({k: v for k, v in sorted(meta.userDefined.items()) if k != "playbook.classes"})
    return {k: v for k, v in out.items() if v}


def layer_names(data: ReportData) -> dict[str, str]:
    """MIL constant names (``const_2_to_fp16``) -> the PyTorch layer they came from, from the records' layer tables."""
    names: dict[str, str] = {}
    for rec in data.records.values():
        for table in ((rec.get("sensitivity") or {}).get("layers") or [], rec.get("layers") or []):
            for layer in table:
                if isinstance(layer, dict) and layer.get("name") and (layer.get("module") or layer.get("label")):
                    names[str(layer["name"])] = str(layer.get("module") or layer.get("label"))
    return names


def readable(text: str, names: dict[str, str]) -> str:
    """Record text made readable: MIL constant names replaced by PyTorch layer names, Python list syntax removed."""
    text = str(text)
    text = re.sub(r"\[\s*'([^']*)'\s*\]", r"\1", text)  # ['a [24, 1]'] -> a [24, 1]
    text = re.sub(r"'([^']*)'(?=\s*[,\]])", r"\1", text)
    if names:
        text = _MIL_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), text)
    return text


def describe(row: Row, loc: Locale, own: bool = True) -> str:
    """What the variant is: the recipe's own description in English; in Japanese, written from the record's
    technique, algorithm and options (the English description where the record lacks them).  ``own=False``:
    the catalogue's words in English too (short and plain, for the headline)."""
    if loc.lang == "en" and own:
        return row.description + _early_stop(row.raw, loc)
    raw = row.raw
    technique = raw.get("technique")
    if row.target == "coreai" and f"tech.coreai.{technique}" in MESSAGES:  # a Core AI model (stage 02)
        return loc.t(f"tech.coreai.{technique}", precision=str(raw.get("scheme") or "").upper())
    if row.stage == "baseline" or not technique:
        precision = str(raw.get("precision") or "")
        return loc.t(f"tech.{precision}") if precision in ("fp32", "fp16") else row.description
    if technique == "distillation":
        return _describe_student(row, loc, short=not own) + (_early_stop(raw, loc) if own else "")
    if technique == "architecture":
        return _describe_family(row, loc)
    text = _describe_recipe(raw.get("recipe") or {}, technique, loc, raw.get("details") or {}, fine_tune=own)
    if text is None:
        return row.description
    keep = re.search(r"-keep(\d+)$", row.name)
    if keep:
        text += loc.t("tech.keep-one") if keep.group(1) == "1" else loc.t("tech.keep", n=keep.group(1))
    return text + (_early_stop(raw, loc) if own else "")


def _early_stop(raw: dict[str, Any], loc: Locale) -> str:
    """Where a variant's fine-tune stopped early on its agreement with FP32 (``details.early_stop``), else ""."""
    stop = (raw.get("details") or {}).get("early_stop") or {}
    if not stop.get("stopped_early"):
        return ""
    return loc.t("tech.stopped", run=loc.num(stop["steps_run"], 0), planned=loc.num(stop["planned_steps"], 0),
                 images=loc.num(stop["images"], 0), patience=stop["patience"], best=stop["best_step"])


def _describe_recipe(recipe: dict[str, Any], technique: str, loc: Locale, details: dict[str, Any],
                     fine_tune: bool = True) -> str | None:
    """A compression recipe in ``loc``'s words, from its technique, PyTorch algorithm and options, and from what the
    variant's ``details`` say it did (the calibration images its bias correction used); ``None`` when the catalogue
    has no words for it.  ``fine_tune``: also the recipe's own fine-tune learning rate and step factor, where it
    sets them (options ``lr``, ``steps_factor``)."""
    bits, options = recipe.get("bits"), recipe.get("options") or {}
    algorithm = recipe.get("algorithm") or ""
    equalized = (loc.t("tech.equalized") if "equalize" in (recipe.get("prepare") or []) and algorithm != "ptp"
                 else "")  # ptp's own words say it
    if technique == "mixed-bits":
        choices = options.get("bit_choices") or []
        return loc.t("tech.mixed-bits", choices=loc.join([str(b) for b in choices]),
                     share=loc.num(100 * float(options.get("budget_share", 1.0)), 0))
    if algorithm and f"tech.algo.{algorithm}" in MESSAGES:
        if algorithm == "dkm" and options.get("allocation_from"):
            text = loc.t("tech.algo.dkm-mixed", source=options["allocation_from"])
        else:
            key = ("gptq-nf" if algorithm == "gptq" and options.get("enable_normal_float") else
                   "qat-weights" if algorithm == "qat" and options.get("activation_dtype") == "float32" else algorithm)
            text = loc.t(f"tech.algo.{key}", bits=_whole(options.get("n_bits", bits), loc),
                         sparsity=loc.num(100 * float(options.get("target_sparsity", 0.0)), 0))
        if options.get("granularity") == "per_grouped_channel" and options.get("group_size") == 1:
            text += loc.t("tech.per-channel-palette")
        if options.get("quantization_scheme") == "affine":
            text += loc.t("tech.affine")
        text += equalized
        if fine_tune and options.get("lr"):
            text += loc.t("tech.lr", lr=f"{float(options['lr']):g}")
        if fine_tune and options.get("steps_factor"):
            text += loc.t("tech.steps-factor", factor=f"{float(options['steps_factor']):g}")
        if fine_tune and options.get("early_stop") is False:
            text += loc.t("tech.no-early-stop")
        if options.get("sequential"):
            text += loc.t("tech.sequential")
        if options.get("correct_bias"):
            used = (details.get("bias_correction") or {}).get("images", options["correct_bias"])
            text += loc.t("tech.bias", images=loc.num(used, 0))
        steps = recipe.get("steps") or []
        palette = next((opts for kind, opts in steps if kind == "palettize"), None)
        if palette is not None:
            text += loc.t("tech.then-palette", bits=palette.get("nbits", "—"))
        int8_after = any(kind == "quantize" and opts.get("dtype") == "int8" for kind, opts in steps)
        if algorithm in ("gptq", "qat") and int8_after:
            text += loc.t("tech.then-int8")
        return text
    steps = [(kind, opts) for kind, opts in recipe.get("steps") or []]
    if technique in ("pruning", "joint") and steps and steps[0][0] == "prune":
        return _describe_steps(steps, loc) + equalized
    if f"tech.{technique}" not in MESSAGES:
        return None
    values = 2 ** int(bits) if isinstance(bits, (int, float)) and float(bits).is_integer() else "—"
    return loc.t(f"tech.{technique}", bits=_whole(bits, loc), values=values) + _describe_steps(steps, loc) + equalized


def _describe_steps(steps: list[tuple[str, dict[str, Any]]], loc: Locale) -> str:
    """What a Core ML recipe's steps (``coreml.optimize`` calls) add to its technique's words: how a pruning step
    chooses its zeros, a later step's compression of the survivors (joint compression), and the granularity of a
    quantization or palette step (scales per block, palettes per group of output channels)."""
    text = ""
    for i, (kind, opts) in enumerate(steps):
        if kind == "prune" and i == 0:
            if opts.get("n_m_ratio"):
                n, m = opts["n_m_ratio"]
                text += loc.t("tech.pruning-n-m", n=n, m=m)
            else:
                share = opts.get("target_sparsity")
                text += loc.t("tech.pruning-share", pct=loc.num(100 * float(share), 0)) if share else \
                    loc.t("tech.pruning")
            continue
        if i > 0 and kind == "palettize":
            text += loc.t("tech.then-palette", bits=opts.get("nbits", "—"))
        elif i > 0 and kind == "quantize":
            text += loc.t("tech.then-quantized", dtype=opts.get("dtype", "—"))
        if opts.get("granularity") == "per_block" and opts.get("block_size"):
            text += loc.t("tech.per-block", n=opts["block_size"])
        elif opts.get("granularity") == "per_grouped_channel" and opts.get("group_size"):
            text += (loc.t("tech.per-channel-palette") if opts["group_size"] == 1 else
                     loc.t("tech.grouped-palette", n=opts["group_size"]))
    return text


def _whole(value: Any, loc: Locale) -> str:
    """A bit-width as a whole number in ``loc``'s format, "—" when the record has none."""
    return loc.num(value, 0) if isinstance(value, (int, float)) else "—"


def _describe_student(row: Row, loc: Locale, short: bool = False) -> str:
    """A distilled student, plain or compressed with a recipe (``short``: without the recipe's id)."""
    raw = row.raw
    student, recipe = raw.get("student"), raw.get("recipe")
    if not student:
        return row.description
    if recipe:
        what = _describe_recipe(recipe, str(recipe.get("technique") or ""), loc, raw.get("details") or {})
        if short and what:
            return loc.t("tech.student-short", student=student, what=what)
        return loc.t("tech.student-compressed", student=student, recipe=recipe.get("name", ""),
                     what=what or recipe.get("description", ""))
    params, ratio = raw.get("student_parameters"), raw.get("parameter_ratio")
    if params is None or ratio is None:
        return row.description
    return loc.t("tech.student", student=student, params=loc.num(params, 0), ratio=loc.pct(100 * float(ratio), 0))


def _describe_family(row: Row, loc: Locale) -> str:
    """A model family trained for the architecture sweep."""
    raw = row.raw
    training = raw.get("training") or {}
    family, knobs, epochs, lr = raw.get("family"), raw.get("knobs"), training.get("epochs"), training.get("lr")
    if not family or knobs is None or epochs is None or lr is None:
        return row.description
    knobs_text = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "—"
    if training.get("steps"):  # the baseline's fixed-step fine-tune: its step count, not its 0 epochs
        return loc.t("tech.family-steps", family=family, knobs=knobs_text, steps=loc.num(training["steps"], 0), lr=lr)
    return loc.t("tech.family", family=family, knobs=knobs_text, epochs=epochs, lr=lr)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def own_warnings(data: ReportData, loc: Locale) -> list[str]:
    """The report's own checks of the baseline: near chance, still improving (used when the records carry none)."""
    base = _baseline(data)
    ref = _reference(data)
    out = []
    classes = len(((base.get("dataset") or {}).get("classes") or [])) if base else 0
    if ref is not None and ref.top1 is not None and classes > 1:
        chance = 100.0 / classes
        if ref.top1 < 1.5 * chance + 5.0:
            out.append(loc.t("alert.chance", top1=loc.pct(ref.top1, 1), chance=loc.pct(chance, 1), classes=classes))
    history = ((base.get("training") or {}).get("history") or []) if base else []
    schedule = ((base.get("train_config") or {}).get("schedule") if base else None) or ""
    # A one-cycle schedule anneals the learning rate at the end, so a last-epoch jump is expected there: that case
    # is left to the warnings the baseline stage itself records.
    if len(history) >= 2 and schedule != "onecycle":
        before, after = history[-2].get("val_top1"), history[-1].get("val_top1")
        if before is not None and after is not None and after - before > 0.5 and \
                after >= max(h.get("val_top1", 0) for h in history):
            out.append(loc.t("alert.improving", before=loc.pct(before, 1), after=loc.pct(after, 1)))
    return out


def _where(row: Row, loc: Locale) -> str:
    runtime = latency_runtime(row)
    if row.latency_ms is None:
        return loc.t("not_measured")
    if runtime == "reference":
        return loc.t("where.reference")
    if runtime == "coreml":
        prov = row.provenance.get("latency") or {}
        units = f" ({prov.get('compute_units')})" if prov.get("compute_units") else ""
        device = f", {prov.get('device')}" if prov.get("device") else ""
        return loc.t("where.coreml", units=units, device=device)
    prov = row.provenance.get("latency") or {}
    if runtime == "coreai-host":
        return loc.t("where.coreai_host", device=prov.get("device") or loc.t("where.unknown"))
    if runtime == "torch":
        threads = prov.get("threads")
        return loc.t("where.torch", device=prov.get("device") or loc.t("where.unknown"),
                     threads=f", {threads} thread{'s' if threads != 1 else ''}" if threads and loc.lang == "en"
                     else (f"、{threads} スレッド" if threads else ""))
    return str(prov.get("device") or prov.get("note") or loc.t("where.unknown"))


def _environment_line(data: ReportData) -> str:
    env = next((rec.environment for rec in data.records.values() if rec.environment), None)
    if not isinstance(env, dict):
        return ""
    versions = env.get("versions") or {}
    vtxt = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "coremltools"))
    return ", ".join(str(p) for p in (env.get("os"), env.get("cpu"), f"Python {env.get('python')}" if env.get(
        "python") else None, vtxt) if p)


WHERE_TIERS = {"coreml": "device", "torch": "host", "coreai-host": "host", "reference": "reference"}
WHERE_PREFIX = {"device": "D", "host": "H", "reference": "R"}


def where_key(row: Row) -> str | None:
    """Which tier measured the row's latency: ``device`` (Core ML), ``host`` (PyTorch on the host's CPU),
    ``reference`` (the reference executor), ``None`` when not measured."""
    if row.latency_ms is None:
        return None
    return WHERE_TIERS.get(str(latency_runtime(row)), "host")


def _where_short(row: Row, loc: Locale) -> str:
    """Where the row's latency was measured, in a few words (for a card or a chart)."""
    tier = where_key(row)
    if tier is None:
        return loc.t("not_measured")
    if tier == "device":
        prov = row.provenance.get("latency") or {}
        return loc.t("where.device_short", device=prov.get("device") or "—")
    if latency_runtime(row) == "coreai-host":
        return loc.t("where.coreai_host_short")
    return loc.t(f"where.{tier}_short")


def provisional(data: ReportData, loc: Locale) -> bool:
    """The recommendation is tempered: a smoke run, or the baseline carries (or shows) a warning."""
    return data.smoke or bool(data.warnings) or bool(own_warnings(data, loc))
