"""The compiled TVM model as a callable (``LoweredModule``) and helpers to inspect TVM executables."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .targets import is_cross

__all__ = ["LoweredModule", "InputSpec", "device_modules", "device_source", "constant_nbytes"]

#: (shape, dtype name) of one model input, e.g. ``((1, 3, 224, 224), "float32")``.
InputSpec = tuple[tuple[int, ...], str]

_ALIGN = 64  # TVM's DLPack import requires 64-byte aligned data


class LoweredModule:
    """A compiled model: ``__call__(*xs: torch.Tensor)`` runs the Relax VM and returns torch tensors.

    Attributes:
        target: the resolved target dict.
        input_specs: ``[(shape, dtype)]`` compiled for; a call with other shapes recompiles (and caches).
        layers: how each compressed weight was lowered (:class:`~.lower.LayerInfo`).
        executable / irmodule: the TVM objects of the most recent compile.
    """

    def __init__(self, ir, input_specs: list[InputSpec], target: dict, options: dict, example_inputs=None):
        from .lower import compile_ir

        self._ir = ir
        self.target = target
        self.options = options
        self.input_specs = [(tuple(s), str(d)) for s, d in input_specs]
        self.runnable = _runnable(target)
        self._vms: dict[tuple, Any] = {}
        self.executable, self.irmodule, self.layers, self.id_checks = compile_ir(
            ir, self.input_specs, target, example_inputs, **options)
        if self.runnable:
            self._vms[tuple(self.input_specs)] = self._make_vm(self.executable)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [s for s, _ in self.input_specs]

    def _device(self):
        import tvm

        return tvm.cuda(0) if self.target["kind"] == "cuda" else tvm.cpu()

    def _make_vm(self, ex):
        from tvm import relax

        return relax.VirtualMachine(ex, self._device())["main"]

    @property
    def weight_nbytes(self) -> int:
        """Bytes of all constants (weights, biases, normalisation parameters) in the compiled module."""
        return constant_nbytes(self.irmodule)

    def _check_inputs(self, xs: tuple, kwargs: dict) -> None:
        """Raise ``TypeError``/``ValueError``/``IndexError`` for inputs the compiled model cannot take."""
        if kwargs:
            raise TypeError(f"the TVM module takes its inputs by position (in the order of forward()'s "
                            f"parameters), got keyword arguments {sorted(kwargs)}")
        if len(xs) != len(self.input_specs):
            raise TypeError(f"the model takes {len(self.input_specs)} input tensor(s) "
                            f"({', '.join(f'{list(s)} {d}' for s, d in self.input_specs)}), got {len(xs)}")
        for i, (x, (shape, dtype)) in enumerate(zip(xs, self.input_specs)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"input {i} must be a torch.Tensor, got {type(x).__name__}")
            if _dtype_name(x.dtype) != dtype:
                raise TypeError(f"input {i} is {_dtype_name(x.dtype)}, the model was compiled for {dtype} "
                                f"(shape {list(shape)}): convert it, e.g. x.to(torch.{dtype})")
            if x.dim() != len(shape):
                raise ValueError(f"input {i} has shape {list(x.shape)}, the model was compiled for "
                                 f"{len(shape)}-d inputs like {list(shape)}")
        for i, rows, layer in self.id_checks:
            ids = xs[i]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                raise IndexError(f"input {i} holds id {bad}, outside the {rows} rows of embedding {layer!r} "
                                 f"(valid ids: 0..{rows - 1})")

    def __call__(self, *xs: torch.Tensor, **kwargs):
        if not self.runnable:
            raise RuntimeError(
                f"the TVM module was compiled for target {self.target!r}, which cannot run on this machine; "
                "it can only be exported (TVMBackend().export(ir, out_dir, target=...))")
        self._check_inputs(xs, kwargs)
        specs = tuple((tuple(int(s) for s in x.shape), _dtype_name(x.dtype)) for x in xs)
        fn = self._vms.get(specs)
        if fn is None:  # other shapes (e.g. batch size): compile once more, cached
            from .lower import compile_ir

            ex, _, _, _ = compile_ir(self._ir, list(specs), self.target, example_inputs=xs, **self.options)
            fn = self._vms[specs] = self._make_vm(ex)
        import tvm

        dev = self._device()
        if dev.dlpack_device_type() == tvm.cpu().dlpack_device_type():  # zero-copy hand-over (DLPack)
            args = [tvm.runtime.from_dlpack(_aligned(x)) for x in xs]
        else:
            args = [tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy()), device=dev) for x in xs]
        return _to_torch(fn(*args))

    forward = __call__

    def __repr__(self) -> str:
        lines = [f"LoweredModule(target={self.target}, inputs={self.input_specs})"]
        for layer in self.layers:
            lines.append(f"  {layer.name}: {layer.kind} [{layer.layout}] {layer.shape} density={layer.density:.3f} "
                         f"const={layer.const_nbytes}B" + _act_suffix(layer.fused_relu))
        return "\n".join(lines)


def _act_suffix(act) -> str:
    return " +relu6" if act == "relu6" else (" +relu" if act else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached and contiguous, copied when its data is not 64-byte aligned (a ``torch.from_numpy``
    array or an offset view): TVM's ``from_dlpack`` refuses unaligned data."""
    x = x.detach().contiguous()
    if x.data_ptr() % _ALIGN:
        y = torch.empty_like(x)  # torch's CPU allocator aligns to 64 bytes
        y.copy_(x)
        x = y
    return x


def _runnable(target: dict) -> bool:
    """True if modules for ``target`` can run here: host CPU targets, or CUDA with a visible GPU."""
    if target["kind"] == "cuda":
        import tvm

        return bool(tvm.cuda(0).exist)
    return not is_cross(target)


def constant_nbytes(irmodule) -> int:
    """Bytes of the distinct ``relax.Constant`` tensors in ``irmodule["main"]`` (what the artifact stores)."""
    import tvm
    from tvm import relax

    seen: dict[int, int] = {}

    def visit(e):
        if isinstance(e, tvm.ir.expr.Constant) and isinstance(getattr(e, "value", None), tvm.runtime.Tensor):
            arr = e.value
            seen.setdefault(arr.data_ptr(), int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(str(arr.dtype)).itemsize)

    relax.analysis.post_order_visit(irmodule["main"], visit)
    return int(sum(seen.values()))


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
        if out.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
            return torch.from_dlpack(out)
        return torch.from_numpy(out.numpy())
    if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "List", "Tuple"):
        return tuple(_to_torch(o) for o in out)
    return out
