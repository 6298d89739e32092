"""Inputs that broke (or could break) other Deep Compression implementations, one test each."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dccomp
from dccomp import PassContext, PassManager, State
from dccomp.passes.cluster import Cluster
from dccomp.passes.prune import Prune
from dccomp.passes.retrain import Retrain

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")


def _run(ir_or_model, passes, **ctx):
    ir = ir_or_model if isinstance(ir_or_model, dccomp.IR) else dccomp.trace(ir_or_model)
    return PassManager(passes).run(ir, PassContext(**ctx))


# -- 1. optimizer state must not resurrect pruned weights ---------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_zero_under_momentum_and_weight_decay(optimizer, check_ir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 4))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 100, generator=g), torch.randint(0, 4, (80,), generator=g)
    tr = dccomp.Trainer((x, y), batch_size=8, max_batches=10)
    opts = dict(optimizer=optimizer, lr=0.01, momentum=0.9, weight_decay=1e-4)
    # train dense (builds momentum / Adam moments everywhere), prune 80%, then 10 more steps
    ir = _run(model, [Retrain(epochs=1, **opts), Prune(sparsity=0.8), Retrain(epochs=1, **opts)], trainer=tr)
    check_ir(ir)
    w = ir.weights["0.weight"]
    p = ir.param("0.weight").detach()
    assert int(w.mask.sum()) == 2000
    assert torch.count_nonzero(p[~w.mask]) == 0, "a pruned weight came back to life"
    assert torch.count_nonzero(p[w.mask]) == 2000
    # the same with pruning inside the iterative prune pass (retraining between steps)
    ir = _run(model, [Retrain(epochs=1, **opts), Prune(sparsity=0.8, steps=2, epochs=1, lr=0.01,
                                                       optimizer=optimizer)], trainer=tr)
    check_ir(ir)
    for w in ir:
        assert torch.count_nonzero(ir.param(w.name)[~w.mask]) == 0


# -- 2. depthwise conv + BatchNorm ---------------------------------------------------------------------------
class DWBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(32, 32, 3, groups=32, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.act = nn.ReLU()
        self.pw = nn.Conv2d(32, 64, 1)

    def forward(self, x):
        return self.pw(self.act(self.bn(self.dw(x))))


def test_depthwise_conv_is_pruned_and_batchnorm_stays_dense(check_ir):
    torch.manual_seed(0)
    model = DWBlock()
    with torch.no_grad():  # non-trivial BN parameters, so "unchanged" means something
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    ir0 = dccomp.trace(model, torch.randn(1, 32, 8, 8))
    bn_before = {n: ir0.param(n).detach().clone() for n in ("bn.weight", "bn.bias")}
    ir = PassManager([Prune(sparsity=0.8)]).run(ir0)
    check_ir(ir)
    assert set(ir.weights) == {"dw.weight", "pw.weight"}
    dw = ir.weights["dw.weight"]
    assert dw.groups == 32 and dw.kind == "conv2d.depthwise"
    assert dw.state == State.MASKED and abs(float(dw.mask.float().mean()) - 0.2) <= 1 / 288
    assert int(dw.mask.sum()) == 288 - round(0.8 * 288)
    assert abs(float(ir.weights["pw.weight"].mask.float().mean()) - 0.2) <= 1 / 2048
    dense = {d.name: d.reason for d in ir.dense}
    assert dense.get("bn.weight") == "normalization" and dense.get("bn.bias") == "bias"
    for n, v in bn_before.items():
        assert torch.equal(ir.param(n).detach(), v)
    # the compiled model runs and equals the IR's graph module
    x = torch.randn(2, 32, 8, 8)
    out = dccomp.compile(ir)(x)
    ir.gm.eval()
    torch.testing.assert_close(out, ir.gm(x))


# -- 3. fewer weights than centroids -------------------------------------------------------------------------
def test_tiny_layer_clustered_with_more_centroids_than_weights(check_ir):
    torch.manual_seed(0)
    model = nn.Conv2d(1, 16, 1)
    before = model.weight.detach().clone()
    ir = _run(model, [Cluster(bits=5)])
    check_ir(ir)
    w = ir.weights["weight"]
    p = ir.param("weight").detach()
    assert torch.equal(p, before), "with k=32 > 16 weights every weight must be kept exactly"
    assert torch.count_nonzero(p) == 16
    assert w.k == 16 and torch.equal(w.codebook, torch.sort(before.flatten()).values)
    assert 4 <= w.bits <= 5


# -- 4. 288 weights, 256 centroids -----------------------------------------------------------------------------
def test_depthwise_288_weights_8_bits_no_nan_and_deterministic(check_ir):
    torch.manual_seed(0)
    model = nn.Conv2d(32, 32, 3, groups=32)
    a = _run(model, [Cluster(bits=8)])
    b = _run(model, [Cluster(bits=8)])
    check_ir(a)
    wa, wb = a.weights["weight"], b.weights["weight"]
    assert not torch.isnan(wa.codebook).any() and not torch.isnan(a.param("weight")).any()
    assert 1 < wa.k <= 256
    assert torch.equal(wa.codebook, wb.codebook) and torch.equal(wa.indices, wb.indices)
    assert torch.equal(a.param("weight"), b.param("weight"))
    # also after pruning: 58 survivors < 256 centroids, kept exactly
    ir = _run(model, [Prune(sparsity=0.8), Cluster(bits=8)])
    check_ir(ir)
    orig = dccomp.trace(model).param("weight").detach()
    w = ir.weights["weight"]
    assert w.k == int(w.mask.sum()) == 58
    assert torch.equal(ir.param("weight")[w.mask], orig[w.mask])


# -- other layer kinds -----------------------------------------------------------------------------------------
class AllKinds(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.c1 = nn.Conv1d(8, 6, 3)
        self.c3 = nn.Conv3d(2, 4, 3)
        self.ct = nn.ConvTranspose2d(4, 3, 3)
        self.fc = nn.Linear(6, 5)

    def forward(self, tok, vol, img):
        e = self.emb(tok).transpose(1, 2)  # (N, 8, L)
        a = self.c1(e).mean(-1)  # (N, 6)
        b = self.c3(vol).mean((2, 3, 4)).sum(1, keepdim=True)
        c = self.ct(img).mean((1, 2, 3)).unsqueeze(1)
        return self.fc(a) + b + c


def test_conv1d_conv3d_convtranspose_embedding_pruned_and_clustered(check_ir):
    torch.manual_seed(0)
    model = AllKinds()
    inputs = (torch.randint(0, 30, (2, 7)), torch.randn(2, 2, 5, 5, 5), torch.randn(2, 4, 6, 6))
    ir = dccomp.trace(model, inputs)
    kinds = {w.name: w.kind for w in ir}
    assert kinds == {"emb.weight": "embedding", "c1.weight": "conv1d", "c3.weight": "conv3d",
                     "ct.weight": "conv_transpose2d", "fc.weight": "linear"}
    ir = PassManager("prune{sparsity=0.6},cluster{bits=3}").run(ir)
    check_ir(ir)
    for w in ir:
        p = ir.param(w.name).detach()
        assert w.state == State.CLUSTERED, w.name
        assert abs(int(w.mask.sum()) - 0.4 * p.numel()) <= 1, w.name
        assert w.k <= 8 and torch.unique(p[w.mask]).numel() == w.k
        assert torch.equal(p != 0, w.mask)
    out = dccomp.compile(ir)(*inputs)
    assert out.shape == (2, 5) and torch.isfinite(out).all()


# -- tied weights -----------------------------------------------------------------------------------------------
class TiedLM(nn.Module):
    def __init__(self, vocab: int = 40, dim: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tok):
        return self.head(torch.tanh(self.mix(self.emb(tok)))).mean(1)


def test_tied_weight_stays_tied_and_is_compressed_once(check_ir):
    torch.manual_seed(0)
    model = TiedLM()
    g = torch.Generator().manual_seed(0)
    tok, y = torch.randint(0, 40, (32, 5), generator=g), torch.randint(0, 40, (32,), generator=g)
    c = dccomp.compile(model, "prune{sparsity=0.5},retrain{epochs=1,lr=0.1},cluster{bits=3},retrain{epochs=1,lr=0.1}",
                       example_inputs=tok, train_data=(tok, y), trainer=None, verify=True)
    ir = c.ir
    check_ir(ir)
    assert ir.gm.emb.weight is ir.gm.head.weight, "the tie was broken"
    assert list(ir.weights) == ["emb.weight", "mix.weight"]  # the tied weight is one IR weight
    w = ir.weights["emb.weight"]
    assert set(w.users) == {"emb", "head"}
    assert "head.weight" not in [d.name for d in ir.dense]
    assert w.state == State.CLUSTERED and w.k <= 8
    p = ir.param("emb.weight").detach()
    assert torch.equal(p[w.mask], w.codebook[w.indices[w.mask]]) and torch.count_nonzero(p[~w.mask]) == 0
    assert abs(float(w.mask.float().mean()) - 0.5) <= 1 / p.numel()
    # retraining moved the shared centroids and both uses see the same values
    lowered = c.lowered
    assert lowered.emb.weight is lowered.head.weight
    torch.testing.assert_close(c(tok), ir.gm(tok))
    assert model.head.weight is model.emb.weight  # the user's model is untouched and still tied
    assert not torch.equal(model.emb.weight.detach(), p)
