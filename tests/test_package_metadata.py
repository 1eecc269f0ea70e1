"""Every saved package says what it is: stage, variant, recipe, precision, deployment target and the hash of the
trained model it came from, read back from the package's spec (what Xcode shows), never its parent's facts."""
from __future__ import annotations

import coremltools as ct
import pytest
import torch

from playbook.compress.coreml_side import compress_package
from playbook.coreml import VARIANT_METADATA, ExportConfig, export_model, model_sha256, read_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 6 * 6, 10)).eval()
    out = tmp_path_factory.mktemp("packages")
    result = export_model(net, digits, ExportConfig(precision="fp16"), out, "fp16",
                          metadata={"playbook.stage": "baseline", "playbook.variant": "baseline-fp16"})
    return net, out, result.path


def test_an_export_names_its_stage_variant_precision_target_and_source(exported):
    net, _, path = exported
    meta = read_metadata(path)
    assert all(k in meta for k in VARIANT_METADATA)
    assert meta["playbook.stage"] == "baseline" and meta["playbook.variant"] == "baseline-fp16"
    assert meta["playbook.precision"] == "fp16" and meta["playbook.deployment_target"] == "iOS17"
    assert meta["playbook.source_model_sha256"] == model_sha256(net)
    description = ct.utils.load_spec(str(path)).description.metadata.shortDescription
    assert "baseline-fp16" in description and "FP16 compute" in description and "iOS17+" in description


@pytest.mark.parametrize("recipe, target", [("int8-weights", "iOS17"), ("palettize-4bit", "iOS17")])
def test_a_compressed_package_replaces_its_parent_s_facts(exported, recipe, target):
    net, out, parent = exported
    made = compress_package(recipe, parent, out, f"{recipe}-v", metadata={"playbook.stage": "quantization"})
    meta = read_metadata(made.path)
    assert meta["playbook.stage"] == "quantization"  # not the parent's "baseline"
    assert meta["playbook.variant"] == f"{recipe}-v" and meta["playbook.recipe"] == recipe
    assert meta["playbook.weights"] and meta["playbook.precision"] == "fp16"
    assert meta["playbook.deployment_target"] == target
    assert meta["playbook.source_model_sha256"] == model_sha256(net)  # the trained model it came from
    assert f"{recipe}-v" in ct.utils.load_spec(str(made.path)).description.metadata.shortDescription


def test_without_a_stage_the_parent_s_stage_is_dropped(exported):
    _, out, parent = exported
    meta = read_metadata(compress_package("int8-weights", parent, out, "no-stage").path)
    assert "playbook.stage" not in meta and meta["playbook.variant"] == "no-stage"
