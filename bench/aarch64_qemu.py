"""Run compressed models' arm_cpu (aarch64) TVM artifacts under qemu-user and check their outputs.

The TVM backend cross-compiles ``target="arm_cpu"`` artifacts (``aarch64-linux-gnu-gcc``); this bench checks
that they also *compute* the right thing on aarch64: each model is compressed (no retraining), exported for
arm_cpu, and run by ``bench/aarch64/run_artifact.py`` inside an aarch64 Python with TVM's aarch64 runtime under
``qemu-aarch64-static``; its output is compared with dccomp's torch backend on the x86 host.

    sh bench/aarch64/sysroot.sh              # once: aarch64 Python + TVM runtime wheels (Debian + PyPI)
    python bench/aarch64_qemu.py             # writes bench/results/aarch64_qemu.json

Emulated times are reported only to show the run happened; they say nothing about aarch64 speed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn

import dccomp
from dccomp.archs import TransformerClassifier, resnet18
from dccomp.backends.tvm import TVMBackend
from dccomp.models import LeNet5, LeNet300100

HERE = pathlib.Path(__file__).resolve().parent
CNN = "fold-bn,prune{sparsity=0.8,exclude=conv2d.depthwise},cluster{bits=4},huffman"


class Recurrent(nn.Module):
    """Embedding -> LSTM -> GRU -> last step -> Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.gru = nn.GRU(24, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, t):
        return self.fc(self.gru(self.lstm(self.emb(t))[0])[0][:, -1])


def _with_bn_stats(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def _mobilenet_v2() -> nn.Module:
    from dccomp import zoo
    return _with_bn_stats(zoo.MobileNetV2(num_classes=10, width_mult=0.5))


#: name -> (model builder, example input builder, pipeline[, TVM backend options])
MODELS = {
    "lenet-300-100": (LeNet300100, lambda: torch.randn(1, 1, 28, 28), "prune{sparsity=0.92},cluster{bits=5},huffman"),
    "lenet-5": (LeNet5, lambda: torch.randn(1, 1, 28, 28), "prune{sparsity=0.9},cluster{bits=5},huffman"),
    "resnet18": (lambda: _with_bn_stats(resnet18(num_classes=10, width=16)), lambda: torch.randn(1, 3, 64, 64), CNN),
    "mobilenet_v2": (_mobilenet_v2, lambda: torch.randn(1, 3, 64, 64), CNN),
    "transformer": (lambda: TransformerClassifier(100, 32, 4, 2, 64, 16, 3).eval(),
                    lambda: torch.randint(0, 100, (2, 12)), "prune{sparsity=0.7},cluster{bits=5},huffman"),
    "recurrent": (lambda: Recurrent().eval(), lambda: torch.randint(0, 50, (2, 7)),
                  "prune{sparsity=0.6},cluster{bits=5},huffman"),
    # clustered only, smallest layouts: the dense cluster-index (code) kernels, per-tensor and per-channel
    "mobilenet_v2-code4": (_mobilenet_v2, lambda: torch.randn(1, 3, 64, 64), "fold-bn,cluster{bits=4},huffman",
                           {"weights": "small"}),
    "mobilenet_v2-code5pc": (_mobilenet_v2, lambda: torch.randn(1, 3, 64, 64),
                             "fold-bn,cluster{bits=5,granularity=channel},huffman", {"weights": "small"}),
}


def export_all(out: pathlib.Path, names: list[str]) -> dict:
    """Compress and export each model for arm_cpu into ``out``; returns per-model metadata."""
    info = {}
    for name in names:
        make, example, pipeline, *opts = MODELS[name]
        torch.manual_seed(0)
        model = make().eval()
        x = example()
        comp = dccomp.compile(model, pipeline, example_inputs=(x,))
        with torch.no_grad():
            y = comp(x)
        so, meta = TVMBackend().export(comp.ir, out, target="arm_cpu", example_inputs=(x,), name=name,
                                       **(opts[0] if opts else {}))
        np.savez(out / f"{name}.npz", x0=x.numpy(), y=y.numpy())
        layers = json.loads(meta.read_text())["layers"]
        info[name] = {"pipeline": pipeline, "options": opts[0] if opts else {}, "input_shape": list(x.shape),
                      "so_bytes": so.stat().st_size,
                      "kernels": sorted({layer["kernel"] for layer in layers})}
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sysroot", default=os.environ.get("DCCOMP_AARCH64_SYSROOT",
                    str(pathlib.Path(os.environ.get("DCCOMP_CACHE", pathlib.Path.home() / ".cache/dccomp"))
                        / "aarch64-sysroot")))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--out", default=str(HERE / "results" / "aarch64_qemu.json"))
    args = ap.parse_args()
    root = pathlib.Path(args.sysroot) / "root"
    if not (root / "usr/bin/python3.11").exists():
        sys.exit(f"no aarch64 sysroot at {root.parent}: run `sh bench/aarch64/sysroot.sh` first")
    with tempfile.TemporaryDirectory() as d:
        info = export_all(pathlib.Path(d), args.models)
        env = dict(os.environ, QEMU_LD_PREFIX=str(root), PYTHONHOME=str(root / "usr"),
                   PYTHONPATH=str(root / "site"), TVM_NUM_THREADS="1")
        proc = subprocess.run(["qemu-aarch64-static", str(root / "usr/bin/python3.11"),
                               str(HERE / "aarch64" / "run_artifact.py"), d],
                              env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"aarch64 run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        info[r["model"]].update(rel_err=r["rel_err"], emulated_s=r["emulated_s"], ok=r["rel_err"] <= 1e-4)
        print(f"{r['model']:<14} rel err {r['rel_err']:.2e}  {'ok' if r['rel_err'] <= 1e-4 else 'MISMATCH'}  "
              f"kernels: {', '.join(info[r['model']]['kernels'])}")
    missing = [n for n in args.models if "rel_err" not in info[n]]
    result = {"machine": "x86_64 host, qemu-aarch64-static user emulation", "tolerance": 1e-4, "models": info,
              "missing": missing}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}" + (f"; no output for {missing}" if missing else ""))
    if missing or not all(v.get("ok") for v in info.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
