"""Reopen a ``.dcc`` file as a compressed model: ``dccomp.load_compiled(path, model=M())``.

:func:`dccomp.load` gives the file's tensors (no model) or a plain dense module (with ``model=``); recompiling
that module forgets the masks, codebooks and coded streams, so its file is the dense size again.
:func:`load_compiled` instead rebuilds the IR the file was written from: the model is captured again (as
:func:`dccomp.compile` does) and every compressible weight gets the file's mask, codebook, cluster indices and,
for entropy-coded weights, the coded streams themselves (same coder, ``index_bits`` and decoding meta). So the
result can be saved again byte for byte, lowered with any backend, or compressed further with more passes.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .compiler import CompiledModel, compile
from .format import DccFile, load
from .ir import IR, Coded
from .sync import carry_model_state
from .trace import trace
from .verify import verify as verify_ir

__all__ = ["load_compiled", "attach_file_state"]


def _read(path: str | os.PathLike | bytes) -> bytes:
    if isinstance(path, (bytes, bytearray, memoryview)):
        return bytes(path)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"dccomp.load_compiled takes a file path (str or os.PathLike) or the file's bytes, got "
                        f"{type(path).__name__}")
    with open(path, "rb") as fh:
        return fh.read()


def _is_coded(entry: Mapping[str, Any]) -> bool:
    """Whether the file's entry is an entropy-coded weight (state ``coded``) rather than a weight stored in its
    current state with the ``fixed`` coder: the ``entropy-code`` pass records the ``codebook_dtype`` it used in
    the coded meta, and the implicit storage of :func:`dccomp.format.plan_file` never does."""
    return "codebook_dtype" in entry.get("meta", {})


def attach_file_state(ir: IR, f: DccFile) -> None:
    """Give ``ir``'s compressible weights the compression state stored in ``f``, in place.

    Each weight gets the file's mask (``None`` when the file stores no sparse indices), codebook (float32
    ``(k,)``, or ``(G, k)`` per-channel), cluster indices (int64, weight-shaped), ``bits``, and -- when the
    file's entry is entropy-coded -- a :class:`~dccomp.ir.Coded` holding the very streams and meta of the file,
    so the weight is in state ``coded`` and :func:`dccomp.save` writes the same bytes again. ``ir.name`` and
    ``ir.folded`` are taken from the manifest; in a file with entropy-coded weights, the weights stored
    unclustered are marked skipped (``ir.skipped``), as the pass that left them so had done.

    Raises:
        ValueError: the weights dccomp finds compressible in ``ir`` are not the file's weights (different names
            or layer kinds: another architecture, or another capture mode), naming the differences.
        FormatError: a weight's streams are malformed.
    """
    in_file = {n: f.info(n) for n in f.names if f.info(n)["role"] == "weight"}
    missing, extra = sorted(set(ir.weights) - set(in_file)), sorted(set(in_file) - set(ir.weights))
    kinds = [f"{n} (file {in_file[n]['kind']}, model {w.kind})" for n, w in ir.weights.items()
             if n in in_file and in_file[n]["kind"] != w.kind]
    if missing or extra or kinds:
        parts = [f"compressible in the model but stored raw in the file: {missing[:5]}" if missing else "",
                 f"compressed in the file but not a compressible weight of the model: {extra[:5]}" if extra else "",
                 f"layer kinds differ: {kinds[:5]}" if kinds else ""]
        raise ValueError(f"the file's compressed weights do not match {ir.name}'s captured graph ("
                         + "; ".join(p for p in parts if p) + "). Capture the model as it was compiled: the same "
                         f"architecture ({f.meta.get('model')}) and the same capture= (ir.capture was "
                         f"{ir.capture!r}; files compressed after a torch.export capture need capture='export' "
                         "and example_inputs=)")
    for name, w in ir.weights.items():
        e = in_file[name]
        _, mask, codebook, indices = f.decode(name)
        w.mask, w.codebook, w.indices = mask, codebook, indices
        w.bits = None
        if codebook is not None:  # the bits the cluster pass recorded, else the least that index k centroids
            k = int(codebook.shape[-1])
            w.bits = e.get("bits") if type(e.get("bits")) is int else max(1, (max(k, 2) - 1).bit_length())
        w.coded = None
        if _is_coded(e):
            meta = copy.deepcopy(e["meta"])
            gaps = meta.get("gaps")
            fillers = gaps["n"] - meta["nnz"] if isinstance(gaps, dict) and "n" in gaps else 0
            streams = {s: bytes(f.container.section(f"{name}/{s}")) for s in e["streams"]}
            w.coded = Coded(e["coder"], e["index_bits"], streams, meta, int(fillers))
    if any(w.coded is not None for w in ir.weights.values()):
        # entropy-code runs only when every weight is clustered or was skipped on purpose (cluster{exclude=});
        # files do not list the skipped ones, but in a coded file every unclustered weight must be one
        for w in ir.weights.values():
            if w.codebook is None:
                ir.skipped[w.name] = "left unclustered by the pipeline that wrote the file"
    if isinstance(f.meta.get("model"), str):
        ir.name = f.meta["model"]
    ir.folded = dict(f.meta.get("folded") or {})


def load_compiled(path: str | os.PathLike | bytes, model: nn.Module, *,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  example_kwargs: dict[str, Any] | None = None, capture: str = "auto", dynamic_shapes: Any = None,
                  concrete_args: dict[str, Any] | None = None, leaf_modules: Iterable[type | str] = (),
                  backend: str = "torch", target: Any = None, backend_options: dict | None = None,
                  verify: bool = True) -> CompiledModel:
    """Reopen a ``.dcc`` file as a :class:`~dccomp.compiler.CompiledModel` whose IR carries the file's state.

    ``dccomp.load_compiled("m.dcc", model=LeNet300100())`` is the inverse of ``compiled.save("m.dcc")``:
    ``.save()`` of the result writes the identical bytes; ``dccomp.compile(result, "ans")`` runs more passes
    (a pass whose requirements the file's state does not meet fails with a :class:`~dccomp.errors.PassError`
    saying why, e.g. ``prune`` on entropy-coded weights); ``backend="tvm"`` lowers it to compressed-weight
    kernels.

    Args:
        path: the ``.dcc`` file (or its bytes).
        model: an instance of the architecture the file was made from (its values do not matter). Like
            :func:`dccomp.load`, its parameters and buffers are replaced by the file's (folded BatchNorms of a
            ``fold-bn`` file become ``nn.Identity``); the compiled model holds its own copy.
        example_inputs, example_kwargs, capture, dynamic_shapes, concrete_args, leaf_modules: how to capture
            ``model``, as for :func:`dccomp.compile` -- use the settings the file was compiled with (a model
            captured with ``torch.export`` needs ``capture="export"`` or ``"auto"`` and example inputs).
        backend, target, backend_options: lowering, as for :func:`dccomp.compile` (``example_inputs`` are
            passed to backends other than ``torch``).
        verify: run the IR verifier on the rebuilt IR (masks, centroids, indices and sizes consistent).

    Returns:
        CompiledModel in eval mode; its weights are in the states the file stores them in: ``coded`` for
        entropy-coded weights, else ``clustered``, ``masked`` or ``dense``.

    Raises:
        FormatError: the file is malformed. TypeError: ``model`` is not an ``nn.Module``. ValueError: the file's
        tensors do not fit ``model``, or the captured graph's compressible weights are not the file's.
        TracingError: the model cannot be captured (see :func:`dccomp.trace.trace`). VerificationError: with
        ``verify``, the rebuilt IR breaks an invariant.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dccomp.load_compiled needs an instance of the compressed architecture (an nn.Module), "
                        f"got {type(model).__name__}; dccomp.load(path) reads the file without one")
    data = _read(path)
    f = load(data)
    load(data, model)  # checks names and shapes, folds BatchNorms like the file, restores every tensor
    ir = trace(model, example_inputs, example_kwargs=example_kwargs, concrete_args=concrete_args,
               leaf_modules=leaf_modules, capture=capture, dynamic_shapes=dynamic_shapes)
    carry_model_state(ir, model)
    attach_file_state(ir, f)
    if verify:
        verify_ir(ir)
    return compile(ir, (), example_inputs=example_inputs, backend=backend, target=target,
                   backend_options=backend_options).eval()
