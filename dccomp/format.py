"""The ``.dcc`` compressed model file: the IR's coded weights in a safe container (see docs/format.md).

No pickle and no code: a JSON manifest plus binary sections, every count checked before decoding.
Weights that were never entropy-coded are stored in their current state with the ``fixed`` coder (P+Q), and
dense parameters and buffers raw, so :func:`save` works after any pass and the file size is always the true size.
The file holds the model's whole ``state_dict``: entries the forward pass never reads are stored raw too.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .container import ARRAY_DTYPES, MAGIC, Container, container_bytes, pack_array, read_container, unpack_array, write_container
from .errors import FormatError
from .ir import IR, Coded, Weight
from .wcodec import MAX_ELEMENTS, code_weight, decode_weight, default_index_bits

__all__ = ["save", "load", "file_nbytes", "plan_file", "check_save_path", "DccFile", "FilePlan"]

FORMAT_NAME = "dccomp-model"
_DT_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
             torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool",
             torch.uint8: "uint8"}
_DT_TORCH = {v: k for k, v in _DT_NAMES.items()}


@dataclass
class FilePlan:
    """What :func:`save` writes: the manifest ``meta``, the ``sections`` and, per tensor, its section names."""

    meta: dict[str, Any]
    sections: dict[str, bytes]
    owners: dict[str, list[str]]  # tensor name -> its section names

    def to_bytes(self) -> bytes:
        """The whole file (manifest stored zlib-compressed: header flag bit 0)."""
        return container_bytes(self.meta, self.sections, compress_manifest=True)


def _coded_for_file(ir: IR, w: Weight) -> Coded:
    if w.coded is not None:
        return w.coded
    return code_weight(ir.param(w.name), w, "fixed", default_index_bits(w.kind))


def _pack_raw(name: str, t: torch.Tensor) -> tuple[bytes, dict, str | None]:
    """``(buf, descr, dtype)`` of a raw tensor; bfloat16 (which numpy lacks) is stored as its 16-bit patterns
    (a ``uint16`` array, 2 bytes per value) with ``dtype="bfloat16"`` in its manifest entry so it is restored as
    bfloat16 (files before this stored it widened to float32; both read back)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        buf, descr = pack_array(t.contiguous().view(torch.int16).numpy().view(np.uint16))
        return buf, descr, "bfloat16"
    try:
        buf, descr = pack_array(t.numpy())
    except TypeError:
        raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which a .dcc file cannot store (it stores "
                        f"{', '.join(ARRAY_DTYPES)} and bfloat16); convert the model first, e.g. model.float()"
                        ) from None
    return buf, descr, None


def plan_file(ir: IR) -> FilePlan:
    """Lay out the ``.dcc`` file for ``ir`` (deterministic: same IR, same bytes)."""
    aliases: dict[str, list[str]] = {}
    params = dict(ir.gm.named_parameters(remove_duplicate=False))
    canon = {}
    for name, p in params.items():
        canon.setdefault(id(p), name)
        if canon[id(p)] != name:
            aliases.setdefault(canon[id(p)], []).append(name)
    tensors: list[dict[str, Any]] = []
    sections: dict[str, bytes] = {}
    owners: dict[str, list[str]] = {}
    for w in ir.weights.values():
        p = ir.param(w.name)
        if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"weight {w.name!r} is {p.dtype}; .dcc files code weights as float32, so they hold "
                            "float32, float16 and bfloat16 models exactly: convert the model first, e.g. model.float()")
        coded = _coded_for_file(ir, w)
        entry: dict[str, Any] = {"name": w.name, "role": "weight", "kind": w.kind, "shape": list(p.shape),
                                 "dtype": _DT_NAMES.get(p.dtype, "float32"), "coder": coded.coder,
                                 "index_bits": coded.index_bits, "meta": {k: v for k, v in coded.meta.items()},
                                 "streams": list(coded.streams)}
        if w.bits is not None:
            entry["bits"] = w.bits
        names = []
        for s, data in coded.streams.items():
            sections[f"{w.name}/{s}"] = data
            names.append(f"{w.name}/{s}")
        if w.codebook is not None:
            cdt = coded.meta.get("codebook_dtype", "float32")
            buf, descr = pack_array(w.codebook.numpy().astype(cdt))
            sections[f"{w.name}/codebook"] = buf
            entry["codebook"] = descr
            names.append(f"{w.name}/codebook")
        if w.name in aliases:
            entry["aliases"] = aliases[w.name]
        tensors.append(entry)
        owners[w.name] = names
    raw = [(d.name, ir.param(d.name), "dense", d.reason) for d in ir.dense]
    raw += [(n, b, "buffer", "buffer") for n, b in ir.gm.named_buffers()]  # non-persistent ones too: what runs
    raw += [(n, t, "dense" if kind == "parameter" else "buffer", "unused by forward()")
            for n, (t, kind) in getattr(ir, "unused", {}).items()]
    for name, t, role, reason in raw:
        buf, descr, dtype = _pack_raw(name, t)
        sections[name] = buf
        entry = {"name": name, "role": role, "reason": reason, "array": descr}
        if dtype is not None:
            entry["dtype"] = dtype
        if name in aliases:
            entry["aliases"] = aliases[name]
        tensors.append(entry)
        owners[name] = [name]
    meta = {"format": FORMAT_NAME, "model": ir.name, "tensors": tensors}
    if getattr(ir, "folded", None):
        meta["folded"] = dict(ir.folded)
    return FilePlan(meta, sections, owners)


def file_nbytes(ir: IR) -> int:
    """Exact size in bytes of the file :func:`save` would write for ``ir``."""
    return len(plan_file(ir).to_bytes())


_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO (named pipe)"),
          (stat.S_ISSOCK, "socket"))


def _is_dcc(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def check_save_path(path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """The path :func:`save` writes for ``path``, after refusing what it must not replace.

    Rules: a new path is created; an existing ``.dcc`` file (or an empty file) is replaced atomically; a symbolic
    link is followed and the regular file it points to is replaced atomically (the link stays a link); any other
    existing regular file is replaced only with ``overwrite=True``; a directory, device, FIFO or socket is never
    replaced.

    Returns:
        the real path to write (symbolic links resolved).

    Raises:
        IsADirectoryError: ``path`` is (or links to) a directory. FileExistsError: it is a device, FIFO or socket,
        or a regular file that is not a ``.dcc`` file and ``overwrite`` is false. FileNotFoundError: its folder
        does not exist.
    """
    shown = os.fspath(path)
    real = os.path.realpath(shown) if os.path.islink(shown) else shown
    via = f" (a link to {real!r})" if real != shown else ""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{shown!r}{via} is a directory; give a file path such as "
                                    f"{os.path.join(shown, 'model.dcc')!r}")
        for test, kind in _KINDS:
            if test(st.st_mode):
                raise FileExistsError(f"{shown!r}{via} is a {kind}, not a regular file: dccomp.save writes only "
                                      "regular files (it would replace the special file by a file); give another path")
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(f"{shown!r}{via} is not a regular file; give another path")
        if st.st_size and not overwrite and not _is_dcc(real):
            raise FileExistsError(f"{shown!r}{via} exists and is not a .dcc file; dccomp.save replaces only .dcc "
                                  "files: give another path, or pass overwrite=True (CLI: --force) to replace it")
    folder = os.path.dirname(os.path.abspath(real))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {shown!r}: folder {folder!r} does not exist")
    return real


def save(compiled: Any, path: str | os.PathLike, *, overwrite: bool = False) -> int:
    """Write a compiled model (``CompiledModel`` or ``IR``) to ``path`` atomically.

    The file is written to a temporary file in the same folder, fsynced and renamed over ``path``: a crash
    mid-save leaves any previous file intact. Same IR, same bytes. What may be replaced is decided by
    :func:`check_save_path`: new paths, ``.dcc`` files and empty files; other regular files only with
    ``overwrite=True``; never a directory, device, FIFO or socket; a symbolic link is followed and its target
    replaced. A ``CompiledModel`` is first synchronized with its live parameters (see
    :meth:`CompiledModel.sync_state`), so the file computes what the model in memory computes.

    Returns:
        the file size in bytes (what :meth:`CompiledModel.report` totals).

    Raises:
        TypeError: ``compiled`` is neither. IsADirectoryError, FileExistsError, FileNotFoundError: see
        :func:`check_save_path`. StaleStateError: a compressed weight was changed outside dccomp (names the
        layers). OSError: the folder is not writable.
    """
    ir = compiled if isinstance(compiled, IR) else getattr(compiled, "ir", None)
    if not isinstance(ir, IR):
        raise TypeError(f"dccomp.save needs a CompiledModel or IR, got {type(compiled).__name__}")
    real = check_save_path(path, overwrite=overwrite)
    sync = getattr(compiled, "sync_state", None)
    if callable(sync):
        sync()
    plan = plan_file(ir)
    return write_container(real, plan.meta, plan.sections, compress_manifest=True)


def _req(d: Any, key: str, typ: type | tuple, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise FormatError(f"{where}: missing field {key!r}")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise FormatError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _shape(v: Any, where: str) -> list[int]:
    if not isinstance(v, list) or len(v) > 32 or not all(type(d) is int and d >= 0 for d in v):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, got {v!r}"[:200])
    if math.prod(v) > MAX_ELEMENTS:
        raise FormatError(f"{where}: shape {v} is larger than the limit of {MAX_ELEMENTS} elements")
    return v


class DccFile:
    """A ``.dcc`` file opened without the model's architecture: list, inspect and decode its tensors.

    Attributes:
        container: the validated container; ``meta`` its manifest; ``names`` the tensor names in file order;
        file_size: bytes on disk.
    """

    def __init__(self, container: Container):
        self.container = container
        meta = container.meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise FormatError(f"manifest format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                              f"expected {FORMAT_NAME!r}: not a dccomp model file")
        self.meta = meta
        tensors = _req(meta, "tensors", list, "manifest")
        self._entries: dict[str, dict] = {}
        for i, e in enumerate(tensors):
            name = _req(e, "name", str, f"tensor #{i}")
            if name in self._entries:
                raise FormatError(f"tensor {name!r} is listed twice")
            role = _req(e, "role", str, f"tensor {name!r}")
            if role == "weight":
                _shape(_req(e, "shape", list, f"tensor {name!r}"), f"tensor {name!r}")
                for s in _req(e, "streams", list, f"tensor {name!r}"):
                    if not isinstance(s, str) or f"{name}/{s}" not in container:
                        raise FormatError(f"tensor {name!r}: stream {s!r} has no section")
                if "codebook" in e and f"{name}/codebook" not in container:
                    raise FormatError(f"tensor {name!r}: codebook section missing")
                dt = e.get("dtype", "float32")
                if not isinstance(dt, str) or dt not in _DT_TORCH or not _DT_TORCH[dt].is_floating_point:
                    raise FormatError(f"tensor {name!r}: dtype {dt!r} is not a floating-point dtype "
                                      f"({', '.join(n for n, t in _DT_TORCH.items() if t.is_floating_point)})"[:200])
            elif role in ("dense", "buffer"):
                if name not in container:
                    raise FormatError(f"tensor {name!r}: section missing")
                _req(e, "array", dict, f"tensor {name!r}")
                dt = e.get("dtype")  # only when the array is stored widened (bfloat16 as float32)
                if dt is not None and (not isinstance(dt, str) or dt not in _DT_TORCH
                                       or not _DT_TORCH[dt].is_floating_point):
                    raise FormatError(f"tensor {name!r}: dtype {str(dt)[:40]!r} is not a floating-point dtype")
            else:
                raise FormatError(f"tensor {name!r}: unknown role {role!r}")
            self._entries[name] = e
        self.names = list(self._entries)
        keys = set(self.names)
        for name, e in self._entries.items():  # tied names: each a distinct new state_dict key
            aliases = e.get("aliases", [])
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise FormatError(f"tensor {name!r}: 'aliases' must be a list of names")
            for a in aliases:
                if a in keys:
                    raise FormatError(f"tensor {name!r}: alias {a[:80]!r} names another tensor of the file")
                keys.add(a)
        self.file_size = container.file_size

    def info(self, name: str) -> dict:
        """The manifest entry of tensor ``name`` (shape, role, coder, counts...). Raises KeyError if absent."""
        if name not in self._entries:
            raise KeyError(f"no tensor {name!r} in this file; it holds: {', '.join(self.names)}")
        return self._entries[name]

    def decode(self, name: str, *, state: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(values, mask, codebook, indices)`` of a weight (mask/codebook/indices ``None`` when absent;
        mask and indices also ``None`` with ``state=False``, which decodes only the values).

        Raises:
            FormatError: the entry or its streams are malformed.
        """
        e = self.info(name)
        where = f"tensor {name!r}"
        if e["role"] != "weight":
            arr = unpack_array(self.container.section(name), e["array"], MAX_ELEMENTS)
            return torch.from_numpy(arr), None, None, None
        shape = e["shape"]
        index_bits = _req(e, "index_bits", int, where)
        coded = Coded(_req(e, "coder", str, where), index_bits,
                      {s: self.container.section(f"{name}/{s}") for s in e["streams"]},
                      _req(e, "meta", dict, where))
        codebook = None
        if "codebook" in e:
            rows = shape[0] if shape else 1  # a 2-D codebook has at most one row per dim-0 slice
            codebook = unpack_array(self.container.section(f"{name}/codebook"), e["codebook"],
                                    min(MAX_ELEMENTS, max(rows, 1) << 16))
            if codebook.ndim not in (1, 2) or codebook.dtype.kind != "f" or not np.isfinite(codebook).all():
                raise FormatError(f"{where}: codebook must be a finite float array of shape (k,) or (G, k), got "
                                  f"{codebook.dtype} {codebook.shape}")
            if codebook.ndim == 2 and (codebook.shape[0] < 1 or (shape[0] if shape else 1) % codebook.shape[0]
                                       or (shape and shape[0] == 0 and codebook.shape[0] != 1)):
                raise FormatError(f"{where}: a per-channel codebook of shape {codebook.shape} needs G = "
                                  f"{codebook.shape[0]} to divide dim 0 of the weight's shape {shape}")
            codebook = codebook.astype(np.float32)
        values, mask, indices = decode_weight(name, shape, coded, codebook, state=state)
        cb = None if codebook is None else torch.from_numpy(codebook)
        return values, mask, cb, indices

    def tensor(self, name: str) -> torch.Tensor:
        """The dense value of tensor ``name`` (decoded), in its stored dtype."""
        values = self.decode(name, state=False)[0]
        dt = self._entries[name].get("dtype")  # validated for weights; dense arrays keep their own dtype
        if dt == "bfloat16" and values.dtype == torch.uint16:  # bfloat16 bit patterns
            return values.view(torch.bfloat16)
        return values.to(_DT_TORCH[dt]) if isinstance(dt, str) and dt in _DT_TORCH and values.is_floating_point() else values

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors decoded, keyed as in the model's ``state_dict`` (tied names included)."""
        out: dict[str, torch.Tensor] = {}
        for name in self.names:
            t = self.tensor(name)
            for n in [name] + list(self._entries[name].get("aliases", [])):
                out[str(n)] = t
        return out

    def report(self):
        """The paper-style per-layer size table of the file (:class:`dccomp.report.SizeReport`; ``str()`` renders
        it, ``.to_dict()`` for JSON), read off the manifest and section sizes: totals equal :attr:`file_size`."""
        from .report import report_from_manifest

        return report_from_manifest(self.meta, {s.name: s.length for s in self.container.sections}, self.file_size)

    def __repr__(self) -> str:
        return f"DccFile(model={self.meta.get('model')!r}, tensors={len(self.names)}, bytes={self.file_size})"


def _fold_like_the_file(model: nn.Module, f: "DccFile") -> None:
    """Apply the file's ``fold-bn`` record to ``model``: each folded BatchNorm becomes ``nn.Identity`` and its
    Conv/Linear gets a bias (filled from the file), so the architecture matches the file's tensors."""
    folded = f.meta.get("folded") or {}
    if not isinstance(folded, dict):
        raise FormatError("manifest entry 'folded' must map BatchNorm names to layer names")
    for bn_name, layer_name in folded.items():
        try:
            layer = model.get_submodule(layer_name)
            model.get_submodule(bn_name)
        except AttributeError as e:
            raise ValueError(f"the file was compressed with fold-bn ({bn_name!r} folded into {layer_name!r}), but "
                             f"{type(model).__name__} has no such module; pass an instance of the architecture "
                             f"the file was made from ({f.meta.get('model')})") from e
        if getattr(layer, "bias", None) is None:
            shape = f.info(f"{layer_name}.bias")["array"].get("shape") if f"{layer_name}.bias" in f.names else None
            if not shape:
                raise FormatError(f"the file folds {bn_name!r} into {layer_name!r} but holds no {layer_name}.bias")
            layer.bias = nn.Parameter(torch.zeros(shape, dtype=layer.weight.dtype))
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    if folded:  # compiling this model again keeps the record (see dccomp.sync.carry_model_state)
        model.dccomp_folded = {**getattr(model, "dccomp_folded", {}), **folded}


def load(path: str | os.PathLike | bytes, model: nn.Module | None = None) -> DccFile | nn.Module:
    """Read a ``.dcc`` file.

    Args:
        path: file path (or the file's bytes).
        model: optional instance of the architecture; its parameters and buffers are replaced by the file's.
            If the file was compressed with ``fold-bn``, the folded BatchNorm modules of ``model`` are replaced
            by ``nn.Identity`` and their layers get the folded bias (the model then computes what was saved);
            ``model.dccomp_folded`` records them, so compressing this model again writes a file that loads
            into a fresh instance as well.

    Returns:
        ``model`` with the weights restored (in eval mode; floating-point tensors in the file's dtype, e.g. a
        float16 model's weights make a float32 ``model`` float16), or a :class:`DccFile` when no model is given.

    Raises:
        FormatError: anything wrong with the file (truncated, corrupted, wrong magic, newer version,
            inconsistent counts, absurd sizes).
        ValueError: the file's tensors do not match ``model``'s (names or shapes), naming the difference.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"dccomp.load takes a file path (str or os.PathLike) or the file's bytes, got "
                        f"{type(path).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an instance of the compressed architecture (an nn.Module), got "
                        f"{type(model).__name__}; or call dccomp.load(path) to read the file without it")
    f = DccFile(read_container(path))
    if model is None:
        return f
    _fold_like_the_file(model, f)
    own = model.state_dict()
    declared: dict[str, Any] = {}  # names and shapes from the manifest, compared before decoding anything
    for name in f.names:
        e = f.info(name)
        shape = e["shape"] if e["role"] == "weight" else e["array"].get("shape")
        for n in [name] + e.get("aliases", []):
            declared[n] = shape
    # torch.fx makes non-persistent buffers persistent, so files hold them: restore them too
    transient = {n: b for n, b in model.named_buffers(remove_duplicate=False) if n not in own and n in declared}
    missing, extra = sorted(set(own) - set(declared)), sorted(set(declared) - set(own) - set(transient))
    if missing or extra:
        raise ValueError(f"the file's tensors do not match {type(model).__name__}: missing from the file "
                         f"{missing[:5]}, not in the model {extra[:5]}; pass an instance of the compressed "
                         f"architecture ({f.meta.get('model')})")
    for k, shape in declared.items():
        ref = own[k] if k in own else transient[k]
        if isinstance(shape, list) and shape != list(ref.shape):
            raise ValueError(f"tensor {k!r}: file has shape {tuple(shape)}, model has {tuple(ref.shape)}"[:300])
    sd = f.state_dict()
    for k, t in sd.items():
        ref = own[k] if k in own else transient[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"tensor {k!r}: file has shape {tuple(t.shape)}, model has {tuple(ref.shape)}")
    with torch.no_grad():
        for k, b in transient.items():
            b.copy_(sd.pop(k))
        # floating-point tensors come back in the file's dtype (a float16/bfloat16 model into a float32 template)
        tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
        for k, t in sd.items():
            ref = tensors.get(k)
            if ref is not None and ref.is_floating_point() and t.is_floating_point() and ref.dtype != t.dtype:
                ref.data = ref.data.to(t.dtype)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model
