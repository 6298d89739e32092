"""Lower a dccomp IR to a TVM Relax module whose linear layers run on compressed weights.

Walks ``ir.gm.graph`` in order and emits, through ``relax.BlockBuilder``:

* compressed ``Linear`` (density below :data:`~.kernels.DENSE_DENSITY_THRESHOLD`): ``call_tir`` to the
  CSR + codebook kernel (:mod:`.kernels`) with ``rowptr``/``col``/``code``/``codebook`` as ``relax.const`` --
  they stay compressed in memory (uint8 codes, uint16 columns when ``in_features <= 65536``). A ReLU that is
  the only user of the linear output is fused into the kernel.
* denser or uncompressed ``Linear``: the scheduled dense kernel with the decoded float32 weight.
* ``Conv2d``: decoded to dense at load time; im2col kernel + the scheduled dense kernel (CPU targets).
* ReLU, Flatten/view/reshape/flatten, MaxPool2d: Relax ops (legalized by ``tvm.compile``).

Shapes are static: the module is compiled for the batch size of ``example_inputs`` and recompiled on the
first call with another batch size.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn
import torch.nn.functional as F

from . import kernels as K
from .targets import is_cross, is_gpu, resolve_target

__all__ = ["lower_ir", "LayerInfo", "LoweredModule", "compile_ir", "device_modules", "device_source"]


@dataclass
class LayerInfo:
    """How one weight layer was lowered (for reports, the export JSON and the benchmark)."""

    name: str
    kind: str            # "sparse_linear", "dense_linear", "conv2d_im2col_dense"
    shape: tuple
    density: float
    const_nbytes: int    # bytes of the weight constants in the artifact
    fused_relu: bool = False
    dtypes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "kernel": self.kind, "shape": list(self.shape), "density": self.density,
                "const_nbytes": self.const_nbytes, "fused_relu": self.fused_relu, "dtypes": self.dtypes}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _sanitize(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class _Lowerer:
    def __init__(self, ir, input_shapes: list[tuple[int, ...]], target: dict, options: dict):
        self.ir = ir
        self.gm: fx.GraphModule = ir.gm
        self.input_shapes = input_shapes
        self.target = target
        self.gpu = is_gpu(target)
        self.options = options
        self.modules = dict(self.gm.named_modules())
        self.params = dict(self.gm.named_parameters(remove_duplicate=False))
        # qualified name -> Weight (tied weights are recorded under their first name)
        canon: dict[int, str] = {}
        self.weight_of: dict[str, Any] = {}
        for pname, p in self.gm.named_parameters(remove_duplicate=False):
            canon.setdefault(id(p), pname)
            w = ir.weights.get(canon[id(p)])
            if w is not None:
                self.weight_of[pname] = w
        self.layers: list[LayerInfo] = []
        self._names: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        base = "dcc_" + _sanitize(base)
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def effective_weight(self, pname: str) -> tuple[np.ndarray, Any]:
        """(decoded float32 weight, Weight or None): ``codebook[indices] * mask`` for clustered weights,
        ``param * mask`` for masked ones, the parameter for dense ones."""
        w = self.weight_of.get(pname)
        p = _np(self.params[pname]).astype(np.float32)
        if w is None:
            return p, None
        if w.codebook is not None and w.indices is not None:
            dec = _np(w.codebook).astype(np.float32)[_np(w.indices).astype(np.int64)]
        else:
            dec = p
        if w.mask is not None:
            dec = dec * _np(w.mask).astype(np.float32)
        return np.ascontiguousarray(dec.reshape(p.shape), dtype=np.float32), w

    def _unsupported(self, node: fx.Node, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"TVM backend: unsupported op {what} at layer {node.name!r} (fx node {node.op} {node.target!r}); "
            "supported: Linear, Conv2d (groups=1), ReLU, MaxPool2d, Flatten/view/reshape/flatten")

    @staticmethod
    def shape_of(v) -> tuple[int, ...]:
        return tuple(int(s) for s in v.ty.shape)

    # -- linear ------------------------------------------------------------------------------------------
    def linear(self, node: fx.Node, x, pname: str, bias: np.ndarray | None, relu: bool, layer: str):
        from tvm import relax

        weight, w = self.effective_weight(pname)
        n_out, n_in = weight.shape
        xs = self.shape_of(x)
        if xs[-1] != n_in:
            raise ValueError(f"layer {layer!r}: input has {xs[-1]} features, weight expects {n_in}")
        lead = xs[:-1]
        batch = int(np.prod(lead)) if lead else 1
        x2 = x if len(xs) == 2 else self.bb.emit(relax.op.reshape(x, (batch, n_in)))
        b = np.zeros(n_out, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        nnz = int(np.count_nonzero(weight))
        density = nnz / max(1, weight.size)
        force = self.options.get("kernel")  # "sparse" / "dense" / None
        sparse = (force == "sparse") or (force is None and (self.gpu or not K.use_dense(density, weight.size)))
        name = self._unique(layer)
        out_ty = relax.TensorType((batch, n_out), "float32")
        if sparse:
            if w is not None and w.codebook is not None and w.indices is not None:
                csr = K.CSRCodebook.from_codebook(_np(w.indices).reshape(n_out, n_in), _np(w.codebook),
                                                  weight != 0)
            else:
                csr = K.CSRCodebook.from_dense(weight)
            f = K.sparse_linear_func(self.target, n_out, n_in, csr.col.shape[0], csr.k, batch,
                                     col_dtype=str(csr.col.dtype), code_dtype=str(csr.code.dtype), relu=relu,
                                     name=name)
            gv = self.bb.add_func(f, name)
            args = [x2] + [relax.const(a) for a in csr.arrays()] + [relax.const(b)]
            y = self.bb.emit(relax.call_tir(gv, args, out_ty))
            self.layers.append(LayerInfo(layer, "sparse_linear", (n_out, n_in), density, csr.nbytes + b.nbytes,
                                         relu, {"col": str(csr.col.dtype), "code": str(csr.code.dtype),
                                                "k": csr.k}))
        else:
            if self.gpu:
                raise NotImplementedError(f"layer {layer!r}: dense linear kernel is CPU-only so far")
            f = K.dense_linear_cpu(n_out, n_in, batch, relu=relu, name=name)
            gv = self.bb.add_func(f, name)
            y = self.bb.emit(relax.call_tir(gv, [x2, relax.const(weight), relax.const(b)], out_ty))
            self.layers.append(LayerInfo(layer, "dense_linear", (n_out, n_in), density,
                                         weight.nbytes + b.nbytes, relu))
        if len(xs) != 2:
            y = self.bb.emit(relax.op.reshape(y, tuple(lead) + (n_out,)))
        return y

    # -- conv2d ------------------------------------------------------------------------------------------
    def conv2d(self, node, x, pname, bias, stride, padding, dilation, groups, layer, relu=False):
        from tvm import relax

        if self.gpu:
            raise NotImplementedError(f"TVM backend: Conv2d layer {layer!r} is only lowered for CPU targets so far")
        if groups != 1:
            raise NotImplementedError(f"TVM backend: Conv2d layer {layer!r} has groups={groups}; only groups=1")
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:
                raise NotImplementedError(f"TVM backend: Conv2d layer {layer!r} padding={padding!r}")
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
        weight, _ = self.effective_weight(pname)
        oc, ic, kh, kw = weight.shape
        n, c, h, wd = self.shape_of(x)
        if c != ic:
            raise ValueError(f"layer {layer!r}: input has {c} channels, weight expects {ic}")
        name = self._unique(layer + "_im2col")
        fcol, (oh, ow) = K.im2col_cpu(n, c, h, wd, kh, kw, stride=stride, padding=padding, dilation=dilation,
                                      name=name)
        gcol = self.bb.add_func(fcol, name)
        P, KK = n * oh * ow, c * kh * kw
        cols = self.bb.emit(relax.call_tir(gcol, [x], relax.TensorType((P, KK), "float32")))
        w2 = np.ascontiguousarray(weight.reshape(oc, KK))
        b = np.zeros(oc, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
        name = self._unique(layer)
        f = K.dense_linear_cpu(oc, KK, P, relu=relu, name=name)
        gv = self.bb.add_func(f, name)
        y = self.bb.emit(relax.call_tir(gv, [cols, relax.const(w2), relax.const(b)],
                                        relax.TensorType((P, oc), "float32")))
        y = self.bb.emit(relax.op.reshape(y, (n, oh, ow, oc)))
        y = self.bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
        density = float(np.count_nonzero(weight)) / max(1, weight.size)
        self.layers.append(LayerInfo(layer, "conv2d_im2col_dense", tuple(weight.shape), density,
                                     w2.nbytes + b.nbytes, relu))
        return y

    # -- graph walk --------------------------------------------------------------------------------------
    @staticmethod
    def _is_relu(node: fx.Node, modules) -> bool:
        if node.op == "call_module":
            return type(modules[node.target]) is nn.ReLU
        if node.op == "call_function":
            return node.target in (F.relu, torch.relu, torch.relu_) and len(node.args) == 1
        if node.op == "call_method":
            return node.target in ("relu", "relu_") and len(node.args) == 1
        return False

    def _fusable_relu(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and self._is_relu(users[0], self.modules) and not self.gpu_unfused():
            return users[0]
        return None

    def gpu_unfused(self) -> bool:
        return bool(self.options.get("no_fuse", False))

    def _reshape_target(self, in_shape, shape) -> tuple[int, ...]:
        shape = [int(s) for s in shape]
        total = int(np.prod(in_shape))
        if shape.count(-1) > 1:
            raise ValueError(f"bad reshape {shape}")
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape[shape.index(-1)] = total // known
        if int(np.prod(shape)) != total:
            raise ValueError(f"cannot reshape {in_shape} to {shape}")
        return tuple(shape)

    @staticmethod
    def _flatten_shape(in_shape, start: int = 0, end: int = -1) -> tuple[int, ...]:
        nd = len(in_shape)
        start, end = start % nd, end % nd
        mid = int(np.prod(in_shape[start:end + 1]))
        return tuple(in_shape[:start]) + (mid,) + tuple(in_shape[end + 1:])

    def run(self):
        from tvm import relax

        self.bb = bb = relax.BlockBuilder()
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.input_shapes):
            raise ValueError(f"the model takes {len(placeholders)} inputs but {len(self.input_shapes)} input "
                             "shapes were given (pass example_inputs)")
        xs = [relax.Var(p.name, relax.TensorType(tuple(s), "float32"))
              for p, s in zip(placeholders, self.input_shapes)]
        env: dict[fx.Node, Any] = {}
        fused: set[fx.Node] = set()
        with bb.function("main", xs):
            with bb.dataflow():
                out = None
                for node in self.gm.graph.nodes:
                    if node in fused:
                        continue
                    if node.op == "placeholder":
                        env[node] = xs[placeholders.index(node)]
                    elif node.op == "output":
                        out = self._output(node.args[0], env)
                    elif node.op == "get_attr":
                        raise self._unsupported(node, f"get_attr {node.target!r} (a raw tensor attribute)")
                    else:
                        env[node] = self.lower_node(node, env, fused)
                gv = bb.emit_output(out)
            bb.emit_func_output(gv)
        return bb.get()

    def _output(self, arg, env):
        from tvm import relax

        if isinstance(arg, fx.Node):
            return env[arg]
        if isinstance(arg, (tuple, list)):
            return relax.Tuple([self._output(a, env) for a in arg])
        raise NotImplementedError(f"TVM backend: model output {arg!r} is not a tensor or a tuple of tensors")

    def _val(self, a, env):
        return env[a] if isinstance(a, fx.Node) else a

    def lower_node(self, node: fx.Node, env, fused: set):
        from tvm import relax

        bb = self.bb
        args = [self._val(a, env) if not isinstance(a, (tuple, list)) else type(a)(self._val(b, env) for b in a)
                for a in node.args]
        kwargs = {k: self._val(v, env) for k, v in node.kwargs.items()}

        def relu_fusion(n):
            r = self._fusable_relu(n)
            if r is not None:
                fused.add(r)
                return r
            return None

        if node.op == "call_module":
            mod = self.modules[node.target]
            t = type(mod)
            if t is nn.Linear:
                r = relu_fusion(node)
                bias = None if mod.bias is None else _np(mod.bias)
                y = self.linear(node, args[0], f"{node.target}.weight", bias, r is not None, str(node.target))
                if r is not None:
                    env[r] = y
                return y
            if t is nn.Conv2d:
                if mod.padding_mode != "zeros":
                    raise self._unsupported(node, f"Conv2d padding_mode={mod.padding_mode!r}")
                r = relu_fusion(node)
                bias = None if mod.bias is None else _np(mod.bias)
                y = self.conv2d(node, args[0], f"{node.target}.weight", bias, mod.stride, mod.padding,
                                mod.dilation, mod.groups, str(node.target), relu=r is not None)
                if r is not None:
                    env[r] = y
                return y
            if t is nn.ReLU:
                return bb.emit(relax.op.nn.relu(args[0]))
            if t is nn.Flatten:
                return bb.emit(relax.op.reshape(args[0], self._flatten_shape(self.shape_of(args[0]),
                                                                             mod.start_dim, mod.end_dim)))
            if t is nn.MaxPool2d:
                return self.maxpool(node, args[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                    mod.ceil_mode, mod.return_indices)
            if t in (nn.Identity, nn.Dropout):
                return args[0]
            raise self._unsupported(node, f"module {t.__name__}")
        if node.op == "call_function":
            fn = node.target
            if fn in (F.relu, torch.relu, torch.relu_):
                return bb.emit(relax.op.nn.relu(args[0]))
            if fn is torch.flatten:
                start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
                return bb.emit(relax.op.reshape(args[0], self._flatten_shape(self.shape_of(args[0]), start, end)))
            if fn in (torch.reshape,):
                shape = args[1] if len(args) > 1 else kwargs["shape"]
                return bb.emit(relax.op.reshape(args[0], self._reshape_target(self.shape_of(args[0]), shape)))
            if fn is F.max_pool2d:
                names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
                a = dict(zip(names, args))
                a.update(kwargs)
                return self.maxpool(node, a["input"], a["kernel_size"], a.get("stride"), a.get("padding", 0),
                                    a.get("dilation", 1), a.get("ceil_mode", False), a.get("return_indices", False))
            if fn is F.linear:
                x, wnode = node.args[0], node.args[1]
                bnode = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                if not (isinstance(wnode, fx.Node) and wnode.op == "get_attr"):
                    raise self._unsupported(node, "F.linear with a computed weight")
                bias = None
                if isinstance(bnode, fx.Node):
                    bias = _np(self.gm.get_parameter(bnode.target))
                r = relu_fusion(node)
                y = self.linear(node, env[x], str(wnode.target), bias, r is not None, node.name)
                if r is not None:
                    env[r] = y
                return y
            if fn is operator.getitem and isinstance(args[0], tuple):
                return args[0][args[1]]
            raise self._unsupported(node, f"function {getattr(fn, '__name__', fn)}")
        if node.op == "call_method":
            m = node.target
            x = args[0]
            if m in ("relu", "relu_"):
                return bb.emit(relax.op.nn.relu(x))
            if m in ("view", "reshape"):
                shape = args[1:]
                if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                    shape = shape[0]
                return bb.emit(relax.op.reshape(x, self._reshape_target(self.shape_of(x), shape)))
            if m == "flatten":
                start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
                return bb.emit(relax.op.reshape(x, self._flatten_shape(self.shape_of(x), start, end)))
            if m == "size":
                shape = self.shape_of(x)
                d = args[1] if len(args) > 1 else kwargs.get("dim")
                return shape if d is None else shape[d]
            if m in ("contiguous",):
                return x
            raise self._unsupported(node, f"method .{m}()")
        raise self._unsupported(node, node.op)

    def maxpool(self, node, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
        from tvm import relax

        if return_indices:
            raise self._unsupported(node, "MaxPool2d(return_indices=True)")
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k = pair(kernel_size)
        s = k if stride is None or stride == [] or stride == () else pair(stride)
        p = pair(padding)
        return self.bb.emit(relax.op.nn.max_pool2d(x, pool_size=k, strides=s, padding=p, dilation=pair(dilation),
                                                   ceil_mode=bool(ceil_mode)))


def _input_shapes(ir, example_inputs) -> list[tuple[int, ...]]:
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        return [tuple(int(s) for s in t.shape) for t in example_inputs]
    if getattr(ir, "input_shapes", None):
        return [tuple(int(s) for s in s_) for s_ in ir.input_shapes]
    raise ValueError("the TVM backend needs static input shapes: pass example_inputs=(tensor, ...)")


def lower_ir(ir, input_shapes: list[tuple[int, ...]], target="llvm", **options):
    """``(tvm.IRModule, [LayerInfo])`` for ``ir`` with the given static input shapes."""
    low = _Lowerer(ir, input_shapes, resolve_target(target), options)
    mod = low.run()
    return mod, low.layers


def compile_ir(ir, input_shapes, target="llvm", **options):
    """``(executable, IRModule, [LayerInfo])``: ``tvm.compile`` of :func:`lower_ir`."""
    import tvm

    tgt = resolve_target(target)
    mod, layers = lower_ir(ir, input_shapes, tgt, **options)
    target = tvm.target.Target(tgt)
    if is_gpu(tgt):
        # Relax ops (relu, reshape, max_pool2d) legalize to unscheduled TIR; give them the default GPU
        # schedule (thread bindings). Our kernels carry tirx.is_scheduled and are left alone.
        from tvm import relax

        with target:
            mod = relax.transform.LegalizeOps()(mod)
            mod = tvm.s_tir.transform.DefaultGPUSchedule()(mod)
    ex = tvm.compile(mod, target=target)
    return ex, mod, layers


class LoweredModule:
    """A compiled model: ``__call__(x: torch.Tensor) -> torch.Tensor`` runs the Relax VM on the CPU.

    Attributes:
        target: the resolved target dict.
        input_shapes: the static input shapes compiled for (a new batch size triggers a recompile).
        layers: how each weight layer was lowered (:class:`LayerInfo`).
        executable / irmodule: the TVM objects of the most recent compile.
    """

    def __init__(self, ir, input_shapes, target, options):
        self._ir = ir
        self.target = target
        self.options = options
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.runnable = _runnable(target)
        self._vms: dict[tuple, Any] = {}
        self.executable, self.irmodule, self.layers = compile_ir(ir, self.input_shapes, target, **options)
        if self.runnable:
            self._vms[tuple(self.input_shapes)] = self._make_vm(self.executable)

    def _device(self):
        import tvm

        return tvm.cuda(0) if self.target["kind"] == "cuda" else tvm.cpu()

    def _make_vm(self, ex):
        from tvm import relax

        return relax.VirtualMachine(ex, self._device())["main"]

    @property
    def weight_nbytes(self) -> int:
        """Bytes of all weight constants in the compiled artifact."""
        return sum(layer.const_nbytes for layer in self.layers)

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        if not self.runnable:
            raise RuntimeError(
                f"the TVM module was compiled for target {self.target!r}, which cannot run on this machine; "
                "it can only be exported (TVMBackend().export(ir, out_dir, target=...))")
        shapes = tuple(tuple(int(s) for s in x.shape) for x in xs)
        fn = self._vms.get(shapes)
        if fn is None:
            ex, _, _ = compile_ir(self._ir, [list(s) for s in shapes], self.target, **self.options)
            fn = self._vms[shapes] = self._make_vm(ex)
        import tvm

        dev = self._device()
        if dev.dlpack_device_type() == tvm.cpu().dlpack_device_type():  # zero-copy hand-over (DLPack): ~0.4 us instead of ~19 us
            args = [tvm.runtime.from_dlpack(x.detach().to(torch.float32).contiguous()) for x in xs]
        else:
            args = [tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), device=dev)
                    for x in xs]
        out = fn(*args)
        return _to_torch(out)

    forward = __call__

    def __repr__(self) -> str:
        lines = [f"LoweredModule(target={self.target}, inputs={self.input_shapes})"]
        for layer in self.layers:
            lines.append(f"  {layer.name}: {layer.kind} {layer.shape} density={layer.density:.3f} "
                         f"const={layer.const_nbytes}B{' +relu' if layer.fused_relu else ''}")
        return "\n".join(lines)


def _runnable(target: dict) -> bool:
    """True if modules for ``target`` can run here: host CPU targets, or CUDA with a visible GPU."""
    if target["kind"] == "cuda":
        import tvm

        return bool(tvm.cuda(0).exist)
    return not is_cross(target)


def device_modules(executable) -> list:
    """All runtime modules below ``executable.mod`` (recursively through imports): the device modules
    (kind ``cuda``/``opencl``) hold the generated GPU source (``inspect_source("cuda")`` / ``("cl")``)."""
    seen, out, todo = set(), [], [executable.mod if hasattr(executable, "mod") else executable]
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        todo.extend(m.imports)
    return out


def device_source(executable, kind: str) -> str:
    """Concatenated source of the device modules of ``kind`` (``"cuda"`` or ``"opencl"``); ``""`` if none."""
    fmt = {"cuda": "cuda", "opencl": "cl"}[kind]
    return "\n".join(m.inspect_source(fmt) for m in device_modules(executable) if m.kind == kind)


def _to_torch(out):
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return torch.from_dlpack(out) if out.device.dlpack_device_type() == tvm.cpu().dlpack_device_type() else torch.from_numpy(out.numpy())
    if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "List", "Tuple"):
        return tuple(_to_torch(o) for o in out)
    return out
