"""Stage 05 and its harness: timing, statistics, the schema, imports (and refusals), the record walk, the Swift
benchmark, the report's best-provenance latency, the CLI.  Core ML itself runs only on macOS: those tests skip
elsewhere with the reason."""
from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import pytest

from playbook import bench
from playbook.bench_schema import (MEASUREMENT_SCHEMA, BenchResultsError, check_measurement, schema_problems,
                                   unmeasured_numbers, validate_results)
from playbook.cli import main
from playbook.config import ConfigError
from playbook.records import StageRecord, VariantRecord, load_stage_records, read_stage_record, write_stage_record
from playbook.report.device import best_latencies, with_best_latency
from playbook.report.recommend import variant_rows
from playbook.stages.baseline import BaselineConfig, run_baseline
from playbook.cli_bench import import_results
from playbook.stages.benchmark import BenchmarkConfig, BenchmarkRun, run_benchmark
from playbook.swift_bench import SWIFT_KEYS, resource_name, swift_benchmark

ON_MAC = platform.system() == "Darwin"
SMALL = {"dataset": "digits", "model_options": {"width": 8}, "epochs": 1, "lr": 0.05}


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """A smoke baseline on digits, then stage 05 with the host and reference backends (every backend is asked for:
    the ones this machine lacks must be recorded as skipped with their reason)."""
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        reports = str(root / "reports")
        run_baseline(BaselineConfig(**SMALL, reports_dir=reports, smoke=True, threads=1))
        cfg = BenchmarkConfig(reports_dir=reports, smoke=True, threads=1)
        record = run_benchmark(cfg)
        yield cfg, record


def _measurement(benched) -> dict:
    return copy.deepcopy(benched[1]["measurements"][0])


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, message", [
    ({"backends": ["tensorrt"]}, "backends='tensorrt' is not valid"),
    ({"backends": []}, "backends=\\[\\] selects nothing"),
    ({"compute_units": ["NPU"]}, "compute_units='NPU' is not valid"),
    ({"torch_devices": ["mps"]}, "torch_devices='mps' is not valid"),
    ({"torch_threads": [-1]}, "torch_threads=\\[-1\\]"),
    ({"torch_threads": "1"}, "torch_threads='1' must be list"),
    ({"min_runs": 100, "max_runs": 10}, "max_runs=10 is out of range"),
    ({"stable_within": 2.0}, "stable_within=2.0 is out of range"),
    ({"battery_voltage": 0.0}, "battery_voltage=0.0 is out of range"),
    ({"matmul_size": 4}, "matmul_size=4 is out of range"),
    ({"compare_to": " "}, "compare_to"),
])
def test_bad_config_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        BenchmarkConfig(**changes)


def test_unknown_parameter_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown BenchmarkConfig key\(s\) \['runs'\]"):
        BenchmarkConfig.from_dict({"runs": 10})


def test_unknown_variant_names_the_ones_that_exist(benched):
    cfg, _ = benched
    with pytest.raises(ConfigError, match=r"no variant 'int3'.*baseline/baseline-fp32"):
        BenchmarkRun(cfg.replace(variants=["int3"]))


# --------------------------------------------------------------------------- timing and statistics
def test_timing_stops_for_the_stated_reason():
    calls = []
    cfg = bench.BenchConfig(warmup=3, min_runs=10, max_runs=20, check_every=5, stable_within=1.0, patience=2)
    stable = bench.time_until_stable(lambda: calls.append(1), cfg)
    assert stable.stopped == "stable" and 10 <= len(stable.samples_ms) <= 20 and stable.warmup == 3
    assert len(calls) == 3 + len(stable.samples_ms)
    capped = bench.time_until_stable(lambda: None, cfg.replace(patience=100, max_runs=12))  # can never be stable
    assert capped.stopped == "max_runs" and len(capped.samples_ms) == 12
    slow = bench.time_until_stable(lambda: time.sleep(0.02), cfg.replace(max_seconds=0.05, min_runs=10, warmup=1))
    assert slow.stopped == "max_seconds" and len(slow.samples_ms) < 10  # a hard cap, even below min_runs
    assert all(s >= 20.0 for s in slow.samples_ms)


def test_latency_block_is_the_statistics_of_its_samples():
    samples = (1.0, 2.0, 3.0, 4.0, 100.0)
    block = bench.Timing(samples, 2, "stable", 0.1).to_dict()
    assert block["median"] == 3.0 and block["p90"] == pytest.approx(np.percentile(samples, 90))
    assert block["fps"] == pytest.approx(1000 / 3.0) and block["cv"] == pytest.approx(np.std(samples) / np.mean(samples))
    assert block["samples"] == list(samples) and block["runs"] == 5


def test_ratio_of_medians_and_its_interval():
    rng = np.random.default_rng(0)
    base = rng.normal(10.0, 0.2, 400)
    r = bench.ratio_of_medians(2 * base, base, resamples=500)
    assert r["ratio"] == pytest.approx(2.0, rel=1e-9) and r["low"] < 2.0 < r["high"] and r["high"] - r["low"] < 0.1
    same = bench.ratio_of_medians(rng.normal(10, 1, 200), rng.normal(10, 1, 200), resamples=500)
    assert same["low"] < 1.0 < same["high"]


def test_one_rate_cannot_fit_the_published_latencies():
    loo = bench.single_rate_loo()
    rates = {p["model"]: p["implied_gflops"] for p in loo["points"]}
    assert rates["ResNet50"] / rates["MobileNetV2"] > 4  # 8.2 GFLOP in 1.52 ms vs 0.6 GFLOP in 0.48 ms
    assert loo["median_error"] > 0.30


def test_settings_this_machine_cannot_run_are_listed_with_the_reason():
    settings, skipped = bench.plan_settings(["coreml", "torch", "reference"], ["ALL", "CPU_AND_NE"], ["cpu", "cuda"],
                                            [1, 0])
    labels = [s.label for s in settings]
    assert "reference cpu 1 thread" in labels and "torch cpu 1 thread" in labels
    import os

    assert any(s.threads == os.cpu_count() for s in settings if s.backend == "torch")
    if not ON_MAC:
        assert {"coreml ALL", "coreml CPU_AND_NE"} <= {s["setting"] for s in skipped}
        assert all("macOS" in s["why"] for s in skipped if s["setting"].startswith("coreml"))
    import torch

    if not torch.cuda.is_available():
        assert any(s["setting"] == "torch cuda" and "CUDA" in s["why"] for s in skipped)


def test_float32_graph_matches_the_reference_executor(benched):
    """The torch backend runs the same program as plain float32: FP32 packages agree with the reference executor."""
    import torch

    from playbook.mlprogram import ReferenceProgram

    cfg, record = benched
    root = cfg.model_dir()
    fp32 = read_stage_record(root, "baseline").variant("baseline-fp32")
    program = ReferenceProgram.load(fp32.package_path(root))
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    dense = program.run_float32({"image": torch.from_numpy(x)})["logits"].numpy()
    np.testing.assert_allclose(dense, program.predict({"image": x})["logits"], rtol=1e-5, atol=1e-5)
    assert record["flops"]["baseline/baseline-fp32"] > 0


# --------------------------------------------------------------------------- the record: every latency says where
def test_every_latency_says_where_and_nothing_unmeasured_is_a_number(benched):
    cfg, record = benched
    path = cfg.model_dir() / "benchmark.json"
    raw = json.loads(path.read_text())
    assert raw["variants"] == []  # no duplicates of the earlier stages' variants
    measurements = raw["measurements"]
    assert {m["backend"] for m in measurements} == {"torch", "reference"}
    assert len(measurements) == len(raw["targets"]) * len(raw["settings"])
    for m in measurements:
        env = m["environment"]
        assert m["backend"] and m["tier"] == bench.TIERS[m["backend"]]
        assert env["device"] and env["os"] and env["versions"]["torch"] and env["versions"]["coremltools"]
        assert isinstance(m["threads"], int) and m["threads"] >= 1
        assert m["latency"]["unit"] == "ms" and m["latency"]["runs"] == len(m["latency"]["samples"])
        assert not check_measurement(m) and not schema_problems(m, MEASUREMENT_SCHEMA)
        assert m["memory"]["measured"] and m["memory"]["peak"] > 0
        assert (m["energy"]["measured"] and m["energy"]["source"]) or (
            m["energy"]["per_inference"] is None and m["energy"]["why"].startswith("not measured"))
        assert m["compute_plan"]["measured"] is False and "Core ML" in m["compute_plan"]["why"]
    assert unmeasured_numbers(raw) == []
    # the walker does catch a number hidden in an unmeasured block
    broken = copy.deepcopy(raw)
    broken["measurements"][0]["energy"] = {"measured": False, "unit": "J", "per_inference": 0.001, "why": "x"}
    assert unmeasured_numbers(broken) == [".measurements[0].energy.per_inference"]
    # skipped settings are recorded with their reason, not dropped
    if not ON_MAC:
        assert any(s["setting"].startswith("coreml") and "macOS" in s["why"] for s in raw["skipped"])
    results = json.loads((cfg.model_dir() / "benchmark" / "results.json").read_text())
    assert validate_results(results)["measurements"] == measurements


def test_report_rows_carry_the_best_provenance_latency(benched):
    cfg, _ = benched
    records = load_stage_records(cfg.model_dir())
    rows = {r.name: r for r in variant_rows(records)}
    fp32 = rows["baseline-fp32"]
    prov = fp32.provenance["latency"]
    assert prov["tier"] == "host" and prov["runtime"] == "torch" and prov["threads"] == 1
    assert prov["setting"] == "torch cpu 1 thread" and platform.system() in prov["device"].replace("macOS", "Darwin")
    m = next(m for m in records["benchmark"]["measurements"] if m["variant"] == "baseline-fp32"
             and m["setting"] == "torch cpu 1 thread")
    assert fp32.latency_ms == m["latency"]["median"] and fp32.raw.latency_ms == m["latency"]["median"]


def _variant(name, sha, latency=None, runtime="reference"):
    prov = {"latency": {"measured": True, "runtime": runtime, "device": "cpu"}, "environment": {"os": "Linux"}}
    return VariantRecord(name=name, stage="baseline", package_sha256=sha, latency_ms=latency, provenance=prov)


def _m(variant, sha, backend, median, **kw):
    tier = bench.TIERS[backend]
    return {"stage": "baseline", "variant": variant, "package_sha256": sha, "backend": backend, "tier": tier,
            "setting": kw.get("setting", backend), "compute_units": kw.get("units"), "threads": kw.get("threads", 1),
            "device": "cpu", "environment": {"device": kw.get("device", "d"), "os": "x"},
            "latency": {"median": median, "p90": median, "fps": 1000 / median, "runs": 5},
            "timestamp": kw.get("ts", "2026-01-01T00:00:00+00:00")}


def test_best_latency_prefers_device_then_host_then_reference():
    """A pure function over records: the orderings, and a measurement of another package is ignored."""
    base = StageRecord("baseline", "m", {}, {}, {}, "", variants=[_variant("a", "1" * 64, 5.0), _variant("b", "2" * 64, 7.0)])
    meas = [_m("a", "1" * 64, "reference", 4.0), _m("a", "1" * 64, "torch", 3.0, threads=2, setting="torch 2"),
            _m("a", "1" * 64, "torch", 3.5, threads=1, setting="torch 1"),
            _m("b", "2" * 64, "coreml", 0.9, units="CPU_ONLY", setting="coreml CPU_ONLY"),
            _m("b", "2" * 64, "coreml", 1.1, units="ALL", setting="coreml ALL"),
            _m("b", "9" * 64, "coreml", 0.1, units="ALL", setting="coreml ALL old package")]
    bench_rec = StageRecord("benchmark", "m", {}, {}, {}, "", details={"measurements": meas})
    best = best_latencies({"baseline": base, "benchmark": bench_rec})
    a, b = best[("baseline", "a", "1" * 64)], best[("baseline", "b", "2" * 64)]
    assert (a.tier, a.setting, a.median_ms) == ("host", "torch 1", 3.5)  # one thread first within the host tier
    assert (b.tier, b.compute_units, b.median_ms) == ("device", "ALL", 1.1)  # ALL first; the stale 0.1 is ignored
    only_own = best_latencies({"baseline": base})
    assert only_own[("baseline", "a", "1" * 64)].tier == "reference" and only_own[("baseline", "a", "1" * 64)].median_ms == 5.0
    shown = with_best_latency(base.variants[1], best)
    assert shown.latency_ms == 1.1 and shown.provenance["latency"]["runtime"] == "coreml"
    assert base.variants[1].latency_ms == 7.0  # a copy: the record is untouched


# --------------------------------------------------------------------------- the views of the record
def test_the_notebook_tables_are_functions_of_the_record(benched):
    """What notebook 05 shows comes from the record (``run.snapshot()`` while it runs): the packages, every setting
    (the ones that cannot run here with their reason), the host's peak, this run's and the imported measurements."""
    from playbook import views

    cfg, record = benched
    targets = views.bench_targets_table(record).rows
    assert [(r["stage"], r["variant"]) for r in targets] == [(t["stage"], t["variant"]) for t in record["targets"]]
    assert all(r["size MB"] > 0 and len(r["sha256"]) == 12 for r in targets)
    settings = views.bench_settings_table(record).rows
    assert len(settings) == len(record["settings"]) + len(record["skipped"])
    assert {r["tier"] for r in settings if r["runs here"] == "no" and r["setting"].startswith("coreml")} <= {"device"}
    assert [r["setting"] for r in views.host_peak_table(record).rows] == list(record["host_peak"])
    here, imported = views.measurements_of(record), views.measurements_of(record, imported=True)
    assert here == record["measurements"] and imported == []
    assert len(views.bench_measurements_table(here).rows) == len(here)
    assert len(views.ratio_table(record["comparisons"]).rows) == len(record["comparisons"])


# --------------------------------------------------------------------------- import-bench
def _results_file(benched, tmp_path, name="results.json", mutate=None):
    cfg, _ = benched
    doc = json.loads((cfg.model_dir() / "benchmark" / "results.json").read_text())
    if mutate:
        mutate(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["measurements"][0]["latency"].pop("p90"), r"measurements\[0\]\.latency: 'p90' is a required"),
    (lambda d: d["measurements"][0]["latency"].update(unit="us"), r"latency\.unit: 'ms' was expected"),
    (lambda d: d["measurements"][0].update(backend="tensorrt"), r"backend: 'tensorrt' is not one of"),
    (lambda d: d["measurements"][0].update(tier="device"), r"backend 'torch' measures 'host' figures|backend "
                                                           r"'reference' measures 'reference' figures"),
    (lambda d: d["measurements"][0]["latency"].update(median=0.0001), r"latency\.median=0\.0001"),  # implausible (< 1 µs), not its median
    (lambda d: d["measurements"][0]["environment"].update(os="iOS 18.1"), r"on 'iOS 18.1' can only come from Core ML"),
    (lambda d: d["measurements"][0]["energy"].update(per_inference=0.5), r"energy\.per_inference: 0\.5 is not of type "
                                                                         r"'null'"),
    (lambda d: d["measurements"][0].update(package_sha256="f" * 64), r"none of 'resnet''s current packages"),
    (lambda d: d.update(model="squeezenet"), r"model 'resnet' differs|holds measurements of model 'squeezenet'"),
    (lambda d: d.update(format="csv"), r"format is 'csv'"),
])
def test_malformed_or_mismatched_results_are_refused_and_nothing_changes(benched, tmp_path, mutate, message):
    cfg, _ = benched
    before = (cfg.model_dir() / "benchmark.json").read_bytes()
    path = _results_file(benched, tmp_path, mutate=mutate)
    with pytest.raises(BenchResultsError, match=message):
        import_results(path, cfg.model, cfg.reports_dir)
    assert (cfg.model_dir() / "benchmark.json").read_bytes() == before


def test_invalid_json_and_another_models_package_are_refused_by_name(benched, tmp_path):
    cfg, record = benched
    bad = tmp_path / "truncated.json"
    bad.write_text('{"format": "playbook-benchmark-results", "measurements": [')
    with pytest.raises(BenchResultsError, match="not valid JSON"):
        import_results(bad, cfg.model, cfg.reports_dir)
    # a package hash that belongs to another model in the same reports folder is named as that model's
    other = StageRecord("baseline", "squeezenet", {"smoke": True}, {}, {}, "",
                        variants=[VariantRecord(name="baseline-fp16", stage="baseline", package_sha256="e" * 64)])
    write_stage_record(Path(cfg.reports_dir) / "squeezenet", other)
    path = _results_file(benched, tmp_path, mutate=lambda d: d["measurements"][0].update(package_sha256="e" * 64))
    with pytest.raises(BenchResultsError, match=r"it is model 'squeezenet', variant baseline/baseline-fp16's"):
        import_results(path, cfg.model, cfg.reports_dir)
    assert main(["import-bench", str(path), "--model", cfg.model, "--reports-dir", cfg.reports_dir]) == 2


def test_an_imported_file_appears_in_the_report_with_its_provenance_and_survives_a_rerun(benched, tmp_path, capsys):
    """The stage's own portable results file, imported back: same numbers, now marked as imported from that file."""
    cfg, _ = benched
    path = _results_file(benched, tmp_path, name="host-results.json")
    assert main(["import-bench", str(path), "--model", cfg.model, "--reports-dir", cfg.reports_dir]) == 0
    assert "imported" in capsys.readouterr().out
    records = load_stage_records(cfg.model_dir())
    rec = records["benchmark"]
    assert rec["imports"][-1]["file"] == "host-results.json" and rec["imports"][-1]["n"] == len(
        json.loads(path.read_text())["measurements"])
    assert all(m["provenance"]["source"] == "imported" for m in rec["measurements"])  # same keys: replaced
    row = next(r for r in variant_rows(records) if r.name == "baseline-fp32")
    assert "imported from host-results.json" in row.provenance["latency"]["what"]
    from playbook.report.device import benchmark_html

    page = benchmark_html(records)
    assert "host-results.json" in page and "PlaybookBenchmark.swift" in page
    # the stage re-runs without measuring (nothing timed): imported measurements of unchanged packages are kept
    run = BenchmarkRun(cfg)
    kept = run.finish()
    assert len(kept["measurements"]) == len(rec["measurements"]) and kept["imports"][-1]["file"] == "host-results.json"


# --------------------------------------------------------------------------- the Swift benchmark
def test_swift_benchmark_uses_the_real_io_and_writes_the_schema_keys(benched):
    cfg, record = benched
    swift_path = cfg.model_dir() / record["swift_benchmark"]["path"]
    source = swift_path.read_text()
    baseline = read_stage_record(cfg.model_dir(), "baseline")
    for v in baseline.variants:
        assert v.package_sha256 in source and resource_name("baseline", v.package) in source
    assert 'Feed.array(name: "image", shape: [1, 1, 8, 8], dataType: .float32)' in source
    required = set(MEASUREMENT_SCHEMA["required"])
    assert set(SWIFT_KEYS["measurement"]) == required
    latency = MEASUREMENT_SCHEMA["properties"]["latency"]
    assert set(latency["required"]) <= set(SWIFT_KEYS["latency"]) <= set(latency["properties"])
    for key in SWIFT_KEYS["measurement"] + SWIFT_KEYS["latency"]:
        assert f'"{key}":' in source, key
    assert '"format": "playbook-benchmark-results"' in source.replace('["format": ', '"format": ')
    assert (swift_path.parent / "copy_models.sh").read_text().count("cp -R") == len(record["targets"])
    odd = swift_benchmark('evil"model\n', [{"stage": "baseline", "variant": 'v"1', "package_sha256": "a" * 64,
                                            "package": "baseline/x.mlpackage", "io": {"inputs": []}}])
    assert 'let playbookModel = "evil\\"model\\n"' in odd and 'variant: "v\\"1"' in odd


# --------------------------------------------------------------------------- macOS only
@pytest.mark.skipif(not ON_MAC, reason="Apple's Core ML runtime and MLComputePlan run only on macOS "
                                       "(coremltools predicts only there); this machine is " + platform.system())
def test_coreml_backend_measures_every_compute_unit(benched):
    cfg, _ = benched
    record = run_benchmark(cfg.replace(backends=["coreml"], variants=["baseline-fp16"]))
    units = {m["compute_units"] for m in record["measurements"] if m["backend"] == "coreml"}
    assert units == {"CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"}
    assert all(m["tier"] == "device" and m["threads"] == "runtime" for m in record["measurements"]
               if m["backend"] == "coreml")


def test_compute_plan_off_macos_says_why_without_numbers():
    if ON_MAC:
        pytest.skip("on macOS MLComputePlan is measured (see the coreml backend test)")
    plan = bench.compute_plan("unused.mlmodelc", "ALL")
    assert plan["measured"] is False and "macOS" in plan["why"] and unmeasured_numbers(plan) == []


def test_cli_bench_writes_the_record_and_a_portable_results_file(benched, tmp_path):
    cfg, _ = benched
    out = tmp_path / "out.json"
    code = main(["bench", "--model", cfg.model, "--smoke", "--reports-dir", cfg.reports_dir, "--out", str(out), "-p",
                 "variants=['baseline-fp16']", "backends=['reference']", "memory=False"])
    assert code == 0
    doc = validate_results(json.loads(out.read_text()))
    assert {(m["variant"], m["backend"]) for m in doc["measurements"]} == {("baseline-fp16", "reference")}
    assert doc["measurements"][0]["memory"] == {"measured": False, "unit": "MB", "peak": None,
                                                "why": "not measured: memory=False"}
    assert main(["bench", "--model", cfg.model, "--smoke", "--reports-dir", cfg.reports_dir, "-p",
                 "backends=['tpu']"]) == 2
