"""Deterministic test data for the CUDA CSR + codebook kernel check (pure numpy; imported on both machines).

``export_cuda.py`` (with TVM, here) and ``run_cuda.py`` (on the GPU machine, no TVM) both build every
array from the case spec with :func:`make_weights` / :func:`make_x`, and ``meta.json`` records a SHA-256
of each array so the device can confirm it rebuilt exactly what the kernel was exported for.

Generator (numpy ``default_rng``, PCG64), for a spec (n_out, n_in, density, k, seed, empty_rows):

    rng  = np.random.default_rng(seed)
    mask = rng.random((n_out, n_in)) < density            # kept weights
    idx  = rng.integers(0, k, (n_out, n_in))              # cluster index per weight (int64)
    cb   = rng.standard_normal(k).astype(float32)         # codebook
    bias = rng.standard_normal(n_out).astype(float32)
    for r in empty_rows: mask[r, :] = False               # (negative r counts from the end)
    for r in full_rows:  mask[r, :] = True
    x    = np.random.default_rng(seed * 1000 + batch).standard_normal((batch, n_in)).astype(float32)

and the CSR arrays are built exactly as ``dccomp.backends.tvm.kernels.CSRCodebook.from_codebook`` does
(``export_cuda.py`` asserts the two agree): rowptr int32, col uint16 (n_in <= 65536) else int32,
code uint8 (k <= 256), codebook float32, row-major (CSR) order, a single 0 entry when nnz == 0.
"""
from __future__ import annotations

import hashlib

import numpy as np

# name, n_out, n_in, density, k, seed, relu, empty_rows, full_rows
CASES: list[dict] = [
    dict(name="fc4096_d10", n_out=4096, n_in=4096, density=0.10, k=32, seed=1, relu=False,
         empty_rows=[], full_rows=[]),
    dict(name="fc4096_d05", n_out=4096, n_in=4096, density=0.05, k=32, seed=2, relu=False,
         empty_rows=[], full_rows=[]),
    dict(name="lenet_fc1_d08", n_out=300, n_in=784, density=0.08, k=32, seed=3, relu=True,
         empty_rows=[], full_rows=[]),
    # ragged: 37 rows (not a multiple of 4 warps/block), empty first/last/middle rows, rows longer than 32
    dict(name="ragged37x53_d30", n_out=37, n_in=53, density=0.30, k=32, seed=4, relu=True,
         empty_rows=[0, 5, 6, 17, -1], full_rows=[3, 20]),
]
BATCHES = (1, 16)


def case_by_name(name: str) -> dict:
    for c in CASES:
        if c["name"] == name:
            return c
    raise KeyError(name)


def csr_from_codebook(indices: np.ndarray, codebook: np.ndarray, mask: np.ndarray) -> dict:
    """CSR + codebook arrays (same layout/dtypes as ``CSRCodebook.from_codebook``)."""
    codebook = np.ascontiguousarray(np.asarray(codebook, dtype=np.float32).reshape(-1))
    keep = np.asarray(mask, dtype=bool)
    n_out, n_in = indices.shape
    rowptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=rowptr[1:])
    rows, cols = np.nonzero(keep)
    col_dtype = "uint16" if n_in <= 65536 else "int32"
    k = codebook.shape[0]
    code_dtype = "uint8" if k <= 256 else ("int16" if k <= 32768 else "int32")
    col = cols.astype(col_dtype)
    code = indices[rows, cols].astype(code_dtype)
    if col.size == 0:
        col = np.zeros(1, col_dtype)
        code = np.zeros(1, code_dtype)
    return {"rowptr": rowptr.astype(np.int32), "col": col, "code": code, "codebook": codebook}


def make_weights(spec: dict) -> dict:
    """rowptr, col, code, codebook, bias (+ indices/mask for the reference) for a case spec."""
    n_out, n_in = spec["n_out"], spec["n_in"]
    rng = np.random.default_rng(spec["seed"])
    mask = rng.random((n_out, n_in)) < spec["density"]
    idx = rng.integers(0, spec["k"], (n_out, n_in))
    cb = rng.standard_normal(spec["k"]).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    for r in spec.get("empty_rows", []):
        mask[r, :] = False
    for r in spec.get("full_rows", []):
        mask[r, :] = True
    out = csr_from_codebook(idx, cb, mask)
    out["bias"] = bias
    out["_indices"] = idx
    out["_mask"] = mask
    return out


def make_x(spec: dict, batch: int) -> np.ndarray:
    return np.random.default_rng(spec["seed"] * 1000 + batch).standard_normal(
        (batch, spec["n_in"])).astype(np.float32)


def dense_weight(w: dict, shape: tuple[int, int]) -> np.ndarray:
    """Decoded float32 weight from the CSR arrays (what the kernel should multiply by)."""
    n_out, _ = shape
    nnz = int(w["rowptr"][-1])
    dense = np.zeros(shape, dtype=np.float32)
    rows = np.repeat(np.arange(n_out), np.diff(w["rowptr"]))
    dense[rows, w["col"][:nnz].astype(np.int64)] = w["codebook"][w["code"][:nnz].astype(np.int64)]
    return dense


def reference(w: dict, x: np.ndarray, shape: tuple[int, int], relu: bool) -> np.ndarray:
    """float64 ``act(x @ W.T + b)`` computed straight from CSR (independent of the dense decode)."""
    n_out, _ = shape
    nnz = int(w["rowptr"][-1])
    vals = w["codebook"][w["code"][:nnz].astype(np.int64)].astype(np.float64)
    cols = w["col"][:nnz].astype(np.int64)
    rows = np.repeat(np.arange(n_out), np.diff(w["rowptr"]))
    y = np.zeros((x.shape[0], n_out), dtype=np.float64)
    xd = x.astype(np.float64)
    for b in range(x.shape[0]):
        y[b] = np.bincount(rows, weights=vals * xd[b, cols], minlength=n_out)
    y += w["bias"].astype(np.float64)
    return np.maximum(y, 0.0) if relu else y


def sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()
