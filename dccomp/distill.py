"""Knowledge distillation: losses for retraining without labels, and agreement metrics against a teacher.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015): the student matches the teacher's
temperature-softened class probabilities; the KL term is scaled by ``T**2`` so its gradients keep their size
as ``T`` changes. ``mse`` matches raw outputs (logits or embeddings), as in Ba & Caruana (2014).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

__all__ = ["distill_loss", "agreement_kl", "KD_LOSSES"]

KD_LOSSES = ("kl", "mse")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl",
                 temperature: float = 1.0) -> torch.Tensor:
    """Distillation loss between student and teacher outputs of the same shape ``(N, C)`` (or ``(N, ..., C)``).

    ``kl``: ``T**2 * KL(softmax(t/T) || softmax(s/T))`` over the last dim, averaged over the other dims.
    ``mse``: mean squared difference of all entries.

    Raises:
        ValueError: unknown kind, shapes differ, or temperature <= 0.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ; "
                         "distillation compares outputs of the same shape")
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind != "kl":
        raise ValueError(f"distillation loss must be one of {', '.join(KD_LOSSES)}, got {kind!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = student.shape[-1]
    s = F.log_softmax(student.reshape(-1, c) / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, c) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


@torch.no_grad()
def agreement_kl(model: Callable, reference: Callable, inputs: torch.Tensor,
                 batch_size: int = 32) -> dict[str, float]:
    """How closely ``model`` follows ``reference`` on ``inputs`` (no labels needed).

    Args:
        model, reference: callables mapping a batch ``(B, ...)`` to logits ``(B, C)``; ``nn.Module``s are put
            in ``eval()`` mode for the measurement and restored after.
        inputs: ``(N, ...)`` tensor.

    Returns:
        ``{"agreement": fraction of inputs with the same top-1 class, "kl": mean KL(reference || model) in nats
        at temperature 1, "n": N}``.
    """
    modes = [(m, m.training) for m in (model, reference) if isinstance(m, torch.nn.Module)]
    for m, _ in modes:
        m.eval()
    same, kl, n = 0, 0.0, 0
    try:
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size]
            a, b = model(x).float(), reference(x).float()
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            kl += float(F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="sum"))
            n += len(x)
    finally:
        for m, was in modes:
            m.train(was)
    return {"agreement": same / max(n, 1), "kl": kl / max(n, 1), "n": n}
