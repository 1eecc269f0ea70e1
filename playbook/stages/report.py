"""Stage 06, the report: read the stage records, recommend a variant under the client's budgets, write
``report.json``.  ``notebooks/06_report.ipynb`` shows the same pieces; the CLI turns the executed notebook
into ``report.html`` (``playbook.report.render.export_html``).  Reads records, never notebook outputs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from playbook.config import check_choice, check_range
from playbook.env import environment, playbook_version
from playbook.records import write_json
from playbook.report import render
from playbook.report.pages import REPORT_RECORD
from playbook.report.recommend import OBJECTIVES, Budget, Recommendation, ReportData, Row, load, recommend
from playbook.stages.common import StageConfig


@dataclasses.dataclass(frozen=True)
class ReportConfig(StageConfig):
    """The parameters of ``06_report`` (see the notebook for each one's meaning)."""

    max_top1_drop: float = 1.0
    max_size_mb: float = 0.0
    max_latency_ms: float = 0.0
    objective: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("max_top1_drop", self.max_top1_drop, 0.0, 100.0)
        check_range("max_size_mb", self.max_size_mb, 0.0)
        check_range("max_latency_ms", self.max_latency_ms, 0.0)
        check_choice("objective", self.objective, OBJECTIVES)

    def budget(self) -> Budget:
        return Budget(self.max_top1_drop, self.max_size_mb, self.max_latency_ms, self.objective)


class ReportRun:
    """Stage 06's steps: ``load`` the records, ``recommend``, ``finish`` (writes ``report.json``)."""

    stage = "report"

    def __init__(self, cfg: ReportConfig) -> None:
        self.cfg = cfg
        self.model_dir = cfg.model_dir()
        self.started = time.perf_counter()
        self.data: ReportData | None = None
        self.recommendation: Recommendation | None = None

    def load(self) -> ReportData:
        """Every stage record of the model, checked to belong together (see ``report.recommend.load``)."""
        self.data = load(self.cfg.model, self.model_dir, self.cfg.budget(), self.cfg.smoke)
        return self.data

    def recommend(self) -> Recommendation:
        """The variant to ship under the budgets, and why."""
        self.recommendation = recommend(self.data or self.load())
        return self.recommendation

    # ---- what the notebook shows (the same pieces the HTML report is made of)
    def summary_html(self) -> Any:
        from IPython.display import HTML

        return HTML(render.summary_html(self.data or self.load(), self.recommendation or self.recommend()))

    def chart(self) -> Any:
        return render.pareto_figure(self.data or self.load(), self.recommendation or self.recommend())

    def table_html(self) -> Any:
        from IPython.display import HTML

        return HTML(render.variants_table_html(self.data or self.load(), self.recommendation or self.recommend()))

    def pitfalls_html(self) -> Any:
        from IPython.display import HTML

        return HTML(render.pitfalls_html(self.data or self.load()))

    def deliverables_html(self) -> Any:
        from IPython.display import HTML

        return HTML(render.deliverables_html(self.data or self.load(), self.recommendation or self.recommend()))

    def summary(self) -> dict[str, Any]:
        """The JSON summary of the report (``reports/<model>/report.json``): what the index page shows."""
        data, rec = self.data or self.load(), self.recommendation or self.recommend()

        def brief(r: Row | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {"name": r.name, "stage": r.stage, "package": r.package, "top1": r.top1, "top1_ci": r.top1_ci,
                    "drop": r.drop, "size_mb": r.size_mb, "zip_mb": r.zip_mb, "latency_ms": r.latency_ms,
                    "latency_runtime": (r.provenance.get("latency") or {}).get("runtime")}

        base = data.records.get("baseline")
        return {
            "schema": 2, "stage": "report", "model": self.cfg.model, "playbook_version": playbook_version(),
            "config": self.cfg.to_dict(), "dataset": (base.get("dataset") or {}).get("name") if base else None,
            "smoke": data.smoke, "stages": list(data.records), "n_variants": len(data.rows),
            "warnings": list(data.warnings), "budgets": rec.budgets, "objective": rec.objective,
            "meets_budget": rec.meets_budget, "recommended": brief(rec.chosen), "closest": brief(rec.closest),
            "why": rec.why, "technique": rec.technique, "run": data.command().to_dict(),
            "reproduce": data.command().shell(), "environment": environment(),
            "stage_seconds": time.perf_counter() - self.started,
        }

    def finish(self) -> Path:
        """Write ``reports/<model>/report.json`` atomically."""
        return write_json(self.model_dir / REPORT_RECORD, self.summary())


def run_report(cfg: ReportConfig) -> Path:
    """The whole stage without the notebook: load, recommend, write ``report.json``."""
    run = ReportRun(cfg)
    run.load()
    run.recommend()
    return run.finish()
