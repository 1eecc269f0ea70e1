"""The pitfalls the stages record (English text written by each stage) in the report's other languages.

A pitfall is recorded as a title and a detail in English.  ``translate`` recognises the known ones by their
title's stable wording (``PATTERNS``: a regular expression on the title and one on the detail, whose named groups
are the record's own names and figures) and writes them again from the catalogue (``pit.<key>.title`` /
``pit.<key>.detail`` in ``messages.py``) with those figures.  A pitfall it does not recognise, or whose detail has
changed shape, is shown as recorded, in English, and the page says so.
"""
from __future__ import annotations

import re
from typing import Any

from playbook.report.i18n import Locale

_NUM = r"[−+-]?[\d,.]+"
# (key, title pattern, detail patterns): each detail pattern names the catalogue message that writes it
# (``pit.<key>.<detail key>``); named groups are filled into the messages.
PATTERNS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("temperature", rf"wrong temperature: T = (?P<bad>{_NUM}) costs (?P<cost>{_NUM}) points against T = (?P<good>{_NUM})",
     ((rf"validation top-1 (?P<bad_acc>{_NUM})% at T = {_NUM} vs (?P<good_acc>{_NUM})% at T = {_NUM} \(scratch "
       rf"(?P<scratch>{_NUM})%; alpha = (?P<alpha>{_NUM}), one seed, (?P<images>{_NUM}) training images\): .*", "detail"),)),
    ("seeds", r"distillation's gain is small or not established over seeds",
     ((rf"gain (?P<mean>{_NUM}) ± (?P<sd>{_NUM}) points over (?P<n>\d+) seeds, paired t-test p = (?P<p>[^:]+?): .*",
       "detail"),)),
    ("student_hurt", r"(?P<recipe>\S+) hurts the small student more than the teacher",
     ((rf"(?P<student>{_NUM}) points on the student against (?P<teacher>{_NUM}) on the teacher: .*", "detail"),)),
    ("student_size", rf"the shipped student misses min_size_ratio=(?P<want>{_NUM})",
     ((rf"(?P<ratio>{_NUM})x smaller than the teacher's FP32 package: (?P<size>{_NUM}) KB measured against "
       rf"(?P<predicted>{_NUM}) KB predicted .*", "detail"),)),
    ("student_big", r"the student is more than 1/5 of the teacher",
     ((r"(?P<student>[\d,]+) vs (?P<teacher>[\d,]+) parameters \((?P<ratio>\d+%)\): .*", "detail"),)),
    ("overcompression", r"over-compression: (?P<names>.+?) (?P<what>collapses? without data|loses? far more than the "
                        r"budget|collapse.*)",
     ((r"(?P<figures>.+?); more fine-tuning steps, a lower target, or layer exceptions", "detail_data"),
      (r"(?P<figures>.+?); (?:without data|with data|even).*", "detail"))),
    ("threshold", r"weight_threshold=(?P<threshold>\d+): (?P<n>\d+) weight tensor\(s\) stay uncompressed on the Core "
                  r"ML side",
     ((r"(?P<layers>.+); coremltools' default \(2048\) would leave (?P<left>\d+) of (?P<total>\d+) weights of this "
       r"small model uncompressed", "detail"),)),
    ("block", r"(?P<name>\S+): some weights were skipped or got an adapted block size",
     ((r"(?P<items>.+) \((?P<n>\d+) weights compressed\)", "detail"),)),
    ("no_allocation", rf"(?P<name>\S+): no allocation met (?P<budget>{_NUM}) points on validation",
     ((r"not even the widest palette on every layer met it; .*", "detail"),)),
    ("batchnorm", r"batch_norm op\(s\) left in (?:(?P<n>\d+) programs|the program of (?P<one>\S+))",
     ((r"(?P<counts>.+?); the converted program applies BatchNorm as separate ops .*", "detail"),)),
    ("dkm_slow", r"(?P<name>\S+): DKM fine-tuning is slow on a CPU",
     ((rf"(?P<seconds>{_NUM}) s for (?P<steps>\d+) steps \((?P<per>{_NUM}) s per step of (?P<batch>\d+) images on "
       r"this machine\).*", "detail"),)),
    ("target", r"(?P<n>\d+) recipe\(s\) needed a newer deployment target",
     ((r"(?P<names>.+) were re-exported at (?P<target>\S+): these packages load only on (?P<ios>iOS \d+) / "
       r"(?P<macos>macOS \d+) or later .*", "detail"),)),
    ("w8a8_macos", r"W8A8 on the Core ML model needs macOS", ((r".*", "detail"),)),
    ("noisy", r"noisy timings: (?P<n>\d+) of (?P<total>\d+) measurements have p90 above twice the median",
     ((rf"worst: (?P<name>\S+) with (?P<setting>.+?), p90 (?P<p90>{_NUM}) ms vs median (?P<median>{_NUM}) ms \(CV "
       rf"(?P<cv>{_NUM})\).*", "detail"),)),
    ("threads", r"more threads were slower on this host",
     ((rf"(?P<name>\S+): (?P<n>\d+) threads (?P<multi>{_NUM}) ms vs 1 thread (?P<one>{_NUM}) ms median.*", "detail"),)),
    ("not_here", r"(?P<settings>.+): not measured here",
     ((r"needs macOS: coremltools runs Core ML predictions only on macOS \(this is (?P<os>[^)]+)\).*", "macos"),
      (r"no CUDA device visible to (?P<torch>.+?) on this machine", "cuda"))),
    ("macs", r"MACs do not predict latency",
     ((rf"(?P<cheap>\S+) has fewer MACs \((?P<cheap_macs>[\d,]+)\) than (?P<costly>\S+) \((?P<costly_macs>[\d,]+)\) "
       rf"but a higher host latency \((?P<cheap_ms>{_NUM}) vs (?P<costly_ms>{_NUM}) ms.*", "detail"),)),
    ("placement", r"placement on the Neural Engine is predicted, not measured",
     ((r"MLComputePlan needs macOS (?P<version>[\d.]+) or later.*this is (?P<os>\w+),.*", "detail"),)),
    ("unmatched", r"the budget is not matched with the baseline",
     ((r"families trained (?P<epochs>\d+) epoch\(s\), the baseline (?P<base>\d+)(?: epoch\(s\))?: .*", "detail"),
      (r"families trained (?P<epochs>\d+) epoch\(s\), the baseline (?P<base>\d+) steps: .*", "detail_steps"))),
    ("no_fit", r"(?P<name>\S+): the architecture does not fit the task at this budget",
     ((rf"top-1 (?P<top1>{_NUM})% vs (?P<best>{_NUM})% for the best family at (?P<params>[\d,]+) parameters and "
       r"(?P<macs>[\d,]+) MACs; .*", "detail"),)),
    ("diverged", r"(?P<name>\S+): training diverged at peak lr (?P<lr>\S+)",
     ((r"training loss per epoch \[(?P<losses>[^\]]*)\] ends at chance \(ln (?P<k>\d+) = (?P<chance>[\d.]+)\), test "
       r"top-1 (?P<top1>[\d.]+)%; the network has (?P<bn>\d+) BatchNorm layer\(s\)\..*", "detail"),)),
    ("pretrained", r"a pretrained ImageNet network is not a free swap for a small-image task",
     ((r"(?P<name>\S+) needs (?P<macs>[\d,]+) MACs per (?P<px>\d+x\d+) image \((?P<times>\d+)x the baseline's "
       r"(?P<base>[\d,]+)\) and (?P<params>[\d,]+) parameters; .*", "detail"),)),
    ("spread", r"why the data-free palettes and pruning collapse here: channels of very different widths in one tensor",
     ((r"(?P<n>\d+) of (?P<total>\d+) compressed weight tensors have an output channel over 10x wider than their "
       r"median channel.*", "detail"),)),
    ("coverage", r"(?P<name>\S+) compressed only (?P<done>\d+) of (?P<expected>\d+) weights",
     ((r"its package is (?P<ratio>[\d.]+)x smaller than FP32, not what its recipe promises(?P<why>.*?); its size and "
       r"accuracy are those of a model with only (?P<n>\d+) weight\(s\) compressed", "detail"),)),
)
_BLOCK_ITEM = re.compile(r"per_block: block_size (?P<block>\d+) does not divide the (?P<channels>\d+) channels "
                         r"\(axis (?P<axis>\d+)\) of (?P<weight>\S+?); used (?P<used>\d+)")


def translate(title: str, detail: str, loc: Locale) -> tuple[str, str, str] | None:
    """``(title, detail, detail_lang)`` in ``loc``'s language for a known pitfall, ``None`` for one the catalogue
    lacks (or whose detail has changed shape)."""
    for key, title_re, details in PATTERNS:
        t = re.fullmatch(title_re, title.strip(), flags=re.S)
        if t is None:
            continue
        for detail_re, detail_key in details:
            d = re.fullmatch(detail_re, detail.strip(), flags=re.S)
            if d is not None:
                break
        else:
            return None
        values: dict[str, Any] = {k: (v or "") for k, v in {**t.groupdict(), **d.groupdict()}.items()}
        if key == "overcompression":
            values["what"] = loc.t("pit.overcompression.free" if "without data" in values["what"]
                                   else "pit.overcompression.far" if "far more" in values["what"]
                                   else "pit.overcompression.data")
        if key == "coverage":
            values["why"] = loc.t("pit.coverage.why") if values["why"].strip() else ""
        if key == "batchnorm":
            values["where"] = (loc.t("pit.batchnorm.n", n=values["n"]) if values["n"]
                               else loc.t("pit.batchnorm.one", name=values["one"]))
        if key == "block":
            items = [loc.t("pit.block.item", **m.groupdict()) for m in _BLOCK_ITEM.finditer(values["items"])]
            if not items:
                return None
            values["items"] = loc.join(items) if loc.lang != "ja" else "、".join(items)
        return loc.t(f"pit.{key}.title", **values), loc.t(f"pit.{key}.{detail_key}", **values), loc.lang
    return None


# Provenance notes the stages record in English (``provenance[axis]["what"]``), in the report's other languages.
PHRASES: tuple[tuple[str, str], ...] = (
    (r"rise of peak RSS of a fresh process \(?forked after imports,? \(?(?P<base>[\d.,]+ MB)\)? while loading the "
     r"package and predicting one input", "phrase.memory"),
    (r"(?:not measured: )?no readable energy counter on this platform \(Linux RAPL absent or restricted\).*",
     "phrase.energy"),
)


def translate_phrase(text: str, loc: Locale) -> str | None:
    """A recorded provenance phrase in ``loc``'s language, ``None`` when the catalogue lacks it."""
    for pattern, key in PHRASES:
        m = re.fullmatch(pattern, text.strip(), flags=re.S)
        if m is not None:
            return loc.t(key, **m.groupdict())
    return None


def macs_in_table_figures(detail: str, rows: Any, loc: Locale) -> str | None:
    """The "MACs do not predict latency" pitfall with the latencies the table shows (its best-provenance figures),
    beside the stage's own reference-executor figures it was written from; ``None`` when it does not parse."""
    m = re.fullmatch(PATTERNS[[k for k, _, _ in PATTERNS].index("macs")][2][0][0], detail.strip(), flags=re.S)
    if m is None:
        return None
    table = {r.name: r.latency_ms for r in rows if r.stage == "architecture" or r.name in (m["cheap"], m["costly"])}
    cheap, costly = table.get(m["cheap"]), table.get(m["costly"])
    if cheap is None or costly is None:
        return None
    return loc.t("pit.macs.table", cheap=m["cheap"], costly=m["costly"], cheap_macs=m["cheap_macs"],
                 costly_macs=m["costly_macs"], cheap_ms=m["cheap_ms"], costly_ms=m["costly_ms"],
                 cheap_table=loc.num(cheap, 3), costly_table=loc.num(costly, 3))
