"""Stage 02: the recipe catalogue, coremltools' compressors on tiny models, sensitivity, the record, the widget."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook import compress, views  # noqa: E402
from playbook.compress import recipes  # noqa: E402
from playbook.compress import (  # noqa: E402
    CompressionError, compress_package, compress_torch, get_recipe, required_target, weight_layers,
)
from playbook.metrics import pareto_front  # noqa: E402
from playbook.records import VariantRecord  # noqa: E402
from playbook.stages.common import SMOKE  # noqa: E402
from playbook.stages.quantization import QuantizationConfig, QuantizationRun  # noqa: E402
from playbook.config import ConfigError  # noqa: E402
from playbook.coreml import ExportConfig, export_model, package_info, predict_split  # noqa: E402
from playbook.models import create_model  # noqa: E402

THRESHOLD = 256


def constexpr_ops(info):
    return {k: v for k, v in info.op_histogram.items() if k.startswith("constexpr_")}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("resnet", 10, 1, width=32).eval()  # channels 32/64/128: divisible by int4's block of 32


@pytest.fixture(scope="module")
def packages(tmp_path_factory, digits, net):
    out = tmp_path_factory.mktemp("base")
    return {target: export_model(net, digits, ExportConfig(precision="fp16", minimum_deployment_target=target),
                                 out, f"fp16-{target}").path for target in ("iOS17", "iOS18")}


def test_catalogue_holds_the_documented_recipes():
    names = compress.available_recipes()
    for required in ("int8-weights", "int4-block", "palettize-8bit", "palettize-6bit", "palettize-4bit",
                     "palettize-2bit", "palettize-4bit-grouped", "prune-50", "prune-75", "prune-2of4",
                     "prune-50+palettize-4bit", "prune-50+int8", "torch-ptq-int8", "torch-w8a8-static",
                     "torch-w8a8-qat", "torch-prune-75-ft", "torch-palettize-4bit-skm", "torch-palettize-2bit-dkm"):
        assert required in names
    for name in names:
        recipe = get_recipe(name)
        assert recipe.description and recipe.scheme in recipes.SCHEMES
        assert json.dumps(recipe.to_dict())  # serialisable into the record
    assert {get_recipe(n).min_target for n in ("int4-block", "palettize-4bit-grouped", "prune-50+int8")} == {"iOS18"}
    assert get_recipe("torch-w8a8-static").scheme == "static W8A8" and get_recipe("int8-weights").scheme == "weight-only"
    assert set(SMOKE.quantization_recipes) <= set(compress.DEFAULT_RECIPES)
    # Smoke runs skip no code path of the default run: every technique and PyTorch algorithm is in both.
    default, smoke = ([get_recipe(n) for n in s] for s in (compress.DEFAULT_RECIPES, SMOKE.quantization_recipes))
    assert {r.technique for r in default} == {r.technique for r in smoke}
    assert {r.algorithm for r in default} == {r.algorithm for r in smoke}
    assert {k for r in default for k, _ in r.steps} == {k for r in smoke for k, _ in r.steps}
    with pytest.raises(ConfigError, match="unknown recipe 'int3'; valid recipes are"):
        get_recipe("int3")


def test_required_target_keeps_the_os_family():
    assert required_target("iOS17", "iOS18") == "iOS18"
    assert required_target("macOS14", "iOS18") == "macOS15"
    assert required_target("iOS18", "iOS16") == "iOS18"
    assert required_target("macOS15", "iOS26") == "macOS26"  # macOS jumped from 15 to 26 with iOS (2025)
    assert required_target("iOS26", "iOS18") == "iOS26"


def test_coreml_recipes_shrink_in_the_expected_order_with_the_expected_ops(tmp_path, packages):
    base18 = packages["iOS18"]
    eligible = [layer for layer in weight_layers(base18, THRESHOLD) if layer.eligible]
    infos, messages = {"fp16": package_info(base18)}, {}
    for name in ("int8-weights", "int4-block", "palettize-6bit", "palettize-4bit", "palettize-2bit", "prune-50",
                 "prune-50+palettize-4bit"):
        made = compress_package(name, base18, tmp_path, weight_threshold=THRESHOLD)
        assert made.seconds > 0
        infos[name], messages[name] = package_info(made.path), made.messages
    size = {k: v.size_bytes for k, v in infos.items()}
    assert size["fp16"] > size["int8-weights"] > size["palettize-6bit"] > size["palettize-4bit"] > size["palettize-2bit"]
    assert size["int4-block"] < size["int8-weights"]
    assert size["prune-50+palettize-4bit"] < min(size["palettize-4bit"], size["prune-50"])
    # int8 weights are about half of FP16 (scales and the uncompressed small tensors make it a bit more).
    assert 0.45 < size["int8-weights"] / size["fp16"] < 0.65
    n = len(eligible)
    assert constexpr_ops(infos["fp16"]) == {}
    # iOS18 programs store int8 weights with the iOS18 op; iOS17 ones with constexpr_affine_dequantize.
    assert constexpr_ops(infos["int8-weights"]) == {"constexpr_blockwise_shift_scale": n}
    int8_ios17 = package_info(compress_package("int8-weights", packages["iOS17"], tmp_path, "int8-17", THRESHOLD).path)
    assert constexpr_ops(int8_ios17) == {"constexpr_affine_dequantize": n}
    # per_block skips the 1-channel stem (1 input channel is not a multiple of the block of 32) and says so.
    assert eligible[0].shape[1] == 1
    assert constexpr_ops(infos["int4-block"]) == {"constexpr_blockwise_shift_scale": n - 1}
    assert any("not divisible by block size 32" in m for m in messages["int4-block"])
    assert constexpr_ops(infos["palettize-4bit"]) == {"constexpr_lut_to_dense": n}
    assert constexpr_ops(infos["prune-50"]) == {"constexpr_sparse_to_dense": n}
    assert constexpr_ops(infos["prune-50+palettize-4bit"]) == {"constexpr_lut_to_sparse": n,
                                                              "constexpr_sparse_to_dense": n}
    assert compress.compressed_weight_count(infos["prune-50+palettize-4bit"].op_histogram) == n


def test_block_and_group_sizes_adapt_to_channel_counts(tmp_path, digits):
    # 24/48/96 channels: coremltools would skip every layer for a block of 32 or a group of 16.
    torch.manual_seed(0)
    base = export_model(create_model("resnet", 10, 1, width=24).eval(), digits,
                        ExportConfig(minimum_deployment_target="iOS18"), tmp_path, "w24").path
    n = len([layer for layer in weight_layers(base, THRESHOLD) if layer.eligible])
    int4 = compress_package("int4-block", base, tmp_path, weight_threshold=THRESHOLD)
    assert package_info(int4.path).op_histogram["constexpr_blockwise_shift_scale"] == n
    assert any("block_size 32 does not divide the 24 channels" in m and "used 24" in m for m in int4.messages)
    grouped = compress_package("palettize-4bit-grouped", base, tmp_path, weight_threshold=THRESHOLD)
    assert package_info(grouped.path).op_histogram["constexpr_lut_to_dense"] == n
    assert any("group_size 16 does not divide the 24 channels" in m and "used 12" in m for m in grouped.messages)


def test_weight_threshold_leaves_small_tensors_float(tmp_path, packages):
    layers = weight_layers(packages["iOS17"], weight_threshold=4096)
    small = [layer for layer in layers if not layer.eligible]
    assert small and all(layer.size <= 4096 for layer in small)
    info = package_info(compress_package("int8-weights", packages["iOS17"], tmp_path, weight_threshold=4096).path)
    assert info.op_histogram["constexpr_affine_dequantize"] == len(layers) - len(small)


@pytest.mark.parametrize("recipe, says", [
    ("int4-block", "per_block quantization is supported since iOS18"),
    ("palettize-4bit-grouped", "per_grouped_channel palettization is supported since iOS18"),
    ("prune-50+palettize-4bit", "Joint compression is only supported since iOS18"),
])
def test_ios18_recipe_on_an_ios17_program_fails_with_coremltools_message_and_a_hint(tmp_path, packages, recipe, says):
    with pytest.raises(CompressionError) as info:
        compress_package(recipe, packages["iOS17"], tmp_path, weight_threshold=THRESHOLD)
    err = info.value
    assert says in err.coremltools_message and says in str(err)
    assert "minimum_deployment_target" in err.hint and "iOS18" in err.hint
    assert err.__cause__ is None and err.__suppress_context__  # no chained coremltools traceback
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_weight_layers_are_named_after_the_torch_modules(packages, net, digits):
    example = digits.to_tensor(digits.calib.images[:1])
    layers = weight_layers(packages["iOS17"], THRESHOLD, net, example)
    modules = [layer.module for layer in layers]
    assert modules[0] == "stem.0" and modules[-1] == "fc"
    assert "stages.0.body.0" in modules and "stages.2.shortcut.0" in modules
    torch_shapes = {n: tuple(m.weight.shape) for n, m in net.named_modules() if n in modules}
    assert all(torch_shapes[layer.module] == layer.shape for layer in layers)
    assert [layer.eligible for layer in layers] == [layer.size > THRESHOLD for layer in layers]


def test_layer_selection_with_exclude_and_only(tmp_path, packages):
    eligible = [layer.name for layer in weight_layers(packages["iOS17"], THRESHOLD) if layer.eligible]
    kept = eligible[:2]
    info = package_info(compress_package("palettize-4bit", packages["iOS17"], tmp_path, "kept",
                                         THRESHOLD, exclude=kept).path)
    assert info.op_histogram["constexpr_lut_to_dense"] == len(eligible) - 2
    one = package_info(compress_package("palettize-4bit", packages["iOS17"], tmp_path, "one",
                                        THRESHOLD, only=[eligible[-1]]).path)
    assert one.op_histogram["constexpr_lut_to_dense"] == 1
    with pytest.raises(ConfigError, match="not weights of this program"):
        compress_package("palettize-4bit", packages["iOS17"], tmp_path, "bad", THRESHOLD, exclude=["conv_99"])


def test_static_w8a8_package_quantizes_activations_and_follows_torch(tmp_path, digits):
    torch.manual_seed(0)
    result = compress_torch("torch-w8a8-static", create_model("resnet", 10, 1, width=8).eval(), digits)
    package = export_model(result.model, digits, ExportConfig(minimum_deployment_target="iOS17"), tmp_path, "w8a8")
    ops = package.package.op_histogram
    assert ops.get("quantize", 0) >= 5 and ops.get("dequantize", 0) >= 5
    assert ops.get("constexpr_affine_dequantize", 0) >= 8  # int8 weights too
    assert result.details["calibration_images"] == len(digits.calib)
    # The converted program computes what the calibrated PyTorch model computes.
    scores, _ = predict_split(package.path, digits, digits.test, "reference")
    with torch.no_grad():
        torch_scores = result.model(digits.to_tensor(digits.test.images)).numpy()
    assert (scores.argmax(1) == torch_scores.argmax(1)).mean() > 0.95


@pytest.mark.parametrize("recipe, op", [
    ("torch-ptq-int8", "constexpr_affine_dequantize"),
    ("torch-prune-75-ft", "constexpr_sparse_to_dense"),
    ("torch-palettize-4bit-skm", "constexpr_lut_to_dense"),
    ("torch-palettize-2bit-dkm", "constexpr_lut_to_dense"),
    ("torch-w8a8-qat", "quantize"),
])
def test_torch_recipes_convert_to_compressed_programs(tmp_path, digits, recipe, op):
    torch.manual_seed(0)
    small = create_model("resnet", 10, 1, width=8).eval()
    result = compress_torch(recipe, small, digits, finetune_steps=3, batch_size=16)
    info = export_model(result.model, digits, ExportConfig(minimum_deployment_target="iOS17"), tmp_path, "t").package
    assert info.op_histogram.get(op, 0) >= 1
    weight = dict(result.model.named_modules())["stages.2.body.3"].weight.detach()
    if recipe == "torch-prune-75-ft":
        assert result.finetune_steps == 3 and len(result.losses) == 3
        assert (weight == 0).float().mean() == pytest.approx(0.75, abs=0.02)
    if recipe == "torch-palettize-2bit-dkm":
        assert len(torch.unique(weight)) <= 4
    # a recipe's own fine-tune learning rate wins over the caller's (QAT's 1e-4; the others take the default 0.002)
    assert result.details["lr"] == (1e-4 if recipe == "torch-w8a8-qat" else 0.002)
    # small tensors stay float unless the recipe quantizes activations end to end
    if recipe != "torch-w8a8-qat":
        assert "stem.0" in result.details["kept_float"]


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown QuantizationConfig key"):
        QuantizationConfig.from_namespace({"model": "resnet", "recipies": []})
    with pytest.raises(ConfigError, match="unknown recipe"):
        QuantizationConfig(recipes=["int3"])
    with pytest.raises(ConfigError, match="single-step Core ML recipe"):
        QuantizationConfig(sensitivity_recipe="prune-50+palettize-4bit")
    assert QuantizationConfig(smoke=True).recipe_names() == [n for n in compress.RECIPES
                                                             if n in SMOKE.quantization_recipes]
    with pytest.raises(ConfigError, match="recipes='int8-weights' must be list"):
        QuantizationConfig(recipes="int8-weights")
    assert QuantizationConfig(recipes=["palettize-2bit", "int8-weights"]).recipe_names() == \
        ["int8-weights", "palettize-2bit"]
    assert QuantizationConfig(smoke=True, finetune_steps=500).steps() == 20


def test_pareto_front_and_chart():
    variants = [VariantRecord(name=n, stage="quantization", size_bytes=int(s), top1=t, top1_ci=(t - 1, t + 1),
                              extra={"technique": "palettization"})
                for n, s, t in (("big", 4e6, 90.0), ("mid", 1e6, 89.5), ("dominated", 2e6, 89.0), ("tiny", 2e5, 20.0))]
    assert [v.name for v in pareto_front(variants, lambda v: v.size_bytes, lambda v: v.top1)] == ["tiny", "mid", "big"]
    chart = views.accuracy_figure(variants, ("size_mb", "size_mb"), zooms=(None, 3.0), reference_top1=90.0,
                                  max_top1_drop=1.0, colour_by="technique")
    left, right = chart.figure.axes[:2]
    assert left.get_xscale() == "log" and right.get_ylim()[0] == pytest.approx(87.0)  # the zoom: 3 points
    assert "tiny (20.0%)" in [t.get_text() for t in right.texts]  # the outlier sits on the edge, labelled


# --------------------------------------------------------------------------- the stage, end to end on digits
@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    from playbook.stages.baseline import BaselineConfig, run_baseline

    root = tmp_path_factory.mktemp("quant")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run_baseline(BaselineConfig(dataset="digits", model_options={"width": 16}, epochs=3, lr=0.05, smoke=True,
                                    reports_dir=str(root / "reports")))
        cfg = QuantizationConfig(dataset="digits", recipes=["int8-weights", "palettize-2bit"], smoke=True,
                                 sensitivity_recipe="palettize-2bit", max_exceptions=2,
                                 reports_dir=str(root / "reports"))
        st = QuantizationRun(cfg)
        st.run()
        st.layer_sensitivity()
        yield st


def test_stage_measures_every_variant_against_fp32(stage):
    assert [v.name for v in stage.variants][:2] == ["int8-weights", "palettize-2bit"]
    for v in stage.variants:
        assert v.stage == "quantization" and v.reference == "baseline-fp32" and v.n_test == len(stage.dataset.test)
        assert v.vs_reference.ci_low <= v.vs_reference.delta_top1 <= v.vs_reference.ci_high
        assert 0 <= v.vs_reference.p_value <= 1 and 0 <= v.fidelity.top1_agreement <= 100
        assert v.get("compress_seconds") > 0 and v.get("weight_threshold") == 256
        assert v.get("size_ratio_vs_fp32") == pytest.approx(stage.fp32_bytes / v.size_bytes)
        # before finish() the packages sit in the stage's staging folder; finish() swaps them in with the record
        assert v.package.startswith((".staging/quantization/", "quantization/")) and (stage.model_dir / v.package).exists()
    int8, pal2 = stage.variant("int8-weights"), stage.variant("palettize-2bit")
    assert pal2.size_bytes < int8.size_bytes < stage.fp32_bytes
    assert int8.fidelity.kl_divergence < pal2.fidelity.kl_divergence
    snap = stage.snapshot()
    assert "not run" in views.explain_variant(snap, "torch-w8a8-qat")
    assert "x smaller than FP32" in views.explain_variant(snap, "int8-weights")


def test_sensitivity_ranks_layers_and_keeping_the_worst_float_recovers(stage):
    s = stage.sensitivity
    layers = s["layers"]
    assert [e["kl"] for e in layers] == sorted((e["kl"] for e in layers), reverse=True)
    assert len(layers) == len([x for x in weight_layers(stage.source.program("fp16", "iOS17"), 256) if x.eligible])
    assert all(e["label"] == e["module"] and e["module"] for e in layers)  # PyTorch names, not MIL constants
    curve = s["keep_curve"]
    assert [c["kept"] for c in curve] == [0, 1, 2]
    assert curve[2]["kept_layers"] == [e["label"] for e in layers[:2]]
    # keeping the most damaging layers float brings the outputs back towards FP32, at a size cost
    assert curve[-1]["kl"] < curve[0]["kl"] and curve[-1]["size_mb"] > curve[0]["size_mb"]
    if s["control"]:
        assert s["control"]["kl"] >= curve[s["chosen_kept"]]["kl"]
    guided = stage.variant(s["variant"])
    assert guided is not None and guided.name == f"palettize-2bit-keep{s['chosen_kept']}"
    n_eligible = len(layers)
    assert guided.op_histogram["constexpr_lut_to_dense"] == n_eligible - s["chosen_kept"]
    assert stage.variant("palettize-2bit").size_bytes < guided.size_bytes


def test_stage_writes_the_record(stage):
    stage.finish()
    path = stage.path
    record = json.loads(path.read_text())
    assert path.name == "quantization.json" and record["stage"] == "quantization"
    for key in ("model", "config", "environment", "reproduce", "variants", "pitfalls", "sensitivity",
                "pareto_front", "baseline", "weight_threshold", "lineage", "run", "playbook_version"):
        assert key in record
    assert record["reproduce"].startswith("python -m playbook run --model resnet --dataset digits --smoke --stages 02")
    assert '-p "recipes=[' in record["reproduce"] and "max_exceptions=2" in record["reproduce"]
    assert "interactive" not in record["reproduce"] and "reports" not in record["reproduce"]
    assert set(record["lineage"]) == {"baseline.json", "baseline/fp32.mlpackage"}
    assert all({"title", "detail"} <= set(p) for p in record["pitfalls"])
    assert any("W8A8" in p["title"] for p in record["pitfalls"]) or record["environment"]["os"].startswith("Darwin")
    assert set(record["pareto_front"]) <= {v["name"] for v in record["variants"]} | {"baseline-fp32", "baseline-fp16"}


def test_the_fine_tunes_learn_from_the_fp32_models_logits(stage):
    """``finetune_teacher=True`` (the default): every fine-tune's loss is the distillation loss against the FP32
    model's own logits on the batch's training images, checked against the model and ``distillation_loss``."""
    from playbook.distill import distillation_loss

    assert stage.source.loss_fn is None  # this stage ran no fine-tune, so it made no logits
    teacher = stage.teach_finetunes()
    assert teacher["images"] == len(stage.dataset.train) and (teacher["temperature"], teacher["alpha"]) == (2.0, 0.5)
    assert stage.teach_finetunes() is teacher and stage.details()["finetune_teacher"] == teacher
    index = torch.tensor([3, 0, 7])
    with torch.no_grad():
        expected_teacher = stage.model.eval()(stage.dataset.to_tensor(stage.dataset.train.images[[3, 0, 7]]))
    student, labels = torch.randn(3, expected_teacher.shape[1]), torch.tensor([1, 2, 3])
    assert torch.allclose(stage.source.loss_fn(student, labels, index),
                          distillation_loss(student, expected_teacher, labels, 2.0, 0.5), atol=1e-5)


def test_core_ai_variants_beside_core_ml_a_refused_recipe_recorded_not_fatal(stage, monkeypatch, capsys):
    """Issue 24: with the Core AI packages, stage 02 exports the trained model as .aimodel and measures it through
    Apple's runtime (target="coreai", host-interpreter latency never ranked); a coreai-opt compression that fails is
    recorded in the record's ``coreai`` details and the stage goes on."""
    from playbook.compress import coreai_variants as cv
    from playbook.compress.coreai_side import CoreAICompressionError, coreai_available

    if not coreai_available()[0]:
        pytest.skip(f"Core AI packages not importable: {coreai_available()[1]}")

    def refuse(model, technique, *args, **kwargs):
        raise CoreAICompressionError(f"coreai-{technique}", technique, "coreai-opt prepare", "RuntimeError: boom",
                                     "see coreai-opt's documentation")

    monkeypatch.setattr(cv, "compress_coreai", refuse)
    st = QuantizationRun(stage.cfg.replace(recipes=["int8-weights"], sensitivity_recipe="none", coreai_images=50))
    assert st.cfg.coreai_settings().names() == ["coreai-fp16", "coreai-int8"]  # the smoke policy's few
    made = st.run_coreai()
    out = capsys.readouterr().out
    assert "skipped coreai-int8" in out
    images = st.coreai["images"]  # the runtime timed on a probe, then the image count chosen within the budget
    assert images["used"] == images["asked"] == 50 and images["budget_s"] == 240.0 and images["variants"] == 2
    assert images["seconds_per_image"] > 0 and images["probe_images"] == 64 and images["split"] == len(
        stage.dataset.test)
    assert images["why"].startswith("50 images: 2 variants x 50 x ") and "fits the 240 s budget" in images["why"]
    assert f"Core AI images: {images['why']}" in out and "Core AI runtime: " in out
    assert st.coreai["processes"]["processes"] >= 1 and st.coreai["processes"]["why"]
    assert [v.name for v in made] == ["coreai-fp16"] and st.coreml_variants == []
    v = made[0]
    assert v.target == "coreai" and v.package.endswith("coreai-fp16.aimodel")
    assert v.n_test == 50 < len(stage.dataset.test)  # coreai_images bounds the runtime's (slow) share of the split
    assert st.scores["coreai-fp16"].shape[0] == 50
    assert v.top1_ci[0] <= v.top1 <= v.top1_ci[1] and v.vs_reference is not None and v.reference == "baseline-fp32"
    assert v.provenance["accuracy"]["runtime"] == "coreai" and v.provenance["latency"]["runtime"] == "coreai-host"
    assert "never ranked" in v.provenance["latency"]["note"] and v.size_bytes > 0
    assert st.coreai["available"] and st.coreai["variants"] == ["coreai-fp16"] and not st.coreai["failed"]
    assert st.coreai["skipped"][0]["recipe"] == "coreai-int8" and st.coreai["skipped"][0]["side"] == "coreai"
    assert "coreai-fp16" not in st.pareto() and "coreai-fp16" in {v.name for v in st.chart_variants(coreai=True)}
    table = views.coreai_table(st.snapshot())
    explained = views.explain_coreai(st.snapshot())
    assert [r["variant"] for r in table.rows] == ["coreai-fp16"] and "refused" in explained
    assert f"test images: {st.coreai['images']['why']}" in explained and "runtime processes:" in explained
    # a budget too small for every image asked: the floor, for every variant and the reference's slice alike
    tight = QuantizationRun(stage.cfg.replace(recipes=["int8-weights"], sensitivity_recipe="none", coreai_images=0,
                                              coreai_seconds=1e-6))
    tight.model, tight.dataset, tight.reference, tight.fp32_bytes = st.model, st.dataset, st.reference, st.fp32_bytes
    [v] = tight.run_coreai()
    assert v.n_test == tight.coreai["images"]["used"] == 100 < len(stage.dataset.test)
    assert tight.coreai["images"]["why"].startswith(f"100 of {len(stage.dataset.test):,} images (at least 100): ")
    # any other failure is recorded with its phase
    monkeypatch.setattr(cv, "compress_coreai", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad weights")))
    monkeypatch.setattr(cv, "export_aimodel", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert st.run_coreai() == []
    assert {(f["recipe"], f["phase"], f["error"]) for f in st.coreai["failed"]} == {
        ("coreai-fp16", "export", "OSError"), ("coreai-int8", "compress", "ValueError")}


def test_core_ai_image_count_fits_the_time_budget():
    """``choose_coreai_images``: every image asked when all variants fit the budget, else the largest count that
    fits, rounded down to a hundred, never below the floor; budget 0 = no limit."""
    from playbook.compress.coreai_variants import choose_coreai_images

    # the default resnet: 214 s serial for 6 variants x 2,000 images = 17.8 ms per image; two processes halve it
    n, why = choose_coreai_images(2000, 10000, 6, 0.0089, 240.0)
    assert n == 2000 and why == "2,000 images: 6 variants x 2,000 x 8.9 ms = 107 s fits the 240 s budget."
    assert choose_coreai_images(2000, 10000, 6, 214 / 12000, 240.0)[0] == 2000  # serial still fits
    # efficientnet-lite0 at 56x56: 133 ms per image
    n, why = choose_coreai_images(2000, 10000, 6, 0.133, 240.0)
    assert n == 300 and why == ("300 of 2,000 images: 6 variants x 2,000 x 133 ms would take 1,596 s; the budget "
                                "is 240 s.")
    assert choose_coreai_images(2000, 10000, 6, 0.133, 0.0) == (2000, "2,000 images: no time budget "
                                                                     "(coreai_seconds=0).")
    assert choose_coreai_images(2000, 10000, 6, 1.0, 240.0)[0] == 100  # 40 would fit: the floor
    assert choose_coreai_images(2000, 10000, 6, 0.01, 1e9)[0] == 2000  # never more than asked
    n, why = choose_coreai_images(0, 360, 2, 0.001, 240.0)  # 0: the whole split
    assert n == 360 and why.startswith("360 images (the whole split): 2 variants x 360 x 1.0 ms = 1 s fits")
    assert choose_coreai_images(5000, 360, 6, 10.0, 1.0)[0] == 100  # the split is the upper bound
    assert choose_coreai_images(50, 360, 2, 10.0, 1.0)[0] == 50  # fewer asked than the floor: all of them
    assert choose_coreai_images(2000, 60, 6, 10.0, 1.0)[0] == 60  # a split smaller than the floor: all of it
    assert choose_coreai_images(2000, 10000, 6, 0.0201, 240.0)[0] == 1900  # 1,990 fit: rounded down
    with pytest.raises(ConfigError):
        choose_coreai_images(2000, 10000, 6, 0.01, -1.0)


def test_core_ai_worker_processes_follow_the_free_cores():
    from playbook.compress.coreai_runtime import plan_coreai_processes

    assert plan_coreai_processes(0, free_cores=1, cores=1).processes == 0  # one core to use: in this process
    assert "only 1 core(s) free" in plan_coreai_processes(0, free_cores=1, cores=1).reason
    shared = plan_coreai_processes(0, free_cores=1, cores=2, share=True)  # one other busy process, shared per process
    assert shared.processes == 2 and "share" in shared.reason
    assert plan_coreai_processes(0, free_cores=2, cores=2).processes == 2
    assert plan_coreai_processes(0, free_cores=16, cores=16).processes == 16
    assert plan_coreai_processes(3, free_cores=16, cores=16).processes == 3  # at most as asked
    assert plan_coreai_processes(8, free_cores=2, cores=2).processes == 2  # never more than the free cores
    assert plan_coreai_processes(8, free_cores=1, cores=4, share=True).processes == 4  # never more than our cores
    assert plan_coreai_processes(0, free_cores=1, cores=2, share=False).processes == 0  # shared per session
    assert plan_coreai_processes(1, free_cores=16).processes == 0  # 1: in this process
    assert plan_coreai_processes(0).processes in (0, *range(2, 1025))  # measured
    few = plan_coreai_processes(0, free_cores=16, predictions=1500)  # a smoke split: start-up would cost more
    assert few.processes == 0 and "1,500 predictions" in few.reason
    assert plan_coreai_processes(0, free_cores=2, predictions=12000).processes == 2  # the default resnet's 6 x 2,000
    assert plan_coreai_processes(2, free_cores=2, predictions=10).processes == 2  # asked for: as asked
    with pytest.raises(ConfigError):
        plan_coreai_processes(-1)


def test_quantization_config_checks_coreai_seconds():
    assert QuantizationConfig(model="resnet").coreai_seconds == 240.0
    assert QuantizationConfig(model="resnet", coreai_seconds=0).coreai_settings().seconds_budget == 0.0
    assert QuantizationConfig(model="resnet", coreai_seconds=90).coreai_settings().seconds_budget == 90.0
    with pytest.raises(ConfigError, match="coreai_seconds"):
        QuantizationConfig(model="resnet", coreai_seconds=-1)


def test_without_the_core_ai_packages_the_stage_records_why(stage, monkeypatch):
    from playbook.compress import coreai_variants as cv

    monkeypatch.setattr(cv, "coreai_available", lambda: (False, "coreai-core is not installed"))
    st = QuantizationRun(stage.cfg.replace(recipes=["int8-weights"], sensitivity_recipe="none"))
    assert st.run_coreai() == [] and st.coreai["available"] is False
    assert st.coreai["why"] == "coreai-core is not installed" and st.snapshot()["coreai"]["why"]
    assert "No Core AI variants" in views.explain_coreai(st.snapshot())
    off = QuantizationRun(stage.cfg.replace(recipes=["int8-weights"], coreai=False))
    assert off.run_coreai() == [] and "coreai=False" in off.coreai["why"]


def test_stage_refuses_a_dataset_other_than_the_baselines(stage):
    with pytest.raises(ConfigError, match="was made on 'digits'"):
        QuantizationRun(stage.cfg.replace(dataset="fashion-mnist"))


def test_stage_records_refused_recipes_without_a_traceback(stage, capsys):
    st = QuantizationRun(stage.cfg.replace(recipes=["int4-block"], retarget=False))
    assert st.run_recipe("int4-block") is None
    assert st.skipped[0]["recipe"] == "int4-block" and "iOS18" in st.skipped[0]["coremltools_message"]
    assert "skipped int4-block" in capsys.readouterr().out
    assert "refused by coremltools" in views.explain_variant(st.snapshot(), "int4-block")
    assert any("refused" in p["title"] for p in st.collect_pitfalls())


def test_one_failing_recipe_is_recorded_and_the_stage_completes_with_the_others(stage, monkeypatch, capsys):
    """Issue 18: a recipe that fails for any reason (here: the measurement raises, as when the executor meets an
    op it cannot run) is recorded with its reason, shown in the report, and the other recipes are still measured."""
    from playbook.stages.report import ReportConfig, run_report

    st = QuantizationRun(stage.cfg.replace(recipes=["int8-weights", "palettize-4bit"], sensitivity_recipe="none"))
    real_measure = st.measure

    def measure(name, *args, **kwargs):
        if name == "palettize-4bit":
            raise NotImplementedError("the reference executor has no kernel for op 'random_uniform'")
        return real_measure(name, *args, **kwargs)

    monkeypatch.setattr(st, "measure", measure)
    st.run()
    out = capsys.readouterr().out
    assert "FAILED palettize-4bit (measure): NotImplementedError" in out and "Traceback" in out
    assert [v.name for v in st.variants] == ["int8-weights"]
    assert st.failed == [{"recipe": "palettize-4bit", "phase": "measure", "error": "NotImplementedError",
                          "reason": "the reference executor has no kernel for op 'random_uniform'"}]
    assert st.cost and st.cost["variants"] == 2 and st.cost["seconds_per_image"] > 0
    st.finish()
    record = json.loads(st.path.read_text())
    assert record["failed"][0]["recipe"] == "palettize-4bit" and record["cost_estimate"]["variants"] == 2
    assert any(p["title"] == "palettize-4bit failed (measure) and was left out" for p in record["pitfalls"])
    run_report(ReportConfig(smoke=True, reports_dir=stage.cfg.reports_dir))
    page = (st.model_dir / "report.html").read_text()
    assert "palettize-4bit failed (measure) and was left out" in page and "random_uniform" in page


def test_a_stage_refuses_a_baseline_whose_checkpoint_changed_since_it_was_measured(stage, tmp_path):
    """Two runs sharing a checkpoint cache must never mix: 01 records the checkpoint's SHA-256, 02 checks it."""
    import shutil

    from playbook.records import RecordError, sha256_path

    record = json.loads((stage.model_dir / "baseline.json").read_text())
    assert record["training"]["checkpoint_sha256"] == sha256_path(Path(record["training"]["checkpoint"]))
    copy = tmp_path / "reports"
    shutil.copytree(stage.model_dir, copy / stage.model_dir.name)
    record["training"]["checkpoint_sha256"] = "0" * 64
    (copy / stage.model_dir.name / "baseline.json").write_text(json.dumps(record))
    with pytest.raises(RecordError, match="is not the checkpoint .* was measured with .* re-run 01_baseline"):
        QuantizationRun(stage.cfg.replace(reports_dir=str(copy)))


def test_explorer_widget_shows_a_row_and_the_sensitivity(stage):
    import ipywidgets

    box = views.explore(stage.record or stage.finish())
    assert isinstance(box, ipywidgets.VBox)
    dropdown, panel = box.children
    assert isinstance(dropdown, ipywidgets.Dropdown) and isinstance(panel, ipywidgets.HTML)
    assert list(dropdown.options) == [v.name for v in stage.variants]
    dropdown.value = "int8-weights"
    assert "int8-weights" in panel.value and "layer sensitivity was computed for palettize-2bit" in panel.value
    dropdown.value = "palettize-2bit"
    assert "layer sensitivity of palettize-2bit" in panel.value and "<table>" in panel.value
    assert np.isfinite(stage.variant("palettize-2bit").top1)


# --------------------------------------------------------------------------- below 4 bits (issue 15)
from playbook.compress import mixed  # noqa: E402


def _layers():
    # a big robust layer, a small fragile one, a middle one; damage falls with bits
    return [mixed.LayerSensitivity("w_big", "stages.2.body.3", 80000, {2: 0.004, 3: 0.0006, 4: 0.0001, 8: 0.0}),
            mixed.LayerSensitivity("w_small", "stem.0", 600, {2: 0.5, 3: 0.2, 4: 0.05, 8: 0.0}),
            mixed.LayerSensitivity("w_mid", "stages.1.body.0", 10000, {2: 0.06, 3: 0.004, 4: 0.002, 8: 0.0})]


def test_allocation_path_lowers_the_cheapest_layer_first_and_ends_at_the_narrowest():
    layers = _layers()
    path = mixed.allocation_path(layers, (2, 3, 4, 8))
    assert len(path) == 1 + len(layers) * 3
    assert path[0] == {"w_big": 8, "w_small": 8, "w_mid": 8} and path[-1] == {"w_big": 2, "w_small": 2, "w_mid": 2}
    sizes = [mixed.allocation_bytes(layers, a) for a in path]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # every step saves bytes
    # every step lowers exactly one layer by one notch
    for a, b in zip(path, path[1:]):
        changed = [n for n in a if a[n] != b[n]]
        assert len(changed) == 1 and (2, 3, 4, 8).index(b[changed[0]]) == (2, 3, 4, 8).index(a[changed[0]]) - 1
    # the big, robust layer goes down to 2 bits before the fragile one leaves 8
    first_small_drop = next(i for i, a in enumerate(path) if a["w_small"] < 8)
    assert path[first_small_drop - 1]["w_big"] == 2
    damage = [mixed.predicted_damage(layers, a) for a in path]
    assert damage == sorted(damage)
    assert mixed.bits_per_weight(layers, path[0]) > 8 > mixed.bits_per_weight(layers, path[-1]) > 2
    assert mixed.palette_bytes(1000, 2) == 250 + 4 * 2


def test_search_path_finds_the_smallest_accepted_allocation_in_few_checks():
    layers = _layers()
    path = mixed.allocation_path(layers, (2, 3, 4, 8))
    limit = 0.01
    expected = max(i for i, a in enumerate(path) if mixed.predicted_damage(layers, a) <= limit)

    def accept(allocation):
        damage = mixed.predicted_damage(layers, allocation)
        return damage <= limit, {"damage": damage}

    found = mixed.search_path(path, accept)
    assert found.chosen == expected
    assert len(found.checks) <= int(np.ceil(np.log2(len(path) + 1)))
    assert 0 not in [c["index"] for c in found.checks]  # the widest (dearest) allocation is checked only if needed
    assert all({"index", "accepted", "damage"} <= set(c) for c in found.checks)
    assert mixed.search_path(path, lambda a: (False, {})).chosen is None
    assert mixed.search_path(path, lambda a: (True, {})).chosen == len(path) - 1


def test_mixed_bit_inputs_are_checked():
    with pytest.raises(ConfigError, match="subset of"):
        mixed.check_bit_choices([2, 5])
    with pytest.raises(ConfigError, match="no damage measured at \\[3\\] bits"):
        mixed.allocation_path([mixed.LayerSensitivity("w", "w", 10, {2: 0.1, 8: 0.0})], (2, 3, 8))
    with pytest.raises(ConfigError, match="needs one Core ML palettize step"):
        recipes.Recipe("bad", "torch", "mixed-bits", "weight-only", 8, "x", algorithm="dkm", allocation="sensitivity")
    with pytest.raises(ConfigError, match="budget_share"):
        recipes.Recipe("bad", "coreml", "mixed-bits", "weight-only", 8, "x", steps=(("palettize", {"nbits": 8}),),
                       allocation="sensitivity", options={"budget_share": 0.0})


def test_sparse_recipes_count_the_mask_and_3bit_palettes_need_ios18():
    # 1 bit of mask per weight: 50% sparse FP16 = 9 bits, with a 4-bit palette 3 bits, 75% with it 2 bits
    assert get_recipe("prune-50").bits == 9 and get_recipe("prune-75").bits == 5
    assert get_recipe("prune-50+palettize-4bit").bits == 3 and get_recipe("torch-prune-75-ft+palettize-4bit").bits == 2
    for name in ("palettize-3bit", "palettize-mixed", "torch-palettize-3bit-dkm"):
        assert get_recipe(name).min_target == "iOS18", name
    assert get_recipe("palettize-2bit").min_target == "iOS16"


def test_3bit_palette_on_an_ios17_program_is_refused_with_a_hint(tmp_path, packages):
    with pytest.raises(CompressionError) as info:
        compress_package("palettize-3bit", packages["iOS17"], tmp_path, weight_threshold=THRESHOLD)
    assert "lut should be a vector of size" in info.value.coremltools_message.lower()
    assert "iOS18" in info.value.hint
    made = compress_package("palettize-3bit", packages["iOS18"], tmp_path, weight_threshold=THRESHOLD)
    assert package_info(made.path).op_histogram["constexpr_lut_to_dense"] >= 1


def test_per_layer_overrides_give_each_weight_its_own_palette(tmp_path, packages):
    eligible = [layer for layer in weight_layers(packages["iOS18"], THRESHOLD) if layer.eligible]
    bits = {layer.name: (2 if i % 2 else 4) for i, layer in enumerate(eligible)}
    made = compress_package("palettize-mixed", packages["iOS18"], tmp_path, "mixed", THRESHOLD,
                            overrides={n: {"nbits": b} for n, b in bits.items()})
    from playbook.mlprogram import ReferenceProgram

    prog = ReferenceProgram.load(made.path)
    uniform = {b: package_info(compress_package(f"palettize-{b}bit", packages["iOS18"], tmp_path, f"u{b}",
                                                THRESHOLD).path).size_bytes for b in (2, 4)}
    assert uniform[2] < package_info(made.path).size_bytes < uniform[4]
    # the decompressed weights, in program order, hold at most 2**b distinct values each
    weights = [prog.const_input(n, "weight") for n in prog.nodes if n.op_type in ("conv", "linear")]
    layers = weight_layers(packages["iOS18"], THRESHOLD)
    assert len(weights) == len(layers)
    for layer, weight in zip(layers, weights):
        assert weight.shape == layer.shape
        if layer.name in bits:
            assert 2 < len(np.unique(weight)) <= 2 ** bits[layer.name]


@pytest.fixture(scope="module")
def lowbit_stage(stage):
    """The below-4-bit recipes on the digits baseline of ``stage`` (weights over 2048 elements: fewer probes)."""
    cfg = stage.cfg.replace(recipes=["palettize-mixed", "torch-prune-75-ft+palettize-4bit"], weight_threshold=2048,
                            sensitivity_recipe="none", search_images=60)
    st = QuantizationRun(cfg)
    st.run()
    return st


def test_mixed_bits_choose_on_validation_and_write_the_chosen_allocation(lowbit_stage):
    st = lowbit_stage
    info = st.mixed["palettize-mixed"]
    eligible = [x for x in weight_layers(st.source.program("fp16", "iOS18"), 2048) if x.eligible]
    assert [row["name"] for row in info["allocation"]] == [x.name for x in eligible]
    assert all(row["label"] == row["module"] and row["module"] for row in info["allocation"])  # PyTorch names
    assert info["bit_choices"] == list(SMOKE.mixed_bit_choices)  # the smoke policy's subset of (2, 3, 4, 6, 8)
    assert {row["bits"] for row in info["allocation"]} <= set(SMOKE.mixed_bit_choices)
    checks = {c["index"]: c for c in info["checks"]}
    assert len(checks) <= int(np.ceil(np.log2(info["path_length"] + 1)))
    if info["met_budget"]:
        chosen = checks[info["chosen_index"]]
        assert chosen["accepted"] and chosen["val_delta_top1"] >= -info["budget_points"]
        if info["chosen_index"] + 1 < info["path_length"]:  # bisection stopped at a refused neighbour
            assert not checks[info["chosen_index"] + 1]["accepted"]
        # the package written is the allocation checked
        v = st.variant("palettize-mixed")
        assert v.get("weights_bytes") == chosen["weights_bytes"]
        assert v.get("bits_per_weight") == pytest.approx(chosen["bits_per_weight"])
        assert v.op_histogram["constexpr_lut_to_dense"] == len(eligible)
    table = views.bit_allocation_table(st.snapshot(), "palettize-mixed")
    widest, narrowest = max(SMOKE.mixed_bit_choices), min(SMOKE.mixed_bit_choices)
    assert len(table) == len(eligible) and table.rows[0][f"KL@{widest}"] is None  # the widest choice is not probed
    assert all(row[f"KL@{narrowest}"] > 0 for row in table.rows)
    chart = views.plot_bit_allocation(info)
    assert len(chart.figure.axes[0].patches) == len(eligible) and "bits" in chart.alt
    assert len(views.bit_search_table(st.snapshot(), "palettize-mixed")) == len(checks)
    assert info["val_images"] == 60 < len(st.dataset.val)  # search_images bounds the allocation checks


def test_a_size_budget_gets_the_widest_allocation_whose_package_fits(lowbit_stage, tmp_path):
    """Issue 25: a student that must be N times smaller than its teacher gets the least damaging allocation within
    that size (the widest fitting point of the path, found on measured package sizes), not the smallest package
    within an accuracy budget."""
    import dataclasses

    from playbook.compress.search import AllocationSettings, BitAllocator
    from playbook.coreml import directory_size

    st = lowbit_stage
    recipe, base = get_recipe("palettize-mixed"), st.source.program("fp16", "iOS18")
    sizes = {b: directory_size(compress_package(f"palettize-{b}bit", base, tmp_path, f"u{b}", 2048).path)
             for b in (2, 8)}
    limit = (sizes[2] + sizes[8]) // 2  # between every layer at 2 bits and every layer at 8
    sized = BitAllocator(st.probes, st.dataset, dataclasses.replace(st.allocator.settings, max_bytes=limit),
                         st.allocator.layers_of)
    made, info = sized.allocate(recipe, base, tmp_path, "sized", metadata={"playbook.note": "x" * 500})
    assert info["max_bytes"] == limit and info["fits_size"]
    assert directory_size(made.path) <= limit < sizes[8]
    # the package written is the one measured (metadata included)
    measured = {c["index"]: c["package_bytes"] for c in info["size_checks"]}
    assert directory_size(made.path) == measured[info["chosen_index"]]
    fits = {c["index"]: c for c in info["size_checks"]}
    assert fits[info["chosen_index"]]["accepted"] and fits[info["chosen_index"]]["package_bytes"] <= limit
    if info["chosen_index"] > 0:  # the bisection stopped at a wider neighbour that did not fit
        assert not fits[info["chosen_index"] - 1]["accepted"] and fits[info["chosen_index"] - 1]["package_bytes"] > limit
    assert len(fits) <= int(np.ceil(np.log2(info["path_length"] + 1)))
    # its accuracy is checked and recorded, not used to choose
    assert [c["index"] for c in info["checks"]] == [info["chosen_index"]] and "val_delta_top1" in info["checks"][0]
    # an impossible budget: the narrowest allocation, marked as not fitting
    tiny = BitAllocator(st.probes, st.dataset, dataclasses.replace(st.allocator.settings, max_bytes=1),
                        st.allocator.layers_of)
    made, info = tiny.allocate(recipe, base, tmp_path, "tiny")
    assert not info["fits_size"] and not info["met_budget"] and info["chosen_index"] is None
    assert {row["bits"] for row in info["allocation"]} == {min(info["bit_choices"])}


def test_the_stage_counts_its_validation_work_and_fine_tunes_before_it_starts(lowbit_stage):
    """Issue 18: the cost printed before the first recipe counts what the mixed bit-widths and fine-tunes will do,
    and the count matches what the run then did."""
    st, cost = lowbit_stage, lowbit_stage.cost
    info = st.mixed["palettize-mixed"]
    mixed = cost["validation"]["mixed"]
    assert mixed["recipes"] == ["palettize-mixed"] and mixed["check_images"] == 60
    assert mixed["probes"] == len(st.probes._cache) == len(info["allocation"]) * (len(info["bit_choices"]) - 1)
    assert mixed["probe_images"] == info["probe_images"]
    assert len(info["checks"]) <= mixed["checks"] == int(np.ceil(np.log2(info["path_length"] + 1)))
    assert cost["validation"]["sensitivity"]["probes"] == 0  # sensitivity_recipe="none"
    assert cost["validation_seconds"] == pytest.approx(
        (mixed["probes"] * mixed["probe_images"] + mixed["checks"] * 60) * cost["seconds_per_image"])
    tuned = cost["finetune"]
    assert tuned["recipes"] == ["torch-prune-75-ft+palettize-4bit"] and tuned["steps"] == st.cfg.steps()
    assert tuned["seconds"] > 0
    assert tuned["checks"] == 8 and tuned["check_images"] == min(500, len(st.dataset.val))
    assert tuned["seconds"] == pytest.approx(tuned["steps"] * st.cfg.batch_size * tuned["seconds_per_image"]
                                             + tuned["check_seconds"])
    assert tuned["check_seconds"] == pytest.approx(8 * tuned["check_images"] * st.cost["seconds_per_image"])
    compression = cost["compression"]
    assert compression["programs"] == mixed["probes"] + mixed["checks"] + cost["variants"]
    assert compression["seconds_per_program"] > 0
    # the teacher's logits (finetune_teacher is on): counted as the run then computed them
    taught = cost["teacher_logits"]
    assert taught["images"] == st.finetune_teacher["images"] == len(st.dataset.train)
    assert taught["cached"] == st.finetune_teacher["from_cache"] and Path(taught["path"]).is_file()
    assert taught["seconds"] == (0.0 if taught["cached"]
                                 else pytest.approx(taught["images"] * cost["seconds_per_image"]))
    assert cost["total_seconds"] == pytest.approx(cost["accuracy_seconds"] + cost["validation_seconds"]
                                                  + compression["seconds"] + tuned["seconds"] + taught["seconds"])


def test_the_cost_estimate_counts_the_teacher_logits_only_when_they_will_be_computed(digits, tmp_path, capsys):
    """The fine-tunes' teacher logits are their own part of stage 02's estimate: counted at the test split's pace
    when a selected recipe fine-tunes and the logits are not cached; absent with the teacher off, without a
    fine-tune, or once ``distill.teacher_logits`` has cached them."""
    from playbook.distill import teacher_logits_path
    from playbook.stages.quantization_cost import fine_tunes_learn_from_teacher, stage_cost, teacher_work

    baseline = {"training": {"checkpoint_sha256": "e" * 64, "steps": 10, "seconds": 2.0},
                "train_config": {"batch_size": 20}}
    measuring = {"variants": 2, "test_images": 100, "seconds_per_image": 0.004, "accuracy_seconds": 0.8}
    work = {"images": 50, "sensitivity": {"probes": 0, "images": 0},
            "mixed": {"recipes": [], "probes": 0, "probe_images": 0, "checks": 0, "check_images": 0}}
    tuned, plain = ["int8-weights", "torch-int4-qat"], ["int8-weights"]
    assert compress.RECIPES["torch-int4-qat"].data == "training" != compress.RECIPES["int8-weights"].data

    def estimate(teacher, recipes=tuned, steps=5):
        cost = stage_cost(measuring, work, 0.5, recipes, steps, 16, baseline, teacher)
        return cost, capsys.readouterr().out

    on = teacher_work(True, digits, baseline, tmp_path)
    assert on == {"images": len(digits.train), "cached": False,
                  "path": str(teacher_logits_path(digits, "e" * 64, tmp_path))}
    cost, printed = estimate(on)
    taught = cost["teacher_logits"]
    assert taught["seconds"] == pytest.approx(len(digits.train) * 0.004) and taught["seconds_per_image"] == 0.004
    assert f"teacher logits: the FP32 model on {len(digits.train):,} training images" in printed
    without = stage_cost(measuring, work, 0.5, tuned, 5, 16, baseline, None)
    capsys.readouterr()
    assert cost["total_seconds"] == pytest.approx(without["total_seconds"] + taught["seconds"])
    # teacher off, no fine-tuning recipe, or no fine-tune steps: no teacher part
    assert teacher_work(False, digits, baseline, tmp_path) is None
    for teacher, recipes, steps in ((None, tuned, 5), (on, plain, 5), (on, tuned, 0)):
        cost, printed = estimate(teacher, recipes, steps)
        assert cost["teacher_logits"] is None and "teacher logits" not in printed
        # the stage asks the same question before it computes them
        assert not fine_tunes_learn_from_teacher(teacher is not None, recipes, steps)
    assert fine_tunes_learn_from_teacher(True, tuned, 5)
    # cached by an earlier run: recorded as cached, costs nothing, not printed
    Path(on["path"]).parent.mkdir(parents=True)
    Path(on["path"]).write_bytes(b"")
    cached = teacher_work(True, digits, baseline, tmp_path)
    assert cached["cached"] and cached["path"] == on["path"]
    cost, printed = estimate(cached)
    assert cost["teacher_logits"]["seconds"] == 0.0 and "teacher logits" not in printed
    assert cost["total_seconds"] == pytest.approx(without["total_seconds"])
    # early stopping's checks: 1 checked fine-tuning recipe x 3 checks x 40 validation images, at the test split's
    # pace; torch-int4-qat runs every step unchecked (its recipe's early_stop=False), so its checks cost nothing
    both = ["torch-w8a8-qat", "torch-int4-qat"]
    checked = stage_cost(measuring, work, 0.5, both, 5, 16, baseline, None, checks=3, check_images=40)
    unchecked = stage_cost(measuring, work, 0.5, both, 5, 16, baseline, None)
    assert checked["finetune"]["check_seconds"] == pytest.approx(1 * 3 * 40 * 0.004)
    assert checked["total_seconds"] == pytest.approx(unchecked["total_seconds"] + 3 * 40 * 0.004)
    assert "3 checks x 40 validation images each" in capsys.readouterr().out
    assert checked["finetune"]["total_steps"] == 5 + 10  # torch-int4-qat's steps_factor 2: twice the 5 steps
    assert stage_cost(measuring, work, 0.5, ["torch-int4-qat"], 5, 16, baseline, None, 3, 40)["finetune"][
        "check_seconds"] == 0.0
    assert stage_cost(measuring, work, 0.5, tuned, 2, 16, baseline, None, 8, 40)["finetune"]["checks"] == 2


def test_gradual_pruning_then_a_palette_on_the_survivors(lowbit_stage):
    v = lowbit_stage.variant("torch-prune-75-ft+palettize-4bit")
    ops = v.op_histogram
    assert ops.get("constexpr_lut_to_sparse", 0) >= 1 and ops.get("constexpr_sparse_to_dense", 0) >= 1
    assert v.get("deployment_target") == "iOS18"
    details = v.get("details")
    assert details["schedule"]["power"] == 3 and details["schedule"]["update_steps"][0] == 0
    assert v.get("finetune_images") == v.get("finetune_steps") * lowbit_stage.cfg.batch_size > 0
    # the smoke run's 20 steps get the stage's 8 agreement checks (one every 2 steps, once the sparsity is final)
    stop = details["early_stop"]
    assert lowbit_stage.details()["finetune"]["checks"] == 8 and stop["every"] == 2
    # a network trained from scratch has no fine-tune rate to derive one from: the stage's default, and why
    assert lowbit_stage.details()["finetune"]["lr"] == 0.002
    assert "from scratch" in lowbit_stage.details()["finetune"]["lr_source"]
    assert stop["checks"] and all(step > details["schedule"]["update_steps"][-1] for step, _ in stop["checks"])
    assert v.get("finetune_steps") == stop["steps_run"] <= stop["planned_steps"] == 20
    snap = lowbit_stage.snapshot()
    assert "fine-tune budget" in views.explain_variant(snap, v.name)
    assert f"weights from step {stop['best_step']}" in views.explain_variant(snap, v.name)
    rows = views.headline_table(snap, (100.0,)).rows
    assert rows[0]["variant"] != "none"  # with a 100-point limit some variant qualifies


def test_slow_recipes_join_the_default_set_only_when_asked():
    assert not set(compress.SLOW_RECIPES) & set(QuantizationConfig().recipe_names())
    assert set(compress.SLOW_RECIPES) <= set(QuantizationConfig(slow_recipes=True).recipe_names())
    assert set(QuantizationConfig(smoke=True, slow_recipes=True).recipe_names()) - set(
        QuantizationConfig(smoke=True).recipe_names()) == set(SMOKE.slow_quantization_recipes)


def test_notebook_02_cites_its_sources_and_the_corrected_claims_stay_corrected():
    """Issue 17: every numbered citation of notebook 02 resolves to its Sources list, every source is cited and
    well-formed, and the sentences found wrong or unsourced do not come back (in the notebook or the stage)."""
    import re
    from pathlib import Path
    from urllib.parse import urlparse

    from playbook.paths import notebooks_dir

    nb = json.loads((notebooks_dir() / "02_quantization.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    body, _, sources = text.partition("## Sources")
    assert sources, "notebook 02 must end with a '## Sources' list"
    items = dict(re.findall(r"^(\d+)\. (.+?)(?=^\d+\. |\Z)", sources.strip() + "\n", flags=re.M | re.S))
    assert sorted(map(int, items)) == list(range(1, len(items) + 1)) and len(items) >= 10
    for number, item in items.items():
        urls = re.findall(r"https?://\S+", item)
        assert urls, f"source {number} has no link"
        for url in urls:
            parsed = urlparse(url)
            assert parsed.scheme == "https" and "." in parsed.netloc and not url.endswith((".", ",", ")")), url
        if "arXiv:" in item:
            arxiv = re.search(r"arXiv:(\d{4}\.\d{4,5})", item).group(1)
            assert f"https://arxiv.org/abs/{arxiv}" in item
    cited = {int(n) for group in re.findall(r"\[(\d+(?:\]\[\d+)*)\]", body) for n in group.split("][")}
    assert cited == set(map(int, items)), (sorted(cited), sorted(map(int, items)))
    stages_dir = Path(__file__).resolve().parents[1] / "playbook" / "stages"
    checked = text + "".join(p.read_text() for p in sorted(stages_dir.glob("quantization*.py")))  # stage and mixins
    for phrase in ("lets int8 hardware paths run", "often faster", "shrinks the download and the memory",
                   "silently skips", "2-8x", "savings multiply", "what some toolkits call", "classic weak spots",
                   "usually costs a few kilobytes", "only where activations have outliers", "depthwise-heavy",
                   "barely notices", "hardware can exploit", "post-training int8 63.7", "costs run time"):
        assert phrase not in checked, phrase


def test_dkm_takes_a_palette_size_per_module(digits):
    torch.manual_seed(0)
    small = create_model("resnet", 10, 1, width=8).eval()
    bits = {"stages.2.body.3": 2, "stages.1.body.0": 4}
    result = compress_torch("torch-palettize-mixed-dkm", small, digits, finetune_steps=2, batch_size=16,
                            module_bits=bits)
    modules = dict(result.model.named_modules())
    for name, b in bits.items():
        assert 2 < len(torch.unique(modules[name].weight.detach())) <= 2 ** b
    assert len(torch.unique(modules["stages.2.body.0"].weight.detach())) > 16  # not in the allocation: untouched
    assert result.details["module_bits"] == bits and result.finetune_seconds > 0
    with pytest.raises(ConfigError, match="not modules of the model"):
        compress_torch("torch-palettize-mixed-dkm", small, digits, finetune_steps=1, module_bits={"conv99": 2})


# --------------------------------------------------------------------------- channel ranges (issue 18)
class _WideChannels(torch.nn.Module):
    """A conv whose output channels span 100x, with one channel all zero (what folding a zero-scale BatchNorm
    leaves), then a linear head: the pattern that collapses per-tensor palettes and pruning on efficientnet-lite0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, 72).reshape(8, 1, 3, 3))  # every channel |w| max = its end
            scale = torch.tensor([100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]).reshape(8, 1, 1, 1)
            self.conv.weight.mul_(scale / self.conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_channel_ranges_measure_each_output_channel(tmp_path, digits):
    package = export_model(_WideChannels().eval(), digits, ExportConfig(precision="fp32"), tmp_path, "wide").package
    ranges = compress.channel_ranges(package.path, weight_threshold=64)
    conv = next(r for r in ranges if r.shape == (8, 1, 3, 3))
    assert conv.widest == pytest.approx(100.0) and conv.median == pytest.approx(1.0) and conv.narrowest == 0.0
    assert conv.dead == 1 and conv.spread == pytest.approx(100.0)
    assert ranges[0] is conv  # widest spread first
    head = next(r for r in ranges if r.shape == (10, 512))
    assert head.dead == 0 and head.spread < 10  # a default-initialised linear layer: channels alike


def test_dkm_with_per_channel_scales_gives_a_layer_with_a_dead_channel_grouped_palettes(digits):
    """coremltools' DKM divides each output channel by its scale before k-means; a channel of zeros (a folded
    BatchNorm of scale 0) gives NaN and its k-means fails.  The playbook gives such a layer a palette per 16
    output channels and the other layers their per-channel scales."""
    import copy
    import dataclasses

    from coremltools.optimize.torch import palettization as pal

    model = _WideChannels().eval()
    assert compress.zero_channel_layers(model) == ["conv"]
    # kmeans++: the initialisation coremltools picks for a layer of 1,024 output channels or more (lite0 has them)
    options = {"n_bits": 2, "enable_per_channel_scale": True, "weight_threshold": 16, "kmeans_init": "kmeans++"}
    with pytest.raises(TypeError, match="index_add_"):  # coremltools alone on this model: the step fails
        palettizer = pal.DKMPalettizer(copy.deepcopy(model), pal.DKMPalettizerConfig.from_dict({"global_config": options}))
        prepared = palettizer.prepare().train()
        palettizer.step()  # milestone 0: palettization starts (as after a fine-tune's first step)
        prepared(digits.to_tensor(digits.train.images[:4]))
    recipe = dataclasses.replace(get_recipe("torch-palettize-2bit-dkm"),
                                 options={"n_bits": 2, "enable_per_channel_scale": True}, min_target="iOS18", prepare=())
    result = compress_torch(recipe, model, digits, finetune_steps=2, batch_size=16, weight_threshold=16)
    assert result.details["grouped_for_zero_channels"] == ["conv"]
    assert result.details["weights_compressed"] == result.details["weights_total"]  # both layers palettized
    head = result.model.fc.weight.detach()
    assert len(torch.unique(head)) > 4  # per-channel scales: 4 values per row, not 4 in all
    assert all(len(torch.unique(row)) <= 4 for row in head)


def test_dkm_with_a_palette_per_output_channel_keeps_the_narrow_channels_and_converts(tmp_path, digits):
    """Issue 23: one 2-bit palette for a layer whose output channels span 100x spends its four values on the wide
    channel and collapses the narrow ones (efficientnet-lite0 fell to chance); ``torch-palettize-2bit-dkm-channel``
    fits four values to every output channel, the all-zero one included, and converts for iOS 18."""
    torch.manual_seed(0)
    model = _WideChannels().eval()
    reference = model.conv.weight.detach().clone()
    shared = compress_torch("torch-palettize-2bit-dkm", model, digits, finetune_steps=2, batch_size=16,
                            weight_threshold=16)
    own = compress_torch("torch-palettize-2bit-dkm-channel", model, digits, finetune_steps=2, batch_size=16,
                         weight_threshold=16)
    one, per_channel = shared.model.conv.weight.detach(), own.model.conv.weight.detach()
    narrow = range(1, 7)  # the six channels of scale 1 (channel 0 spans 100, channel 7 is all zero)
    assert all(len(torch.unique(one[c])) <= 2 for c in narrow)  # the shared palette: at most 2 of its 4 values here
    assert all(len(torch.unique(per_channel[c])) == 4 for c in narrow)
    assert all(len(torch.unique(row)) <= 4 for row in [*per_channel.flatten(1), *own.model.fc.weight.detach()])
    assert len(torch.unique(own.model.fc.weight.detach())) > 4  # the head too: four values per row, not in all
    error = {name: (w - reference)[1:7].abs().max().item() for name, w in (("one", one), ("own", per_channel))}
    assert error["own"] < error["one"] / 5, error
    assert own.details["weights_compressed"] == own.details["weights_total"]
    package = export_model(own.model, digits, ExportConfig(minimum_deployment_target="iOS18"), tmp_path, "c").package
    assert package.op_histogram.get("constexpr_lut_to_dense", 0) == 2
    scores, _ = predict_split(package.path, digits, digits.test, "reference")
    with torch.no_grad():
        torch_scores = own.model(digits.to_tensor(digits.test.images)).numpy()
    assert (scores.argmax(1) == torch_scores.argmax(1)).mean() > 0.95


def test_collapsed_data_free_recipes_are_explained_by_the_channel_ranges_or_not_at_all(stage, tmp_path, digits,
                                                                                      monkeypatch):
    """The pitfall fires only when a data-free palette or pruning collapsed *and* the weights show wide or dead
    channels; its figures are the measured ones."""
    import dataclasses as dc

    from playbook.metrics import PairedComparison

    st = QuantizationRun(stage.cfg.replace(recipes=["int8-weights", "palettize-2bit"], sensitivity_recipe="none"))
    st.variants = list(stage.variants)
    pal2 = st.variant("palettize-2bit")
    if pal2.vs_reference.delta_top1 >= -5 * st.cfg.max_top1_drop:  # make the measured variant a collapsed one
        collapsed = dc.replace(pal2.vs_reference, delta_top1=-40.0, ci_low=-45.0, ci_high=-35.0)
        assert isinstance(collapsed, PairedComparison)
        st.variants = [v for v in st.variants if v.name != "palettize-2bit"] + [dc.replace(pal2, vs_reference=collapsed)]
    st._channel_pitfall()
    resnet = compress.channel_ranges(st.baseline.fp32_package, st.cfg.weight_threshold)
    assert st.channel_ranges is not None and len(st.channel_ranges) == min(10, len(resnet))
    assert all(r.spread < 10 and r.dead == 0 for r in resnet)  # the playbook's resnet: no wide channels
    assert not any(p["title"].startswith("why the data-free") for p in st.pitfalls)

    wide = export_model(_WideChannels().eval(), digits, ExportConfig(precision="fp32"), tmp_path, "wide").package
    monkeypatch.setattr("playbook.stages.quantization.channel_ranges",
                        lambda package, threshold: compress.channel_ranges(wide.path, 64))
    st._channel_pitfall()
    pitfall = next(p for p in st.pitfalls if p["title"].startswith("why the data-free"))
    assert "1 of 2 compressed weight tensors have an output channel over 10x wider" in pitfall["detail"]
    assert "100 against a median 1" in pitfall["detail"] and "1 channel(s) are all but zero" in pitfall["detail"]
    assert f"palettize-2bit {st.variant('palettize-2bit').vs_reference.delta_top1:+.2f}" in pitfall["detail"]


# --------------------------------------------------------------------------- subclassed layers (issue 18)
class _SamePadConv(torch.nn.Conv2d):
    """An nn.Conv2d with its own padding step, as efficientnet_lite_pytorch's Conv2dStaticSamePadding."""

    def forward(self, x):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias)


class _MixedLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = torch.nn.Conv2d(1, 32, 3, padding=1)  # 288 weights: above the 256-element threshold
        self.padded = _SamePadConv(32, 16, 3)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.padded(torch.relu(self.plain(x)))).flatten(1))


def test_dkm_leaves_subclassed_layers_float_and_the_stage_names_them(digits, stage):
    """coremltools' DKMPalettizer finds modules by exact type: a subclass of nn.Conv2d stays float.  The playbook
    counts such layers, and the stage names a PyTorch-side variant that compressed fewer weights than it should."""
    import dataclasses as dc

    torch.manual_seed(0)
    model = _MixedLayers().eval()
    assert {k.rsplit(".", 1)[-1]: c for k, c in compress.subclassed_layers(model).items()} == {"_SamePadConv": 1}
    result = compress_torch("torch-palettize-2bit-dkm", model, digits, finetune_steps=2, batch_size=16)
    modules = dict(result.model.named_modules())
    assert len(torch.unique(modules["plain"].weight.detach())) <= 4  # palettized at 2 bits
    assert len(torch.unique(modules["padded"].weight.detach())) > 4  # a subclass: left float

    st = QuantizationRun(stage.cfg.replace(recipes=["int8-weights"], sensitivity_recipe="none"))
    real = stage.variant("int8-weights")
    st.variants = [dc.replace(real, name="torch-partial", extra={**real.extra, "side": "torch", "compressed_weights": 1})]
    st.model = model
    st._coverage_pitfall()
    eligible = sum(1 for x in compress.weight_layers(st.baseline.fp32_package, st.cfg.weight_threshold) if x.eligible)
    pitfall = next(p for p in st.pitfalls if p["title"] == f"torch-partial compressed only 1 of {eligible} weights")
    assert "_SamePadConv x1" in pitfall["detail"] and "find modules by exact type" in pitfall["detail"]
    st.pitfalls.clear()
    st.variants = [dc.replace(real, name="torch-full", extra={**real.extra, "side": "torch"})]
    st._coverage_pitfall()
    assert not st.pitfalls  # every eligible weight compressed: nothing to say
    # grouped convolutions the recipe leaves float by design (GPTQ, SparseGPT) are not a shortfall
    by_design = {**real.extra, "side": "torch", "compressed_weights": eligible - 2,
                 "details": {"skipped_grouped_convs": ["a", "b"]}}
    st.variants = [dc.replace(real, name="torch-grouped", extra=by_design)]
    st._coverage_pitfall()
    assert not st.pitfalls
    # a recipe that made the subclassed layers plain is not told they were invisible
    plain = {**real.extra, "side": "torch", "compressed_weights": 1,
             "recipe": {**real.extra.get("recipe", {}), "prepare": ["plain_convs", "fold_bn"]}}
    st.variants = [dc.replace(real, name="torch-plain", extra=plain)]
    st._coverage_pitfall()
    assert st.pitfalls and "exact type" not in st.pitfalls[0]["detail"]


def test_exporting_and_compressing_leave_no_temporary_package_behind(tmp_path, digits, net, monkeypatch):
    # coremltools writes every converted or compressed model to a temporary .mlpackage and removes it only at
    # interpreter exit; a worker process or a killed kernel never gets there (one day of runs left 6,108 in /tmp).
    import gc
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    base = export_model(net, digits, ExportConfig(precision="fp16", minimum_deployment_target="iOS18"),
                        tmp_path / "out", "fp16").path
    made = compress_package("prune-50+palettize-4bit", base, tmp_path / "out", weight_threshold=THRESHOLD)
    gc.collect()
    assert base.exists() and Path(made.path).exists()
    assert sorted(p.name for p in temp.iterdir()) == []


def test_a_joint_recipe_reuses_the_fine_tune_of_its_pruning_recipe(tmp_path, digits, net, monkeypatch):
    # torch-prune-75-ft+palettize-4bit is torch-prune-75-ft's fine-tune with a 4-bit palette after conversion: one
    # ModelSource trains that fine-tune once (7-8 s of stage 02 on the default resnet); another source, or another
    # fine-tune, trains again.
    from playbook.compress import apply

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return compress_torch(*args, **kwargs)

    monkeypatch.setattr(apply, "compress_torch", counting)
    export_cfg = ExportConfig(precision="fp16", minimum_deployment_target="iOS17")
    cfg = apply.CompressConfig(weight_threshold=THRESHOLD, finetune=apply.FinetuneConfig(steps=4, batch_size=16))
    source = apply.ModelSource(net, digits, export_cfg, tmp_path / "a")
    alone = apply.compress("torch-prune-75-ft", source, cfg, out_dir=tmp_path / "a")
    joint = apply.compress("torch-prune-75-ft+palettize-4bit", source, cfg, out_dir=tmp_path / "a")
    assert calls == ["torch-prune-75-ft"]
    assert "finetune_reused_from" not in alone.details and alone.finetune_seconds > 0
    assert joint.details["finetune_reused_from"] == "torch-prune-75-ft"
    assert joint.finetune_steps == alone.finetune_steps == 4 and joint.finetune_seconds == 0.0
    ops = package_info(joint.path).op_histogram
    assert ops.get("constexpr_sparse_to_dense") and ops.get("constexpr_lut_to_sparse")  # pruned, then palettized
    assert joint.details["weights_compressed"] == alone.details["weights_compressed"]  # the same pruned model
    apply.compress("torch-prune-75-ft+palettize-4bit", apply.ModelSource(net, digits, export_cfg, tmp_path / "b"),
                   cfg, out_dir=tmp_path / "b")
    longer = cfg.replace(finetune=apply.FinetuneConfig(steps=5, batch_size=16))
    apply.compress("torch-prune-75-ft+palettize-4bit", source, longer, out_dir=tmp_path / "c")
    assert calls == ["torch-prune-75-ft", "torch-prune-75-ft+palettize-4bit", "torch-prune-75-ft+palettize-4bit"]
