"""The IR's one stable text form: what ``print(ir)`` and ``dccomp inspect`` show, and what golden tests pin.

Format (one op a line; each parameter an op reads is shown on that line)::

    ir LeNet300100 {
      %x = placeholder x : f32[1,1,28,28]
      %fc1 = call_module fc1(%flatten) : f32[1,300] | fc1.weight linear f32[300,784] masked density=0.1000 k=- bits=- coded=- | fc1.bias raw(bias) f32[300]
      ...
    }
"""
from __future__ import annotations

import torch

from .ir import IR, Weight

__all__ = ["ir_to_text", "weight_summary"]

_DT = {torch.float32: "f32", torch.float16: "f16", torch.float64: "f64", torch.bfloat16: "bf16"}


def _dt(t: torch.dtype) -> str:
    return _DT.get(t, str(t).replace("torch.", ""))


def _dim(d) -> str:
    return str(d) if isinstance(d, int) else str(d).replace(" ", "")  # symbolic (dynamic) dims: s0, 2*s1...


def _ty(dtype: torch.dtype, shape) -> str:
    return f"{_dt(dtype)}[{','.join(_dim(d) for d in shape)}]"


def weight_summary(ir: IR, w: Weight) -> str:
    """``name kind f32[shape] state density=0.1234 k=32 bits=5 coded=1234B`` for one weight; a per-channel
    codebook ``(G, k)`` shows as ``k=16 codebooks=1280`` (k entries in each of G codebooks)."""
    p = ir.param(w.name)
    n = p.numel()
    kept = int(w.mask.sum()) if w.mask is not None else n
    density = kept / n if n else 1.0
    k = "-" if w.k is None else str(w.k) if w.codebook.dim() == 1 else f"{w.k} codebooks={w.codebook.shape[0]}"
    bits = "-" if w.bits is None else str(w.bits)
    coded = "-" if w.coded is None else f"{w.coded.nbytes}B({w.coded.coder})"
    tied = f" tied={len(w.users)}" if len(w.users) > 1 else ""
    return (f"{w.name} {w.kind} {_ty(p.dtype, p.shape)} {w.state} density={density:.4f} "
            f"k={k} bits={bits} coded={coded}{tied}")


def ir_to_text(ir: IR) -> str:
    """Render ``ir`` in the stable text form (deterministic for a given IR; no addresses or timings)."""
    nodes = {n.name: n for n in ir.gm.graph.nodes}
    dense = {d.name: d.reason for d in ir.dense}
    params = dict(ir.gm.named_parameters())
    shown: set[str] = set()
    capture = getattr(ir, "capture", "fx")
    lines = [f"ir {ir.name}{'' if capture == 'fx' else f' capture={capture}'} {{"]
    for op in ir.ops:
        meta = nodes[op.name].meta.get("tensor_meta") if op.name in nodes else None
        ty = f" : {_ty(meta.dtype, meta.shape)}" if meta is not None and hasattr(meta, "shape") else ""
        args = ", ".join(f"%{a}" for a in op.args)
        if op.opcode == "output":
            lines.append(f"  return {args}")
            continue
        head = f"  %{op.name} = {op.opcode} {op.target}" + (f"({args})" if op.opcode.startswith("call_") else "") + ty
        parts = [head]
        for wname in op.weights:
            if wname in ir.weights:
                parts.append(weight_summary(ir, ir.weights[wname]) + (" (tied, see above)" if wname in shown else ""))
                shown.add(wname)
        for pname in op.params:
            if pname in dense and pname in params:
                parts.append(f"{pname} raw({dense[pname]}) {_ty(params[pname].dtype, params[pname].shape)}")
        lines.append(" | ".join(parts))
    lines.append("}")
    if ir.skipped:
        lines.append("skipped: " + "; ".join(f"{k}: {v}" for k, v in sorted(ir.skipped.items())))
    return "\n".join(lines)
