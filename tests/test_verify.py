"""The verifier catches each broken invariant and names the layer and the rule."""
import pytest
import torch

import dccomp
from dccomp import VerificationError
from dccomp.ir import Coded
from dccomp.models import LeNet300100


@pytest.fixture
def ir():
    torch.manual_seed(0)
    return dccomp.compile(LeNet300100(), "prune{sparsity=0.8},cluster{bits=4},huffman").ir


def _breaks(ir, invariant, layer="fc1.weight"):
    with pytest.raises(VerificationError) as e:
        dccomp.verify(ir)
    assert e.value.layer == layer and invariant in e.value.invariant, str(e.value)
    assert layer in str(e.value)


def test_valid_ir_passes(ir):
    dccomp.verify(ir)


def test_mask_shape(ir):
    ir.weights["fc1.weight"].mask = torch.ones(3, 3, dtype=torch.bool)
    _breaks(ir, "mask shape == weight shape")


def test_mask_dtype(ir):
    w = ir.weights["fc1.weight"]
    w.mask = w.mask.float()
    _breaks(ir, "mask dtype")


def test_masked_entries_nonzero(ir):
    w = ir.weights["fc1.weight"]
    pos = (~w.mask).nonzero()[0]
    with torch.no_grad():
        ir.param("fc1.weight")[tuple(pos)] = 0.5
    _breaks(ir, "masked (pruned) entries are exactly 0")


def test_indices_out_of_range(ir):
    w = ir.weights["fc2.weight"]
    w.indices = w.indices.clone()
    w.indices[w.mask] = w.k  # == k: out of range
    _breaks(ir, "cluster indices < k", "fc2.weight")


def test_weight_not_equal_centroid(ir):
    w = ir.weights["fc1.weight"]
    pos = w.mask.nonzero()[0]
    with torch.no_grad():
        ir.param("fc1.weight")[tuple(pos)] += 1e-3
    _breaks(ir, "clustered weights == codebook[indices]")


def test_nan_codebook(ir):
    ir.weights["fc3.weight"].codebook[0] = float("nan")
    _breaks(ir, "codebook entries are finite", "fc3.weight")


def test_bits_too_small(ir):
    ir.weights["fc1.weight"].bits = 1
    _breaks(ir, "bits >= ceil(log2(k))")


def test_coded_sizes_add_up(ir):
    c = ir.weights["fc1.weight"].coded

    class Lying(Coded):
        @property
        def nbytes(self):
            return 7

    ir.weights["fc1.weight"].coded = Lying(c.coder, c.index_bits, c.streams, c.meta)
    _breaks(ir, "coded size == sum of its stream sizes")


def test_parameter_listed_twice(ir):
    ir.dense.append(ir.dense[0])
    _breaks(ir, "each parameter is listed once", ir.dense[0].name)


def test_parameter_missing(ir):
    removed = ir.dense.pop()
    _breaks(ir, "parameters listed in the IR == parameters of the model", removed.name)


def test_verify_between_passes_names_the_pass():
    from dataclasses import dataclass

    from dccomp.pass_infra import Pass, PassResult

    @dataclass(frozen=True)
    class Corrupt(Pass):
        name = "corrupt"

        def run(self, ir, ctx):
            w = next(iter(ir.weights.values()))
            w.mask = torch.zeros(1, dtype=torch.bool)
            return PassResult(ir, True)

    with pytest.raises(VerificationError, match="corrupt"):
        dccomp.compile(LeNet300100(), ["prune{sparsity=0.5}", Corrupt()], verify=True)
