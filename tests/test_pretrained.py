"""A real pretrained mobile network through the chain (issue 18): transfer-learning defaults, the model's minimum
input size, inference-only graphs, and a stated measuring cost."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook.coreml import TRAINING_ONLY_OPS, ExportConfig, ExportError, export_model  # noqa: E402
from playbook.data import load_dataset  # noqa: E402
from playbook.stages.baseline import FINETUNE_DEFAULTS, BaselineConfig  # noqa: E402


def test_pretrained_models_get_a_transfer_learning_budget_and_your_values_win():
    lite = BaselineConfig(model="efficientnet-lite0", dataset="digits")
    assert lite.training_mode() == "finetune"  # every layer: frozen ImageNet features fit small grey images badly
    cfg = lite.train_config()
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.head, cfg.schedule) == (
        FINETUNE_DEFAULTS["finetune"]["steps"], FINETUNE_DEFAULTS["finetune"]["lr"], 64, "", "cosine")
    assert lite.replace(lr=0.003).train_config().lr == 0.003  # a value you set yourself wins
    mine = lite.replace(epochs=2).train_config()
    assert mine.epochs == 2 and mine.steps == 0
    head = lite.replace(training="head").train_config()
    assert head.head == "_fc" and head.steps == FINETUNE_DEFAULTS["head"]["steps"] and head.lr == 0.05
    scratch = BaselineConfig(dataset="digits").train_config()
    assert BaselineConfig().training_mode() == "scratch" and scratch.epochs == 3 and scratch.min_steps == 1200
    assert lite.replace(smoke=True).train_config().steps == 20


def test_images_smaller_than_the_models_minimum_are_upscaled_to_it():
    cfg = BaselineConfig(model="efficientnet-lite0", dataset="digits", smoke=True)
    data = load_dataset(cfg.dataset_config())
    assert data.input_shape == (1, 1, 56, 56) and data.summary()["native_image_size"] == 8
    assert load_dataset(BaselineConfig(dataset="digits", smoke=True).dataset_config()).input_shape == (1, 1, 8, 8)
    assert len(load_dataset(BaselineConfig(dataset="digits", max_test_images=50).dataset_config()).test) == 50


class DropConnectNet(nn.Module):
    """Dropout plus a drop-connect branch (random, training only), like EfficientNet's blocks."""

    def __init__(self, force_training: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 10)
        self.force_training = force_training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.force_training:  # what a wrapper that traces in training mode does
            self.train()
        y = self.conv(x)
        if self.training:
            keep = (torch.rand(y.shape[0], 1, 1, 1) > 0.2).float()
            y = y * keep / 0.8
        y = torch.relu(y).mean(dim=(2, 3))
        return self.fc(self.drop(y))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the forced training-mode trace is random on purpose
def test_an_exported_program_holds_no_training_only_op(tmp_path, digits):
    torch.manual_seed(0)
    net = DropConnectNet().train()  # left in training mode by its user: the export traces eval anyway
    result = export_model(net, digits, ExportConfig(precision="fp32"), tmp_path, "dropconnect")
    assert not set(result.package.op_histogram) & set(TRAINING_ONLY_OPS)
    with pytest.raises(ExportError, match=r"broken \(playbook.recipe=torch-w8a8-qat\): the converted program contains "
                                          r"training-only op\(s\) random_uniform"):
        export_model(DropConnectNet(force_training=True), digits, ExportConfig(precision="fp32"), tmp_path, "broken",
                     metadata={"playbook.recipe": "torch-w8a8-qat"})
    assert not (tmp_path / "broken.mlpackage").exists()


def test_efficientnet_lite0_runs_the_baseline_stage_in_smoke_mode(tmp_path, monkeypatch):
    from playbook.stages.baseline import run_baseline

    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    # a 64-image test split (smoke mode's is 500): measuring two 56 px packages on it is most of this test's cost,
    # and every check below holds for any test split
    record = run_baseline(BaselineConfig(model="efficientnet-lite0", dataset="digits", smoke=True, threads=2,
                                         max_test_images=64, reports_dir=str(tmp_path / "reports")))
    assert record["training_mode"] == "finetune" and record["train_config"]["head"] == ""
    assert record["dataset"]["input_shape"] == [1, 1, 56, 56] and record["dataset"]["native_image_size"] == 8
    assert [v.name for v in record.variants] == ["baseline-fp32", "baseline-fp16"]
    cost = record["cost_estimate"]
    assert record["dataset"]["test"] == 64
    assert cost["variants"] == 2 and cost["test_images"] == len_test(record) and cost["seconds_per_image"] > 0
    assert all(not set(v.op_histogram) & set(TRAINING_ONLY_OPS) for v in record.variants)


def len_test(record) -> int:
    return record["dataset"]["test"]
