"""Size accounting in the paper's columns (Deep Compression Tables 2-3), read off the file dccomp would write.

Every byte of the ``.dcc`` file is attributed to one row: a layer (its coded weight streams, codebook and the
dense parameters of the same module, e.g. its bias), a dense-only module (BatchNorm), or the container overhead
(header + JSON manifest). The total is the file size exactly.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from .errors import FormatError
from .format import plan_file
from .ir import IR

__all__ = ["LayerRow", "SizeReport", "size_report", "report_from_manifest"]


@dataclass
class LayerRow:
    """One row of the size table. Bits are per stored entry (weights: per surviving weight; indices: per gap
    entry, filler entries included); ``None`` where not applicable (e.g. no sparse index)."""

    layer: str
    n_weights: int
    kept: float  # fraction of weights kept (density)
    weight_bits_pq: float | None  # fixed-width bits per surviving weight (32 if not clustered)
    weight_bits_pqh: float | None  # after entropy coding
    index_bits_pq: float | None
    index_bits_pqh: float | None
    codebook_bytes: int
    dense_bytes: int  # raw parameters of this module (biases) and buffers
    total_bytes: int
    dense_fp32_bytes: int  # the same parameters as dense float32 (reference size)
    fillers: int = 0

    @property
    def ratio(self) -> float:
        return self.dense_fp32_bytes / self.total_bytes if self.total_bytes else float("inf")


@dataclass
class SizeReport:
    """Per-layer rows, the container overhead and the totals; ``total_bytes`` equals the file size."""

    model: str
    rows: list[LayerRow]
    overhead_bytes: int
    total_bytes: int
    dense_fp32_bytes: int
    coder: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # parameter -> why it was not (fully) compressed

    @property
    def ratio(self) -> float:
        """Compression ratio: dense float32 bytes of all parameters (biases included) / file bytes."""
        return self.dense_fp32_bytes / self.total_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        for r, row in zip(d["rows"], self.rows):
            r["ratio"] = row.ratio
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        def f(v, fmt="{:.2f}"):
            return "-" if v is None else fmt.format(v)

        head = (f"{'layer':<16}{'#weights':>10}{'kept':>8}{'w bits':>8}{'w bits':>8}{'idx bits':>9}{'idx bits':>9}"
                f"{'codebook':>9}{'raw':>8}{'total':>9}{'ratio':>8}\n"
                f"{'':<16}{'':>10}{'':>8}{'P+Q':>8}{'P+Q+H':>8}{'P+Q':>9}{'P+Q+H':>9}{'bytes':>9}{'bytes':>8}"
                f"{'bytes':>9}{'':>8}")
        lines = [head, "-" * 103]
        for r in self.rows:
            lines.append(f"{r.layer:<16}{r.n_weights:>10}{r.kept * 100:>7.1f}%{f(r.weight_bits_pq):>8}"
                         f"{f(r.weight_bits_pqh):>8}{f(r.index_bits_pq):>9}{f(r.index_bits_pqh):>9}"
                         f"{r.codebook_bytes:>9}{r.dense_bytes:>8}{r.total_bytes:>9}{r.ratio:>7.1f}x")
        lines.append(f"{'(header+manifest)':<16}{'':>10}{'':>8}{'':>8}{'':>8}{'':>9}{'':>9}{'':>9}{'':>8}"
                     f"{self.overhead_bytes:>9}")
        lines.append("-" * 103)
        lines.append(f"{'total':<16}{sum(r.n_weights for r in self.rows):>10}{'':>8}{'':>8}{'':>8}{'':>9}{'':>9}"
                     f"{'':>9}{'':>8}{self.total_bytes:>9}{self.ratio:>7.1f}x")
        for name, why in sorted(self.skipped.items()):
            lines.append(f"skipped: {name}: {why}")
        lines.append("bits are per surviving weight (P: pruning, Q: quantization, H: Huffman/entropy coding); "
                     "raw = biases, normalization and buffers stored as-is")
        lines.append(f"dense float32: {self.dense_fp32_bytes} bytes -> file: {self.total_bytes} bytes "
                     f"({self.ratio:.1f}x)")
        return "\n".join(lines)


def size_report(ir: IR) -> SizeReport:
    """Build the size table for ``ir``; ``total_bytes`` is the exact size of the file :func:`dccomp.save` writes."""
    plan = plan_file(ir)
    total = len(plan.to_bytes())
    rep = report_from_manifest(plan.meta, {k: len(v) for k, v in plan.sections.items()}, total)
    rep.skipped = dict(ir.skipped)
    rep.skipped.update({d.name: f"stored raw: {d.reason}" for d in ir.dense
                        if d.reason not in ("bias", "normalization")})
    rep.skipped.update({n: f"stored raw: {kind} unused by forward()"
                        for n, (_, kind) in getattr(ir, "unused", {}).items()})
    rep.skipped.update({n: "stored raw: buffer unused by forward()" for n in _unread_buffers(ir)})
    return rep


def _unread_buffers(ir: IR) -> list[str]:
    """Buffers of ``ir.gm``'s state dict that no graph node reads (neither a ``get_attr`` of the buffer nor a
    ``call_module`` of its owner)."""
    nodes = list(ir.gm.graph.nodes)
    attrs = {str(n.target) for n in nodes if n.op == "get_attr"}
    mods = tuple(f"{n.target}." for n in nodes if n.op == "call_module")
    sd = ir.gm.state_dict()
    return [name for name, _ in ir.gm.named_buffers() if name in sd and name not in attrs and not name.startswith(mods)]


def report_from_manifest(meta: dict, section_bytes: dict[str, int], total: int) -> SizeReport:
    """Size table from a ``.dcc`` manifest and its section sizes (works on a file without the architecture).

    Args:
        meta: the manifest (``{"model", "tensors": [...]}``) as written by :func:`dccomp.format.plan_file`.
        section_bytes: bytes of each section by name. total: the file size in bytes.
    """
    try:
        return _report(meta, section_bytes, total)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        raise FormatError(f"cannot build a size report from this manifest: {type(e).__name__}: {e}"[:300]) from None


def _report(meta: dict, section_bytes: dict[str, int], total: int) -> SizeReport:
    entries = {e["name"]: e for e in meta["tensors"]}
    module_of = {name: name.rsplit(".", 1)[0] if "." in name else name for name in entries}
    # One row per layer, labelled by its module (``fc1``); a module holding several compressible weights
    # (e.g. two F.linear parameters) gets one row per weight, labelled by the weight's name.
    n_weights = Counter(module_of[n] for n, e in entries.items() if e["role"] == "weight")
    rows: dict[str, LayerRow] = {}
    coders = set()
    for name, e in entries.items():
        if e["role"] != "weight":
            continue
        coders.add(str(e["coder"]))
        m = e["meta"]
        n, nnz = m["n"], m["nnz"]
        if type(n) is not int or type(nnz) is not int or not 0 <= nnz <= n:
            raise ValueError(f"tensor {name!r}: bad counts n={n!r}, nnz={nnz!r}")
        secs = {s: section_bytes[f"{name}/{s}"] for s in e["streams"]}
        cb = section_bytes.get(f"{name}/codebook", 0)
        entropy = e["coder"] != "fixed" or "fallback_from" in m  # entropy-code pass ran (fixed won on a tiny layer)
        wq = float(e["bits"]) if "bits" in e else 32.0
        wqh = (8 * secs["codes"] / nnz if nnz else 0.0) if "codes" in secs and entropy else None
        n_gap = int(m["gaps"]["n"]) if "gaps" in m else 0
        iq = float(e["index_bits"]) * (n_gap / nnz if nnz else 0) if "gaps" in secs else None
        iqh = (8 * secs["gaps"] / nnz if nnz else 0.0) if "gaps" in secs and entropy else None
        label = module_of[name] if n_weights[module_of[name]] == 1 else name
        rows[label] = LayerRow(label, n, nnz / n if n else 1.0, wq, wqh, iq, iqh, cb, 0,
                               sum(secs.values()) + cb, 4 * n, n_gap - nnz)
    for name, e in entries.items():
        if e["role"] == "weight":
            continue
        row = rows.get(module_of[name])
        if row is None:
            row = rows[module_of[name]] = LayerRow(module_of[name], 0, 1.0, None, None, None, None, 0, 0, 0, 0)
        nbytes = section_bytes[name]
        row.dense_bytes += nbytes
        row.total_bytes += nbytes
        if e["role"] == "dense":  # parameters count in the dense float32 reference; buffers do not
            row.dense_fp32_bytes += 4 * math.prod(e["array"]["shape"])
    body = sum(r.total_bytes for r in rows.values())
    dense = sum(r.dense_fp32_bytes for r in rows.values())
    return SizeReport(meta.get("model", "?"), list(rows.values()), total - body, total, dense,
                      "/".join(sorted(coders)))
