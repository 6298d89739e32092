"""TVMScript kernels for embedding lookups on Deep-Compression weights (CSR rows + codebook).

An ``nn.Embedding`` table ``E`` (``num_embeddings x dim``) is kept in the same CSR + codebook form as a linear
weight (:class:`~.kernels.CSRCodebook`: ``rowptr``, ``col``, ``code``, ``codebook``); a lookup of token ``t``
writes row ``ids[t]`` of the table: zeros, then ``codebook[code[j]]`` at ``col[j]`` for the row's non-zeros.
Only the looked-up rows are ever decoded, so the table stays compressed in memory (Deep Compression §2-3).
"""
from __future__ import annotations

__all__ = ["embedding_csr_func"]


def embedding_csr_func(target: dict, n_tokens: int, num: int, dim: int, nnz: int, k: int, *,
                       id_dtype: str = "int64", col_dtype: str = "uint16", code_dtype: str = "uint8",
                       name: str = "dcc_embedding", cb_groups: int = 1):
    """PrimFunc ``name(ids[n_tokens], rowptr[num+1], col[nnz], code[nnz], codebook[G*k], y[n_tokens, dim])``.

    Args:
        target: resolved target dict (:func:`~.targets.resolve_target`); ``cuda``/``opencl`` get a kernel with
            one thread per token (``blockIdx.x`` x 64 threads), CPU targets a ``T.parallel`` loop over tokens.
        n_tokens: number of looked-up ids (the flattened index tensor).
        num, dim: table shape. ``nnz``: length of ``col``/``code`` (``max(nnz, 1)``). ``k``: codebook size.
        cb_groups: G per-row codebooks (flat ``(G * k,)``; table row r reads codebook ``r // (num / G)``).
        id_dtype: dtype of ``ids`` (torch gives int64). An id outside ``[0, num)`` is clamped (torch raises;
            the VM cannot), so callers must pass valid ids.

    Returns:
        ``tvm.tirx.PrimFunc`` with ``tirx.noalias`` (and ``tirx.is_scheduled`` on GPU targets).
    """
    from tvm.script import tirx as T

    from .targets import is_gpu

    nnz = max(int(nnz), 1)
    n_tokens = max(int(n_tokens), 1)
    if cb_groups < 1 or num % cb_groups:
        raise ValueError(f"cb_groups={cb_groups} codebooks must divide the {num} table rows")
    ncb = cb_groups * k
    rpg = num // cb_groups

    @T.macro
    def lookup(ids, rowptr, col, code, codebook, y, t):
        """Write row ``ids[t]`` of the table into ``y[t]``: zeros, then each non-zero's centroid."""
        r = T.bind(T.max(T.min(T.Cast("int32", ids[t]), num - 1), 0))
        for d in T.serial(dim):
            y[t, d] = T.float32(0)
        for j in T.serial(rowptr[r], rowptr[r + 1]):
            y[t, T.Cast("int32", col[j])] = codebook[r // rpg * k + T.Cast("int32", code[j])]

    if is_gpu(target):
        nb = (n_tokens + 63) // 64

        @T.prim_func
        def gpu(ids: T.Buffer((n_tokens,), id_dtype), rowptr: T.Buffer((num + 1,), "int32"),
                col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
                codebook: T.Buffer((ncb,), "float32"), y: T.Buffer((n_tokens, dim), "float32")):
            T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
            for bx in T.thread_binding(nb, thread="blockIdx.x"):
                for tx in T.thread_binding(64, thread="threadIdx.x"):
                    if bx * 64 + tx < n_tokens:
                        lookup(ids, rowptr, col, code, codebook, y, bx * 64 + tx)

        return gpu

    @T.prim_func
    def cpu(ids: T.Buffer((n_tokens,), id_dtype), rowptr: T.Buffer((num + 1,), "int32"),
            col: T.Buffer((nnz,), col_dtype), code: T.Buffer((nnz,), code_dtype),
            codebook: T.Buffer((ncb,), "float32"), y: T.Buffer((n_tokens, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "op_pattern": 8})
        for t in T.parallel(n_tokens):
            lookup(ids, rowptr, col, code, codebook, y, t)

    return cpu
