"""TVM convolution kernels: direct sparse conv on CSR + codebook weights, dense fallback, GPU kernels."""
import shutil

import pytest

tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

from dccomp.backends.tvm import conv_kernels as CK  # noqa: E402
from dccomp.backends.tvm.conv_cpu import sparse_conv2d_chunk, sparse_conv2d_plane  # noqa: E402
from dccomp.backends.tvm.conv_geom import conv_geom, cpu_tiles  # noqa: E402
from dccomp.backends.tvm.conv_gpu import dense_conv2d_gpu, sparse_conv2d_gpu  # noqa: E402
from dccomp.backends.tvm.lower import device_source  # noqa: E402
from dccomp.backends.tvm.targets import resolve_target  # noqa: E402

LLVM = {"kind": "llvm"}


@st.composite
def conv_layers(draw, max_hw=12):
    """A random conv layer: grouped (incl. depthwise and channel multipliers), strided, padded, dilated."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "pointwise"]))
    if kind == "depthwise":
        groups = draw(st.integers(1, 6))
        icg, m = 1, draw(st.integers(1, 2))
    else:
        groups = 1 if kind in ("dense", "pointwise") else draw(st.integers(2, 3))
        icg, m = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    c, oc = icg * groups, m * groups
    kh, kw = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    return dict(n=draw(st.integers(1, 2)), c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, stride=(sh, sw), padding=(ph, pw),
                dilation=(dh, dw), groups=groups)


def _weights(rng, L, density, k):
    shape = (L["oc"], L["c"] // L["groups"], L["kh"], L["kw"])
    idx = rng.integers(0, k, shape)
    cb = rng.standard_normal(k).astype(np.float32)
    mask = rng.random(shape) < density
    return idx, cb, mask, np.where(mask, cb[idx], 0).astype(np.float32)


def _ref(x, wd, b, L, relu):
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), torch.from_numpy(b), L["stride"], L["padding"],
                 L["dilation"], L["groups"])
    return (y.relu() if relu else y).numpy()


def _run(f, name, args, out_shape):
    lib = tvm.compile(f, target=tvm.target.Target(LLVM))
    y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib[name](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], y)
    return y.numpy()


def _close(y, ref):
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _case(L, density, k, relu, seed):
    rng = np.random.default_rng(seed)
    idx, cb, mask, wd = _weights(rng, L, density, k)
    x = rng.standard_normal((L["n"], L["c"], L["h"], L["w"])).astype(np.float32)
    b = rng.standard_normal(L["oc"]).astype(np.float32)
    csr = CK.conv_csr(idx, cb, mask, L["groups"])
    oh, ow = CK.conv2d_out_shape(L["h"], L["w"], L["kh"], L["kw"], L["stride"], L["padding"], L["dilation"])
    return x, b, csr, wd, (L["n"], L["oc"], oh, ow)


def _sparse_args(csr):
    return dict(nnz=csr.col.shape[0], k=csr.k, col_dtype=str(csr.col.dtype), code_dtype=str(csr.code.dtype))


DENSITY = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(L=conv_layers(), density=DENSITY, k=st.integers(1, 256), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_sparse_conv2d_matches_torch(L, density, k, relu, seed):
    x, b, csr, wd, yshape = _case(L, density, k, relu, seed)
    f = CK.sparse_conv2d_func(LLVM, **L, **_sparse_args(csr), relu=relu, name="t_sconv")
    _close(_run(f, "t_sconv", [x] + csr.arrays() + [b], yshape), _ref(x, wd, b, L, relu))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(L=conv_layers(max_hw=9), density=DENSITY, k=st.integers(1, 256), relu=st.booleans(),
       seed=st.integers(0, 2**31 - 1), chunk=st.sampled_from([None, 16]))
def test_packed_sparse_conv2d_matches_torch(L, density, k, relu, seed, chunk):
    """The compact layout (code + relative column in one entry, fillers) decoded into the tap table: both CPU
    schedules (plane = depthwise-like, chunk = the rest; chunk=16 forces several register chunks)."""
    from dccomp.backends.tvm.packed import PackedCSR

    x, b, csr, wd, yshape = _case(L, density, k, relu, seed)
    p = PackedCSR.from_csr(csr)
    esc = (1 << p.gap_bits) - 1
    ent = str(p.entries.dtype)
    args = [x, p.rowptr, p.entries, p.entries, p.codebook, b]
    if chunk is None:
        f = CK.sparse_conv2d_func(LLVM, **L, nnz=p.entries.shape[0], k=p.k, col_dtype=ent, code_dtype=ent,
                                  relu=relu, name="t_pconv", packed=(p.code_bits, esc))
    else:
        g = conv_geom(L["n"], L["c"], L["h"], L["w"], L["oc"], L["kh"], L["kw"], L["stride"], L["padding"],
                      L["dilation"], L["groups"], chunk)
        sched = sparse_conv2d_plane if L["c"] == L["groups"] else sparse_conv2d_chunk
        f = sched(g, p.entries.shape[0], p.k, ent, ent, relu, "t_pconv", packed=(p.code_bits, esc))
    _close(_run(f, "t_pconv", args, yshape), _ref(x, wd, b, L, relu))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(L=conv_layers(), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_dense_conv2d_matches_torch(L, relu, seed):
    x, b, _, wd, yshape = _case(L, 1.0, 8, relu, seed)
    f = CK.dense_conv2d_func(LLVM, **L, relu=relu, name="t_dconv")
    _close(_run(f, "t_dconv", [x, wd, b], yshape), _ref(x, wd, b, L, relu))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(L=conv_layers(), density=DENSITY, k=st.integers(1, 256), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gpu_kernel_loops_match_torch_on_cpu(L, density, k, relu, seed):
    """The CUDA/OpenCL TIR with its thread loops made serial (simulate=True) computes the convolution."""
    x, b, csr, wd, yshape = _case(L, density, k, relu, seed)
    ref = _ref(x, wd, b, L, relu)
    g = conv_geom(L["n"], L["c"], L["h"], L["w"], L["oc"], L["kh"], L["kw"], L["stride"], L["padding"],
                 L["dilation"], L["groups"], 32)
    fs = sparse_conv2d_gpu(g, csr.col.shape[0], csr.k, str(csr.col.dtype), str(csr.code.dtype), relu,
                               "t_gsim", threads=16, simulate=True)
    _close(_run(fs, "t_gsim", [x] + csr.arrays() + [b], yshape), ref)
    fd = dense_conv2d_gpu(g, relu, "t_gdsim", threads=16, simulate=True)
    _close(_run(fd, "t_gdsim", [x, wd, b], yshape), ref)


@pytest.mark.parametrize("schedule,nacc", [("plane", 2), ("chunk", 2), ("chunk", 3), ("chunk", 4)])
@pytest.mark.parametrize("chunk", [16, 64])
def test_both_cpu_schedules_on_multi_chunk_planes(schedule, nacc, chunk):
    """Planes spanning several register chunks, a padded row pitch (stride 2), the direct-store path, and
    the accumulator-set counts / chunk sizes the ISA tiles pick (``cpu_tiles``)."""
    for L in [dict(n=2, c=6, h=21, w=19, oc=4, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2),
              dict(n=1, c=4, h=23, w=20, oc=8, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(2, 1), groups=4),
              dict(n=2, c=5, h=17, w=18, oc=7, kh=1, kw=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)]:
        x, b, csr, wd, yshape = _case(L, 0.4, 32, True, 7)
        g = conv_geom(L["n"], L["c"], L["h"], L["w"], L["oc"], L["kh"], L["kw"], L["stride"], L["padding"],
                      L["dilation"], L["groups"], chunk)
        args = (g, csr.col.shape[0], csr.k, str(csr.col.dtype), str(csr.code.dtype), True, "t_sched")
        f = sparse_conv2d_plane(*args) if schedule == "plane" else sparse_conv2d_chunk(*args, nacc=nacc)
        _close(_run(f, "t_sched", [x] + csr.arrays() + [b], yshape), _ref(x, wd, b, L, True))


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_isa_tiled_kernels_compile_and_match(mcpu):
    """The AVX2 / AVX-512 tile choices (chunk 32/64, 2/4 accumulator sets) give the same result; runs only
    where the host can execute that ISA."""
    from tvm.target import codegen

    t = {"kind": "llvm", "mcpu": mcpu}
    feature = "avx512f" if "avx512" in mcpu else "avx2"
    host = tvm.target.Target(resolve_target("llvm", detect_cpu=True))
    L = dict(n=1, c=16, h=15, w=17, oc=12, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x, b, csr, wd, yshape = _case(L, 0.3, 16, False, 3)
    fs = CK.sparse_conv2d_func(t, **L, **_sparse_args(csr), name="t_isa_s")
    fd = CK.dense_conv2d_func(t, **L, name="t_isa_d")
    libs = [tvm.compile(f, target=tvm.target.Target(t)) for f in (fs, fd)]  # codegen must succeed anywhere
    if not codegen.target_has_features(feature, host):
        pytest.skip(f"host CPU lacks {feature}")
    ref = _ref(x, wd, b, L, False)
    for lib, name, args in [(libs[0], "t_isa_s", [x] + csr.arrays() + [b]), (libs[1], "t_isa_d", [x, wd, b])]:
        y = tvm.runtime.tensor(np.zeros(yshape, np.float32))
        lib[name](*[tvm.runtime.tensor(a) for a in args], y)
        _close(y.numpy(), ref)


@settings(max_examples=60, deadline=None)
@given(oc_per_group=st.integers(1, 4), groups=st.integers(1, 3), icg=st.integers(1, 5), kh=st.integers(1, 5),
       kw=st.integers(1, 5), density=DENSITY, k=st.integers(1, 300), use_mask=st.booleans(),
       as_torch=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv_csr_round_trip(oc_per_group, groups, icg, kh, kw, density, k, use_mask, as_torch, seed):
    rng = np.random.default_rng(seed)
    shape = (oc_per_group * groups, icg, kh, kw)
    idx = rng.integers(0, k, shape)
    cb = rng.standard_normal(k).astype(np.float32)
    cb[0] = 0.0  # a zero centroid: dropped when no mask is given
    mask = rng.random(shape) < density
    expect = np.where(mask, cb[idx], 0).astype(np.float32) if use_mask else cb[idx]
    args = (idx, cb, mask if use_mask else None)
    if as_torch:
        args = tuple(None if a is None else torch.from_numpy(np.asarray(a)) for a in args)
    csr = CK.conv_csr(*args, groups)
    assert csr.shape == (shape[0], icg * kh * kw)
    np.testing.assert_array_equal(csr.to_dense().reshape(shape), expect)
    assert csr.nnz == int(np.count_nonzero(mask if use_mask else expect))
    assert csr.col.dtype == np.uint16 and csr.code.dtype == (np.uint8 if k <= 256 else np.int16)
    assert np.all(np.diff(csr.rowptr) >= 0)


def test_conv_csr_rejects_bad_input():
    idx = np.zeros((4, 2, 3, 3), np.int64)
    with pytest.raises(ValueError, match="4-D"):
        CK.conv_csr(idx.reshape(4, -1), np.ones(2, np.float32), None, 1)
    with pytest.raises(ValueError, match="groups=3"):
        CK.conv_csr(idx, np.ones(2, np.float32), None, 3)
    with pytest.raises(ValueError, match="mask shape"):
        CK.conv_csr(idx, np.ones(2, np.float32), np.ones((4, 2, 3), bool), 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(L=conv_layers(max_hw=30))
def test_conv2d_out_shape_matches_torch(L):
    x = torch.zeros(1, L["c"], L["h"], L["w"])
    wt = torch.zeros(L["oc"], L["c"] // L["groups"], L["kh"], L["kw"])
    y = F.conv2d(x, wt, None, L["stride"], L["padding"], L["dilation"], L["groups"])
    assert CK.conv2d_out_shape(L["h"], L["w"], L["kh"], L["kw"], L["stride"], L["padding"], L["dilation"]) \
        == tuple(y.shape[2:])


def test_bad_shapes_and_targets_raise():
    with pytest.raises(ValueError, match="does not fit"):
        CK.conv2d_out_shape(3, 3, 5, 5)
    with pytest.raises(ValueError, match="padding >= 0"):
        CK.conv2d_out_shape(8, 8, 3, 3, padding=-1)
    common = dict(n=1, c=6, h=8, w=8, oc=4, kh=3, kw=3)
    with pytest.raises(ValueError, match="groups=4 must divide"):
        CK.dense_conv2d_func(LLVM, **common, groups=4)
    with pytest.raises(ValueError, match="k=0"):
        CK.sparse_conv2d_func(LLVM, **common, nnz=3, k=0)
    with pytest.raises(NotImplementedError, match="vulkan"):
        CK.sparse_conv2d_func({"kind": "vulkan"}, **common, nnz=3, k=4)
    with pytest.raises(ValueError, match="shared memory"):
        CK.sparse_conv2d_func(resolve_target("cuda"), **common, nnz=3, k=40000, code_dtype="int32")


GPU_LAYER = dict(n=2, c=32, h=14, w=14, oc=64, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)


@pytest.mark.parametrize("target,kind,markers", [
    ("cuda", "cuda", ["blockIdx.y", "threadIdx.x", "__shared__", "__syncthreads"]),
    ("mali", "opencl", ["__kernel", "get_local_id(0)", "__local", "barrier(CLK_LOCAL_MEM_FENCE)", "ushort", "uchar"]),
])
def test_gpu_sparse_conv_has_device_module(target, kind, markers):
    t = resolve_target(target)
    f = CK.sparse_conv2d_func(t, **GPU_LAYER, nnz=900, k=32, relu=True, name="dcc_gpu_sconv")
    assert bool(f.attrs["tirx.is_scheduled"])
    src = device_source(tvm.compile(f, target=tvm.target.Target(t)), kind)
    assert src, f"no {kind} device module: the kernel compiled as host code"
    assert "dcc_gpu_sconv" in src and all(m in src for m in markers), src[:2000]
    assert "max(" in src  # fused ReLU


@pytest.mark.parametrize("target,kind,marker", [("cuda", "cuda", "threadIdx.x"), ("mali", "opencl", "get_local_id(0)")])
def test_gpu_dense_conv_has_device_module(target, kind, marker):
    t = resolve_target(target)
    f = CK.dense_conv2d_func(t, **GPU_LAYER, relu=False, name="dcc_gpu_dconv")
    src = device_source(tvm.compile(f, target=tvm.target.Target(t)), kind)
    assert "dcc_gpu_dconv" in src and marker in src


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang (Debian package 'clang') not installed")
def test_mali_conv_opencl_source_compiles_with_clang(tmp_path):
    """The generated OpenCL C is valid OpenCL 1.2: clang's OpenCL front end compiles it to LLVM IR."""
    import subprocess

    t = resolve_target("mali")
    for f, name in [(CK.sparse_conv2d_func(t, **GPU_LAYER, nnz=900, k=32, relu=True, name="dcc_cl_sconv"),
                     "dcc_cl_sconv"), (CK.dense_conv2d_func(t, **GPU_LAYER, name="dcc_cl_dconv"), "dcc_cl_dconv")]:
        (tmp_path / "k.cl").write_text(device_source(tvm.compile(f, target=tvm.target.Target(t)), "opencl"))
        r = subprocess.run(["clang", "-x", "cl", "-cl-std=CL1.2", "-Xclang", "-finclude-default-header", "-Werror",
                            "-emit-llvm", "-S", "-o", str(tmp_path / "k.ll"), str(tmp_path / "k.cl")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert name in (tmp_path / "k.ll").read_text()


def test_cpu_kernels_are_parallel_vectorized_noalias():
    for f in (CK.sparse_conv2d_func(LLVM, **GPU_LAYER, nnz=900, k=32, name="a"),
              CK.sparse_conv2d_func(LLVM, **{**GPU_LAYER, "groups": 32, "oc": 32}, nnz=200, k=32, name="b"),
              CK.dense_conv2d_func(LLVM, **GPU_LAYER, name="c")):
        assert bool(f.attrs["tirx.noalias"])
        script = f.script()
        assert "T.parallel" in script and "T.vectorized" in script


def test_arm_cpu_sparse_conv_exports_aarch64_elf(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    t = resolve_target("arm_cpu")
    f = CK.sparse_conv2d_func(t, **GPU_LAYER, nnz=900, k=32, name="dcc_arm_conv")
    path = tmp_path / "k.so"
    tvm.compile(f, target=tvm.target.Target(t)).export_library(str(path), cc="aarch64-linux-gnu-gcc")
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


TARGETS = [None, {"kind": "llvm"}, {"kind": "llvm", "mcpu": "haswell"}, {"kind": "llvm", "mcpu": "znver5"},
           resolve_target("arm_cpu"), resolve_target("cuda"), resolve_target("mali")]


@settings(max_examples=50, deadline=None)
@given(d1=st.floats(0.0, 1.0), d2=st.floats(0.0, 1.0), oc=st.integers(1, 1024), icg=st.integers(1, 1024),
       kk=st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7)]), ohw=st.integers(1, 224), target=st.sampled_from(TARGETS))
def test_use_dense_conv_is_monotonic_in_density(d1, d2, oc, icg, kk, ohw, target):
    lo, hi = sorted((d1, d2))
    if CK.use_dense_conv(lo, oc, icg, *kk, ohw, ohw, target=target):
        assert CK.use_dense_conv(hi, oc, icg, *kk, ohw, ohw, target=target)
    assert not CK.use_dense_conv(0.0, oc, icg, *kk, ohw, ohw, target=target)
    assert CK.use_dense_conv(1.0, oc, icg, *kk, ohw, ohw, target=target)


def test_use_dense_conv_picks_the_row_of_the_target_isa():
    assert cpu_tiles({"kind": "llvm", "mcpu": "znver5"}).lanes == 16
    assert cpu_tiles({"kind": "llvm", "mcpu": "haswell"}).lanes == 8
    assert cpu_tiles({"kind": "llvm"}).lanes == 4
    resnet3x3 = (128, 128, 3, 3, 28, 28)
    assert CK.use_dense_conv(0.4, *resnet3x3, target={"kind": "llvm", "mcpu": "znver5"})  # 0.35 on AVX-512
    assert not CK.use_dense_conv(0.4, *resnet3x3)  # generic x86-64: 0.65
    assert CK._conv_class(144, 1, 3, 3) == "small" and CK._conv_class(192, 32, 1, 1) == "pointwise"
    assert CK._conv_class(50, 20, 5, 5) == "reduce_odd_oc" and CK._conv_class(64, 64, 3, 3) == "reduce"


def test_kernels_run_inside_a_relax_module():
    """Both kernels as ``relax.call_tir`` callees with the compressed arrays as constants (how the lowering
    uses them): sparse 3x3 conv + ReLU, then a dense depthwise stride-2 conv, through the Relax VM."""
    from tvm import relax

    L1 = dict(n=1, c=8, h=12, w=12, oc=16, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    L2 = dict(n=1, c=16, h=12, w=12, oc=16, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=16)
    x1, b1, csr, wd1, y1shape = _case(L1, 0.3, 16, True, 1)
    _, b2, _, wd2, y2shape = _case(L2, 1.0, 8, False, 2)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x1.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            g1 = bb.add_func(CK.sparse_conv2d_func(LLVM, **L1, **_sparse_args(csr), relu=True, name="c1"), "c1")
            y = bb.emit(relax.call_tir(g1, [xv] + [relax.const(a) for a in csr.arrays() + [b1]],
                                       relax.TensorType(y1shape, "float32")))
            g2 = bb.add_func(CK.dense_conv2d_func(LLVM, **L2, name="c2"), "c2")
            y = bb.emit(relax.call_tir(g2, [y, relax.const(wd2), relax.const(b2)],
                                       relax.TensorType(y2shape, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(LLVM)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x1)).numpy()
    ref = _ref(_ref(x1, wd1, b1, L1, True), wd2, b2, L2, False)
    _close(got, ref)
