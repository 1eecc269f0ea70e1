"""Every technical claim a reader sees is sourced (issue 17): each stage notebook ends with a numbered Sources list
whose links are well-formed and whose numbers are the ones its text cites, and the sentences the fact-check found
wrong do not come back anywhere a reader looks (notebooks, README, the report's template and strings)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from playbook.notebooks import stage_notebooks

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = [path for _, path in stage_notebooks()]
URL = re.compile(r"https?://[^\s)\]>\"'`]+")

# Sentences found wrong or unsourced (issue 17), as a reader would have read them.
RETIRED = [
    "good for comparing variants with each other",
    "reference executor on a Linux CPU ranks variants",
    "overlap widely are not reliably different",
    "export their training behaviour",
    "is what lets int8 hardware paths run",
    "It shrinks the download and the memory",
    "on Apple silicon often faster",
    "barely notices",
    "the structured form hardware can exploit",
    "silently skips",
    "cut the package 2-8x",
    "the two savings multiply",
    "what some toolkits call *dynamic*",
    "a few hundredths of a point at most",
    "costs accuracy only where activations have outliers",
    "depthwise-heavy ones lose more",
    "are classic weak spots",
    "usually costs a few kilobytes",
    # issue 27: claims checked against coremltools' and Apple's pages
    "is the option meant for 4 bits",  # per-block helps on the GPU; per-channel is recommended on the Neural Engine
    "only at the input's default shape",  # reshapeFrequency .infrequent (iOS 17.4+) lets flexible shapes run there
    "chip-dependent",  # activation quantization's slowdown depends on the compute unit, not the chip
    "(macOS) measures",  # MLComputePlan returns a plan and estimated costs, not a measurement
    "latency only ranks variants",  # the reference executor's latency does not rank variants either
    "correlate poorly",  # MobileOne: "may not correlate well"
    "costs a context transfer",  # unsourced
    "the app must require",  # an app can gate a model behind if #available
    "optimizecoreml-api-overview",  # a page removed in coremltools 8's docs rewrite
    "data-dependent-quantization.html",  # likewise
    "as the safe starting point",  # cite opt-overview for 8-bit weights as the place to start
]


def _markdown(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")


def _reader_texts() -> dict[str, str]:
    texts = {p.name: "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]) for p in NOTEBOOKS}
    texts["README.md"] = (REPO / "README.md").read_text()
    for path in sorted((REPO / "playbook" / "report").rglob("*")):
        if path.suffix in (".py", ".j2", ".html"):
            texts[str(path.relative_to(REPO))] = path.read_text()
    for name in ("ane_scan.py", "bench.py"):  # the scan's rule texts and the harness's docstrings
        texts[f"playbook/{name}"] = (REPO / "playbook" / name).read_text()
    return texts


def test_the_report_cites_what_its_reader_can_open():
    """Issue 27: the report's Sources are links a client can follow (or publications), never a file of this
    repository that the client may not have, and each says what it is cited for."""
    from playbook.report.closing import SOURCES

    for number, source in enumerate(SOURCES, 1):
        text = " ".join(str(v) for v in source.values())
        assert "playbook/" not in text and ".py" not in text.replace("linear_quantize_weights", ""), (number, text)
        assert source["en"] and source["ja"], number
        if source["url"]:
            parsed = urlparse(source["url"])
            assert parsed.scheme == "https" and "." in parsed.netloc, (number, source["url"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_ends_with_a_sources_list_that_its_citations_use(path):
    text = _markdown(path)
    assert "## Sources" in text, f"{path.name} has no Sources section"
    body, sources = text.rsplit("## Sources", 1)
    entries = re.findall(r"^\s*(\d+)\.\s+(.+?)(?=^\s*\d+\.\s|\Z)", sources, flags=re.M | re.S)
    assert entries, f"{path.name}: the Sources section lists nothing"
    numbers = [int(n) for n, _ in entries]
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: sources are not numbered 1..n"
    for number, entry in entries:
        for url in URL.findall(entry):
            parsed = urlparse(url.rstrip(".,;"))
            assert parsed.scheme == "https" and parsed.netloc and "." in parsed.netloc, (path.name, number, url)
        own = [f for f in re.findall(r"`([\w./-]+\.(?:py|md|json))`", entry) if (REPO / f).exists()]
        assert (URL.search(entry) or re.search(r"\b(19|20)\d\d\b|arXiv:\d{4}\.\d{4,5}", entry) or own
                or re.search(r"measured in this run|manual page", entry, flags=re.I)), \
            (f"{path.name} source {number} is none of: a link, a publication (year or arXiv id), a file of this "
             "repository, this run's measurements, a manual page")
    cited = {int(n) for group in re.findall(r"\[(\d+(?:\]\[\d+)*)\]", body) for n in re.findall(r"\d+", group)}
    assert cited, f"{path.name} cites none of its sources"
    assert cited <= set(numbers), f"{path.name} cites {sorted(cited - set(numbers))}, which its Sources list lacks"


@pytest.mark.parametrize("phrase", RETIRED)
def test_the_sentences_found_wrong_do_not_come_back(phrase):
    found = [name for name, text in _reader_texts().items() if phrase.lower() in text.lower()]
    assert not found, f"{phrase!r} is back in {found}"
