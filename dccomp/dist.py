"""Data-parallel retraining on ``torch.distributed`` (used by :class:`dccomp.train.Trainer` when a process group
with more than one rank is initialized, e.g. under ``torchrun --nproc-per-node N -m dccomp.cli compress ...``).

Scheme (synchronous data parallelism, as DDP; Goyal et al. 2017): every rank holds the whole model. Each global
batch -- exactly the batch a one-process run would draw (same loader, same generator) -- is split into ``N``
nearly equal contiguous shards, one per rank (:class:`GlobalBatchSampler`). Before every optimizer step the gradients of all
trained tensors -- model weights and biases, and the centroids of clustered weights, whose gradient is the
per-cluster sum of Deep Compression Eq. 3 -- are all-reduced, each rank's gradient weighted by its share of the
global batch (``sum_r n_r g_r / sum_r n_r``, exact for mean-reduced losses even when shards differ in size), and
floating-point buffers (BatchNorm statistics) are taken from rank 0, as DDP's ``broadcast_buffers`` does. Every
rank then applies the same step to the same values, so weights, masks and codebooks stay identical on all ranks;
:func:`check_replicated` verifies that at the end of each training run.

Differences from a one-process run: floating-point summation order (the gradient is summed in another order),
BatchNorm batch statistics (computed per shard), and a last global batch with fewer examples than ranks is dropped.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

__all__ = ["world", "active", "is_main", "init_from_env", "GlobalBatchSampler", "shard_bounds", "shard_batch",
           "batch_len", "shard_loader", "GradientSync", "broadcast_module", "all_reduce_sum", "check_replicated",
           "compression_state", "launch"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when no process group is initialized."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def active() -> bool:
    """Whether training runs data-parallel: a process group with more than one rank is initialized."""
    return world()[1] > 1


def is_main() -> bool:
    """Whether this process is rank 0 (or not distributed): the one that writes files and prints."""
    return world()[0] == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialize the default process group from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE`` > 1 and none is initialized yet.

    Args:
        backend: ``gloo`` (CPU, the default) or ``nccl``.

    Returns:
        whether a process group with more than one rank is active afterwards.

    Raises:
        ValueError: ``WORLD_SIZE`` is not an integer.
    """
    size = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(size)
    except ValueError:
        raise ValueError(f"$WORLD_SIZE is {size!r}, not an integer; launch with torchrun --nproc-per-node N") from None
    if n > 1 and torch.distributed.is_available() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend or "gloo")
    return active()


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's shard of each global batch: the batches of ``batch_sampler`` (the one-process data loader's),
    each split into ``world_size`` contiguous shards of sizes differing by at most 1 (rank r gets shard r). A
    last batch with fewer examples than ranks is dropped (some rank would get none).

    Args:
        batch_sampler: yields the global batches (lists of example indices), identically on every rank (a
            ``BatchSampler`` over a seeded ``RandomSampler`` or a ``SequentialSampler``).
        rank, world_size: this process's rank and the number of ranks.

    Raises:
        ValueError: the global batch size is smaller than ``world_size`` (a rank would get no example), or a rank
            out of range.
    """

    def __init__(self, batch_sampler: Any, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        bs = getattr(batch_sampler, "batch_size", None)
        if bs is not None and bs < world_size:
            raise ValueError(f"the global batch size {bs} is smaller than the {world_size} ranks: every rank "
                             "needs at least one example per step; use a batch size >= the number of ranks")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            if len(batch) < self.world_size:
                continue
            lo, hi = shard_bounds(len(batch), self.rank, self.world_size)
            yield list(batch[lo:hi])

    def __len__(self) -> int:
        bs, sampler = getattr(self.batch_sampler, "batch_size", None), getattr(self.batch_sampler, "sampler", None)
        if bs is None or sampler is None or getattr(self.batch_sampler, "drop_last", False):
            return len(self.batch_sampler)
        full, rest = divmod(len(sampler), bs)
        return full + (1 if rest >= self.world_size else 0)


def shard_bounds(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous shard of ``m`` items (the first ``m % world_size`` ranks get
    one more)."""
    q, r = divmod(m, world_size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's shard (along dim 0) of a batch: a tensor, or tuples/lists/dicts of them (keyword inputs),
    nested, all with the same first dimension.

    Raises:
        TypeError: the batch is of another form (then give the data as a Dataset, which is sharded by index).
    """
    lo, hi = shard_bounds(batch_len(batch), rank, world_size)

    def cut(b: Any) -> Any:
        if isinstance(b, torch.Tensor) and b.dim():
            return b[lo:hi]
        if isinstance(b, (tuple, list)) and b:
            return type(b)(cut(t) for t in b)
        if isinstance(b, Mapping) and b:
            return {k: cut(v) for k, v in b.items()}
        raise TypeError(f"under torch.distributed dccomp shards each batch along its first dimension; a batch "
                        f"holding a {type(b).__name__} cannot be sharded: give the training data as a Dataset or "
                        "(X, y) tensors (then each rank loads only its shard)")

    return cut(batch)


def batch_len(batch: Any) -> int:
    """Number of examples of a batch (first dimension of its first tensor, searched depth-first through tuples,
    lists and dicts; 1 if it has none)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    items = list(batch.values()) if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else []
    for t in items:
        if isinstance(t, (torch.Tensor, tuple, list, Mapping)):
            return batch_len(t)
    return 1


class _ShardedBatches:
    """Each batch of ``batches`` cut to this rank's shard (batches with fewer examples than ranks dropped)."""

    def __init__(self, batches: Any, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            if batch_len(batch) >= self.world_size:
                yield shard_batch(batch, self.rank, self.world_size)


class _SizedShardedBatches(_ShardedBatches):
    def __len__(self) -> int:
        return len(self.batches)


def shard_loader(loader: Any) -> Any:
    """This rank's view of ``loader`` (a ``DataLoader`` or an iterable of batches).

    A ``DataLoader`` over a map-style data set (with its automatic batching) is rebuilt on a
    :class:`GlobalBatchSampler` over its own batch sampler and with its own (unused yet) generator, so each rank
    loads only its shard of exactly the global batches the one-process loader would yield; any other iterable is
    iterated whole on every rank and each batch cut to the rank's shard (:func:`shard_batch`).
    """
    rank, size = world()
    if (isinstance(loader, DataLoader) and loader.batch_size is not None and hasattr(loader.dataset, "__len__")
            and isinstance(loader.batch_sampler, BatchSampler)):
        return DataLoader(loader.dataset, batch_sampler=GlobalBatchSampler(loader.batch_sampler, rank, size),
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                          generator=loader.generator)
    return (_SizedShardedBatches if hasattr(loader, "__len__") else _ShardedBatches)(loader, rank, size)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sums of ``values`` over all ranks (float64); ``values`` unchanged when not distributed."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


class GradientSync:
    """All-reduce of the gradients of an optimizer's tensors before each of its steps (a step pre-hook), each
    rank's gradient weighted by its number of examples ``local_n`` (set it before each step); floating-point
    buffers of ``module`` are broadcast from rank 0 at the same time.

    A tensor whose gradient is ``None`` on every rank keeps ``None`` (the optimizer skips it, as in one process).
    Use as a context manager: the hook is removed on exit.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, module: nn.Module | None = None):
        self.optimizer, self.module = optimizer, module
        self.local_n = 1
        self.total_n = 1.0  # examples of the last global batch (all ranks), known after its sync
        self._handle = None

    def __enter__(self) -> "GradientSync":
        self._handle = self.optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.sync())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def sync(self) -> None:
        """Average the gradients over the ranks (weighted by ``local_n``) and broadcast the buffers."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        n = float(self.local_n)
        flat = [(p.grad.detach().reshape(-1).double() * n) if p.grad is not None
                else torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in params]
        flags = torch.tensor([p.grad is not None for p in params] + [n], dtype=torch.float64,
                             device=params[0].device if params else None)
        buf = torch.cat(flat + [flags])
        torch.distributed.all_reduce(buf)
        total = self.total_n = float(buf[-1])
        off = 0
        for i, p in enumerate(params):
            k = p.numel()
            if float(buf[len(buf) - 1 - len(params) + i]) > 0:
                g = (buf[off:off + k] / total).to(p.dtype).view_as(p)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)
            off += k
        if self.module is not None:
            for b in self.module.buffers():
                if b.is_floating_point() or b.dtype == torch.int64:
                    torch.distributed.broadcast(b, 0)


def broadcast_module(module: nn.Module, extra: Sequence[torch.Tensor] = ()) -> None:
    """Copy rank 0's parameters and buffers of ``module`` (and the ``extra`` tensors) to every rank."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()) + list(extra):
            torch.distributed.broadcast(t.data, 0)


def _digest(t: torch.Tensor) -> bytes:
    a = t.detach().cpu().contiguous()
    if a.dtype == torch.bfloat16:
        a = a.float()
    return hashlib.sha256(a.numpy().tobytes()).digest()


def check_replicated(named: dict[str, torch.Tensor], what: str = "tensor") -> None:
    """Check that every tensor of ``named`` is bit-identical on all ranks (SHA-256 digests compared).

    Raises:
        RuntimeError: naming the tensors that differ between ranks (a user step that changed weights outside
            the optimizer, or randomness that differs per rank).
    """
    if not active():
        return
    names = sorted(named)
    mine = b"".join(_digest(named[k]) for k in names)
    gathered: list[Any] = [None] * world()[1]
    torch.distributed.all_gather_object(gathered, mine)
    bad = [names[i] for i in range(len(names))
           if any(g[32 * i:32 * (i + 1)] != mine[32 * i:32 * (i + 1)] for g in gathered)]
    if bad:
        raise RuntimeError(f"after distributed training the {what}s {', '.join(bad[:5])} differ between ranks; "
                           "every rank must start from the same weights and change them only through the optimizer")


def compression_state(ir: Any) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of an IR's whole state: every parameter and buffer of its graph module and each
    weight's mask, codebook and cluster indices (what must be identical on all ranks)."""
    out = {f"param:{k}": v for k, v in ir.gm.state_dict().items()}
    for w in ir.weights.values():
        for field in ("mask", "codebook", "indices"):
            t = getattr(w, field)
            if t is not None:
                out[f"{field}:{w.name}"] = t
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m dccomp.cli ARGV`` in ``nproc`` processes with ``torchrun --standalone`` (one machine).

    Returns:
        torchrun's exit status (0 when every rank succeeded).

    Raises:
        ValueError: ``nproc`` < 1.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dccomp.cli", *argv]
    return subprocess.call(cmd)
