"""compress.graph (issue 23): cross-layer equalization, subclassed convolutions made visible to DKM, BatchNorm folded
out of a W8A8 program."""
import copy
import logging
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

logging.getLogger("coremltools").setLevel(logging.ERROR)

from playbook.compress import compress_torch  # noqa: E402
from playbook.compress.graph import (  # noqa: E402
    ChannelCap, GraphError, correct_bias, equalize_cross_layer, fold_batchnorm, plain_convs, prepare_model,
)
from playbook.compress.recipes import RECIPES  # noqa: E402
from playbook.compress.torch_side import compressed_share  # noqa: E402
from playbook.coreml import ExportConfig, export_model, package_info  # noqa: E402
from playbook.models import create_model  # noqa: E402


class SamePadConv(nn.Conv2d):
    """Like efficientnet_lite_pytorch's Conv2dStaticSamePadding: an nn.Conv2d subclass that zero-pads (here
    asymmetrically, as TF "SAME" does at stride 2) in its own forward."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride, groups=groups, bias=False)
        self.static_padding = nn.ZeroPad2d((0, k - 1, 0, k - 1)) if stride > 1 else nn.ZeroPad2d((k - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Block(nn.Module):
    """Convolutions with BatchNorm held as attributes (not in an nn.Sequential), a shared ReLU6, as in EfficientNet."""

    def __init__(self, c_in: int = 1, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self._stem = SamePadConv(c_in, width, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(width)
        self._dw = SamePadConv(width, width, 3, groups=width)
        self._bn1 = nn.BatchNorm2d(width)
        self._project = SamePadConv(width, 2 * width, 1)
        self._bn2 = nn.BatchNorm2d(2 * width)
        self._act = nn.ReLU6()
        self._fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._stem(x)))
        x = self._act(self._bn1(self._dw(x)))
        x = self._act(self._bn2(self._project(x)))
        return self._fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    model = Block()
    for bn in (model._bn0, model._bn1, model._bn2):  # statistics far from the identity, as after training
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.01, 4)
        bn.weight.data.uniform_(0.05, 3)
        bn.bias.data.uniform_(-1, 1)
    return model.eval()


def _channel_ranges(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().abs()
    out_ranges = w.reshape(w.shape[0], -1).amax(dim=1)
    g = conv.groups
    v = w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:]).transpose(1, 2)
    return out_ranges, v.reshape(v.shape[0] * v.shape[1], -1).amax(dim=1)


def _spread(r: torch.Tensor) -> float:
    return float(r.max() / r.min())


@pytest.mark.parametrize("groups,activation", [(1, nn.ReLU), (16, nn.ReLU), (1, nn.ReLU6)])
def test_a_conv_pair_with_channels_100x_apart_is_equalized_and_computes_the_same(groups, activation):
    torch.manual_seed(0)
    first = nn.Conv2d(4, 16, 3, padding=1)
    second = nn.Conv2d(16, 16 if groups > 1 else 8, 3, padding=1, groups=groups)
    for conv in (first, second):
        nn.init.uniform_(conv.weight, -0.2, 0.2)
        nn.init.uniform_(conv.bias, -0.1, 0.1)
    scale = torch.logspace(-1, 1, 16)  # output channels 100x apart; the next layer absorbs the inverse
    with torch.no_grad():
        first.weight.mul_(scale.view(-1, 1, 1, 1))
        first.bias.mul_(scale)
        if groups > 1:
            second.weight.div_(scale.view(-1, 1, 1, 1))
        else:
            second.weight.div_(scale.view(1, -1, 1, 1))
    model = nn.Sequential(first, activation(), second).eval()
    x = torch.randn(8, 4, 12, 12) * (0.3 if activation is nn.ReLU6 else 1.0)
    assert _spread(_channel_ranges(model[0])[0]) > 50
    made = equalize_cross_layer(model, x)
    eq = made.model
    assert made.changed == ("0 -> 2",)
    convs = [m for m in eq.modules() if isinstance(m, nn.Conv2d)]
    assert _spread(_channel_ranges(convs[0])[0]) < 2.0  # the first layer's output channels
    assert _spread(_channel_ranges(convs[1])[1]) < 2.0  # the second layer's input channels
    with torch.no_grad():
        assert float((eq(x) - model(x)).abs().max()) < 1e-5
    if activation is nn.ReLU6:  # the cap followed the scales: one ChannelCap, caps 6 / s spread like the scales
        caps = [m for m in eq.modules() if isinstance(m, ChannelCap)]
        assert len(caps) == 1 and _spread(caps[0].upper.flatten()) > 10
    assert _spread(_channel_ranges(model[0])[0]) > 50  # the input model is untouched


def test_plain_convs_fold_and_equalize_keep_the_function_of_an_efficientnet_like_block():
    model = _block()
    x = torch.randn(4, 1, 16, 16)
    net, steps = prepare_model(model, ("plain_convs", "fold_bn", "equalize"), x)
    assert [s.step for s in steps] == ["plain_convs", "fold_bn", "equalize"]
    assert set(steps[0].changed) == {"_stem", "_dw", "_project"} and not steps[0].left
    assert set(steps[1].changed) == {"_bn0", "_bn1", "_bn2"}
    assert steps[2].changed == ("_stem.1 -> _dw", "_dw -> _project")  # the stem's pad is asymmetric: pad + conv
    assert not any(isinstance(m, (SamePadConv, nn.BatchNorm2d)) for m in net.modules())
    with torch.no_grad():
        assert float((net(x) - model(x)).abs().max()) < 1e-5 * float(model(x).abs().max()) + 1e-6
    assert all(math.isfinite(s.max_abs_change) for s in steps)


def test_a_step_that_would_change_the_function_refuses():
    class Odd(nn.Conv2d):  # a subclass whose forward is not pad + conv: left alone, listed
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Odd(1, 4, 3)).eval()
    made = plain_convs(model, torch.randn(2, 1, 8, 8))
    assert made.changed == () and "not a zero pad" in made.left[0]
    with pytest.raises(ValueError, match="relu6"):
        equalize_cross_layer(model, relu6="none")

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(GraphError, match="torch.fx cannot trace"):
        fold_batchnorm(Branchy())


def test_a_subclassed_conv_is_palettized_by_dkm_after_plain_convs(digits):
    model = _block()
    base = compress_torch("torch-palettize-2bit-dkm", model, digits, finetune_steps=2, batch_size=16,
                          weight_threshold=0, prepare=())
    share = base.details
    # without the preparation DKM reaches only the exact-type layer (the classifier): the subclasses stay float
    assert share["layers_compressed"] == 1 and set(share["float_layers"]) == {"_stem", "_dw", "_project"}
    made = compress_torch("torch-palettize-2bit-dkm", model, digits, finetune_steps=2, batch_size=16,
                          weight_threshold=0)
    d = made.details
    assert d["weights_compressed"] == d["weights_total"] and d["float_layers"] == []
    assert [p["step"] for p in d["prepare"]] == ["plain_convs", "fold_bn"]
    for name in ("_stem.1", "_dw", "_project"):  # the stored weights hold at most 4 distinct values
        assert torch.unique(made.model.get_submodule(name).weight.detach()).numel() <= 4, name


def test_a_w8a8_program_of_a_conv_bn_model_holds_no_batch_norm(tmp_path, digits):
    model = _block()
    cfg = ExportConfig(precision="fp32", minimum_deployment_target="iOS17")
    made = compress_torch("torch-w8a8-static", model, digits, weight_threshold=0)
    assert made.details["weights_compressed"] == made.details["weights_total"]
    ops = package_info(export_model(made.model, digits, cfg, tmp_path, "w8a8").path).op_histogram
    assert "batch_norm" not in ops, ops
    assert ops.get("quantize", 0) >= 3 and ops.get("conv", 0) == 3
    # the same recipe without the preparation keeps the BatchNorms the converter cannot fold into int8 weights
    before = compress_torch("torch-w8a8-static", model, digits, weight_threshold=0, prepare=())
    ops_before = package_info(export_model(before.model, digits, cfg, tmp_path, "w8a8-raw").path).op_histogram
    assert ops_before.get("batch_norm", 0) == 3


def test_bias_correction_moves_the_compressed_means_back():
    model = _block()
    x = torch.randn(64, 1, 16, 16)
    ref, _ = prepare_model(model, ("plain_convs", "fold_bn"), x[:4])
    damaged = copy.deepcopy(ref)
    with torch.no_grad():  # a crude "compression": every weight rounded to a coarse grid
        for m in damaged.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.round(m.weight * 2) / 2)
    fixed = correct_bias(ref, damaged, x)
    assert set(fixed.changed) == {"_stem.1", "_dw", "_project", "_fc"}

    def mean_error(net):
        with torch.no_grad():
            return float((net(x).mean(0) - ref(x).mean(0)).abs().max())

    assert mean_error(fixed.model) < 0.2 * mean_error(damaged)
    assert compressed_share(fixed.model)["weights_compressed"] == 0  # no coremltools metadata: nothing claimed


def _conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_sparsity_over_reached_layers_makes_the_whole_model_reach_its_target():
    from playbook.compress.torch_side import sparsity_over_reached

    model = _block()  # 144 + 144 + 512 + 320 elements; the depthwise _dw (144) stays dense
    assert sparsity_over_reached(model, ["_dw"], 0.5) == pytest.approx(0.5 * 1120 / 976, abs=1e-4)
    assert sparsity_over_reached(model, [], 0.5) == 0.5
    assert sparsity_over_reached(model, ["_stem", "_dw", "_project"], 0.9) == 0.95  # capped
    with pytest.raises(Exception, match="target_sparsity=1.0 must be between 0 and 1"):
        sparsity_over_reached(model, [], 1.0)


def test_sequential_gptq_compresses_each_layer_from_the_compressed_layers_before_it():
    """Against a reference: coremltools' GPTQ run on the second layer alone, fed what the compressed first layer
    outputs.  The one-pass default feeds it the float first layer's outputs instead."""
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    from playbook.compress.torch_side import layerwise_compress

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    calib, original = torch.randn(64, 32), model[2].weight.detach().clone()
    gptq = {"algorithm": "gptq", "weight_dtype": "uint4", "granularity": "per_channel"}
    sequential = layerwise_compress(model, gptq, [], calib, sequential=True)
    one_pass = layerwise_compress(model, gptq, [], calib)
    assert torch.equal(sequential[0].weight, one_pass[0].weight)  # the first layer sees the images either way
    with torch.no_grad():
        fed = [torch.relu(sequential[0](calib[i:i + 16])) for i in range(0, 64, 16)]
    alone = copy.deepcopy(model[2])
    cfg = LayerwiseCompressorConfig.from_dict({"global_config": gptq, "layers": [""], "calibration_nsamples": 4})
    LayerwiseCompressor(alone, cfg).compress(fed, device="cpu", inplace=True)
    assert torch.equal(sequential[2].weight, alone.weight)
    assert not torch.equal(one_pass[2].weight, alone.weight)
    assert torch.equal(model[2].weight, original)  # on a copy


def test_sparsegpt_prunes_half_of_all_weights_and_its_fine_tune_keeps_the_zeros(tmp_path, digits):
    from playbook.compress.recipes import get_recipe
    import dataclasses

    torch.manual_seed(0)
    model = create_model("mobilenetv2", 10, 1, width=16).eval()
    recipe = get_recipe("torch-prune-50-sparsegpt")
    once = compress_torch(dataclasses.replace(recipe, options={**recipe.options, "finetune": False}), model, digits,
                          weight_threshold=0)
    tuned = compress_torch(recipe, model, digits, finetune_steps=4, batch_size=16, weight_threshold=0)
    before, after = _conv_weights(once.model), _conv_weights(tuned.model)
    skipped = set(tuned.details["skipped_grouped_convs"])
    assert skipped and all(model.get_submodule(n).groups > 1 for n in skipped)  # depthwise convs stay dense
    total = sum(w.numel() for w in after.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros / total == pytest.approx(0.5, abs=0.02)  # half of all weights, the dense depthwise ones counted
    for name, w in after.items():
        if name not in skipped:  # the fine-tune trained the survivors and left every zero SparseGPT chose
            assert torch.equal(w == 0, before[name] == 0), name
    assert tuned.finetune_steps == 4 and len(tuned.losses) == 4
    assert any(not torch.equal(after[n], before[n]) for n in after if n not in skipped)
    ops = package_info(export_model(tuned.model, digits, ExportConfig(minimum_deployment_target="iOS17"), tmp_path,
                                    "sparse").path).op_histogram
    assert ops.get("constexpr_sparse_to_dense", 0) == len(after) - len(skipped)


@pytest.mark.parametrize("recipe, lut", [("torch-int4-gptq-channel", False), ("torch-palettize-4bit-gptq", True),
                                         ("torch-int4-qat", False)])
def test_4bit_recipes_compress_every_layer_depthwise_ones_as_int8(tmp_path, digits, recipe, lut):
    from playbook.compress import compress_converted
    from playbook.compress.coreml_side import load_mlmodel

    torch.manual_seed(0)
    model = create_model("mobilenetv2", 10, 1, width=16).eval()
    made = compress_torch(recipe, model, digits, finetune_steps=3, batch_size=16, weight_threshold=0)
    depthwise = set(made.details["skipped_grouped_convs"])
    assert depthwise and made.details["float_layers"] == sorted(depthwise, key=list(_conv_weights(model)).index)
    for name, w in _conv_weights(made.model).items():
        if name not in depthwise:  # at most 16 levels per output channel
            assert max(torch.unique(row).numel() for row in w.reshape(w.shape[0], -1)) <= 16, name
    cfg = ExportConfig(precision="fp16", minimum_deployment_target=RECIPES[recipe].min_target)
    path = compress_converted(recipe, export_model(made.model, digits, cfg, tmp_path, "gptq").path, tmp_path,
                              "gptq-joint", weight_threshold=0).path
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil
    from coremltools.converters.mil.mil.types import builtin_to_string

    spec = load_mlmodel(path).get_spec()
    main = load_mil(spec, specification_version=spec.specificationVersion,
                    file_weights_dir=str(path / "Data" / "com.apple.CoreML" / "weights")).functions["main"]
    stored = [builtin_to_string(op.data.dtype) for op in main.find_ops(op_type="constexpr_blockwise_shift_scale")
              if op.data.op.op_type == "const"]
    lut_ops = main.find_ops(op_type="constexpr_lut_to_dense")
    luts = [builtin_to_string(op.indices.dtype) for op in lut_ops]
    assert all(op.lut.val.size == 16 for op in lut_ops)  # one palette per layer, not one per output channel
    dense = len(_conv_weights(model)) - len(depthwise)
    assert stored.count("int8") == len(depthwise)  # the depthwise convs, quantized after conversion
    assert (luts == ["uint4"] * dense) if lut else (len(luts) == 0 and len(stored) == len(depthwise) + dense)
