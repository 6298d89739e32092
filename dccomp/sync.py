"""Keep a :class:`~dccomp.compiler.CompiledModel`'s IR in step with its live parameters before saving or reporting.

The torch backend runs a copy of the IR's graph module, so ``compiled.parameters()`` can be changed (an optimizer
outside dccomp, ``load_state_dict``, BatchNorm statistics updated in training mode) without the IR knowing.
:func:`sync_live_state` copies every change the file can represent exactly into the IR -- parameters and buffers
stored raw, weights still dense, the surviving values of pruned-only weights -- and refuses the rest: a pruned
entry that is no longer 0, a clustered weight that is no longer its centroid, a changed dtype. So a ``.dcc``
file never differs from the model in memory without an error.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import StaleStateError
from .ir import IR, decode_codebook

__all__ = ["sync_live_state"]

_FIX = ("A .dcc file written now would not compute what this model computes. To fine-tune and keep the compression, "
        "retrain through dccomp (dccomp.compile(compiled, 'retrain{epochs=1}', train_data=...) holds masks and "
        "centroids); to drop the changes, call compiled.restore_compressed(); to compress the changed values "
        "anew, load compiled.lowered.state_dict() into a plain model and compile that.")


def _problem(ir: IR, name: str, live: torch.Tensor, held: torch.Tensor, weight_of: dict) -> str | None:
    """Why ``live`` cannot be stored for ``name`` (None: it can)."""
    if live.dtype != held.dtype or live.shape != held.shape:
        return f"changed from {held.dtype} {tuple(held.shape)} to {live.dtype} {tuple(live.shape)}"
    w = weight_of.get(name)
    if w is None:
        return None
    live = live.detach().to(held.device)
    if w.mask is not None:
        bad = int((live[~w.mask] != 0).sum())
        if bad:
            return f"{bad} of {int((~w.mask).sum())} pruned entries are no longer 0"
    if w.codebook is not None:
        keep = w.mask if w.mask is not None else torch.ones_like(live, dtype=torch.bool)
        off = int((live[keep] != decode_codebook(w.codebook, w.indices)[keep].to(live.dtype)).sum()) \
            if bool(keep.any()) else 0
        if off:
            return f"{off} of {int(keep.sum())} clustered weights are no longer one of the k={w.k} centroids"
    return None


def sync_live_state(ir: IR, lowered: nn.Module) -> list[str]:
    """Copy ``lowered``'s parameters and buffers into ``ir.gm`` where the compression state allows it.

    Args:
        ir: the compiled model's IR (its ``gm`` holds the values :func:`dccomp.save` writes).
        lowered: the module the compiled model runs; only entries with the same ``state_dict`` key are compared
            (a backend whose module holds no such tensors has nothing to synchronize).

    Returns:
        names of the entries copied (changed since compilation, representable in the file).

    Raises:
        StaleStateError: one or more compressed weights no longer fit their state; nothing is copied. The message
            names each layer, what changed and what to do.
    """
    held = ir.gm.state_dict(keep_vars=True)
    live = lowered.state_dict(keep_vars=True)
    params = dict(ir.gm.named_parameters(remove_duplicate=False))
    by_id = {id(params[w.name]): w for w in ir.weights.values() if w.name in params}
    weight_of = {n: by_id[id(p)] for n, p in params.items() if id(p) in by_id}  # tied names share the state
    changed, problems = [], {}
    for name, t in held.items():
        now = live.get(name)
        if now is None or now is t:
            continue
        if now.dtype == t.dtype and now.shape == t.shape and torch.equal(now.detach().to(t.device), t.detach()):
            continue
        why = _problem(ir, name, now, t, weight_of)
        if why:
            problems[name] = why
        else:
            changed.append(name)
    if problems:
        lines = "; ".join(f"{n}: {why}" for n, why in problems.items())
        raise StaleStateError(f"the compiled model's parameters were changed outside dccomp and no longer fit "
                              f"their compression state ({lines}). {_FIX}", problems)
    with torch.no_grad():
        for name in changed:
            held[name].copy_(live[name].detach())
    return changed


def carry_model_state(ir: IR, model: nn.Module) -> None:
    """Make ``ir`` hold the whole ``state_dict`` of ``model``, as it was before tracing.

    * Buffers are reset to ``model``'s values: tracing runs the model on the example inputs, which in training
      mode would update BatchNorm running statistics.
    * Entries the traced graph never reads (``torch.fx`` leaves their modules out of ``ir.gm``) go to
      ``ir.unused`` and are saved raw, so ``dccomp.load(path, model=SameClass())`` always finds every key.
    * A model loaded from a ``fold-bn`` file (``dccomp.load(path, model=M())`` sets ``model.dccomp_folded``)
      keeps that record in ``ir.folded``, so a file made from it again loads into a fresh ``M()`` too.
    """
    folded = getattr(model, "dccomp_folded", None)
    if isinstance(folded, dict):
        ir.folded = {**folded, **ir.folded}
    own = dict(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, b in ir.gm.named_buffers(remove_duplicate=False):
            src = own.get(name)
            if src is not None and src.shape == b.shape and src.dtype == b.dtype:
                b.copy_(src)
    traced = set(ir.gm.state_dict())
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    ir.unused = {n: (t.detach().clone(), "parameter" if n in params else "buffer")
                 for n, t in model.state_dict().items() if n not in traced}
