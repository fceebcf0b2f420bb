"""Monte-Carlo error of bootstrap interval ends: how far an end would move on another set of bootstrap draws.

A BCa end is a percentile of the B draws at a level that itself depends on the draws (the bias correction z0
counts the draws below the estimate); a normal end is the estimate +- z * the draws' SD. Both are functions of
the B independent draws, so their Monte-Carlo error is estimated by resampling the draws (a second-level
bootstrap of the draws: no new statistic evaluations) and recomputing the same end, with the same jackknife
acceleration, ``n_rep`` times: the SD of the recomputed ends is the end's Monte-Carlo standard error, and
``MC95`` times it the half-width of a 95 % Monte-Carlo interval (what the tables call ``mc_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import norm

MC95 = float(norm.ppf(0.975))
N_REP = 200


def jackknife_acceleration(sizes: Sequence[int], statistic: Callable[..., np.ndarray]) -> np.ndarray:
    """BCa acceleration per statistic from leave-one-out jackknife values, each independent sample in turn
    (Efron & Tibshirani eq. 14.15, summed over samples as scipy.stats.bootstrap does)."""
    full = [np.arange(int(n)) for n in sizes]
    nums, dens = 0.0, 0.0
    for j, n in enumerate(sizes):
        values = []
        for i in range(int(n)):
            idx = list(full)
            idx[j] = np.delete(full[j], i)
            values.append(np.asarray(statistic(*idx), dtype=float))
        theta = np.stack(values, axis=-1)  # [m, n]
        u = (n - 1) * (theta.mean(axis=-1, keepdims=True) - theta)
        nums = nums + (u**3).sum(axis=-1) / n**3
        dens = dens + (u**2).sum(axis=-1) / n**2
    with np.errstate(all="ignore"):
        return np.asarray(nums / (6 * dens**1.5), dtype=float)


def _row_percentile(sorted_rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.percentile(row, 100 q) (linear) of each sorted row, one level per row."""
    b = sorted_rows.shape[-1]
    pos = np.clip(np.nan_to_num(q, nan=0.0), 0, 1) * (b - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, b - 1)
    rows = np.arange(sorted_rows.shape[0])
    frac = pos - low
    out = sorted_rows[rows, low] * (1 - frac) + sorted_rows[rows, high] * frac
    return np.where(np.isfinite(q), out, np.nan)


def bca_ends(draws, estimate, accel, level: float) -> tuple[np.ndarray, np.ndarray]:
    """BCa ends from draws [m, B], the full-data estimate [m] and acceleration [m], by scipy.stats.bootstrap's
    rule (z0 from the draws' percentile of the estimate, 'mean' kind; ends = linear percentiles)."""
    draws = np.asarray(draws, dtype=float)
    est = np.asarray(estimate, dtype=float)[:, None]
    pct = ((draws < est).sum(axis=1) + (draws <= est).sum(axis=1)) / (2 * draws.shape[1])
    with np.errstate(all="ignore"):
        z0 = ndtri(pct)
        z = ndtri((1 - level) / 2)
        ends = []
        for zz in (z, -z):
            num = z0 + zz
            ends.append(ndtr(z0 + num / (1 - accel * num)))
    s = np.sort(draws, axis=1)
    return _row_percentile(s, ends[0]), _row_percentile(s, ends[1])


def normal_ends(draws, estimate, level: float, fisher) -> tuple[np.ndarray, np.ndarray]:
    """estimate +- z * SD of the finite draws, on Fisher's z scale where ``fisher`` (per statistic)."""
    lim = 1 - 1e-12
    fz = np.broadcast_to(np.asarray(fisher, dtype=bool), np.shape(estimate))

    def to_z(x):
        x = np.asarray(x, dtype=float)
        return np.where(fz.reshape(fz.shape + (1,) * (x.ndim - 1)), np.arctanh(np.clip(x, -lim, lim)), x)

    with np.errstate(all="ignore"):
        zd = np.where(np.isfinite(draws), to_z(draws), np.nan)
        se = np.nanstd(zd, axis=1, ddof=1)
    half = norm.ppf(0.5 + level / 2) * np.nan_to_num(se)
    centre = to_z(estimate)
    return np.where(fz, np.tanh(centre - half), centre - half), np.where(fz, np.tanh(centre + half), centre + half)


def interval_mc_se(
    draws, estimate, accel, level: float, use_bca, fisher, n_rep: int = N_REP, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo SE of each (lo, hi) end: SD over ``n_rep`` resamples of the B draws of the end recomputed by
    the rule the statistic used (BCa where ``use_bca``, else normal); 0 for constant draws."""
    draws = np.asarray(draws, dtype=float)
    m, b = draws.shape
    use = np.asarray(use_bca, dtype=bool)
    rng = np.random.default_rng(seed)
    lows, highs = np.empty((n_rep, m)), np.empty((n_rep, m))
    for r in range(n_rep):
        d = draws[:, rng.integers(0, b, b)]
        bl, bh = bca_ends(d, estimate, accel, level)
        nl, nh = normal_ends(d, estimate, level, fisher)
        lows[r], highs[r] = np.where(use, bl, nl), np.where(use, bh, nh)
    with np.errstate(all="ignore"):
        return np.nanstd(lows, axis=0, ddof=1), np.nanstd(highs, axis=0, ddof=1)
