"""``retrain``: fine-tune on the user's data with masks and shared weights held (Deep Compression §2-3.3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import torch
from torch import nn
from torch.func import functional_call

from dccomp.distill import KD_LOSSES, distill_loss, output_similarity, select_output
from dccomp.errors import PassError
from dccomp.ir import IR, State, codebook_rows
from dccomp.pass_infra import Pass, PassContext, PassResult
from dccomp.train import call_model

__all__ = ["Retrain", "SharedWeightModule", "global_ids", "repad_unused"]


def global_ids(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Flat codebook position of each weight: ``indices`` for a 1-D codebook ``(k,)``, ``g * k + indices`` for a
    2-D ``(G, k)`` one (``g`` = the codebook row of the weight's dim-0 slice). int64, ``indices``' shape."""
    if codebook.dim() == 1:
        return indices
    rows = codebook_rows(codebook, indices.shape)
    return rows.reshape((-1,) + (1,) * (indices.dim() - 1)) * codebook.shape[1] + indices


class _ClusterGather(torch.autograd.Function):
    """``codebook.flatten()[ids]`` whose backward is the per-(codebook row, cluster) sum of the weight gradients
    (Eq. 3), computed with ``bincount`` over the flat ids (one sequential pass: deterministic, unlike the
    multi-threaded scatter-add of indexing). ``ids`` come from :func:`global_ids`."""

    @staticmethod
    def forward(ctx, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.shape = codebook.shape
        return codebook.reshape(-1)[ids]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        summed = torch.bincount(ids.reshape(-1), weights=grad.reshape(-1).double(), minlength=math.prod(ctx.shape))
        return summed.to(grad.dtype).reshape(ctx.shape), None


def repad_unused(codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A 2-D codebook ``(G, k)`` with each row's unused entries (no surviving weight of the row's slices has that
    index) set to the row's largest used centroid (0 for a row with none), as the per-channel convention requires
    (unused entries get no gradient but may move with weight decay). 1-D codebooks are returned as they are."""
    if codebook.dim() != 2:
        return codebook
    g, k = codebook.shape
    ids = global_ids(codebook, indices)
    live = ids[mask] if mask is not None else ids.reshape(-1)
    used = torch.bincount(live.reshape(-1), minlength=g * k).reshape(g, k) > 0
    top = torch.where(used, codebook, torch.full_like(codebook, -math.inf)).max(dim=1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.where(used, codebook, top.expand(g, k)).contiguous()


class SharedWeightModule(nn.Module):
    """The traced model with its clustered weights computed from trainable centroids.

    For each clustered weight ``W`` with codebook ``C`` (k,), indices ``I`` and mask ``M``, the forward pass uses
    ``W = C[I] * M``: a gather from a centroid parameter, so autograd gives
    ``dL/dC_k = sum_{i: I_i = k, M_i} dL/dW_i`` (Deep Compression Eq. 3) and every weight stays equal to its
    centroid. A per-channel codebook ``(G, k)`` is gathered as ``C[g(i), I_i]`` and each of its G*k centroids
    gets the sum over the weights of its own row group and cluster. Other parameters (masked or dense weights, biases, BatchNorm) are the model's own and train as usual.
    """

    def __init__(self, ir: IR, freeze_bn: bool = False):
        super().__init__()
        self.model = ir.gm
        self.freeze_bn = freeze_bn
        self.centroids = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._index: dict[str, torch.Tensor] = {}
        self._mask: dict[str, torch.Tensor | None] = {}
        self.frozen: set[str] = set()  # clustered weights the user froze (requires_grad=False): centroids too
        for w in ir.weights.values():
            if w.codebook is None:
                continue
            key = w.name.replace(".", "__")
            self._keys[w.name] = key
            trainable = ir.param(w.name).requires_grad
            if not trainable:
                self.frozen.add(w.name)
            self.centroids[key] = nn.Parameter(w.codebook.clone(), requires_grad=trainable)
            self._index[w.name] = global_ids(w.codebook, w.indices)
            self._mask[w.name] = w.mask
            ir.param(w.name).requires_grad_(False)

    def shared_weights(self) -> dict[str, torch.Tensor]:
        """``{name: codebook[indices] * mask}`` for every clustered weight (differentiable in the centroids)."""
        out = {}
        for name, key in self._keys.items():
            c = self.centroids[key]
            w = _ClusterGather.apply(c, self._index[name]) if c.numel() else torch.zeros(self._index[name].shape)
            m = self._mask[name]
            out[name] = w.masked_fill(~m, 0.0) if m is not None else w  # +0.0 exactly at pruned positions
        return out

    def train(self, mode: bool = True) -> "SharedWeightModule":
        """Set training mode; with ``freeze_bn`` BatchNorm layers stay in eval mode (running statistics used
        and kept)."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.shared_weights(), args, kwargs, tie_weights=True, strict=False)


@dataclass(frozen=True)
class Retrain(Pass):
    """Retrain the model on ``ctx.trainer``'s data, holding the compression state.

    Contract: masked weights keep exactly their mask after every optimizer step (SGD with momentum and weight
    decay, Adam, AdamW: the mask is re-applied and the optimizer state at pruned positions cleared); clustered
    weights keep their cluster indices and stay exactly equal to their centroid, the centroids being trained with
    the summed gradient of their cluster (Eq. 3); biases and BatchNorm train normally. Needs training data;
    refuses entropy-coded weights. Records accuracy on the eval data when there is some.

    Options: ``epochs`` (passes over the training data; may be fractional), ``lr`` (learning rate; paper: 1/10
    of the original rate for LeNet),
    ``optimizer`` (``sgd``/``adam``/``adamw``), ``momentum`` (SGD momentum), ``weight_decay`` (L2 penalty),
    ``centroid_lr`` (defaults to lr),
    ``schedule`` (``constant`` learning rate, or ``cosine`` decay over the epochs), ``freeze_bn`` (BatchNorm
    stays in eval mode: running statistics neither used from the batch nor updated), ``evaluate`` (measure
    accuracy on the eval data afterwards).

    Distillation (Hinton et al. 2015), with the uncompressed model as teacher (``ctx.teacher``, a frozen copy
    ``dccomp.compile`` keeps from before the pipeline): ``distill=alpha`` in [0, 1] trains on
    ``alpha * KD + (1 - alpha) * CE(labels)``; ``distill=1`` needs no labels (train data may be inputs only: a
    tensor, a ``Dataset`` or ``DataLoader`` of inputs). ``distill_loss``: ``kl`` (KL divergence of the
    temperature-softened outputs, scaled by T**2) or ``mse`` (outputs / embeddings); ``temperature`` (T, the
    softmax temperature of ``kl``).
    Models taking keyword inputs get batches that are dicts of tensors (``model(**batch)``, e.g. a Hugging Face
    encoder's ``input_ids``/``attention_mask``); ``distill_output`` (the entry of a dict, tuple or ``ModelOutput``
    output that distillation compares, e.g. ``last_hidden_state``; default: the first tensor).
    With distillation, the eval data's inputs give, for ``kl``, ``eval_agreement`` (top-1 agreement with the
    teacher) and ``eval_kl`` (mean KL(teacher || student), nats); for ``mse``, ``eval_cosine`` (mean cosine
    similarity of the compared output's last-dim vectors to the teacher's) and ``eval_mse``.
    """

    name = "retrain"
    requires = State.DENSE
    epochs: float = 1
    lr: float = 0.001
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    centroid_lr: float | None = None
    schedule: str = "constant"
    evaluate: bool = True
    freeze_bn: bool = False
    distill: float = 0.0
    distill_loss: str = "kl"
    temperature: float = 1.0
    distill_output: str | None = None

    @property
    def needs_teacher(self) -> bool:
        """Whether this pass distils (then ``dccomp.compile`` keeps a frozen copy of the input model)."""
        return float(self.distill) > 0

    def __post_init__(self) -> None:
        if isinstance(self.distill, bool):
            object.__setattr__(self, "distill", 1.0 if self.distill else 0.0)
        if not isinstance(self.distill, (int, float)) or not 0 <= self.distill <= 1:
            raise ValueError(f"distill must be the weight alpha in [0, 1] of the distillation loss (1: no labels "
                             f"needed), got {self.distill!r}")
        if self.distill_loss not in KD_LOSSES:
            raise ValueError(f"distill_loss must be one of {', '.join(KD_LOSSES)}, got {self.distill_loss!r}")
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r}")
        if not isinstance(self.epochs, (int, float)) or self.epochs < 0:
            raise ValueError(f"epochs must be a number >= 0, got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, got {self.schedule!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {self.optimizer!r}")

    def run(self, ir: IR, ctx: PassContext) -> PassResult:
        if ctx.trainer is None or ctx.trainer.train_data is None:
            raise PassError("retrain needs training data: pass train_data=(and eval_data=, loss=) to "
                            "dccomp.compile or trainer=dccomp.Trainer(...)")
        objective = self._objective(ctx, ctx.trainer.loss) if self.needs_teacher else None
        torch.manual_seed(ctx.seed)
        module = SharedWeightModule(ir, self.freeze_bn)
        masks = {ir.param(w.name): w.mask for w in ir.weights.values()
                 if w.mask is not None and w.codebook is None}
        if not any(p.requires_grad for p in ir.gm.parameters()) and not any(
                c.requires_grad for c in module.centroids.parameters()):
            raise PassError("retrain has nothing to train: every parameter of the model has requires_grad=False")
        # frozen parameters (requires_grad=False) get no hook (torch refuses one) and are not trained
        hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in masks.items() if p.requires_grad]
        groups = [{"params": [p for p in ir.gm.parameters() if p.requires_grad]}]
        centroids = [c for c in module.centroids.parameters() if c.requires_grad]
        if centroids:
            groups.append({"params": centroids, "lr": self.centroid_lr or self.lr})

        def after_step(opt: torch.optim.Optimizer) -> None:
            with torch.no_grad():
                for p, m in masks.items():
                    p.masked_fill_(~m, 0.0)
                    for buf in opt.state.get(p, {}).values():
                        if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                            buf.mul_(m)

        try:
            stats = ctx.trainer.fit(module, groups, epochs=self.epochs, optimizer=self.optimizer, lr=self.lr,
                                    momentum=self.momentum, weight_decay=self.weight_decay, after_step=after_step,
                                    progress=ctx.progress, seed=ctx.seed, schedule=self.schedule,
                                    objective=objective)
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            shared = module.shared_weights()
            for w in ir.weights.values():
                if w.codebook is not None:
                    w.codebook = repad_unused(module.centroids[module._keys[w.name]].detach().clone(), w.indices,
                                              w.mask)
                    ir.param(w.name).copy_(shared[w.name])
                    ir.param(w.name).requires_grad_(w.name not in module.frozen)
        ir.gm.eval()
        if self.evaluate and ctx.trainer.eval_data is not None:
            if objective is not None:
                stats.update(self._agreement(ir, ctx))
            else:
                stats.update({f"eval_{k}": v for k, v in ctx.trainer.evaluate(ir.gm).items()})
        ctx.record(**stats)
        return PassResult(ir, True)

    def _objective(self, ctx: PassContext, ce):
        """``loss(outputs, inputs, targets|None)``: alpha * KD(student, teacher) + (1 - alpha) * CE(targets)."""
        teacher, alpha = ctx.teacher, float(self.distill)
        if teacher is None:
            raise PassError("retrain{distill=...} needs a teacher: dccomp.compile keeps one (the model before the "
                            "pipeline) automatically; when running a PassManager yourself, pass "
                            "PassContext(teacher=frozen_model)")

        def objective(out: Any, x: Any, y: torch.Tensor | None) -> torch.Tensor:
            with torch.no_grad():
                target = select_output(call_model(teacher, x), self.distill_output)
            out = select_output(out, self.distill_output)
            loss = distill_loss(out, target, self.distill_loss, self.temperature)
            if alpha >= 1:
                return loss
            if y is None:
                raise PassError(f"retrain{{distill={alpha}}} mixes in the label loss, but the training data has "
                                "no labels: use distill=1 for unlabelled data")
            return alpha * loss + (1 - alpha) * ce(out, y)

        return objective

    @torch.no_grad()
    def _agreement(self, ir: IR, ctx: PassContext) -> dict[str, float]:
        """Mean similarity of the compressed model to the teacher on the eval data's inputs (see class doc)."""
        from dccomp.train import _as_loader, _to, split_batch

        sums: dict[str, float] = {}
        kind = "kl" if self.distill_loss == "kl" else "mse"
        for batch in _as_loader(ctx.trainer.eval_data, ctx.trainer.eval_batch_size, False, 0):
            x = _to(split_batch(batch)[0], ctx.trainer.device)
            r = output_similarity(select_output(call_model(ir.gm, x), self.distill_output),
                                  select_output(call_model(ctx.teacher, x), self.distill_output), kind)
            for key, v in r.items():
                sums[key] = sums.get(key, 0.0) + v
        n = max(sums.pop("n", 0.0), 1)
        return {f"eval_{key}": v / n for key, v in sums.items()}
