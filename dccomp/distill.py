"""Knowledge distillation: losses for retraining without labels, and agreement metrics against a teacher.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015): the student matches the teacher's
temperature-softened class probabilities; the KL term is scaled by ``T**2`` so its gradients keep their size
as ``T`` changes. ``mse`` matches raw outputs (logits or embeddings), as in Ba & Caruana (2014).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch.nn import functional as F

__all__ = ["distill_loss", "agreement_kl", "select_output", "output_similarity", "KD_LOSSES"]

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


def select_output(out: Any, key: str | None = None) -> torch.Tensor:
    """The tensor a distillation loss compares, from a model's output.

    ``out`` is a tensor (returned as is), a mapping (a dict, or a Hugging Face ``ModelOutput`` such as
    ``BaseModelOutputWithPooling``) or a tuple/list. ``key`` names the entry (``"last_hidden_state"``,
    ``"pooler_output"``; an index such as ``"0"`` for a tuple); ``None`` takes the first tensor entry.

    Raises:
        ValueError: ``key`` not in the output, the chosen entry is not a tensor, or no tensor at all.
    """
    if isinstance(out, torch.Tensor):
        if key not in (None, "0"):
            raise ValueError(f"distill_output={key!r}: the model returns a single tensor; leave distill_output unset")
        return out
    if isinstance(out, Mapping):
        entries = list(out.items())
    elif isinstance(out, (tuple, list)):
        entries = [(str(i), v) for i, v in enumerate(out)]
    else:
        raise ValueError(f"cannot distil a model output of type {type(out).__name__}: return a tensor, a dict or "
                         "a tuple of tensors")
    if key is None:
        for _, v in entries:
            if isinstance(v, torch.Tensor):
                return v
        raise ValueError(f"the model output ({type(out).__name__}) holds no tensor to distil")
    found = dict(entries)
    if key not in found:
        raise ValueError(f"distill_output={key!r} is not in the model's output; it has: "
                         f"{', '.join(k for k, _ in entries)}")
    if not isinstance(found[key], torch.Tensor):
        raise ValueError(f"distill_output={key!r} is a {type(found[key]).__name__}, not a tensor")
    return found[key]


@torch.no_grad()
def output_similarity(student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl") -> dict[str, float]:
    """Per-batch sums of how closely ``student`` follows ``teacher`` (same shape ``(N, ..., C)``).

    ``kind="kl"`` (logits): ``agreement`` (count of rows with the same top-1 over the last dim) and ``kl``
    (summed KL(teacher || student), nats, temperature 1). ``kind="mse"`` (embeddings/outputs): ``cosine``
    (summed cosine similarity of the last-dim vectors) and ``mse`` (summed mean squared error per row).
    Also ``n``: the number of rows (vectors over the last dim). Divide the sums by ``n`` for means.
    """
    c = student.shape[-1]
    s, t = student.float().reshape(-1, c), teacher.float().reshape(-1, c)
    if kind == "kl":
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
        return {"agreement": float((s.argmax(-1) == t.argmax(-1)).sum()), "kl": float(kl), "n": len(s)}
    return {"cosine": float(F.cosine_similarity(s, t, dim=-1).sum()),
            "mse": float(((s - t) ** 2).mean(-1).sum()), "n": len(s)}


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
