"""Runs the CUDA CSR + codebook kernel on a GPU and compares with numpy (skips without a CUDA GPU)."""
import pytest

tvm = pytest.importorskip("tvm")

import numpy as np  # noqa: E402

from dccomp.backends.tvm import kernels as K  # noqa: E402


def _has_cuda():
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - runtime built without CUDA
        return False


pytestmark = pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU visible to TVM (tvm.cuda(0).exist is False)")


@pytest.mark.parametrize("shape,density,k,batch,relu", [((300, 784), 0.1, 32, 1, True), ((4096, 4096), 0.1, 32, 1, False),
                                                        ((100, 300), 0.05, 16, 16, True), ((37, 19), 0.0, 3, 2, False),
                                                        ((65, 33), 1.0, 256, 5, True), ((10, 70000), 0.01, 300, 3, False)])
def test_cuda_sparse_linear_runs(shape, density, k, batch, relu):
    rng = np.random.default_rng(0)
    n_out, n_in = shape
    mask = rng.random(shape) < density
    idx = rng.integers(0, k, shape)
    cb = rng.standard_normal(k).astype(np.float32)
    csr = K.CSRCodebook.from_codebook(idx, cb, mask)
    w = np.where(mask, cb[idx], 0)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    ex, _ = K.build_sparse_linear(csr, b, batch=batch, relu=relu, target="cuda", name="dcc_cuda_run")
    kern = K.CompiledKernel(ex, "dcc_cuda_run", csr.arrays() + [b], (batch, n_out), dev=tvm.cuda(0))
    y = kern(x)
    ref = x.astype(np.float64) @ w.T + b
    if relu:
        ref = np.maximum(ref, 0)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_cuda_lowered_lenet300_runs():
    torch = pytest.importorskip("torch")
    from dccomp.trace import trace
    from dccomp.backends.tvm import TVMBackend
    from test_tvm_lower import compress, lenet300

    x = torch.randn(4, 1, 28, 28)
    ir = compress(trace(lenet300(), (x,)))
    m = TVMBackend().lower(ir, target="cuda", example_inputs=(x,))
    ref = ir.gm(x)
    assert ((m(x) - ref).abs().max() / ref.abs().max()).item() <= 1e-5
