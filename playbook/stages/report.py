"""Stage 06, the report: read the stage records, recommend a variant under the client's budgets, write
``report.json`` and the report itself, ``report.html`` (English) and ``report.ja.html`` (Japanese), rendered
from the records by the report's Jinja2 template (``playbook.report.render``).  ``notebooks/06_report.ipynb``
shows the same sections one by one.  Reads records, never notebook outputs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

from playbook.config import check_choice
from playbook.env import environment, playbook_version
from playbook.records import atomic_write_text, write_report_summary
from playbook.report import content as report_content
from playbook.report import render
from playbook.report.i18n import LANGUAGES, REPORT_FILES, Locale
from playbook.report.recommend import Budget, Recommendation, ReportData, Row, load, recommend
from playbook.stages.common import StageConfig


@dataclasses.dataclass(frozen=True)
class ReportConfig(StageConfig):
    """The parameters of ``06_report`` (see the notebook for each one's meaning)."""

    max_top1_drop: float = Budget.max_top1_drop
    max_size_mb: float = Budget.max_size_mb
    max_latency_ms: float = Budget.max_latency_ms
    objective: str = Budget.objective
    accuracy_rule: str = Budget.accuracy_rule
    app_target: str = Budget.app_target
    framework: str = Budget.framework
    client: str = ""
    language: str = "en"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.budget()  # the budget fields are checked where they are defined (report.recommend.Budget)
        check_choice("language", self.language, LANGUAGES)
        if len(self.client) > 200 or "\n" in self.client:
            from playbook.config import ConfigError

            raise ConfigError(f"client={self.client[:40]!r}...: a client name is one line of at most 200 characters")

    def budget(self) -> Budget:
        """The client's budget (``report.recommend.Budget``) from this stage's flat parameters."""
        return Budget(self.max_top1_drop, self.max_size_mb, self.max_latency_ms, self.objective, self.accuracy_rule,
                      self.app_target, self.framework)


class _Section:
    """One report section shown in Jupyter as HTML (and as its text elsewhere)."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


class ReportRun:
    """Stage 06's steps: ``load`` the records, ``recommend``, show the sections, ``finish`` (writes ``report.json``,
    ``report.html`` and ``report.ja.html``)."""

    stage = "report"

    def __init__(self, cfg: ReportConfig) -> None:
        self.cfg = cfg
        self.model_dir = cfg.model_dir()
        self.started = time.perf_counter()
        self.when = dt.datetime.now(dt.timezone.utc)
        self.data: ReportData | None = None
        self.recommendation: Recommendation | None = None
        self._content: dict[str, dict[str, Any]] = {}
        self.pages: dict[str, Path] = {}

    def load(self) -> ReportData:
        """Every stage record of the model, checked to belong together (see ``report.recommend.load``)."""
        self.data = load(self.cfg.model, self.model_dir, self.cfg.budget(), self.cfg.smoke)
        return self.data

    def recommend(self) -> Recommendation:
        """The variant to ship under the budgets, and why."""
        self.recommendation = recommend(self.data or self.load())
        return self.recommendation

    # ---- what the notebook shows (the same sections the HTML report is made of)
    def content(self, lang: str | None = None) -> dict[str, Any]:
        """The report's content in ``lang`` (default: the ``language`` parameter), built once per language."""
        lang = lang or self.cfg.language
        if lang not in self._content:
            self._content[lang] = report_content.build(self.data or self.load(), self.recommendation or self.recommend(),
                                                       lang, client=self.cfg.client, when=self.when)
        return self._content[lang]

    def section(self, name: str, lang: str | None = None) -> _Section:
        """One section (``alerts``, ``summary``, ``recommendation``, ``charts``, ``variants``, ``per_class``,
        ``deliverables``, ``next``, ``risks``, ``pitfalls``, ``methodology``, ``glossary``, ``sources``)."""
        return _Section(render.render_section(self.content(lang), name))

    def summary(self) -> dict[str, Any]:
        """The JSON summary of the report (``reports/<model>/report.json``): what the index page shows."""
        data, rec = self.data or self.load(), self.recommendation or self.recommend()

        def brief(r: Row | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {"name": r.name, "stage": r.stage, "package": r.package, "top1": r.top1, "top1_ci": r.top1_ci,
                    "drop": r.drop, "size_mb": r.size_mb, "zip_mb": r.zip_mb, "latency_ms": r.latency_ms,
                    "latency_runtime": (r.provenance.get("latency") or {}).get("runtime"),
                    "deployment_target": report_content.deployment_target(r)}

        base = data.records.get("baseline")
        return {
            "stage": "report", "model": self.cfg.model, "playbook_version": playbook_version(),
            "config": self.cfg.to_dict(), "dataset": (base.get("dataset") or {}).get("name") if base else None,
            "smoke": data.smoke, "stages": list(data.records), "n_variants": len(data.rows),
            "warnings": list(data.warnings), "provisional": report_content.provisional(data, Locale("en")),
            "budgets": rec.budgets, "objective": rec.objective, "accuracy_rule": self.cfg.accuracy_rule,
            "meets_budget": rec.meets_budget, "recommended": brief(rec.chosen), "closest": brief(rec.closest),
            "why": rec.why, "technique": rec.technique, "run": data.command().to_dict(),
            "reproduce": data.command().shell(), "environment": environment(),
            "pages": dict(REPORT_FILES),
            "stage_seconds": time.perf_counter() - self.started,
        }

    def finish(self) -> Path:
        """Render the report in every language, then write ``report.json``, ``report.html`` and ``report.ja.html``
        (each atomically; nothing is written if a page fails to render).  Returns the path of ``report.json``."""
        pages = {lang: render.render_page(self.content(lang)) for lang in LANGUAGES}
        path = write_report_summary(self.model_dir, self.summary())
        self.pages = {lang: atomic_write_text(self.model_dir / REPORT_FILES[lang], page) for lang, page in pages.items()}
        return path


def run_report(cfg: ReportConfig) -> Path:
    """The whole stage without the notebook: load, recommend, write ``report.json`` and the report pages."""
    run = ReportRun(cfg)
    run.load()
    run.recommend()
    return run.finish()
