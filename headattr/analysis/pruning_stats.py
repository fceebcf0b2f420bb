"""Uncertainty of held-out AOPC: bootstrap intervals over samples and random orders, the random orders' quantile
band and a Monte-Carlo permutation p of a ranked order against random orders.

Per-sample AOPC ``a[s]`` (mean over fractions > 0 of loss_s(f) - loss_s(0)) averages to the curve's AOPC, so every
statistic here works on ``ranked [N]`` (one order's per-sample AOPC) and ``random [R, N]`` (R random orders).

- ``aopc_lo``/``aopc_hi``: percentile interval of mean(a[s*]) over ``n_boot`` resamples s* of the samples;
- ``aopc_vs_random_lo``/``_hi``: of mean(a[s*]) - mean(random[r*, s*]), samples and orders resampled together
  (the same s* for both terms: the comparison is paired by sample);
- ``random_q025``/``random_q975``: the (1 - level) / 2 and (1 + level) / 2 quantiles of the R orders' AOPC;
- ``p_vs_random``: (1 + #{r: random order r is at least as good as the ranked one}) / (R + 1), one-sided in the
  order's own direction (most first should hurt more than random, least first less): the p of "this order is one
  more random order".
- ``verdict``: "better than random" / "worse than random" when the aopc_vs_random interval excludes 0 on that
  side, else "not distinguishable from random"; ``worse_than_random``: the point estimate is on the wrong side.
"""

from __future__ import annotations

import numpy as np

BETTER_SIGN = {"most_first": 1.0, "least_first": -1.0}
VERDICTS = ("better than random", "worse than random", "not distinguishable from random")


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] resample weights (counts / n) of n items drawn with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def aopc_uncertainty(
    ranked: np.ndarray, random: np.ndarray, order: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Interval, random band, permutation p and verdict of one order's per-sample AOPC ``ranked [N]`` against the
    per-sample AOPC of random orders ``random [R, N]`` (the same N samples)."""
    ranked = np.asarray(ranked, dtype=np.float64)
    random = np.atleast_2d(np.asarray(random, dtype=np.float64))
    if random.shape[1] != len(ranked):
        raise ValueError(f"random orders cover {random.shape[1]} samples, the ranked order {len(ranked)}")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    w = bootstrap_weights(len(ranked), n_boot, rng)  # [B, N]
    v = bootstrap_weights(len(random), n_boot, rng)  # [B, R]
    boot = w @ ranked
    boot_random = np.einsum("br,rn,bn->b", v, random, w)
    per_order = random.mean(1)
    aopc, random_mean = float(ranked.mean()), float(per_order.mean())
    sign = BETTER_SIGN[order]
    diff_lo, diff_hi = np.quantile(boot - boot_random, [lo_q, hi_q])
    as_good = int((sign * per_order >= sign * aopc).sum())
    ends = sign * np.array([diff_lo, diff_hi])
    verdict = VERDICTS[0] if (ends > 0).all() else VERDICTS[1] if (ends < 0).all() else VERDICTS[2]
    return {
        "aopc": aopc,
        "aopc_lo": float(np.quantile(boot, lo_q)),
        "aopc_hi": float(np.quantile(boot, hi_q)),
        "aopc_random_mean": random_mean,
        "random_q025": float(np.quantile(per_order, lo_q)),
        "random_q975": float(np.quantile(per_order, hi_q)),
        "aopc_vs_random": aopc - random_mean,
        "aopc_vs_random_lo": float(diff_lo),
        "aopc_vs_random_hi": float(diff_hi),
        "p_vs_random": (1 + as_good) / (len(per_order) + 1),
        "verdict": verdict,
        "worse_than_random": bool(sign * (aopc - random_mean) < 0),
    }


def curve_interval(per_sample: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(lo, hi) [F] percentile interval of the sample mean of ``per_sample [F, N]`` at every fraction (one set of
    resamples for all fractions, so the band is a curve of the same resamples)."""
    per_sample = np.asarray(per_sample, dtype=np.float64)
    w = bootstrap_weights(per_sample.shape[1], n_boot, np.random.default_rng(seed))
    boot = w @ per_sample.T  # [B, F]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi
