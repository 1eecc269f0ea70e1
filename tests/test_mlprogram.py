"""The reference executor (playbook.mlprogram) against PyTorch.

Every program here is converted in the test (random weights, small images), saved under
pytest's temporary folders and run with a batch larger than the declared batch of 1:

* every registered architecture x FP32/FP16: FP32 within 1e-5, FP16 within 1e-2
  (max abs error <= tol * max(1, max|ref|));
* weight compression (int8 per-channel, int4 per-block, palettized 2/4/6/8-bit, pruned 50% and
  2:4, prune+palettize, prune+int8) on resnet, mobilenetv2, squeezenet and efficientnet (plus
  grouped palettization and the iOS16 op versions on resnet): the program agrees within 1e-4
  with the BN-folded torch model carrying the decompressed weights read back from the package;
* torch-side W8A8 (LinearQuantizer) against the fake-quantized torch model;
* an op zoo of generic torch ops, every table op that coremltools can evaluate itself
  (value_inference) against coremltools, the resampling grids of the MIL spec,
  ImageType + ClassifierConfig, calibration ranges, and the error for an op outside the table.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
logging.getLogger("coremltools").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ct = pytest.importorskip("coremltools")
import coremltools.optimize.coreml as cto  # noqa: E402

from playbook import mlprogram  # noqa: E402
from playbook.mlprogram import ProgramExecutionError, ReferenceProgram, UnsupportedOpError  # noqa: E402
from playbook.models import available_models, create_model  # noqa: E402

warnings.filterwarnings("ignore")
pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    # coremltools' joint prune+int8 divides 0/0 for fully pruned blocks (harmless: those are masked)
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

BATCH = 16  # > the declared batch of 1: exercises the batch handling
SMALL = {  # name -> (knobs, image size): small random-weight models
    "resnet": ({"width": 8}, 28),
    "mobilenetv2": ({"width": 8}, 28),
    "squeezenet": ({"width": 8}, 28),
    "efficientnet": ({"width": 8}, 16),
    "efficientnet-lite0": ({}, 64),
}
REGISTERED = [m for m in available_models() if ":" not in m]
EXPORT = {"efficientnet-lite0"}  # coremltools' TorchScript path fails on it ('int' op on a shape); torch.export works


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that BN folding by the converter is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def _build(name: str) -> tuple[nn.Module, int]:
    knobs, size = SMALL[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, image_size=size, **knobs)
    return _randomize_bn(model).eval(), size


def _convert(model: nn.Module, size: int, precision: str, target=None, in_channels: int = 1, export: bool = False,
             **kw):
    """FP32/FP16 ML program via torch.jit.trace (or torch.export: efficientnet-lite0 fails to trace-convert)."""
    example = torch.zeros(1, in_channels, size, size)
    if export:
        source = torch.export.export(model, (example,)).run_decompositions({})
    else:
        source = torch.jit.trace(model, example)
    return ct.convert(
        source, convert_to="mlprogram",
        inputs=kw.pop("inputs", [ct.TensorType(name="x", shape=example.shape, dtype=np.float32)]),
        outputs=kw.pop("outputs", [ct.TensorType(name="logits", dtype=np.float32)]),
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=target or ct.target.iOS18, **kw,
    )


def _load(mlmodel, tmp_dir, stem: str) -> ReferenceProgram:
    path = tmp_dir / f"{stem}.mlpackage"
    mlmodel.save(str(path))
    return ReferenceProgram.load(path)


def _inputs(size: int, channels: int = 1, n: int = BATCH, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, channels, size, size), dtype=np.float32)


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _assert_close(got: np.ndarray, ref: np.ndarray, tol: float, what: str) -> None:
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = float(np.abs(got - ref).max())
    bound = tol * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g} (tol {tol}, max|ref| {np.abs(ref).max():.3g})"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny batches: one thread is fastest and immune to oversubscribed CI machines (restored after)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # scikit-learn's k-means (palettization) too
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlprogram")


@pytest.fixture(scope="module")
def fp32_models():
    """name -> (torch model, image size, FP32 MLModel for iOS18): converted once, compressed in memory."""
    cache: dict[str, tuple[nn.Module, int, object]] = {}

    def get(name: str):
        if name not in cache:
            model, size = _build(name)
            cache[name] = (model, size, _convert(model, size, "fp32", export=name in EXPORT))
        return cache[name]

    return get


# ----------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", REGISTERED)
def test_architectures_match_torch(name, precision, tmp_dir, fp32_models):
    if precision == "fp32":
        model, size, mlmodel = fp32_models(name)
    else:
        model, size = _build(name)
        mlmodel = _convert(model, size, "fp16", export=name in EXPORT)
    prog = _load(mlmodel, tmp_dir, f"{name}-{precision}")
    assert prog.precision == precision
    assert prog.input_names == ["x"] and prog.output_names == ["logits"]
    assert prog.inputs[0].shape == (1, 1, size, size) and prog.inputs[0].kind == "tensor"
    x = _inputs(size, n=BATCH if name != "efficientnet-lite0" else 4)
    out = prog.predict({"x": x})["logits"]
    assert out.dtype == np.float32
    _assert_close(out, _torch(model, x), 1e-5 if precision == "fp32" else 1e-2, f"{name} {precision}")
    if precision == "fp16":  # the FP16 program must really round: it differs from the FP32 result
        assert np.abs(out - _torch(model, x)).max() > 0


# ----------------------------------------------------------------------------- compression
def _fold_bn(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d+BatchNorm2d pair of a Sequential folded into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return model


def _with_program_weights(model: nn.Module, prog: ReferenceProgram) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The BN-folded model carrying the program's (decompressed) conv/linear weights and biases.

    Program ops are matched to torch layers of the same weight shape by the smallest relative
    difference.  Returns the model and {var name: weight} of the weights a constexpr op produced.
    """
    fused = _fold_bn(model)
    layers = [m for m in fused.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ops = [n for n in prog.nodes if n.op_type in ("conv", "linear")]
    assert len(ops) == len(layers)
    produced_by_constexpr = {o for n in prog.nodes if n.op_type.startswith("constexpr_") for o in n.outputs}
    compressed: dict[str, np.ndarray] = {}
    free = list(layers)
    with torch.no_grad():
        for node in ops:
            w = prog.const_input(node, "weight").astype(np.float32)
            wt = torch.from_numpy(w)
            same = [m for m in free if tuple(m.weight.shape) == w.shape]
            layer = min(same, key=lambda m: float((m.weight - wt).norm() / (m.weight.norm() + 1e-12)))
            free.remove(layer)
            layer.weight.copy_(wt)
            bias = prog.const_input(node, "bias")
            layer.bias = None if bias is None else nn.Parameter(torch.from_numpy(bias.astype(np.float32)))
            if node.inputs["weight"] in produced_by_constexpr:
                compressed[node.inputs["weight"]] = w
    return fused, compressed


OC, LQ, PAL, PRUNE = cto.OptimizationConfig, cto.OpLinearQuantizerConfig, cto.OpPalettizerConfig, cto.OpMagnitudePrunerConfig
TH = 64  # weight_threshold: small enough that the small models' layers get compressed


def _unique_at_most(k: int):
    return lambda w: len(np.unique(w)) <= k


def _sparsity_at_least(s: float):
    return lambda w: (w == 0).mean() >= s - 1e-6


def _int4_blocks(w: np.ndarray, block: int = 4) -> bool:
    """At most 16 distinct values per (output channel, block of input channels)."""
    if w.shape[1] % block:
        return True
    blocks = w.reshape(w.shape[0], w.shape[1] // block, -1)
    return all(len(np.unique(b)) <= 16 for row in blocks for b in row)


def _two_of_four(w: np.ndarray) -> bool:
    if w.shape[1] % 4:
        return True
    groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
    return bool(((groups == 0).sum(axis=1) >= 2).all())


COMPRESSIONS = {  # name -> (deployment target, compress(mlmodel), expected constexpr ops, weight check)
    "int8-per-channel": ("iOS18", lambda m: cto.linear_quantize_weights(m, OC(LQ(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=TH))),
        {"constexpr_blockwise_shift_scale"}, None),
    "int4-per-block": ("iOS18", lambda m: cto.linear_quantize_weights(m, OC(LQ(
        mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=4, weight_threshold=TH))),
        {"constexpr_blockwise_shift_scale"}, _int4_blocks),
    **{f"palettize-{b}bit": ("iOS18", (lambda b: lambda m: cto.palettize_weights(m, OC(PAL(
        mode="kmeans", nbits=b, weight_threshold=TH)))) (b), {"constexpr_lut_to_dense"}, _unique_at_most(2 ** b))
       for b in (2, 4, 6, 8)},
    "palettize-4bit-grouped": ("iOS18", lambda m: cto.palettize_weights(m, OC(PAL(
        mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=4, weight_threshold=TH))),
        {"constexpr_lut_to_dense"}, None),
    "prune-50%": ("iOS18", lambda m: cto.prune_weights(m, OC(PRUNE(target_sparsity=0.5, weight_threshold=TH))),
                  {"constexpr_sparse_to_dense"}, _sparsity_at_least(0.5)),
    "prune-2:4": ("iOS18", lambda m: cto.prune_weights(m, OC(PRUNE(n_m_ratio=(2, 4), weight_threshold=TH))),
                  {"constexpr_sparse_to_dense"}, _two_of_four),
    "prune+palettize-4bit": ("iOS18", lambda m: cto.palettize_weights(
        cto.prune_weights(m, OC(PRUNE(target_sparsity=0.5, weight_threshold=TH))),
        OC(PAL(mode="kmeans", nbits=4, weight_threshold=TH)), joint_compression=True),
        {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}, _sparsity_at_least(0.5)),
    "prune+int8": ("iOS18", lambda m: cto.linear_quantize_weights(
        cto.prune_weights(m, OC(PRUNE(target_sparsity=0.5, weight_threshold=TH))),
        OC(LQ(mode="linear_symmetric", weight_threshold=TH)), joint_compression=True),
        {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"}, _sparsity_at_least(0.5)),
    # iOS16 op versions (constexpr_affine_dequantize, iOS16 LUT and sparse layouts)
    "ios16-int8": ("iOS16", lambda m: cto.linear_quantize_weights(m, OC(LQ(mode="linear", weight_threshold=TH))),
                   {"constexpr_affine_dequantize"}, None),
    "ios16-palettize-4bit": ("iOS16", lambda m: cto.palettize_weights(m, OC(PAL(
        mode="kmeans", nbits=4, weight_threshold=TH))), {"constexpr_lut_to_dense"}, _unique_at_most(16)),
    "ios16-prune-50%": ("iOS16", lambda m: cto.prune_weights(m, OC(PRUNE(target_sparsity=0.5, weight_threshold=TH))),
                        {"constexpr_sparse_to_dense"}, _sparsity_at_least(0.5)),
}


@pytest.fixture(scope="module")
def ios16_models(fp32_models):
    cache = {}

    def get(name: str):
        if name not in cache:
            model, size, _ = fp32_models(name)
            cache[name] = _convert(model, size, "fp32", target=ct.target.iOS16)
        return cache[name]

    return get


EXTRA = {"palettize-4bit-grouped", "ios16-int8", "ios16-palettize-4bit", "ios16-prune-50%"}  # resnet only
COMPRESSION_CASES = [(name, c) for name in ("resnet", "mobilenetv2", "squeezenet", "efficientnet") for c in COMPRESSIONS
                     if name == "resnet" or c not in EXTRA]


@pytest.mark.parametrize("name,compression", COMPRESSION_CASES)
def test_compressed_programs_match_torch_with_decompressed_weights(name, compression, tmp_dir, fp32_models,
                                                                   ios16_models):
    target, compress, expected_ops, check = COMPRESSIONS[compression]
    model, size, base = fp32_models(name)
    if target == "iOS16":
        base = ios16_models(name)
    prog = _load(compress(base), tmp_dir, f"{name}-{compression}")
    counts = prog.op_counts()
    assert expected_ops <= set(counts), f"{compression}: expected {expected_ops} in {counts}"

    torch_model, compressed = _with_program_weights(model, prog)
    n_layers = sum(1 for n in prog.nodes if n.op_type in ("conv", "linear"))
    assert len(compressed) >= n_layers // 2, f"only {len(compressed)} of {n_layers} layers compressed"
    if check is not None:  # e.g. at most 2**nbits distinct values, at least 50% zeros, 2 zeros in every 4
        assert all(check(w) for w in compressed.values()), f"{compression}: a weight fails the compression check"

    x = _inputs(size)
    got = prog.predict({"x": x})["logits"]
    ref = _torch(torch_model, x)
    _assert_close(got, ref, 1e-4, f"{name} {compression}")
    # the compression is lossy: the reference really differs from the uncompressed model
    assert np.abs(ref - _torch(model, x)).max() > 1e-6


# ----------------------------------------------------------------------------- W8A8
@pytest.fixture(scope="module")
def w8a8_resnet():
    """ResNet through LinearQuantizer (W8A8, symmetric), observers calibrated, finalized (fake-quantized)."""
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig

    model, size = _build("resnet")
    config = LinearQuantizerConfig.from_dict(
        {"global_config": {"quantization_scheme": "symmetric", "milestones": [0, 1000, 1000, 0]}})
    quantizer = LinearQuantizer(model, config)
    prepared = quantizer.prepare(example_inputs=(torch.zeros(1, 1, size, size),))
    quantizer.step()  # observers on, fake quantisation on
    with torch.no_grad():
        for seed in range(4):  # calibrate the observers
            prepared(torch.from_numpy(_inputs(size, n=32, seed=100 + seed)))
    return quantizer.finalize(inplace=False).eval(), size


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_w8a8_matches_fake_quantized_torch(precision, w8a8_resnet, tmp_dir):
    finalized, size = w8a8_resnet
    prog = _load(_convert(finalized, size, precision, target=ct.target.iOS17), tmp_dir, f"resnet-w8a8-{precision}")
    counts = prog.op_counts()
    assert counts.get("quantize", 0) >= 5 and counts.get("dequantize", 0) >= 5, counts
    assert "constexpr_affine_dequantize" in counts  # int8 weights

    x = _inputs(size, n=128, seed=7)
    got = prog.predict({"x": x})["logits"].astype(np.float32)
    ref = _torch(finalized, x)
    # The logits are themselves quantized (a final quantize/dequantize pair), so any disagreement
    # comes in whole output quanta.  Executor and fake-quantized torch quantize with the same
    # math (x * (1/scale), round half to even): in FP32 they differ only where a float
    # accumulation-order difference puts a value on the other side of a rounding boundary,
    # i.e. for a few logits by one quantum.  The FP16 program also rounds every activation to
    # fp16, which moves more values across boundaries, still by about one quantum.
    quantum = float(np.max(prog.const_input([n for n in prog.nodes if n.op_type == "dequantize"][-1], "scale")))
    diff = np.abs(got - ref)
    if precision == "fp32":
        assert diff.max() <= 2 * quantum + 1e-6, (diff.max(), quantum)
        assert (diff <= 1e-6).mean() >= 0.95
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    else:
        assert diff.max() <= 4 * quantum + 1e-6, (diff.max(), quantum)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


class _PoolViewHead(nn.Module):
    """conv -> ReLU6 -> global pool -> ``view`` -> dropout -> linear: efficientnet-lite0's head in small."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(1, 16, 3, padding=1), nn.ReLU6()
        self.pool, self.drop, self.fc = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv(x)))
        return self.fc(self.drop(x.view(-1, 16)))


def test_w8a8_requantization_across_a_view_follows_torch(tmp_dir, digits):
    """Issue 23: LinearQuantizer observes the dropout after ``view`` on its own (pooled features re-quantized from
    (6/255, zero point 0) to (12/255, 128)); coremltools' ``int_op_canonicalization`` turns
    dequantize -> reshape -> quantize into a bare reshape of the integers whatever the two parameter pairs, so the
    classifier read the codes with the wrong scale/zero point (lite0: 89 % in torch, 38 % through the package).
    ``compress_torch`` gives such re-quantizations the parameters of the tensor they read, which makes the rewrite
    exact: the package must then compute what the torch model computes."""
    from playbook.compress import compress_torch

    torch.manual_seed(0)
    made = compress_torch("torch-w8a8-static", _PoolViewHead().eval(), digits, prepare=(), weight_threshold=0)
    assert made.details["shared_requantization"]  # the pooled features' re-quantization was aligned
    size = digits.input_shape[-1]
    prog = _load(_convert(made.model, size, "fp32", target=ct.target.iOS17), tmp_dir, "pool-view-w8a8")
    x = digits.to_tensor(digits.test.images).numpy()
    got = prog.predict({"x": x})["logits"].astype(np.float32)
    ref = _torch(made.model, x)
    quantum = float(np.max(prog.const_input([n for n in prog.nodes if n.op_type == "dequantize"][-1], "scale")))
    diff = np.abs(got - ref)
    assert diff.max() <= 2 * quantum + 1e-6, (diff.max(), quantum)  # without the fix: 0.43, ~150 quanta
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_quantize_rounds_half_to_even_with_reciprocal():
    node = mlprogram.Node("main", 0, "quantize", "q", {}, ("q",),
                          {"input": mlprogram.VarType((4,), "fp32"), "scale": mlprogram.VarType((), "fp32")},
                          (mlprogram.VarType((4,), "int8"),))
    x = torch.tensor([0.5, 1.5, 2.5, -0.5]) * 0.1
    q = mlprogram.OPS["quantize"](node, input=x, scale=0.1, output_dtype="int8", zero_point=0)
    expected = torch.round(x * (1.0 / torch.tensor(0.1, dtype=torch.float32)))
    assert q.tolist() == expected.to(torch.int8).tolist()
    assert mlprogram.OPS["round"](node, x=torch.tensor([0.5, 1.5, 2.5, -0.5])).tolist() == [0.0, 2.0, 2.0, -0.0]


# ----------------------------------------------------------------------------- generic ops
class Zoo(nn.Module):
    """Generic ops mobile/vision models use: the executor must cover what they convert to."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.convt = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.ln = nn.LayerNorm(8)
        self.prelu = nn.PReLU(8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm2d(8)
        self.lin = nn.Linear(8, 5)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.linspace(-0.5, 0.5, 8))

    def forward(self, x):
        y = self.conv(x)
        a = F.hardswish(y) + F.hardsigmoid(y) - F.relu6(y) * 0.5
        a = a / (1.0 + torch.sigmoid(y))
        pooled = F.max_pool2d(a, 3, 2, 1, ceil_mode=True).repeat_interleave(2, -1).repeat_interleave(2, -2)
        a = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False) + F.avg_pool2d(a, 3, 1, 1) + pooled[..., :16, :16]
        b = F.pad(a, (1, 2, 0, 1), mode="reflect")
        b = F.pad(b, (1, 0, 1, 1), mode="replicate")
        b = F.pad(b, (0, 1, 2, 0), value=0.5)
        b = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=True)
        c = F.interpolate(a, scale_factor=2, mode="nearest")
        c = self.dw(self.dw(c))[..., :8, :8] + self.convt(self.dw(a))[..., ::2, ::2]
        d = self.prelu(self.inorm(c) + self.gn(b) + self.bn(c))
        d = torch.tanh(d) + F.gelu(d) + F.leaky_relu(d, 0.1) + F.elu(d) + F.silu(d) + F.softplus(d)
        e = self.ln(d.permute(0, 2, 3, 1))  # N H W C
        e = torch.softmax(e, dim=-1) + torch.exp(-e.abs()) + torch.sqrt(e * e + 1) + torch.rsqrt(e * e + 1)
        f = torch.matmul(e, e.transpose(-1, -2))  # N H W W
        g = f.sum(dim=-1) + f.amax(dim=-1) - f.mean(dim=-1)  # N H W
        h = g.unsqueeze(1).squeeze(1).flatten(1)  # N 64
        p, q = torch.chunk(h, 2, dim=1)
        h = torch.cat([q, p, h[:, ::2], h[:, 1:5]], dim=1)
        t = d.mean(dim=(2, 3))
        t = torch.maximum(t, torch.zeros_like(t)) + torch.clamp(t, -0.5, 0.5) + torch.minimum(t, t * 2)
        out = self.lin(t) + h[:, :5] * 0.01 + torch.pow(t[:, :5], 2) + t[:, :5].abs().log1p()
        return torch.cat([out, h.reshape(-1, 25, 4).max(dim=1).values, F.adaptive_avg_pool2d(d, 1).flatten(1)], dim=1)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_op_zoo_matches_torch(precision, tmp_dir):
    torch.manual_seed(0)
    model = _randomize_bn(Zoo()).eval()
    mlmodel = _convert(model, 16, precision, target=ct.target.iOS17, in_channels=3,
                       outputs=[ct.TensorType(name="out", dtype=np.float32)])
    prog = _load(mlmodel, tmp_dir, f"zoo-{precision}")
    used = set(prog.op_counts())
    assert {"sigmoid_hard", "avg_pool", "pad", "upsample_bilinear", "upsample_nearest_neighbor", "softmax",
            "transpose", "matmul", "sub", "real_div", "layer_norm", "tile", "reduce_sum", "reduce_max",
            "conv_transpose", "split", "slice_by_index", "squeeze", "expand_dims", "gelu"} <= used, used
    x = _inputs(16, channels=3, n=8)
    _assert_close(prog.predict({"x": x})["out"], _torch(model, x), 1e-5 if precision == "fp32" else 1e-2,
                  f"op zoo {precision}")


# ----------------------------------------------------------------------------- single ops vs coremltools
# For the 90 table ops that coremltools can evaluate itself (NumPy ``value_inference``), build the
# op on constant inputs with the MIL builder, let the executor fold it at load time through its
# table, and compare with coremltools' value.  Ops without value inference (conv, pooling,
# resampling, norms, ...) are covered by the torch comparisons above and below.
from coremltools.converters.mil import Builder as mb  # noqa: E402

_rng = np.random.default_rng(0)
X = _rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
P = (np.abs(X) + 0.1).astype(np.float32)
I = _rng.integers(-5, 6, (2, 3, 4)).astype(np.int32)
B = X > 0
VALUE_CASES = {
    "abs": lambda: mb.abs(x=X), "ceil": lambda: mb.ceil(x=X), "floor": lambda: mb.floor(x=X), "round": lambda: mb.round(x=X * 3),
    "cos": lambda: mb.cos(x=X), "sin": lambda: mb.sin(x=X), "erf": lambda: mb.erf(x=X), "exp": lambda: mb.exp(x=X), "exp2": lambda: mb.exp2(x=X),
    "log": lambda: mb.log(x=P), "sqrt": lambda: mb.sqrt(x=P), "rsqrt": lambda: mb.rsqrt(x=P), "inverse": lambda: mb.inverse(x=P),
    "square": lambda: mb.square(x=X), "sign": lambda: mb.sign(x=X), "tanh": lambda: mb.tanh(x=X), "sigmoid": lambda: mb.sigmoid(x=X),
    "relu": lambda: mb.relu(x=X), "relu6": lambda: mb.relu6(x=X * 5), "softplus": lambda: mb.softplus(x=X), "softsign": lambda: mb.softsign(x=X),
    "clip": lambda: mb.clip(x=X, alpha=-0.5, beta=0.7), "clamped_relu": lambda: mb.clamped_relu(x=X * 5, alpha=0.1, beta=2.0),
    "elu": lambda: mb.elu(x=X, alpha=0.7), "leaky_relu": lambda: mb.leaky_relu(x=X, alpha=0.2),
    "linear_activation": lambda: mb.linear_activation(x=X, alpha=2.0, beta=-1.0), "scaled_tanh": lambda: mb.scaled_tanh(x=X, alpha=2.0, beta=0.5),
    "sigmoid_hard": lambda: mb.sigmoid_hard(x=X, alpha=0.3, beta=0.4), "thresholded_relu": lambda: mb.thresholded_relu(x=X, alpha=0.3),
    "prelu": lambda: mb.prelu(x=X, alpha=np.array([0.1, 0.2, 0.3], np.float32)),
    "softplus_parametric": lambda: mb.softplus_parametric(x=X, alpha=np.array([1.0, 2.0, 0.5], np.float32), beta=np.array([0.5, 1.0, 2.0], np.float32)),
    "gelu-exact": lambda: mb.gelu(x=X), "gelu-tanh": lambda: mb.gelu(x=X, mode="TANH_APPROXIMATION"), "gelu-sigmoid": lambda: mb.gelu(x=X, mode="SIGMOID_APPROXIMATION"),
    "softmax": lambda: mb.softmax(x=X, axis=1),
    "add": lambda: mb.add(x=X, y=X[:1, :, :1]), "sub": lambda: mb.sub(x=X, y=1.5), "mul": lambda: mb.mul(x=X, y=X), "real_div": lambda: mb.real_div(x=X, y=P),
    "floor_div": lambda: mb.floor_div(x=X * 4, y=P), "mod": lambda: mb.mod(x=X * 4, y=P), "pow": lambda: mb.pow(x=P, y=X),
    "maximum": lambda: mb.maximum(x=X, y=X[:, :1]), "minimum": lambda: mb.minimum(x=X, y=0.0),
    "equal": lambda: mb.equal(x=I, y=0), "not_equal": lambda: mb.not_equal(x=I, y=0), "greater": lambda: mb.greater(x=X, y=0.1),
    "greater_equal": lambda: mb.greater_equal(x=I, y=1), "less": lambda: mb.less(x=X, y=0.1), "less_equal": lambda: mb.less_equal(x=I, y=1),
    "logical_and": lambda: mb.logical_and(x=B, y=~B[:1]), "logical_or": lambda: mb.logical_or(x=B, y=~B[:1]), "logical_xor": lambda: mb.logical_xor(x=B, y=B[:1]),
    "logical_not": lambda: mb.logical_not(x=B), "select": lambda: mb.select(cond=B, a=X, b=-X),
    "cast-int": lambda: mb.cast(x=X * 3, dtype="int32"), "cast-fp16": lambda: mb.cast(x=X, dtype="fp16"), "cast-bool": lambda: mb.cast(x=I, dtype="bool"),
    "reduce_mean": lambda: mb.reduce_mean(x=X, axes=[2, 3], keep_dims=True), "reduce_sum": lambda: mb.reduce_sum(x=X, axes=[1]),
    "reduce_max": lambda: mb.reduce_max(x=X, axes=[-1]), "reduce_min": lambda: mb.reduce_min(x=X), "reduce_prod": lambda: mb.reduce_prod(x=X, axes=[1, 3]),
    "reduce_l1_norm": lambda: mb.reduce_l1_norm(x=X, axes=[3]), "reduce_l2_norm": lambda: mb.reduce_l2_norm(x=X, axes=[2, 3]),
    "reduce_log_sum": lambda: mb.reduce_log_sum(x=P, axes=[3]), "reduce_log_sum_exp": lambda: mb.reduce_log_sum_exp(x=X, axes=[1], keep_dims=True),
    "reduce_sum_square": lambda: mb.reduce_sum_square(x=X, axes=[0]), "reduce_argmax": lambda: mb.reduce_argmax(x=X, axis=1),
    "reduce_argmin": lambda: mb.reduce_argmin(x=X, axis=-1, keep_dims=True),
    "reshape": lambda: mb.reshape(x=X, shape=[2, -1, 5]), "reshape-0": lambda: mb.reshape(x=X, shape=[0, 0, 20, 1]),
    "transpose": lambda: mb.transpose(x=X, perm=[0, 3, 1, 2]), "squeeze": lambda: mb.squeeze(x=X[:, :1], axes=[1]),
    "expand_dims": lambda: mb.expand_dims(x=X, axes=[0, -1]), "flatten2d": lambda: mb.flatten2d(x=X, axis=2),
    "concat": lambda: mb.concat(values=[X, X * 2], axis=2), "concat-interleave": lambda: mb.concat(values=[X, X * 2], axis=1, interleave=True),
    "split": lambda: mb.split(x=X, num_splits=2, axis=0)[1], "split-sizes": lambda: mb.split(x=X, split_sizes=[1, 2], axis=1)[1],
    "stack": lambda: mb.stack(values=[X, -X], axis=2), "tile": lambda: mb.tile(x=X, reps=[1, 2, 1, 3]),
    "slice_by_index": lambda: mb.slice_by_index(x=X, begin=[0, 1, 0, 1], end=[2, 3, 4, 5], stride=[1, 1, 2, 2]),
    "slice_by_index-masks": lambda: mb.slice_by_index(x=X, begin=[1, 0, 3, 0], end=[0, 2, 0, 4], end_mask=[True, False, True, False], squeeze_mask=[False, False, False, False], begin_mask=[False, True, False, False]),
    "slice_by_index-neg": lambda: mb.slice_by_index(x=X, begin=[0, 2, 3, 0], end=[2, 0, 0, 5], stride=[1, -1, -1, 1], end_mask=[False, True, True, False]),
    "slice_by_index-squeeze": lambda: mb.slice_by_index(x=X, begin=[1, 0, 0, 0], end=[2, 3, 4, 5], squeeze_mask=[True, False, False, False]),
    "slice_by_size": lambda: mb.slice_by_size(x=X, begin=[0, 1, 1, 0], size=[2, -1, 2, 3]),
    "pad-constant": lambda: mb.pad(x=X, pad=[1, 2, 0, 1], mode="constant", constant_val=0.5), "pad-reflect": lambda: mb.pad(x=X, pad=[1, 2, 2, 1], mode="reflect"),
    "pad-replicate": lambda: mb.pad(x=X, pad=[0, 0, 1, 1, 2, 0], mode="replicate"),
    "gather": lambda: mb.gather(x=X, indices=np.array([[2, 0], [1, -1]], np.int32), axis=1),
    "gather_along_axis": lambda: mb.gather_along_axis(x=X, indices=_rng.integers(0, 4, (2, 3, 2, 5)).astype(np.int32), axis=2),
    "shape": lambda: mb.shape(x=X), "fill": lambda: mb.fill(shape=np.array([2, 3], np.int32), value=1.5),
    "fill_like": lambda: mb.fill_like(ref_tensor=X, value=2.0), "identity": lambda: mb.identity(x=X),
    "range_1d": lambda: mb.range_1d(start=1, end=10, step=3), "range_1d-float": lambda: mb.range_1d(start=0.5, end=3.0, step=0.5),
    "matmul": lambda: mb.matmul(x=X, y=X, transpose_y=True), "matmul-tx": lambda: mb.matmul(x=X, y=X[0], transpose_x=True),
    "linear": lambda: mb.linear(x=X, weight=_rng.standard_normal((6, 5)).astype(np.float32), bias=np.arange(6, dtype=np.float32)),
    "layer_norm": lambda: mb.layer_norm(x=X, axes=[2, 3], gamma=P[0, 0], beta=X[0, 0], epsilon=1e-5),
    "layer_norm-mid": lambda: mb.layer_norm(x=X, axes=[1], epsilon=1e-3),
    "l2_norm": lambda: mb.l2_norm(x=X, epsilon=1e-6),
    "quantize": lambda: mb.quantize(input=X, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8"),
    "quantize-axis": lambda: mb.quantize(input=X, scale=np.array([0.01, 0.02, 0.05], np.float32), zero_point=np.array([128, 100, 0], np.uint8), axis=1, output_dtype="uint8"),
}


def test_value_cases_cover_the_table():
    from coremltools.converters.mil.mil.operation import Operation
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    with_inference = {name for name in mlprogram.OPS
                      for cls in [c for c in SSAOpRegistry.core_ops.get(name, {}).values() if c is not None][-1:]
                      if cls.value_inference is not Operation.value_inference}
    covered = {case.split("-")[0] for case in VALUE_CASES}
    assert with_inference - covered == set()


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_op_matches_coremltools_value_inference(case):
    box = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=ct.target.iOS17)
    def prog(dummy):
        out = VALUE_CASES[case]()
        box["name"], box["val"] = out.name, out.val
        return dummy

    got = ReferenceProgram(prog).constant(box["name"])
    expected = np.asarray(box["val"])
    if case == "concat-interleave":  # coremltools' value_inference ignores interleave: use the spec's definition
        expected = np.stack([X, X * 2], axis=2).reshape(2, 6, 4, 5)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-6)


class Resampling(nn.Module):
    def forward(self, x):
        a = F.pixel_unshuffle(x, 2)  # N 12 8 8
        b = F.pixel_shuffle(a, 2)  # N 3 16 16
        c = F.interpolate(b, size=(5, 7), mode="bilinear", align_corners=False)
        d = F.interpolate(b, size=(6, 10), mode="nearest")  # fractional scale factors
        e = F.interpolate(b, size=(11, 9), mode="bilinear", align_corners=True)
        return torch.cat([c.flatten(1), d.flatten(1), e.flatten(1), a.flatten(1)], 1)


def test_resampling_and_pixel_shuffle_match_torch(tmp_dir):
    model = Resampling().eval()
    mlmodel = _convert(model, 16, "fp32", target=ct.target.iOS17, in_channels=3,
                       outputs=[ct.TensorType(name="out", dtype=np.float32)])
    prog = _load(mlmodel, tmp_dir, "resampling")
    assert {"pixel_shuffle", "pixel_unshuffle", "upsample_bilinear", "upsample_nearest_neighbor"} <= set(prog.op_counts())
    x = _inputs(16, channels=3, n=4)
    _assert_close(prog.predict({"x": x})["out"], _torch(model, x), 1e-5, "resampling")


def _node(op_type: str, x_shape) -> mlprogram.Node:
    t = mlprogram.VarType(tuple(x_shape), "fp32")
    return mlprogram.Node("main", 0, op_type, op_type, {"x": "x"}, ("y",), {"x": t}, (mlprogram.VarType(None, "fp32"),))


@pytest.mark.parametrize("mode,expected", [  # the grid-point examples of the MIL spec (Xin = 2, Xout = 5)
    ("UNALIGN_CORNERS", [0.0, 0.1, 0.5, 0.9, 1.0]),
    ("STRICT_ALIGN_CORNERS", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("ALIGN_CORNERS", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("DEFAULT", [0.0, 0.4, 0.8, 1.0, 1.0]),
    ("OFFSET_CORNERS", [0.1, 0.3, 0.5, 0.7, 0.9]),
])
def test_resize_bilinear_follows_the_spec_grid(mode, expected):
    x = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)  # value == position: the output is the grid
    y = mlprogram.OPS["resize_bilinear"](_node("resize_bilinear", x.shape), x=x, target_size_height=1,
                                         target_size_width=5, sampling_mode=mode)
    np.testing.assert_allclose(y.reshape(-1).numpy(), expected, atol=1e-6)


def test_upsample_bilinear_follows_the_spec_grid():
    x = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    up = mlprogram.OPS["upsample_bilinear"]
    y = up(_node("upsample_bilinear", x.shape), x=x, scale_factor_height=1, scale_factor_width=3.0, align_corners=False)
    np.testing.assert_allclose(y.reshape(-1).numpy(), [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0], atol=1e-6)
    y = up(_node("upsample_bilinear", x.shape), x=x, scale_factor_height=1, scale_factor_width=2.5, align_corners=True)
    np.testing.assert_allclose(y.reshape(-1).numpy(), [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)


def test_l2_pool_and_crop():
    x = torch.randn(2, 3, 6, 6)
    y = mlprogram.OPS["l2_pool"](_node("l2_pool", x.shape), x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")
    torch.testing.assert_close(y, F.lp_pool2d(x, 2, 2, 2))
    y = mlprogram.OPS["crop"](_node("crop", x.shape), x=x, crop_height=[1, 2], crop_width=[0, 3])
    torch.testing.assert_close(y, x[..., 1:4, 0:3])


# ----------------------------------------------------------------------------- image input, classifier
def test_image_input_and_classifier(tmp_dir, fp32_models):
    model, size, _ = fp32_models("resnet")
    labels = [f"class{i}" for i in range(10)]
    mlmodel = _convert(model, size, "fp32", target=ct.target.iOS17, outputs=None,
                       inputs=[ct.ImageType(name="image", shape=(1, 1, size, size), scale=1 / 255.0, bias=[-0.5],
                                            color_layout=ct.colorlayout.GRAYSCALE)],
                       classifier_config=ct.ClassifierConfig(labels))
    prog = _load(mlmodel, tmp_dir, "resnet-image-classifier")
    assert prog.inputs[0].kind == "image" and prog.inputs[0].color_layout == "G"
    assert [s.kind for s in prog.outputs] == ["label", "probabilities"]
    assert prog.class_labels == labels
    pixels = np.random.default_rng(3).integers(0, 256, (BATCH, 1, size, size)).astype(np.float32)
    out = prog.predict({"image": pixels})
    label_name, probs_name = prog.output_names
    ref = _torch(model, pixels / 255.0 - 0.5)
    _assert_close(out[probs_name], ref, 1e-5, "classifier scores")
    assert list(out[label_name]) == [labels[i] for i in ref.argmax(1)]


# ----------------------------------------------------------------------------- API behaviour
def test_batching_chunks_and_from_model(tmp_dir, fp32_models):
    model, size, mlmodel = fp32_models("mobilenetv2")
    prog = _load(mlmodel, tmp_dir, "mobilenetv2-api")
    x = _inputs(size, n=37)
    whole = prog.predict({"x": x})["logits"]
    np.testing.assert_allclose(prog.predict({"x": x}, batch_size=10)["logits"], whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(prog.predict({"x": x[:1]})["logits"], whole[:1], rtol=0, atol=1e-5)
    in_memory = ReferenceProgram.from_model(mlmodel)
    np.testing.assert_array_equal(in_memory.predict({"x": x})["logits"], whole)
    with pytest.raises(ValueError, match="missing"):
        prog.predict({"image": x})
    with pytest.raises(ValueError, match="declares"):
        prog.predict({"x": x[:, :, :10]})


def test_activation_ranges(tmp_dir, fp32_models):
    model, size, mlmodel = fp32_models("resnet")
    prog = _load(mlmodel, tmp_dir, "resnet-calib")
    batches = [_inputs(size, n=8, seed=s) for s in range(3)]
    ranges = prog.activation_ranges(batches)
    assert ranges["x"] == (float(min(b.min() for b in batches)), float(max(b.max() for b in batches)))
    relu_outputs = [n.outputs[0] for n in prog.nodes if n.op_type == "relu"]
    assert relu_outputs and all(ranges[v][0] >= 0 for v in relu_outputs)
    assert all(lo <= hi for lo, hi in ranges.values())
    assert "logits" in ranges
    robust = prog.activation_ranges(({"x": b} for b in batches), names=["logits", "x"], percentile=99.0)
    assert set(robust) == {"logits", "x"}
    assert ranges["x"][0] <= robust["x"][0] <= robust["x"][1] <= ranges["x"][1]


# ----------------------------------------------------------------------------- unsupported ops
class _Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(torch.relu(x), dim=1)


def test_unsupported_op_fails_at_load_with_location(tmp_dir):
    mlmodel = ct.convert(torch.jit.trace(_Cumsum(), torch.zeros(1, 4)), convert_to="mlprogram",
                         inputs=[ct.TensorType(name="x", shape=(1, 4), dtype=np.float32)])
    path = tmp_dir / "cumsum.mlpackage"
    mlmodel.save(str(path))
    with pytest.raises(UnsupportedOpError) as info:
        ReferenceProgram.load(path)
    err = info.value
    assert err.op_type == "cumsum" and err.function == "main" and err.index >= 0
    message = str(err)
    assert "'cumsum'" in message and "'main'" in message and f"#{err.index}" in message
    assert err.op_name in message and err.outputs[0] in message
    assert err.supported == sorted(err.supported) and "conv" in err.supported and str(err.supported) in message
    assert isinstance(err, ValueError)


def test_op_removed_from_table_is_reported(tmp_dir, fp32_models, monkeypatch):
    _, _, mlmodel = fp32_models("resnet")
    path = tmp_dir / "resnet-no-relu.mlpackage"
    mlmodel.save(str(path))
    monkeypatch.delitem(mlprogram.OPS, "relu")
    with pytest.raises(UnsupportedOpError, match=r"unsupported Core ML op 'relu' in function 'main' at op #\d+"):
        ReferenceProgram.load(path)


def test_batch_mixing_reshape_is_an_error(tmp_dir):
    class Mixer(nn.Module):
        def forward(self, x):
            return x.reshape(4, 2) * 2

    mlmodel = ct.convert(torch.jit.trace(Mixer(), torch.zeros(1, 8)), convert_to="mlprogram",
                         inputs=[ct.TensorType(name="x", shape=(1, 8), dtype=np.float32)])
    prog = ReferenceProgram.from_model(mlmodel)
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_array_equal(list(prog.predict({"x": x}).values())[0], x.reshape(4, 2) * 2)
    with pytest.raises(ProgramExecutionError, match="batch"):
        prog.predict({"x": np.zeros((3, 8), np.float32)})
