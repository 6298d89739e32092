"""The ``entropy-code`` pass (passes/entropy_code.py) and its aliases ``huffman`` / ``ans``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dccomp
from dccomp.coding.sparse import encode_positions
from dccomp.format import plan_file
from helpers import laplace_mlp


def entropy_bits(symbols: np.ndarray) -> float:
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-(counts[counts > 0] * np.log2(p)).sum())


@pytest.fixture(scope="module")
def coded():
    """The same pruned + clustered LeNet-300-100 coded with each coder."""
    base = dccomp.compile(laplace_mlp(), "prune{sparsity=0.9},cluster{bits=5,init=density}")
    return {coder: dccomp.compile(base, f"entropy-code{{coder={coder}}}") for coder in ("huffman", "ans", "fixed")}


def test_needs_clustered_weights():
    with pytest.raises(dccomp.PassError) as ei:
        dccomp.compile(nn.Sequential(nn.Linear(8, 4)), "prune{sparsity=0.5},huffman")
    msg = str(ei.value)
    assert "'huffman'" in msg and "run cluster first" in msg and "'0.weight' is masked" in msg
    with pytest.raises(dccomp.PassError, match="'entropy-code'.*run cluster first"):
        dccomp.compile(nn.Sequential(nn.Linear(8, 4)), "entropy-code")


def test_cluster_after_entropy_code_is_refused():
    with pytest.raises(dccomp.PassError, match="entropy-coded"):
        dccomp.compile(nn.Sequential(nn.Linear(8, 4)), "cluster{bits=2},huffman,cluster{bits=2}")


@pytest.mark.parametrize("opts, frag", [
    ("coder=zip", "coder must be one of"),
    ("index_bits=0", "index_bits"),
    ("index_bits=17", "index_bits"),
    ("layers={fc1: 20}", "index_bits"),
    ("codebook_dtype=bfloat16", "codebook_dtype"),
])
def test_option_errors(opts, frag):
    with pytest.raises(dccomp.DccompError, match=frag):
        dccomp.compile(nn.Sequential(nn.Linear(8, 4)), f"cluster{{bits=2}},entropy-code{{{opts}}}")


def test_aliases_and_defaults(coded):
    c = dccomp.compile(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)), "cluster{bits=2},ans")
    w = c.ir.weights
    # tiny layers: ANS tables would cost more than they save, so the pass falls back to fixed width
    assert w["0.weight"].coded.coder in ("ans", "fixed") and w["0.weight"].coded.index_bits == 8  # conv: 8 (paper)
    assert w["2.weight"].coded.index_bits == 5  # fc: 5
    assert "gaps" not in w["0.weight"].coded.streams  # unpruned: no sparse index
    for name, ww in coded["huffman"].ir.weights.items():
        assert ww.coded.index_bits == 5
        if ww.mask.sum() > 1000:  # big layers are Huffman-coded (small ones may fall back to fixed width)
            assert ww.coded.coder == "huffman", name


def test_per_layer_index_bits():
    c = dccomp.compile(laplace_mlp(), "prune{sparsity=0.9},cluster{bits=3},huffman{index_bits=6,layers={fc1: 3}}")
    w = c.ir.weights
    assert w["fc1.weight"].coded.index_bits == 3 and w["fc2.weight"].coded.index_bits == 6
    m = w["fc1.weight"].mask.reshape(-1)
    gaps, fillers = encode_positions(torch.nonzero(m).reshape(-1).numpy(), m.numel(), 3)
    assert w["fc1.weight"].coded.meta["gaps"]["n"] == gaps.size and w["fc1.weight"].coded.n_fillers == fillers.sum()


def test_values_unchanged_by_float32_coding(coded):
    base = dccomp.compile(laplace_mlp(), "prune{sparsity=0.9},cluster{bits=5,init=density}")
    for name in base.ir.weights:
        for c in coded.values():
            assert torch.equal(c.ir.param(name), base.ir.param(name))
            assert torch.equal(c.ir.weights[name].codebook, base.ir.weights[name].codebook)


def test_huffman_within_2_percent_of_entropy(coded):
    """Per stream on real-ish layers: Huffman payload (code-length table included) within 2% of the order-0
    entropy bound; the small fc2 is allowed its table (~64 bytes) on top."""
    for name, table in (("fc1.weight", 0), ("fc2.weight", 64)):
        w = coded["huffman"].ir.weights[name]
        live = w.mask.reshape(-1)
        codes = w.indices.reshape(-1)[live].numpy()
        gaps, _ = encode_positions(torch.nonzero(live).reshape(-1).numpy(), live.numel(), 5)
        for stream, sym in (("codes", codes), ("gaps", gaps.astype(np.int64))):
            h = entropy_bits(sym)
            got = 8 * len(w.coded.streams[stream])
            assert h <= got <= 1.02 * h + 8 * table, (name, stream, got, h)


def test_ans_is_no_larger_than_huffman_and_fixed_is_pq(coded):
    for name, wh in coded["huffman"].ir.weights.items():
        wa = coded["ans"].ir.weights[name].coded
        wf = coded["fixed"].ir.weights[name].coded
        for s in ("codes", "gaps"):
            assert len(wa.streams[s]) <= len(wh.coded.streams[s]), (name, s)
        nnz = wh.coded.meta["nnz"]
        assert len(wf.streams["codes"]) == math.ceil(nnz * 5 / 8)
        assert len(wf.streams["gaps"]) == math.ceil(wf.meta["gaps"]["n"] * 5 / 8)
        if name != "fc3.weight":  # 100 survivors: Huffman's table costs more than it saves
            assert len(wh.coded.streams["codes"]) < len(wf.streams["codes"])
    sizes = {k: len(plan_file(c.ir).to_bytes()) for k, c in coded.items()}
    assert sizes["ans"] <= sizes["huffman"] < sizes["fixed"]


def test_float16_codebook_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8, 5))
    c = dccomp.compile(model, "prune{sparsity=0.5},cluster{bits=4},huffman{codebook_dtype=float16}")
    for w in c.ir.weights.values():
        assert torch.equal(w.codebook, w.codebook.half().float())  # representable in float16
        p = c.ir.param(w.name).detach()
        assert torch.equal(p[w.mask], w.codebook[w.indices[w.mask]])
        assert torch.count_nonzero(p[~w.mask]) == 0
        assert w.coded.meta["codebook_dtype"] == "float16"
    path = tmp_path / "h.dcc"
    dccomp.save(c, path)
    f = dccomp.load(path)
    for w in c.ir.weights.values():
        assert f.info(w.name)["codebook"]["dtype"] == "float16"
        assert len(f.container.section(f"{w.name}/codebook")) == 2 * w.k
        values, mask, cb, idx = f.decode(w.name)
        assert torch.equal(values, c.ir.param(w.name).detach()) and torch.equal(cb, w.codebook)
        assert torch.equal(mask, w.mask) and torch.equal(idx, w.indices)
    fresh = dccomp.load(path, nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8, 5)))
    x = torch.randn(3, 2, 3, 3)
    with torch.no_grad():
        assert torch.equal(fresh(x), c(x))


def test_float16_codebook_overflow_is_refused(tmp_path):
    """Regression: centroids beyond float16's range became inf; the saved file then failed to load."""
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e6)
    with pytest.raises(dccomp.PassError, match="float16 cannot hold.*codebook_dtype=float32"):
        dccomp.compile(model, "cluster{bits=2},entropy-code{codebook_dtype=float16}")
    c = dccomp.compile(model, "cluster{bits=2},entropy-code{codebook_dtype=float32}")
    dccomp.save(c, tmp_path / "big.dcc")
    dccomp.load(tmp_path / "big.dcc", nn.Sequential(nn.Linear(4, 4)))


def test_record_has_coded_bytes(coded):
    c = coded["huffman"]
    rec = next(v for k, v in c.records.items() if k.startswith("entropy-code"))
    assert rec["coded_bytes"] == {n: w.coded.nbytes for n, w in c.ir.weights.items()}


def test_index_bits_auto_picks_the_smallest_width():
    torch.manual_seed(0)
    from dccomp.models import LeNet300100
    from dccomp.passes.entropy_code import AUTO_INDEX_BITS

    m = LeNet300100()
    base = "prune{sparsity=0.95,scope=global},cluster{bits=4},huffman"
    auto = dccomp.compile(m, base + "{index_bits=auto}", verify=True)
    for b in AUTO_INDEX_BITS:
        fixed = dccomp.compile(m, base + f"{{index_bits={b}}}")
        for name, w in auto.ir.weights.items():
            assert w.coded.nbytes <= fixed.ir.weights[name].coded.nbytes
    chosen = {w.coded.index_bits for w in auto.ir.weights.values()}
    assert chosen <= set(AUTO_INDEX_BITS)
    with pytest.raises(dccomp.PassError, match="or 'auto'"):
        dccomp.compile(m, base + "{index_bits=fast}")


def test_never_larger_than_fixed_width():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 3))
    base = "prune{sparsity=0.9},cluster{bits=4},"
    ent = dccomp.compile(m, base + "huffman", verify=True)
    fixed = dccomp.compile(m, base + "entropy-code{coder=fixed}")
    for name, w in ent.ir.weights.items():
        assert w.coded.nbytes <= fixed.ir.weights[name].coded.nbytes
    assert ent.ir.weights["0.weight"].coded.coder == "huffman"  # big layer: Huffman wins
    assert ent.ir.weights["2.weight"].coded.coder == "fixed"  # 60 weights: tables cost more than they save
    assert ent.report().total_bytes < fixed.report().total_bytes
