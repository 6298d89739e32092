"""``allocate``: per-layer sparsity and bits chosen for an accuracy budget, then Deep Compression with them.

Deep Compression (ICLR 2016) and Han et al. (NIPS 2015, §3.3, Fig. 5) pick each layer's pruning rate and bits by
hand from per-layer sensitivity curves. This pass does it from :func:`dccomp.sensitivity.analyze` curves and
the bytes each choice costs in the file, then runs the paper's iterative prune / retrain / cluster / retrain
with those targets and checks the budget on held-out data.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from dccomp.errors import PassError
from dccomp.ir import IR, State
from dccomp.pass_infra import Pass, PassContext, PassResult
from dccomp.sensitivity import Sensitivity, analyze

__all__ = ["Allocate", "Plan", "plan_allocation", "holdout_split", "format_allocation"]


@dataclass(frozen=True)
class Plan:
    """An allocation: ``choices`` ``{weight: (sparsity, bits)}``, the summed one-shot accuracy ``drop`` it predicts
    (points of top-1, each layer's drop measured alone), its estimated ``bytes`` (sum of
    :func:`dccomp.sensitivity.estimate_bytes`), and whether that drop is within the ``tolerance`` asked for."""

    choices: dict[str, tuple[float, int]]
    drop: float
    bytes: float
    feasible: bool


#: slack (points of top-1) when comparing summed drops with the tolerance: drops come back from accuracies
#: through float rounding (``100 * (baseline - accuracy)``), off by ~1e-8 points
DROP_EPS = 1e-6


def plan_allocation(sens: Sensitivity, tolerance: float) -> Plan:
    """The smallest allocation whose summed per-layer one-shot drop is at most ``tolerance`` points.

    Exact multiple-choice knapsack over the clustered grid points of every layer: a Pareto frontier of
    (summed drop, bytes) is built layer by layer, so the result is the true minimum of the estimated bytes, and
    it never grows when ``tolerance`` grows (larger tolerance: a superset of allocations). A layer's drop is
    ``max(0, baseline - accuracy)`` in points. When no allocation fits, the one with the least summed drop (then
    fewest bytes) is returned with ``feasible=False``.

    Raises:
        ValueError: ``tolerance`` < 0, or a layer has no clustered grid point.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 points, got {tolerance!r}")
    frontier: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    least: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    for curve in sens.layers.values():
        options = [(max(0.0, 100 * (sens.baseline - p.accuracy)), p.bytes, (p.sparsity, p.bits))
                   for p in curve.points if p.bits is not None]
        if not options:
            raise ValueError(f"sensitivity of {curve.name!r} has no clustered point (bits grid is empty)")
        merged = [(d + od, c + oc, ch + (o,)) for d, c, ch in frontier for od, oc, o in options
                  if d + od <= tolerance + DROP_EPS]
        frontier = _pareto(merged)
        least = _pareto([(d + od, c + oc, ch + (o,)) for d, c, ch in least for od, oc, o in options])[:1]
    names = list(sens.layers)
    if frontier:
        d, c, ch = min(frontier, key=lambda t: (t[1], t[0]))
        return Plan(dict(zip(names, ch)), d, c, True)
    d, c, ch = least[0]
    return Plan(dict(zip(names, ch)), d, c, False)


def _pareto(items: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """Points not dominated in (drop, bytes), sorted by drop ascending (bytes then strictly descending)."""
    out: list[tuple[float, float, tuple]] = []
    for d, c, ch in sorted(items, key=lambda t: (t[0], t[1])):
        if not out or c < out[-1][1]:
            out.append((d, c, ch))
    return out


def holdout_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)`` (int64) of a seeded random split of ``n`` examples; the validation part
    has ``round(val_fraction * n)`` (at least 1) examples. The same ``(n, val_fraction, seed)`` always gives the
    same split, so a dense model can be trained on exactly the training part."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    n_val = max(1, int(round(val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"{n} training examples cannot be split into training and validation parts")
    return perm[n_val:], perm[:n_val]


def format_allocation(rec: dict[str, Any]) -> str:
    """Text summary of an ``allocate`` record (``compiled.records["allocate#N"]``): the sensitivity table, one
    line per attempt (tolerance, per-layer sparsity/bits, validation drop, estimated bytes) and the verdict."""
    lines = [rec.get("sensitivity_table", ""), ""]
    for i, a in enumerate(rec["attempts"]):
        layers = ", ".join(f"{n.removesuffix('.weight')} {s:g}/{b}b" for n, (s, b) in a["choices"].items())
        test = f", test {100 * a['test_accuracy']:.2f}%" if "test_accuracy" in a else ""
        lines.append(f"attempt {i + 1}{' (chosen)' if i == rec['chosen'] else ''}: tolerance {a['tolerance']:.1f} pt "
                     f"-> {layers}; est. {a['estimated_bytes']:.0f} B; validation {100 * a['val_accuracy']:.2f}% "
                     f"({-a['val_drop_points']:+.2f} pt){test}; {a['seconds']:.0f} s")
    lines.append(f"budget {rec['budget']} pt on {rec['val_examples']} held-out training examples (dense "
                 f"{100 * rec['dense_val_accuracy']:.2f}%): {'met' if rec['budget_met'] else 'NOT met'}")
    return "\n".join(lines)


def _dataset(data: Any) -> Dataset:
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return data
    raise PassError("allocate splits the training data into training and validation parts, so it needs a "
                    "Dataset with a length, a DataLoader over one, or (X, y) tensors; got "
                    f"{type(data).__name__}")


@dataclass(frozen=True)
class Allocate(Pass):
    """Choose per-layer sparsity and bits for an accuracy ``budget``, then prune / retrain / cluster / retrain.

    Contract: needs dense (or masked) weights and labelled training data; leaves every weight ``clustered``
    (follow with ``huffman`` or ``ans``). Steps:

    1. The training data is split (:func:`holdout_split`, ``val_fraction``): retraining and the sensitivity
       analysis use the training part only; the validation part checks the budget.
    2. :func:`dccomp.sensitivity.analyze` on ``sensitivity_samples`` training examples: each layer alone over
       ``sparsity x bits``, with estimated file bytes per point; after pruning a layer the model is fine-tuned
       on ``finetune_batches`` other training batches (0: one-shot, as the paper's Fig. 6), because one-shot
       drops overstate how much pruning a large redundant layer costs after retraining relative to a small one.
    3. :func:`plan_allocation` with a tolerance on the summed per-layer drop: ``tolerance`` points, or
       ``recovery x budget`` (on LeNet-300-100 / Fashion-MNIST the paper-like allocation of
       ``deep-compression``, -0.1 to -0.4 pt after full retraining, sums to ~6 points after 40 fine-tuning
       batches). Smaller budget -> smaller tolerance -> never fewer estimated bytes. The bits grid starts at 4
       by default: a 3-bit choice, which the measured points barely penalize, cost ~0.15 pt after retraining.
    4. Deep Compression with the plan: ``prune`` (per-layer targets, ``steps`` AGP steps, ``prune_epochs`` of
       retraining each), ``retrain{epochs}``, ``cluster`` (per-layer bits, ``init``, ``empty``),
       ``retrain{cluster_epochs}`` (centroid fine-tuning, lr / 5); ``distill`` is passed to both retrains.
    5. Budget check: top-1 on the validation part, dense minus compressed, in points. Up to ``attempts`` runs:
       a run over budget is redone with its tolerance x budget / drop (clamped to [1/2, 0.8]), one within it is
       tried again with 1.25x; the smallest
       run within the budget is kept (if none is, the one with the least drop, recorded as ``budget_met=False``).

    The check is unbiased when the dense model was not trained on the validation part (train it on
    :func:`holdout_split`'s training indices); a dense model trained on all the data knows those examples, so the
    check is stricter than the test accuracy would be. Records: the plan and the validation and (with eval data)
    test accuracies of every attempt, the sensitivity table, and the chosen attempt.

    Options:

    - ``budget``: the allowed top-1 loss, in points, checked on the validation part.
    - ``val_fraction``: fraction of the training data held out to check the budget.
    - ``tolerance``: summed per-layer sensitivity drop (points) the plan may spend (default: ``recovery x budget``).
    - ``recovery``: how many points of one-shot drop retraining is expected to recover per point of budget.
    - ``attempts``: runs of the whole schedule, each re-planned from the previous run's measured drop.
    - ``sparsities``: the sparsity grid of the sensitivity analysis.
    - ``bits``: the bits-per-weight grid of the sensitivity analysis.
    - ``sensitivity_samples``: training examples the sensitivity analysis evaluates on.
    - ``finetune_batches``: training batches of fine-tuning after pruning a layer (0: one-shot).
    - ``steps``: AGP pruning steps.
    - ``prune_epochs``: retraining epochs after each pruning step.
    - ``epochs``: retraining epochs after pruning.
    - ``cluster_epochs``: centroid fine-tuning epochs after clustering (at lr / 5).
    - ``lr``: learning rate of the retraining.
    - ``init``: k-means initialization of the cluster pass.
    - ``empty``: what the cluster pass does with empty clusters (``drop`` or ``reseed``).
    - ``distill``: distillation weight alpha passed to both retrains (0: plain cross-entropy).
    """

    name = "allocate"
    requires = State.DENSE
    budget: float = 0.5
    val_fraction: float = 0.1
    tolerance: float | None = None
    recovery: float = 14.0
    attempts: int = 2
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99)
    bits: tuple[int, ...] = (4, 5, 6, 8)
    sensitivity_samples: int = 5000
    finetune_batches: int = 40
    steps: int = 4
    prune_epochs: float = 2
    epochs: float = 6
    cluster_epochs: float = 2
    lr: float = 0.01
    init: str = "linear"
    empty: str = "reseed"
    distill: float = 0.0

    def __post_init__(self) -> None:
        for key in ("budget", "recovery"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key} must be a number >= 0 (budget: points of top-1), got {v!r}")
        if self.tolerance is not None and (not isinstance(self.tolerance, (int, float)) or self.tolerance < 0):
            raise ValueError(f"tolerance must be a number >= 0 (points), got {self.tolerance!r}")
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not self.bits or not self.sparsities:
            raise ValueError("sparsities and bits must be non-empty lists")
        object.__setattr__(self, "sparsities", tuple(self.sparsities))
        object.__setattr__(self, "bits", tuple(self.bits))
        from dccomp.passes.cluster import Cluster
        from dccomp.passes.retrain import Retrain

        Cluster(init=self.init, empty=self.empty)  # the passes' own option checks, before any work
        Retrain(epochs=self.epochs, lr=self.lr, distill=self.distill)

    @property
    def needs_teacher(self) -> bool:
        """Whether the retraining distils (``dccomp.compile`` then keeps a frozen copy of the input model)."""
        return float(self.distill) > 0

    def needs_training_data(self) -> bool:
        return True

    def check(self, ir: IR) -> str | None:
        if not ir.weights:
            return "the model has no compressible weight (Linear/Conv/Embedding/...), so there is nothing to allocate"
        for w in ir.weights.values():
            if w.state >= State.CLUSTERED:
                return f"weight {w.name!r} is already {w.state}; allocate prunes and clusters, so it runs first"
        return super().check(ir)

    def _attempt(self, ir: IR, plan: Plan, ctx: PassContext, sub: Any) -> IR:
        from dccomp.passes.cluster import Cluster
        from dccomp.passes.prune import Prune
        from dccomp.passes.retrain import Retrain

        work = ir.clone()
        exact = lambda f: {re.escape(n): f(v) for n, v in plan.choices.items()}  # noqa: E731
        passes = [Prune(layers=exact(lambda v: v[0]), steps=self.steps, schedule="agp",
                        epochs=self.prune_epochs if self.steps > 1 else 0, lr=self.lr),
                  Retrain(epochs=self.epochs, lr=self.lr, schedule="cosine", distill=self.distill),
                  Cluster(layers=exact(lambda v: int(v[1])), init=self.init, empty=self.empty),
                  Retrain(epochs=self.cluster_epochs, lr=self.lr / 5, schedule="cosine", distill=self.distill)]
        inner = PassContext(trainer=sub, seed=ctx.seed, instruments=ctx.instruments, teacher=ctx.teacher)
        for i, p in enumerate(passes):
            inner.current = f"{ctx.current}/{p.name}#{i + 1}"
            why = p.check(work)
            if why:
                raise PassError(why)
            work = p.run(work, inner).ir
        return work

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        from dccomp.train import Trainer

        t = ctx.trainer
        if t is None or t.train_data is None:
            raise PassError("allocate needs labelled training data: pass train_data= (and eval_data= for the test "
                            "accuracy) to dccomp.compile, or trainer=dccomp.Trainer(...)")
        data = _dataset(t.train_data)
        tr_idx, val_idx = holdout_split(len(data), self.val_fraction, ctx.seed)
        train_part, val_part = Subset(data, tr_idx.tolist()), Subset(data, val_idx.tolist())
        sub = Trainer(train_part, val_part, t.loss, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                      step_fn=t.step_fn, max_batches=t.max_batches, device=t.device)
        t0 = time.perf_counter()
        n_eval = min(self.sensitivity_samples, len(train_part) // 2)
        n_ft = min(self.finetune_batches * t.batch_size, len(train_part) - n_eval)
        ft = Subset(train_part, list(range(n_eval, n_eval + n_ft))) if self.finetune_batches > 0 else None
        sens = analyze(ir, Subset(train_part, list(range(n_eval))), sparsities=self.sparsities, bits=self.bits,
                       init=self.init, empty=self.empty, max_samples=None, seed=ctx.seed, finetune=ft,
                       finetune_batch=t.batch_size, finetune_lr=self.lr)
        t_sens = time.perf_counter() - t0
        dense_val = sub.evaluate(ir.gm)["accuracy"]
        dense_test = t.evaluate(ir.gm)["accuracy"] if t.eval_data is not None else None
        tol = float(self.tolerance if self.tolerance is not None else self.recovery * self.budget)
        runs: list[dict[str, Any]] = []
        kept: list[tuple[IR, dict[str, Any]]] = []
        for _ in range(self.attempts):
            plan = plan_allocation(sens, tol)
            if any(r["choices"] == plan.choices for r in runs):
                break  # the tolerance change did not change the plan: nothing new to learn
            t1 = time.perf_counter()
            out = self._attempt(ir, plan, ctx, sub)
            val = sub.evaluate(out.gm)["accuracy"]
            rec = {"tolerance": tol, "choices": {n: list(v) for n, v in plan.choices.items()},
                   "predicted_drop": plan.drop, "estimated_bytes": plan.bytes, "feasible": plan.feasible,
                   "val_accuracy": val, "val_drop_points": 100 * (dense_val - val),
                   "met": 100 * (dense_val - val) <= self.budget, "seconds": time.perf_counter() - t1}
            if t.eval_data is not None:
                rec["test_accuracy"] = t.evaluate(out.gm)["accuracy"]
            runs.append(rec)
            kept.append((out, rec))
            # next tolerance: 1.25x after a run within budget; after one over it, scaled by budget / drop
            # (the final drop roughly follows the predicted one), between 1/2 and 0.8
            tol = tol * (1.25 if rec["met"] else min(0.8, max(0.5, self.budget / rec["val_drop_points"])))
        met = [(o, r) for o, r in kept if r["met"]]
        best, best_rec = (min(met, key=lambda t_: t_[1]["estimated_bytes"]) if met
                          else min(kept, key=lambda t_: t_[1]["val_drop_points"]))
        ctx.record(budget=self.budget, budget_met=bool(met), dense_val_accuracy=dense_val,
                   dense_test_accuracy=dense_test, val_examples=len(val_part), attempts=runs,
                   chosen=runs.index(best_rec), choices=best_rec["choices"], sensitivity_seconds=t_sens,
                   sensitivity_from_cache=sens.from_cache, sensitivity_table=sens.table(),
                   sensitivity=sens.to_dict())
        best.gm.eval()
        return PassResult(best, True)
