"""Per-channel (grouped) codebooks: ``cluster{granularity=channel,group_size=S}`` end to end.

Convention (dccomp.ir.decode_codebook): a ``(G, k)`` codebook, row ``g`` serving dim-0 slices ``[g*S, (g+1)*S)``,
indices local in ``[0, k)``; unused row entries repeat the row's largest used centroid.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import dccomp
from dccomp.container import container_bytes, read_container
from dccomp.errors import PassError, VerificationError
from dccomp.format import plan_file
from dccomp.ir import decode_codebook
from dccomp.report import size_report
from passes.cluster import cluster_weight, cluster_weight_grouped
from passes.retrain import _ClusterGather, global_ids, repad_unused

pytestmark = [pytest.mark.usefixtures("always_verify"),
              pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")]


def _conv(c_out: int, c_in: int = 3, ks: int = 3, bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, ks, bias=bias))


def _brute_decode(cb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Reference decoder: slice by slice of dim 0."""
    s = idx.shape[0] // cb.shape[0]
    return torch.stack([cb[i // s][idx[i]] for i in range(idx.shape[0])])


def test_decode_codebook_forms():
    idx = torch.tensor([[0, 1], [1, 0], [2, 2], [0, 0]])
    assert torch.equal(decode_codebook(torch.tensor([1.0, 2.0, 3.0]), idx), torch.tensor([1.0, 2, 3])[idx])
    cb = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    assert torch.equal(decode_codebook(cb, idx), torch.tensor([[1.0, 2.0], [2.0, 1.0], [30.0, 30.0], [10.0, 10.0]]))
    with pytest.raises(ValueError, match="divide"):
        decode_codebook(torch.zeros(3, 2), idx)
    with pytest.raises(IndexError, match="outside"):
        decode_codebook(cb, idx + 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c_out=st.sampled_from([1, 2, 4, 6, 12]), group_pick=st.integers(0, 5), bits=st.integers(1, 5),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), coder=st.sampled_from(["huffman", "ans", "fixed"]),
       cb_dtype=st.sampled_from(["float32", "float16"]), linear=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip_exact(tmp_path, c_out, group_pick, bits, sparsity, coder, cb_dtype, linear, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, c_out)) if linear else _conv(c_out, 2, 2)
    with torch.no_grad():  # channels with very different ranges
        model[0].weight.mul_(torch.logspace(-2, 1, c_out).reshape(-1, *([1] * (model[0].weight.dim() - 1))))
    divisors = [d for d in range(1, c_out + 1) if c_out % d == 0]
    gs = divisors[group_pick % len(divisors)]
    ex = torch.randn(1, 7) if linear else torch.randn(1, 2, 5, 5)
    pipe = (f"prune{{sparsity={sparsity}}},cluster{{bits={bits},granularity=channel,group_size={gs},init=kmeans++}},"
            f"entropy-code{{coder={coder},codebook_dtype={cb_dtype}}}")
    c = dccomp.compile(model, pipe, example_inputs=ex, seed=seed, verify=True)
    w = c.ir.weights["0.weight"]
    assert w.codebook.shape == (c_out // gs, w.k) and w.k <= 2 ** bits
    assert torch.isfinite(w.codebook).all() and bool((w.codebook[:, 1:] >= w.codebook[:, :-1]).all())
    p = c.ir.param("0.weight").detach()
    live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
    assert torch.equal(p[live], _brute_decode(w.codebook, w.indices)[live])
    path = tmp_path / "m.dcc"
    n = c.save(path)
    assert n == path.stat().st_size
    fresh = copy.deepcopy(model)
    dccomp.load(path, fresh)
    for (k1, a), (k2, b) in zip(c.ir.gm.state_dict().items(), fresh.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b), k1
    _, mask, cb, idx = dccomp.load(path).decode("0.weight")
    assert torch.equal(cb, w.codebook) and torch.equal(idx, w.indices)


def test_group_size_must_divide_dim0():
    with pytest.raises(PassError, match=r"group_size must divide dim 0 of '0.weight'.*divisors of 8: \[1, 2, 4, 8\]"):
        dccomp.compile(_conv(8), "cluster{bits=3,granularity=channel,group_size=3}",
                       example_inputs=torch.randn(1, 3, 6, 6))
    with pytest.raises(PassError, match="group_size must be an integer >= 1"):
        dccomp.compile(_conv(8), "cluster{granularity=channel,group_size=0}", example_inputs=torch.randn(1, 3, 6, 6))
    with pytest.raises(PassError, match="granularity must be one of tensor, channel"):
        dccomp.compile(_conv(8), "cluster{granularity=row}", example_inputs=torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="equal"):
        cluster_weight_grouped(torch.randn(6, 4), None, 2, 4)


def test_granularity_layers_override():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8))
    c = dccomp.compile(model, 'cluster{bits=3,granularity=channel,granularity_layers={"conv2d.depthwise":"tensor"}}',
                       example_inputs=torch.randn(1, 3, 9, 9))
    assert c.ir.weights["0.weight"].codebook.shape == (8, 8)
    assert c.ir.weights["2.weight"].codebook.dim() == 1
    text = str(c.ir)
    assert "0.weight conv2d f32[8,3,3,3] clustered density=1.0000 k=8 codebooks=8 bits=3" in text
    assert "2.weight conv2d.depthwise f32[8,1,3,3] clustered density=1.0000 k=8 bits=3" in text
    from dccomp.pipeline import parse_pipeline, print_pipeline

    passes = parse_pipeline('cluster{granularity=channel,group_size=2,granularity_layers={"conv2d.*":"tensor"}}')
    assert parse_pipeline(print_pipeline(passes)) == passes


def test_padding_and_exact_small_groups():
    # group 0 has 2 distinct values, group 1 has many: row 0 keeps its 2 values exactly, padded with the largest
    w = torch.tensor([[0.5, -0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]])
    cb, idx = cluster_weight_grouped(w, None, 2, 2)
    assert cb.tolist() == [[-0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]]
    assert torch.equal(decode_codebook(cb, idx), w)
    mask = torch.tensor([[False] * 4, [True, True, False, True]])  # an all-pruned group: row of zeros
    cb, idx = cluster_weight_grouped(w, mask, 2, 2)
    assert cb[0].tolist() == [0.0, 0.0, 0.0] and cb[1].tolist() == [1.0, 2.0, 4.0]
    assert idx[0].tolist() == [0, 0, 0, 0]


def test_retrain_centroid_grad_is_per_group_cluster_sum():
    g, k, shape = 3, 4, (6, 5, 2)
    cb = torch.randn(g, k, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, k, shape)
    grad = torch.randn(shape, dtype=torch.float64)
    out = _ClusterGather.apply(cb, global_ids(cb, idx))
    assert torch.equal(out.detach(), _brute_decode(cb.detach(), idx))
    out.backward(grad)
    want = torch.zeros(g, k, dtype=torch.float64)
    s = shape[0] // g
    for i in range(shape[0]):
        for j in np.ndindex(*shape[1:]):
            want[i // s, idx[(i, *j)]] += grad[(i, *j)]
    assert torch.allclose(cb.grad, want, rtol=0, atol=1e-12)


def test_retrain_keeps_per_channel_codebooks(check_ir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    c = dccomp.compile(model, "prune{sparsity=0.5},cluster{bits=2,granularity=channel,group_size=3},"
                       "retrain{epochs=2,lr=0.05,weight_decay=0.01}",
                       train_data=torch.utils.data.TensorDataset(x, y), verify=True)
    before = dccomp.compile(model, "prune{sparsity=0.5},cluster{bits=2,granularity=channel,group_size=3}")
    for name in ("0.weight", "2.weight"):
        w, w0 = c.ir.weights[name], before.ir.weights[name]
        assert w.codebook.shape == w0.codebook.shape and w.codebook.dim() == 2
        assert torch.equal(w.indices, w0.indices) and torch.equal(w.mask, w0.mask)
        assert not torch.equal(w.codebook, w0.codebook)  # centroids trained
    check_ir(c.ir)


def test_repad_unused():
    cb = torch.tensor([[1.0, 5.0, 9.0], [2.0, 7.0, -3.0]])
    idx = torch.tensor([[0, 2], [0, 0], [1, 1], [0, 1]])
    mask = torch.tensor([[True, False], [True, True], [True, True], [True, True]])
    # row 0 (slices 0-1) uses only entry 0; row 1 uses 0 and 1
    assert repad_unused(cb, idx, mask).tolist() == [[1.0, 1.0, 1.0], [2.0, 7.0, 7.0]]


def test_codebook_bytes_counted():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 4))
    for dt, size in (("float32", 4), ("float16", 2)):
        c = dccomp.compile(model, f"cluster{{bits=3,granularity=channel,group_size=2}},"
                           f"huffman{{codebook_dtype={dt}}}")
        plan = plan_file(c.ir)
        rep = size_report(c.ir)
        rows = {r.layer: r for r in rep.rows}
        for layer in ("0", "2"):
            w = c.ir.weights[f"{layer}.weight"]
            sec = len(plan.sections[f"{layer}.weight/codebook"])
            assert sec == w.codebook.numel() * size == rows[layer].codebook_bytes
        assert rep.total_bytes == len(plan.to_bytes())


def test_bad_codebook_sections_are_format_errors(tmp_path):
    torch.manual_seed(2)
    c = dccomp.compile(nn.Sequential(nn.Linear(30, 8)), "cluster{bits=3,granularity=channel,group_size=2},huffman")
    data = plan_file(c.ir).to_bytes()
    w = c.ir.weights["0.weight"]
    g, k = w.codebook.shape

    def rebuild(edit_meta=None, edit_sections=None) -> bytes:
        ct = read_container(data)
        meta, sections = copy.deepcopy(ct.meta), {n: ct.section(n) for n in ct.section_names}
        e = next(t for t in meta["tensors"] if t["name"] == "0.weight")
        if edit_meta:
            edit_meta(e)
        if edit_sections:
            edit_sections(sections)
        return container_bytes(meta, sections, compress_manifest=True)

    def reshape(shape):
        return rebuild(lambda e: e["codebook"].__setitem__("shape", shape))

    assert g * k > 8  # 4 rows of 8 centroids
    cases = [(reshape([1, 1, g * k]), "(G, k)"),
             (rebuild(edit_sections=lambda s: s.__setitem__(
                 "0.weight/codebook", np.full(g * k, np.nan, "<f4").tobytes())), "finite"),
             (reshape([g * k, 1]), "divide")]  # G = g*k rows: more rows than 8 channels
    for bad, frag in cases:
        with pytest.raises(dccomp.FormatError, match=frag.replace("(", r"\(").replace(")", r"\)")):
            dccomp.load(bad).decode("0.weight")
    f = dccomp.load(data)
    assert f.info("0.weight")["codebook"]["shape"] == [g, k]


def test_verifier_rejects_bad_groups():
    c = dccomp.compile(nn.Sequential(nn.Linear(6, 4)), "cluster{bits=2,granularity=channel}")
    w = c.ir.weights["0.weight"]
    w.codebook = torch.cat([w.codebook, w.codebook[:1]])  # 5 rows for 4 channels
    with pytest.raises(VerificationError, match="divides dim 0"):
        dccomp.verify(c.ir)


def test_per_channel_error_not_above_per_tensor():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 16, 3, 3, generator=g) * torch.logspace(-2, 0.5, 32).reshape(-1, 1, 1, 1)
    mask = torch.rand(w.shape, generator=g) > 0.3
    for bits in (2, 3, 4):
        for init in ("linear", "kmeans++"):
            cb1, i1 = cluster_weight(w, mask, bits, init)
            cb2, i2 = cluster_weight_grouped(w, mask, bits, 32, init)
            e1 = ((w - cb1[i1]) * mask).pow(2).sum(dim=(1, 2, 3))
            e2 = ((w - decode_codebook(cb2, i2)) * mask).pow(2).sum(dim=(1, 2, 3))
            assert float(e2.sum()) <= float(e1.sum()), (bits, init)
            energy = (w * mask).pow(2).sum(dim=(1, 2, 3))  # relative error per channel, averaged
            rel1, rel2 = float((e1 / energy).mean()), float((e2 / energy).mean())
            assert rel2 < 0.1 * rel1, (bits, init, rel1, rel2)  # channels spanning 300x: far better per channel



def test_sync_and_inspect(tmp_path, capsys):
    from dccomp.cli import main
    from dccomp.errors import StaleStateError

    torch.manual_seed(4)
    c = dccomp.compile(nn.Sequential(nn.Linear(30, 8)), "cluster{bits=3,granularity=channel,group_size=2},huffman")
    path = tmp_path / "m.dcc"
    c.save(path)  # the live model equals the IR: nothing to refuse
    main(["inspect", str(path)])
    w = c.ir.weights["0.weight"]
    assert f"k={w.k} codebooks={w.codebook.shape[0]}" in capsys.readouterr().out
    with torch.no_grad():
        live = dict(c.named_parameters())
        key = next(k for k in live if k.endswith("0.weight"))
        other = next(float(v) for v in w.codebook[-1] if not bool((w.codebook[0] == v).any()))
        live[key][0, 0] = other  # a centroid of the last row, not of row 0's
    with pytest.raises(StaleStateError, match="no longer one of the k="):
        c.save(path)
