import json
import logging

import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

from playbook.config import ConfigError  # noqa: E402
from playbook.coreml import ExportConfig, export_model, package_info, predict_split, safe_package_path  # noqa: E402
from playbook.models import create_model  # noqa: E402


@pytest.fixture(scope="module")
def small_model():
    import torch

    torch.manual_seed(0)
    return create_model("mobilenetv2", 10, 1, width=8).eval()


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_export_declares_fp32_io_and_records_size(tmp_path, digits, small_model, precision):
    result = export_model(small_model, digits, ExportConfig(precision=precision), tmp_path, precision)
    assert result.path == tmp_path / f"{precision}.mlpackage"
    mlmodel = ct.models.MLModel(str(result.path), skip_model_load=True)
    spec = mlmodel.get_spec()
    fp32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert [f.type.multiArrayType.dataType for f in spec.description.input] == [fp32]
    assert [f.type.multiArrayType.dataType for f in spec.description.output] == [fp32]
    files = sum(f.stat().st_size for f in result.path.rglob("*") if f.is_file())
    assert result.package.size_bytes == files and 0 < result.package.zip_bytes
    assert result.package.op_histogram.get("conv", 0) >= 8
    # FP16 programs cast the FP32 input down and the output back up.
    assert ("cast" in result.package.op_histogram) == (precision == "fp16")
    assert mlmodel.author == "coreml-playbook" and json.loads(mlmodel.user_defined_metadata["playbook.classes"])[0] == "0"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # no temp folder left


def test_fp16_weights_make_the_package_about_half_the_size(tmp_path, digits):
    model = create_model("resnet", 10, 1, width=16).eval()
    sizes = {p: export_model(model, digits, ExportConfig(precision=p), tmp_path, p).package.size_bytes
             for p in ("fp32", "fp16")}
    assert 0.4 < sizes["fp16"] / sizes["fp32"] < 0.6


def test_every_repeated_constant_is_stored_once_and_the_outputs_do_not_change(tmp_path, digits, small_model,
                                                                              monkeypatch):
    """conversion_passes: coremltools' const_deduplication on constants of every size (its default skips those
    under 100 elements), so the convs share one ``strides``/``pad``/``dilations`` const; the package shrinks and
    the program computes the same thing."""
    import playbook.coreml as coreml

    def duplicates(package):
        spec = ct.utils.load_spec(str(package))
        block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
        values = [op.attributes["val"].SerializeToString() for op in block.operations if op.type == "const"
                  and op.attributes["val"].type.tensorType.dataType != ct.proto.MIL_pb2.DataType.STRING]
        return len(values) - len(set(values))  # numbers only: the pass leaves strings ("valid", "custom") alone

    with monkeypatch.context() as patch:
        default = coreml.conversion_passes
        patch.setattr(coreml, "conversion_passes", lambda: default(100))  # coremltools' own default
        plain = export_model(small_model, digits, ExportConfig(precision="fp16"), tmp_path, "plain")
    shared = export_model(small_model, digits, ExportConfig(precision="fp16"), tmp_path, "shared")
    assert duplicates(plain.path) > 10 and duplicates(shared.path) == 0
    assert shared.package.size_bytes < plain.package.size_bytes - 2000
    split = digits.test.head(32)
    scores = [predict_split(made.path, digits, split, runtime="reference")[0] for made in (shared, plain)]
    assert np.array_equal(scores[0], scores[1])


def test_image_input_and_classifier_outputs(tmp_path, digits, small_model):
    cfg = ExportConfig(input_kind="image", classifier=True, minimum_deployment_target="iOS16")
    info = export_model(small_model, digits, cfg, tmp_path, "clf").package
    assert info.inputs[0]["type"] == "imageType" and info.inputs[0]["color_space"] == "GRAYSCALE"
    assert {o["type"] for o in info.outputs} == {"stringType", "dictionaryType"}
    assert "classLabel" in {o["name"] for o in info.outputs}
    assert info.specification_version == 7  # iOS16


def test_export_never_writes_outside_the_given_folder(tmp_path, digits, small_model):
    for bad in ("../escape", "a/b", "..", ""):
        with pytest.raises(ConfigError, match="plain file name"):
            safe_package_path(tmp_path, bad)
    with pytest.raises(ConfigError, match="minimum_deployment_target='iOS9'"):
        ExportConfig(minimum_deployment_target="iOS9")


def test_package_info_reads_a_saved_package(tmp_path, digits, small_model):
    path = export_model(small_model, digits, ExportConfig(precision="fp32"), tmp_path, "m").path
    info = package_info(path)
    assert info.inputs[0]["shape"] == [1, 1, 8, 8] and info.outputs[0]["name"] == "logits"
    assert info.size_mb == pytest.approx(info.size_bytes / 1e6)
    assert np.isclose(info.size_bytes, sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))


def test_pretrained_efficientnet_lite0_exports_and_matches_pytorch(tmp_path):
    from playbook.data import DatasetConfig, load_dataset
    from playbook.mlprogram import ReferenceProgram

    data = load_dataset(DatasetConfig(name="digits", image_size=64, calib_size=8, limit_test=4))
    model = create_model("efficientnet-lite0", 10, 1, image_size=64).eval()
    result = export_model(model, data, ExportConfig(precision="fp32"), tmp_path, "lite0")
    import torch

    x = data.to_tensor(data.test.images)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ReferenceProgram.load(result.path).predict({"image": x.numpy()})["logits"]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_export_falls_back_to_torch_export_when_tracing_fails(tmp_path, digits, small_model, monkeypatch):
    import torch

    from playbook.mlprogram import ReferenceProgram

    def broken_trace(*args, **kwargs):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    result = export_model(small_model, digits, ExportConfig(precision="fp32"), tmp_path, "fallback")
    assert ct.models.MLModel(str(result.path), skip_model_load=True).user_defined_metadata[
        "playbook.frontend"] == "torch.export"
    x = digits.to_tensor(digits.test.images[:16])
    with torch.no_grad():
        expected = small_model(x).numpy()
    got = ReferenceProgram.load(result.path).predict({"image": x.numpy()})["logits"]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_int_of_a_shape_derived_tensor_converts_under_numpy_2_4(tmp_path, digits):
    """coremltools 9.0 folds ``aten::Int`` with ``int(array)``, a TypeError from NumPy 2.4 on (issue #2633);
    ``conversion_passes`` applies the upstream fix, so a model that flattens with ``int(h * w)`` converts and
    computes what PyTorch computes (efficientnet-lite0 after coreai-opt hits the same op through ``size(0)``)."""
    import torch

    from playbook.coreml import conversion_passes
    from playbook.mlprogram import ReferenceProgram

    class IntOfShape(torch.nn.Module):
        def forward(self, x):
            n = int(torch.tensor(x.shape[2]) * x.shape[3])  # a tensor: traced as aten::Int
            return x.reshape(x.shape[0], x.shape[1], n).mean(-1)

    x = torch.randn(1, 1, 8, 8)
    traced = torch.jit.trace(IntOfShape(), x)
    assert "aten::Int" in str(traced.inlined_graph)
    mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(name="x", shape=x.shape)],
                         minimum_deployment_target=ct.target.iOS17, pass_pipeline=conversion_passes())
    path = tmp_path / "int.mlpackage"
    mlmodel.save(str(path))
    out = ReferenceProgram.load(path).predict({"x": x.numpy()})
    assert np.allclose(next(iter(out.values())), IntOfShape()(x).numpy(), atol=1e-3)
