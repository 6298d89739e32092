"""One-dimensional k-means for weight sharing (Deep Compression, Han et al. ICLR 2016, §3).

Deep Compression shares weights *within* one layer: the layer's (surviving) weights are clustered
with 1-D k-means minimising the within-cluster sum of squares (WCSS, paper Eq. 1), every weight is
replaced by an index into a small codebook of ``k`` centroids, and the centroids are later fine-tuned
(§3.3).  §3.2 compares three centroid initialisations -- Forgy (random), density-based and linear --
and finds **linear** (centroids evenly spaced in ``[min, max]``) best, because it keeps centroids
for the rare but important large-magnitude weights.  Linear is therefore the default here.

Algorithm
---------
The values are sorted once and collapsed to their distinct values with multiplicities.  Lloyd's
algorithm then runs on that sorted, weighted representation: the Voronoi boundaries of sorted
centroids are the midpoints between neighbours, located with :func:`numpy.searchsorted`, and the
cluster means are differences of prefix sums.  An iteration therefore costs ``O(k log n)`` and the
whole run is dominated by the initial sort (about 1 s for 1e7 float32 values on one core).

Initialisations (``init=``)
---------------------------
``"linear"``    ``k`` centroids evenly spaced in ``[min, max]`` (paper default, §3.2).
``"density"``   quantiles of the empirical CDF at levels ``(i + 0.5) / k`` (paper's density-based).
``"random"``    Forgy: ``k`` distinct data values drawn without replacement, probability
                proportional to multiplicity, from ``numpy.random.default_rng(seed)``.
``"kmeans++"``  D² sampling (Arthur & Vassilvitskii 2007) with ``default_rng(seed)``, implemented with
                per-Voronoi-cell sums so that it stays fast for 1e7 values.
``"optimal"``   the exact 1-D optimum from Ckmeans.1d.dp (package ``ckwrap``) on the distinct values
                weighted by multiplicity; when there are more than 65,536 distinct values it is run on a
                65,536-bin histogram (bin means weighted by counts), which is within ~1e-5 of optimal.
                Lloyd iterations follow (they can only lower the WCSS).

Empty clusters (``empty=``)
---------------------------
``"drop"`` (default)  an empty centroid keeps its position (it may capture values again in a later
                      iteration); centroids still empty at the end are removed, so ``k' <= k``.
                      This is plain Lloyd and keeps the linear initialisation's tail centroids
                      wherever they hold at least one value.
``"reseed"``          after each update, every empty (or missing, e.g. after duplicate density
                      quantiles) centroid is moved to the data value with the largest squared error
                      (in 1-D this is an endpoint of some cluster); ties broken by position.  This
                      lowers the WCSS markedly at large ``k`` with linear init.
Both are deterministic.

Quality (bench/kmeans.py, Laplace data)
---------------------------------------
At k=32 every init reaches within 0.1% of the optimal WCSS on 1e6-1e7 values; on 1e5-2e5 values
linear-init Lloyd can stop in a local optimum 5-15% above it (a lone extreme value keeps a centroid).
At k=256 linear init leaves tail clusters empty (k' ~ 206-226) and its WCSS is 1.8-3.7x optimal;
``"optimal"`` or ``"kmeans++"`` minimise WCSS, but the paper's point is accuracy, not WCSS.

Guarantees of the result
------------------------
* ``codebook`` is float32, sorted strictly ascending, NaN-free and every entry is used by some label.
* ``labels`` is int64 with ``0 <= labels < len(codebook)``; ``values[i]`` is assigned to the nearest
  float32 centroid (distances computed in float64), ties going to the lower centroid.
* ``len(codebook) <= min(k, number of distinct values)``.  If there are at most ``k`` distinct
  values the codebook is exactly those values (exact for float32 input; float64 input is rounded to
  float32 and de-duplicated), so nothing is lost.
* Identical inputs and ``seed`` give identical outputs.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["kmeans_1d", "wcss", "INITS", "HISTOGRAM_BINS"]

#: Initialisation methods accepted by :func:`kmeans_1d`.
INITS = ("linear", "density", "random", "kmeans++", "optimal")
#: Number of histogram bins used by ``init="optimal"`` when there are more distinct values.
HISTOGRAM_BINS = 65536
_EMPTY_POLICIES = ("drop", "reseed")


def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str = "linear",
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-9,
    empty: str = "drop",
    sample_weight: np.ndarray | None = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into at most ``k`` centroids with Lloyd's algorithm (paper §3.1).

    Parameters
    ----------
    values:
        1-D array of real numbers (float32 or float64; integer arrays are accepted and converted),
        shape ``(n,)``.  ``n == 0`` is allowed.
    k:
        Maximum number of clusters, ``k >= 1`` (``2**bits`` in the paper: e.g. 32 for 5-bit fc
        layers, 256 for 8-bit conv layers).
    init:
        Centroid initialisation, one of :data:`INITS` (see the module docstring; ``"linear"`` is the
        paper's choice, §3.2).
    seed:
        Seed for ``numpy.random.default_rng``; used by ``"random"`` and ``"kmeans++"`` only.
    max_iter:
        Maximum number of Lloyd iterations (``>= 0``; 0 returns the initialisation, relabelled).
        Default 10,000: an iteration costs only ``O(k log n)``, and 1-D Lloyd converges slowly
        (linear init, k=32, 1e6 Laplace values: 1.043x the optimal WCSS after 300 iterations,
        1.000004x at its fixed point after ~3,000).
    tol:
        Stop when the largest centroid move is ``<= tol * (max(values) - min(values))``.  Lloyd also
        stops as soon as no value changes cluster (an exact fixed point).
    empty:
        ``"drop"`` or ``"reseed"``: empty-cluster policy, see the module docstring.
    sample_weight:
        Optional non-negative finite weights, shape ``(n,)``: the WCSS becomes
        ``sum_i sample_weight[i] * (values[i] - c(i))**2`` (Hessian-weighted k-means, Choi et al.,
        ICLR 2017, Eq. 8, with the Hessian's diagonal as the weights).  Every init and the Lloyd
        updates use them; assignment stays to the nearest centroid.  Values whose weights are all 0
        still get a label but pull no centroid.  ``None`` = all 1 (plain k-means).

    Returns
    -------
    codebook:
        float32 array of shape ``(k',)``, ``k' <= k``, sorted strictly ascending, no NaN, every
        entry used.  ``k' == 0`` iff ``n == 0``.
    labels:
        int64 array of shape ``(n,)`` with ``0 <= labels < k'``; ``codebook[labels]`` is the
        quantised array.  Each value is assigned to its nearest centroid (ties -> lower index).

    Raises
    ------
    ValueError
        ``k < 1``, ``values`` not 1-D, non-finite values (NaN/inf), values beyond the float32
        range (the codebook is float32), unknown ``init``/``empty``,
        ``max_iter < 0`` or ``tol < 0``, ``sample_weight`` of another shape, negative or non-finite.
    TypeError
        ``values`` of a non-real dtype (complex, object, bool, str) or ``k`` not an integer.
    ImportError
        ``init="optimal"`` without the ``ckwrap`` package (``pip install ckwrap``).
    """
    x = _validate(values, k, init, max_iter, tol, empty)
    n = x.shape[0]
    sw = _validate_weights(sample_weight, n)
    if n == 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    k = int(k)
    if sw is not None:
        return _weighted(x, sw, k, init, seed, max_iter, tol, empty)

    xs = np.sort(x)
    change = xs[1:] != xs[:-1]
    n_distinct = int(np.count_nonzero(change)) + 1
    if n_distinct <= k or 2 * n_distinct <= n:
        # collapse to distinct values with multiplicities (exact, and smaller)
        starts = np.flatnonzero(np.concatenate(([True], change)))
        u = xs[starts]
        w = np.diff(np.append(starts, n)).astype(np.float64)
    else:
        u, w = xs, None  # mostly distinct: unit weights, no copy
    del change

    if n_distinct <= k:
        centroids = u.astype(np.float64)
    else:
        u64 = u.astype(np.float64)
        c0 = _init_centroids(u64, w, k, init, seed)
        centroids = _lloyd(u64, w, c0, k, max_iter, tol, empty)
        del u64
    return _finalize(x, u, centroids)


def wcss(values: np.ndarray, codebook: np.ndarray, labels: np.ndarray) -> float:
    """Within-cluster sum of squares ``sum_i (values[i] - codebook[labels[i]])**2`` in float64.

    Shapes: ``values`` ``(n,)``, ``codebook`` ``(k',)``, ``labels`` ``(n,)`` integer.  Units: squared
    units of ``values``.  Returns 0.0 for ``n == 0``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0
    d = v - np.asarray(codebook, dtype=np.float64)[np.asarray(labels)]
    return float(np.dot(d, d))


# --------------------------------------------------------------------------------------------------
# helpers


def _validate(values, k, init, max_iter, tol, empty) -> np.ndarray:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if empty not in _EMPTY_POLICIES:
        raise ValueError(f"unknown empty-cluster policy {empty!r}; expected one of {_EMPTY_POLICIES}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    x = np.asarray(values)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"values must have a real numeric dtype, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64 if x.dtype.itemsize > 4 else np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError("values contain NaN or infinity")
    if x.dtype == np.float64 and x.size and np.abs(x).max() > np.finfo(np.float32).max:
        raise ValueError("values exceed the float32 range; the codebook is float32")
    return x


def _validate_weights(sample_weight, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) like values, got {sw.shape}")
    if n and (not np.isfinite(sw).all() or (sw < 0).any()):
        raise ValueError("sample_weight must be finite and >= 0")
    return sw


def _weighted(x: np.ndarray, sw: np.ndarray, k: int, init: str, seed: int, max_iter: int, tol: float,
              empty: str) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`kmeans_1d` with sample weights: distinct values carry the sum of their weights."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    u = xs[starts]
    w = np.add.reduceat(sw[order], starts)
    live = w > 0
    if not live.any():  # no weight anywhere: plain k-means
        return kmeans_1d(x, k, init=init, seed=seed, max_iter=max_iter, tol=tol, empty=empty)
    uw, ww = u[live].astype(np.float64), w[live]
    if uw.shape[0] <= k:
        centroids = uw
    else:
        c0 = _init_centroids(uw, ww, k, init, seed)
        centroids = _lloyd(uw, ww, c0, k, max_iter, tol, empty)
    return _finalize(x, u, centroids)


def _init_centroids(u: np.ndarray, w: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Initial centroids (float64, sorted, distinct) for distinct sorted ``u`` with weights ``w``.

    Requires ``len(u) > k``.  May return fewer than ``k`` centroids (duplicates removed).
    """
    lo, hi = u[0], u[-1]
    n = u.shape[0]
    if init == "linear":
        c = np.linspace(lo, hi, k)
    elif init == "density":
        total = float(n) if w is None else float(w.sum())
        levels = (np.arange(k) + 0.5) / k * total
        if w is None:
            idx = np.floor(levels).astype(np.int64)
        else:
            idx = np.searchsorted(np.cumsum(w), levels, side="right")
        c = u[np.minimum(idx, n - 1)]
    elif init == "random":
        rng = np.random.default_rng(seed)
        if w is not None:  # distinct values: weight by multiplicity
            c = u[rng.choice(n, size=k, replace=False, p=w / w.sum())]
        else:  # raw samples (may repeat a value): draw more until k distinct values
            c = np.unique(u[rng.choice(n, size=k, replace=False)])
            for _ in range(64):
                if c.shape[0] >= k:
                    break
                extra = u[rng.choice(n, size=k - c.shape[0], replace=False)]
                c = np.unique(np.concatenate((c, extra)))
    elif init == "kmeans++":
        c = _kmeanspp(u, np.ones(n) if w is None else w, k, np.random.default_rng(seed))
    else:  # optimal
        c = _optimal(u, np.ones(n) if w is None else w, k)
    return np.unique(c)


def _kmeanspp(u: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ D² seeding on weighted sorted distinct values.

    Keeps the Voronoi cells of the chosen centres (slices of ``u``) and each cell's sum of
    ``w * d²``; a new centre only changes its own cell and its two neighbours', so a step costs
    ``O(k + cell sizes)`` instead of ``O(n)``.
    """
    n = u.shape[0]
    first = int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))
    centers = [u[min(first, n - 1)]]
    d2 = (u - centers[0]) ** 2
    wd2 = w * d2
    cell_sums = [float(wd2.sum())]
    bounds = [0, n]  # cell j is u[bounds[j]:bounds[j+1]]

    for _ in range(1, k):
        total = float(sum(cell_sums))
        if not total > 0:
            break
        r = rng.random() * total
        cs = np.cumsum(cell_sums)
        j = min(int(np.searchsorted(cs, r, side="right")), len(cell_sums) - 1)
        a, b = bounds[j], bounds[j + 1]
        r_local = r - (cs[j - 1] if j > 0 else 0.0)
        local = np.cumsum(wd2[a:b])
        i = a + min(int(np.searchsorted(local, r_local, side="right")), b - a - 1)
        if d2[i] == 0.0:  # rounding landed on a centre: take the cell's farthest point instead
            i = a + int(np.argmax(d2[a:b]))
            if d2[i] == 0.0:
                break
        c_new = u[i]
        p = int(np.searchsorted(np.asarray(centers), c_new))
        centers.insert(p, c_new)
        # recompute the boundaries of cells p-1, p, p+1 (the new centre and its neighbours)
        carr = np.asarray(centers)
        mids = (carr[:-1] + carr[1:]) * 0.5
        bounds = [0, *np.searchsorted(u, mids, side="right").tolist(), n]
        a_new, b_new = bounds[p], bounds[p + 1]
        d2[a_new:b_new] = (u[a_new:b_new] - c_new) ** 2
        wd2[a_new:b_new] = w[a_new:b_new] * d2[a_new:b_new]
        cell_sums.insert(p, 0.0)
        for q in (p - 1, p, p + 1):
            if 0 <= q < len(centers):
                cell_sums[q] = float(wd2[bounds[q]:bounds[q + 1]].sum())
    return np.asarray(centers, dtype=np.float64)


def _optimal(u: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    try:
        import ckwrap  # lazy: optional dependency
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError(
            "init='optimal' needs the ckwrap package (Ckmeans.1d.dp): pip install ckwrap "
            "(or pip install 'dccomp[optimal]')"
        ) from e
    if u.shape[0] > HISTOGRAM_BINS:
        edges = np.linspace(u[0], u[-1], HISTOGRAM_BINS + 1)
        b = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, HISTOGRAM_BINS - 1)
        cnt = np.bincount(b, weights=w, minlength=HISTOGRAM_BINS)
        s = np.bincount(b, weights=w * u, minlength=HISTOGRAM_BINS)
        nz = cnt > 0
        xu = np.clip(s[nz] / cnt[nz], u[0], u[-1])
        wu = cnt[nz]
        xu, inv = np.unique(xu, return_inverse=True)  # bin means are sorted; guard equal ones
        wu = np.bincount(inv, weights=wu)
    else:
        xu, wu = u, w
    kk = min(k, xu.shape[0])
    if kk == xu.shape[0]:
        return xu.copy()
    res = ckwrap.ckmeans(xu, kk, weights=wu)
    return np.asarray(res.centers, dtype=np.float64)


def _lloyd(u, w, c, k, max_iter, tol, empty) -> np.ndarray:
    """Weighted Lloyd iterations on sorted distinct ``u``; returns sorted non-empty centroids."""
    n = u.shape[0]
    shift = 0.5 * (u[0] + u[-1])  # centre the data: prefix sums lose less precision
    uc = u - shift
    c = c - shift
    if w is None:
        cw = np.arange(n + 1, dtype=np.float64)
        cwx = np.concatenate(([0.0], np.cumsum(uc)))
    else:
        cw = np.concatenate(([0.0], np.cumsum(w)))
        cwx = np.concatenate(([0.0], np.cumsum(w * uc)))
    thresh = tol * (u[-1] - u[0])
    prev_edges = None

    def partition(cent):
        edges = np.searchsorted(uc, (cent[:-1] + cent[1:]) * 0.5, side="right")
        st = np.concatenate(([0], edges))
        en = np.concatenate((edges, [n]))
        return edges, st, en

    for _ in range(max_iter):
        edges, st, en = partition(c)
        if prev_edges is not None and np.array_equal(edges, prev_edges):
            break
        prev_edges = edges
        cnt = cw[en] - cw[st]
        nonempty = en > st
        means = np.divide(cwx[en] - cwx[st], cnt, out=c.copy(), where=nonempty)
        # guard against rounding: a mean lies within its cluster's value range
        lo = uc[np.minimum(st, n - 1)]
        hi = uc[np.maximum(en - 1, 0)]
        new = np.where(nonempty, np.clip(means, lo, hi), c)
        n_missing = k - int(nonempty.sum())
        if empty == "reseed" and n_missing > 0:
            kept = new[nonempty]
            reseeded = _reseed(uc, st[nonempty], en[nonempty], kept, n_missing)
            if reseeded.shape[0] > kept.shape[0]:
                c = reseeded
                prev_edges = None
                continue
        moved = np.max(np.abs(new - c))
        c = new
        if moved <= thresh:
            break

    # keep only centroids that own at least one value under the final partition
    _, st, en = partition(c)
    return c[en > st] + shift


def _reseed(uc, st, en, cent, m) -> np.ndarray:
    """Add up to ``m`` centroids at the values with the largest squared error (cluster endpoints)."""
    cand = np.concatenate((st, en - 1))
    err = (uc[cand] - np.concatenate((cent, cent))) ** 2
    order = np.lexsort((cand, -err))  # largest error first, ties by position
    cand, err = cand[order], err[order]
    cand = cand[err > 0]
    _, first = np.unique(cand, return_index=True)
    cand = cand[np.sort(first)][:m]
    return np.sort(np.concatenate((cent, uc[cand])))


def _finalize(x: np.ndarray, u: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Round centroids to float32, assign each value to its nearest one, drop unused entries.

    ``u`` is ``x`` sorted (possibly de-duplicated), in ``x``'s dtype.  Nearest-centroid assignment is
    monotone in the value, so it is fixed by one threshold per boundary: the largest value of ``u``
    that goes to the lower centroid, found by searchsorted on the midpoint and then checked against
    the actual float64 distances (so midpoint rounding cannot misassign).  Labels then come from one
    searchsorted of ``x`` against those thresholds, which are values of ``x``'s own dtype (exact).
    """
    cb = np.unique(np.asarray(centroids, dtype=np.float32))
    m = u.shape[0]
    if cb.shape[0] == 1:
        return cb, np.zeros(x.shape[0], dtype=np.int64)
    c64 = cb.astype(np.float64)
    lo_c, hi_c = c64[:-1], c64[1:]
    u64 = u.astype(np.float64, copy=False)
    e = np.searchsorted(u64, (lo_c + hi_c) * 0.5, side="right")  # u[:e_j] -> clusters <= j

    def goes_low(v):  # nearest of the two neighbouring centroids is the lower one (ties -> lower)
        return np.abs(v - lo_c) <= np.abs(v - hi_c)

    for _ in range(64):
        prev = e.copy()
        below = np.maximum(e - 1, 0)
        bad_below = (e > 0) & ~goes_low(u64[below])
        e = np.where(bad_below, np.searchsorted(u64, u64[below], side="left"), e)
        above = np.minimum(e, m - 1)
        bad_above = (e < m) & goes_low(u64[above])
        e = np.where(bad_above, np.searchsorted(u64, u64[above], side="right"), e)
        if np.array_equal(e, prev):
            break
    e = np.maximum.accumulate(e)
    bounds = np.concatenate(([0], e, [m]))
    used = bounds[1:] > bounds[:-1]
    cb = cb[used]
    e_used = bounds[1:][used][:-1]  # end of each used cluster except the last; all >= 1
    thresholds = u[e_used - 1]
    labels = np.searchsorted(thresholds, x, side="left").astype(np.int64, copy=False)
    return cb, labels
