"""Lower a dccomp IR to a TVM Relax module: TVM's own PyTorch frontend for every op, dccomp's kernels for
every op that reads a compressed weight.

1. ``torch.export.export`` of the IR's graph module (eval mode, the compressed weights' decoded values as its
   parameters), decomposed to core ATen except ``linear``, ``conv1d``, ``conv2d`` and ``embedding``, which are
   kept whole so that they can be replaced.
2. ``tvm.relax.frontend.torch`` (``ExportedProgramImporter``) imports the program. Its ``custom_convert_map``
   sends those four ops, when their weight is a parameter of the model, to :class:`~.converters.Converters`:

   * linear: the CSR + codebook kernel (:mod:`.kernels`) below the measured density threshold, else the
     scheduled dense kernel (CPU; on GPU targets the sparse kernel always). A ReLU that is the only user of
     the output is fused into the kernel.
   * conv1d / conv2d (any groups, stride, padding, dilation): the direct sparse convolution kernel or the
     scheduled dense one from :mod:`.conv_kernels`, chosen per layer by its measured cost rule (conv1d runs
     as a conv2d of height 1).
   * embedding: a CSR row-gather kernel (:mod:`.embedding_kernels`) when the table is compressed.

   Compressed arrays (``rowptr``, ``col``, ``code``, ``codebook``) are ``relax.const`` s: they stay compressed
   in the artifact. Every other op (BatchNorm, residual adds, pooling, LayerNorm, GELU, attention's matmuls,
   LSTM/GRU, ...) is TVM's frontend's own lowering; an op it does not know fails before compiling, naming the op
   and the layer.
3. ``tvm.compile`` with TVM's default pipeline for the target (on GPUs, dlight schedules the frontend's ops).

Shapes are static: the module is compiled for the example inputs' shapes and dtypes.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch

from .converters import Converters, LayerInfo
from .module import InputSpec, LoweredModule, constant_nbytes, device_modules, device_source
from .targets import resolve_target

__all__ = ["LayerInfo", "lower_ir", "compile_ir", "export_ir", "LoweredModule", "device_modules",
           "device_source", "constant_nbytes", "input_specs", "PRESERVED_OPS"]

#: ATen ops kept undecomposed so that dccomp's kernels replace them (frontend op names).
PRESERVED_OPS = ("linear.default", "conv1d.default", "conv2d.default", "embedding.default")


def input_specs(ir, example_inputs) -> list[InputSpec]:
    """``[(shape, dtype)]`` of the model inputs, from ``example_inputs`` (tensors) or ``ir.input_shapes``
    (float32 assumed). Raises ``ValueError`` when neither gives static shapes."""
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        out = []
        for t in example_inputs:
            if isinstance(t, torch.Tensor):
                out.append((tuple(int(s) for s in t.shape), str(t.dtype).replace("torch.", "")))
            else:
                out.append((tuple(int(s) for s in t[0]), str(t[1])))
        return out
    if getattr(ir, "input_shapes", None):
        return [(tuple(int(s) for s in s_), "float32") for s_ in ir.input_shapes]
    raise ValueError("the TVM backend needs static input shapes: pass example_inputs=(tensor, ...)")


def _examples(specs: Sequence[InputSpec], example_inputs) -> tuple:
    if example_inputs is not None:
        xs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        if all(isinstance(x, torch.Tensor) for x in xs):
            return tuple(x.detach() for x in xs)
    return tuple(torch.zeros(s, dtype=getattr(torch, d)) for s, d in specs)


def export_ir(ir, specs: Sequence[InputSpec], example_inputs=None):
    """``torch.export`` of ``ir.gm`` in eval mode, decomposed to core ATen except :data:`PRESERVED_OPS`.

    Raises:
        ValueError: the model does not run on the example inputs (wrong shape or dtype).
        NotImplementedError: ``torch.export`` cannot capture the graph module (the message says why).
    """
    from torch.export import default_decompositions, export

    gm = ir.gm
    was_training = gm.training
    examples = _examples(specs, example_inputs)
    with contextlib.suppress(NotImplementedError):  # a torch.export-captured module is fixed in eval mode
        gm.eval()
    try:
        try:
            with torch.no_grad():
                gm(*examples)
        except Exception as e:  # noqa: BLE001 - the model itself rejects these inputs: they are wrong
            shown = ", ".join(f"{list(x.shape)} {str(x.dtype).replace('torch.', '')}" for x in examples)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"TVM backend: {ir.name} does not run on example inputs {shown}: {why}. Pass "
                             "example_inputs the model accepts.") from e
        try:
            ep = export(gm, examples, strict=False)
        except Exception as e:  # noqa: BLE001 - any capture failure is reported the same way
            raise NotImplementedError(f"TVM backend: torch.export could not capture {ir.name}: {e}. Use "
                                      "backend='torch', or make the model exportable (torch.export docs).") from e
    finally:
        with contextlib.suppress(NotImplementedError):
            gm.train(was_training)
    table = default_decompositions()
    for op in (torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
               torch.ops.aten.embedding.default):
        table.pop(op, None)
    return ep.run_decompositions(table)


def _layer_of(node, model: str) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
        if path:
            return f"layer {path!r} ({cls_name})"
    return f"{model}.forward (fx node {node.name!r})"


def _check_supported(ep, convert_map: dict, model: str) -> None:
    missing: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in convert_map:
            missing.setdefault(node.target.__name__, []).append(_layer_of(node, model))
    if missing:
        what = "; ".join(f"aten.{op} at {', '.join(sorted(set(layers)))}" for op, layers in missing.items())
        raise NotImplementedError(
            f"TVM backend: TVM 0.27's PyTorch frontend has no converter for {what}. Use backend='torch' for this "
            "model, rewrite that layer with supported ops, or pass a converter for the op through "
            "backend_options={'convert_map': {'<op name>': fn(node, importer)}} (see docs/tvm.md).")


def lower_ir(ir, specs: Sequence[InputSpec], target="llvm", example_inputs=None, **options):
    """``(tvm.IRModule, [LayerInfo], id_checks)`` for ``ir`` with static input ``specs`` ``[(shape, dtype)]``;
    ``id_checks`` = ``[(input index, table rows, layer)]`` for inputs that are embedding ids.

    Options: ``kernel="sparse"|"dense"`` forces the kernel of every linear/conv layer; ``weights="fast"``
    (default: per layer the measured fastest layout), ``"small"`` (per layer the fewest bytes: the smallest
    artifact) or ``"balanced"`` (the fastest within ``max_bytes_ratio``, default 1.5, times the layer's coded
    size), see :mod:`.layouts`; ``no_fuse=True`` keeps ReLUs separate; ``convert_map={op:
    fn(node, importer)}`` adds or overrides frontend converters.

    Raises:
        NotImplementedError: an op TVM's frontend cannot lower (names the op and the layer), or a model
            ``torch.export`` cannot capture.
    """
    tgt = resolve_target(target)
    with warnings.catch_warnings():  # a deprecation inside torch.export's pytree code, not the user's concern
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # RNN modules re-assign their _flat_weights during export (harmless; dccomp.capture hides it too)
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*were assigned during export")
        return _lower(ir, specs, tgt, example_inputs, options)


def _lower(ir, specs, tgt: dict, example_inputs, options: dict):
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    ep = export_ir(ir, specs, example_inputs)
    conv = Converters(ir, ep, tgt, options)
    importer = ExportedProgramImporter()
    conv.orig = {k: importer.convert_map[k] for k in conv.convert_map() if k in importer.convert_map}
    custom = {**conv.convert_map(), **dict(options.get("convert_map") or {})}
    _check_supported(ep, {**importer.convert_map, **custom}, ir.name)
    with contextlib.redirect_stdout(None):
        mod = importer.from_exported_program(ep, False, True, False, custom)
    conv.record_frontend_weights()
    return mod, conv.layers, conv.id_checks


def compile_ir(ir, specs: Sequence[InputSpec], target="llvm", example_inputs=None, **options):
    """``(executable, IRModule, [LayerInfo], id_checks)``: ``tvm.compile`` of :func:`lower_ir`."""
    import tvm

    tgt = resolve_target(target)
    mod, layers, id_checks = lower_ir(ir, specs, tgt, example_inputs, **options)
    # tvm.compile's default pipeline legalizes the frontend's ops; on GPU targets it schedules them with
    # dlight (thread bindings); dccomp's GPU kernels carry tirx.is_scheduled and are left alone.
    ex = tvm.compile(mod, target=tvm.target.Target(tgt))
    return ex, mod, layers, id_checks
