"""Each variant's best-provenance latency, read from the stage records, and the report's device-benchmark section.

A variant may have latency figures from several places: its own stage measured it (``VariantRecord.latency_ms``,
usually the reference executor on the machine that ran the stage), and the benchmark stage's record holds
measurements keyed by ``(stage, variant, package_sha256)`` -- made here or imported from a Mac or an iPhone
(``playbook import-bench``).  ``best_latencies`` picks, per variant, the figure with the best provenance:

    device (Apple's Core ML runtime)  >  host (the program as PyTorch on a host CPU/GPU)  >  reference executor

and within a tier the setting an app or a reader would expect first (Core ML ``ALL``, then the other compute units;
one host thread, then all threads, then CUDA; then the newest).  A measurement whose package hash is not the
variant's current one is ignored (it measured another package).  Pure functions over records: nothing is measured.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import html
import math
from typing import Any

from playbook.records import StageRecord, VariantRecord

TIER_RANK = {"device": 0, "host": 1, "reference": 2}
_UNIT_RANK = {"ALL": 0, "CPU_AND_NE": 1, "CPU_AND_GPU": 2, "CPU_ONLY": 3}
BENCHMARK_STAGE = "benchmark"


@dataclasses.dataclass(frozen=True)
class LatencyFigure:
    """One variant's chosen latency and where it comes from."""

    median_ms: float
    p90_ms: float | None
    fps: float | None
    tier: str
    backend: str
    setting: str
    device: str
    os: str
    threads: Any
    compute_units: str | None
    source: str  # "measured here", "imported from <file>", or "<stage> stage"
    runs: int | None = None
    timestamp: str = ""
    warmup: int | None = None

    def provenance(self) -> dict[str, Any]:
        """The ``provenance["latency"]`` entry a report row carries (``render.provenance_text`` reads it)."""
        runtime = {"device": "coreml", "host": "torch", "reference": "reference"}[self.tier]
        note = (f"PyTorch on the host ({self.setting.removeprefix('torch ')}): a host figure, not a device figure"
                if self.tier == "host" else None)
        runs = f", median of {self.runs} runs" if self.runs else ""
        return {"measured": True, "runtime": runtime, "compute_units": self.compute_units,
                "device": f"{self.device}, {self.os}", "note": note, "tier": self.tier, "backend": self.backend,
                "setting": self.setting, "threads": self.threads, "source": self.source, "runs": self.runs,
                "warmup": self.warmup,
                "what": f"best available latency ({self.tier}; order device > host > reference): {self.setting}, "
                        f"{self.source}{runs}"}


def _setting_rank(m: dict[str, Any]) -> int:
    if m.get("backend") == "coreml":
        return _UNIT_RANK.get(str(m.get("compute_units")), 9)
    if m.get("backend") == "torch":
        return 5 if m.get("device") == "cuda" else (0 if m.get("threads") == 1 else 1)
    return 0


def _from_measurement(m: dict[str, Any]) -> LatencyFigure:
    env = m.get("environment") or {}
    prov = m.get("provenance") or {}
    source = (f"imported from {prov.get('file', 'a results file')} ({prov.get('produced_by', '?')}, "
              f"{prov.get('imported_at', '?')})" if prov.get("source") == "imported" else "measured here by stage 05")
    lat = m["latency"]
    return LatencyFigure(float(lat["median"]), float(lat["p90"]), float(lat["fps"]), str(m["tier"]), str(m["backend"]),
                         str(m["setting"]), str(env.get("device", "?")), str(env.get("os", "?")), m.get("threads"),
                         m.get("compute_units"), source, int(lat.get("runs") or 0) or None, str(m.get("timestamp", "")),
                         lat.get("warmup"))


def _from_variant(v: VariantRecord) -> LatencyFigure | None:
    if v.latency_ms is None:
        return None
    prov = v.provenance.get("latency") or {}
    if prov.get("measured") is False:
        return None
    env = v.provenance.get("environment") or {}
    runtime = prov.get("runtime")
    tier = "device" if runtime == "coreml" else "reference"
    return LatencyFigure(float(v.latency_ms), v.latency_p90_ms, v.fps, tier, str(runtime or "reference"),
                         str(prov.get("what") or runtime or "?"), str(prov.get("device") or env.get("cpu") or "?"),
                         str(env.get("os", "?")), (v.latency or {}).get("threads"), prov.get("compute_units"),
                         f"{v.stage} stage", (v.latency or {}).get("repeats"), str(env.get("timestamp", "")),
                         (v.latency or {}).get("warmup"))


def benchmark_measurements(records: dict[str, StageRecord]) -> list[dict[str, Any]]:
    """The benchmark stage's measurements (made here or imported), or none."""
    rec = records.get(BENCHMARK_STAGE)
    return list(rec.get("measurements") or []) if rec is not None else []


def best_latencies(records: dict[str, StageRecord]) -> dict[tuple[str, str, str | None], LatencyFigure]:
    """``{(stage, variant, package_sha256): best LatencyFigure}`` for every variant that has a latency anywhere."""
    candidates: dict[tuple[str, str, str | None], list[tuple[tuple, LatencyFigure]]] = {}
    current = {(v.stage, v.name): v.package_sha256 for rec in records.values() for v in rec.variants}
    for m in benchmark_measurements(records):
        key = (m.get("stage"), m.get("variant"), m.get("package_sha256"))
        if current.get(key[:2]) != key[2] or not m.get("latency"):
            continue
        fig = _from_measurement(m)
        rank = (TIER_RANK[fig.tier], _setting_rank(m), 0, _newest_first(fig.timestamp))
        candidates.setdefault(key, []).append((rank, fig))
    for rec in records.values():
        for v in rec.variants:
            fig = _from_variant(v)
            if fig is not None:
                rank = (TIER_RANK[fig.tier], 0, 1, _newest_first(fig.timestamp))
                candidates.setdefault((v.stage, v.name, v.package_sha256), []).append((rank, fig))
    return {key: min(found, key=lambda item: item[0])[1] for key, found in candidates.items()}


def _newest_first(timestamp: str) -> float:
    """Sort key that puts the newest ISO timestamp first (unknown ones last)."""
    try:
        return -dt.datetime.fromisoformat(timestamp).timestamp()
    except (TypeError, ValueError):
        return math.inf


def with_best_latency(v: VariantRecord, best: dict[tuple[str, str, str | None], LatencyFigure]) -> VariantRecord:
    """``v`` with its latency, p90, FPS and latency provenance replaced by the best-provenance figure (a copy)."""
    fig = best.get((v.stage, v.name, v.package_sha256))
    if fig is None:
        return v
    return dataclasses.replace(v, latency_ms=fig.median_ms, latency_p90_ms=fig.p90_ms, fps=fig.fps,
                               provenance={**v.provenance, "latency": fig.provenance()})


# --------------------------------------------------------------------------- the report's section
def _code_spans(text: str) -> str:
    """Escaped text with its `backquoted` parts as <code>."""
    import re

    parts = re.split(r"`([^`]+)`", str(text))
    return "".join(html.escape(p, quote=True) if i % 2 == 0 else f"<code>{html.escape(p, quote=True)}</code>"
                   for i, p in enumerate(parts))


def _instruction(step: str, model: str, loc: Any) -> str:
    """One recorded iPhone-benchmark step, in ``loc``'s language where the catalogue has it (as HTML)."""
    from playbook.report.messages import MESSAGES
    from playbook.swift_bench import INSTRUCTIONS

    for i, known in enumerate(INSTRUCTIONS):
        if step == known.replace("<model>", model) and f"ios.step{i}" in MESSAGES:
            return _code_spans(loc.t(f"ios.step{i}", model=model))
    return f'<span lang="en">{_code_spans(step)}</span>' if loc.lang != "en" else _code_spans(step)


def benchmark_html(records: dict[str, StageRecord], loc: Any = None, model: str = "") -> str:
    """Where the latencies come from, which device files were imported, and how to measure on an iPhone (in
    ``loc``'s language; English without one)."""
    if loc is None:
        from playbook.report.i18n import Locale

        loc = Locale("en")
    t = lambda key, **kw: html.escape(loc.t(key, **kw), quote=True)  # noqa: E731
    rec = records.get(BENCHMARK_STAGE)
    if rec is None:
        return f'<div class="pb-report"><p><b>{t("dev.title")}</b>{t("colon")}{t("dev.not_run")}</p></div>'
    esc = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    best = best_latencies(records)
    tiers: dict[str, int] = {}
    for fig in best.values():
        tiers[fig.tier] = tiers.get(fig.tier, 0) + 1
    counts = loc.join([loc.t("dev.count", n=n, tier=loc.t(f"dev.tier.{tier}"))
                       for tier, n in sorted(tiers.items(), key=lambda kv: TIER_RANK[kv[0]])])
    parts = [f'<div class="pb-report"><p><b>{t("dev.title")}</b>{t("colon")}{t("dev.best", counts=counts)}</p>']
    imports = rec.get("imports") or []
    if imports:
        items = "".join(f"<li><code>{esc(i['file'])}</code> (sha256 {esc(i['file_sha256'][:12])}…), "
                        f"{esc(i['produced_by'])}{t('colon')}"
                        f"{t('dev.import_item', n=i['n'], devices=', '.join(i['devices']), when=i['imported_at'])}</li>"
                        for i in imports)
        parts.append(f"<p>{t('dev.imports')}</p><ul>{items}</ul>")
    if "device" not in tiers:
        parts.append(f"<p>{t('dev.no_device')}</p>")
    swift = rec.get("swift_benchmark") or {}
    if swift.get("path"):
        model = model or str(rec.get("model") or "")
        steps = "".join(f"<li>{_instruction(s, model, loc)}</li>" for s in swift.get("instructions") or [])
        parts.append(f"<p>{t('dev.iphone_before')}<code>{esc(swift['path'])}</code>{t('dev.iphone_after')}</p>"
                     f"<ol>{steps}</ol>")
    parts.append("</div>")
    return "".join(parts)
