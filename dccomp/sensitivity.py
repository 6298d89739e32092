"""Per-layer sensitivity: accuracy vs sparsity and vs bits, one layer at a time, without retraining.

Deep Compression (Han, Mao, Dally, ICLR 2016) Fig. 6 and Han et al. (NIPS 2015) Fig. 5 prune (or quantize) one
layer while every other layer stays as it is and plot the accuracy; the curves show which layers tolerate
more pruning or fewer bits. :func:`analyze` measures, for every compressible weight and every point of the grid
``sparsity x bits`` (``bits=None``: pruned but not clustered), the top-1 accuracy on the given data and the
estimated size in bytes that layer would take in the file (:func:`estimate_bytes`). Results are cached as JSON
under the dccomp cache folder, keyed by the SHA-256 of the model's state, the data and the settings.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .coding.sparse import encode_positions
from .ir import IR, State

__all__ = ["Point", "LayerCurve", "Sensitivity", "analyze", "estimate_bytes", "entropy_bits",
           "SPARSITIES", "BITS"]

#: default grid (fraction of all entries removed; bits per cluster index)
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
BITS = (2, 3, 4, 5, 6, 8)
_INDEX_BITS = (3, 4, 5, 6, 7, 8, 10, 12)  # the widths entropy-code{index_bits=auto} tries
_VERSION = 1  # bump when the measurement changes, so old cache entries are not reused


def entropy_bits(symbols: np.ndarray) -> float:
    """Total Shannon information of a symbol stream in bits, ``n * H`` with H from the stream's own counts
    (the size an ideal entropy coder reaches, excluding its table). ``symbols``: 1-D non-negative ints."""
    from .coding import entropy_bits as bound

    symbols = np.asarray(symbols, dtype=np.int64)
    return bound(symbols, int(symbols.max()) + 1) if symbols.size else 0.0


def estimate_bytes(mask: torch.Tensor, indices: torch.Tensor | None, k: int | None) -> float:
    """Estimated file bytes of one weight (Deep Compression §2-4 layout, as :mod:`dccomp.wcodec` writes it).

    Args:
        mask: bool tensor, ``True`` where the weight survives.
        indices: int64 cluster index per entry (read at surviving positions), or ``None`` (unclustered: survivors
            stored as raw float32).
        k: codebook size (``None`` when unclustered).

    Returns:
        bytes (float): relative-index gaps at the best width of ``(3..12)`` as ``n_fields * H(gaps) / 8`` plus a
        one-byte-per-symbol code-length table, plus cluster indices as ``nnz * H(indices) / 8`` with a ``k``-byte
        table and the float32 codebook (``4k``); biases are not included. An entropy estimate: canonical Huffman
        lands within ~1.5% above it (``/work/shared/libs-notes.md``), ANS within 0.01%.
    """
    flat = mask.reshape(-1)
    pos = torch.nonzero(flat).reshape(-1).numpy()
    best = math.inf
    for ib in _INDEX_BITS:
        gaps, _ = encode_positions(pos, flat.numel(), ib)
        best = min(best, entropy_bits(np.asarray(gaps)) / 8 + (1 << ib))
    if indices is None:
        return best + 4.0 * pos.size
    codes = indices.reshape(-1)[flat].numpy()
    return best + entropy_bits(codes) / 8 + k + 4.0 * k


@dataclass
class Point:
    """One measurement: the layer pruned to ``sparsity`` (fraction of all its entries removed) and clustered to
    ``bits`` (``None``: not clustered), every other layer unchanged. ``accuracy``: top-1 in [0, 1];
    ``bytes``: :func:`estimate_bytes` of the layer in that state."""

    sparsity: float
    bits: int | None
    accuracy: float
    bytes: float


@dataclass
class LayerCurve:
    """The grid of :class:`Point` s of one weight (``name``, layer ``kind``, ``n`` entries)."""

    name: str
    kind: str
    n: int
    points: list[Point] = field(default_factory=list)

    def accuracy(self, sparsity: float, bits: int | None) -> float:
        """Accuracy at a grid point (raises ``KeyError`` naming the point if it was not measured)."""
        for p in self.points:
            if p.bits == bits and abs(p.sparsity - sparsity) < 1e-9:
                return p.accuracy
        raise KeyError(f"{self.name}: no measurement at sparsity={sparsity}, bits={bits}")


@dataclass
class Sensitivity:
    """Result of :func:`analyze`: ``baseline`` accuracy (nothing changed), one :class:`LayerCurve` per weight,
    the ``settings`` it was measured with, its cache ``key`` and whether it came ``from_cache``."""

    baseline: float
    layers: dict[str, LayerCurve]
    settings: dict[str, Any]
    key: str = ""
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (what the cache stores)."""
        return {"baseline": self.baseline, "settings": self.settings, "key": self.key,
                "layers": {n: asdict(c) for n, c in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], from_cache: bool = False) -> "Sensitivity":
        layers = {n: LayerCurve(c["name"], c["kind"], c["n"], [Point(**p) for p in c["points"]])
                  for n, c in d["layers"].items()}
        return cls(d["baseline"], layers, d["settings"], d.get("key", ""), from_cache)

    def table(self) -> str:
        """Two text tables (paper Fig. 6 as numbers): top-1 (%) per layer vs sparsity (not clustered), and vs
        bits at the smallest measured sparsity."""
        s_grid = self.settings["sparsities"]
        b_grid = self.settings["bits"]
        s0 = min(s_grid)
        lines = [f"baseline top-1 {100 * self.baseline:.2f}%", "",
                 "top-1 (%) vs sparsity (one layer pruned, not clustered)",
                 f"{'layer':<16}" + "".join(f"{s:>7g}" for s in s_grid)]
        for c in self.layers.values():
            lines.append(f"{c.name:<16}" + "".join(f"{100 * c.accuracy(s, None):>7.2f}" for s in s_grid))
        lines += ["", f"top-1 (%) vs bits (one layer clustered, sparsity {s0:g})",
                  f"{'layer':<16}" + "".join(f"{b:>7d}" for b in b_grid)]
        for c in self.layers.values():
            lines.append(f"{c.name:<16}" + "".join(f"{100 * c.accuracy(s0, b):>7.2f}" for b in b_grid))
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Draw accuracy vs sparsity and vs bits (one line per layer) to ``path`` (PNG/PDF by suffix).
        Needs matplotlib (imported here only). Raises ``ImportError`` saying how to install it."""
        try:
            from matplotlib.figure import Figure  # object-oriented API: no pyplot global state
        except ImportError as e:
            raise ImportError("Sensitivity.plot needs matplotlib: pip install matplotlib") from e
        s_grid, b_grid = self.settings["sparsities"], self.settings["bits"]
        fig = Figure(figsize=(10, 4))
        a1, a2 = fig.subplots(1, 2)
        for c in self.layers.values():
            a1.plot(s_grid, [100 * c.accuracy(s, None) for s in s_grid], marker="o", label=c.name)
            a2.plot(b_grid, [100 * c.accuracy(min(s_grid), b) for b in b_grid], marker="o", label=c.name)
        a1.set_xlabel("sparsity (fraction pruned)")
        a2.set_xlabel("bits per cluster index")
        for a in (a1, a2):
            a.set_ylabel("top-1 (%)")
            a.axhline(100 * self.baseline, color="gray", ls="--", lw=1)
            a.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        return path


def _as_xy(data: Any, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors from an ``(X, y)`` tuple, a Dataset or a DataLoader (first ``max_samples``)."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        n = len(data) if max_samples is None else min(len(data), max_samples)
        items = [data[i] for i in range(n)]
        x, y = torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])
    else:
        raise TypeError("sensitivity data must be (X, y) tensors, a Dataset or a DataLoader of (input, label) "
                        f"pairs; got {type(data).__name__}")
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"sensitivity data needs one label per input and at least one example; got inputs "
                         f"{tuple(x.shape)} and labels {tuple(y.shape)}")
    return x, y


@torch.no_grad()
def _accuracy(gm: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    correct = sum(int((gm(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def _finetune(ir: IR, name: str, mask: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor], batch: int,
              lr: float, seed: int) -> None:
    """One pass of SGD over ``data`` on the whole model with ``name`` pruned to ``mask`` (other masks kept)."""
    masks = {n: w.mask for n, w in ir.weights.items() if w.mask is not None}
    masks[name] = mask if name not in masks else masks[name] & mask
    params = {n: ir.param(n) for n in masks}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].masked_fill_(~m, 0.0)
    x, y = data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD([q for q in ir.gm.parameters() if q.requires_grad], lr=lr, momentum=0.9)
    ir.gm.train()
    with torch.enable_grad():
        for i in range(0, len(x), batch):
            j = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(ir.gm(x[j]), y[j]).backward()
            opt.step()
            with torch.no_grad():
                for n, m in masks.items():
                    params[n].masked_fill_(~m, 0.0)
    ir.gm.eval()


def _key(ir: IR, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({**settings, "v": _VERSION}, sort_keys=True).encode())
    for name, t in sorted(ir.gm.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for w in ir.weights.values():
        if w.mask is not None:
            h.update(w.name.encode() + w.mask.numpy().tobytes())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def analyze(ir: IR, data: Any, *, sparsities: Sequence[float] = SPARSITIES, bits: Sequence[int] = BITS,
            init: str = "linear", empty: str = "reseed", max_samples: int | None = 5000, seed: int = 0,
            cache: bool | str | Path = True, finetune: Any = None, finetune_batch: int = 128,
            finetune_lr: float = 0.01) -> Sensitivity:
    """Measure each layer's accuracy over the grid ``sparsities x ([None] + bits)``, one layer at a time.

    Each point prunes that layer's weight by magnitude (:func:`dccomp.passes.prune.prune_weight`), optionally
    clusters its survivors (:func:`dccomp.passes.cluster.cluster_weight` with ``init``/``empty``), evaluates
    top-1 accuracy on ``data`` and restores the layer; nothing is retrained (paper Fig. 6 / NIPS'15 Fig. 5).

    Args:
        ir: the model's IR; its weights must be dense or masked (not clustered). It is left unchanged.
        data: labelled data, ``(X, y)`` tensors, a Dataset or a DataLoader; the first ``max_samples`` are used.
        sparsities: fractions of each layer's entries removed, each in [0, 1).
        bits: bits per cluster index, each in [1, 16].
        cache: ``True`` (the dccomp cache folder, ``$DCCOMP_CACHE`` or ``~/.cache/dccomp``), a folder, or
            ``False``. The key covers every parameter and buffer, the masks, the data and the settings.
        finetune: optional labelled data (same forms as ``data``; use examples other than ``data``'s). When
            given, after pruning a layer the whole model is fine-tuned for one pass over it (SGD, momentum 0.9,
            ``finetune_lr``, batches of ``finetune_batch``, cross-entropy, masks kept) before that sparsity's
            points are measured: a cheap proxy of how much retraining recovers (one-shot drops overstate the
            damage of pruning large redundant layers relative to small ones).

    Returns:
        :class:`Sensitivity` (its ``from_cache`` says whether it was read from the cache).

    Raises:
        ValueError: a clustered weight, a grid value out of range, or unusable data.
    """
    from dccomp.passes.cluster import cluster_weight
    from dccomp.passes.prune import prune_weight

    for s in sparsities:
        if not 0 <= s < 1:
            raise ValueError(f"sensitivity sparsities must be in [0, 1), got {s!r}")
    for b in bits:
        if not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"sensitivity bits must be integers in [1, 16], got {b!r}")
    for w in ir.weights.values():
        if w.state >= State.CLUSTERED:
            raise ValueError(f"sensitivity analysis needs unclustered weights, but {w.name!r} is {w.state}; "
                             "run it before cluster")
    x, y = _as_xy(data, max_samples)
    ft = _as_xy(finetune, None) if finetune is not None else None
    settings = {"sparsities": [float(s) for s in sparsities], "bits": [int(b) for b in bits], "init": init,
                "empty": empty, "seed": seed, "n": len(x), "finetune": 0 if ft is None else len(ft[0]),
                "finetune_batch": finetune_batch, "finetune_lr": finetune_lr}
    key = _key(ir, x, y, settings)
    if ft is not None:
        key = hashlib.sha256((key + _key(ir, *ft, settings)).encode()).hexdigest()[:20]
    path = None
    if cache is not False:
        from .demo import cache_dir

        folder = cache_dir() if cache is True else Path(cache)
        path = folder / f"sensitivity-{key}.json"
        if path.exists():
            try:
                return Sensitivity.from_dict(json.loads(path.read_text()), from_cache=True)
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # a corrupt entry is measured again, never trusted
    gm = ir.gm
    was = gm.training
    gm.eval()
    baseline = _accuracy(gm, x, y)
    if ft is not None:  # the reference is the model fine-tuned with nothing more pruned (fine-tuning alone moves it)
        saved0 = {k: v.clone() for k, v in gm.state_dict().items()}
        first = next(iter(ir.weights.values()), None)
        if first is not None:
            _finetune(ir, first.name, torch.ones_like(ir.param(first.name), dtype=torch.bool), ft,
                      finetune_batch, finetune_lr, seed)
            baseline = _accuracy(gm, x, y)
            gm.load_state_dict(saved0)
    layers: dict[str, LayerCurve] = {}
    try:
        for w in ir.weights.values():
            p = ir.param(w.name)
            orig = p.detach().clone()
            saved = {k: v.clone() for k, v in gm.state_dict().items()}
            curve = LayerCurve(w.name, w.kind, orig.numel())
            try:
                for s in settings["sparsities"]:
                    mask = prune_weight(orig, w.mask, sparsity=s)
                    pruned = orig * mask
                    if ft is not None:
                        gm.load_state_dict(saved)
                        _finetune(ir, w.name, mask, ft, finetune_batch, finetune_lr, seed)
                        pruned = p.detach().clone()
                    for b in [None] + settings["bits"]:
                        if b is None:
                            value, idx, k = pruned, None, None
                        else:
                            cb, idx = cluster_weight(pruned, mask, b, init=init, seed=seed, empty=empty)
                            k = int(cb.numel())
                            value = torch.where(mask, cb[idx], torch.zeros(()))
                        with torch.no_grad():
                            p.copy_(value)
                        curve.points.append(Point(s, b, _accuracy(gm, x, y), estimate_bytes(mask, idx, k)))
            finally:
                gm.load_state_dict(saved)
            layers[w.name] = curve
    finally:
        gm.train(was)
    result = Sensitivity(baseline, layers, settings, key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        tmp.replace(path)
    return result
