"""Pure-Python helpers on TVM-emitted CUDA source (used by export_cuda.py here and run_cuda.py on the GPU).

* :func:`parse_kernels` -- every ``extern "C" __global__ void [__launch_bounds__(N)] name(args) {`` definition:
  name, launch bound, arguments as ``(c_type, is_pointer, name)`` mapped to numpy dtype names.
* :func:`check_against_meta` -- argument order/dtypes and launch dims of ``meta.json`` vs the C signature.
* :func:`unknown_calls` -- called identifiers in the kernel bodies that are neither CUDA built-ins nor
  defined in the source (catches TVM-runtime-only helpers).
* :func:`strip_prelude` -- TVM's source with its header prelude replaced by a minimal, include-free one
  (a fallback for NVRTC setups without the CCCL headers).
"""
from __future__ import annotations

import re

C2NP = {"float": "float32", "double": "float64", "half": "float16", "int": "int32", "uint": "uint32",
        "unsigned int": "uint32", "short": "int16", "ushort": "uint16", "unsigned short": "uint16",
        "char": "int8", "signed char": "int8", "uchar": "uint8", "unsigned char": "uint8",
        "int64_t": "int64", "long long": "int64", "uint64_t": "uint64", "int8_t": "int8", "uint8_t": "uint8",
        "int16_t": "int16", "uint16_t": "uint16", "int32_t": "int32", "uint32_t": "uint32",
        "bool": "bool"}

_DEF = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\((\d+)\)\s+)?(\w+)\s*\(([^)]*)\)\s*\{')

BUILTINS = {"min", "max", "__shfl_down_sync", "__shfl_sync", "__shfl_up_sync", "__shfl_xor_sync", "__activemask",
            "__syncthreads", "__syncwarp", "__launch_bounds__", "if", "for", "while", "switch", "return",
            "sizeof", "alignas", "fmaxf", "fminf", "sqrtf", "expf", "fabsf", "__ldg", "static_cast",
            "reinterpret_cast", "int", "float", "uint", "ushort", "uchar", "make_float4", "make_int4",
            "__float_as_int", "__int_as_float", "__fmaf_rn", "fmaf"}


def parse_kernels(src: str) -> list[dict]:
    out = []
    for m in _DEF.finditer(src):
        bound, name, argstr = m.group(1), m.group(2), m.group(3)
        args = []
        for a in [s.strip() for s in argstr.split(",") if s.strip()]:
            a2 = a.replace("__restrict__", " ").replace("const ", " ")
            ptr = "*" in a2
            a2 = a2.replace("*", " ")
            toks = a2.split()
            aname, ctype = toks[-1], " ".join(toks[:-1])
            args.append({"name": aname, "ctype": ctype, "pointer": ptr, "dtype": C2NP.get(ctype, f"?{ctype}")})
        # body: braces matched from the opening brace
        i, depth = m.end() - 1, 0
        for j in range(i, len(src)):
            if src[j] == "{":
                depth += 1
            elif src[j] == "}":
                depth -= 1
                if depth == 0:
                    break
        out.append({"name": name, "launch_bounds": int(bound) if bound else None, "args": args,
                    "body": src[i:j + 1]})
    return out


def check_against_meta(src: str, kernels_meta: list[dict]) -> list[str]:
    """Problems (empty list = consistent) between meta['kernels'] and the C definitions in ``src``."""
    probs = []
    defs = {k["name"]: k for k in parse_kernels(src)}
    if len(defs) != len(kernels_meta):
        probs.append(f"{len(defs)} __global__ definitions in source, {len(kernels_meta)} kernels in meta")
    for km in kernels_meta:
        d = defs.get(km["name"])
        if d is None:
            probs.append(f"kernel {km['name']} not defined in source (have {sorted(defs)})")
            continue
        if len(d["args"]) != len(km["params"]):
            probs.append(f"{km['name']}: {len(d['args'])} C args vs {len(km['params'])} meta params")
        for i, (ca, pm) in enumerate(zip(d["args"], km["params"])):
            if ca["name"] != pm["name"]:
                probs.append(f"{km['name']} arg {i}: C name {ca['name']} vs meta {pm['name']}")
            want = pm["pointee"] if pm["kind"] == "pointer" else pm["dtype"]
            if ca["pointer"] != (pm["kind"] == "pointer"):
                probs.append(f"{km['name']} arg {i} ({ca['name']}): pointer mismatch")
            if ca["dtype"] != want:
                probs.append(f"{km['name']} arg {i} ({ca['name']}): C {ca['ctype']} ({ca['dtype']}) vs meta {want}")
            if pm["kind"] == "pointer" and pm.get("array") is not None and pm.get("array_dtype") not in (None, want):
                probs.append(f"{km['name']} arg {i}: bound array dtype {pm['array_dtype']} vs {want}")
        nthreads = km["block"][0] * km["block"][1] * km["block"][2]
        if d["launch_bounds"] is not None and nthreads > d["launch_bounds"]:
            probs.append(f"{km['name']}: block {km['block']} = {nthreads} threads > __launch_bounds__({d['launch_bounds']})")
        if nthreads > 1024:
            probs.append(f"{km['name']}: {nthreads} threads per block > 1024")
    return probs


def unknown_calls(src: str) -> list[str]:
    """Identifiers called as functions in kernel bodies that the source neither defines nor CUDA provides."""
    defined = set(re.findall(r"#define\s+(\w+)", src)) | {k["name"] for k in parse_kernels(src)}
    defined |= set(re.findall(r"__device__\s+[\w\s\*]+?\b(\w+)\s*\(", src))
    bad = set()
    for k in parse_kernels(src):
        for name in re.findall(r"\b([A-Za-z_]\w*)\s*\(", k["body"]):
            if name not in BUILTINS and name not in defined:
                bad.add(name)
    return sorted(bad)


MINIMAL_PRELUDE = """// minimal prelude (replaces TVM's; no #include needed)
#define uint unsigned int
#define uchar unsigned char
#define ushort unsigned short
"""


def strip_prelude(src: str) -> str:
    """Replace everything before the first ``extern "C"`` with :data:`MINIMAL_PRELUDE`."""
    i = src.find('extern "C"')
    return MINIMAL_PRELUDE + src[i:] if i >= 0 else src
