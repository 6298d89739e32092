"""TVM backend kernels (CSR + codebook sparse linear, dense fallback) and targets."""
import pytest
import shutil
import subprocess

tvm = pytest.importorskip("tvm")

import numpy as np  # noqa: E402
from hypothesis import given, settings, strategies as st, HealthCheck  # noqa: E402

from dccomp.backends.tvm import kernels as K  # noqa: E402
from dccomp.backends.tvm.targets import TARGETS, resolve_target, is_cross  # noqa: E402


def _random_csr(rng, n_out, n_in, density, k, col_dtype=None):
    mask = rng.random((n_out, n_in)) < density
    idx = rng.integers(0, k, (n_out, n_in))
    cb = rng.standard_normal(k).astype(np.float32)
    return K.CSRCodebook.from_codebook(idx, cb, mask, col_dtype=col_dtype), np.where(mask, cb[idx], 0).astype(np.float32)


def _ref(x, w, b, relu):
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b
    return np.maximum(y, 0) if relu else y


def _close(y, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(y - ref).max() <= 1e-5 * scale


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_out=st.integers(1, 70), n_in=st.integers(1, 45),
       density=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
       k=st.integers(1, 40), batch=st.sampled_from([1, 2, 3, 16, 17]), relu=st.booleans(),
       col_dtype=st.sampled_from(["uint16", "int32"]), seed=st.integers(0, 2**31 - 1))
def test_sparse_linear_matches_numpy(n_out, n_in, density, k, batch, relu, col_dtype, seed):
    rng = np.random.default_rng(seed)
    csr, w = _random_csr(rng, n_out, n_in, density, k, col_dtype)
    np.testing.assert_array_equal(csr.to_dense(), w)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    y = K.build_sparse_linear(csr, b, batch=batch, relu=relu)(x)
    _close(y, _ref(x, w, b, relu))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_out=st.integers(1, 40), n_in=st.integers(1, 70), batch=st.sampled_from([1, 3, 4, 9]),
       relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_dense_linear_matches_numpy(n_out, n_in, batch, relu, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    _close(K.build_dense_linear(w, b, batch=batch, relu=relu)(x), _ref(x, w, b, relu))


def test_larger_layer_and_memory():
    rng = np.random.default_rng(1)
    csr, w = _random_csr(rng, 300, 784, 0.1, 32)
    assert csr.col.dtype == np.uint16 and csr.code.dtype == np.uint8
    x = rng.standard_normal((1, 784)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    kern = K.build_sparse_linear(csr, b)
    _close(kern(x), _ref(x, w, b, False))
    # compressed arrays: 2 B col + 1 B code per non-zero, + rowptr + codebook, vs 4 B per dense weight
    assert csr.nbytes == 4 * 301 + 3 * csr.nnz + 4 * 32
    assert kern.weight_nbytes == csr.nbytes + b.nbytes


def test_targets():
    assert resolve_target("llvm") == {"kind": "llvm"}
    assert resolve_target("arm_cpu") == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert resolve_target("cuda") == {"kind": "cuda", "arch": "sm_90"}
    assert resolve_target("cuda", arch="sm_80")["arch"] == "sm_80"
    assert resolve_target("mali")["host"]["mtriple"] == "aarch64-linux-gnu"
    assert resolve_target({"kind": "llvm", "mcpu": "znver3"}) == {"kind": "llvm", "mcpu": "znver3"}
    assert "mcpu" in resolve_target("llvm", detect_cpu=True) or True  # 'generic' hosts get none
    with pytest.raises(ValueError, match="arm_cpu.*cuda.*llvm.*mali"):
        resolve_target("tpu")
    assert is_cross("arm_cpu") and is_cross("cuda") and not is_cross("llvm")
    for name in TARGETS:
        tvm.target.Target(resolve_target(name))  # all valid TVM targets


@pytest.mark.parametrize("target,kind,fmt,marker", [("cuda", "cuda", "cuda", "__shfl_down_sync"),
                                                     ("mali", "opencl", "cl", "__kernel")])
@pytest.mark.parametrize("batch", [1, 4])
def test_gpu_kernels_have_device_module(target, kind, fmt, marker, batch):
    rng = np.random.default_rng(3)
    csr, _ = _random_csr(rng, 300, 784, 0.1, 32)
    ex, f = K.build_sparse_linear(csr, batch=batch, relu=True, target=target, name="dcc_gpu_fc")
    devs = [m for m in ex.mod.imports if m.kind == kind]
    assert devs, f"no {kind} device module: the kernel compiled as host code"
    src = devs[0].inspect_source(fmt)
    assert "dcc_gpu_fc" in src and marker in src
    if kind == "cuda":
        assert "blockIdx.x" in src and "threadIdx.x" in src
    else:
        assert "get_local_id(0)" in src and "ushort" in src and "uchar" in src


def test_cpu_kernel_is_parallel_and_noalias():
    f = K.sparse_linear_cpu(128, 64, 100, 16, 1, name="dcc_attr")
    assert bool(f.attrs["tirx.noalias"])
    assert "T.parallel" in f.script()
    fd = K.dense_linear_cpu(128, 64, 4, name="dcc_attr_d")
    assert "T.parallel" in fd.script() and "T.vectorized" in fd.script()


def test_arm_cpu_kernel_exports_aarch64_elf(tmp_path):
    import shutil
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    f = K.sparse_linear_cpu(64, 32, 200, 16, 1, name="dcc_arm")
    lib = tvm.compile(f, target=tvm.target.Target(resolve_target("arm_cpu")))
    path = tmp_path / "k.so"
    lib.export_library(str(path), cc="aarch64-linux-gnu-gcc")
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang (Debian package 'clang') not installed")
def test_mali_opencl_source_compiles_with_clang(tmp_path):
    """The generated OpenCL C is valid OpenCL 1.2: clang's OpenCL front end compiles it to LLVM IR."""
    rng = np.random.default_rng(5)
    csr, _ = _random_csr(rng, 64, 96, 0.2, 16)
    ex, _ = K.build_sparse_linear(csr, batch=1, relu=True, target="mali", name="dcc_cl_fc")
    src = [m for m in ex.mod.imports if m.kind == "opencl"][0].inspect_source("cl")
    (tmp_path / "k.cl").write_text(src)
    r = subprocess.run(["clang", "-x", "cl", "-cl-std=CL1.2", "-Xclang", "-finclude-default-header", "-Werror",
                        "-emit-llvm", "-S", "-o", str(tmp_path / "k.ll"), str(tmp_path / "k.cl")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dcc_cl_fc" in (tmp_path / "k.ll").read_text()
