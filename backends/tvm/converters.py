"""The frontend converters of :mod:`.lower`: the ops that read a compressed weight (linear, conv1d/conv2d,
embedding), lowered to dccomp's kernels on the compressed arrays; plus activation fusion (ReLU, ReLU6 into the
preceding kernel) and fixes for TVM 0.27's own converters (negative ``select`` index).

Each converter is called by ``ExportedProgramImporter`` as ``fn(node, importer) -> relax expression`` for a node of
the exported (core ATen) graph; a node whose weight is not a model parameter goes to the frontend's own converter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import kernels as K
from .calibrate import BAND, faster
from .dense_code import DenseCodes, decode_codebook
from .layouts import Candidate, choose
from .packed import PackedCSR, choose_layout
from .targets import is_cross, is_gpu

__all__ = ["LayerInfo", "Converters"]


@dataclass
class LayerInfo:
    """How one compressed weight was lowered (for ``repr``, the export JSON and benchmarks).

    ``kind``: ``sparse_linear``, ``code_linear``, ``dense_linear``, ``sparse_conv2d``, ``code_conv2d``,
    ``dense_conv2d``, ``sparse_embedding``, or ``frontend`` (the weight is read by an op TVM's frontend lowers
    itself, with the decoded dense weight as a constant: e.g. LSTM, ConvTranspose). ``layout``: the weight
    layout (:mod:`.layouts`: ``csr``, ``packed``, ``code<bits>`` e.g. ``code4``, ``dense``). ``const_nbytes``: bytes of
    the layer's weight and bias constants.
    """

    name: str
    kind: str
    shape: tuple
    density: float
    const_nbytes: int
    fused_relu: bool | str = False  # True (ReLU) or "relu6" when the activation runs inside the kernel
    dtypes: dict = field(default_factory=dict)
    calls: int = 1  # ops reading the weight (an LSTM's recurrent weight: one per time step); stored once
    layout: str = "dense"

    def to_json(self) -> dict:
        return {"name": self.name, "kernel": self.kind, "layout": self.layout, "shape": list(self.shape),
                "density": self.density,
                "const_nbytes": self.const_nbytes, "fused_relu": self.fused_relu, "dtypes": self.dtypes,
                "calls": self.calls}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _kernel_codebook(w) -> np.ndarray:
    """``w``'s codebook for the kernels: a layer with no surviving weight has an empty codebook, which the
    kernels (k >= 1) get as a single 0 centroid per codebook row (no entry reads it)."""
    cb = _np(w.codebook)
    if cb.size == 0:
        return np.zeros(cb.shape[:-1] + (1,), np.float32)
    return cb


def _sanitize(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class Converters:
    """The frontend converters for :data:`PRESERVED_OPS` (``fn(node, importer) -> relax.Var``)."""

    def __init__(self, ir, ep, target: dict, options: dict):
        self.ir, self.ep, self.target, self.options = ir, ep, target, options
        self.gpu = is_gpu(target)
        self.runnable = not is_cross(target)
        self.calibrated: list[str] = []  # layers whose kernel was chosen by timing both
        self.param_of = dict(ep.graph_signature.inputs_to_parameters)
        self.params = dict(ir.gm.named_parameters(remove_duplicate=False))
        canon: dict[int, str] = {}
        self.weight_of: dict[str, Any] = {}
        for pname, p in ir.gm.named_parameters(remove_duplicate=False):
            canon.setdefault(id(p), pname)
            w = ir.weights.get(canon[id(p)])
            if w is not None:
                self.weight_of[pname] = w
        self.layers: list[LayerInfo] = []
        self._layer_of: dict[tuple[str, str], LayerInfo] = {}
        self.lowered: set[str] = set()  # parameter names lowered by dccomp kernels
        self.fused: set = set()  # relu nodes folded into the preceding kernel
        self._names: set[str] = set()
        self.orig: dict[str, Callable] = {}
        user = [sp.arg.name for sp in ep.graph_signature.input_specs if sp.kind.name == "USER_INPUT"]
        self.input_index = {name: i for i, name in enumerate(user)}
        #: (user input index, table rows, layer): ids checked before each call (TVM cannot raise in a kernel)
        self.id_checks: list[tuple[int, int, str]] = []
        self._consts: dict[tuple, list] = {}  # (param, form) -> relax constants, shared by a tied weight's uses

    def consts(self, pname: str, form: str, arrays: Callable[[], list[np.ndarray]]) -> list:
        """The ``relax.const`` s of ``pname`` in ``form`` (made once: a weight used twice is stored once)."""
        from tvm import relax

        key = (pname, form)
        if key not in self._consts:
            self._consts[key] = [relax.const(a) for a in arrays()]
        return self._consts[key]

    def convert_map(self) -> dict[str, Callable]:
        return {"linear.default": self.linear, "conv2d.default": self.conv2d, "conv1d.default": self.conv1d,
                "embedding.default": self.embedding, "relu.default": self.relu, "hardtanh.default": self.hardtanh,
                "select.int": self.select}

    # -- helpers ---------------------------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        base = "dcc_" + _sanitize(base)
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def _layer_name(self, node, pname: str) -> str:
        """The layer a weight op belongs to: the parameter's module (``fc1`` for ``fc1.weight``); for a tied
        weight (one parameter read by several layers) the module making this call, from the export's
        ``nn_module_stack``, so ``emb``'s lookup is not named after the ``out`` projection sharing its table."""
        base = pname.rsplit(".", 1)[0] if pname.endswith(".weight") else pname
        w = self.weight_of.get(pname)
        if w is not None and len(w.users) > 1:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            if path:
                return str(path)
        return base

    def _param(self, node) -> str | None:
        """Qualified parameter name if ``node`` is a parameter placeholder of the exported program."""
        if getattr(node, "op", None) == "placeholder":
            return self.param_of.get(node.name)
        return None

    def effective_weight(self, pname: str) -> tuple[np.ndarray, Any]:
        """(decoded float32 weight, Weight or None): ``codebook[indices] * mask`` for clustered weights,
        ``param * mask`` for masked ones, the parameter for dense ones."""
        w = self.weight_of.get(pname)
        p = _np(self.params[pname]).astype(np.float32)
        if w is None:
            return p, None
        if w.codebook is not None and w.indices is not None:
            dec = decode_codebook(_np(w.codebook), _np(w.indices))
        else:
            dec = p
        if w.mask is not None:
            dec = dec * _np(w.mask).astype(np.float32)
        return np.ascontiguousarray(dec.reshape(p.shape), dtype=np.float32), w

    @staticmethod
    def _csr(weight2d: np.ndarray, w, shape2d) -> K.CSRCodebook:
        if w is not None and w.codebook is not None and w.indices is not None:
            return K.CSRCodebook.from_codebook(_np(w.indices).reshape(shape2d), _kernel_codebook(w), weight2d != 0)
        return K.CSRCodebook.from_dense(weight2d)

    def _record(self, pname: str, info: LayerInfo) -> None:
        """Add ``info``, or count one more call of a weight already lowered with the same kernel."""
        key = (pname, info.kind)
        if key in self._layer_of:
            self._layer_of[key].calls += 1
        else:
            self._layer_of[key] = info
            self.layers.append(info)
        self.lowered.add(pname)

    def _pick(self, cands: list[Candidate], w, density: float, rule_dense, x_shape, out_shape, name: str,
              band: float | None = None):
        """``(candidate, timed)``: the layer's layout by the ``weights=`` mode (:func:`.layouts.choose`), timing
        the candidates on this machine when :meth:`_calibrating` (sparse and dense layouts both within ``band``
        of the rule's crossover; ``band`` defaults to the module's ``BAND``, read at call time)."""
        band = BAND if band is None else band
        coded = None
        if w is not None and getattr(w, "coded", None) is not None:
            coded = int(w.coded.nbytes) + (0 if w.codebook is None else 4 * int(w.codebook.numel()))

        def timer(pool: list[Candidate]) -> int:
            return faster(self.target, [(c.func(), name, c.kernel_args(c.arrays())) for c in pool], x_shape,
                          out_shape)

        return choose(cands, self.options, density, rule_dense, timer if self._calibrating() else None, coded,
                      band)

    def _code_candidates(self, w, weight: np.ndarray, rows: int, make_func) -> list[Candidate]:
        """The dense-code candidates of a clustered weight on a CPU target: the fewest bits that hold its codes,
        plus the 4-/8-bit layouts just above it (one byte load per code, faster to decode than other widths)."""
        if self.gpu or w is None or w.codebook is None or w.indices is None:
            return []
        out: list[Candidate] = []
        for bits in (None, 4, 8):
            dc = DenseCodes.from_codebook(_np(w.indices).reshape(rows, -1), _kernel_codebook(w),
                                          (weight != 0).reshape(rows, -1), bits=bits)
            if dc is None or any(c.layout == f"code{dc.bits}" for c in out) or (out and dc.bits < out[0].info["bits"]):
                continue
            out.append(Candidate(f"code{dc.bits}", dc.nbytes, lambda dc=dc: make_func(dc), dc.arrays,
                                 info={"bits": dc.bits, "k": dc.k, "cb_groups": dc.groups}))
            if bits is None and dc.bits in (4, 8):
                break
        return out

    def _bias(self, imp, node, n_out: int):
        """(relax expr, nbytes) of the bias argument (a zero constant when there is none)."""
        from tvm import relax

        if node is None:
            return relax.const(np.zeros(n_out, np.float32)), 0
        return imp.env[node], 4 * n_out

    def _fusable_relu(self, node, relu6: bool = False):
        """``(activation node, act)`` when ``node``'s only user is a ReLU (``act=True``) or, if ``relu6``, a
        ReLU6 = ``hardtanh(x, 0, 6)`` (``act="relu6"``) that the kernel can apply; else ``(None, False)``."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_function" or self.options.get("no_fuse", False):
            return None, False
        u = users[0]
        if u.target.__name__ == "relu.default":
            return u, True
        if relu6 and u.target.__name__ == "hardtanh.default" and tuple(float(a) for a in u.args[1:3]) == (0.0, 6.0):
            return u, "relu6"
        return None, False

    @staticmethod
    def _shape(v) -> tuple[int, ...]:
        return tuple(int(s) for s in v.ty.shape)

    def _float_input(self, imp, node, layer: str):
        x = imp.env[node]
        if str(x.ty.dtype) != "float32":
            raise NotImplementedError(f"TVM backend: layer {layer!r} gets a {x.ty.dtype} input; dccomp's "
                                      "compressed kernels take float32 (cast the model to float32 first)")
        return x

    # -- frontend fixes ----------------------------------------------------------------------------------
    def select(self, node, imp):
        """``x[..., i, ...]``: TVM 0.27's converter emits ``take`` with a negative ``i`` as is, which reads out
        of bounds (``x[:, -1]`` of an LSTM output gave garbage); normalise ``i`` by the static dim size."""
        from tvm import relax

        x = imp.env[node.args[0]]
        dim, index = int(node.args[1]), int(node.args[2])
        shape = x.ty.shape
        dim %= len(shape)
        if index < 0:
            index += int(shape[dim])
        return imp.block_builder.emit(relax.op.take(x, relax.const(index, "int64"), dim))

    # -- relu --------------------------------------------------------------------------------------------
    def relu(self, node, imp):
        if node in self.fused:
            return imp.env[node.args[0]]
        return self.orig["relu.default"](node)

    def hardtanh(self, node, imp):
        if node in self.fused:
            return imp.env[node.args[0]]
        return self.orig["hardtanh.default"](node)

    # -- linear ------------------------------------------------------------------------------------------
    def linear(self, node, imp):
        from tvm import relax

        pname = self._param(node.args[1])
        if pname is None:  # a computed weight: the frontend's matmul
            return self.orig["linear.default"](node)
        layer = self._layer_name(node, pname)
        x = self._float_input(imp, node.args[0], layer)
        weight, w = self.effective_weight(pname)
        n_out, n_in = weight.shape
        xs = self._shape(x)
        lead = xs[:-1]
        batch = int(np.prod(lead)) if lead else 1
        x2 = x if len(xs) == 2 else imp.block_builder.emit(relax.op.reshape(x, (batch, n_in)))
        bnode = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias, bias_bytes = self._bias(imp, bnode, n_out)
        density = int(np.count_nonzero(weight)) / max(1, weight.size)
        csr = self._csr(weight, w, (n_out, n_in))
        if self.options.get("kernel") == "dense" and self.gpu:  # no dense GPU kernel of ours: the frontend's
            return self._frontend(node, pname, "linear", weight)
        r, _ = self._fusable_relu(node)
        relu = r is not None
        name = self._unique(layer)
        cands = [Candidate("csr", csr.nbytes, lambda: K.sparse_linear_func(
            self.target, n_out, n_in, csr.col.shape[0], csr.k, batch, col_dtype=str(csr.col.dtype),
            code_dtype=str(csr.code.dtype), relu=relu, name=name, cb_groups=csr.groups), csr.arrays,
            info={"col": str(csr.col.dtype), "code": str(csr.code.dtype), "k": csr.k, "cb_groups": csr.groups})]
        if not self.gpu:
            from .dense_code import dense_code_linear_func

            cands += self._code_candidates(w, weight, n_out, lambda dc: dense_code_linear_func(
                self.target, n_out, n_in, batch, k=dc.k, cb_groups=dc.groups, bits=dc.bits, relu=relu, name=name))
            cands.append(Candidate("dense", weight.nbytes, lambda: K.dense_linear_cpu(
                n_out, n_in, batch, relu=relu, name=name), lambda: [weight]))
        # linear: the measured sparse/dense threshold decides sparse vs not (band 0); timing only picks between
        # the dense-code and dense float32 kernels
        cand, timed = self._pick(cands, w, density, lambda d: K.use_dense(d, weight.size), (batch, n_in),
                                 (batch, n_out), name, band=0.0)
        kind = "sparse_linear" if cand.sparse else ("dense_linear" if cand.layout == "dense" else "code_linear")
        args = [x2] + cand.kernel_args(self.consts(pname, cand.layout, cand.arrays)) + [bias]
        info = LayerInfo(layer, kind, (n_out, n_in), density, cand.nbytes + bias_bytes, relu, dict(cand.info),
                         layout=cand.layout)
        if timed:
            info.dtypes["chosen_by"] = "timing"
        gv = imp.block_builder.add_func(cand.func(), name)
        out_ty = relax.TensorType((batch, n_out), "float32")
        y = imp.block_builder.emit(relax.call_tir(gv, args, out_ty))
        if len(xs) != 2:
            y = imp.block_builder.emit(relax.op.reshape(y, tuple(lead) + (n_out,)))
        if r is not None:
            self.fused.add(r)
        self._record(pname, info)
        return y

    # -- convolution -------------------------------------------------------------------------------------
    def conv1d(self, node, imp):
        from tvm import relax

        pname = self._param(node.args[1])
        if pname is None:
            return self.orig["conv1d.default"](node)
        a = list(node.args) + [None] * (7 - len(node.args))
        x = self._float_input(imp, a[0], pname)
        n, c, length = self._shape(x)
        one = lambda v, d: (v[0] if isinstance(v, (list, tuple)) else v) if v is not None else d  # noqa: E731
        x4 = imp.block_builder.emit(relax.op.reshape(x, (n, c, 1, length)))
        y = self._conv(node, imp, x4, pname, a[2], (1, one(a[3], 1)), (0, one(a[4], 0)), (1, one(a[5], 1)),
                       a[6] or 1, conv1d=True)
        oc, ow = self._shape(y)[1], self._shape(y)[3]
        return imp.block_builder.emit(relax.op.reshape(y, (n, oc, ow)))

    def conv2d(self, node, imp):
        pname = self._param(node.args[1])
        if pname is None:
            return self.orig["conv2d.default"](node)
        a = list(node.args) + [None] * (7 - len(node.args))
        pair = lambda v, d: d if v is None else ((v, v) if isinstance(v, int) else tuple(v))  # noqa: E731
        x = self._float_input(imp, a[0], pname)
        return self._conv(node, imp, x, pname, a[2], pair(a[3], (1, 1)), pair(a[4], (0, 0)), pair(a[5], (1, 1)),
                          a[6] or 1)

    def _conv(self, node, imp, x, pname, bnode, stride, padding, dilation, groups, conv1d=False):
        from tvm import relax

        from . import conv_kernels as CK

        layer = self._layer_name(node, pname)
        weight, w = self.effective_weight(pname)
        if conv1d:
            weight = weight[:, :, None, :]
        oc, icg, kh, kw = weight.shape
        n, c, h, wd = self._shape(x)
        if c != icg * groups:
            raise ValueError(f"TVM backend: layer {layer!r} gets {c} input channels, its weight expects "
                             f"{icg * groups}")
        oh, ow = CK.conv2d_out_shape(h, wd, kh, kw, stride, padding, dilation)
        bias, bias_bytes = self._bias(imp, bnode, oc)
        density = int(np.count_nonzero(weight)) / max(1, weight.size)
        indices = None if w is None or w.indices is None else _np(w.indices).reshape(weight.shape)
        codebook = None if w is None or w.codebook is None else _kernel_codebook(w)
        if indices is not None and codebook is not None:
            csr = CK.conv_csr(indices, codebook, weight != 0, groups)
        else:
            csr = K.CSRCodebook.from_dense(weight.reshape(oc, -1))
        # the CPU kernels decode a row once per call: the packed layout is free there (GPU kernels read CSR)
        layout = csr if self.gpu else choose_layout(csr)

        def rule(d: float) -> bool:
            if self.gpu:
                return False  # the sparse kernels are the GPU kernels; a dense weight is a CSR of density 1
            return CK.use_dense_conv(d, oc, icg, kh, kw, oh, ow, target=self.target)

        r, act = self._fusable_relu(node, relu6=not self.gpu)  # the CPU conv kernels also apply ReLU6
        name = self._unique(layer)
        geo = dict(n=n, c=c, h=h, w=wd, oc=oc, kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, relu=act, name=name)
        if isinstance(layout, PackedCSR):
            sp = Candidate("packed", layout.nbytes, lambda: self._sparse_conv(layout, csr, geo)[0], layout.arrays,
                           (0, 1, 1, 2), {"entry": str(layout.entries.dtype), "code_bits": layout.code_bits,
                                          "k": layout.k, "groups": groups, "cb_groups": layout.groups})
        else:
            sp = Candidate("csr", csr.nbytes, lambda: self._sparse_conv(layout, csr, geo)[0], csr.arrays,
                           info={"col": str(csr.col.dtype), "code": str(csr.code.dtype), "k": csr.k,
                                 "groups": groups, "cb_groups": csr.groups})
        cands = [sp]
        if not self.gpu:
            from .dense_code import dense_code_conv2d_func

            cands += self._code_candidates(w, weight, oc, lambda dc: dense_code_conv2d_func(
                self.target, k=dc.k, cb_groups=dc.groups, bits=dc.bits, **geo))
            cands.append(Candidate("dense", weight.nbytes, lambda: CK.dense_conv2d_func(self.target, **geo),
                                   lambda: [np.ascontiguousarray(weight)], info={"groups": groups}))
        cand, timed = self._pick(cands, w, density, rule, (n, c, h, wd), (n, oc, oh, ow), name)
        if timed:
            self.calibrated.append(layer)
        kind = "sparse_conv2d" if cand.sparse else ("dense_conv2d" if cand.layout == "dense" else "code_conv2d")
        args = [x] + cand.kernel_args(self.consts(pname, cand.layout, cand.arrays)) + [bias]
        info = LayerInfo(layer, kind, tuple(weight.shape), density, cand.nbytes + bias_bytes, act,
                         {"layout": cand.layout, **cand.info}, layout=cand.layout)
        if timed:
            info.dtypes["chosen_by"] = "timing"
        gv = imp.block_builder.add_func(cand.func(), name)
        y = imp.block_builder.emit(relax.call_tir(gv, args, relax.TensorType((n, oc, oh, ow), "float32")))
        if r is not None:
            self.fused.add(r)
        self._record(pname, info)
        return y

    def _sparse_conv(self, layout, csr, geo: dict):
        """``(prim_func, weight arrays in argument order)`` of the sparse conv kernel for ``layout``."""
        from . import conv_kernels as CK

        if isinstance(layout, PackedCSR):
            ent = str(layout.entries.dtype)
            f = CK.sparse_conv2d_func(self.target, nnz=layout.entries.shape[0], k=layout.k, col_dtype=ent,
                                      code_dtype=ent, packed=(layout.code_bits, (1 << layout.gap_bits) - 1),
                                      cb_groups=layout.groups, **geo)
            rowptr, entries, cb = layout.arrays()
            return f, [rowptr, entries, entries, cb]
        f = CK.sparse_conv2d_func(self.target, nnz=csr.col.shape[0], k=csr.k, col_dtype=str(csr.col.dtype),
                                  code_dtype=str(csr.code.dtype), cb_groups=csr.groups, **geo)
        return f, csr.arrays()

    def _calibrating(self) -> bool:
        """Time kernels at build time: only for modules that run on this CPU, with the kernel not forced, in
        ``weights="fast"`` or ``"balanced"`` mode, unless ``calibrate=False``."""
        return (bool(self.options.get("calibrate", True)) and self.runnable and not self.gpu
                and self.options.get("kernel") is None and self.options.get("weights", "fast") != "small")

    # -- embedding ---------------------------------------------------------------------------------------
    def embedding(self, node, imp):
        from tvm import relax

        from .embedding_kernels import embedding_csr_func

        pname = self._param(node.args[0])
        ids_node = node.args[1]
        if getattr(ids_node, "op", None) == "placeholder" and ids_node.name in self.input_index:
            rows = int(self._shape(imp.env[node.args[0]])[0])
            layer = self._layer_name(node, pname) if pname else node.name
            self.id_checks.append((self.input_index[ids_node.name], rows, layer))
        w = self.weight_of.get(pname) if pname else None
        if w is None or (w.mask is None and w.codebook is None):  # dense table: the frontend's take
            return self.orig["embedding.default"](node)
        layer = self._layer_name(node, pname)
        weight, w = self.effective_weight(pname)
        num, dim = weight.shape
        csr = self._csr(weight, w, (num, dim))
        ids = imp.env[node.args[1]]
        ishape = self._shape(ids)
        ntok = int(np.prod(ishape)) if ishape else 1
        flat = imp.block_builder.emit(relax.op.reshape(ids, (ntok,)))
        name = self._unique(layer)
        f = embedding_csr_func(self.target, ntok, num, dim, csr.col.shape[0], csr.k, id_dtype=str(ids.ty.dtype),
                               col_dtype=str(csr.col.dtype), code_dtype=str(csr.code.dtype), name=name,
                               cb_groups=csr.groups)
        gv = imp.block_builder.add_func(f, name)
        y = imp.block_builder.emit(relax.call_tir(gv, [flat] + self.consts(pname, "csr", csr.arrays),
                                                  relax.TensorType((ntok, dim), "float32")))
        density = csr.nnz / max(1, weight.size)
        self._record(pname, LayerInfo(layer, "sparse_embedding", (num, dim), density, csr.nbytes, False,
                                      {"col": str(csr.col.dtype), "code": str(csr.code.dtype), "k": csr.k,
                                       "cb_groups": csr.groups}, layout="csr"))
        return imp.block_builder.emit(relax.op.reshape(y, tuple(ishape) + (dim,)))

    def _frontend(self, node, pname: str, op: str, weight: np.ndarray):
        self._frontend_info(pname, weight)
        return self.orig[f"{op}.default"](node)

    def record_frontend_weights(self) -> None:
        """Compressed weights the frontend lowered itself (LSTM, ConvTranspose, ...): dense constants."""
        used = {n.name for n in self.ep.graph.nodes if n.op == "placeholder" and n.users}
        for node_name, pname in self.param_of.items():
            w = self.weight_of.get(pname)
            if w is not None and pname not in self.lowered and node_name in used:
                weight, _ = self.effective_weight(pname)
                self._frontend_info(pname, weight)

    def _frontend_info(self, pname, weight):
        self._record(pname, LayerInfo(pname.rsplit(".", 1)[0] if pname.endswith(".weight") else pname, "frontend",
                                      tuple(weight.shape), int(np.count_nonzero(weight)) / max(1, weight.size),
                                      weight.nbytes))
