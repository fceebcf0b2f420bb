"""Which heads matter, and how sure: bootstrap intervals on each head's importance and rank, per-category
intervals, category-normalised importance, and how far two rankings agree beyond chance.

Importance here is "larger = more important" (the report's -IG after ``report.postprocess``), one row per
sample: x [N, M] for M heads. The bootstrap resamples samples within each category (the data are drawn
stratified by category, so every draw keeps the design's category mix); without categories it resamples all.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import hypergeom, rankdata

RANK_WITHIN = (None, "category")


def _categories(categories, n: int) -> np.ndarray:
    cats = np.asarray(["" for _ in range(n)] if categories is None else categories, dtype=object)
    if cats.shape != (n,):
        raise ValueError(f"need one category per sample: {cats.shape[0]} categories for {n} samples")
    return cats


def stratified_counts(categories: Sequence, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, N] how often each sample is drawn when every category's samples are resampled with replacement
    (category sizes kept)."""
    cats = np.asarray(categories, dtype=object)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, cats.size))
    for cat in pd.unique(cats):
        idx = np.flatnonzero(cats == cat)
        draws = rng.integers(0, idx.size, (n_boot, idx.size))
        for j, i in enumerate(idx):
            counts[:, i] = (draws == j).sum(axis=1)
    return counts


def _weighted_means(x: np.ndarray, weights: np.ndarray, cats: np.ndarray) -> dict:
    """Category -> [B, M] mean of x over each draw's copies of that category's samples (weights [B, N])."""
    out = {}
    for cat in pd.unique(cats):
        w = weights * (cats == cat)[None, :]
        out[cat] = (w @ x) / w.sum(axis=1, keepdims=True)
    return out


def importance_statistic(x, categories=None, rank_within=None, weights=None) -> np.ndarray:
    """Head importance [B, M] under sample weights [B, N] (None: each sample once -> [1, M]).

    rank_within None: the mean over samples. "category": every category's mean divided by that category's scale
    (mean |category mean| over heads), then averaged over categories with equal weight: each category counts
    the same whatever its loss scale (task items move the loss by nats, text items by tenths).
    """
    x = np.asarray(x, dtype=np.float64)
    cats = _categories(categories, x.shape[0])
    weights = np.ones((1, x.shape[0])) if weights is None else np.asarray(weights, dtype=np.float64)
    if rank_within is None:
        return (weights @ x) / weights.sum(axis=1, keepdims=True)
    if rank_within != "category":
        raise ValueError(f"report.rank_within: {rank_within!r} is not one of {list(RANK_WITHIN)}")
    parts = []
    for mean in _weighted_means(x, weights, cats).values():
        scale = np.abs(mean).mean(axis=1, keepdims=True)
        parts.append(np.divide(mean, scale, out=np.zeros_like(mean), where=scale > 0))
    return np.mean(parts, axis=0)


def ranks(values: np.ndarray) -> np.ndarray:
    """Rank of every head per row, 1 = most important (ties share the best rank)."""
    return rankdata(-np.atleast_2d(values), method="min", axis=1)


def bootstrap_heads(
    x,
    categories=None,
    k: int = 10,
    n_boot: int = 2000,
    seed: int = 0,
    rank_within=None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per head: importance and its percentile interval, rank (1 = top) and its interval, and ``selection``,
    the fraction of bootstrap draws in which the head is in the top k. Rows in head order."""
    x = np.asarray(x, dtype=np.float64)
    cats = _categories(categories, x.shape[0])
    estimate = importance_statistic(x, cats, rank_within)[0]
    draws = importance_statistic(x, cats, rank_within, stratified_counts(cats, n_boot, seed))
    draw_ranks = ranks(draws)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail], axis=0)
    rank_lo, rank_hi = np.percentile(draw_ranks, [tail, 100 - tail], axis=0, method="inverted_cdf")
    return pd.DataFrame(
        {
            "importance": estimate,
            "lo": lo,
            "hi": hi,
            "rank": ranks(estimate)[0],
            "rank_lo": rank_lo.astype(int),
            "rank_hi": rank_hi.astype(int),
            "selection": (draw_ranks <= k).mean(axis=0),
        }
    )


def category_intervals(x, categories, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per (category, head): the mean importance over the category's samples and its percentile interval
    (resampling that category's samples). Columns category, head, mean, lo, hi, n."""
    x = np.asarray(x, dtype=np.float64)
    cats = _categories(categories, x.shape[0])
    weights = stratified_counts(cats, n_boot, seed)
    means = _weighted_means(x, weights, cats)
    tail = 100 * (1 - level) / 2
    rows = []
    for cat, draws in means.items():
        lo, hi = np.percentile(draws, [tail, 100 - tail], axis=0)
        mean = x[cats == cat].mean(axis=0)
        n = int((cats == cat).sum())
        rows.append(pd.DataFrame({"category": cat, "head": np.arange(x.shape[1]), "mean": mean, "lo": lo, "hi": hi}))
        rows[-1]["n"] = n
    return pd.concat(rows, ignore_index=True)


def overlap_null_quantile(n: int, k: int, level: float = 0.95, n_groups: int = 1) -> float:
    """The ``level`` quantile of the random top-k overlap (shared / k) of two rankings of n items, averaged over
    n_groups independent groups (1: one ranking of all heads; L: the per-layer mean over L layers). Exact: the
    shared count is hypergeom(n, k, k) per group; the mean's law is the n_groups-fold convolution."""
    pmf = hypergeom(n, k, k).pmf(np.arange(k + 1))
    total = np.ones(1)
    for _ in range(n_groups):
        total = np.convolve(total, pmf)
    cdf = np.cumsum(total)
    shared_sum = int(np.searchsorted(cdf, level - 1e-12))
    return shared_sum / (k * n_groups)


def reproducible_k(a, b, level: float = 0.95) -> dict:
    """How far two importance vectors (larger = more important) agree on their top heads beyond chance.

    For every K < M: shared = |top-K(a) ∩ top-K(b)| and the null's ``level`` quantile of the shared count
    (hypergeom(M, K, K), random rankings). ``k_max``: the largest K whose overlap is above the quantile with the
    overlap above it at every K' <= K (0: not even the top head agrees beyond chance). A K whose quantile is K
    itself (M < 20 at K = 1: even equal top-K sets are not beyond chance) can neither pass nor break the run.
    ``first_miss``: K, shared and null_quantile where the run breaks (None: never); ``table``: every K.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    m = a.size
    order_a, order_b = np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")
    rows, k_max, above, first_miss = [], 0, True, None
    for k in range(1, m):
        shared = len(set(order_a[:k]) & set(order_b[:k]))
        quantile = int(hypergeom(m, k, k).ppf(level))
        testable = quantile < k
        if above and testable and shared <= quantile:
            first_miss = {"k": k, "shared": shared, "null_quantile": quantile}
        above = above and (shared > quantile or not testable)
        k_max = k if above and testable else k_max
        rows.append({"k": k, "shared": shared, "null_quantile": quantile, "above": shared > quantile})
    return {"k_max": k_max, "n_heads": m, "level": level, "first_miss": first_miss, "table": pd.DataFrame(rows)}


def topk_null_band(topk: pd.DataFrame, n_heads: int, n_layers: int, level: float = 0.95) -> pd.DataFrame:
    """The seed top-K table (scope per_layer / global, k) with null_lo / null_hi: the central ``level`` range of
    the random overlap (exact: per layer the mean of n_layers hypergeoms over n_heads, global one over all)."""
    tail = (1 - level) / 2
    lo, hi = [], []
    scopes = topk["scope"] if "scope" in topk else ["per_layer"] * len(topk)
    for scope, k in zip(scopes, topk["k"], strict=True):
        n, groups = (n_heads, n_layers) if scope == "per_layer" else (n_heads * n_layers, 1)
        lo.append(overlap_null_quantile(n, int(k), tail, groups))
        hi.append(overlap_null_quantile(n, int(k), 1 - tail, groups))
    return topk.assign(null_lo=lo, null_hi=hi)
