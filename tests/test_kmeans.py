"""Tests for dccomp.kmeans.kmeans_1d (1-D k-means for weight sharing, Deep Compression §3)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from dccomp.kmeans import INITS, kmeans_1d, wcss

EMPTY = ("drop", "reseed")

# float32 values of moderate range, with a good chance of duplicates
_elems = st.one_of(
    st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5).map(float),
)
values_st = hnp.arrays(np.float32, st.integers(0, 300), elements=_elems)


def _check_invariants(x, k, cb, labels):
    assert cb.dtype == np.float32 and labels.dtype == np.int64
    assert labels.shape == x.shape
    assert not np.isnan(cb).any()
    assert len(cb) <= k
    assert len(cb) <= len(np.unique(x))
    if len(x) == 0:
        assert len(cb) == 0
        return
    assert (labels >= 0).all() and (labels < len(cb)).all()
    assert np.all(np.diff(cb) > 0), "codebook sorted strictly ascending"
    assert np.array_equal(np.unique(labels), np.arange(len(cb))), "every codebook entry used"
    # nearest-centroid assignment (float64 distances)
    d = np.abs(x.astype(np.float64)[:, None] - cb.astype(np.float64)[None, :])
    own = d[np.arange(len(x)), labels]
    assert np.all(own <= d.min(axis=1))


@settings(max_examples=60, deadline=None)
@given(x=values_st, k=st.integers(1, 40), init=st.sampled_from(INITS),
       empty=st.sampled_from(EMPTY), seed=st.integers(0, 3))
def test_invariants(x, k, init, empty, seed):
    cb, labels = kmeans_1d(x, k, init=init, seed=seed, empty=empty)
    _check_invariants(x, k, cb, labels)
    # determinism
    cb2, labels2 = kmeans_1d(x, k, init=init, seed=seed, empty=empty)
    assert np.array_equal(cb, cb2) and np.array_equal(labels, labels2)


@settings(max_examples=40, deadline=None)
@given(x=values_st, init=st.sampled_from(INITS))
def test_few_distinct_values_are_kept_exactly(x, init):
    distinct = np.unique(x)
    k = max(1, len(distinct)) + 3
    cb, labels = kmeans_1d(x, k, init=init)
    assert np.array_equal(cb, distinct)
    assert np.array_equal(cb[labels], x)


def test_empty_input():
    cb, labels = kmeans_1d(np.empty(0, np.float32), 8)
    assert cb.shape == (0,) and cb.dtype == np.float32
    assert labels.shape == (0,) and labels.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_input(dtype):
    cb, labels = kmeans_1d(np.full(100, 0.25, dtype), 32)
    assert cb.tolist() == [0.25]
    assert (labels == 0).all()


def test_all_zero_layer():
    cb, labels = kmeans_1d(np.zeros(10), 4)
    assert cb.tolist() == [0.0] and (labels == 0).all()


def test_16_values_k32_exact():
    x = np.random.default_rng(0).normal(size=16).astype(np.float32)
    for init in INITS:
        cb, labels = kmeans_1d(x, 32, init=init)
        assert len(cb) == 16
        assert np.array_equal(cb[labels], x)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("empty", EMPTY)
def test_288_values_k256(init, empty):
    x = np.random.default_rng(1).laplace(0, 0.1, 288).astype(np.float32)
    a = kmeans_1d(x, 256, init=init, empty=empty)
    b = kmeans_1d(x, 256, init=init, empty=empty)
    _check_invariants(x, 256, *a)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_seed_changes_random_init_only_via_seed():
    x = np.random.default_rng(2).laplace(size=5000).astype(np.float32)
    a = kmeans_1d(x, 16, init="random", seed=3, max_iter=2)
    b = kmeans_1d(x, 16, init="random", seed=3, max_iter=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_wcss_close_to_optimal_on_laplace(init):
    # 1e6 values as in the benchmark.  (With 1e5-2e5 values linear-init Lloyd can converge to a
    # local optimum 5-15% above the optimum: a lone extreme value keeps its own centroid.)
    x = np.random.default_rng(0).laplace(0, 0.05, 1_000_000).astype(np.float32)
    opt = wcss(x, *kmeans_1d(x, 32, init="optimal"))
    got = wcss(x, *kmeans_1d(x, 32, init=init))
    assert got <= opt * 1.03
    assert got >= opt * (1 - 1e-6)


def test_optimal_matches_exhaustive_small():
    # tiny problem: brute-force the optimal contiguous partition
    import itertools

    x = np.array([0.0, 0.1, 0.15, 1.0, 1.2, 3.0, 3.1, 7.0], dtype=np.float64)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), 2):
        parts = np.split(x, cuts)
        best = min(best, sum(((p - p.mean()) ** 2).sum() for p in parts))
    got = wcss(x, *kmeans_1d(x, 3, init="optimal"))
    assert got == pytest.approx(best, rel=1e-5)


def test_init_semantics_with_zero_iterations():
    x = np.random.default_rng(0).laplace(0, 0.05, 100_001).astype(np.float32)
    lin, _ = kmeans_1d(x, 16, init="linear", max_iter=0)
    # linear: evenly spaced in [min, max] (paper §3.2), rounded to float32
    assert lin[0] == x.min() and lin[-1] == x.max()
    np.testing.assert_allclose(np.diff(lin), (float(x.max()) - float(x.min())) / 15, rtol=1e-4)
    dens, _ = kmeans_1d(x, 16, init="density", max_iter=0)
    # density: quantiles at (i + 0.5) / k
    np.testing.assert_allclose(dens, np.quantile(x, (np.arange(16) + 0.5) / 16), atol=1e-3)
    assert np.abs(lin).max() > np.abs(dens).max()


def test_ties_go_to_lower_centroid():
    x = np.array([0.0, 1.0, 2.0, 0.0, 2.0], dtype=np.float32)
    cb, labels = kmeans_1d(x, 2, init="linear", max_iter=0)
    # linear init 0 and 2; 1.0 is equidistant -> lower centroid
    assert cb.tolist() == [0.0, 2.0]
    assert labels.tolist() == [0, 0, 1, 0, 1]


def test_int_and_float64_input():
    cb, labels = kmeans_1d(np.array([1, 2, 3, 10, 11, 12]), 2)
    assert cb.tolist() == [2.0, 11.0] and labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "values,k,exc",
    [
        (np.zeros(4), 0, ValueError),
        (np.zeros((2, 2)), 2, ValueError),
        (np.array([1.0, np.nan]), 2, ValueError),
        (np.array([1.0, np.inf]), 2, ValueError),
        (np.array([1e300, 0.0]), 2, ValueError),  # outside float32 range
        (np.array([1 + 1j]), 2, TypeError),
        (np.zeros(3), 2.5, TypeError),
    ],
)
def test_errors(values, k, exc):
    with pytest.raises(exc):
        kmeans_1d(values, k)


def test_unknown_init():
    with pytest.raises(ValueError, match="init"):
        kmeans_1d(np.arange(10.0), 2, init="bogus")
