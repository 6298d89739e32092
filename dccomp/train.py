"""Training and evaluation on the user's data, used by the ``retrain`` pass and the demo.

A :class:`Trainer` holds the data, the loss and optionally a user training step (so retraining composes with
DDP or AMP): ``step_fn(module, batch, optimizer) -> float loss`` must run forward, backward and
``optimizer.step()``. dccomp's mask and weight-sharing constraints are applied by gradient hooks and after each
step, so they hold whatever the step does.

Under ``torch.distributed`` (a process group of more than one rank, e.g. launched with ``torchrun``),
:meth:`Trainer.fit` trains data-parallel: each rank takes its shard of every global batch and gradients are
all-reduced before each step, so all ranks keep identical weights (:mod:`dccomp.dist`). Evaluation runs whole on
every rank.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import dist

__all__ = ["Trainer", "KeywordDataset", "make_optimizer", "split_batch", "call_model", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(params: Sequence[torch.Tensor], name: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with momentum, the default), Adam or AdamW over ``params``.

    Raises:
        ValueError: unknown optimizer name, or lr <= 0.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


_FORMS = ("a torch Dataset or DataLoader yielding (inputs, targets), an iterable of (inputs, targets) batches of "
          "tensors, or a tuple (inputs, targets) of two tensors with the same first dimension (for distillation "
          "without labels: a tensor of inputs, a Dataset/DataLoader of inputs only, or keyword inputs: a dict "
          "{name: tensor} with one row per example, or batches that are such dicts)")


class KeywordDataset(Dataset):
    """Examples of keyword inputs: ``{name: tensor (N, ...)}`` -> example ``i`` is ``{name: tensor[i]}``.

    Batched by a ``DataLoader`` into ``{name: (B, ...)}`` dicts, which the model receives as keyword arguments
    (``model(**batch)``: a Hugging Face encoder's ``input_ids``/``attention_mask``). Unlabelled: for
    distillation (``retrain{distill=1}``).

    Raises:
        TypeError: a value is not a tensor. ValueError: empty mapping, a scalar, or first dims differ.
    """

    def __init__(self, inputs: Mapping[str, torch.Tensor]):
        if not inputs:
            raise ValueError("keyword inputs: the dict is empty; give {name: tensor (N, ...)}")
        bad = [k for k, v in inputs.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"keyword inputs must all be tensors with one row per example; {bad[0]!r} is a "
                            f"{type(inputs[bad[0]]).__name__}")
        lens = {k: (len(v) if v.dim() else None) for k, v in inputs.items()}
        if None in lens.values() or len(set(lens.values())) != 1:
            raise ValueError(f"keyword inputs must share their first (example) dimension, got "
                             f"{ {k: tuple(v.shape) for k, v in inputs.items()} }")
        self.inputs = dict(inputs)
        self.n = next(iter(lens.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}


def call_model(module: Callable, x: Any) -> Any:
    """Run ``module`` on a batch's inputs: ``module(**x)`` for keyword inputs (a dict), else ``module(x)``."""
    return module(**x) if isinstance(x, Mapping) else module(x)


def _to(x: Any, device: torch.device) -> Any:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)


def _describe(x: Any) -> str:
    if isinstance(x, Mapping):
        return "keyword inputs " + ", ".join(f"{k}={list(v.shape)} ({str(v.dtype).replace('torch.', '')})"
                                             for k, v in x.items())
    return f"shape {list(x.shape)} ({str(x.dtype).replace('torch.', '')})"


def _is_keyword_batch(b: Any) -> bool:
    return isinstance(b, Mapping) and bool(b) and all(isinstance(v, torch.Tensor) for v in b.values())


_DEFAULT_LOSS = nn.functional.cross_entropy


def _check_class_targets(pred: torch.Tensor, y: torch.Tensor) -> None:
    """Cross-entropy targets must be class indices in ``[0, classes)``: raise ``ValueError`` saying so."""
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"the training targets are {str(y.dtype).replace('torch.', '')}; the default loss "
                         "(cross-entropy) takes class indices (int64), e.g. y.long(); pass loss= for other targets")
    classes = pred.shape[1] if pred.dim() > 1 else 1
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"training target {int(y.max()) if int(y.max()) >= classes else int(y.min())} is outside "
                         f"the model's {classes} output classes (0..{classes - 1})")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; ``targets`` is ``None`` for unlabelled data (a bare tensor or a
    1-tuple, as a ``Dataset`` of inputs only or ``TensorDataset(X)`` yields). Inputs are a tensor, or keyword
    inputs: a dict ``{name: tensor}`` (alone, or first in the tuple).

    Raises:
        TypeError: the batch is neither a tensor, a dict of tensors, nor a tuple/list starting with one.
    """
    if isinstance(batch, torch.Tensor) or _is_keyword_batch(batch):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and (
            isinstance(batch[0], torch.Tensor) or _is_keyword_batch(batch[0])):
        return batch[0], (batch[1] if len(batch) >= 2 else None)
    raise TypeError(f"each batch of the data must be a tensor of inputs, or (inputs,) / (inputs, targets) tensors; "
                    f"got a {type(batch).__name__}; give data as {_FORMS} (or a step_fn that unpacks your batches)")


def _as_loader(data: Any, batch_size: int, shuffle: bool, seed: int, what: str = "training/eval data") -> Iterable:
    """``data`` as an iterable of batches.

    Raises:
        TypeError: ``data`` is none of :data:`_FORMS` (a string, a dict, a list of more or fewer than 2 tensors...).
        ValueError: ``(inputs, targets)`` tensors of different lengths.
    """
    if data is None:
        return None
    if isinstance(data, DataLoader):
        return data
    if _is_keyword_batch(data):  # keyword inputs, one row per example
        data = KeywordDataset(data)
    if isinstance(data, (str, bytes, Mapping)):
        hint = (" (a path or a data set name? load it first, e.g. dccomp.data.get_dataset('fashion-mnist', "
                "'train'))" if isinstance(data, (str, bytes)) else
                " (a dict is read as keyword inputs only when every value is a tensor)")
        raise TypeError(f"{what} must be {_FORMS}; got a {type(data).__name__}{hint}")
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        if len(data) != 2:
            raise TypeError(f"{what}: got a {type(data).__name__} of {len(data)} tensors; expected (inputs, "
                            "targets), two tensors with the same first dimension (e.g. (X, y) with X of shape "
                            "(N, ...) and y of shape (N,)), or a list of (inputs, targets) batches")
        x, y = data
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise ValueError(f"{what}: inputs and targets must have the same first dimension (one target per "
                             f"example), got inputs {tuple(x.shape)} and targets {tuple(y.shape)}")
        data = TensorDataset(x, y)
    if isinstance(data, torch.Tensor):  # unlabelled inputs (N, ...): distillation
        if data.dim() == 0:
            raise ValueError(f"{what}: a tensor of inputs needs a first (example) dimension, got a scalar")
        data = TensorDataset(data)
    if isinstance(data, Dataset):
        if hasattr(data, "__len__") and len(data) == 0:
            raise ValueError(f"{what} is empty (0 examples); give at least one batch of examples")
        g = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)
    if isinstance(data, Iterable):
        return data
    raise TypeError(f"{what} must be {_FORMS}; got {type(data).__name__}")


@contextlib.contextmanager
def _data_parallel(module: nn.Module, opt: torch.optim.Optimizer) -> Iterator[dist.GradientSync | None]:
    """Under ``torch.distributed`` (more than one rank): rank 0's values on every rank, then gradients
    all-reduced before each step (see :mod:`dccomp.dist`); yields ``None`` in a single process."""
    if not dist.active():
        yield None
        return
    dist.broadcast_module(module, [p for g in opt.param_groups for p in g["params"]])
    with dist.GradientSync(opt, module) as sync:
        yield sync


class Trainer:
    """Data, loss and training loop for retraining.

    Args:
        train_data: ``Dataset``, ``DataLoader``, iterable of ``(inputs, targets)`` batches, or ``(X, y)`` tensors;
            or unlabelled inputs for distillation (``retrain{distill=1}``): a tensor ``X``, a ``Dataset`` or
            ``DataLoader`` yielding inputs only, or keyword inputs (``{name: tensor (N, ...)}``, or batches that
            are such dicts: the model is called as ``model(**batch)``).
        eval_data: same forms, for :meth:`evaluate` (top-1 accuracy).
        loss: ``loss(outputs, targets) -> scalar tensor``; cross-entropy by default.
        batch_size: used when the data is not already a DataLoader.
        step_fn: optional user step ``step_fn(module, batch, optimizer) -> float`` (forward, backward, step).
        max_batches: stop each epoch after this many batches (for quick runs and tests).
    """

    def __init__(self, train_data: Any = None, eval_data: Any = None, loss: Callable | None = None, *,
                 batch_size: int = 128, eval_batch_size: int = 1000, step_fn: Callable | None = None,
                 max_batches: int | None = None, device: str | torch.device = "cpu"):
        self.train_data, self.eval_data = train_data, eval_data
        self.loss = loss or _DEFAULT_LOSS
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.step_fn = step_fn
        self.max_batches = max_batches
        self.device = torch.device(device)
        _as_loader(train_data, batch_size, True, 0, "train_data")  # type check early
        _as_loader(eval_data, eval_batch_size, False, 0, "eval_data")

    def _step(self, module: nn.Module, batch: Any, opt: torch.optim.Optimizer,
              objective: Callable | None = None) -> float:
        if self.step_fn is not None:
            return float(self.step_fn(module, batch, opt))
        x, y = split_batch(batch)
        x, y = _to(x, self.device), (None if y is None else y.to(self.device))
        opt.zero_grad(set_to_none=True)
        if objective is None and y is None:
            raise ValueError("the training data has no labels (batches hold inputs only); train on (inputs, "
                             "targets), or distil from the uncompressed model with retrain{distill=1} (prune's "
                             "own retraining needs labels: use prune{epochs=0} followed by retrain{distill=1})")
        try:
            pred = call_model(module, x)
        except Exception as e:  # noqa: BLE001 - the model rejects the batch: say which data was wrong
            raise ValueError(f"the model cannot run on a training batch of {_describe(x)}: "
                             f"{str(e).strip().splitlines()[0]}; the training inputs must have the shape the model "
                             "takes") from e
        if objective is not None:
            out = objective(pred, x, y)
        else:
            if self.loss is _DEFAULT_LOSS:
                _check_class_targets(pred, y)
            out = self.loss(pred, y)
        out.backward()
        opt.step()
        return float(out.detach())

    def fit(self, module: nn.Module, params: Sequence[torch.Tensor] | Sequence[dict], *, epochs: float = 1, optimizer: str = "sgd",
            lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
            after_step: Callable[[torch.optim.Optimizer], None] | None = None,
            progress: Callable | None = None, seed: int = 0, schedule: str = "constant",
            objective: Callable | None = None) -> dict[str, float]:
        """Train ``params`` (tensors or torch param-group dicts) of ``module`` for ``epochs`` (fractions allowed).

        ``objective(outputs, inputs, targets_or_None) -> scalar loss`` replaces ``loss(outputs, targets)`` (used
        for distillation, where targets may be absent); it cannot be combined with a user ``step_fn``.

        ``after_step(optimizer)`` runs after every optimizer step (dccomp re-applies masks there).
        ``schedule``: ``constant`` learning rate, or ``cosine`` (decayed to 0 over the epochs, per epoch).
        Under ``torch.distributed`` with more than one rank every rank must call ``fit`` with the same arguments;
        ``batch_size`` is then the global batch (all ranks together), as in one process.

        Returns:
            ``{"loss": mean training loss of the last epoch, "steps": number of steps}``.

        Raises:
            ValueError: no training data, or epochs < 0.
        """
        if self.train_data is None:
            raise ValueError("retraining needs training data: pass train_data=... (and loss=...) to "
                             "dccomp.compile, or a dccomp.Trainer")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        if objective is not None and self.step_fn is not None:
            raise ValueError("a custom training objective (distillation) cannot be combined with a user step_fn: "
                             "compute the distillation loss inside your step_fn, or drop step_fn")
        opt = make_optimizer(list(params), optimizer, lr, momentum, weight_decay)
        with _data_parallel(module, opt) as sync:
            return self._fit(module, opt, sync, epochs, after_step, progress, seed, schedule, objective)

    def _fit(self, module: nn.Module, opt: torch.optim.Optimizer, sync: Any, epochs: float,
             after_step: Callable | None, progress: Callable | None, seed: int, schedule: str,
             objective: Callable | None) -> dict[str, float]:
        base = [g["lr"] for g in opt.param_groups]
        module.train()
        steps, last = 0, float("nan")
        full, frac = int(epochs), epochs - int(epochs)
        n_epochs = full + (1 if frac > 0 else 0)
        for ep in range(n_epochs):
            if schedule == "cosine":
                for g, b0 in zip(opt.param_groups, base):
                    g["lr"] = b0 * 0.5 * (1 + math.cos(math.pi * ep / n_epochs))
            loader = _as_loader(self.train_data, self.batch_size, True, seed * 1000 + ep)
            if sync is not None:
                loader = dist.shard_loader(loader)
            limit = self.max_batches
            if ep == full:  # fractional last epoch
                n = len(loader) if hasattr(loader, "__len__") else None
                limit = max(1, int(round(frac * (n if n is not None else (limit or 1)))))
                if self.max_batches is not None:
                    limit = min(limit, self.max_batches)
            total, count = 0.0, 0
            it = enumerate(loader)
            if progress is not None:
                n = len(loader) if hasattr(loader, "__len__") else None
                it = progress(it, total=min(n, limit) if (n and limit) else (limit or n), desc=f"epoch {ep + 1}")
            for b, batch in it:
                if limit is not None and b >= limit:
                    break
                if sync is not None:
                    sync.local_n = dist.batch_len(batch)
                loss = self._step(module, batch, opt, objective)
                # under torch.distributed: this rank's share of the global batch's mean loss (summed below)
                total += loss if sync is None else loss * sync.local_n / sync.total_n
                count += 1
                steps += 1
                if after_step is not None:
                    after_step(opt)
            total = dist.all_reduce_sum([total])[0] if sync is not None else total
            last = total / max(count, 1)
        if sync is not None:
            dist.check_replicated(module.state_dict(), "parameter")
        return {"loss": last, "steps": steps}

    @torch.no_grad()
    def evaluate(self, module: nn.Module | Callable, data: Any = None) -> dict[str, float]:
        """Top-1 accuracy (fraction in [0, 1]) and mean loss of ``module`` on ``data`` (default: eval_data).

        Raises:
            ValueError: no evaluation data.
        """
        data = self.eval_data if data is None else data
        if data is None:
            raise ValueError("evaluation needs eval_data=...")
        if isinstance(module, nn.Module):
            was = module.training
            module.eval()
        correct, n, loss_sum = 0, 0, 0.0
        for batch in _as_loader(data, self.eval_batch_size, False, 0):
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("accuracy needs labelled eval data (inputs, targets); this batch has inputs only")
            x, y = _to(x, self.device), y.to(self.device)
            out = call_model(module, x)
            loss_sum += float(self.loss(out, y)) * len(y)
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
        if isinstance(module, nn.Module) and was:
            module.train()
        return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}
