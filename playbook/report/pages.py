"""Pages around the reports: ``reports/index.html`` (every model, its status and headline figures) and
the FAILED / INTERRUPTED page a run leaves in place of a report (in English and Japanese, so neither
language keeps an older report beside a failure)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

from playbook.paths import default_reports_root
from playbook.records import REPORT_SUMMARY_FILE, atomic_write_text, read_json
from playbook.report.i18n import LANGUAGES, REPORT_FILES, Locale
from playbook.report.recommend import _num
from playbook.report.render import esc, report_css
from playbook.stages import VARIANT_STAGES

REPORT_HTML = REPORT_FILES["en"]
REPORT_HTML_JA = REPORT_FILES["ja"]
REPORT_RECORD = REPORT_SUMMARY_FILE  # written by records.write_report_summary
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


INDEX_FILES = {"en": "index.html", "ja": "index.ja.html"}
_WHERE_KEYS = {"reference": "idx.where.reference", "torch": "idx.where.torch", "coreml": "idx.where.coreml",
               None: "not_measured"}


def _when(value: Any, loc: Locale) -> str:
    """An ISO timestamp as a reader writes it: ``December 5, 2026, 08:30 UTC`` / ``2026年12月5日 08:30 UTC``."""
    if not value:
        return "—"
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return f"{loc.date(when)} {when:%H:%M} UTC"


def index_html(reports_root: Path, lang: str = "en") -> str:
    """``reports/index.html`` (``index.ja.html`` in Japanese): every model with its headline figures, whether it meets
    its budget, where its latency was measured, or its failure; links to each report in both languages."""
    loc = Locale(lang)
    t = loc.t
    rows = index_rows(reports_root)
    report = REPORT_FILES[lang]
    other_lang = "ja" if lang == "en" else "en"
    trs: list[str] = []
    for r in rows:
        s = r["summary"]
        best = s.get("recommended") or s.get("closest") or {}
        has = r["has_html"] if lang == "en" else r["has_ja"]
        link = (f'<a href="{esc(r["dir"])}/{report}" class="pb-tap">{esc(r["model"])}</a>' if has
                else esc(r["model"]))
        if r["has_html" if lang == "ja" else "has_ja"]:
            link += (f' <a href="{esc(r["dir"])}/{REPORT_FILES[other_lang]}" lang="{other_lang}" '
                     f'class="pb-small pb-tap">{esc(Locale(other_lang).t("idx.lang_switch"))}</a>')
        if r["status"] == "ok":
            state = f'<span class="pb-ok">{esc(t("idx.ok"))}</span>' + (
                f' <span class="pb-tag">{esc(t("idx.provisional"))}</span>' if s.get("provisional") else "")
            meets = (f'<span class="pb-ok">{esc(t("yes"))}</span>' if s.get("meets_budget", True)
                     else f'<span class="pb-miss">{esc(t("idx.none_meets"))}</span>')
        elif r["status"] in ("failed", "interrupted"):
            where = t("fail.where", stage=r["failed_stage"]) if r.get("failed_stage") else ""
            state = (f'<span class="pb-miss">{esc(t("idx." + r["status"]))}{esc(where)}</span>'
                     f'<div class="pb-desc" lang="en">{esc(r.get("error"))}</div>')
            meets = "—"
        else:
            state = f'<span class="pb-miss">{esc(r["status"])}</span>'
            meets = "—"
        runtime = best.get("latency_runtime") if best else None
        latency_where = t(_WHERE_KEYS.get(runtime, "idx.where.torch")) if best else "—"
        trs.append(
            f"<tr><td>{link}</td><td>{state}</td><td>{meets}</td><td>{esc(best.get('name', '—'))}"
            f"{(' <span class=pb-tag>' + esc(loc.stage(best.get('stage')))) + '</span>' if best.get('stage') else ''}"
            f"</td><td class=pb-num>{loc.num(_num(best.get('top1')))}</td>"
            f"<td class=pb-num>{loc.num(_num(best.get('size_mb')), 3)}</td>"
            f"<td class=pb-num>{loc.num(_num(best.get('latency_ms')), 3)}</td><td>{esc(latency_where)}</td>"
            f"<td>{esc(best.get('deployment_target') or '—')}</td><td>{esc(s.get('dataset') or '—')}"
            f"{esc(t('idx.smoke')) if s.get('smoke') else ''}</td><td>{esc(_when(r.get('finished'), loc))}</td></tr>")
    heads = "".join(f"<th{' class=pb-num' if k in ('idx.top1', 'idx.size', 'idx.latency') else ''}>{esc(t(k))}</th>"
                    for k in ("idx.model", "idx.status", "col.budget", "idx.variant", "idx.top1", "idx.size",
                              "idx.latency", "idx.where", "col.target", "cover.dataset", "idx.finished"))
    table = (f'<div class="pb-scroll"><table class="pb-table pb-index"><thead><tr>{heads}</tr></thead>'
             f"<tbody>{''.join(trs) or '<tr><td colspan=11>' + esc(t('idx.empty')) + '</td></tr>'}</tbody></table></div>")
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_interrupted = sum(r["status"] == "interrupted" for r in rows)
    topbar = (f'<div class="pb-topbar"><span></span><a href="{INDEX_FILES[other_lang]}" hreflang="{other_lang}" '
              f'lang="{other_lang}" class="pb-tap">{esc(Locale(other_lang).t("idx.lang_switch"))}</a></div>')
    head = (f"<h1>{esc(t('idx.title'))}</h1><p>{esc(t('idx.intro', n=len(rows), failed=n_failed, interrupted=n_interrupted))}"
            "</p>")
    return _page(t("idx.title"), topbar + head + table, lang)


def write_index(reports_root: Path | str | None = None) -> Path:
    """Write ``reports/index.html`` and ``reports/index.ja.html`` atomically; returns the English one's path."""
    root = Path(reports_root) if reports_root else default_reports_root()
    root.mkdir(parents=True, exist_ok=True)
    pages = {lang: index_html(root, lang) for lang in LANGUAGES}
    written = {lang: atomic_write_text(root / INDEX_FILES[lang], page) for lang, page in pages.items()}
    return written["en"]
