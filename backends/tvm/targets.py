"""Named TVM targets for dccomp's TVM backend.

TVM 0.27 targets are dicts (string targets such as ``"llvm -mcpu=..."`` raise), so the names accepted
by :func:`resolve_target` map to dicts:

======== ==================================================================================================
name     target dict
======== ==================================================================================================
llvm     ``{"kind": "llvm"}`` (x86/host CPU; ``mcpu`` is added when ``detect_cpu=True``, e.g. ``znver4``)
arm_cpu  ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}`` (cross-compiled, export only)
cuda     ``{"kind": "cuda", "arch": "sm_90"}`` (``arch`` overridable; without it TVM falls back to sm_50)
mali     ``{"kind": "opencl", "device": "mali", "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}``
======== ==================================================================================================

A raw dict (or a ``tvm.target.Target``) is accepted as is. Importing this module does not import TVM.
"""
from __future__ import annotations

import copy
from typing import Any

__all__ = ["TARGETS", "resolve_target", "target_kind", "is_gpu", "is_cross", "make_target"]

TARGETS: dict[str, dict[str, Any]] = {
    "llvm": {"kind": "llvm"},
    "arm_cpu": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "cuda": {"kind": "cuda", "arch": "sm_90"},
    "mali": {"kind": "opencl", "device": "mali", "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}},
}

# Cross compilers used by ``export_library`` for targets whose host code is not x86.
CROSS_CC = {"aarch64-linux-gnu": "aarch64-linux-gnu-gcc"}


def resolve_target(target: str | dict | Any = "llvm", *, arch: str | None = None,
                   detect_cpu: bool = False) -> dict[str, Any]:
    """The target dict for ``target``: a name from :data:`TARGETS`, a dict, or a ``tvm.target.Target``.

    Args:
        target: name (``llvm``, ``arm_cpu``, ``cuda``, ``mali``) or a raw target dict.
        arch: CUDA architecture (``"sm_80"``...) overriding the default ``sm_90`` for ``cuda``.
        detect_cpu: for ``llvm``, add ``mcpu`` = the host CPU as LLVM names it (needs TVM).

    Raises:
        ValueError: unknown name (the message lists the known names) or a dict without ``kind``.
    """
    if isinstance(target, dict):
        if "kind" not in target:
            raise ValueError(f"target dict needs a 'kind' key, got {target!r}")
        out = copy.deepcopy(target)
    elif isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(f"unknown TVM target {target!r}; known names: {', '.join(sorted(TARGETS))} "
                             "(or pass a target dict such as {'kind': 'llvm', 'mcpu': 'znver3'})")
        out = copy.deepcopy(TARGETS[target])
    else:  # a tvm.target.Target
        export = getattr(target, "export", None)
        if export is None:
            raise ValueError(f"cannot use {target!r} as a TVM target; known names: {', '.join(sorted(TARGETS))}")
        out = dict(export())
    if arch is not None:
        if out["kind"] != "cuda":
            raise ValueError(f"arch={arch!r} only applies to cuda targets, not {out['kind']!r}")
        out["arch"] = arch
    if detect_cpu and out["kind"] == "llvm" and "mtriple" not in out and "mcpu" not in out:
        from tvm.target import codegen

        cpu = codegen.llvm_get_system_cpu()
        if cpu and cpu != "generic":
            out["mcpu"] = cpu
    return out


def make_target(target: str | dict | Any = "llvm", **kw):
    """A ``tvm.target.Target`` for ``target`` (see :func:`resolve_target`)."""
    import tvm

    return tvm.target.Target(resolve_target(target, **kw))


def target_kind(target: str | dict | Any) -> str:
    """``llvm``, ``cuda``, ``opencl``, ... of a target name or dict."""
    return resolve_target(target)["kind"]


def is_gpu(target: str | dict | Any) -> bool:
    """True for device targets (cuda, opencl, vulkan, metal, rocm)."""
    return target_kind(target) in ("cuda", "opencl", "vulkan", "metal", "rocm")


def host_triple(target: str | dict | Any) -> str | None:
    """The ``mtriple`` of the code running on the host CPU (``None`` = native)."""
    t = resolve_target(target)
    host = t.get("host", t) if t["kind"] != "llvm" else t
    if isinstance(host, dict):
        return host.get("mtriple")
    return None


def is_cross(target: str | dict | Any) -> bool:
    """True if the compiled module cannot run on this machine: a GPU target, or a host triple that is not
    this machine's architecture."""
    if is_gpu(target):
        return True
    triple = host_triple(target)
    if triple is None:
        return False
    import platform

    machine = platform.machine().lower()
    arch = triple.split("-")[0].lower()
    aliases = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}}
    return machine not in aliases.get(arch, {arch})


def cross_compiler(target: str | dict | Any) -> str | None:
    """The C compiler to link an exported library for ``target`` (``None`` = the host's default)."""
    triple = host_triple(target)
    if triple is None:
        return None
    if not is_cross({"kind": "llvm", "mtriple": triple}):
        return None
    for prefix, cc in CROSS_CC.items():
        if triple.startswith(prefix):
            return cc
    raise ValueError(f"no cross compiler known for {triple!r}; known: {sorted(CROSS_CC)}")
