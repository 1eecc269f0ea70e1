"""Screenshots of a report in headless Chromium, for docs/: the top of the page at 1280 and 390 px, English and
Japanese, saved as small palette PNGs; with ``--pdf PAGES`` also the report printed to PDF by Chromium (the print
stylesheet: landscape pages for the table, numbered pages) and those pages rendered with poppler's ``pdftoppm``.

    python docs/screenshots.py reports/resnet docs/report         # -> docs/report-en-1280.png ...
    python docs/screenshots.py reports/resnet docs/report-table --selector '#variants' --widths 1280
    python docs/screenshots.py reports/resnet docs/report --pdf 4,5  # -> docs/report-pdf-en-4.png ...

Needs Debian's ``chromium`` and, for the Japanese page, a CJK font (``make setup`` installs both as root).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

PAGES = {"en": "report.html", "ja": "report.ja.html"}
VIEWPORTS = {1280: (1280, 1100), 390: (390, 1500)}


def shoot(model_dir: Path, prefix: str, selector: str | None = None, widths=(1280, 390)) -> list[Path]:
    """One screenshot per language and width: the top of the page, or the element ``selector`` scrolled into view."""
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for lang, name in PAGES.items():
            for width in widths:
                w, h = VIEWPORTS[width]
                page = browser.new_page(viewport={"width": w, "height": h}, device_scale_factor=1)
                page.goto((model_dir / name).resolve().as_uri())
                if selector:
                    page.locator(selector).first.scroll_into_view_if_needed()
                    page.evaluate(f"document.querySelector({selector!r}).scrollIntoView()")
                target = Path(f"{prefix}-{lang}-{width}.png")
                page.screenshot(path=str(target))
                page.close()
                image = Image.open(target).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
                image.save(target, optimize=True)
                out.append(target)
        browser.close()
    return out


def print_pages(model_dir: Path, prefix: str, numbers: tuple[int, ...], langs=("en",)) -> list[Path]:
    """The report printed to PDF by Chromium (its print stylesheet), and pages ``numbers`` of it as PNGs (pdftoppm)."""
    import subprocess
    import tempfile

    out = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for lang in langs:
            page = browser.new_page()
            page.goto((model_dir / PAGES[lang]).resolve().as_uri())
            pdf = Path(tmp) / f"{lang}.pdf"
            page.pdf(path=str(pdf), prefer_css_page_size=True, print_background=True)
            page.close()
            for n in numbers:
                stem = Path(tmp) / f"{lang}-{n}"
                subprocess.run(["pdftoppm", "-r", "80", "-png", "-singlefile", "-f", str(n), "-l", str(n), str(pdf),
                                str(stem)], check=True)
                target = Path(f"{prefix}-pdf-{lang}-{n}.png")
                image = Image.open(f"{stem}.png").convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
                image.save(target, optimize=True)
                out.append(target)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="reports/<model>/ holding report.html and report.ja.html")
    parser.add_argument("prefix", help="output prefix, e.g. docs/report")
    parser.add_argument("--selector", help="CSS selector to scroll to (e.g. '#variants')")
    parser.add_argument("--widths", default="1280,390")
    parser.add_argument("--pdf", help="print to PDF and keep these pages, e.g. 3,4 (needs poppler's pdftoppm)")
    parser.add_argument("--pdf-langs", default="en")
    args = parser.parse_args()
    if args.pdf:
        paths = print_pages(args.model_dir, args.prefix, tuple(int(n) for n in args.pdf.split(",")),
                            tuple(args.pdf_langs.split(",")))
    else:
        paths = shoot(args.model_dir, args.prefix, args.selector, tuple(int(w) for w in args.widths.split(",")))
    for path in paths:
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
