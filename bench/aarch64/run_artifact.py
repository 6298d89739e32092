"""Run dccomp arm_cpu artifacts (exported ``.so`` + ``.json``) and compare with the expected outputs.

Runs on the aarch64 machine itself or under qemu-user (see ``bench/aarch64_qemu.py``); needs only numpy and
TVM's runtime.  Usage: ``python run_artifact.py DIR`` where DIR holds ``<name>.so``, ``<name>.json`` and
``<name>.npz`` (``x0..xn`` inputs, ``y`` expected output).  Prints one JSON line per model.
"""
import json
import pathlib
import sys
import time

import numpy as np
import tvm
from tvm import relax

for meta_path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    meta = json.loads(meta_path.read_text())
    data = np.load(meta_path.with_suffix(".npz"))
    lib = tvm.runtime.load_module(str(meta_path.with_name(meta["library"])))
    fn = relax.VirtualMachine(lib, tvm.cpu())[meta["entry"]]
    xs = [tvm.runtime.tensor(data[f"x{i}"]) for i in range(len(meta["inputs"]))]
    t = time.perf_counter()
    out = fn(*xs)
    dt = time.perf_counter() - t
    y = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
    ref = data["y"]
    rel = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
    print(json.dumps({"model": meta_path.stem, "rel_err": rel, "shape": list(y.shape), "emulated_s": dt}),
          flush=True)
