"""The packed relative-index layout (code and column gap in one entry, filler zeros): exact round trip."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dccomp.backends.tvm.kernels import CSRCodebook
from dccomp.backends.tvm.packed import PackedCSR, choose_layout


def _csr(seed, n_out, n_in, density, k):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_out, n_in)) < density
    idx = rng.integers(0, k, (n_out, n_in))
    cb = rng.standard_normal(k).astype(np.float32)
    return CSRCodebook.from_codebook(idx, cb, mask)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_out=st.integers(1, 20), n_in=st.integers(1, 700),
       density=st.one_of(st.sampled_from([0.0, 1.0, 0.01]), st.floats(0, 1)), k=st.integers(1, 300),
       entry_bits=st.sampled_from([None, 16]))
def test_packed_round_trip(seed, n_out, n_in, density, k, entry_bits):
    csr = _csr(seed, n_out, n_in, density, k)
    p = PackedCSR.from_csr(csr, entry_bits)
    np.testing.assert_array_equal(p.to_dense(), csr.to_dense())
    assert p.n_entries >= csr.nnz
    assert p.entries.dtype == (np.uint8 if entry_bits is None and p.code_bits <= 6 else np.uint16)


def test_fillers_bound_the_gap():
    csr = CSRCodebook.from_codebook(np.array([[0] * 40 + [1]]), np.array([0.5, -1.0], np.float32),
                                    np.array([[False] * 40 + [True]]))
    p = PackedCSR.from_csr(csr)  # k=2 -> 1-bit codes, 7-bit gaps (esc 127): column 40 needs no filler
    assert (p.code_bits, p.gap_bits, p.n_entries) == (1, 7, 1)
    far = CSRCodebook.from_codebook(np.zeros((1, 3000), int), np.array([2.0], np.float32),
                                    np.arange(3000)[None] == 2999)
    p = PackedCSR.from_csr(far)  # gap 2999 = 23 * 127 + 78: 23 units of 127 in ceil(23 / 2) = 12 fillers
    assert p.n_entries == 13
    np.testing.assert_array_equal(p.to_dense(), far.to_dense())
    np.testing.assert_array_equal(PackedCSR.from_csr(csr, 16).to_dense(), csr.to_dense())


def test_choose_layout_is_smaller_for_paper_like_layers():
    csr = _csr(1, 256, 2304, 0.2, 32)  # a ResNet 3x3 conv row space, 20% density, 5-bit codebook
    chosen = choose_layout(csr)
    assert isinstance(chosen, PackedCSR) and chosen.nbytes < 0.5 * csr.nbytes


def test_too_many_clusters_for_8_bit_entries():
    with pytest.raises(ValueError, match="entry_bits=16"):
        PackedCSR.from_csr(_csr(0, 2, 10, 0.5, 200), 8)

