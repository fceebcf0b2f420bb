"""Split-half reliability of a mean head ranking: how well two disjoint halves of the samples agree.

Each split draws two disjoint halves of h samples (a random permutation: the first h and the next h; an odd
sample is left out) and correlates the halves' mean importance over all heads; Spearman-Brown, 2 r / (1 + r),
projects that correlation of two h-sample means to the reliability of one 2h-sample mean. Unlike a subset
compared with the full set that contains it (1 by construction at n = N), disjoint halves share no sample, so a
pure-noise ranking gives ~0 and a noise-free one 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from headattr.stats.samples import as_per_sample
from headattr.stats.similarity import rowwise_pearson, rowwise_spearman

N_SPLITS = 200
COLUMNS = ["n", "half", "N", "n_splits", "metric", "half_median", "reliability", "lo", "hi"]


def spearman_brown(r, factor: float = 2.0):
    """Reliability of a ``factor`` times longer test from the reliability ``r``: k r / (1 + (k - 1) r)."""
    r = np.asarray(r, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return factor * r / (1 + (factor - 1) * r)


def split_half_reliability(
    per_sample, ns: Iterable[int] | None = None, n_splits: int = N_SPLITS, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Split-half agreement of the mean ranking for sample counts n (each 2h, h = n // 2 >= 1 per half).

    Long DataFrame, one row per (n, metric in spearman / pearson): n (= 2h), half (h), N, n_splits,
    half_median (median over splits of the two halves' correlation), reliability (Spearman-Brown of it: the
    reliability of an n-sample mean) and lo / hi (Spearman-Brown of the (1 - level) / 2 quantiles over splits:
    the spread over which samples land in which half, not a sampling interval). Default n: N (all samples).
    """
    x = as_per_sample(per_sample)
    n_total = x.shape[0]
    flat = x.reshape(n_total, -1)
    wanted = [n_total] if ns is None else [min(int(n), n_total) for n in ns]
    halves = sorted({n // 2 for n in wanted if n >= 2})
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    rows = []
    for h in halves:
        a, b = np.empty((n_splits, flat.shape[1])), np.empty((n_splits, flat.shape[1]))
        for s in range(n_splits):
            perm = rng.permutation(n_total)
            a[s], b[s] = flat[perm[:h]].mean(axis=0), flat[perm[h : 2 * h]].mean(axis=0)
        for metric, fn in (("spearman", rowwise_spearman), ("pearson", rowwise_pearson)):
            r = fn(a, b)
            r = r[np.isfinite(r)]
            if r.size:
                med, lo, hi = spearman_brown(np.quantile(r, [0.5, tail, 1 - tail]))
                half_median = float(np.median(r))
            else:
                med = lo = hi = half_median = np.nan
            rows.append(
                {
                    "n": 2 * h,
                    "half": h,
                    "N": n_total,
                    "n_splits": n_splits,
                    "metric": metric,
                    "half_median": half_median,
                    "reliability": float(med),
                    "lo": float(lo),
                    "hi": float(hi),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
