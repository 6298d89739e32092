"""The data-aware ``gptq`` pass, its GPTQ assignment, the layer-input Hessians and weighted k-means."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dccomp
from dccomp.errors import PassError
from dccomp.gptq import gptq_assign, nearest_centroid, output_error
from dccomp.hessian import input_hessians
from dccomp.kmeans import kmeans_1d


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.same = nn.Conv2d(16, 8, 3, padding="same", dilation=2)
        self.refl = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.extra = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.pw(self.dw(x)))
        x = self.refl(self.same(x))
        x = F.conv2d(x, self.extra, padding=1)
        return self.fc(x.flatten(1))


def _conv_out(model, name, x, e):
    """||layer(x; weight=E, no bias)||^2 for the layer called ``name`` on its own input x."""
    m = dict(model.named_modules())[name]
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        pad = 0
    else:
        pad = m.padding
    return float((F.conv2d(x, e, None, m.stride, pad, m.dilation, m.groups).double() ** 2).sum())


def test_hessian_equals_output_energy_of_every_conv_variant():
    """sum_g tr(E_g H_g E_g^T) == ||conv(x, E)||^2 for a random E: the identity that defines H."""
    torch.manual_seed(0)
    model = _CNN().eval()
    x = torch.randn(4, 3, 16, 16)
    ir = dccomp.trace(model, x)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    names = [w for w in ir.weights if w != "extra"]
    hs = input_hessians(ir, names, [x[:2], x[2:]])
    for layer in ("c1", "dw", "pw", "same", "refl"):
        w = dict(model.named_modules())[layer].weight
        e = torch.randn_like(w)
        lh = hs[f"{layer}.weight"]
        g, d = lh.h.shape[0], lh.h.shape[1]
        eg = e.double().reshape(g, -1, d)
        energy = float(torch.einsum("grd,gde,gre->", eg, lh.h, eg))
        assert energy == pytest.approx(_conv_out(model, layer, inputs[layer], e), rel=1e-4), layer
    assert hs["dw.weight"].h.shape == (8, 9, 9)


def test_hessian_of_linear_and_functional_conv():
    torch.manual_seed(1)
    model = _CNN().eval()
    x = torch.randn(3, 3, 16, 16)
    ir = dccomp.trace(model, x)
    hs = input_hessians(ir, ["fc.weight", "extra"], [x])
    feats = {}
    h = model.fc.register_forward_pre_hook(lambda m, a: feats.__setitem__("fc", a[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    f = feats["fc"].double()
    assert torch.allclose(hs["fc.weight"].h[0], f.T @ f, rtol=1e-5, atol=1e-6)
    assert hs["extra"].h.shape == (1, 72, 72)


def test_gptq_lowers_output_error_against_nearest_centroid():
    gains = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(1, 16, 24, generator=g, dtype=torch.float64)
        x = torch.randn(200, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g,
                                                                                 dtype=torch.float64)
        h = (x.T @ x).unsqueeze(0)
        book = torch.linspace(-2, 2, 8, dtype=torch.float64)
        books = book.expand(1, 16, 8)
        near = torch.stack([nearest_centroid(w[:, :, j], books) for j in range(24)], -1)
        idx = gptq_assign(w, h, books)
        gains.append(output_error(w, book[idx], h) / output_error(w, book[near], h))
    assert np.mean(gains) < 0.8 and max(gains) < 1.0


def test_gptq_exact_codebook_mask_and_blocks():
    g = torch.Generator().manual_seed(3)
    vals = torch.tensor([-1.0, -0.25, 0.0, 0.5, 2.0], dtype=torch.float64)
    w = vals[torch.randint(0, 5, (2, 3, 6), generator=g)]
    x = torch.randn(2, 50, 6, generator=g, dtype=torch.float64)
    h = x.transpose(1, 2) @ x
    books = vals.expand(2, 3, 5)
    idx = gptq_assign(w, h, books)
    assert torch.equal(vals[idx], w)  # every value is a centroid: no error, nothing to compensate
    mask = torch.rand(w.shape, generator=g) > 0.5
    w2 = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    idx_m = gptq_assign(w2, h, books, mask)
    assert (idx_m[~mask] == 0).all()
    assert torch.equal(gptq_assign(w2, h, books, mask, block=1), gptq_assign(w2, h, books, mask, block=128))
    assert torch.equal(nearest_centroid(torch.tensor([0.5]), torch.tensor([[0.0, 1.0]])), torch.tensor([0]))
    with pytest.raises(ValueError, match="damp"):
        gptq_assign(w2, h, books, damp=0)
    with pytest.raises(ValueError, match="do not match"):
        gptq_assign(w2, h[:, :3, :3], books)


def test_weighted_kmeans():
    x = np.array([0.0, 0.0, 0.0, 10.0])
    cb, lab = kmeans_1d(x, 1, sample_weight=np.array([1.0, 1.0, 1.0, 0.0]))
    assert cb.tolist() == [0.0] and lab.tolist() == [0, 0, 0, 0]
    rng = np.random.default_rng(0)
    v = rng.laplace(size=2000)
    a = kmeans_1d(v, 8, init="kmeans++", seed=1)
    b = kmeans_1d(v, 8, init="kmeans++", seed=1, sample_weight=np.ones(2000))
    assert np.allclose(a[0], b[0], atol=1e-6) and np.mean(a[1] == b[1]) > 0.99
    for bad in (np.ones(3), -np.ones(2000), np.full(2000, np.nan)):
        with pytest.raises(ValueError, match="sample_weight"):
            kmeans_1d(v, 8, sample_weight=bad)


class _EmbMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids).mean(1))))


def test_pass_beats_cluster_falls_back_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = _CNN().eval()
    x = torch.randn(32, 3, 16, 16)
    ref = model(x).detach()
    out = {}
    for pipe in ("gptq{bits=3},huffman", "cluster{bits=3,init=kmeans++,empty=reseed},huffman"):
        c = dccomp.compile(model, pipe, example_inputs=x[:1], train_data=x, verify=True)
        out[pipe] = float(((c.eval()(x) - ref) ** 2).mean())
    assert out["gptq{bits=3},huffman"] < out["cluster{bits=3,init=kmeans++,empty=reseed},huffman"]
    c = dccomp.compile(model, "prune{sparsity=0.5},gptq{bits=3,granularity=channel}", example_inputs=x[:1],
                       train_data=x, verify=True)
    for w in c.ir:
        assert (c.ir.param(w.name)[~w.mask] == 0).all()
    path = tmp_path / "m.dcc"
    c.save(path)
    back = dccomp.load(path, model=_CNN())
    assert torch.equal(back(x), c.eval()(x))
    ids = torch.randint(0, 50, (20, 4))
    e = dccomp.compile(_EmbMLP(), "gptq{bits=2}", example_inputs=ids[:1], train_data=ids, verify=True)
    rec = next(v for k, v in e.records.items() if k.startswith("gptq"))
    assert set(rec["fallback"]) == {"emb.weight"} and set(rec["error_ratio"]) == {"fc1.weight", "fc2.weight"}


def test_pass_errors():
    with pytest.raises(PassError, match="train_data"):
        dccomp.compile(_CNN(), "gptq{bits=3}", example_inputs=torch.randn(1, 3, 16, 16))
    for bad, what in (("gptq{samples=0}", "samples"), ("gptq{damp=0}", "damp"), ("gptq{damp=1.5}", "damp")):
        with pytest.raises(PassError, match=what):
            dccomp.compile(_CNN(), bad, example_inputs=torch.randn(1, 3, 16, 16), train_data=torch.randn(2, 3, 16, 16))
