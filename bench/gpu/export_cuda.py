"""Export dccomp's TVM CUDA CSR + codebook kernel (``sparse_linear_cuda``) for a TVM-free GPU check.

Runs HERE (needs apache-tvm; no GPU, no nvcc needed). For every case in ``csr_data.CASES`` and batch in
``csr_data.BATCHES`` it builds the kernel through the backend's own path
(``kernels.build_sparse_linear(csr, bias, batch=, relu=, target={"kind": "cuda", "arch": "sm_90"})``),
takes the CUDA source TVM generated (``ex.mod.imports[0].inspect_source("cuda")``) and the launch
configuration of every device kernel (``kernels.device_kernel_info``: same TIR pipeline, thread extents
and the kernel's C argument order), checks meta against the C signature, and writes

    bench/gpu/cases/<case>_b<batch>/kernel.cu   the CUDA source exactly as TVM emitted it
    bench/gpu/cases/<case>_b<batch>/meta.json   kernels (name, args in C order -> arrays, grid, block),
                                                 shapes, nnz, seed, density, k, bias/relu, array SHA-256s
    bench/gpu/cases/index.json                  the case list

The data is not stored: ``run_cuda.py`` rebuilds it from the seed with ``csr_data.py`` (pure numpy).

    python bench/gpu/export_cuda.py [--check-compile]

``--check-compile`` also compiles every source offline with NVRTC (libnvrtc from an installed
``nvidia-cuda-nvrtc`` wheel, CCCL headers from CuPy/the toolkit) and with ``nvcc -arch=sm_90`` when found.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import csr_data as D  # noqa: E402
import cuda_src as S  # noqa: E402

TARGET = {"kind": "cuda", "arch": "sm_90"}
# PrimFunc buffer name -> array name in csr_data (x and y are the input/output)
ARRAYS = {"x": "x", "rowptr": "rowptr", "col": "col", "code": "code", "codebook": "codebook", "bias": "bias",
          "y": "y"}


def export_case(spec: dict, batch: int, w: dict, outdir: str, check_compile: bool) -> dict:
    import tvm

    from dccomp.backends.tvm import kernels as K

    case = f"{spec['name']}_b{batch}"
    name = f"dcc_{case}"
    # the backend's own CSR builder must agree with csr_data's
    csr = K.CSRCodebook.from_codebook(w["_indices"], w["codebook"], w["_mask"])
    for a in ("rowptr", "col", "code", "codebook"):
        ref = getattr(csr, a)
        assert ref.dtype == w[a].dtype and np.array_equal(ref, w[a]), f"{case}: {a} differs from CSRCodebook"
    t0 = time.perf_counter()
    ex, prim = K.build_sparse_linear(csr, w["bias"], batch=batch, relu=spec["relu"], target=TARGET, name=name)
    dev_mods = list(ex.mod.imports)
    assert dev_mods, f"{case}: no device module (kernel compiled as host code?)"
    src = dev_mods[0].inspect_source("cuda")
    assert len(dev_mods) == 1, f"{case}: {len(dev_mods)} device modules"
    info = K.device_kernel_info(prim, TARGET)
    build_s = time.perf_counter() - t0

    x = D.make_x(spec, batch)
    shapes = {"x": [batch, spec["n_in"]], "y": [batch, spec["n_out"]], "rowptr": list(w["rowptr"].shape),
              "col": list(w["col"].shape), "code": list(w["code"].shape), "codebook": list(w["codebook"].shape),
              "bias": list(w["bias"].shape)}
    dtypes = {"x": "float32", "y": "float32", **{a: str(w[a].dtype) for a in ("rowptr", "col", "code", "codebook", "bias")}}
    for k in info:
        for p in k["params"]:
            buf = p["name"][:-4] if p["name"].endswith("_ptr") else p["name"]
            p["array"] = ARRAYS.get(buf)
            p["array_dtype"] = dtypes.get(p["array"]) if p["array"] else None
            p["array_shape"] = shapes.get(p["array"]) if p["array"] else None
            if p["kind"] == "pointer" and p["array"] is None:
                raise ValueError(f"{case}: kernel arg {p['name']} maps to no known array")
    meta = {
        "case": case, "spec": spec, "batch": batch, "n_out": spec["n_out"], "n_in": spec["n_in"],
        "nnz": int(w["rowptr"][-1]), "density_actual": int(w["rowptr"][-1]) / (spec["n_out"] * spec["n_in"]),
        "k": spec["k"], "relu": spec["relu"], "bias": True, "seed": spec["seed"], "target": TARGET,
        "tvm_version": tvm.__version__, "primfunc_order": list(ARRAYS),
        "shapes": shapes, "dtypes": dtypes,
        "sha256": {**{a: D.sha256(w[a]) for a in ("rowptr", "col", "code", "codebook", "bias")}, "x": D.sha256(x)},
        "kernels": info, "build_s": round(build_s, 3),
        "generator": "csr_data.make_weights(spec) / csr_data.make_x(spec, batch) (numpy default_rng)",
    }
    probs = S.check_against_meta(src, info)
    unk = S.unknown_calls(src)
    meta["signature_check"] = probs or "ok"
    meta["unknown_calls"] = unk
    sigs = S.parse_kernels(src)
    meta["c_signatures"] = [f"{s['name']}(" + ", ".join(f"{a['ctype']}{'*' if a['pointer'] else ''} {a['name']}"
                                                       for a in s["args"]) + ")" for s in sigs]
    if check_compile:
        import nvrtc_check as C

        ok, log = C.nvrtc_compile(src, ["-std=c++17", "--gpu-architecture=sm_90"] + C.cccl_includes())
        meta["offline_nvrtc_cccl"] = ok
        ok2, _ = C.nvrtc_compile(src, ["-std=c++17", "--gpu-architecture=sm_90"])
        meta["offline_nvrtc_plain"] = ok2
        ok3, log3 = C.nvrtc_compile(S.strip_prelude(src), ["-std=c++17", "--gpu-architecture=sm_90"])
        meta["offline_nvrtc_stripped"] = ok3
        ok4, log4 = C.nvcc_compile(src)
        meta["offline_nvcc"] = ok4
        meta["ptxas"] = [ln.strip() for ln in log4.splitlines() if "registers" in ln or "spill" in ln] if ok4 else log4[-500:]
        if ok is False or ok3 is False or ok4 is False:
            print(f"  compile problem: nvrtc+cccl={ok} stripped={ok3} nvcc={ok4}\n{log[-800:]}\n{log3[-800:]}\n{log4[-800:]}")
    d = os.path.join(outdir, case)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "kernel.cu"), "w") as f:
        f.write(src)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    ks = "; ".join(f"{k['name']} grid={k['grid']} block={k['block']}" for k in info)
    print(f"{case:24s} nnz={meta['nnz']:8d} build={build_s:.2f}s  {ks}  sig={'ok' if not probs else probs}"
          f"  unknown_calls={unk or 'none'}"
          + (f"  nvrtc(cccl)={meta['offline_nvrtc_cccl']} nvrtc(plain)={meta['offline_nvrtc_plain']}"
             f" nvrtc(stripped)={meta['offline_nvrtc_stripped']} nvcc={meta['offline_nvcc']} {meta['ptxas']}"
             if check_compile else ""), flush=True)
    if probs:
        raise AssertionError(f"{case}: meta/signature mismatch: {probs}")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "cases"))
    ap.add_argument("--check-compile", action="store_true", help="offline NVRTC/nvcc compile of each source")
    args = ap.parse_args(argv)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    index = []
    for spec in D.CASES:
        w = D.make_weights(spec)
        for batch in D.BATCHES:
            m = export_case(spec, batch, w, args.out, args.check_compile)
            index.append(m["case"])
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"cases": index, "target": TARGET}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(args.out) for fn in fns)
    print(f"wrote {len(index)} cases to {args.out} ({total / 1024:.1f} KiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
