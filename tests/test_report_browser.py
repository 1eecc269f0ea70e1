"""The default smoke report in a real browser: headless Chromium (Debian's ``chromium``, driven by PyPI's
``playwright`` without a browser download) opens ``report.html`` and ``report.ja.html`` at 1280 and 390 px.

Checks: no request leaves the page, every image decodes, nothing overflows the viewport horizontally, every
table-of-contents link resolves, and the language switch leads to the other language and back.  Also: every
package the report's records name carries metadata that says what it is (read from its spec).

The report is the one the smoke notebooks just wrote (``build/smoke-reports/resnet``: ``conftest.py`` runs these
tests after the notebooks), re-rendered from its records with the current template; run on its own, the module
makes a small smoke report first (about a minute).  Skipped, with the reason, only where no Chromium can be
started (``make setup`` installs Debian's ``chromium`` as root).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from playbook.report.i18n import REPORT_FILES

pytestmark = pytest.mark.after_notebooks

REPO = Path(__file__).resolve().parent.parent
SMOKE_REPORTS = REPO / "build" / "smoke-reports"
CHROMIUM = Path("/usr/bin/chromium")
WIDTHS = (1280, 390)


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - requirements.txt pins playwright
        pytest.skip(f"playwright is not installed ({exc}); pip install -r requirements.txt")
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (make setup does, as root)")
    return sync_playwright


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """``reports/<model>/`` of a smoke run, its pages rendered from its records by the current template."""
    from playbook.stages.report import ReportConfig, ReportRun

    model_dir = SMOKE_REPORTS / "resnet"
    if (model_dir / "baseline.json").exists() and (model_dir / "quantization.json").exists():
        root = SMOKE_REPORTS
    else:  # run alone: a small smoke report of our own
        from playbook.stages.baseline import BaselineConfig, run_baseline
        from playbook.stages.quantization import QuantizationConfig, run_quantization

        root = tmp_path_factory.mktemp("smoke-reports")
        common = {"model": "resnet", "smoke": True, "reports_dir": str(root), "threads": 1}
        run_baseline(BaselineConfig(dataset="digits", **common))
        run_quantization(QuantizationConfig(recipes=["int8-weights", "palettize-4bit", "torch-w8a8-static"],
                                            sensitivity_recipe="none", interactive=False, **common))
    run = ReportRun(ReportConfig(model="resnet", smoke=True, reports_dir=str(root)))
    run.finish()
    from playbook.report.pages import write_index

    write_index(root)
    return root / "resnet"


def _overflowing(page) -> list[str]:
    """Elements wider than the viewport that are not inside a horizontally scrolling box (which is the cue)."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        const out = [];
        for (const el of document.body.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.width === 0 || r.right <= width + 1) continue;
            let p = el.parentElement, scrolled = false;
            while (p && p !== document.body) {
                const s = getComputedStyle(p);
                if (['auto', 'scroll'].includes(s.overflowX) && p.clientWidth <= width) { scrolled = true; break; }
                p = p.parentElement;
            }
            if (!scrolled) out.push(el.tagName + '.' + el.className + ' right=' + Math.round(r.right));
        }
        if (document.documentElement.scrollWidth > width + 1) out.push('document scrollWidth ' +
            document.documentElement.scrollWidth);
        return out;
    }""")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_smoke_report_in_chromium(smoke_report, width):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start on this machine
            pytest.skip(f"Chromium at {CHROMIUM} does not start here: {exc}")
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            for lang, name in REPORT_FILES.items():
                url = (smoke_report / name).resolve().as_uri()
                page.goto(url)
                page.wait_for_load_state("load")
                assert page.evaluate("document.documentElement.lang") == lang
                # the smoke warning leads the page
                first_alert = page.locator(".pb-alert").first
                assert "pb-smoke" in (first_alert.get_attribute("class") or "")
                assert first_alert.bounding_box()["y"] < page.locator("#summary").bounding_box()["y"]
                # every image decodes and says what it shows
                images = page.evaluate("""async () => Promise.all([...document.images].map(async i => {
                    try { await i.decode(); } catch (e) { return {ok: false, alt: i.alt}; }
                    return {ok: i.complete && i.naturalWidth > 0, alt: i.alt};
                }))""")
                assert len(images) == 2 and all(i["ok"] for i in images), images
                assert all(len(i["alt"]) > 40 for i in images)
                # nothing runs off the screen (tables and code scroll inside their own boxes)
                assert _overflowing(page) == [], (lang, width)
                # every table-of-contents link lands on a section
                targets = page.eval_on_selector_all("nav.pb-toc a", "as => as.map(a => a.getAttribute('href'))")
                assert len(targets) >= 10
                for href in targets:
                    assert page.evaluate("id => !!document.getElementById(id)", href[1:]), href
                page.click(f'nav.pb-toc a[href="{targets[3]}"]')
                assert page.evaluate("location.hash") == targets[3]
            # the language switch: Japanese page -> English page -> Japanese page
            page.click("#lang-switch")
            page.wait_for_load_state("load")
            assert page.evaluate("document.documentElement.lang") == "en"
            page.click("#lang-switch")
            page.wait_for_load_state("load")
            assert page.evaluate("document.documentElement.lang") == "ja"
            assert "日本語" not in page.locator("#lang-switch").inner_text()
            leaving = [u for u in requests if not u.startswith(("file://", "data:"))]
            assert leaving == [], leaving
        finally:
            browser.close()


def test_every_delivered_package_says_what_it_is(smoke_report):
    """Each variant's package carries its own stage, name, recipe, precision, deployment target and the hash of the
    model it came from (issue 13 item 5), read back from the package's spec as Xcode reads it."""
    from playbook.coreml import VARIANT_METADATA, read_metadata
    from playbook.records import load_stage_records

    records = load_stage_records(smoke_report)
    sources = set()
    checked = 0
    for stage, record in records.items():
        for v in record.variants:
            if not v.package or v.target != "coreml":  # a Core AI model has no Core ML spec (test_coreai reads its own)
                continue
            meta = read_metadata(v.package_path(smoke_report))
            missing = [k for k in VARIANT_METADATA if k not in meta]
            assert not missing, (v.name, missing)
            assert meta["playbook.stage"] == stage and meta["playbook.variant"] in (v.name, v.name.removeprefix(
                "baseline-")), (v.name, meta)
            assert meta["playbook.deployment_target"] == v.get("deployment_target"), (v.name, meta)
            expected_precision = v.get("precision") or record.get("deploy_precision")
            assert meta["playbook.precision"] == expected_precision, (v.name, meta)
            if stage != "baseline":
                recipe = (v.get("recipe") or {}).get("name") or "none (uncompressed export)"
                assert meta["playbook.recipe"] == recipe, (v.name, meta)
            if stage in ("baseline", "quantization"):  # 03 ships a student, 04 other families: their own models
                sources.add(meta["playbook.source_model_sha256"])
            checked += 1
    assert checked >= 4
    assert len(sources) == 1  # the baseline's variants and its compressed ones name the same trained model


def test_the_report_pages_are_small_and_self_contained(smoke_report):
    from playbook.report.render import embedded_images, offline_problems

    for name in REPORT_FILES.values():
        html = (smoke_report / name).read_text()
        assert offline_problems(html) == [] and embedded_images(html) == 2
        # The charts (two, each at a desktop and a phone width) are palette PNGs whose size follows what they plot:
        # 300 KB of a 401 KB smoke page in one run, 180 KB of 279 KB in another.  What the template adds is bounded
        # on its own: the old nbconvert page was ~390 KB, most of it unused CSS.
        charts = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", html)
        assert len(charts) == 4 and all(len(c) < 150_000 for c in charts)
        assert len(html.encode()) - sum(len(c) for c in charts) < 150_000
    summary = json.loads((smoke_report / "report.json").read_text())
    assert summary["smoke"] and summary["provisional"]


# --------------------------------------------------------------------------- read by the client (issue 27)
# Text of the Japanese page that is an English sentence: four or more English words in a row, one of them a function
# word (a sentence, not a name such as "Core ML Neural Engine"), outside code, citations of English-language works and
# the links that spell out their addresses.  Identifiers (snake_case, dotted, with digits) break a run.
_ENGLISH_SENTENCES = r"""() => {
  const FUNC = new Set(['the','of','a','an','to','is','are','was','and','in','on','for','with','not','be','by','at','it',
    'this','that','from','as','or','its','than','can','has','have','were','no','so','when','only','each','per']);
  const SKIP = 'code, pre, kbd, samp, cite, script, style, .pb-url';
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement;
    if (!el || el.closest(SKIP)) continue;
    const cs = getComputedStyle(el);
    if (cs.display === 'none' || cs.visibility === 'hidden') continue;
    let run = [];
    const flush = () => {
      if (run.length >= 4 && run.some(w => FUNC.has(w.toLowerCase()))) out.push(run.join(' ') + '  <' + el.tagName + '>');
      run = [];
    };
    for (const t of node.textContent.split(/[\s、。，：（）()「」［］\[\],;:"“”]+/)) {
      if (/^[A-Za-z][a-z]*[.!?]?$/.test(t) && !/^[A-Z]{2,}$/.test(t)) run.push(t.replace(/[.!?]$/, ''));
      else flush();
    }
    flush();
  }
  return out;
}"""
_SMALL_TAP_TARGETS = r"""() => [...document.querySelectorAll('a[href], button, [role=button], summary')]
  .filter(a => { const r = a.getBoundingClientRect(); return r.width > 0 && r.height > 0; })
  .map(a => { const r = a.getBoundingClientRect();
              return {text: a.textContent.trim().slice(0, 40), w: Math.round(r.width), h: Math.round(r.height)}; })
  .filter(t => t.w < 44 || t.h < 44)"""
_CLIPPED_COLUMNS = r"""(root) => {
  const out = [];
  for (const table of document.getElementById(root).querySelectorAll('table')) {
    const box = table.parentElement.getBoundingClientRect();
    const limit = Math.min(box.right, document.documentElement.clientWidth) + 1;
    for (const cell of table.querySelectorAll('th, td')) {
      const r = cell.getBoundingClientRect();
      if (r.width > 0 && r.right > limit) out.push(cell.textContent.trim().slice(0, 30) + ' right=' + Math.round(r.right));
    }
    if (table.scrollWidth > table.parentElement.clientWidth + 1) out.push('table scrollWidth ' + table.scrollWidth);
  }
  return out;
}"""
# Printed content widths (A4 less the margins the print stylesheet sets), in CSS pixels (96 per inch).
_PRINT_WIDTH_PX = {"": round((210 - 24) / 25.4 * 96), "wide": round((297 - 20) / 25.4 * 96)}


def test_the_report_as_a_client_reads_it(smoke_report):
    """On paper every column of every table is kept (the table of variants prints on landscape pages, whose content
    width the page is laid out at here) and the pages are numbered; the Japanese page holds no English sentence
    outside code and citations; at 390 px every link is a tap target of at least 44 x 44 px (Apple's Human
    Interface Guidelines); the first screen states the decision and the remaining risks."""
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"Chromium at {CHROMIUM} does not start here: {exc}")
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            for lang, name in REPORT_FILES.items():
                page.emulate_media(media="screen")
                page.set_viewport_size({"width": 390, "height": 844})
                page.goto((smoke_report / name).resolve().as_uri())
                small = page.evaluate(_SMALL_TAP_TARGETS)
                assert small == [], (lang, small[:10])
                # the decision and the risks that remain come before the details
                assert page.locator(".pb-decision").count() == 1 and page.locator(".pb-risk li").count() >= 1
                assert page.locator(".pb-risk").bounding_box()["y"] < page.locator("#recommendation").bounding_box()["y"]
                if lang == "ja":
                    english = page.evaluate(_ENGLISH_SENTENCES)
                    assert english == [], english[:10]
                # a code block's lines start at one margin (an inline code box's padding shifts only its first line)
                lefts = page.evaluate("""() => [...document.querySelectorAll('pre.pb-code > code')].map(c => {
                    const r = document.createRange(); r.setStart(c.firstChild, 0); r.setEnd(c.firstChild, 1);
                    return r.getBoundingClientRect().left - c.parentElement.getBoundingClientRect().left
                        - parseFloat(getComputedStyle(c.parentElement).paddingLeft)
                        - parseFloat(getComputedStyle(c.parentElement).borderLeftWidth); })""")
                assert lefts and max(abs(x) for x in lefts) < 0.5, (lang, lefts)
                # print: each section laid out at the content width of the page it prints on
                page.emulate_media(media="print")
                for section in ("variants", "deliverables"):
                    named = page.evaluate(f"getComputedStyle(document.getElementById('{section}')).page")
                    width = _PRINT_WIDTH_PX.get("" if named in ("auto", "") else named, _PRINT_WIDTH_PX[""])
                    page.set_viewport_size({"width": width, "height": 900})
                    clipped = page.evaluate(_CLIPPED_COLUMNS, section)
                    assert clipped == [], (lang, section, width, clipped[:10])
            css = (REPO / "playbook" / "report" / "templates" / "report.css").read_text()
            assert "counter(page)" in css and "counter(pages)" in css  # numbered pages
            pdf = page.pdf(prefer_css_page_size=True)
            assert b"/MediaBox [0 0 841.9" in pdf  # the table's landscape pages
        finally:
            browser.close()
