"""Offline compile checks for the exported CUDA sources (no GPU needed): NVRTC through ctypes and nvcc.

NVRTC (what CuPy's ``RawModule`` uses) is loaded from ``$NVRTC_LIB`` or from an installed
``nvidia-cuda-nvrtc`` wheel (``nvidia/cu13/lib/libnvrtc.so.13``); CCCL headers (``<cuda/std/cstdint>``,
which TVM's prelude includes under ``__CUDACC_RTC__``) come from ``$CCCL_INCLUDE`` or CuPy's bundled copy
or the CUDA toolkit. Used by ``export_cuda.py --check-compile``; every function returns ``(ok, log)`` and
never raises when a tool is missing (``ok is None`` then).
"""
from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys
import tempfile


def find_nvrtc() -> str | None:
    if os.environ.get("NVRTC_LIB"):
        return os.environ["NVRTC_LIB"]
    pats = []
    for p in sys.path:
        pats += [os.path.join(p, "nvidia", "cu13", "lib", "libnvrtc.so*"),
                 os.path.join(p, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")]
    pats += ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/local/cuda*/targets/*/lib/libnvrtc.so*"]
    for pat in pats:
        hits = sorted(h for h in glob.glob(pat) if "builtins" not in h and "alt" not in h)
        if hits:
            return hits[0]
    return None


def cccl_includes() -> list[str]:
    """``-I`` options for the CCCL headers (libcudacxx first), or [] when none are found."""
    if os.environ.get("CCCL_INCLUDE"):
        return [f"-I{d}" for d in os.environ["CCCL_INCLUDE"].split(os.pathsep)]
    try:  # CuPy's bundled CCCL, the same paths CuPy adds to its own kernels
        from cupy._core import core  # type: ignore

        return list(core._get_cccl_include_options())
    except Exception:  # noqa: BLE001
        pass
    for pat in ["/usr/local/cuda*/include/cccl", "/usr/local/cuda*/targets/*/include/cccl"]:
        hits = sorted(glob.glob(pat))
        if hits:
            return [f"-I{hits[-1]}"]
    return []


def nvrtc_compile(src: str, options: list[str], name: str = "kernel.cu") -> tuple[bool | None, str]:
    """Compile ``src`` with NVRTC to PTX/CUBIN in memory; ``(ok, log)``."""
    lib = find_nvrtc()
    if lib is None:
        return None, "libnvrtc not found (pip install nvidia-cuda-nvrtc, or set NVRTC_LIB)"
    nv = ctypes.CDLL(lib)
    prog = ctypes.c_void_p()
    rc = nv.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram rc={rc}"
    opts = [o.encode() for o in options]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value + 1)
    nv.nvrtcGetProgramLog(prog, buf)
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, f"[{os.path.basename(lib)} rc={rc}] " + buf.value.decode(errors="replace").strip()


def nvcc_compile(src: str, arch: str = "sm_90") -> tuple[bool | None, str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None, "nvcc not found"
    with tempfile.TemporaryDirectory() as d:
        cu = os.path.join(d, "kernel.cu")
        with open(cu, "w") as f:
            f.write(src)
        r = subprocess.run([nvcc, "-std=c++17", f"-arch={arch}", "-cubin", "-diag-suppress", "177",
                            "-Xptxas", "-v", "-o", os.path.join(d, "k.cubin"), cu],
                           capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()
