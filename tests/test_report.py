"""Stage 06: recommendation from the records, the bilingual report rendered by its template, escaping, Swift from a
real package, offline HTML, package metadata shown as Xcode shows it, the index and failure pages."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from playbook.command import RunCommand
from playbook.config import ConfigError
from playbook.metrics import PairedComparison, pareto_front
from playbook.notebooks import execute
from playbook.paths import notebooks_dir
from playbook.records import RecordError, StageRecord, VariantRecord, write_json, write_stage_record
from playbook.report import content, pages, render
from playbook.report.i18n import MESSAGES, Locale, placeholders
from playbook.report.recommend import Budget, load, objective_key, recommend
from playbook.report.swift import swift_snippet
from playbook.stages.report import ReportConfig, ReportRun

EVIL = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """A real .mlpackage (input "image" 1x1x8x8 FP32, output "logits" 1x10 FP32), converted with coremltools."""
    import coremltools as ct
    import numpy as np
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 1, 8, 8))
    mlmodel = ct.convert(traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         inputs=[ct.TensorType(name="image", shape=(1, 1, 8, 8), dtype=np.float32)],
                         outputs=[ct.TensorType(name="logits", dtype=np.float32)])
    path = tmp_path_factory.mktemp("pkg") / "int8-linear.mlpackage"
    mlmodel.save(str(path))
    return path


DEVICE = {"runtime": "coreml", "compute_units": "ALL", "device": "iPhone 15 Pro, iOS 18.1", "measured": True}


def _provenance(energy_measured=False, latency_runtime="reference"):
    where = {"runtime": "reference", "compute_units": None, "device": "Linux x86_64 CPU, torch 2.13.0+cpu",
             "note": "playbook reference executor", "measured": True}
    latency = dict(DEVICE) if latency_runtime == "coreml" else {**where, "what": "batch-1 predict, 1 torch thread(s)"}
    return {"accuracy": dict(where), "latency": latency,
            "size": {"measured": True, "what": "bytes of the .mlpackage files; DEFLATE zip for download size"},
            "memory": {"measured": True, "what": "rise of peak RSS", "runtime": "reference"},
            "energy": {"measured": energy_measured, "what": "not measured: no readable energy counter (RAPL)"},
            "environment": {"os": "Linux"}}


IO = {"inputs": [{"name": "image", "type": "multiArrayType", "shape": [1, 1, 8, 8], "dtype": "FLOAT32"}],
      "outputs": [{"name": "logits", "type": "multiArrayType", "shape": [1, 10], "dtype": "FLOAT32"}]}


def _variant(stage, name, top1, size, latency, package, drop=None, description="", energy=None,
             latency_runtime="reference"):
    vs = None
    if drop is not None:
        vs = PairedComparison(delta_top1=-drop, ci_low=-drop - 0.4, ci_high=-drop + 0.4, p_value=0.2,
                              only_reference_correct=0, only_variant_correct=0, n=400)
    return VariantRecord(name=name, stage=stage, description=description, package=str(package),
                         size_bytes=int(size * 1e6), zip_bytes=int(size * 0.9e6), top1=top1, top5=99.0,
                         top1_ci=(top1 - 1.5, top1 + 1.5), n_test=400, latency_ms=latency,
                         latency_p90_ms=latency * 1.2, fps=1000 / latency, peak_memory_mb=3.0, energy_mj=energy,
                         provenance=_provenance(energy is not None, latency_runtime), io=IO,
                         reference="baseline-fp32" if drop is not None else None, vs_reference=vs)


def _record(model, stage, variants, pitfalls=(), run=None, warnings=(), smoke=False, **details):
    return StageRecord(stage=stage, model=model, config={"smoke": smoke, "dataset": "digits"}, warnings=list(warnings),
                       environment={"os": "Linux 6", "cpu": "AMD EPYC", "python": "3.11",
                                    "versions": {"torch": "2.13.0", "coremltools": "9.0"}},
                       run=(run or RunCommand(model=model)).to_dict(), reproduce="", variants=list(variants),
                       pitfalls=list(pitfalls), details=details)


def write_records(root: Path, package: Path, model="resnet", stages=("baseline", "quantization", "distillation"),
                  latency_runtime="reference", warnings=(), smoke=False):
    """Three stage records with numbers chosen so that budgets pick different techniques.  ``latency_runtime``:
    where every latency was measured (``reference``: the executor on Linux; ``coreml``: a device)."""
    model_dir = root / model

    def var(*args, **kwargs):  # every variant of this call gets the same latency provenance
        return _variant(*args, latency_runtime=latency_runtime, **kwargs)

    if "baseline" in stages:
        write_stage_record(model_dir, _record(
            model, "baseline",
            [var("baseline", "baseline-fp32", 90.0, 1.00, 2.0, package, description="FP32 reference"),
             var("baseline", "baseline-fp16", 90.0, 0.50, 1.8, package, drop=0.0)],
            pitfalls=[{"title": "FP16 package has FP16 I/O", "detail": "pass dtype=np.float32"}],
            run=RunCommand(model=model, dataset="digits", params={"epochs": 3}, stages="01", smoke=smoke),
            warnings=warnings, smoke=smoke,
            reference_variant="baseline-fp32", dataset={"name": "digits", "classes": [str(i) for i in range(10)],
                                                        "mean": [0.3], "std": [0.37], "train": 1000, "test": 400,
                                                        "calib": 64},
            pytorch={"top1": 90.0, "n": 400, "per_class": {**{str(i): 92.0 for i in range(9)}, "9": 71.5}},
            training={"parameters": 1234, "history": [{"epoch": 1, "loss": 1.0, "val_top1": 89.7},
                                                      {"epoch": 2, "loss": 0.5, "val_top1": 89.8}]},
            train_config={"lr": 0.1, "batch_size": 128}))
    if "quantization" in stages:
        write_stage_record(model_dir, _record(
            model, "quantization",
            [var("quantization", "int8-linear", 89.6, 0.25, 1.7, package, drop=0.4),
             var("quantization", "int4-palettized", 87.0, 0.13, 1.9, package, drop=3.0, description=EVIL)],
            pitfalls=[{"title": f"Calibration {EVIL}", "detail": "int4 lost 3 points"},
                      {"title": "int4-palettized: some weights were skipped",
                       "detail": "['const_2_to_fp16 [24, 1, 3, 3]'] stayed float"}],
            warnings=warnings, smoke=smoke,
            sensitivity={"layers": [{"name": "const_2_to_fp16", "module": "stem.0", "label": "stem.0"}]},
            run=RunCommand(model=model, params={"calibration": "random"}, stages="02", smoke=smoke)))
    if "distillation" in stages:
        write_stage_record(model_dir, _record(
            model, "distillation", [var("distillation", "student-w8", 89.9, 0.30, 0.9, package, drop=0.1,
                                             energy=0.12)], warnings=warnings, smoke=smoke))
    return model_dir


def _data(root, smoke=False, **budget):
    return load("resnet", root / "resnet", Budget(**budget), smoke)




def _page(root, lang="en", **budget):
    data = _data(root, **budget)
    return render.render_report(data, recommend(data), lang)


# --------------------------------------------------------------------------- recommendation
def test_default_budget_recommends_the_smallest_variant_within_one_point(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path)
    rec = recommend(data)
    assert rec.objective == "size" and rec.meets_budget
    assert rec.chosen.name == "int8-linear"  # int4 is smaller but drops 3 points > 1
    assert "int4-palettized" not in {r.name for r in rec.feasible}
    assert "smallest" in rec.objective_reason and "int8-linear" in rec.why
    assert "interval of its top-1 drop reaches 0.80 pp" not in rec.why  # 0.4 +- 0.4 stays within 1 point
    # issue 27: by default the accuracy budget is met by the worst end of the drop's 95% interval; int8-linear's
    # 0.4 +- 0.4 reaches 0.8 > 0.5, so the student (0.1 +- 0.4, at most 0.5) wins; the point-estimate rule, an
    # option, takes int8-linear and says that its interval reaches beyond the budget
    tight = recommend(_data(tmp_path, max_top1_drop=0.5))
    assert tight.accuracy_rule == "interval" and tight.chosen.name == "student-w8" and not tight.rule_risk
    assert "int8-linear" not in {r.name for r in tight.feasible}
    point = recommend(_data(tmp_path, max_top1_drop=0.5, accuracy_rule="point"))
    assert point.chosen.name == "int8-linear" and point.rule_risk
    assert "interval of its top-1 drop reaches 0.80 pp" in point.why
    page = render.render_report(_data(tmp_path, max_top1_drop=0.5, accuracy_rule="point"), point, "en")
    first_screen = page[page.index('id="summary"'):page.index('id="recommendation"')]
    assert "may exceed the 0.5 pp budget" in first_screen and "accuracy_rule=point" in page
    page_ja = render.render_report(_data(tmp_path, max_top1_drop=0.5, accuracy_rule="point"), point, "ja")
    assert "許容低下幅" in page_ja and "予算" not in page_ja
    # the technique advice comes from the numbers: quantization for size, distillation for accuracy
    assert "when accuracy dominates, prefer distillation" in rec.technique
    assert "when size dominates, prefer quantization" in rec.technique


def test_device_latency_makes_size_and_latency_budgets_pick_by_accuracy(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package, latency_runtime="coreml")
    rec = recommend(_data(tmp_path, max_size_mb=0.35, max_latency_ms=1.0))
    assert rec.objective == "accuracy"
    assert rec.chosen.name == "student-w8" and rec.chosen.stage == "distillation"
    assert "Only distillation variants" in rec.technique
    assert recommend(_data(tmp_path, max_size_mb=0.6)).chosen.name == "student-w8"  # fastest under 0.6 MB
    rec = recommend(_data(tmp_path, objective="accuracy"))
    assert rec.chosen.name in ("baseline-fp32", "baseline-fp16")  # 90.0, the reference accuracy


def test_reference_executor_latency_never_picks_meets_a_budget_or_breaks_a_tie(tmp_path, tiny_package):
    """Issue 17 item 1: the executor's timings are its own cost on this CPU, not an order of the variants."""
    write_records(tmp_path, tiny_package)  # every latency from the reference executor
    rec = recommend(_data(tmp_path, max_size_mb=0.6))  # auto would be "latency": it falls back to accuracy
    assert rec.objective == "accuracy" and "cannot rank variants" in rec.objective_reason
    assert rec.chosen.name == "baseline-fp16"  # most accurate under 0.6 MB; student-w8 is "fastest" there: ignored
    explicit = recommend(_data(tmp_path, objective="latency"))
    assert explicit.objective == "size" and "cannot rank variants" in explicit.objective_reason
    capped = recommend(_data(tmp_path, max_latency_ms=100.0))  # every variant is far under it... on the executor
    assert not capped.meets_budget and "not measured on a device" in capped.why
    # ties: same size and top-1, different executor latency -> decided by the name, never by that latency
    data = _data(tmp_path)
    a, b = (dataclasses_replace(data.rows[0], name=n, size_mb=0.2, top1=88.0, latency_ms=lat)
            for n, lat in (("b-slow", 9.0), ("a-fast", 0.1)))
    c, d = (dataclasses_replace(data.rows[0], name=n, size_mb=0.2, top1=88.0, latency_ms=lat)
            for n, lat in (("a-slow", 9.0), ("b-fast", 0.1)))
    assert sorted([a, b], key=objective_key("size"))[0].name == "a-fast"
    assert sorted([c, d], key=objective_key("size"))[0].name == "a-slow"
    page = _page(tmp_path)
    assert "reference executor on a Linux CPU" in page and "played no part in this choice" in page


def dataclasses_replace(row, **changes):
    import dataclasses

    return dataclasses.replace(row, **changes)


def test_no_variant_meets_the_budget_shows_the_closest(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path, max_top1_drop=0.05, max_size_mb=0.2)
    rec = recommend(data)
    assert not rec.meets_budget and rec.chosen is None
    assert rec.closest is not None and rec.deliverable is rec.closest
    assert "No variant meets the budgets" in rec.why and rec.closest.name in rec.why
    page = render.render_report(data, rec, "en")
    assert "No variant meets the budget. Closest" in page and "No variant meets the budget: relax it" in page
    ja = render.render_report(data, rec, "ja")
    assert "許容条件を満たすバリアントはありません" in ja


def test_next_steps_do_not_lead_with_budget_advice_when_variants_meet_it(tmp_path, tiny_package):
    """Issue 13 item 6: 'relax the budget' only when nothing meets it; the next best is compared honestly."""
    write_records(tmp_path, tiny_package)
    c = content.build(_data(tmp_path), recommend(_data(tmp_path)), "en", charts=False)
    assert not any("relax" in step for step in c["next_steps"])
    assert any("Measure int8-linear on the target device" in step for step in c["next_steps"])
    assert any("weakest class, 9 (71.5% in FP32)" in step for step in c["next_steps"])
    assert any(line.startswith("Next best: student-w8, 0.300 MB, 1.20× larger") for line in c["recommendation"]["lines"])
    assert "variant(s)" not in render.render_page(c)


def test_unmeasured_axis_does_not_meet_a_budget(tmp_path, tiny_package):
    model_dir = write_records(tmp_path, tiny_package, stages=("baseline",), latency_runtime="coreml")
    rec_path = model_dir / "baseline.json"
    record = json.loads(rec_path.read_text())
    for v in record["variants"]:
        v["latency_ms"] = None
    rec_path.write_text(json.dumps(record))
    rec = recommend(_data(tmp_path, max_latency_ms=5.0))
    assert not rec.meets_budget and "latency not measured" in rec.why


def test_pareto_front_and_the_zoomed_labelled_chart(tmp_path, tiny_package):
    from playbook import views

    write_records(tmp_path, tiny_package)
    data = _data(tmp_path)
    variants = [r.raw for r in data.rows]
    assert [v.name for v in pareto_front(variants, lambda v: v.size_mb, lambda v: v.top1)] == [
        "int4-palettized", "int8-linear", "student-w8", "baseline-fp16"]
    chart = views.accuracy_figure(variants, ("size_mb",), zooms=(2.0,), reference_top1=90.0, max_top1_drop=1.0,
                                  highlight="int8-linear")
    ax = chart.figure.axes[0]
    assert ax.get_ylim()[0] == pytest.approx(88.0)  # zoomed to the candidates
    labels = [t.get_text() for t in ax.texts]
    assert "int4-palettized (87.0%)" in labels  # the outlier sits on the bottom edge, labelled with its top-1
    assert "Below the axis (drawn on the bottom edge): int4-palettized" in chart.alt and \
        "Ringed, recommended: int8-linear" in chart.alt and "No description" not in chart.alt
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    renderer = FigureCanvasAgg(chart.figure).get_renderer()
    notes = [t for t in ax.texts if t.get_text() in {v.name for v in variants} | {"int4-palettized (87.0%)"}]
    for note in notes:
        note.update_positions(renderer)
    boxes = [Text.get_window_extent(note, renderer) for note in notes]  # the labels' text, without leader lines
    assert len(boxes) >= 4
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])  # no label on another
    floor = ax.get_ylim()[0]
    points = ax.transData.transform([(v.size_mb, max(v.top1, floor)) for v in variants])
    assert not any(box.contains(x, y) for box in boxes for x, y in points)  # nor on a point
    ja = views.accuracy_figure(variants, ("size_mb",), zooms=(2.0,), reference_top1=90.0, lang="ja")
    assert ja.png()[:8] == b"\x89PNG\r\n\x1a\n" and "パレートフロント" in ja.alt
    import matplotlib

    assert "IPAexGothic" not in matplotlib.rcParams["font.family"]  # the Japanese font did not leak globally


# --------------------------------------------------------------------------- loading
def test_any_subset_of_records_works_and_empty_is_a_clear_error(tmp_path, tiny_package):
    with pytest.raises(RecordError, match="no stage records"):
        _data(tmp_path)
    write_records(tmp_path, tiny_package, stages=("quantization",))  # no baseline at all
    data = _data(tmp_path)
    rec = recommend(data)
    assert {r.name for r in data.rows} == {"int8-linear", "int4-palettized"}
    assert rec.chosen.name == "int8-linear"
    assert "techniques cannot be compared yet" in rec.technique
    for lang in ("en", "ja"):
        page = render.render_report(data, rec, lang)
        assert render.offline_problems(page) == [] and 'id="summary"' in page


def test_smoke_mismatch_and_unknown_parameters_are_errors(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    with pytest.raises(ConfigError, match="smoke=False"):
        _data(tmp_path, smoke=True)
    with pytest.raises(ConfigError, match="unknown ReportConfig key"):
        ReportConfig.from_namespace({"model": "resnet", "max_top1_dorp": 1.0})
    with pytest.raises(ConfigError, match="objective"):
        ReportConfig(objective="speed")
    with pytest.raises(ConfigError, match="max_size_mb"):
        ReportConfig(max_size_mb=-1)
    with pytest.raises(ConfigError, match="max_top1_drop=True must be float"):
        ReportConfig(max_top1_drop=True)
    with pytest.raises(ConfigError, match="language"):
        ReportConfig(language="fr")
    with pytest.raises(ConfigError, match="client"):
        ReportConfig(client="a\nb")


# --------------------------------------------------------------------------- the page
def test_model_supplied_strings_are_escaped_in_both_languages(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path)
    rec = recommend(data)
    for lang in ("en", "ja"):
        page = render.render_report(data, rec, lang, client=EVIL)
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    page = render.render_report(data, rec, "en")
    table = page[page.index('id="variants"'):page.index('id="per_class"')]
    assert table.count("<tr") == 1 + len(data.rows)
    # energy: the distilled variant measured it, the others say why not
    assert "0.120" in table and "no readable energy counter" in table
    assert "reference executor on Linux x86_64 CPU" in table and "not Apple&#39;s Core ML runtime" in table
    assert "[88.50, 91.50]" in table  # top-1 interval
    assert "\u22120.40 <span class=\"pb-ci\">[\u22120.80, +0.00]" in table or "\u22120.40 <span class=\"pb-ci\">[\u22120.80, 0.00]" \
        in table  # the change is variant minus FP32 everywhere: negative = worse
    assert "<script" not in pages.index_html(tmp_path)


def test_the_page_has_every_section_and_a_working_table_of_contents(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    for lang in ("en", "ja"):
        page = _page(tmp_path, lang)
        ids = set(re.findall(r'\bid="([^"]+)"', page))
        for href in re.findall(r'href="#([^"]+)"', page):
            assert href in ids, href
        for section in content.SECTIONS:
            assert f'id="{section}"' in page
        assert f'<html lang="{lang}">' in page
        assert f'href="../{"index.html" if lang == "en" else "index.ja.html"}"' in page  # back to the index
        other = "report.ja.html" if lang == "en" else "report.html"
        assert f'href="{other}"' in page  # the language switch
        assert render.embedded_images(page) == 2 and render.decode_first_png(page)[:4] == b"\x89PNG"
        assert "No description has been provided" not in page and 'alt=""' not in page
        assert "jp-" not in page and "jupyter" not in page.lower()  # the report's own CSS only
        assert "@media print" in page and "@media (max-width: 720px)" in page
    en = _page(tmp_path)
    assert 'pb-ship">Recommended: int8-linear' in en and "4.0× smaller than the FP32 reference" in en
    assert "accuracy change within noise" in en and "digits: 10 classes" in en
    # issue 27: no "Client: not named" line (an operator's instruction) in the client's copy; the line when named
    assert "Client" not in en and "not named" not in en
    data = _data(tmp_path)
    assert "<dt>Client</dt><dd>ACME</dd>" in render.render_report(data, recommend(data), "en", client="ACME")
    assert "71.5%" in en and "Glossary" in en and "McNemar" in en
    ja = _page(tmp_path, "ja")
    assert "推奨：int8-linear" in ja and "量子化" in ja and "蒸留" in ja and "パレタイズ" in ja
    assert "Neural Engine" in ja and "精度の変化は誤差の範囲内" in ja and "2026" in ja or "年" in ja


def test_p_values_below_float_precision_and_pitfalls_are_readable(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    loc = Locale("en")
    assert loc.p_value(0.0) == "p < 10⁻³⁰⁰" and loc.p_value(0.2) == "p = 0.20"
    assert loc.p_value(3.1e-5) == "p = 3.1 × 10⁻⁵" == Locale("ja").p_value(3.1e-5)  # no "e-5" in either language
    assert loc.signed(-0.4) == "\u22120.40" and loc.signed(0.001) == "0.00" and loc.signed(1.5) == "+1.50"
    assert Locale("ja").num(1234.5, 1) == "1,234.5" and "年" in Locale("ja").date(__import__("datetime").date(2026, 1, 2))
    page = _page(tmp_path)
    pitfalls = page[page.index('id="pitfalls"'):page.index('id="methodology"')]
    assert "stem.0 [24, 1, 3, 3] stayed float" in pitfalls  # PyTorch layer name, no Python list syntax
    assert "const_2_to_fp16" not in pitfalls and "['" not in pitfalls


def test_every_message_is_written_in_both_languages():
    for key, texts in MESSAGES.items():
        assert set(texts) == {"en", "ja"}, key
        # the same values fill both; only a ratio is written "6.5×" in English and "6.5 分の 1" in Japanese
        assert placeholders(texts["en"]) ^ placeholders(texts["ja"]) <= {"ratio", "ratio_plain"}, key
        if key != "recorded_in_english":
            assert texts["ja"].strip() and texts["en"].strip(), key
        assert not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", texts["en"]) or key == "lang_switch", key


def test_a_warning_in_the_records_leads_the_report_and_tempers_the_recommendation(tmp_path, tiny_package):
    warning = "baseline: validation top-1 was still improving when training stopped (44.0% at epoch 6)"
    write_records(tmp_path, tiny_package, warnings=[warning])
    page = _page(tmp_path)
    assert page.index(warning) < page.index('id="summary"')  # before the recommendation
    assert "recommendation is provisional" in page and "Provisional choice: int8-linear" in page
    assert "pb-headline pb-ship" not in page and "pb-headline pb-provisional" in page
    assert "Recommended: int8-linear" not in page and "Ringed, provisional choice: int8-linear" in page
    ja = _page(tmp_path, "ja")
    assert ja.index(warning) < ja.index('id="summary"') and "暫定の候補：int8-linear" in ja


def test_a_model_near_chance_is_flagged_even_without_a_recorded_warning(tmp_path, tiny_package):
    model_dir = write_records(tmp_path, tiny_package, stages=("baseline",))
    record = json.loads((model_dir / "baseline.json").read_text())
    for v in record["variants"]:
        v["top1"] = 12.0
    (model_dir / "baseline.json").write_text(json.dumps(record))
    page = _page(tmp_path)
    assert "near chance (10.0% for 10 classes)" in page and "Provisional choice" in page


def test_a_baseline_still_improving_is_flagged_unless_the_schedule_explains_it(tmp_path, tiny_package):
    model_dir = write_records(tmp_path, tiny_package, stages=("baseline",))
    record = json.loads((model_dir / "baseline.json").read_text())
    record["training"]["history"] = [{"epoch": 1, "loss": 1.0, "val_top1": 40.0},
                                     {"epoch": 2, "loss": 0.9, "val_top1": 44.0}]
    (model_dir / "baseline.json").write_text(json.dumps(record))
    assert "still rising when training stopped (40.0% → 44.0%" in _page(tmp_path)
    record["train_config"]["schedule"] = "onecycle"  # the last epoch's jump is the annealing: the stage decides
    (model_dir / "baseline.json").write_text(json.dumps(record))
    assert "still rising" not in _page(tmp_path)


def test_a_smoke_report_says_so_in_its_header(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package, smoke=True)
    data = load("resnet", tmp_path / "resnet", Budget(), True)
    page = render.render_report(data, recommend(data), "en")
    assert page.index("Smoke run: these figures mean nothing") < page.index('id="summary"')
    assert "smoke run (tiny data, 1 epoch)" in page and "Provisional choice" in page
    assert "スモーク実行" in render.render_report(data, recommend(data), "ja")


def test_swift_snippet_uses_the_package_real_io(tiny_package):
    from playbook.coreml import package_info

    info = package_info(tiny_package)
    assert [f["name"] for f in info.inputs] == ["image"] and [f["name"] for f in info.outputs] == ["logits"]
    swift = swift_snippet(tiny_package, info.to_dict(), normalisation={"mean": [0.3], "std": [0.37]},
                          class_names=[str(i) for i in range(10)])
    assert 'forResource: "int8-linear", withExtension: "mlmodelc"' in swift
    assert "let image = try MLMultiArray(shape: [1, 1, 8, 8], dataType: .float32)" in swift
    assert '"image": MLFeatureValue(multiArray: image)' in swift
    assert 'let logits = outputs.featureValue(for: "logits")?.multiArrayValue' in swift
    assert "mean [0.3000], std [0.3700]" in swift
    # from a picture or a camera frame to the input, and from the output to a label
    assert "func makeImage(from cgImage: CGImage) throws -> MLMultiArray" in swift
    assert "func makeImage(from pixelBuffer: CVPixelBuffer) throws -> MLMultiArray" in swift
    assert "context.draw(cgImage, in: CGRect(x: 0, y: 0, width: width, height: height))" in swift
    assert 'let classLabels = ["0", "1", "2"' in swift and "let (label, probability) = topClass(logits)" in swift
    assert swift.count("{") == swift.count("}")


def test_swift_snippet_handles_images_classifiers_and_odd_names():
    info = {"inputs": [{"name": "input image", "type": "imageType", "width": 28, "height": 28,
                        "color_space": "GRAYSCALE"}],
            "outputs": [{"name": "classLabel", "type": "stringType"},
                        {"name": 'probs"\\', "type": "dictionaryType", "key_type": "stringKeyType"}]}
    swift = swift_snippet("My Model.mlpackage", info)
    assert "let inputImage = try MLFeatureValue(cgImage: cgImage, pixelsWide: 28, pixelsHigh: 28, " \
           "pixelFormatType: kCVPixelFormatType_OneComponent8, options: nil)" in swift
    assert "MLFeatureValue(pixelBuffer: pixelBuffer)" in swift
    assert '"input image": inputImage,' in swift
    assert 'outputs.featureValue(for: "classLabel")?.stringValue' in swift
    assert 'outputs.featureValue(for: "probs\\"\\\\")?.dictionaryValue' in swift


def test_reproduce_command_merges_the_stage_commands_and_budgets(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path, max_top1_drop=0.5, max_size_mb=2.0, objective="latency")
    cmd = data.command().shell()
    assert cmd.startswith("python -m playbook run --model resnet --dataset digits --stages 01,02,03,06 -p epochs=3")
    assert "-p calibration=random" in cmd  # the quantization stage's own parameter
    assert cmd.count("--model") == 1 and "-p model" not in cmd and "-p smoke" not in cmd
    assert "--budget max_top1_drop=0.5 max_size_mb=2.0" in cmd and "-p objective=latency" in cmd
    assert "--reports-dir" not in cmd  # the command is the client's to run, not this machine's folder
    page = render.render_report(data, recommend(data), "en")
    assert page.count("python -m playbook run --model resnet") == 1  # one reproduce command, not two


def test_deliverables_show_a_relative_package_its_target_and_its_metadata(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    page = _page(tmp_path)
    deliver = page[page.index('id="deliverables"'):page.index('id="next"')]
    assert "iOS 17 / macOS 14" in deliver  # minimum deployment target, from the package's spec version
    assert "com.github.apple.coremltools.version" in deliver  # read from the package itself
    assert "func makeImage(from cgImage: CGImage)" in deliver


def test_offline_check_finds_network_resources():
    assert render.offline_problems('<p>ok</p><img src="data:image/png;base64,AAAA">') == []
    # a link the reader may follow loads nothing (the Sources list links its pages); a loaded resource does
    assert render.offline_problems('<a href="https://example.com/page">x</a>') == []
    for bad in ('<script src="https://cdn.example/x.js"></script>', '<link href="//fonts.example/x.css">',
                '<img srcset="https://example.com/x.png 2x">', "<style>@import 'x.css';</style>",
                "<div style=\"background: url(https://example.com/x.png)\"></div>"):
        assert render.offline_problems(bad), bad


def test_failure_page_and_index(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    model_dir = tmp_path / "resnet"
    ReportRun(ReportConfig(model="resnet", reports_dir=str(tmp_path))).finish()
    write_json(model_dir / pages.RUN_STATUS, {"model": "resnet", "status": "ok"})
    bad_dir = tmp_path / "evil"
    page = pages.write_failure_page(bad_dir, EVIL, f"RuntimeError: {EVIL}", log_tail=f"line\n{EVIL}",
                                     stage="01_baseline")
    write_json(bad_dir / pages.RUN_STATUS, {"model": EVIL, "status": "failed", "error": "RuntimeError: boom",
                                                    "failed_stage": "01_baseline"})
    text = page.read_text()
    assert "FAILED" in text and "01_baseline" in text and "<script" not in text
    ja = (bad_dir / pages.REPORT_HTML_JA).read_text()  # no older Japanese report left beside a failure
    assert "失敗" in ja and "<script" not in ja
    index = pages.write_index(tmp_path).read_text()
    assert 'href="resnet/report.html"' in index and 'href="resnet/report.ja.html"' in index
    assert "int8-linear" in index and "89.60" in index
    assert "Meets budget" in index and "Latency measured on" in index and "reference executor (Linux CPU)" in index
    assert "FAILED in stage 01_baseline" in index and "RuntimeError: boom" in index and "<script" not in index
    # issue 27: no runtime jargon, readable times, and a Japanese index beside the English one
    assert ">torch<" not in index and "T0" not in re.sub(r"<[^>]+>", "", index).replace("UTC", "")
    index_ja = (tmp_path / "index.ja.html").read_text()
    assert '<html lang="ja">' in index_ja and "レポート一覧" in index_ja and 'href="resnet/report.ja.html"' in index_ja
    assert "失敗" in index_ja and render.offline_problems(index_ja) == []
    assert render.offline_problems(index) == [] and render.offline_problems(text) == []


# --------------------------------------------------------------------------- the notebook, end to end
def test_report_notebook_writes_the_bilingual_offline_report(tmp_path, tiny_package):
    """06_report.ipynb on three stage records -> report.json, report.html and report.ja.html."""
    reports = tmp_path / "reports"
    write_records(reports, tiny_package, latency_runtime="coreml")
    executed = tmp_path / "06_report.ipynb"
    execute(notebooks_dir() / "06_report.ipynb", executed,
            {"model": "resnet", "reports_dir": str(reports), "smoke": False, "max_size_mb": 0.35,
             "max_latency_ms": 1.0, "client": "ACME Corp"})
    summary = json.loads((reports / "resnet" / "report.json").read_text())
    assert summary["recommended"]["name"] == "student-w8" and summary["meets_budget"]
    assert summary["objective"] == "accuracy" and summary["stages"] == ["baseline", "quantization", "distillation"]
    for name, lang in (("report.html", "en"), ("report.ja.html", "ja")):
        out = reports / "resnet" / name
        html = out.read_text()
        assert f'<html lang="{lang}">' in html and "ACME Corp" in html and "student-w8" in html
        assert render.embedded_images(html) == 2 and render.decode_first_png(html)[:4] == b"\x89PNG"
        assert render.offline_problems(html) == []
        assert not re.search(r"<script[^>]*\bsrc=", html) and 'src="http' not in html
        # the only links out are the Sources list's (a reader's link loads nothing until followed)
        assert all(m.startswith('<a class="pb-url') for m in re.findall(r'<[^>]*href="http', html))
        assert "&lt;script&gt;alert" in html and '<script>alert("x")' not in html
        assert "cfg = ReportConfig" not in html  # no code cells
        assert "MLMultiArray(shape: [1, 1, 8, 8], dataType: .float32)" in html  # Swift from the real package
        assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    nb = json.loads(executed.read_text())
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert 'id="summary"' in shown and 'id="variants"' in shown  # the notebook shows the same sections


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_record_computed_from_a_changed_baseline_is_refused(tmp_path, tiny_package):
    """Lineage: a quantization record made from an older baseline.json is stale, and the report says which and how
    to refresh it instead of mixing the two runs."""
    from playbook.records import lineage_of, read_stage_record

    model_dir = write_records(tmp_path, tiny_package, stages=("baseline", "quantization"))
    quant = read_stage_record(model_dir, "quantization")
    quant.lineage = lineage_of(model_dir, [model_dir / "baseline.json"])
    write_stage_record(model_dir, quant)
    assert _data(tmp_path).rows  # fresh: loads
    base = read_stage_record(model_dir, "baseline")
    base.details["note"] = "a new training run"
    write_stage_record(model_dir, base)
    with pytest.raises(RecordError, match=r"stale records .*quantization\.json \(baseline\.json \(changed\)\).*"
                                          r"--stages 02,06"):
        _data(tmp_path)


# --------------------------------------------------------------------------- claims and sources (issue 17)
_URL = re.compile(r"^https://[A-Za-z0-9.-]+\.[a-z]{2,}/[^\s<>\"']*$")
RETIRED_PHRASES = ("ranks variants", "good for comparing variants", "overlap widely are not reliably different",
                   "not reliably different in accuracy")


def test_the_report_and_its_notebook_cite_well_formed_sources_and_no_retired_claim():
    nb = json.loads((notebooks_dir() / "06_report.ipynb").read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Sources" in markdown
    listed = re.findall(r"^\d+\. ", markdown.split("## Sources", 1)[1], flags=re.M)
    assert len(listed) >= 5
    for url in re.findall(r"https?://\S+", markdown):
        assert _URL.match(url.rstrip(".,)")), url
    from playbook.report.closing import SOURCES

    for source in SOURCES:
        assert source["en"] and source["ja"] and (not source["url"] or _URL.match(source["url"])), source
    cited = {int(n) for text in MESSAGES.values() for t in text.values() for n in re.findall(r"\[(\d+)\]", t)}
    assert cited and max(cited) <= len(SOURCES)  # every [n] the report writes is in its Sources list
    template = (render.TEMPLATES / "report.html.j2").read_text()
    assert "sources(c)" in template and 'id="sources"' in template
    corpus = markdown + template + json.dumps(MESSAGES, ensure_ascii=False)
    for phrase in RETIRED_PHRASES:
        assert phrase not in corpus, phrase


def test_the_japanese_report_describes_every_recipe_student_and_family_in_japanese():
    """Each variant's description in report.ja.html is written from its record (technique, algorithm, options), not
    the catalogue's English line; a record without those facts keeps its English description."""
    from types import SimpleNamespace

    from playbook.compress import RECIPES
    from playbook.report.facts import describe

    ja, en = Locale("ja"), Locale("en")
    japanese = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")

    def row(name, stage, description, target="coreml", **raw):
        return SimpleNamespace(name=name, stage=stage, description=description, raw=raw, target=target)

    for recipe in RECIPES.values():
        if recipe.technique == "precision":
            continue
        r = row(recipe.name, "quantization", recipe.description, technique=recipe.technique, recipe=recipe.to_dict())
        text = describe(r, ja)
        assert japanese.search(text) and text != recipe.description, recipe.name
        assert describe(r, en) == recipe.description
    for loc in (ja, en):  # two recipes never read the same: granularity, pruning pattern and pre-steps are named
        words = {}
        for recipe in RECIPES.values():
            r = row(recipe.name, "quantization", recipe.description, technique=recipe.technique,
                    recipe=recipe.to_dict())
            assert words.setdefault(describe(r, loc, own=False), recipe.name) == recipe.name, (loc.lang, recipe.name)
    grouped = describe(row("g", "quantization", "", technique="palettization",
                           recipe=RECIPES["palettize-4bit-grouped-eq"].to_dict()), ja)
    assert "出力チャネル最大 16 個のグループごと" in grouped and "層間イコライゼーション" in grouped
    joint = describe(row("j", "quantization", "", technique="joint", recipe=RECIPES["prune-50+int8"].to_dict()), en,
                     own=False)
    assert joint == "50% of the weights set to zero by magnitude, stored sparse, then the survivors as int8 after " \
                    "conversion (joint compression)"  # not "pruning and palettization"
    gptq = RECIPES["torch-palettize-4bit-gptq"]  # the images its bias correction used, not the option's cap
    text = describe(row(gptq.name, "quantization", "", technique=gptq.technique, recipe=gptq.to_dict(),
                        details={"bias_correction": {"images": 64}}), ja)
    assert "64 枚のキャリブレーション画像でバイアスを補正" in text and "1 層ずつ" in text
    qat = RECIPES["torch-int4-qat"]  # its own learning rate and step factor, as the English catalogue line says
    text = describe(row(qat.name, "quantization", "", technique=qat.technique, recipe=qat.to_dict()), ja)
    assert "4 ビット整数の重み" in text and "学習率 0.0005" in text and "ステップ数の 2 倍" in text
    assert "早期終了なし" in text and "no early stop" in qat.description
    assert "learning rate 5e-4" in qat.description and "twice the stage's fine-tune steps" in qat.description
    short = describe(row(qat.name, "quantization", "", technique=qat.technique, recipe=qat.to_dict()), en, own=False)
    assert "learning rate" not in short and "4-bit integer weights" in short  # the headline stays short
    int8 = RECIPES["int8-weights"].to_dict()  # a keep-N variant: its most damaging layers stay float
    one = row("int8-weights-keep1", "quantization", "", technique="quantization", recipe=int8)
    three = row("int8-weights-keep3", "quantization", "", technique="quantization", recipe=int8)
    assert describe(one, en, own=False).endswith(", its most damaging layer kept float")
    assert describe(three, en, own=False).endswith(", its 3 most damaging layers kept float")
    assert "影響の最も大きい 1 層" in describe(one, ja) and "影響の大きい 3 層" in describe(three, ja)
    w8a8 = describe(row("q", "quantization", "", technique="activation-quantization",
                        recipe=RECIPES["torch-w8a8-qat"].to_dict()), ja)
    assert "学習率 0.0001" in w8a8 and "倍" not in w8a8
    mixed = describe(row("palettize-mixed-tight", "quantization", "", technique="mixed-bits",
                         recipe=RECIPES["palettize-mixed-tight"].to_dict()), ja)
    assert "2、3、4、6、8 ビット" in mixed and "許容低下幅の 30% 以内" in mixed
    joint = describe(row("x", "quantization", "", technique="training-time",
                         recipe=RECIPES["torch-prune-75-ft+palettize-4bit"].to_dict()), ja)
    assert "75% まで" in joint and "4 ビットのパレット" in joint
    assert "palettize-mixed が選んだ" in describe(row("x", "quantization", "", technique="training-time",
                                                     recipe=RECIPES["torch-palettize-mixed-dkm"].to_dict()), ja)
    student = row("student-fp16", "distillation", "distilled resnet student", technique="distillation",
                  student="resnet", recipe=None, student_parameters=19890, parameter_ratio=0.114)
    assert describe(student, ja) == "蒸留した resnet 生徒モデル（パラメータ 19,890、教師の 11%）、FP16、非圧縮"
    dkm = RECIPES["torch-palettize-2bit-dkm"].to_dict()
    assert describe(row("s", "distillation", "", technique="distillation", student="resnet", recipe=dkm), ja) == \
        "蒸留した resnet 生徒モデルを torch-palettize-2bit-dkm で圧縮：微分可能 k-means（DKM）で再学習しながら学ぶ 2 ビットのパレット"
    family = row("squeezenet-w8", "architecture", "squeezenet (width=8) ...", technique="architecture",
                 family="squeezenet", knobs={"width": 8}, training={"epochs": 6, "lr": 0.05})
    assert describe(family, ja) == "squeezenet（width=8）をベースラインの設定で 6 エポック学習（最大学習率 0.05）、FP16 の ML プログラム"
    fixed_steps = row("resnet-w11", "architecture", "", technique="architecture", family="resnet", knobs={"width": 11},
                      training={"epochs": 0, "steps": 400, "lr": 0.01})  # the baseline fine-tuned a fixed 400 steps
    assert describe(fixed_steps, ja).startswith("resnet（width=11）をベースラインの設定で 400 ステップ学習")
    assert "0 エポック" not in describe(fixed_steps, ja)
    lite0 = row("efficientnet-lite0-fp16", "architecture", "efficientnet-lite0, ImageNet weights", technique="architecture")
    assert describe(lite0, ja) == "efficientnet-lite0, ImageNet weights"  # no family facts: the English line stays
    from playbook.compress.coreai_side import TECHNIQUES
    for technique, t in TECHNIQUES.items():  # Core AI models: coreai-opt's techniques in Japanese too
        text = describe(row(f"coreai-{technique}", "quantization", t.description, "coreai", technique=technique), ja)
        assert japanese.search(text) and "coreai-opt" in text, technique
    fp16 = row("coreai-fp16", "quantization", "", "coreai", technique="float", scheme="fp16")
    assert describe(fp16, ja) == "学習済みモデルをそのまま Core AI モデルに（FP16、coreai-torch）"


def test_the_mixed_bits_budget_miss_reads_in_japanese():
    """CI met this pitfall (a smoke run where no allocation met the budget) and the Japanese page showed English."""
    from playbook.report.pitfalls import translate
    title = "palettize-mixed: no allocation met 1.00 points on validation"
    detail = ("not even the widest palette on every layer met it; the variant written is that widest allocation "
              "(raise max_top1_drop or keep some layers in float)")
    ja_title, ja_detail, lang = translate(title, detail, Locale("ja"))
    assert lang == "ja" and "palettize-mixed" in ja_title and "1.00" in ja_title and "最も広いパレット" in ja_detail
    assert translate(title, detail, Locale("en"))[:2] == (title, detail)


def test_the_retarget_pitfall_names_each_targets_own_os_in_both_languages():
    """A recipe that needs iOS26 (the shared normal-float palette) beside iOS18 ones: each target's pitfall names
    its own releases; the Japanese page once said iOS 18 / macOS 15 whatever the target."""
    from playbook.report.pitfalls import translate
    title = "1 recipe(s) needed a newer deployment target"
    detail = ("torch-palettize-4bit-gptq were re-exported at iOS26: these packages load only on iOS 26 / macOS 26 or "
              "later (an app that supports older systems can use them behind `if #available(iOS 26, macOS 26, *)`)")
    ja_title, ja_detail, lang = translate(title, detail, Locale("ja"))
    assert lang == "ja" and "iOS 26 / macOS 26 以降" in ja_detail and "iOS 18" not in ja_detail
    assert translate(title, detail, Locale("en"))[:2] == (title, detail)


def test_a_training_length_in_steps_reads_as_steps_not_as_0_epochs():
    """A pretrained network fine-tuned for a fixed number of steps has ``epochs=0`` in its config: the families of
    stage 04 and the pitfall naming an unmatched budget once read "0 epoch(s)"."""
    from playbook.report.pitfalls import translate
    from playbook.train import TrainConfig
    assert TrainConfig(epochs=0, steps=400).length() == "400 steps" and TrainConfig(epochs=6).length() == "6 epoch(s)"
    title = "the budget is not matched with the baseline"
    for base, said in (("400 steps", "400 ステップ"), ("6 epoch(s)", "6 エポック"), ("6", "6 エポック")):  # "6": old records
        detail = f"families trained 2 epoch(s), the baseline {base}: differences mix architecture and training length"
        ja_title, ja_detail, lang = translate(title, detail, Locale("ja"))
        assert lang == "ja" and "2 エポック" in ja_detail and said in ja_detail, base


def test_the_methods_section_gives_a_fixed_step_fine_tune_in_steps(tmp_path, tiny_package):
    """The baseline of a pretrained network fine-tuned 400 steps: "Training: 400 optimiser steps", not "1 epoch(s)"
    from its one history entry."""
    model_dir = write_records(tmp_path, tiny_package)
    path = model_dir / "baseline.json"
    record = json.loads(path.read_text())
    record["train_config"] = {"lr": 0.01, "batch_size": 64, "epochs": 0, "steps": 400}
    path.write_text(json.dumps(record))
    assert "Training: 400 optimiser steps (learning rate 0.01, batch 64)" in _page(tmp_path)
    assert "学習：400 ステップ（学習率 0.01、バッチ 64）" in _page(tmp_path, "ja")


def test_the_student_size_miss_reads_in_japanese():
    from playbook.report.pitfalls import translate
    title = "the shipped student misses min_size_ratio=20"
    detail = ("18.2x smaller than the teacher's FP32 package: 39.2 KB measured against 34.4 KB predicted from the "
              "recipe's rate on the teacher; a small network keeps more bits per weight (...): lower the width")
    ja_title, ja_detail, lang = translate(title, detail, Locale("ja"))
    assert lang == "ja" and "min_size_ratio=20" in ja_title and "39.2 KB" in ja_detail and "34.4 KB" in ja_detail


# --------------------------------------------------------------------------- Core AI beside Core ML (issue 24)
def _with_coreai(root: Path, package: Path, coreai_info=None, baseline_target="iOS17"):
    """The three records of ``write_records`` plus a Core AI model in the quantization record: smaller than every
    Core ML variant and within one point, so it wins on size wherever it may compete; its latency is a
    host-interpreter figure, the fastest of all, which must never rank."""
    from playbook.records import read_stage_record

    model_dir = write_records(root, package)
    base = read_stage_record(model_dir, "baseline")
    base.config["deployment_target"] = baseline_target
    write_stage_record(model_dir, base)
    quant = read_stage_record(model_dir, "quantization")
    ai = _variant("quantization", "coreai-int4", 89.7, 0.06, 0.05, package, drop=0.3)
    ai.target = "coreai"
    ai.provenance["latency"] = {"runtime": "coreai-host", "measured": True, "rankable": False,
                                "what": "host interpreter: coreai-core's runtime on this machine's CPU"}
    ai.io = {"inputs": [{"name": "image", "type": "ndArray", "dtype": "FLOAT32", "shape": [1, 1, 8, 8],
                         "batch": "dynamic (1-4096)"}], "outputs": [{"name": "logits", "type": "ndArray",
                                                                     "shape": [1, 10]}], "min_os": "27.0"}
    ai.extra.update(technique="int4", side="coreai", deployment_target="iOS27",
                    details={"messages": ["palettizer skipped layer fc (16 does not divide 10)"]})
    quant.variants.append(ai)
    quant.details["coreai"] = coreai_info or {
        "available": True, "versions": "coreai-core 1.0.0b3", "variants": ["coreai-int4"], "skipped": [],
        "failed": [{"recipe": "coreai-prune50", "phase": "compress", "error": "RuntimeError", "reason": "boom"},
                   {"recipe": "coreai-int8", "phase": "oracle", "error": "CoreMLCounterpart",
                    "reason": "ct.convert: TypeError"}],
        "oracle": {"coreai-int4": {"top1_agreement": 100.0, "max_rel_error": 3e-7, "passed": True, "n": 400}}}
    write_stage_record(model_dir, quant)
    return model_dir


def test_variant_records_carry_their_target_and_old_records_read_as_core_ml():
    old = {"name": "int8", "stage": "quantization", "size_bytes": 10}
    assert VariantRecord.from_dict(old).target == "coreml"
    ai = VariantRecord(name="coreai-fp16", stage="quantization", target="coreai")
    assert ai.to_dict()["target"] == "coreai" and VariantRecord.from_dict(ai.to_dict()).target == "coreai"


def test_core_ai_variants_compete_only_for_a_deployment_target_of_27_or_later(tmp_path, tiny_package):
    _with_coreai(tmp_path, tiny_package)
    below = recommend(_data(tmp_path))  # the baseline's deployment target, iOS17
    assert below.chosen.name == "int8-linear" and below.chosen.target == "coreml"
    assert [(r.name, "iOS17" in why) for r, why in below.excluded] == [("coreai-int4", True)]
    assert "coreai-int4" not in {r.name for r in below.feasible}
    assert ("Not competing: coreai-int4 (Core AI models load only on iOS / macOS 27 or later, and the deployment "
            "target is iOS17, from the baseline).") in below.why  # one clause per reason, however many it excludes
    for target in ("iOS18", "macOS15", "iOS26"):
        assert recommend(_data(tmp_path, app_target=target)).chosen.name == "int8-linear", target
    at27 = recommend(_data(tmp_path, app_target="iOS27"))
    assert at27.chosen.name == "coreai-int4" and not at27.excluded  # it competes, and is the smallest
    assert recommend(_data(tmp_path, app_target="macOS28")).chosen.name == "coreai-int4"
    only_ml = recommend(_data(tmp_path, app_target="iOS27", framework="coreml"))
    assert only_ml.chosen.name == "int8-linear"
    only_ai = recommend(_data(tmp_path, app_target="iOS17", framework="coreai"))
    assert only_ai.chosen is None and only_ai.closest is None  # nothing may ship: Core AI needs 27, Core ML is excluded
    # its host-interpreter latency (the fastest figure of all) never ranks: a latency objective falls back
    fast = recommend(_data(tmp_path, app_target="iOS27", objective="latency"))
    assert fast.objective == "size" and "cannot rank" in fast.objective_reason
    with pytest.raises(ConfigError, match="app_target"):
        Budget(app_target="twenty-seven")
    with pytest.raises(ConfigError, match="framework"):
        Budget(framework="tflite")


def test_the_core_ml_or_core_ai_section_in_both_languages(tmp_path, tiny_package):
    _with_coreai(tmp_path, tiny_package)
    en = _page(tmp_path, "en")
    section = en[en.index('id="coreai"'):en.index('id="next"')]
    assert "Core AI models did not compete" in section and "iOS17" in section
    assert "int8-linear" in section and "coreai-int4" in section and "0.060 MB" in section
    assert "top-1 agreement 100.00%" in section and "3.0e-07" in section
    assert "1 recipe(s) failed: coreai-prune50" in section  # a missing Core ML counterpart is not a failed recipe
    assert "1 compressed model(s) measured without the runtime comparison" in section and "coreai-int8" in section
    assert "import CoreAI" in section and "import CoreML" not in section and en.count("import CoreML") == 1
    assert "int8-linear is this report&#39;s deliverable, so its Swift is printed once" in section  # not twice
    assert 'href="#deliverables"' in section
    assert "AIModel(contentsOf: url)" in section and "loadFunction(named: &#34;main&#34;)" in section
    assert "not compiled here" in section and "https://developer.apple.com/documentation/coreai/aimodel" in section
    assert "host-interpreter" in section and "palettizer skipped layer fc" in section
    at27 = _page(tmp_path, "en", app_target="iOS27")
    assert "Core AI models competed" in at27[at27.index('id="coreai"'):]
    delivered = at27[at27.index('id="deliverables"'):at27.index('id="coreai"')]
    assert "import CoreAI" in delivered and "import CoreML" not in delivered  # the delivered model's own Swift
    assert at27.count("import CoreAI") == 1 and "import CoreML" in at27[at27.index('id="coreai"'):]
    ja = _page(tmp_path, "ja")
    section = ja[ja.index('id="coreai"'):ja.index('id="next"')]
    assert "Core ML か Core AI か" in section and "比較対象にしていません" in section and "ランタイム間の比較なし" in section
    prose = re.sub(r"<pre.*?</pre>", "", section, flags=re.S)  # Swift comments stay English, as in the Core ML snippet
    assert "not compiled" not in prose and "コンパイルしていません" in prose and "Core AI models" not in prose


def test_the_core_ml_row_names_the_os_its_own_package_needs(tmp_path, tiny_package):
    """An int4 package needs iOS 18 while the app targets iOS 17: the row said "iOS17 or later" beside it."""
    from playbook.records import read_stage_record

    model_dir = _with_coreai(tmp_path, tiny_package)
    quant = read_stage_record(model_dir, "quantization")
    next(v for v in quant.variants if v.name == "int8-linear").extra["deployment_target"] = "iOS18"
    write_stage_record(model_dir, quant)
    for lang, label in (("en", "Core ML package (.mlpackage), iOS18 or later"),
                        ("ja", "Core ML パッケージ（.mlpackage）、iOS18 以降")):
        page = _page(tmp_path, lang)
        section = page[page.index('id="coreai"'):page.index('id="next"')]
        assert label in section and "iOS17 or later" not in section and "iOS17 以降" not in section, lang


def test_the_section_says_why_there_is_no_core_ai_variant(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    en = _page(tmp_path, "en")
    section = en[en.index('id="coreai"'):en.index('id="next"')]
    assert "No Core AI variants were made" in section and "re-run stage 02 with coreai=True" in section
    assert "import CoreAI" not in section and en.count("import CoreML") == 1 and "printed once" in section
    from playbook.records import read_stage_record

    quant = read_stage_record(tmp_path / "resnet", "quantization")
    quant.details["coreai"] = {"available": False, "why": "coreai-core is not installed (pip install "
                                                          "'coreml-playbook[coreai]')", "variants": []}
    write_stage_record(tmp_path / "resnet", quant)
    for lang, text in (("en", "the quantization stage recorded why"), ("ja", "量子化ステージが記録した理由")):
        page = _page(tmp_path, lang)
        section = page[page.index('id="coreai"'):page.index('id="next"')]
        assert text in section and "coreai-core is not installed" in section
