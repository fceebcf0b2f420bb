"""Null baselines and resampling: random top-K overlap, permutation tests, percentile and BCa bootstrap."""

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, hypergeom

from headattr.stats.mc_error import MC95, interval_mc_se, jackknife_acceleration, normal_ends


class PermutationResult(NamedTuple):
    observed: float
    null: np.ndarray
    p_value: float


def _check_nk(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")


def random_topk_overlap_expected(n: int, k: int) -> float:
    """Expected |A ∩ B| / k for two independent uniform k-subsets of n items: exactly k / n."""
    _check_nk(n, k)
    return k / n


def random_topk_overlap_distribution(n: int, k: int) -> pd.DataFrame:
    """Full null of the shared count of two random top-k sets out of n: hypergeom(M=n, n=k, N=k).

    Rows j = 0..k with columns n_shared, overlap (= j / k) and pmf.
    """
    _check_nk(n, k)
    j = np.arange(k + 1)
    return pd.DataFrame({"n_shared": j, "overlap": j / k, "pmf": hypergeom(n, k, k).pmf(j)})


def permutation_null(
    a, b, stat_fn: Callable[[np.ndarray, np.ndarray], float], n_perm: int = 1000, seed: int = 0
) -> PermutationResult:
    """One-sided permutation test of stat_fn(a, b), shuffling all elements of b (shape kept).

    p = (1 + #{null >= observed}) / (1 + n_perm); nan if the observed statistic is nan.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    observed = float(stat_fn(a, b))
    flat = b.ravel()
    null = np.array([stat_fn(a, rng.permutation(flat).reshape(b.shape)) for _ in range(n_perm)], dtype=float)
    p = float("nan") if np.isnan(observed) else (1 + int(np.sum(null >= observed))) / (1 + n_perm)
    return PermutationResult(observed, null, p)


def bootstrap_ci(
    data,
    stat_fn: Callable[[np.ndarray], float | np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    axis: int = 0,
) -> tuple:
    """Percentile bootstrap resampling `data` along `axis` (samples) with replacement.

    Returns (estimate, lo, hi): stat_fn on the full data and the (1 - level)/2 tails of the bootstrap
    distribution, ignoring nan draws. Works for scalar or array-valued statistics.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    data = np.asarray(data)
    n = data.shape[axis]
    rng = np.random.default_rng(seed)
    estimate = stat_fn(data)
    draws = np.array([stat_fn(np.take(data, rng.integers(0, n, n), axis=axis)) for _ in range(n_boot)])
    lo, hi = nan_percentile_interval(draws, level)
    return estimate, lo, hi


def nan_percentile_interval(draws, level: float = 0.95) -> tuple:
    """(lo, hi) percentiles along axis 0 ignoring nan; nan where every draw is nan (no warning)."""
    draws = np.asarray(draws, dtype=float)
    tail = 100 * (1 - level) / 2
    finite = np.isfinite(draws)
    filled = np.where(finite, draws, np.nan)
    if finite.all():
        lo, hi = np.percentile(filled, [tail, 100 - tail], axis=0)
    else:
        any_finite = finite.any(axis=0)
        safe = np.where(any_finite, filled, 0.0)
        lo, hi = np.nanpercentile(safe, [tail, 100 - tail], axis=0)
        lo, hi = np.where(any_finite, lo, np.nan), np.where(any_finite, hi, np.nan)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


class BootstrapInterval(NamedTuple):
    """Per statistic: estimate on the full data, interval lo/hi, the method that gave it, the bootstrap
    bias (mean draw - estimate) and the Monte-Carlo error of each end (half-width of a 95 % Monte-Carlo interval,
    :mod:`headattr.stats.mc_error`; 0 where the draws are constant)."""

    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    method: list[str]
    bias: np.ndarray
    mc_lo: np.ndarray
    mc_hi: np.ndarray


BCA = "BCa"
NORMAL = "normal"
NORMAL_FISHER = "normal (Fisher z)"
N_BOOT = 2000  # at 200 draws a BCa end at level ~0.998 is the largest draw; 2,000 keeps ends inside the draws


def bca_interval(
    sizes: Sequence[int],
    stat_fn: Callable[..., Sequence[float]],
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    fisher: bool | Sequence[bool] = False,
) -> BootstrapInterval:
    """Bias-corrected and accelerated (BCa) bootstrap intervals that always contain their estimate.

    ``stat_fn(*idx)`` gets one int index array per independent sample (sizes ``sizes``, resampled with
    replacement by ``scipy.stats.bootstrap``) and returns m statistics. BCa corrects the median bias of the
    draws, but only while the estimate lies inside the central ``level`` of them (|z0| < z_(1+level)/2);
    beyond that (or where BCa is undefined, e.g. constant draws, or collapses to a point on discrete draws that
    spread) the interval is the normal one,
    estimate +- z * bootstrap SE, on Fisher's z scale when ``fisher`` (correlations: it stays in [-1, 1]; one
    flag for all statistics or one per statistic). ``method`` says which, per statistic; ``mc_lo`` / ``mc_hi``
    the Monte-Carlo error of the ends (:func:`headattr.stats.mc_error.interval_mc_se`, times 1.96).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    full = tuple(np.arange(int(n)) for n in sizes)
    estimate = np.atleast_1d(np.asarray(stat_fn(*full), dtype=float))
    if min(sizes) < 2:  # nothing to resample
        nan = np.full(estimate.shape, np.nan)
        return BootstrapInterval(estimate, nan, nan.copy(), ["n/a"] * estimate.size, *(nan.copy() for _ in range(3)))

    def statistic(*idx):
        return np.asarray(stat_fn(*(np.asarray(i).astype(int) for i in idx)), dtype=float)

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = bootstrap(
            full,
            statistic,
            n_resamples=n_boot,
            vectorized=False,
            paired=False,
            confidence_level=level,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    lo = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=float))
    hi = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=float))
    draws = np.asarray(res.bootstrap_distribution, dtype=float).reshape(estimate.size, -1)
    ok = np.isfinite(lo) & np.isfinite(hi) & (lo <= estimate) & (estimate <= hi)
    fz = np.broadcast_to(np.asarray(fisher, dtype=bool), estimate.shape)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bias = np.nanmean(draws, axis=1) - estimate
        spread = np.nanstd(draws, axis=1, ddof=1)
    constant = np.all(draws == draws[:, :1], axis=1)  # std of equal floats can round to a few ulp, not 0
    spread = np.where(np.isfinite(spread) & ~constant, spread, 0.0)
    ok &= (hi > lo) | (spread == 0)  # BCa collapsed onto a point mass of the draws although they spread
    normal_lo, normal_hi = normal_ends(draws, estimate, level, fz)
    lo = np.where(ok, lo, np.where(spread == 0, estimate, normal_lo))  # constant draws: the estimate
    hi = np.where(ok, hi, np.where(spread == 0, estimate, normal_hi))
    method = [
        BCA if good else (NORMAL_FISHER if f else NORMAL) if np.isfinite(e) else "n/a"
        for good, e, f in zip(ok, estimate, fz, strict=True)
    ]
    accel = jackknife_acceleration([int(n) for n in sizes], statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        se_lo, se_hi = interval_mc_se(draws, estimate, accel, level, ok, fz, seed=seed)
    zero = spread == 0
    mc_lo, mc_hi = np.where(zero, 0.0, MC95 * se_lo), np.where(zero, 0.0, MC95 * se_hi)
    return BootstrapInterval(estimate, lo, hi, method, bias, mc_lo, mc_hi)
