"""Fuzz the ``.dcc`` *model* reader (``dccomp.load`` / ``DccFile``): mutate real small model files.

Usage::

    python bench/fuzz_model_file.py --seconds 60 [--seed 0]
    python bench/fuzz_model_file.py --iterations 100000

Targets: a small MLP (24-16-6) pruned 75%, clustered to 3 bits and coded with Huffman (most cases), the same
with ANS, and a masked-only model (raw survivors, fixed-width sparse indices).

Two families of mutations:

* raw (bit flips, byte overwrites, truncation, extension, insertion, deletion, duplication, header fields;
  from ``bench/fuzz_container.py``): the CRCs are stale, so every changed file must raise ``FormatError``;
  a successful load of a changed file is an *undetected corruption* (failure).
* model-level with the CRCs recomputed (the file is rebuilt with ``container_bytes``): JSON edits anywhere in
  the per-tensor manifest entries (values replaced by odd JSON, numbers nudged, keys dropped or added,
  entries swapped), and section edits (bytes changed, cut, extended, emptied, swapped). These get past the
  container and hit ``DccFile`` / ``decode_weight`` / the coders. Outcome must be ``FormatError`` or a
  successful decode of every tensor; after a successful decode, ``report_from_manifest`` must give a report
  or ``FormatError``, and ``load(data, model)`` must load or raise ``ValueError`` (the file now describes a
  different architecture).

Any other exception is a failure, printed with a reproducer. Exit status 1 if there was any failure.
The test suite (tests/test_model_file_fuzz.py) runs :func:`run_fuzz` for 10,000 cases.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import traceback
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuzz_container import RAW  # noqa: E402  (raw byte-level mutators, CRCs left stale)
from fuzzlib import FuzzResult, Mutator, check_budget, run_cases  # noqa: E402  (the shared fuzz driver)
from fuzzlib import main as fuzz_main  # noqa: E402

import dccomp  # noqa: E402
from dccomp.container import container_bytes, read_container  # noqa: E402
from dccomp.errors import FormatError  # noqa: E402
from dccomp.format import plan_file  # noqa: E402
from dccomp.report import report_from_manifest  # noqa: E402

BAD_OUTCOMES = ("undetected_corruption",)  # plus any "exception:<...>"


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 6))


def sample_files() -> list[bytes]:
    """The fuzz targets (deterministic bytes)."""
    out = []
    for pipeline in ("prune{sparsity=0.75},cluster{bits=3},huffman",
                     "prune{sparsity=0.6},cluster{bits=2},entropy-code{coder=ans,index_bits=3}",
                     "prune{sparsity=0.8}"):
        torch.manual_seed(0)
        c = dccomp.compile(make_model(), pipeline)
        out.append(plan_file(c.ir).to_bytes())
    return out


# ------------------------------------------------------------------- model-level mutations (CRCs recomputed)

_WEIRD = [None, True, False, -1, 0, 1, 2, 3, 5, 7, 8, 16, 17, 255, 256, 2**16, 2**31, 2**34, 2**40, -(2**63), 1.5,
          -0.0, 1e300, "", "x", "huffman", "ans", "fixed", "float16", "float32", "int64", "weight", "dense",
          "gaps", "codes", "values", [], [0], [1, 1], [2**33], [-1], {}, {"n": 1, "k": 1}, {"dtype": "float32",
          "shape": [1]}]


def _nudge(rng: random.Random, v: Any) -> Any:
    if type(v) is int:
        return rng.choice((v + 1, v - 1, v * 2, v // 2, 0, -v, v + 2**32, v * 2**20))
    if type(v) is list and v and all(type(x) is int for x in v):
        v = list(v)
        i = rng.randrange(len(v))
        v[i] = _nudge(rng, v[i])
        return rng.choice((v, v[::-1], v + [1], v[:-1]))
    return rng.choice(_WEIRD)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into ``obj``, containers included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _rebuild(data: bytes, rng: random.Random, edit_meta: Callable | None = None,
             edit_sections: Callable | None = None) -> bytes:
    c = read_container(data)
    meta = copy.deepcopy(c.meta)
    sections = {n: c.section(n) for n in c.section_names}
    if edit_meta:
        edit_meta(meta)
    if edit_sections:
        edit_sections(sections)
    return container_bytes(meta, sections, compress_manifest=rng.random() < 0.7)


def f_json(rng: random.Random, d: bytes) -> bytes:
    def edit(meta: dict) -> None:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            paths = [p for p in _paths(meta) if p]
            path = rng.choice(paths)
            parent = meta
            for k in path[:-1]:
                parent = parent[k]
            key = path[-1]
            op = rng.randrange(5)
            if op == 0:
                parent[key] = _nudge(rng, parent[key])
            elif op == 1:
                parent[key] = rng.choice(_WEIRD)
            elif op == 2:
                if isinstance(parent, dict):
                    del parent[key]
                else:
                    parent.pop(key)
            elif op == 3 and isinstance(parent, dict):
                parent[rng.choice(("extra", "aliases", "codebook", "bits", "gaps", "codes", "dtype"))] = \
                    rng.choice(_WEIRD)
            else:  # copy a value from another tensor entry at the same key, if any
                other = rng.choice(meta["tensors"]) if isinstance(meta.get("tensors"), list) and meta["tensors"] else {}
                if isinstance(other, dict) and isinstance(key, str) and key in other:
                    parent[key] = copy.deepcopy(other[key])
    return _rebuild(d, rng, edit_meta=edit)


def f_entries(rng: random.Random, d: bytes) -> bytes:
    """Entry-level edits: swap the meta/streams/shape of two weights, duplicate or drop entries."""
    def edit(meta: dict) -> None:
        t = meta["tensors"]
        op = rng.randrange(4)
        if op == 0:
            a, b = rng.sample(range(len(t)), 2)
            key = rng.choice(("meta", "shape", "streams", "codebook", "coder", "index_bits", "role", "name"))
            if key in t[a] and key in t[b]:
                t[a][key], t[b][key] = t[b][key], t[a][key]
        elif op == 1:
            t.append(copy.deepcopy(rng.choice(t)))
        elif op == 2:
            t.pop(rng.randrange(len(t)))
        else:
            rng.shuffle(t)
    return _rebuild(d, rng, edit_meta=edit)


def f_sections(rng: random.Random, d: bytes) -> bytes:
    def edit(s: dict) -> None:
        names = list(s)
        name = rng.choice(names)
        b = bytearray(s[name])
        op = rng.randrange(7)
        if op <= 2 and b:  # byte changes
            for _ in range(rng.choice((1, 1, 2, 4))):
                b[rng.randrange(len(b))] ^= rng.choice((1, 0x80, 0xFF, rng.randrange(1, 256)))
        elif op == 3:
            del b[rng.randrange(len(b) + 1):]
        elif op == 4:
            b += bytes(rng.choice((1, 4, rng.randrange(1, 32))))
        elif op == 5:
            b = bytearray()
        else:
            other = rng.choice(names)
            s[other], b = bytes(b), bytearray(s[other])
        s[name] = bytes(b)
    return _rebuild(d, rng, edit_sections=edit)


FIXED: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "fixed:json": f_json, "fixed:entries": f_entries, "fixed:sections": f_sections,
}


# ------------------------------------------------------------------------------------------------ driver

def classify(original: bytes, mutated: bytes, fixed_crc: bool, model: nn.Module) -> tuple[str, str | None]:
    """Outcome of loading ``mutated``: (outcome, traceback or None)."""
    stage = "decode"
    try:
        f = dccomp.load(mutated)
        f.state_dict()  # decodes every tensor
        for name in f.names:
            values, mask, cb, idx = f.decode(name)
            e = f.info(name)
            if e["role"] == "weight" and list(values.shape) != e["shape"]:
                raise AssertionError(f"{name}: decoded shape {tuple(values.shape)} != declared {e['shape']}")
    except FormatError:
        return "format_error", None
    except Exception as e:  # noqa: BLE001 - any other exception is the bug we look for
        return f"exception:{stage}:{type(e).__name__}", traceback.format_exc()
    if mutated == original:
        return "unchanged", None
    if not fixed_crc:
        return "undetected_corruption", None
    stage = "report"
    try:
        try:
            report_from_manifest(f.meta, {s.name: s.length for s in f.container.sections}, f.file_size)
        except FormatError:
            pass
        stage = "load_into_model"
        try:
            dccomp.load(mutated, model)
        except FormatError:
            return "decoded_then_format_error", None
        except ValueError as e:
            if "do not match" in str(e) or "file has shape" in str(e):
                return "ok_other_architecture", None
            raise
        return "ok_loaded", None
    except Exception as e:  # noqa: BLE001
        return f"exception:{stage}:{type(e).__name__}", traceback.format_exc()


def run_fuzz(iterations: int | None = None, seconds: float | None = None, seed: int = 0,
             max_failures: int = 20) -> FuzzResult:
    """Run mutations until ``iterations`` cases or ``seconds`` elapsed (whichever first; at least one given)."""
    check_budget(iterations, seconds)
    targets = sample_files()
    model = make_model()
    mutators = list(RAW.items()) * 2 + list(FIXED.items()) * 2  # 16 raw : 6 model-level

    def pick(rng: random.Random) -> tuple[bytes, str, Mutator]:
        original = targets[0] if rng.random() < 0.7 else rng.choice(targets[1:])
        return (original, *rng.choice(mutators))

    return run_cases(pick, lambda original, mutated, fixed_crc: classify(original, mutated, fixed_crc, model),
                     BAD_OUTCOMES, iterations, seconds, seed, max_failures)


def main(argv: list[str] | None = None) -> int:
    return fuzz_main(argv, __doc__, run_fuzz, slowest="case", outcome_width=36, mutator_width=18,
                     reproducer=lambda data: "python -c \"import dccomp; "
                                             f"f = dccomp.load(bytes.fromhex('{data.hex()}')); f.state_dict()\"")


if __name__ == "__main__":
    sys.exit(main())
