"""Deep Compression of LeNet-300-100 and LeNet-5 on Fashion-MNIST: accuracy and file-size ratio, side by side.

    python bench/compression.py [--models lenet-300-100,lenet-5] [--json bench/compression.json]

For each model: dense accuracy, compressed accuracy (reloaded from the written .dcc file), compression ratio
(file bytes vs dense float32 of all parameters, biases included), the file size after each pass, and the
per-layer table. Paper targets: 40x (LeNet-300-100) and 39x (LeNet-5) at <= 0.5 point top-1 loss.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from dccomp.demo import run_demo

PAPER = {"lenet-300-100": 40.0, "lenet-5": 39.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--pipeline", default="deep-compression")
    ap.add_argument("--json", default="bench/compression.json")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            r = run_demo(name, "fashion-mnist", pipeline=a.pipeline, out=Path(tmp) / f"{name}.dcc", seed=a.seed,
                         progress=False)
            print(f"== {name}: {r['pipeline']}")
            print(r["report"])
            print("file bytes after each pass: " + ", ".join(f"{k} {n} ({x:.1f}x)" for k, n, x in r["stages"]))
            results.append({
                "model": name, "dense_accuracy": r["dense_accuracy"], "compressed_accuracy": r["reloaded_accuracy"],
                "accuracy_delta_points": 100 * (r["reloaded_accuracy"] - r["dense_accuracy"]),
                "file_bytes": r["file_bytes"], "dense_fp32_bytes": r["dense_fp32_bytes"], "ratio": r["ratio"],
                "paper_ratio": PAPER.get(name), "stages": r["stages"], "report": r["report"].to_dict(),
                "pipeline": r["pipeline"], "seconds": r["seconds"]})
    print()
    print(f"{'model':<15}{'dense acc':>10}{'comp acc':>10}{'delta pt':>10}{'bytes':>9}{'ratio':>8}{'paper':>7}")
    for r in results:
        print(f"{r['model']:<15}{100 * r['dense_accuracy']:>9.2f}%{100 * r['compressed_accuracy']:>9.2f}%"
              f"{r['accuracy_delta_points']:>+10.2f}{r['file_bytes']:>9}{r['ratio']:>7.1f}x{r['paper_ratio']:>6.0f}x")
    Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
