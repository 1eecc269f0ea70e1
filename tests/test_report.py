"""Stage 06: recommendation from the records, Pareto front, escaping, Swift from a real package, offline HTML."""
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
from playbook.report import pages, render
from playbook.report.recommend import Budget, load, recommend
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


def _provenance(energy_measured=False):
    where = {"runtime": "reference", "compute_units": None, "device": "Linux x86_64 CPU, torch 2.13.0+cpu",
             "note": "playbook reference executor", "measured": True}
    return {"accuracy": dict(where), "latency": {**where, "what": "batch-1 predict, 1 torch thread(s)"},
            "size": {"measured": True, "what": "bytes of the .mlpackage files; DEFLATE zip for download size"},
            "memory": {"measured": True, "what": "rise of peak RSS", "runtime": "reference"},
            "energy": {"measured": energy_measured, "what": "not measured: no readable energy counter (RAPL)"},
            "environment": {"os": "Linux"}}


IO = {"inputs": [{"name": "image", "type": "multiArrayType", "shape": [1, 1, 8, 8], "dtype": "FLOAT32"}],
      "outputs": [{"name": "logits", "type": "multiArrayType", "shape": [1, 10], "dtype": "FLOAT32"}]}


def _variant(stage, name, top1, size, latency, package, drop=None, description="", energy=None):
    vs = None
    if drop is not None:
        vs = PairedComparison(delta_top1=-drop, ci_low=-drop - 0.4, ci_high=-drop + 0.4, p_value=0.2,
                              only_reference_correct=0, only_variant_correct=0, n=400)
    return VariantRecord(name=name, stage=stage, description=description, package=str(package),
                         size_bytes=int(size * 1e6), zip_bytes=int(size * 0.9e6), top1=top1, top5=99.0,
                         top1_ci=(top1 - 1.5, top1 + 1.5), n_test=400, latency_ms=latency,
                         latency_p90_ms=latency * 1.2, fps=1000 / latency, peak_memory_mb=3.0, energy_mj=energy,
                         provenance=_provenance(energy is not None), io=IO,
                         reference="baseline-fp32" if drop is not None else None, vs_reference=vs)


def _record(model, stage, variants, pitfalls=(), run=None, **details):
    return StageRecord(stage=stage, model=model, config={"smoke": False, "dataset": "digits"},
                       environment={"os": "Linux 6", "cpu": "AMD EPYC", "python": "3.11",
                                    "versions": {"torch": "2.13.0", "coremltools": "9.0"}},
                       run=(run or RunCommand(model=model)).to_dict(), reproduce="", variants=list(variants),
                       pitfalls=list(pitfalls), details=details)


def write_records(root: Path, package: Path, model="resnet", stages=("baseline", "quantization", "distillation")):
    """Three stage records with numbers chosen so that budgets pick different techniques."""
    model_dir = root / model
    if "baseline" in stages:
        write_stage_record(model_dir, _record(
            model, "baseline",
            [_variant("baseline", "baseline-fp32", 90.0, 1.00, 2.0, package, description="FP32 reference"),
             _variant("baseline", "baseline-fp16", 90.0, 0.50, 1.8, package, drop=0.0)],
            pitfalls=[{"title": "FP16 package has FP16 I/O", "detail": "pass dtype=np.float32"}],
            run=RunCommand(model=model, dataset="digits", params={"epochs": 3}, stages="01"),
            reference_variant="baseline-fp32", dataset={"name": "digits", "classes": [str(i) for i in range(10)],
                                                        "mean": [0.3], "std": [0.37]}))
    if "quantization" in stages:
        write_stage_record(model_dir, _record(
            model, "quantization",
            [_variant("quantization", "int8-linear", 89.6, 0.25, 1.7, package, drop=0.4),
             _variant("quantization", "int4-palettized", 87.0, 0.13, 1.9, package, drop=3.0, description=EVIL)],
            pitfalls=[{"title": f"Calibration {EVIL}", "detail": "int4 lost 3 points"}],
            run=RunCommand(model=model, params={"calibration": "random"}, stages="02")))
    if "distillation" in stages:
        write_stage_record(model_dir, _record(
            model, "distillation", [_variant("distillation", "student-w8", 89.9, 0.30, 0.9, package, drop=0.1,
                                             energy=0.12)]))
    return model_dir


def _data(root, smoke=False, **budget):
    return load("resnet", root / "resnet", Budget(**budget), smoke)


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
    tight = recommend(_data(tmp_path, max_top1_drop=0.5))
    assert tight.chosen.name == "int8-linear" and "interval of its top-1 drop reaches 0.80 pp" in tight.why
    # the technique advice comes from the numbers: quantization for size, distillation for accuracy
    assert "when accuracy dominates, prefer distillation" in rec.technique
    assert "when size dominates, prefer quantization" in rec.technique


def test_size_and_latency_budgets_make_accuracy_the_objective(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    rec = recommend(_data(tmp_path, max_size_mb=0.35, max_latency_ms=1.0))
    assert rec.objective == "accuracy"
    assert rec.chosen.name == "student-w8" and rec.chosen.stage == "distillation"
    assert "Only distillation variants" in rec.technique


def test_latency_objective_and_explicit_objective(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    assert recommend(_data(tmp_path, max_size_mb=0.6)).chosen.name == "student-w8"  # fastest under 0.6 MB
    rec = recommend(_data(tmp_path, objective="accuracy"))
    assert rec.chosen.name in ("baseline-fp32", "baseline-fp16")  # 90.0, the reference accuracy


def test_no_variant_meets_the_budget_shows_the_closest(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    rec = recommend(_data(tmp_path, max_top1_drop=0.05, max_size_mb=0.2))
    assert not rec.meets_budget and rec.chosen is None
    assert rec.closest is not None and rec.deliverable is rec.closest
    assert "No variant meets the budgets" in rec.why and rec.closest.name in rec.why
    html = render.summary_html(_data(tmp_path, max_top1_drop=0.05, max_size_mb=0.2), rec)
    assert "No variant meets your budget" in html


def test_unmeasured_axis_does_not_meet_a_budget(tmp_path, tiny_package):
    model_dir = write_records(tmp_path, tiny_package, stages=("baseline",))
    rec_path = model_dir / "baseline.json"
    record = json.loads(rec_path.read_text())
    for v in record["variants"]:
        v["latency_ms"] = None
    rec_path.write_text(json.dumps(record))
    rec = recommend(_data(tmp_path, max_latency_ms=5.0))
    assert not rec.meets_budget and "latency not measured" in rec.why


def test_pareto_front_keeps_only_non_dominated_variants(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path)
    variants = [r.raw for r in data.rows]
    assert [v.name for v in pareto_front(variants, lambda v: v.size_mb, lambda v: v.top1)] == [
        "int4-palettized", "int8-linear", "student-w8", "baseline-fp16"]
    assert [v.name for v in pareto_front(variants, lambda v: v.latency_ms, lambda v: v.top1)] == [
        "student-w8", "baseline-fp16"]
    chart = render.pareto_figure(data, recommend(data))
    assert len(chart.figure.axes) == 2 and chart.png()[:8] == b"\x89PNG\r\n\x1a\n" and f"{len(data.rows)} variants" in chart.alt


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
    for piece in (render.summary_html(data, rec), render.variants_table_html(data, rec), render.pitfalls_html(data),
                  render.deliverables_html(data, rec)):
        assert piece.startswith("<div")


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


# --------------------------------------------------------------------------- HTML pieces
def test_model_supplied_strings_are_escaped(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    data = _data(tmp_path)
    rec = recommend(data)
    pieces = render.variants_table_html(data, rec) + render.pitfalls_html(data) + render.summary_html(data, rec)
    assert "<script" not in pieces
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in pieces
    table = render.variants_table_html(data, rec)
    assert table.count("<tr") == 1 + len(data.rows)
    # energy: the distilled variant measured it, the others say why not
    assert "0.120" in table and "not measured: no readable energy counter" in table
    assert "reference executor on Linux x86_64 CPU" in table and "not Apple&#x27;s Core ML runtime" in table
    assert "[88.50, 91.50]" in table  # top-1 interval
    page = pages.index_html(tmp_path)
    assert "<script" not in page


def test_swift_snippet_uses_the_package_real_io(tiny_package):
    from playbook.coreml import package_info

    info = package_info(tiny_package)
    assert [f["name"] for f in info.inputs] == ["image"] and [f["name"] for f in info.outputs] == ["logits"]
    swift = swift_snippet(tiny_package, info.to_dict(), normalisation={"mean": [0.3], "std": [0.37]})
    assert 'forResource: "int8-linear", withExtension: "mlmodelc"' in swift
    assert "let image = try MLMultiArray(shape: [1, 1, 8, 8], dataType: .float32)" in swift
    assert '"image": MLFeatureValue(multiArray: image)' in swift
    assert 'let logits = outputs.featureValue(for: "logits")?.multiArrayValue' in swift
    assert "mean [0.3000], std [0.3700]" in swift


def test_swift_snippet_handles_images_classifiers_and_odd_names():
    info = {"inputs": [{"name": "input image", "type": "imageType", "width": 28, "height": 28,
                        "color_space": "GRAYSCALE"}],
            "outputs": [{"name": "classLabel", "type": "stringType"},
                        {"name": 'probs"\\', "type": "dictionaryType", "key_type": "stringKeyType"}]}
    swift = swift_snippet("My Model.mlpackage", info)
    assert "let inputImage = try MLFeatureValue(cgImage: cgImage, pixelsWide: 28, pixelsHigh: 28, " \
           "pixelFormatType: kCVPixelFormatType_OneComponent8, options: nil)" in swift
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


def test_offline_check_finds_network_resources():
    assert render.offline_problems('<p>ok</p><img src="data:image/png;base64,AAAA">') == []
    for bad in ('<script src="https://cdn.example/x.js"></script>', '<link href="//fonts.example/x.css">',
                '<a href="http://example.com">x</a>', "<style>@import 'x.css';</style>",
                "<div style=\"background: url(https://example.com/x.png)\"></div>"):
        assert render.offline_problems(bad), bad


def test_failure_page_and_index(tmp_path, tiny_package):
    write_records(tmp_path, tiny_package)
    model_dir = tmp_path / "resnet"
    ReportRun(ReportConfig(model="resnet", reports_dir=str(tmp_path))).finish()
    (model_dir / pages.REPORT_HTML).write_text("<html>report</html>")
    write_json(model_dir / pages.RUN_STATUS, {"model": "resnet", "status": "ok"})
    bad_dir = tmp_path / "evil"
    page = pages.write_failure_page(bad_dir, EVIL, f"RuntimeError: {EVIL}", log_tail=f"line\n{EVIL}",
                                     stage="01_baseline")
    write_json(bad_dir / pages.RUN_STATUS, {"model": EVIL, "status": "failed", "error": "RuntimeError: boom",
                                                    "failed_stage": "01_baseline"})
    text = page.read_text()
    assert "FAILED" in text and "01_baseline" in text and "<script" not in text
    index = pages.write_index(tmp_path).read_text()
    assert 'href="resnet/report.html"' in index and "int8-linear" in index and "89.60" in index
    assert "FAILED in 01_baseline" in index and "RuntimeError: boom" in index and "<script" not in index
    assert render.offline_problems(index) == [] and render.offline_problems(text) == []


# --------------------------------------------------------------------------- the notebook, end to end
def test_report_notebook_renders_an_offline_html_report(tmp_path, tiny_package):
    """06_report.ipynb on three stage records -> report.json and a self-contained report.html."""
    reports = tmp_path / "reports"
    write_records(reports, tiny_package)
    executed = tmp_path / "06_report.ipynb"
    execute(notebooks_dir() / "06_report.ipynb", executed,
            {"model": "resnet", "reports_dir": str(reports), "smoke": False, "max_size_mb": 0.35,
             "max_latency_ms": 1.0})
    summary = json.loads((reports / "resnet" / "report.json").read_text())
    assert summary["recommended"]["name"] == "student-w8" and summary["meets_budget"]
    assert summary["objective"] == "accuracy" and summary["stages"] == ["baseline", "quantization", "distillation"]

    out = render.export_html(executed, reports / "resnet" / "report.html", title="Core ML report: resnet")
    html = out.read_text()
    assert "Recommended: <b>student-w8</b>" in html  # executive summary
    assert html.count('class="pb-table"') == 1 and "Top-1 drop vs reference" in html  # the table
    assert render.embedded_images(html) >= 1  # the Pareto charts, inline
    assert render.decode_first_png(html)[:4] == b"\x89PNG"
    assert render.offline_problems(html) == []
    assert not re.search(r"<script[^>]*\bsrc=", html) and 'src="http' not in html and 'href="http' not in html
    assert "cdnjs" not in html and "mathjax" not in html.lower() and "require.js" not in html
    assert "&lt;script&gt;alert" in html and '<script>alert("x")' not in html
    assert "cfg = ReportConfig" not in html  # no code cells
    assert "MLMultiArray(shape: [1, 1, 8, 8], dataType: .float32)" in html  # Swift from the real package
    assert "python -m playbook run --model resnet" in html
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


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
