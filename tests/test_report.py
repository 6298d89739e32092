"""The size report (dccomp/report.py): totals equal the saved file's bytes, every byte attributed once, the
compression ratio, and the paper's P+Q / P+Q+H columns."""
from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dccomp
from dccomp.container import read_container
from dccomp.format import plan_file
from dccomp.report import report_from_manifest, size_report
from helpers import laplace_mlp


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = laplace_mlp()
    c = dccomp.compile(m, "prune{sparsity=0.9},cluster{bits=5,init=density},huffman",
                       example_inputs=torch.randn(1, 784))
    path = tmp_path_factory.mktemp("rep") / "m.dcc"
    nbytes = dccomp.save(c, path)
    return m, c, path, nbytes


def test_total_equals_file_size_and_every_byte_is_attributed_once(saved):
    m, c, path, nbytes = saved
    rep = c.report()
    size = os.path.getsize(path)
    assert rep.total_bytes == size == nbytes
    assert sum(r.total_bytes for r in rep.rows) + rep.overhead_bytes == size
    cont = read_container(path)
    assert rep.overhead_bytes == cont.overhead  # header + manifest + padding, nothing else
    by_row = {r.layer: r for r in rep.rows}
    secs = {s.name: s.length for s in cont.sections}
    for layer in ("fc1", "fc2", "fc3"):
        assert by_row[layer].total_bytes == sum(v for k, v in secs.items() if k.startswith(layer + "."))
        assert by_row[layer].codebook_bytes == secs[f"{layer}.weight/codebook"]
        assert by_row[layer].dense_bytes == secs[f"{layer}.bias"]


def test_ratio_is_dense_fp32_params_over_file_bytes(saved):
    m, c, path, _ = saved
    rep = c.report()
    dense = sum(4 * p.numel() for p in m.parameters())  # weights and biases
    assert dense == 4 * 266_610
    assert rep.dense_fp32_bytes == dense == c.ir.dense_nbytes()
    assert rep.ratio == pytest.approx(dense / os.path.getsize(path), rel=1e-12)
    assert 20 < rep.ratio < 80
    for r in rep.rows:
        assert r.ratio == pytest.approx(r.dense_fp32_bytes / r.total_bytes)
    d = json.loads(rep.to_json())
    assert d["ratio"] == pytest.approx(rep.ratio) and len(d["rows"]) == 3
    text = str(rep)
    assert "P+Q+H" in text and "fc1" in text and str(rep.total_bytes) in text


def test_report_from_file_matches_report_from_ir(saved):
    _, c, path, _ = saved
    f = dccomp.load(path)
    rep = report_from_manifest(f.meta, {s.name: s.length for s in f.container.sections}, f.file_size)
    assert rep == size_report(c.ir)


def test_paper_columns(saved):
    _, c, _, _ = saved
    rep = c.report()
    for r in rep.rows:
        w = c.ir.weights[f"{r.layer}.weight"]
        assert w.k == 32  # enough distinct values: k' = 2**bits
        assert r.weight_bits_pq == 5 == w.bits
        nnz = int(w.mask.sum())
        assert r.kept == pytest.approx(nnz / w.mask.numel())
        n_gap = w.coded.meta["gaps"]["n"]
        assert r.fillers == n_gap - nnz == w.coded.n_fillers
        assert r.index_bits_pq == pytest.approx(5 * n_gap / nnz)
        assert r.weight_bits_pqh == pytest.approx(8 * len(w.coded.streams["codes"]) / nnz)
        assert r.index_bits_pqh == pytest.approx(8 * len(w.coded.streams["gaps"]) / nnz)
    fc1 = rep.rows[0]
    # Laplace weights: Huffman beats the fixed width on both streams (paper Fig. 5 / Table 1)
    assert fc1.weight_bits_pqh < fc1.weight_bits_pq
    assert fc1.index_bits_pqh < fc1.index_bits_pq


def test_fixed_coder_reports_no_pqh_and_pq_matches_stream_size():
    c = dccomp.compile(laplace_mlp(1), "prune{sparsity=0.8},cluster{bits=4,init=density},entropy-code{coder=fixed}")
    rep = c.report()
    for r in rep.rows:
        w = c.ir.weights[f"{r.layer}.weight"]
        assert r.weight_bits_pqh is None and r.index_bits_pqh is None
        nnz = int(w.mask.sum())
        assert len(w.coded.streams["codes"]) == math.ceil(nnz * r.weight_bits_pq / 8)
        assert len(w.coded.streams["gaps"]) == math.ceil(nnz * r.index_bits_pq / 8)


def test_dense_and_buffer_rows():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    c = dccomp.compile(model, "prune{sparsity=0.5}", example_inputs=torch.randn(2, 1, 4, 4))
    rep = c.report()
    rows = {r.layer: r for r in rep.rows}
    assert set(rows) == {"0", "1", "3"}
    bn = rows["1"]
    assert bn.n_weights == 0 and bn.weight_bits_pq is None
    assert bn.dense_fp32_bytes == 4 * 8  # BN weight + bias; running stats are buffers, not parameters
    assert bn.dense_bytes == 4 * 8 + 4 * 8 + 8  # + running_mean/var (f32) + num_batches_tracked (int64)
    assert rows["0"].weight_bits_pq == 32.0  # masked, not clustered: raw float32 survivors
    assert rep.dense_fp32_bytes == c.ir.dense_nbytes()
    assert rep.total_bytes == len(plan_file(c.ir).to_bytes())


class TwoWeights(nn.Module):
    """One module holding two compressible weights (functional linear) and a bias."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 8))
        self.w2 = nn.Parameter(torch.randn(4, 32))
        self.b = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return F.linear(F.linear(x, self.w1), self.w2, self.b)


def test_module_with_two_weights_gets_a_row_per_weight(tmp_path):
    """Regression: rows were keyed by module, so the second weight's row replaced the first; its bytes then
    went to 'overhead' and its parameters were missing from the dense reference (wrong ratio)."""
    torch.manual_seed(0)
    outer = nn.Sequential()
    outer.add_module("blk", TwoWeights())
    c = dccomp.compile(outer, "prune{sparsity=0.5},cluster{bits=2},huffman", example_inputs=torch.randn(2, 8))
    path = tmp_path / "two.dcc"
    dccomp.save(c, path)
    rep = c.report()
    rows = {r.layer: r for r in rep.rows}
    assert set(rows) == {"blk.w1", "blk.w2", "blk"}
    assert rows["blk.w1"].n_weights == 256 and rows["blk.w2"].n_weights == 128
    assert rows["blk"].dense_bytes == 16
    assert rep.overhead_bytes == read_container(path).overhead
    assert rep.dense_fp32_bytes == c.ir.dense_nbytes() == 4 * (256 + 128 + 4)


@pytest.mark.parametrize("edit", [
    lambda m: m["tensors"][0]["meta"].pop("nnz"),
    lambda m: m["tensors"][0]["meta"].__setitem__("nnz", "3"),
    lambda m: m["tensors"][0]["meta"].__setitem__("n", None),
    lambda m: m["tensors"][0].__setitem__("bits", [1]),
    lambda m: m["tensors"][0].__setitem__("streams", ["nope"]),
    lambda m: m["tensors"][-1].pop("array"),
    lambda m: m["tensors"].append(5),
    lambda m: m.__setitem__("tensors", None),
])
def test_report_from_malformed_manifest_is_format_error(saved, edit):
    """``dccomp inspect`` builds the report from an untrusted file: malformed entries raise FormatError."""
    _, c, _, _ = saved
    plan = plan_file(c.ir)
    meta = copy.deepcopy(plan.meta)
    edit(meta)
    with pytest.raises(dccomp.FormatError, match="size report"):
        report_from_manifest(meta, {k: len(v) for k, v in plan.sections.items()}, 1000)
