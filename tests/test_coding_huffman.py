"""Tests for dccomp.coding.huffman (canonical length-limited Huffman, Deep Compression §4)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dccomp.coding import CODERS, HuffmanCoder, canonical_codes, code_lengths, decode, encode, entropy_bits
from dccomp.coding.huffman import kraft_sum, optimal_huffman_bits


def _is_prefix_free(codes, lengths):
    words = sorted(
        format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths) if l > 0
    )
    return all(not b.startswith(a) for a, b in zip(words, words[1:]))


@st.composite
def streams(draw):
    k = draw(st.sampled_from([1, 2, 3, 7, 32, 256, 4096, 65536]))
    n = draw(st.sampled_from([0, 1, 2, 5, 100, 4095, 4096, 4097, 20000]))
    kind = draw(st.sampled_from(["uniform", "laplace", "single", "geometric"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        s = rng.integers(0, k, n)
    elif kind == "laplace":
        s = np.clip(np.round(rng.laplace(size=n) * k / 8 + k / 2), 0, k - 1).astype(np.int64)
    elif kind == "single":
        s = np.full(n, rng.integers(0, k))
    else:
        s = np.minimum(rng.geometric(0.3, n) - 1, k - 1)
    return s.astype(np.int64), k


@settings(max_examples=120, deadline=None)
@given(streams(), st.sampled_from([HuffmanCoder, lambda: HuffmanCoder(max_len=12, block_size=64)]))
def test_round_trip(case, make):
    s, k = case
    coder = make()
    try:
        payload, meta = coder.compress(s, k)
    except ValueError:
        assert np.unique(s).size > (1 << coder.max_len)   # too many symbols for the cap
        return
    assert isinstance(payload, bytes)
    meta = json.loads(json.dumps(meta))
    assert set(meta) == {"n", "k"}
    out = coder.decompress(payload, meta)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, s)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=300))
def test_lengths_optimal_and_kraft(counts):
    c = np.array(counts, dtype=np.int64)
    ln = code_lengths(c, 24)   # sum < 121393 = F(26) -> Huffman depth <= 24, cap not binding
    used = c > 0
    assert ((ln > 0) == used).all()
    if used.sum() >= 2:
        assert abs(kraft_sum(ln) - 1.0) < 1e-12
        assert int((ln.astype(np.int64) * c).sum()) == optimal_huffman_bits(c)
    codes = canonical_codes(ln)
    assert _is_prefix_free(codes, ln)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=500), st.integers(1, 16))
def test_length_limited(counts, cap):
    c = np.array(counts, dtype=np.int64)
    nu = int((c > 0).sum())
    if nu > (1 << cap):
        with pytest.raises(ValueError):
            code_lengths(c, cap)
        return
    ln = code_lengths(c, cap)
    assert ln.max() <= max(cap, 1)
    assert kraft_sum(ln) <= 1.0 + 1e-12
    unc = code_lengths(c, 24)
    assert (ln.astype(np.int64) * c).sum() >= (unc.astype(np.int64) * c).sum()


def test_length_limit_binding_fibonacci():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    c = np.array(fib)
    assert code_lengths(c, 24).max() == 24
    ln = code_lengths(c, 10)
    assert ln.max() == 10 and kraft_sum(ln) <= 1.0


def test_lengths_special_cases():
    assert code_lengths(np.array([0, 5, 0]), 16).tolist() == [0, 1, 0]
    assert code_lengths(np.array([0, 0]), 16).tolist() == [0, 0]
    assert code_lengths(np.array([3, 3]), 1).tolist() == [1, 1]
    assert code_lengths(np.array([0.5, 0.25, 0.25])).tolist() == [1, 2, 2]
    for bad in ([-1, 2], [np.nan, 1.0], []):
        with pytest.raises(ValueError):
            code_lengths(np.array(bad), 16)
    with pytest.raises(ValueError):
        code_lengths(np.ones(5), 2)
    with pytest.raises(ValueError):
        code_lengths(np.ones(5), 0)


def test_canonical_codes_known():
    # DEFLATE RFC 1951 example: lengths (3,3,3,3,3,2,4,4) -> 010,011,100,101,110,00,1110,1111
    codes = canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4]))
    assert codes.tolist() == [2, 3, 4, 5, 6, 0, 14, 15]
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes(np.array([1, 1, 1]))


def test_size_near_entropy_laplace():
    rng = np.random.default_rng(0)
    w = rng.laplace(size=300_000)
    for k in (32, 256):
        edges = np.linspace(w.min(), w.max(), k + 1)[1:-1]
        s = np.searchsorted(edges, w)
        payload, meta = HuffmanCoder().compress(s, k)
        h = entropy_bits(s, k) / 8
        c = np.bincount(s, minlength=k)
        opt = optimal_huffman_bits(c) / 8
        assert len(payload) <= opt * 1.01 + 400          # within 1% of optimal Huffman (+ table)
        assert len(payload) <= h + s.size / 8 + 400       # < 1 bit/symbol over entropy
        assert len(payload) >= h


def test_low_level_encode_decode():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 10, 50_000)
    ln = code_lengths(np.bincount(s, minlength=10))
    data = encode(s, ln, block_size=256)
    np.testing.assert_array_equal(decode(data, ln, s.size), s)
    with pytest.raises(ValueError):
        encode(np.array([1]), np.array([1, 0]))            # symbol with zero length
    with pytest.raises(ValueError):
        encode(np.array([2]), np.array([1, 1]))            # out of range
    with pytest.raises(ValueError):
        encode(s, ln, block_size=100)


def _coder_bytes():
    rng = np.random.default_rng(5)
    s = np.clip(np.round(rng.laplace(size=30_000) * 3 + 16), 0, 31).astype(np.int64)
    coder = HuffmanCoder(block_size=1024)
    payload, meta = coder.compress(s, 32)
    return coder, s, payload, meta


def test_malformed_truncations():
    coder, s, payload, meta = _coder_bytes()
    for cut in list(range(0, 40)) + list(range(40, len(payload), 997)) + [len(payload) - 1]:
        with pytest.raises(ValueError):
            coder.decompress(payload[:cut], meta)
    with pytest.raises(ValueError):
        coder.decompress(payload + b"\0", meta)


def test_malformed_meta():
    coder, s, payload, meta = _coder_bytes()
    for bad in ({"n": 10**12, "k": 32}, {"n": s.size + 1, "k": 32}, {"n": -1, "k": 32}, {"n": 5},
                {"n": s.size, "k": 3}, {"n": s.size, "k": 0}, None, {"n": 1.5, "k": 32}):
        with pytest.raises(ValueError):
            coder.decompress(payload, bad)
    with pytest.raises(ValueError):
        coder.decompress("not bytes", meta)


def test_random_byte_flips_never_crash():
    coder, s, payload, meta = _coder_bytes()
    rng = np.random.default_rng(11)
    detected = 0
    for _ in range(300):
        b = bytearray(payload)
        i = int(rng.integers(0, len(b)))
        b[i] ^= int(rng.integers(1, 256))
        try:
            out = coder.decompress(bytes(b), meta)
        except ValueError:
            detected += 1
            continue
        assert out.shape == s.shape and out.min() >= 0 and out.max() < 32
    assert detected > 50


def test_kraft_violating_table_rejected():
    # hand-built payload: version 1, dense mode, m=3, w=1, lengths (1,1,1) -> Kraft 1.5
    from dccomp.coding.bitio import pack_fixed

    payload = bytes([1, 0, 3, 1]) + pack_fixed(np.array([1, 1, 1]), 1) + b"\x00\x00"
    with pytest.raises(ValueError, match="Kraft"):
        HuffmanCoder().decompress(payload, {"n": 1, "k": 3})


def test_entropy_bits():
    assert entropy_bits(np.array([0, 1, 0, 1]), 2) == pytest.approx(4.0)
    assert entropy_bits(np.zeros(7, int), 3) == 0.0
    assert entropy_bits(np.zeros(0, int), 3) == 0.0
    with pytest.raises(ValueError):
        entropy_bits(np.array([3]), 3)


def test_registry():
    assert set(CODERS) == {"huffman", "ans"}
    assert CODERS["huffman"] is HuffmanCoder


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000))
def test_bitio_pack_bits_matches_string_reference(seed, n):
    from dccomp.coding.bitio import pack_bits, pack_fixed, unpack_fixed

    rng = np.random.default_rng(seed)
    wd = rng.integers(0, 33, n)
    v = rng.integers(0, 2**63, n, dtype=np.uint64) & ((np.uint64(1) << wd.astype(np.uint64)) - np.uint64(1))
    data, nbits = pack_bits(v, wd)
    ref = "".join(format(int(x), f"0{int(w)}b") if w else "" for x, w in zip(v, wd))
    ref += "0" * (-len(ref) % 8)
    assert nbits == int(wd.sum())
    assert data == (int(ref, 2).to_bytes(len(ref) // 8, "big") if ref else b"")
    w = int(rng.integers(1, 33))
    vals = rng.integers(0, 2**w, n)
    np.testing.assert_array_equal(unpack_fixed(pack_fixed(vals, w), w, n), vals)
    with pytest.raises(ValueError):
        unpack_fixed(pack_fixed(vals, w)[:-1], w, n) if n * w >= 8 else unpack_fixed(b"", w, n + 8)
