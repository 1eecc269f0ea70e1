"""Core AI beside Core ML (issue 24): a tiny model converted to ``.aimodel`` and run by Apple's Core AI runtime on
Linux against PyTorch, a coreai-opt compression that fails recorded as an error object, and the oracle: Apple's
runtime on the ``.aimodel`` vs the playbook's reference executor on the same weights as ``.mlpackage``.

Skipped, with the reason, only where coreai-core / coreai-torch / coreai-opt do not import (they are the
``[coreai]`` extra; the repository's set-up installs them).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from playbook.compress import coreai_runtime as cr
from playbook.compress import coreai_side as cs
from playbook.compress.recipes import CompressionError
from playbook.config import ConfigError

AVAILABLE, WHY = cs.coreai_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"Core AI packages not importable: {WHY}")


def _tiny(in_channels: int = 1, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, classes))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


class _DataDependent(nn.Module):
    """A branch on the data: eager PyTorch runs it, ``torch.export`` (hence Core AI export) cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y * 2 if y.sum() > 0 else y


@pytest.fixture(scope="module")
def data(digits):
    images = digits.test.images[:48]
    return digits, _tiny(digits.in_channels, digits.num_classes), digits.to_tensor(images)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    _, model, x = data
    out = tmp_path_factory.mktemp("coreai")
    return {p: cs.export_aimodel(model, x, out, f"tiny-{p}", p, metadata={"playbook.variant": f"tiny-{p}"})
            for p in cs.PRECISIONS}


@pytest.fixture(scope="module")
def int8(data, tmp_path_factory):
    _, model, x = data
    return cs.compress_coreai(model, "int8", x, tmp_path_factory.mktemp("coreai-int8"))


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_aimodel_prediction_on_linux_matches_torch(data, exported, precision, tolerance):
    _, model, x = data
    package = exported[precision]
    assert package.path.endswith(f"tiny-{precision}.aimodel") and package.size_bytes > 0 and package.min_os == "27.0"
    with torch.no_grad():
        reference = model(x).numpy()
    messages: list[str] = []
    scores = cr.predict_aimodel(package.path, x.numpy(), batch_size=20, messages=messages)  # 20 + 20 + 8 images
    assert scores.shape == reference.shape and scores.dtype == np.float32
    rel = np.abs(scores - reference).max() / np.abs(reference).max()
    assert rel <= tolerance, f"{precision}: max relative error {rel:.2e} > {tolerance}"
    assert (scores.argmax(1) == reference.argmax(1)).mean() >= 0.95
    assert any("ODIE" in m for m in messages)  # the runtime's load message is captured, not printed
    meta = cs.read_aimodel_metadata(package.path)
    assert meta["playbook.precision"] == precision and meta["playbook.variant"] == f"tiny-{precision}"
    assert exported["fp16"].size_bytes < exported["fp32"].size_bytes


def test_host_latency_is_labelled_a_host_interpreter_figure(data, exported):
    latency = cr.host_latency(exported["fp32"].path, data[2].numpy(), warmup=1, repeats=3)
    assert 0 < latency.min_ms <= latency.median_ms <= latency.p90_ms
    assert not latency.rankable and "host interpreter" in latency.label


def test_bad_inputs_are_clear_errors(data, exported, tmp_path):
    _, model, x = data
    with pytest.raises(ConfigError, match="technique 'int3'"):
        cs.compress_coreai(model, "int3", x, tmp_path)
    with pytest.raises(ConfigError, match="example_input"):
        cs.export_aimodel(model, x[0], tmp_path, "m")
    with pytest.raises(ConfigError, match="plain file name"):
        cs.export_aimodel(model, x, tmp_path, "../escape")
    with pytest.raises(ConfigError, match="inputs must be"):
        cr.predict_aimodel(exported["fp32"].path, x.numpy().astype(np.uint8))
    with pytest.raises(cs.CoreAIError, match="not a saved .aimodel"):
        cr.predict_aimodel(tmp_path / "missing.aimodel", x.numpy())


def test_a_failing_coreai_recipe_is_recorded_not_fatal(data, tmp_path):
    _, _, x = data
    done, failed = cs.compress_coreai_all(_DataDependent().eval(), ["int4"], x[:, :1], tmp_path, coreml=False)
    assert done == {} and set(failed) == {"int4"}
    error = failed["int4"]
    assert isinstance(error, CompressionError)  # recorded like a coremltools recipe's failure
    record = error.to_dict()
    assert record["recipe"] == "coreai-int4" and record["side"] == "coreai" and record["technique"] == "int4"
    assert record["step"] == "Core AI export" and record["coremltools_message"] and record["hint"]
    assert not (tmp_path / "coreai-int4.aimodel").exists()


def test_a_core_ml_counterpart_that_fails_to_convert_keeps_the_aimodel(data, tmp_path, monkeypatch):
    """efficientnet-lite0: coremltools cannot convert coreai-opt's Core ML export (a TypeError in ct.convert), which
    only the oracle needs; the compressed .aimodel is kept, with the reason, and predicts."""
    _, model, x = data

    def refuse(*args, **kwargs):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    monkeypatch.setattr(cs, "_export_coreml", refuse)
    made = cs.compress_coreai(model, "int8", x, tmp_path, coreml=True)
    assert made.mlpackage is None and made.coreml_error["step"].startswith("ct.convert")
    assert "0-dimensional" in made.coreml_error["coremltools_message"] and "kept" in made.coreml_error["hint"]
    assert made.to_dict()["coreml_error"] == made.coreml_error
    assert cr.predict_aimodel(made.aimodel.path, x.numpy()).shape == (len(x), 10)


def test_oracle_apple_runtime_agrees_with_the_reference_executor_on_the_same_weights(data, exported, int8):
    from playbook.compress.coreai_oracle import oracle_agreement, oracle_on_split
    from playbook.coreml import package_info

    digits, model, x = data
    ops = package_info(int8.mlpackage).op_histogram
    assert ops.get("constexpr_blockwise_shift_scale", 0) >= 3  # the int8 weights, as Core ML ops
    assert int8.aimodel.size_bytes < exported["fp32"].size_bytes and int8.mlpackage_size_bytes > 0
    result = oracle_agreement(int8, x.numpy(), batch_size=16)
    assert result.n == len(x) and result.passed, result.to_dict()
    assert result.fidelity.top1_agreement == 100.0 and result.fidelity.max_rel_error < 1e-5
    assert result.coreai.runtime == "coreai" and result.executor.runtime == "reference"
    split = oracle_on_split(int8, digits, digits.test.head(64), batch_size=32)
    assert split.n == 64 and split.passed
    with torch.no_grad():  # the compression did change the weights (int8 vs float logits differ slightly)
        assert not np.array_equal(cr.predict_aimodel(int8.aimodel.path, x.numpy()), model(x).numpy())


def test_predictions_in_worker_processes_equal_the_serial_ones_exactly(data, exported, monkeypatch, tmp_path):
    """Two spawned worker processes, each loading the .aimodel and predicting a contiguous chunk, give the serial
    path's scores bit for bit, over several normalisation chunks (``LOAD_IMAGES`` made small) and on a raw array."""
    digits, _, x = data
    split = digits.test.head(130)
    monkeypatch.setattr(cr, "LOAD_IMAGES", 25)  # 130 images: 3 chunks of up to 2 x 25, each shared by 2 workers
    plan = cr.ProcessPlan(2, 2, 2, "two workers, for the test")
    with cr.CoreAIPredictor(plan) as predictor:
        for precision in ("fp16", "fp32"):
            path = exported[precision].path
            serial, _ = cr.predict_aimodel_split(path, digits, split, batch_size=16)
            parallel, provenance = cr.predict_aimodel_split(path, digits, split, batch_size=16, predictor=predictor)
            assert parallel.shape == serial.shape == (130, digits.num_classes) and parallel.dtype == serial.dtype
            assert np.array_equal(parallel, serial), precision
            assert provenance.runtime == "coreai"
            timed = predictor.predict(path, x.numpy(), batch_size=16)
            assert timed.processes == 2 and np.array_equal(timed.scores, cr.predict_aimodel(path, x.numpy(), 16))
            assert timed.wall_s >= timed.predict_s > 0 and timed.seconds_per_image() > 0
        assert predictor.processes == 2 and not predictor.notes and predictor.startup_s > 0
        with pytest.raises(cs.CoreAIError, match="not a saved .aimodel"):  # a worker's error reaches the caller
            predictor.predict(tmp_path / "missing.aimodel", np.zeros((4, 1, 8, 8), np.float32))
        assert predictor.processes == 2 and predictor.pool is not None  # and the pool goes on
    assert predictor.pool is None  # the context closed the pool
