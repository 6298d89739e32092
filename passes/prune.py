"""``prune``: magnitude pruning (Han et al., NIPS 2015, §3-4; Deep Compression §2)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dccomp.ir import IR, State, Weight
from dccomp.pass_infra import Pass, PassContext, PassResult, select_value, selector_problem, validate_selectors

__all__ = ["Prune", "prune_weight", "agp_schedule"]


def agp_schedule(initial: float, final: float, steps: int) -> list[float]:
    """Gradual pruning targets (Zhu & Gupta 2017, cubic): ``s_t = s_f + (s_i - s_f) (1 - t/n)^3``, t = 1..n."""
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def _keep_largest(p: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Mask keeping the ``n_keep`` largest |w| among surviving entries (ties: lower flat index). Entries that are
    exactly zero are never kept (storing them would cost index and code bits for nothing), so the density can
    end below the target when the weight already holds zeros (e.g. a model restored from a ``.dcc`` file)."""
    mag = p.detach().abs().flatten().double()
    mag[~mask.flatten()] = -1.0  # already pruned: removed first
    order = torch.argsort(mag, descending=True, stable=True)
    new = torch.zeros(p.numel(), dtype=torch.bool)
    new[order[:n_keep]] = True
    return new.view_as(mask) & mask & (p.detach() != 0)


def prune_weight(p: torch.Tensor, mask: torch.Tensor | None, *, sparsity: float | None = None,
                 quality: float | None = None) -> torch.Tensor:
    """Magnitude-pruning mask for one weight tensor.

    Args:
        p: the weight (any shape, float).
        mask: current mask (bool, same shape) or ``None``; pruned entries stay pruned.
        sparsity: fraction of *all* entries to remove, in [0, 1]; exactly ``round(sparsity * n)`` are removed
            (or more if more are already pruned).
        quality: threshold = quality x std of the layer's surviving weights (NIPS'15 §4); entries with
            ``|w| <= threshold`` are removed.

    Returns:
        bool mask of ``p``'s shape, ``True`` where the weight survives.
    """
    mask = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.clone()
    n = p.numel()
    if quality is not None:
        live = p.detach()[mask]
        if live.numel() < 2:
            return mask
        thr = quality * float(live.float().std())
        return mask & (p.detach().abs() > thr)
    n_keep = min(int(mask.sum()), n - int(round(float(sparsity) * n)))
    return _keep_largest(p, mask, n_keep)


@dataclass(frozen=True)
class Prune(Pass):
    """Magnitude pruning of every compressible weight (biases and normalization stay dense).

    Contract: needs dense or masked weights (not clustered); leaves every targeted weight ``masked`` with its
    pruned entries exactly 0. Give ``sparsity`` or ``quality`` (or per-layer values in ``layers``). Options:

    - ``sparsity``: fraction of each layer's weights removed, in [0, 1] (with ``scope=global``: of all selected
      layers' weights together).
    - ``quality``: threshold = quality x std of each layer's weights (NIPS'15 §4), instead of a sparsity.
    - ``layers``: ``{regex: value}`` per-layer sparsity (or quality), matched against the weight name, the
      module name or the layer kind.
    - ``exclude``: regex (matched like ``layers``) of weights left untouched.
    - ``scope``: ``layer`` (each layer pruned to the target) or ``global`` (one magnitude threshold for all
      selected layers).
    - ``steps``: number of pruning steps; with ``epochs`` > 0 each step is followed by retraining (iterative
      pruning, NIPS'15 §3.3), which needs training data.
    - ``schedule``: sparsity target of each step: ``linear`` or ``agp`` (cubic gradual pruning).
    - ``epochs``: retraining epochs after each step (0: no retraining).
    - ``lr``: learning rate of that retraining.
    - ``optimizer``: optimizer of that retraining (``sgd``, ``adam`` or ``adamw``).
    - ``weight_decay``: L2 penalty of that retraining.

    Density after the pass matches the target to within one weight per layer.
    """

    name = "prune"
    requires = State.DENSE
    sparsity: float | None = None
    quality: float | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    exclude: str | None = None
    scope: str = "layer"
    steps: int = 1
    schedule: str = "linear"
    epochs: float = 0
    lr: float = 0.001
    optimizer: str = "sgd"
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        validate_selectors(self.layers, self.exclude)
        if (self.sparsity is None) == (self.quality is None) and not self.layers:
            raise ValueError("give exactly one of sparsity= (fraction removed, 0..1) or quality= "
                             "(threshold = quality x std)")
        if self.sparsity is not None and self.quality is not None:
            raise ValueError("give sparsity= or quality=, not both")
        values = [self.sparsity] if self.sparsity is not None else []
        if self.quality is None:
            values += list(self.layers.values())
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ValueError(f"sparsity must be a number in [0, 1], got {v!r}")
        if self.quality is not None and (not isinstance(self.quality, (int, float)) or self.quality < 0):
            raise ValueError(f"quality must be a number >= 0, got {self.quality!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.scope == "global" and (self.sparsity is None or self.layers):
            raise ValueError("scope=global takes one sparsity= for all selected layers and no per-layer layers=; "
                             "use exclude= to leave layers out, or scope=layer for per-layer targets")
        if self.schedule not in ("linear", "agp"):
            raise ValueError(f"schedule must be 'linear' or 'agp', got {self.schedule!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    def needs_training_data(self) -> bool:
        """Pruning retrains after each step when ``epochs > 0``; without retraining it needs no data."""
        return self.epochs > 0

    def check(self, ir: IR) -> str | None:
        problem = selector_problem(ir, self.layers, self.exclude)
        if problem:
            return problem
        for w in ir.weights.values():
            if w.state >= State.CLUSTERED and self._selected(w):
                return (f"weight {w.name!r} is already {w.state}; prune before cluster (pruning a clustered "
                        "weight would break its codebook)")
        return None

    def _selected(self, w: Weight) -> bool:
        # same matching as ``layers``: weight name, module name or layer kind
        return not (self.exclude and select_value(w, {self.exclude: True}, False))

    def _target(self, w: Weight) -> float | None:
        return select_value(w, self.layers, self.quality if self.quality is not None else self.sparsity)

    def _prune_once(self, ir: IR, frac: float) -> None:
        """Prune to ``frac`` of each final target (sparsity) or with the full quality threshold."""
        selected = [w for w in ir.weights.values() if self._selected(w)]
        for w in ir.weights.values():
            if not self._selected(w):
                ir.skipped[w.name] = f"excluded from prune by exclude={self.exclude!r}"
        if self.scope == "global":
            # one ranking over all selected layers: keep exactly the largest |w| (ties: earlier layer, lower
            # flat index), as _keep_largest does per layer, so equal magnitudes cannot overshoot the target
            params = [ir.param(w.name) for w in selected]
            masks = [torch.ones_like(p, dtype=torch.bool) if w.mask is None else w.mask
                     for w, p in zip(selected, params)]
            if not params:
                return
            total = sum(p.numel() for p in params)
            alive = torch.cat([m.flatten() for m in masks])
            n_keep = min(int(alive.sum()), total - int(round(frac * float(self.sparsity) * total)))
            flat = torch.cat([p.detach().flatten() for p in params]).view(total, 1)
            keep = _keep_largest(flat, alive.view(total, 1), n_keep).flatten()
            for w, p, chunk in zip(selected, params, torch.split(keep, [p.numel() for p in params])):
                self._apply(w, p, chunk.view_as(p).clone())
            return
        for w in selected:
            target = self._target(w)
            if target is None:
                continue
            p = ir.param(w.name)
            if self.quality is not None:
                self._apply(w, p, prune_weight(p, w.mask, quality=float(target)))
            else:
                self._apply(w, p, prune_weight(p, w.mask, sparsity=frac * float(target)))

    @staticmethod
    def _apply(w: Weight, p: torch.nn.Parameter, mask: torch.Tensor) -> None:
        with torch.no_grad():
            p.masked_fill_(~mask, 0.0)  # exactly +0.0 (mul_ would leave -0.0, which the file cannot keep)
        w.mask = mask

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        from .retrain import Retrain

        if self.steps == 1:
            fracs = [1.0]
        else:
            fracs = (agp_schedule(0.0, 1.0, self.steps) if self.schedule == "agp"
                     else [(t + 1) / self.steps for t in range(self.steps)])
        for frac in fracs:
            self._prune_once(ir, frac if self.quality is None else 1.0)
            if self.epochs > 0:  # retrain after every step, the last (or only) one included
                Retrain(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                        weight_decay=self.weight_decay).run(ir, ctx)
        kept = {w.name: (float(w.mask.float().mean()) if w.mask is not None else 1.0) for w in ir.weights.values()}
        ctx.record(density=kept)
        return PassResult(ir, True)
