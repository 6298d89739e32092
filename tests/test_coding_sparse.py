"""Tests for dccomp.coding.sparse (relative indices + fillers, Deep Compression §2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dccomp.coding.sparse import count_fillers, decode_positions, encode_positions, gap_dtype


def _reference_encode(pos, index_bits):
    """Straightforward loop implementation of the documented convention (test oracle)."""
    m = (1 << index_bits) - 1
    out, prev = [], -1
    for p in pos:
        d = int(p) - prev
        while d > m:
            out.append(0)
            d -= m
        out.append(d)
        prev = int(p)
    return np.array(out, dtype=np.int64)


@st.composite
def positions(draw):
    n_total = draw(st.integers(0, 3000))
    bits = draw(st.integers(1, 16))
    density = draw(st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(rng.random(n_total) < density).astype(np.int64)
    return pos, n_total, bits


@settings(max_examples=150, deadline=None)
@given(positions())
def test_round_trip_matches_reference(case):
    pos, n_total, bits = case
    gaps, is_filler = encode_positions(pos, n_total, bits)
    assert gaps.dtype == gap_dtype(bits)
    np.testing.assert_array_equal(gaps.astype(np.int64), _reference_encode(pos, bits))
    np.testing.assert_array_equal(is_filler, gaps == 0)
    assert int((~is_filler).sum()) == pos.size
    assert int(is_filler.sum()) == count_fillers(pos, bits)
    assert gaps.size == 0 or int(gaps.max()) <= (1 << bits) - 1
    np.testing.assert_array_equal(decode_positions(gaps, bits, n_total), pos)


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_fillers_required(bits):
    m = (1 << bits) - 1
    n_total = 3 * m + 50 + 5 * m
    pos = np.array([0, m - 1, m, 2 * m + 1, 2 * m + 2, n_total - 1], dtype=np.int64)
    pos = np.unique(pos)
    gaps, filler = encode_positions(pos, n_total, bits)
    assert filler.sum() == count_fillers(pos, bits) > 0
    np.testing.assert_array_equal(decode_positions(gaps, bits, n_total), pos)


def test_exact_boundaries():
    # b=3, M=7: distance 7 fits (first position 6), distance 8 needs one filler
    g, f = encode_positions(np.array([6]), 10, 3)
    assert g.tolist() == [7] and not f.any()
    g, f = encode_positions(np.array([7]), 10, 3)
    assert g.tolist() == [0, 1]
    g, _ = encode_positions(np.array([0, 14]), 20, 3)   # d = 14 = 7 + 7 -> one filler + 7
    assert g.tolist() == [1, 0, 7]
    g, _ = encode_positions(np.array([0, 15]), 20, 3)   # d = 15 -> two fillers + 1
    assert g.tolist() == [1, 0, 0, 1]


def test_density_extremes():
    for bits in (1, 5, 8, 16):
        g, f = encode_positions(np.arange(1000), 1000, bits)
        assert (g == 1).all() and not f.any()
        g, f = encode_positions(np.zeros(0, np.int64), 1000, bits)
        assert g.size == 0 and decode_positions(g, bits, 1000).size == 0
    # bitmap degenerate case with b=1
    g, f = encode_positions(np.array([3, 5]), 6, 1)
    assert g.tolist() == [0, 0, 0, 1, 0, 1]


def test_large_vectorized():
    rng = np.random.default_rng(1)
    n = 2_000_000
    pos = np.flatnonzero(rng.random(n) < 0.1)
    for bits in (5, 8):
        g, f = encode_positions(pos, n, bits)
        np.testing.assert_array_equal(decode_positions(g, bits, n), pos)


@pytest.mark.parametrize(
    "pos,n_total,bits",
    [
        ([3, 3], 10, 5),       # not strictly increasing
        ([5, 2], 10, 5),
        ([-1, 2], 10, 5),
        ([10], 10, 5),         # out of range
        ([1], 10, 0),
        ([1], 10, 17),
        ([1.0], 10, 5),
    ],
)
def test_encode_rejects(pos, n_total, bits):
    with pytest.raises(ValueError):
        encode_positions(np.array(pos), n_total, bits)


def test_decode_rejects():
    with pytest.raises(ValueError, match="out of range"):
        decode_positions(np.array([32], np.uint8), 5, 100)
    with pytest.raises(ValueError, match="filler"):
        decode_positions(np.array([3, 0], np.uint8), 5, 100)
    with pytest.raises(ValueError, match="beyond"):
        decode_positions(np.array([31, 31, 31, 31], np.uint8), 5, 100)
    with pytest.raises(ValueError):
        decode_positions(np.array([-1]), 5, 100)
    with pytest.raises(ValueError):
        decode_positions(np.array([1]), 5, -1)
