"""Per-layer sensitivity analysis (paper Fig. 6 / NIPS'15 Fig. 5): values, byte estimates, cache; and clustering
with ``empty="reseed"`` using every centroid it is given (issue #11)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import dccomp
from dccomp.passes.cluster import cluster_weight
from dccomp.passes.entropy_code import AUTO_INDEX_BITS
from dccomp.sensitivity import Sensitivity, analyze, entropy_bits, estimate_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(300, 20)
    y = model(x).argmax(1)  # labels the model gets right: baseline accuracy 1.0
    return model, x, y


def test_values_match_a_direct_measurement_and_model_is_restored(tmp_path):
    model, x, y = _model_and_data()
    ir = dccomp.trace(model, x[:1])
    before = {k: v.clone() for k, v in ir.gm.state_dict().items()}
    s = analyze(ir, (x, y), sparsities=[0.0, 0.9], bits=[2, 4], cache=tmp_path)
    assert s.baseline == 1.0 and not s.from_cache
    assert all(torch.equal(before[k], v) for k, v in ir.gm.state_dict().items())
    # one point by hand: layer 0.weight pruned to 90%, not clustered
    p = ir.param("0.weight").detach()
    thr = p.abs().flatten().sort(descending=True).values[int(round(0.1 * p.numel())) - 1]
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m[0].weight.mul_((m[0].weight.abs() >= thr).float())
    assert s.layers["0.weight"].accuracy(0.9, None) == pytest.approx(float((m(x).argmax(1) == y).float().mean()))
    assert s.layers["0.weight"].accuracy(0.0, None) == 1.0
    # fewer bits and more pruning never cost more estimated bytes on this grid
    c = s.layers["0.weight"]
    assert c.points[-1].bytes < c.points[0].bytes
    text = s.table()
    assert "0.weight" in text and "top-1 (%) vs bits" in text


def test_cache_hit_and_key(tmp_path):
    model, x, y = _model_and_data()
    ir = dccomp.trace(model, x[:1])
    a = analyze(ir, (x, y), sparsities=[0.0, 0.5], bits=[3], cache=tmp_path)
    files = list(tmp_path.glob("sensitivity-*.json"))
    assert len(files) == 1 and a.key in files[0].name
    b = analyze(ir, (x, y), sparsities=[0.0, 0.5], bits=[3], cache=tmp_path)
    assert b.from_cache and b.to_dict() == a.to_dict()
    # other settings, other data or other weights: a new entry
    assert not analyze(ir, (x, y), sparsities=[0.0, 0.6], bits=[3], cache=tmp_path).from_cache
    assert not analyze(ir, (x[:200], y[:200]), sparsities=[0.0, 0.5], bits=[3], cache=tmp_path).from_cache
    with torch.no_grad():
        ir.param("2.bias").add_(0.01)
    assert not analyze(ir, (x, y), sparsities=[0.0, 0.5], bits=[3], cache=tmp_path).from_cache
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 4
    # a corrupt entry is measured again, not trusted
    files[0].write_text("{not json")
    with torch.no_grad():
        ir.param("2.bias").sub_(0.01)
    c = analyze(ir, (x, y), sparsities=[0.0, 0.5], bits=[3], cache=tmp_path)
    assert not c.from_cache and json.loads(files[0].read_text())["key"] == c.key


def test_bad_input():
    model, x, y = _model_and_data()
    ir = dccomp.trace(model, x[:1])
    with pytest.raises(ValueError, match="sparsities"):
        analyze(ir, (x, y), sparsities=[1.0], cache=False)
    with pytest.raises(ValueError, match="bits"):
        analyze(ir, (x, y), bits=[0], cache=False)
    with pytest.raises(TypeError, match="sensitivity data"):
        analyze(ir, "fashion-mnist", cache=False)
    clustered = dccomp.compile(model, "cluster{bits=2}").ir
    with pytest.raises(ValueError, match="before cluster"):
        analyze(clustered, (x, y), cache=False)


def test_plot_is_optional(tmp_path):
    pytest.importorskip("matplotlib")
    model, x, y = _model_and_data()
    s = analyze(dccomp.trace(model, x[:1]), (x, y), sparsities=[0.0, 0.5], bits=[3], cache=False)
    assert s.plot(tmp_path / "s.png").stat().st_size > 0


def test_byte_estimate_is_close_to_the_coded_size():
    """The estimate vs the bytes ``huffman{index_bits=auto}`` actually writes for the same state (within 15%)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(300, 200))
    c = dccomp.compile(model, "prune{sparsity=0.9},cluster{bits=4},huffman{index_bits=auto}",
                       example_inputs=torch.zeros(1, 300))
    w = c.ir.weights["0.weight"]
    est = estimate_bytes(w.mask, w.indices, w.k)
    real = w.coded.nbytes + 4 * w.k
    assert abs(est - real) / real < 0.15, (est, real)
    assert AUTO_INDEX_BITS  # the estimate tries the same widths (checked in the module)
    assert entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000), st.sampled_from(["linear", "density", "random", "kmeans++"]),
       st.floats(0.0, 0.95))
def test_reseed_uses_all_k_centroids(bits, seed, init, sparsity):
    """With >= k distinct surviving values, ``empty="reseed"`` returns exactly k = 2**bits used centroids."""
    k = 2 ** bits
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(64, 48, generator=g) - 0.5
    w = -0.05 * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace, like trained weights
    mask = w.abs() > w.abs().flatten().quantile(sparsity)
    if torch.unique(w[mask]).numel() < k:
        return
    cb, idx = cluster_weight(w, mask, bits, init=init, seed=seed, empty="reseed")
    assert cb.numel() == k
    assert set(idx[mask].tolist()) == set(range(k))
