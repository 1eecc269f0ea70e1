"""Pages around the reports: ``reports/index.html`` (every model, its status and headline figures) and
the FAILED / INTERRUPTED page a run leaves in place of a report (in English and Japanese, so neither
language keeps an older report beside a failure)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

from playbook.paths import default_reports_root
from playbook.records import atomic_write_text, read_json
from playbook.report.i18n import LANGUAGES, REPORT_FILES, Locale
from playbook.report.recommend import _num
from playbook.report.render import esc, report_css
from playbook.stages import VARIANT_STAGES

REPORT_HTML = REPORT_FILES["en"]
REPORT_HTML_JA = REPORT_FILES["ja"]
REPORT_RECORD = "report.json"
RUN_STATUS = "run.json"
INDEX_HTML = "index.html"


def _page(title: str, body: str, lang: str = "en") -> str:
    return (f'<!DOCTYPE html>\n<html lang="{esc(lang)}"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{report_css()}'
            f'</style></head><body class="pb-page pb-report">{body}</body></html>\n')


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_failure_page(model_dir: Path, model: str, error: str, log_tail: str = "", stage: str | None = None,
                       completed: Sequence[str] = (), command: str = "", log_file: str | None = None,
                       notebook: str | None = None) -> Path:
    """``reports/<model>/report.html`` (and ``report.ja.html``) as a failure page: what failed, where, and the end
    of the log.  Returns the English page's path."""
    model_dir = Path(model_dir)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    written = {}
    for lang in LANGUAGES:
        loc = Locale(lang)
        where = loc.t("fail.where", stage=stage) if stage else ""
        other = "ja" if lang == "en" else "en"
        body = [f'<div class="pb-topbar"><a href="../index.html">← {esc(loc.t("index_link"))}</a>'
                f'<a href="{REPORT_FILES[other]}" lang="{other}">{esc(loc.t("lang_switch"))}</a></div>',
                f"<h1>{esc(loc.t('fail.title', model=model))}</h1>",
                f'<div class="pb-failed"><p><b>{esc(loc.t("fail.text", where=where, when=when))}</b></p>'
                f'<p lang="en">{esc(error)}</p></div>']
        if completed:
            body.append(f"<p>Stages that completed: {esc(', '.join(completed))}.</p>")
        if notebook:
            body.append(f'<p>Executed notebook with the error: <a href="{esc(notebook)}">{esc(notebook)}</a></p>')
        if log_file:
            body.append(f'<p>Full log: <a href="{esc(log_file)}">{esc(log_file)}</a></p>')
        if command:
            body.append(f'<p>Command:</p><pre class="pb-code">{esc(command)}</pre>')
        body.append(f'<h2>Log tail</h2><pre class="pb-code" lang="en">{esc(log_tail or "(no log)")}</pre>')
        written[lang] = atomic_write_text(model_dir / REPORT_FILES[lang],
                                          _page(f"FAILED: {model}", "".join(body), lang))
    return written["en"]


def _read_optional(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def index_rows(reports_root: Path) -> list[dict[str, Any]]:
    """One entry per model folder under ``reports_root``: its status and headline figures."""
    rows = []
    for d in sorted(p for p in Path(reports_root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        status = _read_optional(d / RUN_STATUS) or {}
        summary = _read_optional(d / REPORT_RECORD) or {}
        has_records = any((d / f"{s}.json").exists() for s in VARIANT_STAGES)
        if not (status or summary or has_records or (d / REPORT_HTML).exists()):
            continue
        state = status.get("status") or ("ok" if summary and (d / REPORT_HTML).exists() else "incomplete")
        rows.append({"dir": d.name, "model": status.get("model") or summary.get("model") or d.name, "status": state,
                     "error": status.get("error"), "failed_stage": status.get("failed_stage"),
                     "summary": summary if state == "ok" else {}, "has_html": (d / REPORT_HTML).exists(),
                     "has_ja": (d / REPORT_HTML_JA).exists(),
                     "finished": status.get("finished") or (summary.get("environment") or {}).get("timestamp"),
                     "elapsed_s": status.get("elapsed_s")})
    return rows


_WHERE = {"reference": "reference executor (Linux CPU), not a device", "coreml": "Core ML runtime",
          None: "not measured"}


def index_html(reports_root: Path) -> str:
    """``reports/index.html``: every model with its headline figures, whether it meets its budget, where its
    latency was measured, or its failure; links to each report in English and Japanese."""
    rows = index_rows(reports_root)
    trs = []
    for r in rows:
        s = r["summary"]
        best = s.get("recommended") or s.get("closest") or {}
        link = (f'<a href="{esc(r["dir"])}/{REPORT_HTML}">{esc(r["model"])}</a>' if r["has_html"]
                else esc(r["model"]))
        if r["has_ja"]:
            link += f' <a href="{esc(r["dir"])}/{REPORT_HTML_JA}" lang="ja" class="pb-small">日本語</a>'
        if r["status"] == "ok":
            state = '<span class="pb-ok">ok</span>' + (' <span class="pb-tag">provisional</span>'
                                                       if s.get("provisional") else "")
            meets = ('<span class="pb-ok">yes</span>' if s.get("meets_budget", True)
                     else '<span class="pb-miss">no variant meets budget</span>')
        elif r["status"] in ("failed", "interrupted"):
            where = f" in {r['failed_stage']}" if r.get("failed_stage") else ""
            state = (f'<span class="pb-miss">{r["status"].upper()}{esc(where)}</span>'
                     f'<div class="pb-desc">{esc(r.get("error"))}</div>')
            meets = "—"
        else:
            state = f'<span class="pb-miss">{esc(r["status"])}</span>'
            meets = "—"
        latency_where = _WHERE.get(best.get("latency_runtime"), str(best.get("latency_runtime"))) if best else "—"
        trs.append(
            f"<tr><td>{link}</td><td>{state}</td><td>{meets}</td><td>{esc(best.get('name', '—'))}"
            f"{(' <span class=pb-tag>' + esc(best.get('stage')) + '</span>') if best.get('stage') else ''}</td>"
            f"<td class=pb-num>{_fmt(_num(best.get('top1')))}</td><td class=pb-num>{_fmt(_num(best.get('size_mb')), 3)}</td>"
            f"<td class=pb-num>{_fmt(_num(best.get('latency_ms')), 3)}</td><td>{esc(latency_where)}</td>"
            f"<td>{esc(best.get('deployment_target') or '—')}</td><td>{esc(s.get('dataset') or '—')}"
            f"{' (smoke)' if s.get('smoke') else ''}</td><td>{esc(r.get('finished') or '—')}</td></tr>")
    table = ('<div class="pb-scroll"><table class="pb-table"><thead><tr><th>Model</th><th>Status</th>'
             "<th>Meets budget</th><th>Recommended variant</th><th class=pb-num>Top-1 %</th><th class=pb-num>Size MB</th>"
             "<th class=pb-num>Latency ms</th><th>Latency measured on</th><th>Min. iOS</th><th>Dataset</th>"
             "<th>Finished (UTC)</th></tr></thead>"
             f"<tbody>{''.join(trs) or '<tr><td colspan=11>no model has been run yet</td></tr>'}</tbody></table></div>")
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_interrupted = sum(r["status"] == "interrupted" for r in rows)
    head = (f"<h1>Core ML optimization playbook: reports</h1><p>{len(rows)} model(s), {n_failed} failed"
            f", {n_interrupted} interrupted. Top-1, size and latency are those of each "
            "model's recommended variant (or, when none meets the budget, the closest one); open a report for "
            "intervals and provenance. Latency measured by the reference executor is the cost of that executor on "
            "a Linux CPU, not a device's speed.</p>")
    return _page("Core ML playbook reports", head + table)


def write_index(reports_root: Path | str | None = None) -> Path:
    """Write ``reports/index.html`` atomically."""
    root = Path(reports_root) if reports_root else default_reports_root()
    root.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(root / INDEX_HTML, index_html(root))
