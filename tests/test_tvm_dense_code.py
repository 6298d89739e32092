"""Dense-code layout (4/8-bit cluster index per weight) kernels, per-channel (G, k) codebooks in every compressed
kernel, and the per-layer layout choice (weights=small|fast|balanced, max_bytes_ratio)."""
import pytest

tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

from dccomp.backends.tvm import TVMBackend  # noqa: E402
from dccomp.backends.tvm import conv_kernels as CK  # noqa: E402
from dccomp.backends.tvm import kernels as K  # noqa: E402
from dccomp.backends.tvm.dense_code import (DenseCodes, decode_codebook, dense_code_conv2d_func,  # noqa: E402
                                            dense_code_linear_func)
from dccomp.backends.tvm.embedding_kernels import embedding_csr_func  # noqa: E402
from dccomp.backends.tvm.layouts import Candidate, choose  # noqa: E402
from dccomp.backends.tvm.lower import device_source  # noqa: E402
from dccomp.backends.tvm.packed import PackedCSR  # noqa: E402
from dccomp.backends.tvm.targets import resolve_target  # noqa: E402

HOST = resolve_target("llvm", detect_cpu=True)  # the ISA-tiled kernels the backend builds here
SETTINGS = dict(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(f, name, args, out_shape):
    lib = tvm.compile(f, target=tvm.target.Target(HOST))
    y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib[name](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], y)
    return y.numpy()


def _close(y, ref):
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _clustered(rng, shape, k, cb_groups, density, zero_centroid=False):
    """(indices, (G, k) codebook, mask, decoded masked weight) of a random clustered weight."""
    idx = rng.integers(0, k, shape)
    cb = np.sort(rng.standard_normal((cb_groups, k)).astype(np.float32), axis=1)
    if zero_centroid:
        cb[:, 0] = 0
    mask = rng.random(shape) < density
    return idx, cb, mask, np.where(mask, decode_codebook(cb, idx), 0).astype(np.float32)


@st.composite
def conv_layers(draw):
    """A random conv layer: dense, grouped, depthwise (with channel multiplier) or 1x1; strided, padded, dilated."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "pointwise"]))
    if kind == "depthwise":
        groups, icg, m = draw(st.integers(1, 6)), 1, draw(st.integers(1, 2))
    else:
        groups = 1 if kind in ("dense", "pointwise") else draw(st.integers(2, 3))
        icg, m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kh, kw = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sh, sw, dh, dw = (draw(st.integers(1, 2)) for _ in range(4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    return dict(n=draw(st.integers(1, 2)), c=icg * groups, h=h, w=w, oc=m * groups, kh=kh, kw=kw, stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), groups=groups)


@settings(**SETTINGS)
@given(L=conv_layers(), k=st.sampled_from([1, 3, 15, 16, 17, 64, 255]), density=st.sampled_from([0.3, 1.0]),
       per_channel=st.booleans(), zero=st.booleans(), relu=st.sampled_from([False, True, "relu6"]),
       seed=st.integers(0, 2**16))
def test_dense_code_conv2d_matches_torch(L, k, density, per_channel, zero, relu, seed):
    rng = np.random.default_rng(seed)
    shape = (L["oc"], L["c"] // L["groups"], L["kh"], L["kw"])
    idx, cb, mask, wd = _clustered(rng, shape, k, L["oc"] if per_channel else 1, density, zero)
    dc = DenseCodes.from_codebook(idx, cb if per_channel else cb[0], mask)
    assert dc is not None  # k <= 255: a spare code for pruned weights always fits 8 bits
    assert dc.bits == max(1, (dc.k - 1).bit_length())
    x = rng.standard_normal((L["n"], L["c"], L["h"], L["w"])).astype(np.float32)
    b = rng.standard_normal(L["oc"]).astype(np.float32)
    f = dense_code_conv2d_func(HOST, k=dc.k, cb_groups=dc.groups, bits=dc.bits, relu=relu, name="dc", **L)
    oh, ow = CK.conv2d_out_shape(L["h"], L["w"], L["kh"], L["kw"], L["stride"], L["padding"], L["dilation"])
    y = _run(f, "dc", [x] + dc.arrays() + [b], (L["n"], L["oc"], oh, ow))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), torch.from_numpy(b), L["stride"], L["padding"],
                   L["dilation"], L["groups"])
    ref = ref.clamp(0, 6) if relu == "relu6" else (ref.relu() if relu else ref)
    _close(y, ref.numpy())


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), k=st.integers(1, 256), groups=st.sampled_from([1, "rows"]),
       density=st.sampled_from([0.0, 0.5, 1.0]), zero=st.booleans(), seed=st.integers(0, 2**16))
def test_dense_codes_round_trip(rows, cols, k, groups, density, zero, seed):
    """Decoding the codes gives the masked decoded weight exactly; codes of ceil(log2(kc)) bits pack into a bit
    stream with no row padding (odd element counts included); pruned weights only add a code when no 0 centroid
    exists."""
    rng = np.random.default_rng(seed)
    g = rows if groups == "rows" else 1
    idx, cb, mask, wd = _clustered(rng, (rows, cols), k, g, density, zero)
    dc = DenseCodes.from_codebook(idx, cb, mask)
    pruned = not mask.all()
    kc = k + (1 if pruned and not zero else 0)
    if kc > 256:
        assert dc is None and DenseCodes.nbytes_for(rows, cols, k, g, pruned, zero) is None
        return
    assert dc.k == kc and dc.groups == g
    assert dc.bits == max(1, (kc - 1).bit_length())
    nb = -(-rows * cols * dc.bits // 8)  # 4/8 bits: exact; other widths: whole 32-bit words plus one
    assert dc.codes.nbytes == (nb if dc.bits in (4, 8) else 4 * (-(-nb // 4) + 1))
    assert dc.nbytes == DenseCodes.nbytes_for(rows, cols, k, g, pruned, zero)
    np.testing.assert_array_equal(dc.to_dense(), wd)


def test_dense_codes_rejects_and_declines():
    rng = np.random.default_rng(0)
    idx, cb, mask, _ = _clustered(rng, (4, 5), 256, 1, 0.5)
    assert DenseCodes.from_codebook(idx, cb, mask) is None  # 257 codes needed
    assert DenseCodes.from_codebook(idx, cb, None).bits == 8
    assert DenseCodes.from_codebook(idx % 20, cb[:, :20], None, bits=4) is None  # 20 codes in 4 bits
    with pytest.raises(ValueError, match="bits"):
        DenseCodes.from_codebook(idx, cb, None, bits=9)
    with pytest.raises(ValueError, match="does not fit"):
        DenseCodes.from_codebook(idx, np.zeros((3, 256), np.float32), None)
    with pytest.raises(ValueError, match="do not fit"):
        dense_code_linear_func(HOST, 4, 5, 1, k=40, bits=4)
    with pytest.raises(NotImplementedError, match="CPU"):
        dense_code_linear_func({"kind": "cuda", "arch": "sm_90"}, 4, 5, 1, k=4)


@pytest.mark.parametrize("n_out,n_in,batch,k,per_channel", [(10, 37, 1, 16, False), (33, 64, 3, 100, True),
                                                            (8, 17, 2, 5, True), (1, 1, 1, 1, False)])
def test_dense_code_linear_matches_numpy(n_out, n_in, batch, k, per_channel):
    rng = np.random.default_rng(n_out)
    idx, cb, mask, wd = _clustered(rng, (n_out, n_in), k, n_out if per_channel else 1, 0.6)
    dc = DenseCodes.from_codebook(idx, cb, mask)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    f = dense_code_linear_func(HOST, n_out, n_in, batch, k=dc.k, cb_groups=dc.groups, bits=dc.bits, relu=True,
                               name="dl")
    _close(_run(f, "dl", [x] + dc.arrays() + [b], (batch, n_out)), np.maximum(x @ wd.T + b, 0))


@pytest.mark.parametrize("batch", [1, 5])
def test_per_channel_csr_linear(batch):
    rng = np.random.default_rng(batch)
    idx, cb, mask, wd = _clustered(rng, (70, 50), 16, 7, 0.3)
    csr = K.CSRCodebook.from_codebook(idx, cb, mask)
    assert csr.groups == 7 and csr.k == 16
    np.testing.assert_array_equal(csr.to_dense(), wd)
    x = rng.standard_normal((batch, 50)).astype(np.float32)
    y = K.build_sparse_linear(csr, batch=batch, target=HOST)(x)
    _close(y, x @ wd.T)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_per_channel_sparse_conv(packed, groups):
    rng = np.random.default_rng(groups)
    L = dict(n=1, c=8, h=9, w=7, oc=8, kh=3, kw=3, stride=(2, 1), padding=(1, 1), dilation=(1, 1), groups=groups)
    idx, cb, mask, wd = _clustered(rng, (8, 8 // groups, 3, 3), 12, 8, 0.4)
    csr = CK.conv_csr(idx, cb, mask, groups)
    x = rng.standard_normal((1, 8, 9, 7)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    if packed:
        p = PackedCSR.from_csr(csr)
        np.testing.assert_array_equal(p.to_dense(), wd.reshape(8, -1))
        f = CK.sparse_conv2d_func(HOST, nnz=p.entries.shape[0], k=p.k, col_dtype=str(p.entries.dtype),
                                  code_dtype=str(p.entries.dtype), packed=(p.code_bits, (1 << p.gap_bits) - 1),
                                  cb_groups=p.groups, name="sc", **L)
        rowptr, entries, flat = p.arrays()
        args = [x, rowptr, entries, entries, flat, b]
    else:
        f = CK.sparse_conv2d_func(HOST, nnz=csr.col.shape[0], k=csr.k, col_dtype=str(csr.col.dtype),
                                  code_dtype=str(csr.code.dtype), cb_groups=csr.groups, name="sc", **L)
        args = [x] + csr.arrays() + [b]
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), torch.from_numpy(b), (2, 1), (1, 1), 1, groups)
    _close(_run(f, "sc", args, tuple(ref.shape)), ref.numpy())


def test_per_channel_embedding():
    rng = np.random.default_rng(3)
    idx, cb, mask, wd = _clustered(rng, (12, 6), 8, 4, 0.5)
    csr = K.CSRCodebook.from_codebook(idx, cb, mask)
    ids = np.array([0, 11, 5, 5, 3], np.int64)
    f = embedding_csr_func(HOST, 5, 12, 6, csr.col.shape[0], csr.k, col_dtype=str(csr.col.dtype),
                           code_dtype=str(csr.code.dtype), cb_groups=csr.groups, name="emb")
    lib = tvm.compile(f, target=tvm.target.Target(HOST))
    y = tvm.runtime.tensor(np.zeros((5, 6), np.float32))
    lib["emb"](*[tvm.runtime.tensor(a) for a in [ids] + csr.arrays()], y)
    np.testing.assert_array_equal(y.numpy(), wd[ids])


# -- layout choice -------------------------------------------------------------------------------------------
def _cand(layout, nbytes):
    return Candidate(layout, nbytes, lambda: None, lambda: [])


def test_choose_by_mode():
    cands = [_cand("packed", 300), _cand("code4", 100), _cand("dense", 800)]
    rule = lambda d: d >= 0.5  # noqa: E731

    def pick(opts, d=0.6, timer=None, coded=None):
        return choose(cands, opts, d, rule, timer, coded, 0.3)[0].layout

    assert pick({"weights": "small"}) == "code4"
    assert pick({}) == "code4"                              # rule says dense: the dense-code layout
    assert pick({}, d=0.1) == "packed"                      # rule says sparse
    assert pick({"kernel": "dense"}) == "dense" and pick({"kernel": "sparse"}) == "packed"
    seen = []

    def timer(pool):
        seen.append([c.layout for c in pool])
        return len(pool) - 1

    assert pick({}, d=0.6, timer=timer) == "dense"          # near the crossover: all three timed, by size
    assert seen[-1] == ["code4", "packed", "dense"]
    assert pick({}, d=0.95, timer=timer) == "dense" and seen[-1] == ["code4", "dense"]  # clearly dense
    assert pick({}, d=0.05, timer=timer) == "packed" and len(seen) == 2  # clearly sparse: not timed
    # balanced: only layouts within 1.5x the coded size; the smallest when none fits
    assert pick({"weights": "balanced"}, timer=timer, coded=250) == "packed" and seen[-1] == ["code4", "packed"]
    n = len(seen)
    assert pick({"weights": "balanced"}, timer=timer, coded=150) == "code4" and len(seen) == n  # only one fits
    assert pick({"max_bytes_ratio": 6.0}, timer=timer, coded=150) == "dense" and len(seen[-1]) == 3
    assert pick({"weights": "balanced"}, timer=timer, coded=10) == "code4"  # none fits: the smallest


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, groups=16, padding=1),
        torch.nn.ReLU6(), torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def irs():
    import dccomp

    x = torch.randn(1, 3, 8, 8)
    out = {}
    for name, pipe in [("clustered", "cluster{bits=4},huffman"),
                       ("pruned", "prune{sparsity=0.9},cluster{bits=5},huffman")]:
        out[name] = dccomp.compile(_model(), pipe, example_inputs=x).ir
    pc = dccomp.compile(_model(), "cluster{bits=4}", example_inputs=x).ir  # per-channel: 2-D codebooks by hand
    for w in pc.weights.values():
        p = pc.param(w.name)
        rows = p.shape[0]
        cb = torch.stack([torch.linspace(-1, 1, 8) * (r + 1) / rows for r in range(rows)])
        w.codebook = cb
        w.indices = torch.randint(0, 8, p.shape, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            p.copy_(torch.from_numpy(decode_codebook(cb.numpy(), w.indices.numpy())))
    out["per_channel"] = pc
    return out, x


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_lowering_picks_layouts_per_mode(irs):
    models, x = irs
    cl, pr = models["clustered"], models["pruned"]
    small = TVMBackend().lower(cl, example_inputs=(x,), weights="small")
    rule = TVMBackend().lower(cl, example_inputs=(x,), calibrate=False)
    dense = TVMBackend().lower(cl, example_inputs=(x,), kernel="dense")
    assert all(layer.layout in ("code3", "code4") for layer in small.layers), small  # unpruned, k <= 16
    assert all(layer.kind.startswith("code_") for layer in small.layers)
    assert all(layer.layout.startswith("code") for layer in rule.layers), rule  # dense by the rule: coded
    assert all(layer.layout == "dense" for layer in dense.layers)
    assert small.weight_nbytes * 4 < dense.weight_nbytes
    psmall = TVMBackend().lower(pr, example_inputs=(x,), weights="small")
    assert {layer.layout for layer in psmall.layers} <= {"packed", "csr", "code4", "code8"}
    assert any(layer.layout in ("packed", "csr") for layer in psmall.layers)
    bal = TVMBackend().lower(pr, example_inputs=(x,), weights="balanced", calibrate=False)
    for layer in bal.layers:  # within 1.5x the coded size, or the smallest layout
        w = pr.weights[layer.name + ".weight"]
        coded = w.coded.nbytes + 4 * w.codebook.numel()
        smallest = next(s for s in psmall.layers if s.name == layer.name)
        assert layer.const_nbytes <= max(1.5 * coded + 40, smallest.const_nbytes), layer
    with torch.no_grad():
        for m, ir in [(small, cl), (rule, cl), (psmall, pr), (bal, pr)]:
            assert _rel(m(x), ir.gm(x)) <= 1e-4
    assert f"[{small.layers[0].layout}]" in repr(small)


def test_per_channel_model_lowers_every_layout(irs):
    models, x = irs
    ir = models["per_channel"]
    with torch.no_grad():
        ref = ir.gm(x)
    for opts in [dict(weights="small"), dict(kernel="sparse")]:  # dense-code and CSR/packed, per-channel
        m = TVMBackend().lower(ir, example_inputs=(x,), **opts)
        with torch.no_grad():
            assert _rel(m(x), ref) <= 1e-4, opts
        coded = [layer for layer in m.layers if layer.layout != "dense"]  # tiny layers: dense may be smallest
        assert len(coded) >= 2 and all(layer.dtypes["cb_groups"] == layer.shape[0] for layer in coded), m


@pytest.mark.parametrize("target,kind", [("cuda", "cuda"), ("mali", "opencl")])
def test_per_channel_model_builds_for_gpu(irs, target, kind):
    models, x = irs
    m = TVMBackend().lower(models["per_channel"], target=target, example_inputs=(x,))
    assert device_source(m.executable, kind)
    assert all(layer.layout == "csr" for layer in m.layers)


def test_layout_options_are_validated(irs):
    models, x = irs
    with pytest.raises(ValueError, match="max_bytes_ratio"):
        TVMBackend().lower(models["clustered"], example_inputs=(x,), max_bytes_ratio=0)
    with pytest.raises(ValueError, match="max_bytes_ratio"):
        TVMBackend().lower(models["clustered"], example_inputs=(x,), weights="small", max_bytes_ratio=2)
    with pytest.raises(ValueError, match="weights"):
        TVMBackend().lower(models["clustered"], example_inputs=(x,), weights="tiny")


def test_per_channel_gpu_conv_loops_match_torch_on_cpu():
    """The GPU conv kernel stages its output channel's codebook row; its loops run serially on the CPU."""
    from dccomp.backends.tvm.conv_geom import conv_geom
    from dccomp.backends.tvm.conv_gpu import sparse_conv2d_gpu

    rng = np.random.default_rng(5)
    idx, cb, mask, wd = _clustered(rng, (6, 2, 3, 3), 10, 6, 0.5)
    csr = CK.conv_csr(idx, cb, mask, 2)
    g = conv_geom(1, 4, 7, 6, 6, 3, 3, (1, 2), (1, 0), (1, 1), 2)
    f = sparse_conv2d_gpu(g, csr.col.shape[0], csr.k, str(csr.col.dtype), str(csr.code.dtype), False, "gc", 32,
                          simulate=True, cb_groups=csr.groups)
    x = rng.standard_normal((1, 4, 7, 6)).astype(np.float32)
    b = np.zeros(6, np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), None, (1, 2), (1, 0), 1, 2)
    lib = tvm.compile(f, target=tvm.target.Target({"kind": "llvm"}))
    y = tvm.runtime.tensor(np.zeros(tuple(ref.shape), np.float32))
    lib["gc"](*[tvm.runtime.tensor(a) for a in [x] + csr.arrays() + [b]], y)
    _close(y.numpy(), ref.numpy())


@pytest.mark.parametrize("cb_groups", [4, 128])  # 128 x 64 centroids exceed shared memory: read from global
def test_per_channel_cuda_linear_builds(cb_groups):
    f = K.sparse_linear_cuda(128, 64, 500, 64, 1, col_dtype="uint16", cb_groups=cb_groups, name="cl")
    ex = tvm.compile(f, target=tvm.target.Target(resolve_target("cuda")))
    src = device_source(ex, "cuda")
    assert "cl" in src and (("__shared__" in src) == (cb_groups * 64 <= 4096))


@pytest.mark.parametrize("c,oc,kh,groups,k,cb_groups", [
    (16, 8, 1, 1, 40, 8),    # 6-bit codes, whole groups of 8 per block: decoded by byte groups
    (2, 8, 3, 1, 100, 4),    # 7-bit, rows of 18 (blocks of 4 rows = 72 codes)
    (6, 6, 3, 2, 24, 1),     # 5-bit, rows of 27, blocks of 2 rows (54 codes): 32-bit word reads
    (4, 8, 3, 4, 200, 8)])   # 8-bit
def test_dense_code_conv2d_code_widths(c, oc, kh, groups, k, cb_groups):
    rng = np.random.default_rng(k)
    L = dict(n=1, c=c, h=6, w=5, oc=oc, kh=kh, kw=kh, stride=(1, 1), padding=(kh // 2, kh // 2), dilation=(1, 1),
             groups=groups)
    idx, cb, mask, wd = _clustered(rng, (oc, c // groups, kh, kh), k, cb_groups, 0.7)
    dc = DenseCodes.from_codebook(idx, cb, mask)
    x = rng.standard_normal((1, c, 6, 5)).astype(np.float32)
    f = dense_code_conv2d_func(HOST, k=dc.k, cb_groups=dc.groups, bits=dc.bits, name="w", **L)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), None, 1, kh // 2, 1, groups)
    _close(_run(f, "w", [x] + dc.arrays() + [np.zeros(oc, np.float32)], tuple(ref.shape)), ref.numpy())


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fully_pruned_layers_lower_in_every_mode(granularity):
    """Found by a new user: a layer with no surviving weight (empty codebook) crashed the TVM lowering."""
    import dccomp

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                      nn.Linear(8, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    c = dccomp.compile(m, f'prune{{layers={{"0":1.0,"3":1.0}}}},cluster{{bits=4,granularity={granularity}}},huffman',
                       example_inputs=x)
    for mode in ("fast", "small", "balanced"):
        t = dccomp.compile(c, backend="tvm", example_inputs=x, backend_options={"weights": mode})
        torch.testing.assert_close(t(x), c(x), rtol=1e-5, atol=1e-6)
