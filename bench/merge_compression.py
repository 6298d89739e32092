"""Merge bench/results/compression_auto_*.json into bench/results/compression_auto.json (rows + mean/spread per
model and pipeline); auto rows of the first runs (one-shot sensitivity) are relabelled v1. Run from the repo root."""
import json, sys, glob
sys.path.insert(0, "bench")
from compression import summarize, print_summary
rows = []
V1 = "deep-compression-auto v1 (one-shot sensitivity, bits>=3, recovery 80)"
V1B4 = "deep-compression-auto v1 (one-shot sensitivity, bits>=4, recovery 80)"
for f in sorted(glob.glob("bench/results/compression_auto_*.json")):
    for r in json.load(open(f))["rows"]:
        if r["pipeline"] == "deep-compression-auto":
            if "v1bits4" in f:
                r["pipeline"] = V1B4
            elif f.endswith(("lenet300_s0.json", "lenet300_s1.json")):
                r["pipeline"] = V1
        r["source_file"] = f
        rows.append(r)
s = summarize(rows)
print_summary(s)
json.dump({"rows": rows, "summary": s}, open("bench/results/compression_auto.json", "w"), indent=1)
