"""Run dccomp's exported TVM CUDA CSR + codebook kernels with CuPy (no TVM) and benchmark them.

On the GPU machine, from the repo root:

    python3 bench/gpu/run_cuda.py --out $OUT

For every case in ``bench/gpu/cases/index.json`` (written by ``export_cuda.py``): rebuild the data from
the seed (``csr_data.py``, pure numpy; SHA-256s checked against meta.json), compile ``kernel.cu`` with
``cupy.RawModule`` (NVRTC, several strategies, first that compiles wins), launch every kernel with the
recorded grid/block and argument order, compare with a float64 numpy reference (PASS iff
``max|y - ref| <= 1e-5 * max(1, max|ref|)`` and every output written; ``y`` starts as NaN), then time it
with CUDA events (median of ``--iters`` single-launch timings after warm-up, plus the mean of a
back-to-back loop) against torch dense ``F.linear`` (cuBLAS, TF32 off) and torch sparse CSR
(``torch.sparse_csr_tensor @ x^T``, cuSPARSE; bias add not included). Writes ``$OUT/gpu_results.json``.

``--dry-run`` does everything except CuPy/GPU work (meta, data, hashes, signature check, reference, the
torch baselines on CPU) so the script can be checked on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import csr_data as D  # noqa: E402
import cuda_src as S  # noqa: E402

TOL = 1e-5
warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
T_START = time.perf_counter()


def log(*a):
    print(*a, flush=True)


def elapsed() -> float:
    return time.perf_counter() - T_START


# ----------------------------------------------------------------------------------------------- compile
def compile_strategies(src: str):
    """(label, source, RawModule kwargs) in order of preference."""
    import cupy as cp  # noqa: F401

    cccl = []
    try:
        from cupy._core import core

        cccl = list(core._get_cccl_include_options())
    except Exception as e:  # noqa: BLE001
        log(f"  (no CuPy CCCL include options: {e!r})")
    base = ("-std=c++17",)
    out = []
    if cccl:
        # TVM's prelude does `#include <cuda/std/cstdint>` under __CUDACC_RTC__: NVRTC needs the CCCL headers
        out.append(("nvrtc+cccl (verbatim TVM source)", src, dict(options=base + tuple(cccl), backend="nvrtc")))
    out.append(("nvrtc (verbatim TVM source)", src, dict(options=base, backend="nvrtc")))
    out.append(("nvrtc, TVM prelude replaced", S.strip_prelude(src), dict(options=base, backend="nvrtc")))
    out.append(("nvcc (verbatim TVM source)", src, dict(options=base, backend="nvcc")))
    return out


def compile_kernels(src: str, names: list[str]):
    import cupy as cp

    errors = []
    for label, code, kw in compile_strategies(src):
        try:
            mod = cp.RawModule(code=code, name_expressions=None, **kw)
            fns = {n: mod.get_function(n) for n in names}  # forces the compile
            return label, mod, fns, errors
        except Exception as e:  # noqa: BLE001
            errors.append(f"{label}: {type(e).__name__}: {str(e)[:1500]}")
            log(f"  compile strategy failed: {label}: {type(e).__name__}: {str(e)[:600]}")
    return None, None, None, errors


# ----------------------------------------------------------------------------------------------- timing
def time_cupy(fn, iters: int, warmup: int) -> dict:
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    evs = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(iters)]
    for s, e in evs:
        s.record()
        fn()
        e.record()
    evs[-1][1].synchronize()
    ts = np.array([cp.cuda.get_elapsed_time(s, e) * 1000.0 for s, e in evs])
    s, e = cp.cuda.Event(), cp.cuda.Event()
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    e.synchronize()
    loop = cp.cuda.get_elapsed_time(s, e) * 1000.0 / iters
    return {"median_us": float(np.median(ts)), "p10_us": float(np.percentile(ts, 10)),
            "p90_us": float(np.percentile(ts, 90)), "loop_mean_us": float(loop)}


def time_torch(fn, iters: int, warmup: int) -> dict:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for s, e in evs:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    ts = np.array([s.elapsed_time(e) * 1000.0 for s, e in evs])
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    torch.cuda.synchronize()
    loop = s.elapsed_time(e) * 1000.0 / iters
    return {"median_us": float(np.median(ts)), "p10_us": float(np.percentile(ts, 10)),
            "p90_us": float(np.percentile(ts, 90)), "loop_mean_us": float(loop)}


# ----------------------------------------------------------------------------------------------- checks
def err_metrics(y: np.ndarray, ref: np.ndarray) -> dict:
    y64 = y.astype(np.float64)
    nan = int(np.isnan(y64).sum())
    diff = np.abs(np.nan_to_num(y64, nan=np.inf) - ref)
    scale = max(1.0, float(np.abs(ref).max()))
    big = np.abs(ref) > 1e-3 * scale
    rel_elem = float((diff[big] / np.abs(ref[big])).max()) if big.any() else 0.0
    max_abs = float(diff.max())
    return {"max_abs_err": max_abs, "rel_err": max_abs / scale, "max_elem_rel_err": rel_elem,
            "unwritten_or_nan": nan, "ok": bool(nan == 0 and max_abs <= TOL * scale)}


def torch_baselines_setup(torch, w, dense, x, dev):
    """(dense fn, csr fn) computing the same layer with torch on ``dev``."""
    import torch.nn.functional as F

    W = torch.from_numpy(dense).to(dev)
    b = torch.from_numpy(w["bias"]).to(dev)
    xt = torch.from_numpy(x).to(dev)
    nnz = int(w["rowptr"][-1])
    crow = torch.from_numpy(w["rowptr"].astype(np.int64)).to(dev)
    colt = torch.from_numpy(w["col"][:nnz].astype(np.int64)).to(dev)
    vals = torch.from_numpy(w["codebook"][w["code"][:nnz].astype(np.int64)]).to(dev)
    Wc = torch.sparse_csr_tensor(crow, colt, vals, size=dense.shape, device=dev)
    xT = xt.t().contiguous()

    def f_dense():
        return F.linear(xt, W, b)

    def f_csr():
        return Wc @ xT  # (n_out, B); bias not added (conservative for the baseline)

    return f_dense, f_csr, b


# ----------------------------------------------------------------------------------------------- main
def run_case(case_dir: str, args, weights_cache: dict, env: dict) -> dict:
    meta = json.load(open(os.path.join(case_dir, "meta.json")))
    src = open(os.path.join(case_dir, "kernel.cu")).read()
    case = meta["case"]
    spec = meta["spec"]
    res = {"case": case, "batch": meta["batch"], "shape": [meta["n_out"], meta["n_in"]], "nnz": meta["nnz"],
           "density": meta["density_actual"], "k": meta["k"], "relu": meta["relu"],
           "kernels": [{"name": k["name"], "grid": k["grid"], "block": k["block"]} for k in meta["kernels"]]}
    log(f"\n=== {case}: {meta['n_out']}x{meta['n_in']} nnz={meta['nnz']} (d={meta['density_actual']:.4f}) "
        f"k={meta['k']} batch={meta['batch']} relu={meta['relu']} "
        + "; ".join(f"{k['name']} grid={k['grid']} block={k['block']}" for k in meta["kernels"]))

    probs = S.check_against_meta(src, meta["kernels"])
    res["signature_problems"] = probs
    if probs:
        log(f"  signature/meta mismatch: {probs}")
    unk = S.unknown_calls(src)
    res["unknown_calls"] = unk
    if unk:
        log(f"  WARNING calls not defined in source nor known CUDA built-ins: {unk}")

    key = spec["name"]
    if key not in weights_cache:
        weights_cache.clear()  # keep one weight set in memory
        t0 = time.perf_counter()
        w = D.make_weights(spec)
        w.pop("_indices")
        w.pop("_mask")
        w["_dense"] = D.dense_weight(w, (spec["n_out"], spec["n_in"]))
        weights_cache[key] = w
        log(f"  data built in {time.perf_counter() - t0:.2f}s")
    w = weights_cache[key]
    x = D.make_x(spec, meta["batch"])
    arrays = {a: w[a] for a in ("rowptr", "col", "code", "codebook", "bias")}
    arrays["x"] = x
    bad_hash = [a for a, h in meta["sha256"].items() if D.sha256(arrays[a]) != h]
    res["data_identical_to_export"] = not bad_hash
    if bad_hash:
        log(f"  NOTE: rebuilt arrays differ from export for {bad_hash} (numpy RNG stream changed?); the check "
            f"still holds (kernel depends only on shapes) unless shapes differ")
        for a in arrays:
            if list(arrays[a].shape) != meta["shapes"][a] and a not in ("col", "code"):
                raise RuntimeError(f"{a} shape {arrays[a].shape} != exported {meta['shapes'][a]}")
    ref = D.reference(w, x, (meta["n_out"], meta["n_in"]), meta["relu"])
    # the dense decode used by the torch baselines must agree with the CSR reference
    dref = x.astype(np.float64) @ w["_dense"].T.astype(np.float64) + w["bias"]
    if meta["relu"]:
        dref = np.maximum(dref, 0)
    assert np.abs(dref - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max()), "dense decode != CSR reference"

    if args.dry_run:
        import torch

        f_dense, f_csr, b = torch_baselines_setup(torch, w, w["_dense"], x, "cpu")
        yd = f_dense().numpy()
        yc = (f_csr().t() + b).numpy()
        if meta["relu"]:
            yd, yc = np.maximum(yd, 0), np.maximum(yc, 0)
        res["torch_cpu_dense_err"] = err_metrics(yd, ref)["rel_err"]
        res["torch_cpu_csr_err"] = err_metrics(yc, ref)["rel_err"]
        for km in meta["kernels"]:
            argv = [arrays[p["array"]] if p["array"] != "y" else np.full(meta["shapes"]["y"], np.nan, np.float32)
                    for p in km["params"]]
            for p, a in zip(km["params"], argv):
                assert str(a.dtype) == p["array_dtype"] == (p["pointee"] if p["kind"] == "pointer" else p["dtype"]), (p, a.dtype)
        res["status"] = "DRY"
        log(f"  DRY ok: signature {'ok' if not probs else probs}; |ref|max={np.abs(ref).max():.3f}; torch cpu rel err "
            f"dense={res['torch_cpu_dense_err']:.2e} csr={res['torch_cpu_csr_err']:.2e}")
        return res

    import cupy as cp

    # ---- compile
    t0 = time.perf_counter()
    label, mod, fns, errors = compile_kernels(src, [k["name"] for k in meta["kernels"]])
    res["compile_errors"] = errors
    if mod is None:
        res["status"] = "FAIL"
        res["fail_reason"] = "compile"
        head = "\n".join(src.splitlines()[:40])
        log(f"  FAIL {case}: no compile strategy worked. First lines of kernel.cu:\n{head}")
        return res
    res["compile_strategy"] = label
    res["compile_s"] = round(time.perf_counter() - t0, 3)
    log(f"  compiled with {label} in {res['compile_s']}s")
    try:
        attrs = fns[meta["kernels"][0]["name"]].attributes
        res["func_attributes"] = {k: int(v) for k, v in attrs.items()}
        log(f"  attributes: regs={attrs.get('num_regs')} shared={attrs.get('shared_size_bytes')} "
            f"local={attrs.get('local_size_bytes')} max_threads={attrs.get('max_threads_per_block')}")
    except Exception as e:  # noqa: BLE001
        log(f"  (attributes unavailable: {e!r})")

    # ---- launch + check
    dev_arr = {a: cp.asarray(v) for a, v in arrays.items()}
    y = cp.full(meta["shapes"]["y"], cp.nan, dtype=cp.float32)
    dev_arr["y"] = y
    launches = []
    for km in meta["kernels"]:
        argv = []
        for p in km["params"]:
            if p["kind"] == "pointer":
                a = dev_arr[p["array"]]
                assert str(a.dtype) == p["pointee"], (p, a.dtype)
                argv.append(a)
            else:
                argv.append(np.dtype(p["dtype"]).type(p.get("value", 0)))
        launches.append((fns[km["name"]], tuple(km["grid"]), tuple(km["block"]), tuple(argv), km.get("dyn_shared_bytes", 0)))

    def launch_all():
        for fn, g, bl, av, sh in launches:
            fn(g, bl, av, shared_mem=sh)

    launch_all()
    cp.cuda.Device().synchronize()
    ycpu = cp.asnumpy(y)
    em = err_metrics(ycpu, ref)
    res.update({f"check_{k}": v for k, v in em.items()})
    # relaunch on a poisoned buffer: results must be identical (deterministic, no dependence on stale y)
    y.fill(cp.float32(-12345.0))
    launch_all()
    cp.cuda.Device().synchronize()
    res["deterministic"] = bool(np.array_equal(cp.asnumpy(y), ycpu, equal_nan=True))
    ok = em["ok"] and res["deterministic"]
    if not ok:
        bad = np.argwhere(~np.isclose(ycpu.astype(np.float64), ref, rtol=0, atol=TOL * max(1.0, np.abs(ref).max())))
        res["first_bad"] = [[int(i), int(j), float(ycpu[i, j]), float(ref[i, j])] for i, j in bad[:10]]
        log(f"  first mismatches (b, row, got, want): {res['first_bad']}")
        # diagnostic only: does a full warp mask instead of __activemask() fix it?
        try:
            src2 = src.replace("__activemask()", "0xffffffffu")
            _, mod2, fns2, _ = compile_kernels(src2, [k["name"] for k in meta["kernels"]])
            if mod2 is not None:
                y.fill(cp.nan)
                for (fn, g, bl, av, sh), km in zip(launches, meta["kernels"]):
                    fns2[km["name"]](g, bl, av, shared_mem=sh)
                cp.cuda.Device().synchronize()
                res["diag_fullmask"] = err_metrics(cp.asnumpy(y), ref)
                log(f"  diagnostic: with 0xffffffff instead of __activemask(): {res['diag_fullmask']}")
        except Exception as e:  # noqa: BLE001
            log(f"  diagnostic failed: {e!r}")
    res["status"] = "PASS" if ok else "FAIL"
    log(f"  {res['status']} {case}: rel_err={em['rel_err']:.3e} (tol {TOL:g}) max_abs={em['max_abs_err']:.3e} "
        f"max_elem_rel={em['max_elem_rel_err']:.3e} unwritten/nan={em['unwritten_or_nan']} "
        f"deterministic={res['deterministic']}")

    # ---- timing
    if elapsed() > args.budget_s:
        log(f"  timing skipped: {elapsed():.0f}s elapsed > budget {args.budget_s}s")
        return res
    try:
        res["tvm_kernel"] = time_cupy(launch_all, args.iters, args.warmup)
    except Exception as e:  # noqa: BLE001
        res["tvm_kernel_error"] = repr(e)
        log(f"  timing tvm kernel failed: {e!r}")
    try:
        import torch

        dev = "cuda"
        f_dense, f_csr, b = torch_baselines_setup(torch, w, w["_dense"], x, dev)
        yd = f_dense()
        yc = f_csr().t() + b
        if meta["relu"]:
            yd, yc = torch.relu(yd), torch.relu(yc)
        res["torch_dense_err"] = err_metrics(yd.cpu().numpy(), ref)["rel_err"]
        res["torch_csr_err"] = err_metrics(yc.cpu().numpy(), ref)["rel_err"]
        res["torch_dense"] = time_torch(f_dense, args.iters, args.warmup)
        res["torch_csr"] = time_torch(f_csr, args.iters, args.warmup)
        del f_dense, f_csr
    except Exception as e:  # noqa: BLE001
        res["torch_error"] = repr(e)
        log(f"  torch baselines failed: {e!r}")
    t = res.get("tvm_kernel", {}).get("median_us")
    for base in ("torch_dense", "torch_csr"):
        if t and base in res:
            res[f"speedup_vs_{base}"] = res[base]["median_us"] / t
    log("  timing (us, median / loop-mean): tvm " + fmt_t(res.get("tvm_kernel")) + "  dense " +
        fmt_t(res.get("torch_dense")) + "  csr " + fmt_t(res.get("torch_csr")))
    return res


def fmt_t(t):
    return f"{t['median_us']:.2f}/{t['loop_mean_us']:.2f}" if t else "n/a"


def env_info(dry: bool) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if not dry and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            info["torch_device"] = torch.cuda.get_device_name(0)
            info["torch_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = repr(e)
    if not dry:
        try:
            import cupy as cp

            info["cupy"] = cp.__version__
            info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
            try:
                info["nvrtc"] = list(cp.cuda.nvrtc.getVersion())
            except Exception:  # noqa: BLE001
                pass
            p = cp.cuda.runtime.getDeviceProperties(0)
            info["device"] = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            info["cc"] = f"{p['major']}{p['minor']}"
        except Exception as e:  # noqa: BLE001
            info["cupy_error"] = repr(e)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_results.json")
    ap.add_argument("--cases-dir", default=os.path.join(HERE, "cases"))
    ap.add_argument("--only", nargs="*", help="case names (default: all in index.json)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=75.0, help="skip timings after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="no CuPy/GPU: data, reference, signature checks")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    index = json.load(open(os.path.join(args.cases_dir, "index.json")))
    cases = args.only or index["cases"]
    env = env_info(args.dry_run)
    log(f"env: {json.dumps(env)}")
    results, cache = [], {}
    for case in cases:
        try:
            results.append(run_case(os.path.join(args.cases_dir, case), args, cache, env))
        except Exception as e:  # noqa: BLE001
            tb = traceback.format_exc()
            log(f"  FAIL {case}: {type(e).__name__}: {e}\n{tb}")
            try:
                head = "\n".join(open(os.path.join(args.cases_dir, case, "kernel.cu")).read().splitlines()[:20])
                log(f"  first lines of kernel.cu:\n{head}")
            except Exception:  # noqa: BLE001
                pass
            results.append({"case": case, "status": "FAIL", "error": f"{type(e).__name__}: {e}", "traceback": tb})
        _write(args.out, env, results)  # after every case, so a timeout still leaves results
    # ---- table
    log("\n{:<22s} {:>6s} {:>10s} {:>10s} {:>10s} {:>10s} {:>9s} {:>9s}  {}".format(
        "case", "status", "rel_err", "tvm_us", "dense_us", "csr_us", "dense/tvm", "csr/tvm", "compile"))
    for r in results:
        t = lambda k: r.get(k, {}).get("median_us") if isinstance(r.get(k), dict) else None  # noqa: E731
        f = lambda v, s="{:.2f}": (s.format(v) if v is not None else "-")  # noqa: E731
        log("{:<22s} {:>6s} {:>10s} {:>10s} {:>10s} {:>10s} {:>9s} {:>9s}  {}".format(
            r["case"], r.get("status", "?"), f(r.get("check_rel_err"), "{:.2e}"), f(t("tvm_kernel")),
            f(t("torch_dense")), f(t("torch_csr")), f(r.get("speedup_vs_torch_dense")),
            f(r.get("speedup_vs_torch_csr")), r.get("compile_strategy", "")))
    n_fail = sum(r.get("status") == "FAIL" for r in results)
    log(f"\n{'DRY RUN' if args.dry_run else ('ALL PASS' if n_fail == 0 else f'{n_fail} FAIL')}: "
        f"{len(results)} cases in {elapsed():.1f}s; results in {os.path.join(args.out, 'gpu_results.json')}")
    return 1 if n_fail else 0


def _write(out, env, results):
    with open(os.path.join(out, "gpu_results.json"), "w") as f:
        json.dump({"env": env, "tol": TOL, "elapsed_s": round(elapsed(), 2), "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
