"""Pictures of a ``.dcc`` file, drawn from the file alone (``dccomp plot F.dcc --out DIR``; needs ``dccomp[plot]``).

Per compressed layer, one PNG with the figures of the papers:

- the distribution of the surviving weights with the codebook centroids marked (Han et al., NIPS 2015, Fig. 4;
  Deep Compression, ICLR 2016, Fig. 4), over the dense baseline's distribution when one is given -- the file
  itself holds only the compressed weights;
- the distribution of the cluster indices and of the relative sparse indices (gaps between surviving weights,
  fillers included), the two symbol streams the Huffman coder codes (Deep Compression Fig. 5), each with its
  entropy against the fixed-width code;
- for per-channel codebooks (``(G, k)``: row g serves the dim-0 slices ``[g*S, (g+1)*S)``), the codebook rows.

And ``summary.png``: per layer, bits per surviving weight (P+Q and P+Q+H), index bits, and compression ratio.

matplotlib is imported only in this module (and only when drawing), through its object-oriented API (no pyplot
global state). PNGs are written atomically (temporary file + rename) and replace only PNG or empty regular files.
"""
from __future__ import annotations

import importlib.util
import io
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .coding.sparse import encode_positions
from .container import read_container
from .format import DccFile
from .report import SizeReport, report_from_manifest

__all__ = ["available", "LayerPlotData", "layer_data", "draw_layer", "draw_summary", "plot_file", "check_plot_dir"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class LayerPlotData:
    """What the per-layer figure shows, read off a ``.dcc`` file.

    Attributes:
        name, kind, shape: the weight's name, layer kind and shape.
        values: float32 (nnz,), the surviving weights (all weights when unpruned).
        codebook: float32 ``(k,)`` or per-channel ``(G, k)``; ``None`` when not clustered.
        indices: int64 (nnz,), the local cluster index of each surviving weight; ``None`` when not clustered.
        gaps: int (entries,), the relative sparse index stream (0 = filler); ``None`` when not pruned.
        index_bits: width of a gap field in bits (``None`` when not pruned).
        dense: float32, the dense baseline's weights of this tensor (any shape), or ``None``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    values: np.ndarray
    codebook: np.ndarray | None = None
    indices: np.ndarray | None = None
    gaps: np.ndarray | None = None
    index_bits: int | None = None
    dense: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of weights of the dense tensor."""
        return math.prod(self.shape)


def available() -> bool:
    """Whether matplotlib is installed (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def _open(path: str | os.PathLike) -> DccFile:
    return DccFile(read_container(os.fspath(path)))


def _dense_weights(dense: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    if dense is None:
        return {}
    if isinstance(dense, Mapping):
        return {k: v.detach().float().cpu().numpy() for k, v in dense.items() if isinstance(v, torch.Tensor)}
    f = _open(dense)
    return {name: f.tensor(name).float().numpy() for name in f.names if f.info(name)["role"] == "weight"}


def layer_data(path: str | os.PathLike | DccFile,
               dense: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> list[LayerPlotData]:
    """One :class:`LayerPlotData` per compressible weight of the ``.dcc`` file ``path`` (or an opened
    :class:`~dccomp.format.DccFile`), in file order.

    Args:
        dense: the dense baseline, as a ``.dcc`` file or a ``state_dict``; its tensor of the same name and shape
            is attached as ``dense``.

    Raises:
        FormatError: ``path`` (or ``dense``) is not a valid ``.dcc`` file. OSError: it cannot be read.
        ValueError: ``dense`` holds no tensor of the same name and shape as any of the file's weights (the
            baseline of another model).
    """
    f = path if isinstance(path, DccFile) else _open(path)
    base = _dense_weights(dense)
    if dense is not None:
        weights = {n: tuple(f.info(n)["shape"]) for n in f.names if f.info(n)["role"] == "weight"}
        fits = [n for n, shape in weights.items() if n in base and tuple(base[n].shape) == shape]
        if weights and not fits:
            raise ValueError(f"the dense baseline has none of the file's weights with their shapes "
                             f"({', '.join(list(weights)[:3])}...): give the dense file of the same model")
    out = []
    for name in f.names:
        e = f.info(name)
        if e["role"] != "weight":
            continue
        values, mask, codebook, indices = f.decode(name)
        flat = values.reshape(-1).numpy()
        live = mask.reshape(-1).numpy() if mask is not None else np.ones(flat.size, dtype=bool)
        gaps = None
        if mask is not None:
            gaps = encode_positions(np.flatnonzero(live), flat.size, int(e["index_bits"]))[0]
        ref = base.get(name)
        out.append(LayerPlotData(
            name, str(e["kind"]), tuple(e["shape"]), flat[live],
            None if codebook is None else codebook.numpy(),
            None if indices is None else indices.reshape(-1).numpy()[live],
            gaps, int(e["index_bits"]) if mask is not None else None,
            ref if ref is not None and tuple(ref.shape) == tuple(e["shape"]) else None))
    return out


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    return float(-(p * np.log2(p)).sum())


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _no_data(ax: Any, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_layer(d: LayerPlotData) -> bytes:
    """The per-layer figure of ``d`` as PNG bytes: weight distribution with centroids, cluster-index and
    relative-index distributions (plus the codebook rows for a per-channel codebook)."""
    per_channel = d.codebook is not None and d.codebook.ndim == 2
    fig = _figure(21 if per_channel else 16, 5.0)
    axes = fig.subplots(1, 4 if per_channel else 3)
    from matplotlib.patches import Patch

    nnz = d.values.size
    fig.suptitle(f"{d.name}  ({d.kind}, shape {'x'.join(map(str, d.shape))}): {nnz:,} of {d.n:,} weights kept "
                 f"({100 * nnz / max(d.n, 1):.1f}%)", fontsize=13)

    ax = axes[0]
    lo_hi = [float(d.values.min()), float(d.values.max())] if nnz else [-1.0, 1.0]
    if d.dense is not None and d.dense.size:
        lo_hi = [min(lo_hi[0], float(d.dense.min())), max(lo_hi[1], float(d.dense.max()))]
    bins = np.linspace(lo_hi[0], lo_hi[1], 101) if lo_hi[1] > lo_hi[0] else 10
    if d.dense is not None:
        ax.hist(d.dense.reshape(-1), bins=bins, histtype="stepfilled", color="0.8", edgecolor="0.5",
                label="dense baseline (before pruning)")
    ax.hist(d.values, bins=bins, color="tab:blue", alpha=0.85, label="stored weights (after compression)")
    if d.codebook is not None and d.codebook.size:
        if per_channel:
            ymax = ax.get_ylim()[1]
            ax.plot(d.codebook.reshape(-1), np.full(d.codebook.size, 0.02 * ymax), "|", color="tab:red",
                    markersize=14, alpha=0.4, label=f"centroids of {d.codebook.shape[0]} per-channel codebooks")
        else:
            for i, c in enumerate(d.codebook):
                ax.axvline(float(c), color="tab:red", linewidth=0.9, linestyle="--",
                           label=f"codebook centroids (k={d.codebook.size})" if i == 0 else None)
    ax.set_xlabel("weight value")
    if d.dense is not None:  # the survivors are a few percent of the dense weights: log scale shows both
        ax.set_yscale("log")
    ax.set_ylabel("number of weights" + (" (log scale)" if d.dense is not None else ""))
    ax.set_title("weights: dense baseline vs stored" if d.dense is not None else
                 "stored weights" + (" (after pruning)" if d.gaps is not None else ""))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)

    ax = axes[1]
    if d.codebook is None or d.indices is None:
        _no_data(ax, "cluster indices", "not clustered:\nweights stored as float32")
    else:
        k = d.codebook.shape[-1]
        counts = np.bincount(d.indices, minlength=k)[:k]
        ax.bar(np.arange(k), counts, width=0.85, color="tab:green")
        ax.set_xlabel("cluster index (local, per codebook)" if per_channel else "cluster index")
        ax.set_ylabel("number of weights")
        if k <= 32:
            ax.set_xticks(np.arange(0, k, 1 if k <= 16 else 2))
        fixed = max(1, (max(k, 2) - 1).bit_length())
        ax.set_title(f"cluster indices: entropy {_entropy(counts):.2f} bits vs {fixed} fixed")

    ax = axes[2]
    if d.gaps is None:
        _no_data(ax, "relative indices", "not pruned:\nno sparse index stored")
    else:
        m = 1 << int(d.index_bits)
        counts = np.bincount(d.gaps.astype(np.int64), minlength=m)[:m]
        colors = ["tab:orange"] * m
        colors[0] = "tab:purple"
        ax.bar(np.arange(m), counts, width=0.85, color=colors)
        ax.set_xlabel(f"gap to the previous surviving weight ({d.index_bits}-bit field)")
        ax.set_ylabel("number of entries")
        ax.set_title(f"relative indices: entropy {_entropy(counts):.2f} bits vs {d.index_bits} fixed")
        ax.legend(handles=[Patch(color="tab:purple", label=f"filler (0): {int(counts[0]):,}"),
                           Patch(color="tab:orange", label=f"gap 1..{m - 1}: {int(counts[1:].sum()):,}")],
                  fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)

    if per_channel:
        ax = axes[3]
        im = ax.imshow(d.codebook, aspect="auto", cmap="coolwarm", interpolation="nearest")
        ax.set_xlabel("centroid (local cluster index)")
        per_row = d.shape[0] // d.codebook.shape[0]
        ax.set_ylabel("codebook row = dim-0 channel" if per_row == 1 else f"codebook row ({per_row} dim-0 channels each)")
        ax.set_title(f"per-channel codebooks ({d.codebook.shape[0]} x {d.codebook.shape[1]})")
        fig.colorbar(im, ax=ax, label="centroid value")
    return _png(fig)


def draw_summary(rep: SizeReport, title: str) -> bytes:
    """Per-layer bar charts of bits per surviving weight (P+Q, P+Q+H, index bits) and compression ratio, as
    PNG bytes, from a size report (rows without a compressed weight, e.g. BatchNorm, are left out)."""
    rows = [r for r in rep.rows if r.weight_bits_pq is not None]
    fig = _figure(max(12.0, 1.3 * len(rows) + 6), 5.0)
    ax, ax2 = fig.subplots(1, 2)
    fig.suptitle(title, fontsize=13)
    x = np.arange(len(rows))
    tick: dict[str, Any] = {"rotation": 30, "ha": "right"} if len(rows) > 6 else {}
    series = [("weight bits P+Q", [r.weight_bits_pq for r in rows], "tab:blue"),
              ("weight bits P+Q+H", [r.weight_bits_pqh for r in rows], "tab:green"),
              ("index bits P+Q+H (P+Q if not coded)",
               [r.index_bits_pqh if r.index_bits_pqh is not None else r.index_bits_pq for r in rows], "tab:orange")]
    width = 0.27
    for j, (label, vals, color) in enumerate(series):
        ax.bar(x + (j - 1) * width, [v if v is not None else 0.0 for v in vals], width, label=label, color=color)
    ax.set_xticks(x, [r.layer for r in rows], **tick)
    ax.set_xlabel("layer")
    ax.set_ylabel("bits per surviving weight")
    ax.set_title("bits per weight")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    ratios = [r.ratio for r in rows]
    bars = ax2.bar(x, ratios, 0.6, color="tab:purple")
    ax2.bar_label(bars, [f"{v:.1f}x" for v in ratios], fontsize=8)
    ax2.axhline(rep.ratio, color="0.3", linestyle="--", label=f"whole file {rep.ratio:.1f}x")
    ax2.set_xticks(x, [r.layer for r in rows], **tick)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("dense float32 bytes / stored bytes")
    ax2.set_title("compression ratio per layer (weights, index, codebook, bias)")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return _png(fig)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "tensor"


def _file_names(layers: list[LayerPlotData]) -> list[str]:
    names, seen = [], {"summary.png"}
    for d in layers:
        base, i = _safe(d.name), 1
        cand = f"{base}.png"
        while cand in seen:
            i += 1
            cand = f"{base}-{i}.png"
        seen.add(cand)
        names.append(cand)
    return names


def check_plot_dir(out_dir: str | os.PathLike, names: list[str]) -> Path:
    """Create ``out_dir`` if needed and check that each of ``names`` may be written there.

    Rules: a new name is created; an existing PNG or empty regular file is replaced; anything else (a
    directory, link, device, FIFO, socket, or a regular file that is not a PNG) is never replaced.

    Raises:
        NotADirectoryError: ``out_dir`` exists and is not a directory. FileNotFoundError: its parent folder does
        not exist. FileExistsError: a target exists and must not be replaced (names it).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a folder; plots go into a folder: give "
                                 "a new or existing folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot create {str(out)!r}: folder {str(out.parent)!r} does not exist")
    out.mkdir(exist_ok=True)
    for name in names:
        p = out / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(f"{str(p)!r} exists and is not a regular file (a folder, link or special "
                                  "file); dccomp plot never replaces it: remove it or give another --out folder")
        if st.st_size:
            with open(p, "rb") as fh:
                if fh.read(len(_PNG_MAGIC)) != _PNG_MAGIC:
                    raise FileExistsError(f"{str(p)!r} exists and is not a PNG image; dccomp plot replaces only "
                                          "PNG files: remove it or give another --out folder")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    from .container import write_atomic

    write_atomic(path, [data])


def plot_file(path: str | os.PathLike, out_dir: str | os.PathLike,
              dense: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> list[Path]:
    """Draw the per-layer figures and ``summary.png`` of the ``.dcc`` file ``path`` into ``out_dir``.

    Args:
        path: the compressed model file. out_dir: folder for the PNGs (created if missing; see
            :func:`check_plot_dir` for what may be replaced). dense: optional dense baseline (``.dcc`` file or
            ``state_dict``) whose weight distributions are drawn under the compressed ones.

    Returns:
        the paths written: one PNG per compressed weight (named after it), then ``summary.png``.

    Raises:
        ImportError: matplotlib is missing (says how to install it). FormatError / OSError: see
        :func:`layer_data`; NotADirectoryError, FileNotFoundError, FileExistsError: see :func:`check_plot_dir`.
    """
    if not available():
        raise ImportError("dccomp plot needs matplotlib: pip install 'dccomp[plot]'")
    f = _open(path)
    layers = layer_data(f, dense)
    names = _file_names(layers)
    out = check_plot_dir(out_dir, names + ["summary.png"])  # every target checked before anything is drawn
    rep = report_from_manifest(f.meta, {s.name: s.length for s in f.container.sections}, f.file_size)
    written = []
    for d, name in zip(layers, names):
        _write_atomic(out / name, draw_layer(d))
        written.append(out / name)
    title = (f"{Path(path).name} ({f.meta.get('model', '?')}): {f.file_size:,} bytes, "
             f"{rep.ratio:.1f}x smaller than dense float32")
    _write_atomic(out / "summary.png", draw_summary(rep, title))
    written.append(out / "summary.png")
    return written
