"""Stage 04 (architecture swap) and its technique module: MAC counting, the Neural Engine scan and its rules
table, MLComputePlan (macOS only), the labelled photos, the config's bad inputs, and the stage end to end on digits."""
import json
import platform

import numpy as np
import pytest
import torch
from torch import nn

from playbook.architectures import (FEATURES, RULES, ComputePlanUnavailable, OpFacts, Rule, agreement, compute_plan,
                                    compute_plan_available, count_macs, labelled_photos, model_facts, read_program,
                                    rules_table, scan_demo_packages, scan_package, scan_program)
from playbook.config import ConfigError
from playbook.coreml import ct
from playbook.family_training import plan_workers
from playbook.records import read_stage_record
from playbook.stages.architecture import (ArchitectureConfig, ArchitectureRun, parse_family, run_architecture,
                                          train_families)
from playbook.stages.baseline import BaselineConfig, run_baseline
from playbook.views import scan_findings_table, scan_overview_table


# --------------------------------------------------------------------------- MACs
def test_macs_are_counted_by_torch_for_conv_and_linear():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    # conv: 4 output channels x 8x8 positions x (1 x 3 x 3) taps; linear: 256 x 10.  ReLU is not counted.
    assert count_macs(net, (1, 1, 8, 8)) == 4 * 64 * 9 + 256 * 10
    facts = model_facts(net, (1, 1, 8, 8))
    assert facts.parameters == (4 * 9 + 4) + (256 * 10 + 10)
    assert net.training  # counting leaves the mode alone


def test_macs_scale_with_the_width_of_a_family():
    from playbook.models import create_model

    small = count_macs(create_model("mobilenetv2", 10, 1, 28, width=8), (1, 1, 28, 28))
    large = count_macs(create_model("mobilenetv2", 10, 1, 28, width=16), (1, 1, 28, 28))
    assert 3.0 < large / small < 4.5  # doubling the width roughly quadruples the 1x1 convolutions' work


# --------------------------------------------------------------------------- the rules table
def test_every_rule_has_a_source_an_effect_and_a_known_measurement():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids)) >= 6
    for row in rules_table():
        assert "http" in row["source"] and row["why"] and row["fix"], row["rule"]
    assert {r.feature for r in RULES} <= set(FEATURES)
    with pytest.raises(ValueError, match="source"):
        Rule("x", "slow", "present", "is", True, says="s", fix="f", source="a blog I remember")
    with pytest.raises(ValueError, match="feature"):
        Rule("x", "slow", "kernel_area", ">", 49, says="s", fix="f", source="https://example.org")


def _op(op_type="conv", shape=(1, 16, 4, 4), dtype="fp16", name="x"):
    return OpFacts("main", "", 0, op_type, name, ("out",), (shape,), (dtype,), ((1, 16, 8, 8),), (dtype,))


@pytest.mark.parametrize("shape, dtype, expected", [
    ((1, 16, 32, 32), "fp16", 1.0),   # 32 x 2 bytes = one 64-byte line
    ((1, 16, 4, 4), "fp16", 8.0),     # 8 bytes padded to 64
    ((1, 16, 1, 1), "fp16", 32.0),    # the singleton of Apple's example: 32x in 16-bit
    ((1, 16, 1, 1), "int8", 64.0),    # ... and 64x in 8-bit
    ((1, 10), "fp32", 1.6),
])
def test_last_axis_padding_follows_the_64_byte_alignment(shape, dtype, expected):
    assert FEATURES["last_axis_padding"](_op(shape=shape, dtype=dtype)) == pytest.approx(expected)


def test_scan_program_applies_rows_not_special_cases():
    from playbook.architectures import ProgramFacts

    program = ProgramFacts("p", 8, {}, (_op("lstm", (1, 8, 32)), _op("conv", (1, 16, 32, 32)),
                                        _op("const", (1, 1, 1, 1)), _op("mul", (1, 3, 32, 32), "fp32", "image__scaled__")))
    result = scan_program(program)
    assert [(f.rule, f.op_type) for f in result.findings] == [("recurrent-layer", "lstm")]
    assert result.computing_ops == 3 and not result.passed
    # A one-row table of our own: the same ops, another verdict -- the scanner only reads the table.
    only = Rule("conv-is-slow", "slow", "present", "is", True, says="s", fix="f", source="https://example.org",
                ops=("conv",))
    assert [f.rule for f in scan_program(program, [only]).findings] == ["conv-is-slow"]


# --------------------------------------------------------------------------- scanning real programs
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scan_demo_packages(tmp_path_factory.mktemp("demo"))


def test_clean_program_passes_and_planted_lstm_is_flagged_with_op_and_location(demo):
    clean = scan_package(demo["clean"][0])
    assert clean.clean and clean.passed and clean.computing_ops == 4
    planted = scan_package(demo["planted"][0])
    assert not planted.passed
    (hit,) = planted.blocking
    assert hit.rule == "recurrent-layer" and hit.op_type == "lstm" and hit.effect == "fallback"
    assert "lstm" in hit.location and "op #" in hit.location and hit.op_name in hit.location
    assert planted.counts()["reshape-transpose"] == 2  # the transposes around the LSTM: advisory
    assert planted.op_histogram["lstm"] == 1


def _convert(net, inputs, precision, tmp_path, name):
    with torch.no_grad():
        traced = torch.jit.trace(net.eval(), torch.rand(1, 3, 16, 16))
    model = ct.convert(traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=precision)
    path = tmp_path / f"{name}.mlpackage"
    model.save(str(path))
    return path


def test_flexible_input_and_fp32_compute_are_flagged_but_image_preprocessing_is_not(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
    flexible = _convert(net, [ct.TensorType(name="x", shape=(1, 3, 16, ct.RangeDim(16, 64, 16)), dtype=np.float32)],
                        ct.precision.FLOAT16, tmp_path, "flexible")
    found = scan_package(flexible)
    assert "flexible-shape" in found.counts() and any(f.op_type == "conv" for f in found.blocking)
    fp32 = _convert(net, [ct.TensorType(name="x", shape=(1, 3, 32, 32))], ct.precision.FLOAT32, tmp_path, "fp32")
    assert {f.op_type for f in scan_package(fp32).findings if f.rule == "fp32-compute"} == {"conv", "relu"}
    image = _convert(net, [ct.ImageType(name="x", shape=(1, 3, 32, 32), scale=1 / 128, bias=[-1, -1, -1])],
                     ct.precision.FLOAT16, tmp_path, "image")
    program = read_program(image)
    assert {o.role for o in program.ops if o.op_type in ("mul", "add")} == {"image-preprocessing"}
    assert scan_package(image).clean


def test_scan_tables_group_findings_by_rule(demo):
    scan = scan_package(demo["planted"][0]).to_dict()
    table = scan_findings_table(scan, examples=1)
    assert [r["rule"] for r in table.rows] == ["reshape-transpose", "recurrent-layer"]
    assert table.rows[0]["ops"] == 2 and table.rows[0]["examples (op @ location: evidence)"].endswith("...")
    overview = scan_overview_table({"planted": scan, "clean": scan_package(demo["clean"][0]).to_dict()})
    assert overview.rows[1]["recurrent-layer"] == 0 and overview.rows[0]["recurrent-layer"] == 1


# --------------------------------------------------------------------------- MLComputePlan
@pytest.mark.skipif(platform.system() != "Darwin", reason="MLComputePlan needs macOS 14.4+ (Core ML compiles and plans "
                                                          "the model); coremltools only imports it on Linux")
def test_compute_plan_places_every_op_on_macos(demo):
    plan = compute_plan(demo["clean"][0], "CPU_AND_NE")
    assert plan.ops and abs(sum(plan.share_of_ops().values()) - 100.0) < 1e-6
    assert {o["device"] for o in plan.ops} <= {"CPU", "GPU", "NeuralEngine", "unknown"}


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the refusal off macOS")
def test_compute_plan_refuses_off_macos_with_the_reason(demo):
    ok, why = compute_plan_available()
    assert not ok and "macOS" in why
    with pytest.raises(ComputePlanUnavailable, match="macOS"):
        compute_plan(demo["clean"][0])


# --------------------------------------------------------------------------- photos and agreement
def test_agreement_counts_with_an_exact_interval():
    a = agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    assert a["agree"] == 3 and a["n"] == 4 and a["percent"] == 75.0
    assert 0 < a["ci95"][0] < 75.0 < a["ci95"][1] <= 100.0
    assert agreement(np.arange(20), np.arange(20))["ci95"][1] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        agreement(np.arange(3), np.arange(4))


def test_foolbox_ships_twenty_labelled_imagenet_photos():
    photos = labelled_photos(size=64)
    assert photos.images.shape == (20, 3, 64, 64) and photos.images.dtype == np.uint8
    assert photos.files[0] == "imagenet_00_243.jpg" and photos.labels[0] == 243
    assert photos.labels.min() >= 0 and photos.labels.max() < 1000


def test_photos_from_a_folder_take_the_label_from_the_name(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "imagenet_cat_281.png")
    photos = labelled_photos(tmp_path, size=32)
    assert photos.labels.tolist() == [281] and photos.images.shape == (1, 3, 32, 32)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imagenet_nolabel.png")
    with pytest.raises(ValueError, match="label"):
        labelled_photos(tmp_path, size=32)
    with pytest.raises(FileNotFoundError):
        labelled_photos(tmp_path / "missing")


# --------------------------------------------------------------------------- config
def test_family_specs_parse_and_name_variants():
    fam = parse_family("mobilenetv2:width=8,expand=6")
    assert fam.family == "mobilenetv2" and fam.knobs == {"width": 8, "expand": 6} and fam.name == "mobilenetv2-e6-w8"


@pytest.mark.parametrize("values, says", [
    ({"families": ["vgg:width=8"]}, "not one of"),
    ({"families": ["mobilenetv2"]}, "must look like"),
    ({"families": ["mobilenetv2:width=eight"]}, "positive integer"),
    ({"families": ["mobilenetv2:colour=3"]}, "no option"),
    ({"families": ["squeezenet:width=8", "squeezenet:width=8"]}, "twice"),
    ({"epochs": -1}, "epochs"),
    ({"train_jobs": 0}, "train_jobs"),
    ({"max_param_ratio": 0.0}, "max_param_ratio"),
    ({"max_param_ratio": 1.5}, "max_param_ratio"),
    ({"lite0_recipes": ["int4-block"]}, "iOS17"),
    ({"lite0_recipes": ["torch-w8a8-qat"]}, "Core ML-side"),
    ({"lite0_recipes": ["no-such-recipe"]}, "no-such-recipe"),
    ({"photos_dir": "/no/such/folder"}, "photos_dir"),
    ({"compute_units": "NE_ONLY"}, "compute_units"),
    ({"family_lr": {"vgg": 0.01}}, "family_lr"),
    ({"family_lr": {"squeezenet": 0.0}}, "family_lr"),
    ({"families": "mobilenetv2:width=8"}, "families"),
    ({"lite": True}, "unknown"),
])
def test_config_rejects_bad_values_naming_the_field(values, says):
    with pytest.raises(ConfigError, match=says):
        ArchitectureConfig.from_dict(values)


def test_family_lr_changes_only_that_familys_learning_rate(stage):
    cfg, record = stage
    run = ArchitectureRun(cfg.replace(family_lr={"squeezenet": 0.01}))
    lrs = {f.name: run.train_cfg_for(f) for f in run.families}
    assert lrs["squeezenet-w8"].lr == 0.01 and lrs["resnet-w4"].lr == run.train_cfg.lr
    assert lrs["squeezenet-w8"].replace(lr=run.train_cfg.lr) == run.train_cfg  # nothing else differs
    assert "squeezenet (0.01 instead of" in run.matched_budget()["note"]
    assert record["matched_budget"]["lr"]["squeezenet-w8"] == ArchitectureConfig().family_lr["squeezenet"]


def test_default_families_cover_every_family_at_two_widths():
    specs = ArchitectureConfig().family_specs()
    counts = {}
    for s in specs:
        counts[s.family] = counts.get(s.family, 0) + 1
    assert counts["mobilenetv2"] >= 2 and counts["squeezenet"] >= 2 and counts["efficientnet"] >= 2
    assert counts["resnet"] >= 1  # the baseline is the ResNet's other width
    assert len(ArchitectureConfig(smoke=True).family_specs()) == 4


# --------------------------------------------------------------------------- the stage on digits
@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("architecture")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        common = {"reports_dir": str(root / "reports"), "smoke": True, "threads": 1}
        run_baseline(BaselineConfig(dataset="digits", model_options={"width": 8}, epochs=1, **common))
        cfg = ArchitectureConfig(families=["squeezenet:width=8", "resnet:width=4"], train_jobs=2, lite0=False, **common)
        yield cfg, run_architecture(cfg)


def test_stage_trains_measures_and_scans_every_family(stage):
    cfg, record = stage
    assert [v.name for v in record.variants] == ["squeezenet-w8", "resnet-w4"]
    base = record["baseline"]
    for v in record.variants:
        assert v.stage == "architecture" and v.reference == "baseline-fp32" and v.vs_reference is not None
        assert v.get("parameters") < base["parameters"] and v.get("macs") > 0
        assert v.get("param_ratio") == pytest.approx(v.get("parameters") / base["parameters"])
        assert v.get("training")["epochs"] == 1 and v.get("scan")["verdict"]
        assert v.size_mb > 0 and v.latency_ms > 0 and v.provenance["latency"]["runtime"] in ("reference", "coreml")
        assert v.package.startswith("architecture/")
    assert record["matched_budget"]["epochs"] == 1
    assert set(record["scans"]) >= {"baseline-fp16", "squeezenet-w8", "resnet-w4", "demo:clean", "demo:planted"}
    assert record["scan_demo"]["planted"]["counts"]["recurrent-layer"] == 1 and record["scan_demo"]["clean"]["clean"]
    assert record["mobile_network"] is None
    assert record["criterion"]["max_param_ratio"] == 0.25
    assert set(record["pareto_front"]) == {"macs", "size_mb"}
    assert record["step_cpu_seconds"]["train"] > 0 and record["stage_cpu_seconds"] > 0
    if platform.system() != "Darwin":
        assert not record["compute_plans"]["available"] and "macOS" in record["compute_plans"]["reason"]


def test_stage_trains_in_process_in_smoke_runs_then_reads_the_cache(stage):
    cfg, record = stage
    assert {name: fam["training"]["process"] for name, fam in record["families"].items()} == {
        "squeezenet-w8": "main", "resnet-w4": "main"}
    again = ArchitectureRun(cfg)  # same config, same cache: nothing is trained again
    again.train(progress=False)
    assert all(t["from_cache"] and t["process"] == "main" for t in again.training.values())


def test_families_train_in_worker_processes_into_the_cache(tmp_path, monkeypatch):
    from playbook.data import DatasetConfig, load_dataset
    from playbook.train import TrainConfig

    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    families = [parse_family("squeezenet:width=8"), parse_family("mobilenetv2:width=4")]
    data_cfg = DatasetConfig(name="digits", calib_size=32, limit_train=512)
    small = load_dataset(data_cfg)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    cfgs = {f.name: cfg for f in families}
    # two free cores, whatever the load on this machine now (plan_workers measures it otherwise)
    first = train_families(families, small, data_cfg.to_dict(), cfgs, jobs=2, plan=plan_workers(2, 2, free_cores=2))
    assert all(facts["threads"] == 1 and facts["plan"]["workers"] == 2 for _, facts in first.values())
    assert {name: facts["process"] for name, (_, facts) in first.items()} == {
        "squeezenet-w8": "worker", "mobilenetv2-w4": "worker"}
    assert all(not facts["from_cache"] for _, facts in first.values())
    again = train_families(families, small, data_cfg.to_dict(), cfgs, jobs=2)
    assert all(facts["from_cache"] and facts["process"] == "main" for _, facts in again.values())
    for name in first:  # the worker's weights are the ones the parent loads
        a, b = first[name][0].state_dict(), again[name][0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # Trained in this process instead (another cache): the same weights, whatever ran before in either process.
    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache-main"))
    torch.rand(1000)  # move the global generator on
    here = train_families(families[::-1], small, data_cfg.to_dict(), cfgs, jobs=1, threads=1)  # one thread, as in the workers
    for name in first:
        a, b = first[name][0].state_dict(), here[name][0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_stage_record_is_written_and_readable(stage):
    cfg, record = stage
    on_disk = read_stage_record(cfg.model_dir(), "architecture")
    assert [v.name for v in on_disk.variants] == [v.name for v in record.variants]
    raw = json.loads((cfg.model_dir() / "architecture.json").read_text())
    assert raw["rules"][0]["source"].startswith("coremltools issue") and raw["variants"][0]["family"] == "squeezenet"
    assert "--stages 04" in raw["reproduce"] or "04" in json.dumps(raw["run"])


def test_stage_refuses_a_dataset_other_than_the_baselines(stage):
    cfg, _ = stage
    with pytest.raises(ConfigError, match="baseline"):
        ArchitectureRun(cfg.replace(dataset="fashion-mnist"))


def test_lite0_without_its_packages_or_photos_is_a_config_error_naming_the_fix(monkeypatch):
    """A pip-installed playbook without the ``pretrained`` extra or foolbox's photos: one clear line before anything
    runs, naming what to install and the parameter that switches the check off."""
    import importlib.util

    from playbook import architectures
    from playbook.config import ConfigError
    from playbook.stages.architecture import ArchitectureConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite_pytorch" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'coreml-playbook\[pretrained\]', or set lite0=False"):
        ArchitectureConfig(smoke=True)
    assert ArchitectureConfig(smoke=True, lite0=False).lite0 is False
    monkeypatch.setattr(importlib.util, "find_spec", real)

    def no_photos() -> None:
        raise FileNotFoundError("the labelled ImageNet photos come from PyPI's foolbox==3.3.4")

    monkeypatch.setattr(architectures, "foolbox_data_dir", no_photos)
    with pytest.raises(ConfigError, match="labelled photos, but .*foolbox==3.3.4; or set lite0=False"):
        ArchitectureConfig(smoke=True)
