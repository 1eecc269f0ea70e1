"""Stage 03 and its technique: the loss, the teacher-logit cache, the feature term, the fair comparison, the
bad inputs a user will try, and the whole stage on digits in smoke mode."""
import copy
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from playbook import views
from playbook.compress.apply import FinetuneConfig
from playbook.config import ConfigError
from playbook.coreml import export_model, package_info
from playbook.distill import (DistillConfig, Distiller, distillation_loss, paired_seed_test, soft_loss, soft_targets,
                              student_cache_key, teacher_logits, train_or_load_student, training_split_id)
from playbook.env import torch_threads
from playbook.models import ModelError
from playbook.notebooks import check_parameters
from playbook.paths import notebooks_dir
from playbook.records import (StageRecord, VariantRecord, read_stage_record, stale_inputs, write_stage_record)
from playbook.train import ModelConfig, TrainConfig, build_model, evaluate, fit, load_checkpoint


# --------------------------------------------------------------------------- the loss
def test_loss_is_cross_entropy_at_alpha_1_and_the_scaled_kl_at_alpha_0():
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 1.0), F.cross_entropy(s, y))
    # KL(p_t || p_s) written out, times T^2
    T = 4.0
    p_t = torch.softmax(t / T, 1)
    explicit = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert torch.allclose(distillation_loss(s, t, y, T, 0.0), explicit, atol=1e-6)
    mixed = distillation_loss(s, t, y, T, 0.3)
    assert torch.allclose(mixed, 0.3 * F.cross_entropy(s, y) + 0.7 * explicit, atol=1e-6)
    # a student that copies the teacher has nothing left to learn from it
    assert soft_loss(t.clone(), t, T).abs() < 1e-6


def test_t_squared_keeps_soft_gradients_comparable_across_temperatures():
    """Without T^2 the soft term's gradient shrinks ~1/T^2 (Hinton et al. 2015); with it, it stays of one order."""
    torch.manual_seed(1)
    t = torch.randn(64, 10) * 2
    norms = {}
    for T in (2.0, 8.0):
        s = torch.randn(64, 10, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        soft_loss(s, t, T).backward()
        norms[T] = float(s.grad.norm())
    assert 0.25 < norms[8.0] / norms[2.0] < 4.0  # unscaled, the ratio would be about (2/8)^2 / (8/2) = 1/64


def test_soft_targets_flatten_as_the_temperature_rises():
    logits = np.array([[8.0, 2.0, 1.0, 0.0]])
    entropies = [float(-(p * np.log(p)).sum()) for p in (soft_targets(logits, T)[0] for T in (1, 2, 4, 8))]
    assert entropies == sorted(entropies) and entropies[-1] < math.log(4)
    assert np.allclose(soft_targets(logits, 1.0), torch.softmax(torch.tensor(logits), 1).numpy())
    with pytest.raises(ConfigError, match="temperature=0"):
        soft_targets(logits, 0)


@pytest.mark.parametrize("changes, message", [
    ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
    ({"temperature": -2.0}, r"temperature=-2.0 is out of range"),
    ({"alpha": 1.5}, r"alpha=1.5 is out of range \[0.0, 1.0\]"),
    ({"alpha": -0.1}, r"alpha=-0.1 is out of range"),
    ({"beta": -1.0}, r"beta=-1.0 is out of range"),
    ({"beta": 1.0, "feature_layer": " "}, "feature_layer=' ' must name a sub-module"),
    ({"temperature": "4"}, "temperature='4' must be float"),
])
def test_distill_config_rejects_bad_values_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**changes)


# --------------------------------------------------------------------------- teacher logits
def _tiny(digits, seed=0, width=4):
    torch.manual_seed(seed)
    return build_model(ModelConfig("resnet", {"width": width}), digits).eval()


def test_teacher_logits_are_computed_once_and_keyed_by_checkpoint_and_split(digits, tmp_path):
    teacher = _tiny(digits)
    first = teacher_logits(teacher, digits, "a" * 64, tmp_path, progress=False)
    assert not first.from_cache and first.logits.shape == (len(digits.train), digits.num_classes)
    with torch.inference_mode():
        expected = teacher(digits.to_tensor(digits.train.images[:7])).numpy()
    assert np.allclose(first.logits[:7], expected, atol=1e-5)
    again = teacher_logits(_tiny(digits, seed=5), digits, "a" * 64, tmp_path, progress=False)
    assert again.from_cache and np.array_equal(again.logits, first.logits)  # same key: the file, not the net
    other_teacher = teacher_logits(teacher, digits, "b" * 64, tmp_path, progress=False)
    assert not other_teacher.from_cache and other_teacher.path != first.path
    smaller = dataclasses.replace(digits, train=digits.train.head(100))
    assert training_split_id(smaller) != training_split_id(digits)
    assert teacher_logits(teacher, smaller, "a" * 64, tmp_path, progress=False).path != first.path
    first.path.write_bytes(b"not numpy")  # a corrupt cache file is recomputed, not trusted
    fixed = teacher_logits(teacher, digits, "a" * 64, tmp_path, progress=False)
    assert not fixed.from_cache and np.allclose(fixed.logits, first.logits)


# --------------------------------------------------------------------------- the training module
def test_distiller_trains_the_student_through_fit_and_leaves_the_teacher_untouched(digits, tmp_path):
    teacher = _tiny(digits, seed=3, width=8)
    before = copy.deepcopy(teacher.state_dict())
    cached = teacher_logits(teacher, digits, "c" * 64, tmp_path, progress=False).logits
    student = _tiny(digits, seed=0)
    start = copy.deepcopy(student.state_dict())
    distiller = Distiller(student, teacher, DistillConfig(temperature=4.0, alpha=0.5), _example(digits), cached)
    assert [n for n, _ in distiller.named_children()] == ["student"]  # the teacher is not optimised or moved
    fit(distiller, digits, TrainConfig(epochs=1, lr=0.05, validate=False, threads=1), progress=False,
        loss_fn=distiller.loss)
    assert not teacher.training
    for name, value in teacher.state_dict().items():  # weights and BatchNorm running statistics alike
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_loss_looks_up_the_cached_logits_of_the_batch_by_index(digits):
    teacher = _tiny(digits, seed=3)
    cached = np.random.default_rng(0).normal(size=(len(digits.train), digits.num_classes)).astype(np.float32)
    distiller = Distiller(_tiny(digits), teacher, DistillConfig(temperature=2.0, alpha=0.25), _example(digits), cached)
    distiller.train()
    index = torch.tensor([5, 0, 17])
    logits = distiller(digits.to_tensor(digits.train.images[index.numpy()]))
    labels = torch.from_numpy(digits.train.labels[index.numpy()])
    expected = distillation_loss(logits, torch.from_numpy(cached[index.numpy()]), labels, 2.0, 0.25)
    assert torch.allclose(distiller.loss(logits, labels, index), expected)


def test_without_cached_logits_the_teacher_runs_on_the_batch_it_sees(digits):
    """Augmentation changes the images every epoch: the teacher must see the same (augmented) batch."""
    teacher = _tiny(digits, seed=3)
    distiller = Distiller(_tiny(digits), teacher, DistillConfig(), _example(digits), cached_logits=None)
    assert distiller.runs_teacher
    distiller.train()
    x = digits.to_tensor(digits.train.images[:4]).flip(3)  # not a training image as stored
    logits = distiller(x)
    with torch.no_grad():
        expected = distillation_loss(logits, teacher(x), torch.zeros(4, dtype=torch.long), 4.0, 0.5)
    assert torch.allclose(distiller.loss(logits, torch.zeros(4, dtype=torch.long), torch.arange(4)), expected)
    fit(distiller, digits, TrainConfig(epochs=1, lr=0.05, augment=True, validate=False, threads=1), progress=False,
        loss_fn=distiller.loss)


def test_feature_term_builds_a_1x1_adapter_that_is_optimised_with_the_student(digits):
    teacher = _tiny(digits, seed=3, width=8)
    student = _tiny(digits, seed=0, width=4)
    distiller = Distiller(student, teacher, DistillConfig(beta=1.0), _example(digits), cached_logits=None)
    adapter = distiller.adapter
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1)
    assert (adapter.in_channels, adapter.out_channels) == (16, 32)  # resnet's last stage has 4x width channels
    assert distiller.feature_shapes["student"][0] == 16 and distiller.feature_shapes["teacher"][0] == 32
    w0 = adapter.weight.detach().clone()
    fit(distiller, digits, TrainConfig(epochs=1, lr=0.05, validate=False, threads=1), progress=False,
        loss_fn=distiller.loss)
    assert not torch.equal(adapter.weight.detach(), w0)
    # the feature term is part of the loss: with beta it exceeds the logit terms alone
    distiller.train()
    x = digits.to_tensor(digits.train.images[:8])
    y = torch.from_numpy(digits.train.labels[:8])
    logits = distiller(x)
    with torch.no_grad():
        plain = distillation_loss(logits, teacher(x), y, 4.0, 0.5)
    assert distiller.loss(logits, y, torch.arange(8)) > plain


def test_a_feature_layer_that_is_not_a_feature_map_fails_naming_the_field(digits):
    teacher, student = _tiny(digits, seed=3), _tiny(digits)
    with pytest.raises(ConfigError, match=r"feature_layer='nope' is not a sub-module of Classifier; its top-level"):
        Distiller(student, teacher, DistillConfig(beta=1.0, feature_layer="nope"), _example(digits))
    with pytest.raises(ConfigError, match=r"feature_layer='fc' must output a feature map"):
        Distiller(student, teacher, DistillConfig(beta=1.0, feature_layer="fc"), _example(digits))


def test_alpha_1_distillation_is_bitwise_scratch_training_same_init_order_and_budget(digits):
    """The fairness of the comparison, checked: with the soft term switched off, the distilled run *is* the scratch
    run (same initial weights, same batches in the same order, same optimiser steps)."""
    teacher = _tiny(digits, seed=3)
    cfg = TrainConfig(epochs=1, lr=0.05, validate=False, seed=7, threads=1)
    scratch = _tiny(digits, seed=7)
    fit(scratch, digits, cfg, progress=False)
    student = _tiny(digits, seed=7)
    distiller = Distiller(student, teacher, DistillConfig(alpha=1.0), _example(digits),
                          np.zeros((len(digits.train), digits.num_classes), np.float32))
    fit(distiller, digits, cfg, progress=False, loss_fn=distiller.loss)
    for name, value in scratch.state_dict().items():
        assert torch.allclose(value, student.state_dict()[name], atol=1e-6), name


def test_trained_students_are_cached_by_init_config_data_objective_and_teacher(digits, tmp_path):
    """A rerun of the same student training loads the weights instead of training: same weights, same loss; any
    change to what the weights depend on (initial weights, training config, images, objective, teacher) is a new
    key; a corrupt file is retrained."""
    teacher = _tiny(digits, seed=3, width=8)
    cfg = TrainConfig(epochs=1, lr=0.05, validate=False, seed=1, threads=1)
    dcfg = DistillConfig(temperature=4.0, alpha=0.5)
    calls = []

    def logits():
        calls.append(1)
        return teacher_logits(teacher, digits, "d" * 64, tmp_path, progress=False).logits

    def run(student, **kw):
        return train_or_load_student(student, digits, kw.pop("cfg", cfg), distill=kw.pop("distill", dcfg),
                                     teacher=teacher, teacher_sha256=kw.pop("sha", "d" * 64), cached_logits=logits,
                                     cache_dir=tmp_path, **kw)

    first_net = _tiny(digits, seed=1)
    first = run(first_net)
    assert not first.from_cache and first.steps > 0 and calls == [1]
    again_net = _tiny(digits, seed=1)
    again = run(again_net)
    assert again.from_cache and again.key == first.key and again.final_loss == first.final_loss
    assert calls == [1]  # found in the cache: the teacher's logits were not even loaded
    for name, value in first_net.state_dict().items():
        assert torch.equal(value, again_net.state_dict()[name]), name
    key = lambda net, **kw: student_cache_key(net, kw.pop("data", digits), kw.pop("cfg", cfg),
                                              kw.pop("distill", dcfg), kw.pop("sha", "d" * 64))
    base = key(_tiny(digits, seed=1))
    assert base == first.key
    assert key(_tiny(digits, seed=2)) != base  # other initial weights
    assert key(_tiny(digits, seed=1), cfg=cfg.replace(lr=0.1)) != base
    assert key(_tiny(digits, seed=1), cfg=cfg.replace(threads=2)) == base  # threads do not change what is computed
    assert key(_tiny(digits, seed=1), data=dataclasses.replace(digits, train=digits.train.head(200))) != base
    assert key(_tiny(digits, seed=1), distill=DistillConfig(temperature=2.0)) != base
    assert key(_tiny(digits, seed=1), sha="e" * 64) != base
    assert key(_tiny(digits, seed=1), distill=None, sha="") != base  # scratch training is another key
    scratch = train_or_load_student(_tiny(digits, seed=1), digits, cfg, cache_dir=tmp_path)
    assert not scratch.from_cache and scratch.key.startswith("student-scratch-")
    with open(first.path, "wb") as fh:
        fh.write(b"not a checkpoint")
    fixed = run(_tiny(digits, seed=1))
    assert not fixed.from_cache and fixed.final_loss == pytest.approx(first.final_loss, rel=1e-5)


def test_students_trained_in_worker_processes_are_the_ones_a_process_trains_alone(digits, tmp_path):
    """Issue 25: the seed comparison trains its students side by side in worker processes.  A worker's student
    lands in the cache, where the caller's own call finds it, with the same weights (to rounding) as the same job
    trained alone in this process with one thread; a job that cannot be sent to a process (a lazy logits function)
    is left to the caller."""
    from playbook.student_training import StudentJob, train_pending, train_students_in_workers

    teacher = _tiny(digits, seed=3, width=8)
    cfg = TrainConfig(epochs=1, lr=0.05, validate=False, seed=1, threads=1)
    dcfg = DistillConfig(temperature=4.0, alpha=0.5)
    logits = teacher_logits(teacher, digits, "d" * 64, tmp_path, progress=False).logits

    def jobs(cache, lazy=False):
        return [StudentJob(_tiny(digits, seed=1), digits, cfg, cache_dir=cache),
                StudentJob(_tiny(digits, seed=2), digits, cfg, dcfg, teacher, "d" * 64,
                           (lambda: logits) if lazy else logits, cache_dir=cache)]

    assert train_students_in_workers(jobs(tmp_path / "lazy", lazy=True), workers=2) == {}  # one sendable job only
    plan, done = train_pending(jobs(tmp_path / "small"), max_workers=2)  # a smoke-sized step: no start-up to pay
    assert plan.workers == 0 and done == {} and "in this process" in plan.reason
    in_workers = jobs(tmp_path / "workers")
    done = train_students_in_workers(in_workers, workers=2, threads_per_worker=1)
    assert sorted(done) == sorted(job.key() for job in in_workers) and all(job.cached() for job in in_workers)
    assert train_students_in_workers(jobs(tmp_path / "workers"), workers=2) == {}  # all cached: nothing starts
    alone = jobs(tmp_path / "alone")
    with torch_threads(1):
        for worker_job, own_job in zip(in_workers, alone):
            loaded, trained = worker_job.run(), own_job.run()
            assert loaded.from_cache and not trained.from_cache and loaded.key == trained.key
            assert loaded.checkpoint_sha256 == done[loaded.key].checkpoint_sha256
            for name, value in worker_job.student.state_dict().items():
                assert torch.allclose(value.float(), own_job.student.state_dict()[name].float(), atol=1e-5), name


# --------------------------------------------------------------------------- statistics
def test_paired_seed_test_matches_scipy_and_reports_mean_and_std():
    from scipy import stats

    scratch, distilled = [85.1, 84.6, 85.4], [86.9, 86.2, 87.3]
    out = paired_seed_test(scratch, distilled)
    ref = stats.ttest_rel(distilled, scratch)
    assert out["p_value"] == pytest.approx(ref.pvalue) and out["t"] == pytest.approx(ref.statistic)
    gains = np.subtract(distilled, scratch)
    assert out["gain_mean"] == pytest.approx(gains.mean()) and out["gain_std"] == pytest.approx(gains.std(ddof=1))
    assert out["ci_low"] < out["gain_mean"] < out["ci_high"] and out["wins"] == 3 and out["n"] == 3
    single = paired_seed_test([85.0], [86.0])
    assert single["p_value"] is None and single["gain_std"] is None and single["gain_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_seed_test([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- the stage
from playbook.stages.distillation import DistillationConfig, DistillationRun, run_distillation  # noqa: E402

SMALL_TEACHER = {"dataset": "digits", "model_options": {"width": 8}, "epochs": 2, "lr": 0.05}
FAST = {"student_options": {"width": 4}, "seeds": [0, 1], "sweep_temperatures": [1.0, 4.0], "sweep_alphas": [0.5, 0.9],
        "student_widths": [4, 6], "min_size_ratio": 1000.0}  # no width reaches 1000x: the smallest (4) is trained


@pytest.mark.parametrize("changes, error, message", [
    ({"temperature": 0.0}, ConfigError, "temperature=0.0 must be > 0"),
    ({"alpha": 2.0}, ConfigError, r"alpha=2.0 is out of range"),
    ({"beta": -0.5}, ConfigError, r"beta=-0.5 is out of range"),
    ({"seeds": []}, ConfigError, r"seeds=\[\] must be a non-empty list"),
    ({"seeds": [0, 0]}, ConfigError, r"seeds=\[0, 0\] must not repeat"),
    ({"seeds": [0, "1"]}, ConfigError, "seeds="),
    ({"sweep_temperatures": [2.0, 0.0]}, ConfigError, "sweep_temperatures=0.0 must be > 0"),
    ({"sweep_alphas": [1.2]}, ConfigError, r"sweep_alphas=1.2 is out of range"),
    ({"student": "resnet9000"}, ModelError, "unknown model 'resnet9000'"),
    ({"recipe": "zip-it"}, ConfigError, "unknown recipe 'zip-it'; valid recipes are"),
    ({"recipe": "fp16"}, ConfigError, "recipe='fp16' compresses nothing"),
    ({"student_epochs": 0}, ConfigError, r"student_epochs=0 is out of range"),
    ({"student_lr": 0.0}, ConfigError, "student_lr=0.0 must be > 0"),
    ({"precision": "int8"}, ConfigError, "precision='int8' is not valid"),
    ({"student_options": "wide"}, ConfigError, "student_options='wide' must be dict"),
])
def test_config_rejects_bad_inputs_naming_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        DistillationConfig(**changes)


def test_unknown_parameter_is_an_error_in_the_notebook_and_before_papermill():
    with pytest.raises(ConfigError, match=r"unknown DistillationConfig key\(s\) \['temperture'\]"):
        DistillationConfig.from_namespace({"model": "resnet", "temperture": 3.0})
    with pytest.raises(ConfigError, match=r"03_distillation.ipynb has no parameter\(s\) \['temperture'\]"):
        check_parameters(notebooks_dir() / "03_distillation.ipynb", {"temperture": 3.0})


@pytest.fixture(scope="module")
def smoke_stage(tmp_path_factory):
    from playbook.stages.baseline import BaselineConfig, run_baseline

    root = tmp_path_factory.mktemp("distillation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run_baseline(BaselineConfig(**SMALL_TEACHER, reports_dir=str(root / "reports"), smoke=True))
        cfg = DistillationConfig(**FAST, reports_dir=str(root / "reports"), smoke=True)
        yield cfg, run_distillation(cfg), root


def test_stage_writes_a_complete_record_with_measured_student_packages(smoke_stage):
    cfg, record, root = smoke_stage
    raw = json.loads((cfg.model_dir() / "distillation.json").read_text())
    assert raw["stage"] == "distillation" and read_stage_record(cfg.model_dir(), "distillation").variants
    names = [v["name"] for v in raw["variants"]]
    assert names == ["student-fp16", "student-int8-weights"]  # no quantization.json: int8 weights
    assert raw["shipped"]["choice"]["recipe"] == "int8-weights" and "no quantization.json" in \
        raw["shipped"]["choice"]["why"]
    plain, packed = raw["variants"]
    for v in (plain, packed):
        assert v["stage"] == "distillation" and v["reference"] == "baseline-fp32" and v["vs_reference"] is not None
        assert v["student"] == "resnet" and v["student_options"] == {"width": 4} and v["seed"] == 0
        assert v["temperature"] == 4.0 and v["alpha"] == 0.5 and v["beta"] == 0.0
        assert v["student_parameters"] < v["teacher_parameters"] and v["n_test"] == raw["dataset"]["test"]
        assert (cfg.model_dir() / v["package"]).exists()
    ops = packed["op_histogram"]
    assert packed["recipe"]["name"] == "int8-weights"
    assert ops.get("constexpr_affine_dequantize", 0) + ops.get("constexpr_blockwise_shift_scale", 0) > 0
    assert packed["size_bytes"] < plain["size_bytes"] < raw["baseline"]["fp32_size_bytes"]
    assert raw["shipped"]["size_ratio_vs_teacher_fp32"] == pytest.approx(raw["baseline"]["fp32_size_bytes"] /
                                                                          packed["size_bytes"])
    # the shipped student's weights are kept: they reload into the architecture and give the recorded top-1
    student = build_model(ModelConfig("resnet", {"width": 4}), _digits_of(cfg))
    load_checkpoint(student, cfg.model_dir() / plain["student_checkpoint"])
    assert evaluate(student, _digits_of(cfg), _digits_of(cfg).test).top1 == pytest.approx(plain["pytorch_test_top1"])
    # the sweeps and the seed comparison
    assert [r["temperature"] for r in raw["sweeps"]["temperature"]] == [1.0, 4.0]
    assert [r["alpha"] for r in raw["sweeps"]["alpha"]] == [0.5, 0.9]
    assert raw["sweeps"]["summary"]["split"] == "val"
    assert [r["seed"] for r in raw["seeds"]] == [0, 1]
    stats = raw["seed_statistics"]
    assert stats["n"] == 2 and stats["gain_mean"] == pytest.approx(np.mean([r["gain"] for r in raw["seeds"]]))
    assert all(0.0 <= r["mcnemar_p"] <= 1.0 for r in raw["seeds"])
    assert raw["teacher_logits"]["images"] == raw["dataset"]["train"]
    assert raw["teacher_logits"]["path"].startswith(str(root / "cache"))
    assert set(raw["lineage"]) == {"baseline.json", "baseline/fp32.mlpackage"}
    assert "--smoke" in raw["reproduce"] and "--stages 03" in raw["reproduce"]
    assert raw["run"]["params"]["student_options"] == {"width": 4}


def _quantization_record(root, smoke, variants, finetune=None):
    def v(name, size, within, recipe=None, allocation=None):
        return VariantRecord(name=name, stage="quantization", size_bytes=size, top1=90.0,
                             extra={"within_budget": within, "recipe": {"name": recipe or name,
                                                                        "allocation": allocation}})

    record = StageRecord(stage="quantization", model="resnet", config={"smoke": smoke, "finetune_steps": 7},
                         environment={}, run={}, reproduce="", variants=[v(*x) for x in variants],
                         details={"accuracy_budget": 1.0, **({"finetune": finetune} if finetune else {})})
    write_stage_record(root, record)


def test_recipe_comes_from_the_quantization_record_when_there_is_a_usable_one(smoke_stage):
    cfg, _, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg)
    _quantization_record(cfg.model_dir(), True, [("int8-weights", 300, True), ("palettize-4bit", 200, True),
                                                 ("palettize-2bit", 100, False),
                                                 ("palettize-2bit-keep1", 150, True, "palettize-2bit")])
    choice = run.choose_recipe()
    assert choice["recipe"] == "palettize-4bit" and choice["source"] == "quantization.json"
    assert choice["finetune"]["steps"] == 7 and "quantization.json" in run.lineage
    # the fine-tune stage 02 ran, with its derived learning rate; where the rate came from is not a fine-tune setting
    ran = {"steps": 9, "lr": 0.002, "batch_size": 64, "seed": 0, "checks": 8, "patience": 3, "check_images": 500,
           "lr_source": "0.2 x the 0.01 that stage 01 fine-tuned the pretrained network at"}
    _quantization_record(cfg.model_dir(), True, [("int8-weights", 300, True)], finetune=ran)
    finetune = run.choose_recipe()["finetune"]
    assert "lr_source" not in finetune and FinetuneConfig.from_dict(finetune).steps == 9
    # issue 25: a mixed-bit recipe within the budget wins over a smaller uniform one (its palettes are refitted to
    # the student's size budget); outside the budget it does not count
    _quantization_record(cfg.model_dir(), True, [("palettize-4bit", 200, True),
                                                 ("palettize-mixed", 180, True, None, "sensitivity"),
                                                 ("palettize-mixed-tight", 170, False, None, "sensitivity"),
                                                 ("torch-palettize-2bit-dkm", 100, True)])
    choice = run.choose_recipe()
    assert choice["recipe"] == "palettize-mixed" and "preferred to its smallest package (torch-palettize-2bit-dkm, " \
        "100 bytes)" in choice["why"]
    _quantization_record(cfg.model_dir(), True, [("palettize-4bit", 200, True),
                                                 ("palettize-mixed", 180, False, None, "sensitivity")])
    assert run.choose_recipe()["recipe"] == "palettize-4bit"
    _quantization_record(cfg.model_dir(), False, [("palettize-4bit", 200, True)])
    assert run.choose_recipe()["recipe"] == "int8-weights"  # made with another smoke setting: not used
    _quantization_record(cfg.model_dir(), True, [("palettize-2bit", 100, False)])
    assert run.choose_recipe()["recipe"] == "int8-weights"  # nothing met the budget
    (cfg.model_dir() / "quantization.json").unlink()
    run.cfg = cfg.replace(recipe="prune-50")  # an explicit recipe wins over any record
    assert run.choose_recipe() == {"recipe": "prune-50", "why": "set by the `recipe` parameter", "source": None}


def test_a_user_teacher_checkpoint_is_used_and_flagged_when_it_is_not_the_baselines(smoke_stage, tmp_path):
    cfg, record, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        same = DistillationRun(cfg.replace(checkpoint=record["teacher"]["checkpoint"]))
        assert not [w for w in same.warnings if "not the checkpoint 01_baseline exported" in w]
        assert same.teacher_sha256 == record["teacher"]["checkpoint_sha256"]
        other = copy.deepcopy(same.teacher)
        with torch.no_grad():
            other.fc.bias.add_(1.0)
        torch.save(other.state_dict(), tmp_path / "mine.pt")
        mine = DistillationRun(cfg.replace(checkpoint=str(tmp_path / "mine.pt")))
    assert mine.teacher_sha256 != same.teacher_sha256
    assert torch.equal(mine.teacher.fc.bias, other.fc.bias) and not torch.equal(mine.teacher.fc.bias,
                                                                               same.teacher.fc.bias)
    assert any("not the checkpoint 01_baseline exported" in w for w in mine.warnings)


def test_students_of_a_seed_start_from_the_same_weights(smoke_stage):
    cfg, _, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg)
    a, b, c = run.build_student(1), run.build_student(1), run.build_student(2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert stale_inputs(cfg.model_dir(), read_stage_record(cfg.model_dir(), "distillation")) == []


def _example(digits):
    return digits.to_tensor(digits.calib.images[:2])


def test_torch_side_and_ios18_recipes_compress_the_student(smoke_stage):
    """Recipes from 02 may be PyTorch-side (compressed, then converted) or need an iOS18 program (re-exported)."""
    from playbook.compress import get_recipe
    from playbook.coreml import package_info

    cfg, _, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg)
    student = run.build_student(0).eval()
    base = export_model(student, run.dataset, run.export_cfg.replace(precision="fp16"), run.out_dir, "probe-base").path
    made = run.compress_student(student, base, "torch-ptq-int8", {}, "probe-ptq")
    ops = package_info(made.path).op_histogram
    assert made.details["algorithm"] == "ptq" and made.target == "iOS17"
    assert ops.get("constexpr_blockwise_shift_scale", 0) + ops.get("constexpr_affine_dequantize", 0) > 0
    made = run.compress_student(student, base, "int4-block", {}, "probe-int4")
    assert (run.out_dir / "_base" / "fp16-iOS18.mlpackage").exists()
    assert package_info(made.path).specification_version >= 9 and "constexpr_blockwise_shift_scale" in \
        package_info(made.path).op_histogram


def test_the_teacher_runs_only_on_the_training_images_the_students_use(smoke_stage):
    """Issue 25: with train_images set, the teacher's logits cover the larger of the two training prefixes (seed
    comparison, sweeps), not the whole split (efficientnet-lite0 spent 394 s on 54,000 images for 5,000); a
    compression fine-tune on the teacher's logits then trains on that prefix, so every index has a logit row."""
    assert DistillationConfig(train_images=5000, ship_train_images=4000, sweep_train_images=2000).logit_images() == 5000
    assert DistillationConfig(train_images=1000, ship_train_images=500, sweep_train_images=2000).logit_images() == 2000
    assert DistillationConfig(train_images=1000, ship_train_images=3000).logit_images() == 10000  # the sweeps'
    assert DistillationConfig(train_images=0, ship_train_images=500).logit_images() == 0  # every image
    assert DistillationConfig().logit_images() == 0  # the default: the shipped student uses every image
    cfg, _, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg.replace(train_images=120, ship_train_images=100, sweep_train_images=80))
        run.cache_teacher_logits(progress=False)
        assert run.logits.logits.shape[0] == 120 < len(run.dataset.train)
        student = run.build_student(0).eval()
        base = export_model(student, run.dataset, run.export_cfg.replace(precision="fp16"), run.out_dir,
                            "probe-prefix").path
        made = run.compress_student(student, base, "torch-prune-75-ft", {}, "probe-prefix-ft")
    assert made.finetune_steps > 0 and made.path.exists()


def test_the_shipped_student_trains_on_its_own_images_when_the_seed_comparison_uses_fewer(smoke_stage):
    """Issue 25: the seed comparison may run on a prefix of the training split (half of it by default) while the
    student that ships is distilled with the first seed on ``ship_train_images``; it is a run of its own, not one of
    the comparison's students, and the record, the package and the explanation say on how many images it trained."""
    from playbook.views.distillation import explain_shipped

    cfg, _, root = smoke_stage
    shutil.copytree(root / "reports" / cfg.model / "baseline", root / "ship-own" / cfg.model / "baseline")
    shutil.copy(cfg.model_dir() / "baseline.json", root / "ship-own" / cfg.model / "baseline.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg.replace(train_images=150, ship_train_images=0, seeds=[0], recipe="int8-weights",
                                          reports_dir=str(root / "ship-own")))
        run.cache_teacher_logits(progress=False)
        run.compare_seeds()
        plain, packed = run.ship()
        record = run.finish()
    compared = run.students[0]["distilled"].model
    shipped = build_model(run.student_cfg, run.dataset)
    load_checkpoint(shipped, run.model_dir / plain.extra["student_checkpoint"])
    assert plain.extra["train_images"] == len(run.dataset.train) > 150 == record.get("training")["train_images"]
    assert not all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), compared.state_dict().values()))
    assert evaluate(shipped, run.dataset, run.dataset.test).top1 == pytest.approx(plain.extra["pytorch_test_top1"])
    assert f"trained on {len(run.dataset.train):,} images" in explain_shipped(record)
    assert "trained on" not in explain_shipped(read_stage_record(cfg.model_dir(), "distillation"))  # same images


def _lut_bits(package):
    """The palette size of every palettized weight of a saved program, read from its look-up tables."""
    from playbook.mlprogram import ReferenceProgram

    prog = ReferenceProgram.load(package)
    bits = []
    for node in prog.nodes:
        if node.op_type in ("constexpr_lut_to_dense", "constexpr_lut_to_sparse"):
            lut = np.asarray(prog.const_input(node, "lut"))
            entries = lut.shape[-2] if lut.ndim >= 2 else lut.shape[-1]  # iOS18: (..., palette, vector); iOS16: (palette,)
            bits.append(int(np.log2(entries)))
    return bits


def test_the_student_ships_with_a_mixed_bit_recipe_and_with_a_joint_recipe(smoke_stage):
    """Issue 22: stage 03 compresses through the same entry point as stage 02, so a per-layer mixed-bit recipe writes
    the palette sizes it chose (not one uniform palette) and a joint PyTorch recipe keeps its Core ML palette step;
    both read back from the shipped program, not from the record."""
    from playbook.coreml import package_info
    from playbook.stages.common import SMOKE

    cfg, record, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        mixed = DistillationRun(cfg.replace(recipe="palettize-mixed", seeds=[0], sweep_temperatures=[4.0],
                                            sweep_alphas=[0.5]))
        mixed.compare_seeds()
        mixed.ship()
    v = mixed.variant("student-palettize-mixed")
    chosen = {row["name"]: row["bits"] for row in mixed.allocations["palettize-mixed"]["allocation"]}
    program_bits = _lut_bits(mixed.model_dir / v.package)
    assert program_bits and set(program_bits) <= set(SMOKE.mixed_bit_choices)  # never the uniform 8-bit step
    assert sorted(program_bits) == sorted(chosen.values())
    assert v.get("bits_per_weight") == pytest.approx(mixed.allocations["palettize-mixed"]["bits_per_weight"])
    # fitted to the size budget, and the variant says so instead of the recipe's accuracy-budget description
    fitted = mixed.allocations["palettize-mixed"]
    assert fitted["max_bytes"] == int(mixed.fp32_bytes / cfg.min_size_ratio)
    assert "per-layer palettes fitted to" in v.description and "accuracy budget" not in v.description
    sentence = mixed.shipped["fitted"]
    assert sentence.startswith("palettize-mixed fitted to") and f"{v.size_bytes:,} bytes" in sentence
    student = mixed.students[0]["distilled"].model
    base = mixed.model_dir / mixed.variant("student-fp16").package
    joint = mixed.compress_student(student, base, "torch-prune-75-ft+palettize-4bit", {}, "probe-joint")
    ops = package_info(joint.path).op_histogram
    assert ops.get("constexpr_lut_to_sparse", 0) >= 1 and ops.get("constexpr_sparse_to_dense", 0) >= 1
    assert set(_lut_bits(joint.path)) == {4} and joint.finetune_steps == SMOKE.steps(200)


def _digits_of(cfg):
    from playbook.data import DatasetConfig, load_dataset
    from playbook.records import read_stage_record

    return load_dataset(DatasetConfig.from_dict(read_stage_record(cfg.model_dir(), "baseline")["dataset_config"]))


def test_explanation_reports_the_gap_to_the_teacher_and_survives_a_single_seed(smoke_stage):
    cfg, _, root = smoke_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_CACHE_DIR", str(root / "cache"))
        run = DistillationRun(cfg.replace(seeds=[3]))
    run.seed_results = [{"seed": 3, "scratch_top1": 40.0, "distilled_top1": 45.0, "gain": 5.0, "ci_low": 1.0,
                         "ci_high": 9.0, "mcnemar_p": 0.01}]
    run.seed_stats = {**paired_seed_test([40.0], [45.0]), "teacher_top1": 60.0}
    text = views.explain_seeds(run.snapshot())
    assert "one seed: no test over seeds" in text and "gain +5.00 points" in text
    assert "20.00 points above the scratch student: distillation recovered 25% of that gap" in text


def test_the_student_is_the_widest_whose_predicted_package_fits_the_size_budget():
    from playbook.distill import bytes_per_element, choose_student

    rate = bytes_per_element(fp16_bytes=360_000, eligible_elements=170_000, compressed_bytes=100_000)
    assert rate == pytest.approx(2 - 260_000 / 170_000)
    widths = [{"width": w, "parameters": 300 * w * w, "fp16_bytes": 18_000 + 600 * w * w, "eligible": 290 * w * w}
              for w in (8, 12, 16)]
    plan = choose_student(widths, rate, max_bytes=45_000)
    predicted = {c["width"]: c["predicted_bytes"] for c in plan["candidates"]}
    assert predicted[8] < predicted[12] <= 45_000 < predicted[16]
    assert plan["fits"] and plan["chosen"]["width"] == 12  # the widest that fits, not the smallest
    none_fit = choose_student(widths, rate, max_bytes=1_000)
    assert not none_fit["fits"] and none_fit["chosen"]["width"] == 8


def test_the_plan_is_recorded_with_measured_candidates_and_checked_against_the_shipped_package(smoke_stage):
    cfg, record, root = smoke_stage
    plan = record["student"]["plan"]
    assert plan["chosen"] and not plan["fits"] and "no width of [4, 6]" in plan["why"]
    sizes = {c["width"]: c for c in plan["candidates"]}
    assert sizes[4]["fp16_bytes"] < sizes[6]["fp16_bytes"] and sizes[4]["eligible"] < sizes[6]["eligible"]
    assert record["student"]["architecture"]["knobs"] == {"width": 4}
    assert sizes[4]["parameters"] == record["student"]["parameters"]  # the student trained is the one planned
    plain = record.variant("student-fp16")
    # an untrained student's package has the trained one's size, but for the metadata the shipped package carries
    assert abs(plain.size_bytes - sizes[4]["fp16_bytes"]) < 0.01 * plain.size_bytes
    shipped = record["shipped"]
    assert shipped["predicted_bytes"] == pytest.approx(sizes[4]["predicted_bytes"])
    assert abs(shipped["predicted_bytes"] - record.variant(shipped["shipped"]).size_bytes) < 0.35 * shipped["predicted_bytes"]


def test_a_compression_fine_tune_learns_from_the_teachers_logits(digits):
    """``ModelSource.loss_fn`` reaches ``train.fit``: the fine-tune of a PyTorch-side recipe calls the distillation
    loss with the batch's training-image indices, and its loss differs from cross-entropy's."""
    from playbook.compress.torch_side import compress_torch
    from playbook.distill import logit_loss

    teacher = _tiny(digits, seed=3, width=8)
    with torch.no_grad():
        table = teacher(digits.to_tensor(digits.train.images)).numpy()
    seen = []
    loss = logit_loss(table, temperature=4.0, alpha=0.0)

    def spy(logits, labels, index):
        seen.append(index.clone())
        return loss(logits, labels, index)

    student = _tiny(digits, seed=0, width=4)
    with_teacher = compress_torch("torch-w8a8-qat", student, digits, finetune_steps=3, batch_size=16, loss_fn=spy)
    plain = compress_torch("torch-w8a8-qat", student, digits, finetune_steps=3, batch_size=16)
    assert len(seen) == 3 and all(len(i) == 16 and int(i.max()) < len(digits.train) for i in seen)
    assert with_teacher.losses != plain.losses
