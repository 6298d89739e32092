"""dccomp's TVM backend: compressed-weight kernels (CSR + codebook) compiled with Apache TVM 0.27.

Usage::

    from dccomp.backends.tvm import TVMBackend
    m = TVMBackend().lower(ir, target="llvm", example_inputs=(x,))   # callable: m(x) -> torch.Tensor
    files = TVMBackend().export(ir, "out/", target="arm_cpu", example_inputs=(x,))  # .so + .json

TVM is imported lazily (this package imports without it); without TVM, ``lower``/``export`` raise
``ImportError`` telling to ``pip install 'dccomp[tvm]'``.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from .targets import TARGETS, resolve_target

__all__ = ["TVMBackend", "TARGETS", "resolve_target"]

_INSTALL_HINT = "the TVM backend needs Apache TVM: pip install 'dccomp[tvm]' (apache-tvm==0.27.0.post1)"


#: options of lower()/export() besides target and example_inputs, with their allowed values (None: any)
OPTIONS = {"kernel": ("sparse", "dense", None), "weights": ("fast", "small", "balanced"),
           "max_bytes_ratio": None, "no_fuse": (True, False), "calibrate": (True, False),
           "arch": None, "detect_cpu": (True, False), "convert_map": None}


def _check_options(options: dict) -> None:
    """Raise ``TypeError`` for an unknown option and ``ValueError`` for a value it cannot take."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown TVM backend option(s) {unknown}; known: {', '.join(sorted(OPTIONS))}")
    for key, value in options.items():
        allowed = OPTIONS[key]
        if allowed is not None and value not in allowed:
            raise ValueError(f"TVM backend option {key}={value!r}; expected one of {list(allowed)}")
    ratio = options.get("max_bytes_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0):
        raise ValueError(f"TVM backend option max_bytes_ratio={ratio!r}; expected a number > 0 (e.g. 1.5: per "
                         "layer at most 1.5x the bytes of its coded form in the .dcc file) or None")
    if ratio is not None and options.get("weights") == "small":
        raise ValueError("max_bytes_ratio applies to weights='fast' or 'balanced'; weights='small' already "
                         "takes the fewest bytes")
    if options.get("convert_map") is not None and not isinstance(options["convert_map"], dict):
        raise TypeError("convert_map must be a dict {aten op name: fn(node, importer) -> relax expr}")


def _require_tvm():
    try:
        import tvm  # noqa: F401
        from tvm import relax  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from e


class TVMBackend:
    """Lower a dccomp IR to TVM: linear layers run on the compressed (CSR + codebook) weights."""

    name = "tvm"

    def lower(self, ir, *, target: str | dict = "llvm", example_inputs=None, **options):
        """Compile ``ir`` for ``target`` and return a callable module (``m(x: Tensor) -> Tensor``).

        Args:
            ir: the dccomp IR (``ir.gm`` + compression state of ``ir.weights``).
            target: ``llvm`` | ``arm_cpu`` | ``cuda`` | ``mali`` or a target dict (see :mod:`.targets`).
            example_inputs: tensors giving the static input shapes (else ``ir.input_shapes``).
            **options: ``kernel="sparse"|"dense"`` forces the linear/conv kernel; ``weights="fast"|"small"|
                "balanced"`` and ``max_bytes_ratio`` choose each layer's weight layout (CSR, packed, dense
                1..8-bit cluster indices, dense float32: see :mod:`.layouts`); ``no_fuse=True`` disables
                ReLU fusion; ``arch="sm_80"`` overrides the CUDA arch; ``detect_cpu`` (default ``True`` here,
                ``False`` in :meth:`export`) adds this machine's ``mcpu`` to the ``llvm`` target (AVX2/AVX-512
                instead of generic x86-64 SSE2); ``convert_map={aten op: fn(node, importer)}`` adds frontend
                converters for ops TVM lacks.

        The returned module runs the Relax VM on the CPU for host targets; for cross targets (aarch64, GPUs)
        calling it raises ``RuntimeError`` saying it can only be exported.
        """
        _check_options(options)
        _require_tvm()
        from .lower import LoweredModule, input_specs

        arch = options.pop("arch", None)
        # the module runs here: tune ``llvm`` for this CPU (AVX2/AVX-512 register tiles) unless told not to
        tgt = resolve_target(target, arch=arch, detect_cpu=bool(options.pop("detect_cpu", True)))
        return LoweredModule(ir, input_specs(ir, example_inputs), tgt, options, example_inputs)

    def export(self, ir, out_dir, *, target: str | dict = "llvm", example_inputs=None, name: str | None = None,
               **options) -> list[pathlib.Path]:
        """Write ``<name>.so`` (the compiled Relax executable; aarch64 via ``aarch64-linux-gnu-gcc``) and
        ``<name>.json`` (inputs, outputs, target, per-layer kernels and weight bytes). Returns both paths."""
        _check_options(options)
        _require_tvm()
        from .lower import compile_ir, constant_nbytes, input_specs
        from .targets import cross_compiler

        arch = options.pop("arch", None)
        tgt = resolve_target(target, arch=arch, detect_cpu=bool(options.pop("detect_cpu", False)))
        specs = input_specs(ir, example_inputs)
        ex, mod, layers, _ = compile_ir(ir, specs, tgt, example_inputs, **options)
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        base = name or (getattr(ir, "name", None) or "model")
        lib_path = out / f"{base}.so"
        cc = cross_compiler(tgt)
        if cc is not None:
            ex.export_library(str(lib_path), cc=cc)
        else:
            ex.export_library(str(lib_path))
        outputs = _outputs_json(mod)
        meta: dict[str, Any] = {
            "format": "dccomp-tvm/1",
            "library": lib_path.name,
            "entry": "main",
            "runtime": "tvm.relax.VirtualMachine(tvm.runtime.load_module(library), device)['main']",
            "target": tgt,
            "inputs": [{"name": f"x{i}", "shape": list(s), "dtype": d} for i, (s, d) in enumerate(specs)],
            "outputs": outputs,
            "layers": [layer.to_json() for layer in layers],
            "weight_const_nbytes": sum(layer.const_nbytes for layer in layers),
            "const_nbytes": constant_nbytes(mod),
        }
        json_path = out / f"{base}.json"
        json_path.write_text(json.dumps(meta, indent=2))
        return [lib_path, json_path]


def _outputs_json(mod) -> list[dict]:
    fn = mod["main"]
    ty = getattr(fn, "ret_ty", None) or getattr(fn, "ret_struct_info", None)
    if ty is None:
        try:
            ty = fn.ty.ret
        except AttributeError:
            return []

    def one(t):
        if hasattr(t, "fields"):
            return [x for f in t.fields for x in one(f)]
        return [{"shape": [int(s) for s in t.shape], "dtype": str(t.dtype)}]

    try:
        return one(ty)
    except (AttributeError, TypeError):
        return []
