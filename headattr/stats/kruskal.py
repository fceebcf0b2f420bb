"""Kruskal-Wallis H for many variables at once, with a p-value valid for small groups.

The chi-square approximation of H is only trustworthy when every group has >= 5 samples; with 3 per group
it is far too conservative. Below that, the p-value is a permutation p over group labels: exact
(every distinct relabelling) when there are at most `n_resamples` of them, else Monte Carlo with the
(count + 1) / (n + 1) estimator, the same conventions as scipy.stats.permutation_test."""

import math
from collections.abc import Iterator, Sequence
from itertools import combinations

import numpy as np
from scipy.stats import chi2, rankdata

CHI2_MIN_GROUP = 5
N_RESAMPLES = 9999


def _rank_sums_stat(ranks: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """sum_g R_g^2 / n_g for label vectors [P, N] and ranks [N, M] -> [P, M]."""
    onehot = labels[:, None, :] == np.arange(len(sizes))[None, :, None]
    sums = onehot.astype(float) @ ranks
    return (sums**2 / sizes[None, :, None]).sum(axis=1)


def _distinct_labellings(sizes: Sequence[int]) -> Iterator[np.ndarray]:
    """Every assignment of len(sizes) group labels with those sizes to sum(sizes) positions."""
    n = int(sum(sizes))

    def fill(free: tuple, g: int, out: np.ndarray):
        if g == len(sizes) - 1:
            out[list(free)] = g
            yield out.copy()
            return
        for combo in combinations(free, sizes[g]):
            out[list(combo)] = g
            rest = tuple(i for i in free if i not in combo)
            yield from fill(rest, g + 1, out)

    yield from fill(tuple(range(n)), 0, np.zeros(n, dtype=int))


def n_labellings(sizes: Sequence[int]) -> int:
    """Number of distinct relabellings: the multinomial N! / prod n_g!."""
    return math.factorial(int(sum(sizes))) // math.prod(math.factorial(int(s)) for s in sizes)


def kruskal_columns(groups: Sequence[np.ndarray], n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """H and p per column of groups [n_g, M] (no column constant over all samples).

    Returns statistic [M], pvalue [M] and method ('chi2', 'exact' or 'permutation'). H has the tie correction
    (as scipy.stats.kruskal); the permutation compares the tie-free rank-sum part, which orders relabellings
    the same way since the correction does not depend on the labels.
    """
    sizes = np.array([len(g) for g in groups])
    pooled = np.concatenate(groups)
    n = pooled.shape[0]
    ranks = rankdata(pooled, axis=0)
    observed_labels = np.repeat(np.arange(len(sizes)), sizes)[None, :]
    observed = _rank_sums_stat(ranks, observed_labels, sizes)[0]
    ties = 1.0 - _tie_term(ranks) / (n**3 - n)
    stat = (12.0 / (n * (n + 1)) * observed - 3 * (n + 1)) / ties
    if sizes.min() >= CHI2_MIN_GROUP:
        return {"statistic": stat, "pvalue": chi2.sf(stat, len(sizes) - 1), "method": "chi2"}
    gamma = np.abs(1e-14 * observed)
    if n_labellings(sizes) <= n_resamples:
        count = np.zeros_like(observed)
        total = 0
        batch = []
        for labels in _distinct_labellings(sizes.tolist()):
            batch.append(labels)
            if len(batch) == 4096:
                count += (_rank_sums_stat(ranks, np.stack(batch), sizes) >= observed - gamma).sum(axis=0)
                total += len(batch)
                batch = []
        if batch:
            count += (_rank_sums_stat(ranks, np.stack(batch), sizes) >= observed - gamma).sum(axis=0)
            total += len(batch)
        return {"statistic": stat, "pvalue": count / total, "method": "exact"}
    rng = np.random.default_rng(seed)
    count = np.zeros_like(observed)
    for start in range(0, n_resamples, 2048):
        m = min(2048, n_resamples - start)
        labels = np.stack([rng.permutation(observed_labels[0]) for _ in range(m)])
        count += (_rank_sums_stat(ranks, labels, sizes) >= observed - gamma).sum(axis=0)
    return {"statistic": stat, "pvalue": (count + 1) / (n_resamples + 1), "method": "permutation"}


def _tie_term(ranks: np.ndarray) -> np.ndarray:
    """sum over tie groups of (t^3 - t) per column."""
    out = np.zeros(ranks.shape[1])
    for j in range(ranks.shape[1]):
        _, t = np.unique(ranks[:, j], return_counts=True)
        out[j] = (t.astype(float) ** 3 - t).sum()
    return out
