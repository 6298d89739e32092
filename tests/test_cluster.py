"""Property tests of the ``cluster`` pass (weight sharing by per-layer 1-D k-means, Deep Compression §3)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import dccomp
from dccomp import PassContext, PassManager, State
from dccomp.passes.cluster import Cluster, cluster_weight, default_bits
from dccomp.passes.prune import Prune

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Net(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc1 = nn.Linear(10, h)
        self.fc2 = nn.Linear(h, 3)

    def forward(self, x, z):
        return self.conv(x).sum() + self.fc2(self.fc1(z))


def _run(model, passes, **ctx):
    return PassManager(passes).run(dccomp.trace(model), PassContext(**ctx))


@SETTINGS
@given(seed=st.integers(0, 40), h=st.integers(1, 12), sparsity=st.floats(0, 1), bits=st.integers(1, 6),
       init=st.sampled_from(["linear", "density", "random", "kmeans++"]))
def test_cluster_invariants(check_ir, seed, h, sparsity, bits, init):
    torch.manual_seed(seed)
    model = Net(h)
    ir0 = _run(model, [Prune(sparsity=sparsity)])
    ir = PassManager([Cluster(bits=bits, init=init)]).run(ir0)
    check_ir(ir)
    for w in ir:
        p = ir.param(w.name).detach()
        before = ir0.param(w.name).detach()
        assert w.state == State.CLUSTERED
        assert torch.equal(w.mask, ir0.weights[w.name].mask), "cluster must not change the mask"
        # at most 2**bits distinct non-zero values, and the codebook has at most 2**bits entries
        assert w.k <= 2 ** bits
        assert torch.unique(p[p != 0]).numel() <= 2 ** bits
        # zeros exactly where the mask says (surviving weights are never turned into 0 here: the
        # weights are continuous, so no centroid is exactly 0)
        assert torch.equal(p != 0, w.mask)
        # weights == codebook[indices] at every surviving position, indices 0 where pruned
        assert torch.equal(p[w.mask], w.codebook[w.indices[w.mask]])
        assert torch.count_nonzero(w.indices[~w.mask]) == 0
        assert w.codebook.dtype == torch.float32 and bool((w.codebook[1:] > w.codebook[:-1]).all())
        # each weight goes to its nearest centroid
        if w.mask.any():
            live = before[w.mask].double()
            d = (live[:, None] - w.codebook.double()[None, :]).abs()
            own = d.gather(1, w.indices[w.mask][:, None]).squeeze(1)
            assert bool((own <= d.min(1).values + 1e-12).all())
        # k' is min(2**bits, #distinct surviving values) for a layer with few values; bits covers k'
        assert w.bits >= (w.k - 1).bit_length() if w.k > 1 else w.bits >= 1


def test_default_bits_and_layer_overrides(check_ir):
    torch.manual_seed(0)
    model = Net(40)
    ir = _run(model, [Cluster(layers={"fc2": 2})])
    check_ir(ir)
    assert default_bits(ir.weights["conv.weight"]) == 8 and default_bits(ir.weights["fc1.weight"]) == 5
    assert ir.weights["conv.weight"].k <= 256 and ir.weights["conv.weight"].k > 32  # 72 distinct weights
    assert ir.weights["fc1.weight"].k == 32  # 400 weights, 5 bits
    assert ir.weights["fc2.weight"].k == 4


def test_exclude_leaves_weight_dense_and_records_skip():
    torch.manual_seed(0)
    model = Net(5)
    before = dccomp.trace(model).param("fc1.weight").detach().clone()
    ir = _run(model, "cluster{bits=2,exclude=fc1}")
    assert ir.weights["fc1.weight"].state == State.DENSE
    assert torch.equal(ir.param("fc1.weight").detach(), before)
    assert "fc1.weight" in ir.skipped and "exclude" in ir.skipped["fc1.weight"]
    assert ir.weights["fc2.weight"].state == State.CLUSTERED


def test_cluster_is_deterministic_for_every_init():
    torch.manual_seed(1)
    model = Net(16)
    for init in ("linear", "density", "random", "kmeans++"):
        a = _run(model, [Cluster(bits=3, init=init)], seed=5)
        b = _run(model, [Cluster(bits=3, init=init)], seed=5)
        for w in a:
            assert torch.equal(w.codebook, b.weights[w.name].codebook)
            assert torch.equal(w.indices, b.weights[w.name].indices)


def test_fully_pruned_layer_gets_empty_codebook(check_ir):
    torch.manual_seed(0)
    ir = _run(Net(4), "prune{sparsity=0.5,layers={\"fc2\":1.0}},cluster{bits=3}")
    check_ir(ir)
    w = ir.weights["fc2.weight"]
    assert w.k == 0 and not w.mask.any() and torch.count_nonzero(ir.param("fc2.weight")) == 0


def test_cluster_weight_exact_when_few_values():
    v = torch.tensor([[0.5, -0.25, 0.5], [0.0, 1.5, -0.25]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    cb, idx = cluster_weight(v, mask, bits=2)
    assert torch.equal(cb, torch.tensor([-0.25, 0.5, 1.5]))
    assert torch.equal(cb[idx[mask]], v[mask]) and idx[1, 0] == 0


@pytest.mark.parametrize("text, match", [
    ("cluster{bits=0}", r"bits must be an integer in \[1, 16\], got 0"),
    ("cluster{bits=17}", r"bits must be an integer in \[1, 16\], got 17"),
    ("cluster{bits=2.5}", r"bits must be an integer"),
    ("cluster{layers={\"fc1\":0}}", r"bits must be an integer in \[1, 16\], got 0"),
    ("cluster{init=uniform}", r"init must be one of linear, density, random, kmeans\+\+, optimal, got 'uniform'"),
])
def test_option_errors_from_pipeline_text(text, match):
    with pytest.raises(dccomp.PassError, match=match) as ei:
        dccomp.parse_pipeline(text)
    assert "'cluster'" in str(ei.value)
    assert isinstance(ei.value.__cause__, ValueError)


def test_reseed_uses_every_centroid_on_a_pruned_layer():
    """Linear init on a 90%-pruned layer leaves most of 32 centroids in the empty middle (dropped);
    empty="reseed" keeps all 32 and lowers the weight error (issue: clustering that uses the bits it is given)."""
    import dccomp

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512))
    x = torch.zeros(1, 512)
    err = {}
    for empty in ("drop", "reseed"):
        c = dccomp.compile(model, f"prune{{sparsity=0.9}},cluster{{bits=5,empty={empty}}}", example_inputs=x)
        w = c.ir.weights["0.weight"]
        err[empty] = (c.ir.param("0.weight") - model[0].weight * w.mask).abs()[w.mask].mean().item()
        if empty == "drop":
            assert w.k < 20
        else:
            assert w.k == 32
    assert err["reseed"] < 0.5 * err["drop"]
