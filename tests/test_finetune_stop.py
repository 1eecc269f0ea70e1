"""Early stopping of the compression fine-tunes on validation agreement with the FP32 model (issue 23)."""
from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("coremltools")

from playbook.compress import compress_torch  # noqa: E402
from playbook.compress.torch_side import AgreementWatch, EarlyStop, agreement, prune_updates  # noqa: E402
from playbook.models import create_model  # noqa: E402
from playbook.train import TrainConfig, fit  # noqa: E402


@pytest.fixture(scope="module")
def trained(digits):
    """A small resnet trained for 60 steps: the FP32 model whose classes the checks compare against."""
    torch.manual_seed(0)
    model = create_model("resnet", 10, 1, width=8)
    fit(model, digits, TrainConfig(steps=60, lr=0.05, batch_size=32, validate=False), progress=False)
    return model.eval()


def test_agreement_pauses_the_observers_and_restores_every_modules_mode(digits, trained):
    from coremltools.optimize.torch import quantization as qnt

    images = digits.to_tensor(digits.val.images[:64])
    quantizer = qnt.LinearQuantizer(trained, qnt.LinearQuantizerConfig.from_dict(
        {"global_config": {"milestones": [0, 0, 100, 100]}}))
    prepared = quantizer.prepare(example_inputs=(images[:1],)).train()
    quantizer.step()  # milestone 0: the observers and fake quantization turn on (as at a fine-tune's first step)
    prepared(images)  # the observers have seen one batch
    ranges = {k: v.clone() for k, v in prepared.state_dict().items() if k.endswith(("min_val", "max_val"))}
    assert ranges
    modes = {n: m.training for n, m in prepared.named_modules()}
    flags = {n: int(m.observer_enabled[0]) for n, m in prepared.named_modules() if hasattr(m, "observer_enabled")}
    assert 1 in flags.values()
    reference = trained(images).argmax(1)

    share = agreement(prepared, images * 5, reference)  # images far outside the range seen: observers would move

    assert 0.0 <= share <= 1.0
    assert {n: m.training for n, m in prepared.named_modules()} == modes
    after = {k: v for k, v in prepared.state_dict().items() if k in ranges}
    assert all(torch.equal(ranges[k], after[k]) for k in ranges)
    assert {n: int(m.observer_enabled[0]) for n, m in prepared.named_modules() if hasattr(m, "observer_enabled")} == flags
    prepared(images * 5)  # the same forward pass without ``agreement`` does move them: the check above can fail
    assert not all(torch.equal(ranges[k], v) for k, v in prepared.state_dict().items() if k in ranges)


def test_the_watch_stops_after_patience_checks_without_progress_and_keeps_the_best_weights(digits, trained):
    model = create_model("resnet", 10, 1, width=8)
    model.load_state_dict(trained.state_dict())
    images = digits.to_tensor(digits.val.images)
    reference = trained(images).argmax(1)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    head = model.fc if hasattr(model, "fc") else list(model.modules())[-1]
    steps = []

    def ruin_after_two() -> None:  # the compressor's step: from step 3 on the head predicts the wrong classes
        steps.append(1)
        if len(steps) == 3:
            head.weight.data.mul_(-1)

    watch = AgreementWatch(model, EarlyStop(images, reference, every=2, patience=2), ruin_after_two)
    stops = [watch() for _ in range(6)]

    assert stops == [False, False, False, False, False, True]
    assert len(steps) == 6  # the compressor's own step ran every time
    record = watch.finish(planned=10)
    assert [s for s, _ in record["checks"]] == [2, 4, 6]
    assert record["checks"][0][1] == 1.0 and record["checks"][1][1] < 0.5
    assert record["best_step"] == 2 and record["restored_best"] and record["stopped_early"]
    assert record["steps_run"] == 6 and record["planned_steps"] == 10
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("recipe", ["torch-w8a8-qat", "torch-palettize-2bit-dkm", "torch-prune-75-ft",
                                    "torch-prune-50-sparsegpt"])
def test_each_fine_tuning_algorithm_ends_with_the_weights_of_its_best_check(digits, trained, recipe):
    steps, checks = 24, 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compress_torch(recipe, trained, digits, finetune_steps=steps, lr=0.05, batch_size=16,
                                checks=checks, patience=2, check_images=500)
    record = result.details["early_stop"]
    every = steps // checks
    first = prune_updates(steps)[-1] + 1 if recipe == "torch-prune-75-ft" else 0
    assert record["every"] == every and record["checks"]
    assert all(s % every == 0 and s >= first for s, _ in record["checks"])
    assert result.finetune_steps == record["steps_run"] == len(result.losses) <= steps
    assert record["stopped_early"] == (result.finetune_steps < steps)
    images = digits.to_tensor(digits.val.images[:500])
    # the compressed model (after coremltools' finalize) agrees with FP32 exactly as often as the best check did
    assert agreement(result.model, images, trained(images).argmax(1)) == pytest.approx(record["best_agreement"],
                                                                                 abs=1e-5)
    assert record["best_agreement"] == max(a for _, a in record["checks"])


def test_without_checks_every_step_runs_and_nothing_is_recorded(digits, trained):
    result = compress_torch("torch-w8a8-qat", trained, digits, finetune_steps=5, batch_size=16)
    assert result.finetune_steps == 5 and "early_stop" not in result.details
    longer = compress_torch("torch-int4-qat", trained, digits, finetune_steps=5, batch_size=16)
    assert longer.finetune_steps == 10  # its recipe's steps_factor: 2
    # int4 QAT runs every step even when the stage checks (its recipe's early_stop=False), with a patience of 1
    # that would end a checked fine-tune at its second check
    unchecked = compress_torch("torch-int4-qat", trained, digits, finetune_steps=5, batch_size=16, checks=5,
                               patience=1, check_images=64)
    assert unchecked.finetune_steps == 10 and "early_stop" not in unchecked.details
    assert "early_stop" not in unchecked.details["options"]  # not passed on to coremltools' quantizer
    checked = compress_torch("torch-w8a8-qat", trained, digits, finetune_steps=10, batch_size=16, checks=5,
                             patience=1, check_images=64)
    assert checked.details["early_stop"]["checks"]  # the same call checks a recipe that allows it


def test_the_stage_sizes_its_fine_tunes_as_a_share_of_an_epoch():
    from playbook.config import ConfigError
    from playbook.stages.quantization import QuantizationConfig

    cfg = QuantizationConfig(finetune_epochs=0.25, batch_size=64, finetune_steps=7)
    assert cfg.steps(54_000) == 211  # a quarter of 844 steps (efficientnet-lite0's training split)
    assert cfg.steps(1_000) == 4 and cfg.steps(0) == 7  # no training split known: finetune_steps
    assert QuantizationConfig(finetune_steps=7).steps(54_000) == 7  # finetune_epochs=0: finetune_steps
    assert QuantizationConfig(finetune_epochs=2.0, smoke=True).steps(54_000) == 20  # the smoke cap
    finetune = cfg.compress_config(54_000).finetune
    assert (finetune.steps, finetune.checks, finetune.patience) == (211, 8, 3)
    with pytest.raises(ConfigError, match="finetune_epochs"):
        QuantizationConfig(finetune_epochs=-1.0)


def test_the_fine_tune_learning_rate_derives_from_stage_01s_own_fine_tune():
    from playbook.config import ConfigError
    from playbook.compress.apply import FinetuneConfig
    from playbook.stages.quantization import FINETUNE_LR_SHARE, QuantizationConfig

    lite0 = {"training_mode": "finetune", "train_config": {"lr": 0.01, "schedule": "cosine"}}
    scratch = {"training_mode": "scratch", "train_config": {"lr": 0.1, "schedule": "onecycle"}}
    cfg = QuantizationConfig()
    lr, why = cfg.learning_rate(lite0)
    assert lr == pytest.approx(FINETUNE_LR_SHARE * 0.01) and "0.01" in why and "fine-tuned" in why
    assert cfg.compress_config(54_000, lite0).finetune.lr == pytest.approx(0.002)  # the rate lite0 was measured at
    assert cfg.learning_rate({"training_mode": "finetune", "train_config": {"lr": 0.05}})[0] == pytest.approx(0.01)
    for record, said in ((scratch, "from scratch"), ({"training_mode": "head"}, "classifier only"),
                         (None, "did not train")):  # no fine-tune schedule: the stage's default
        lr, why = cfg.learning_rate(record)
        assert lr == FinetuneConfig.lr and said in why, record
    assert QuantizationConfig(finetune_lr=0.003).learning_rate(lite0) == (0.003, "finetune_lr")  # set: it wins
    with pytest.raises(ConfigError, match="finetune_lr"):
        QuantizationConfig(finetune_lr=-0.1)


def test_the_report_says_where_a_fine_tune_stopped_in_both_languages():
    from types import SimpleNamespace

    from playbook.compress import RECIPES
    from playbook.report.facts import describe
    from playbook.report.i18n import Locale

    recipe = RECIPES["torch-w8a8-qat"]
    stop = {"stopped_early": True, "steps_run": 150, "planned_steps": 211, "images": 500, "patience": 3,
            "best_step": 78}
    row = SimpleNamespace(name=recipe.name, stage="quantization", description=recipe.description, target="coreml",
                          raw={"technique": recipe.technique, "recipe": recipe.to_dict(), "details": {"early_stop": stop}})
    en, ja = describe(row, Locale("en")), describe(row, Locale("ja"))
    assert en.startswith(recipe.description)
    assert "stopped after 150 of 211 steps" in en and "500 validation images" in en and "step 78" in en
    assert "211 ステップ中 150 ステップで終了" in ja and "検証画像 500 枚" in ja and "ステップ 78" in ja
    row.raw["details"]["early_stop"] = {**stop, "stopped_early": False}  # every step ran: nothing to say
    assert describe(row, Locale("en")) == recipe.description and "終了" not in describe(row, Locale("ja"))
