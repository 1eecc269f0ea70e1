import pytest
import torch

from playbook.models import ModelError, available_models, count_parameters, create_model

SMALL = ["resnet", "mobilenetv2", "squeezenet", "efficientnet"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("size", [8, 28])
def test_small_architectures_classify_small_images(name, size):
    model = create_model(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(3, 1, size, size)).shape == (3, 10)


def test_width_knob_changes_capacity_and_unknown_knob_is_rejected():
    assert count_parameters(create_model("resnet", 10, 1, width=8)) < count_parameters(create_model("resnet", 10, 1))
    with pytest.raises(ModelError, match=r"has no option\(s\) \['wdth'\]; valid options are \['width', 'depth'\]"):
        create_model("resnet", 10, 1, wdth=8)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as err:
        create_model("resnet9000", 10, 1)
    assert all(name in str(err.value) for name in SMALL + ["efficientnet-lite0"])


def test_efficientnet_lite0_loads_pretrained_imagenet_weights_offline():
    model = create_model("efficientnet-lite0", 1000, 3).eval()
    assert count_parameters(model) == pytest.approx(4.65e6, rel=0.01)
    # Pretrained, not random: the stem's BN statistics differ from a fresh init.
    assert not torch.allclose(model._bn0.running_var, torch.ones_like(model._bn0.running_var))
    grey = create_model("efficientnet-lite0", 10, 1, image_size=64).eval()
    assert grey(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    with pytest.raises(ModelError, match="at least 56px"):
        create_model("efficientnet-lite0", 10, 1, image_size=28)


def test_user_factory_from_file(tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    model = create_model(f"{tmp_path / 'mine.py'}:build", 10, 1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        create_model(f"{tmp_path / 'mine.py'}:nope", 10, 1)
    assert "resnet" in available_models()
