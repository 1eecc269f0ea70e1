"""The report's HTML: the content of ``content.build`` laid out by the Jinja2 template ``templates/report.html.j2``
with the report's own stylesheet ``templates/report.css``, one self-contained page per language
(``report.html``, ``report.ja.html``).

Everything inserted is escaped by the template (model names, labels and metadata are untrusted); the page
loads nothing from the network (``offline_problems`` checks it before anything is written).
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import html
import re
from pathlib import Path
from typing import Any

from playbook.records import atomic_write_text
from playbook.report import content as report_content
from playbook.report.i18n import LANGUAGES, REPORT_FILES, check_lang
from playbook.report.recommend import Recommendation, ReportData

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"


def esc(value: Any) -> str:
    """HTML-escape any value (model names, labels, metadata are untrusted)."""
    return html.escape("" if value is None else str(value), quote=True)


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment of the report's templates: autoescape on, undefined names are errors."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)


@functools.lru_cache(maxsize=1)
def report_css() -> str:
    """The report's own stylesheet (also used by the index and the failure pages)."""
    return (TEMPLATES / "report.css").read_text(encoding="utf-8")


def render_page(content: dict[str, Any]) -> str:
    """The whole report page for ``content`` (``content.build``), checked to load nothing from the network."""
    page = environment().get_template(TEMPLATE).render(c=content, css=report_css())
    problems = offline_problems(page)
    if problems:
        raise ValueError(f"the HTML report would load resources from the network: {problems[:3]}")
    return page


def render_section(content: dict[str, Any], name: str) -> str:
    """One section of the page (``summary``, ``charts``, ``variants``...), as the notebook shows it."""
    module = environment().get_template(TEMPLATE).make_module({"c": content, "css": ""})
    sections = {"cover": module.cover, "alerts": module.alerts, "summary": module.summary,
                "recommendation": module.recommendation, "charts": module.charts, "variants": module.variants,
                "per_class": module.per_class, "deliverables": module.deliverables, "coreai": module.coreai,
                "pitfalls": module.pitfalls,
                "glossary": module.glossary, "sources": module.sources}
    lists = {"next": ("next_steps", "sec.next"), "risks": ("risks", "sec.risks"),
             "methodology": ("methodology", "sec.methodology")}
    if name in lists:
        key, title = lists[name]
        body = str(module.listing(content, name, content[key], title))
    elif name in sections:
        body = str(sections[name](content))
    else:
        raise KeyError(f"no report section {name!r}; sections are {sorted([*sections, *lists])}")
    return f'<div class="pb-report" lang="{content["lang"]}"><style>{report_css()}</style>{body}</div>'


def render_report(data: ReportData, rec: Recommendation, lang: str = "en", client: str = "",
                  when: dt.datetime | None = None) -> str:
    """The report page in ``lang`` (``en`` or ``ja``)."""
    return render_page(report_content.build(data, rec, check_lang(lang), client=client, when=when))


def write_report_pages(data: ReportData, rec: Recommendation, client: str = "", out_dir: Path | None = None,
                       when: dt.datetime | None = None) -> dict[str, Path]:
    """Render the report in every language, then write ``report.html`` and ``report.ja.html`` atomically into
    ``out_dir`` (default: the model's reports folder).  Nothing is written unless every page rendered."""
    pages = {lang: render_report(data, rec, lang, client, when) for lang in LANGUAGES}
    folder = Path(out_dir) if out_dir is not None else data.model_dir
    return {lang: atomic_write_text(folder / REPORT_FILES[lang], page) for lang, page in pages.items()}


# --------------------------------------------------------------------------- offline checks
_OFFLINE_PATTERNS = [
    ("external script", re.compile(r"<script\b[^>]*\bsrc\s*=", re.I)),
    # a loaded resource (src, srcset, data, poster, a form's action, a <link>'s href) -- a reader's link <a href> loads
    # nothing until it is followed, so the Sources list may link to its pages
    ("external link/src", re.compile(r"\b(?:src|srcset|data|action|poster)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)),
    ("external stylesheet/preload", re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//", re.I)),
    ("CSS url() to the network", re.compile(r"url\(\s*[\"']?\s*(?:https?:)?//", re.I)),
    ("CSS @import", re.compile(r"@import\b", re.I)),
]


def offline_problems(text: str) -> list[str]:
    """Everything in an HTML page that would load from the network (empty = opens offline)."""
    out = []
    for what, pattern in _OFFLINE_PATTERNS:
        for m in pattern.finditer(text):
            out.append(f"{what}: {text[m.start():m.start() + 100]!r}")
    return out


_IMG_PNG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']data:image/png;base64,([A-Za-z0-9+/=\s]+)", re.I)


def embedded_images(text: str) -> int:
    """How many ``<img>`` tags of a page embed a base64 PNG."""
    return len(_IMG_PNG.findall(text))


def decode_first_png(text: str) -> bytes:
    """The bytes of the first ``<img>``-embedded PNG (for tests)."""
    m = _IMG_PNG.search(text)
    if not m:
        raise ValueError("no embedded PNG")
    return base64.b64decode(m.group(1))

