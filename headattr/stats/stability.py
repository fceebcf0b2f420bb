"""Agreement of two head rankings with bootstrap intervals over samples (scipy.stats.bootstrap, BCa).

Inputs are per-sample importance arrays [N, L, H] (larger = more important); a ranking is the mean over
samples. Metrics, globally over all L*H heads and per layer over its H heads: Spearman rho, Pearson r and
top-K overlap |topK(a) ∩ topK(b)| / K.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from headattr.stats.similarity import pearson, rowwise_pearson, rowwise_spearman, spearman, topk_overlap


def metric_names(n_layers: int, n_heads: int, topk, layer_topk: int) -> list[tuple[str, int | None, str]]:
    """(scope, layer, metric) of every entry of :func:`agreement_vector`, in order."""
    ks = [k for k in topk if k <= n_layers * n_heads]
    names = [("global", None, m) for m in ("spearman", "pearson")]
    names += [("global", None, f"top{k}_overlap") for k in ks]
    lk = min(layer_topk, n_heads)
    for layer in range(n_layers):
        names += [("layer", layer, m) for m in ("spearman", "pearson", f"top{lk}_overlap")]
    return names


def agreement_vector(a, b, topk, layer_topk: int) -> np.ndarray:
    """Agreement of two [L, H] importance matrices, ordered as :func:`metric_names`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_layers, n_heads = a.shape
    out = [spearman(a, b), pearson(a, b)]
    out += [topk_overlap(a, b, k, "score") for k in topk if k <= a.size]
    rho, r = rowwise_spearman(a, b), rowwise_pearson(a, b)
    lk = min(layer_topk, n_heads)
    for layer in range(n_layers):
        out += [rho[layer], r[layer], topk_overlap(a[layer], b[layer], lk, "score")]
    return np.asarray(out, dtype=float)


def _interval(result, values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval; where every resample gives the same value, that value; where BCa is otherwise undefined
    (e.g. its jackknife acceleration with independent resampling), the percentile interval."""
    low = np.asarray(result.confidence_interval.low, dtype=float)
    high = np.asarray(result.confidence_interval.high, dtype=float)
    dist = np.asarray(result.bootstrap_distribution, dtype=float)
    constant = np.all(dist == dist[..., :1], axis=-1) & np.isfinite(values)
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pct_low, pct_high = np.nanpercentile(dist, [tail, 100 - tail], axis=-1)
    low, high = np.where(np.isnan(low), pct_low, low), np.where(np.isnan(high), pct_high, high)
    return np.where(constant, values, low), np.where(constant, values, high)


def pair_stability(
    a, b, paired: bool, topk=(5, 10), layer_topk: int = 2, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Agreement of the mean rankings of per-sample importance ``a`` [Na, L, H] and ``b`` [Nb, L, H].

    ``paired``: the same samples in the same order (resampled together); otherwise each is resampled on its
    own. Returns rows scope ("global" | "layer"), layer, metric, value, ci_low, ci_high (BCa, ``level``).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"head shapes differ: {a.shape[1:]} vs {b.shape[1:]}")
    if paired and a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} vs {b.shape}")
    n_layers, n_heads = a.shape[1:]
    topk = list(topk)

    def statistic(*idx):  # resampled sample indices: one array (paired) or one per side
        ia, ib = (idx[0], idx[0]) if paired else idx
        ia, ib = np.asarray(ia, dtype=int), np.asarray(ib, dtype=int)
        return agreement_vector(a[ia].mean(0), b[ib].mean(0), topk, layer_topk)

    index = (np.arange(len(a)),) if paired else (np.arange(len(a)), np.arange(len(b)))
    values = statistic(*index)
    low = high = np.full_like(values, np.nan)
    if min(len(a), len(b)) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sps.bootstrap(
                index,
                statistic,
                paired=False,
                vectorized=False,
                n_resamples=n_boot,
                confidence_level=level,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
        low, high = _interval(result, values, level)
    rows = metric_names(n_layers, n_heads, topk, layer_topk)
    return pd.DataFrame(
        {
            "scope": [s for s, _, _ in rows],
            "layer": pd.array([layer for _, layer, _ in rows], dtype="Int64"),
            "metric": [m for _, _, m in rows],
            "value": values,
            "ci_low": low,
            "ci_high": high,
        }
    )


def converged_at(values, agreement, tolerance: float):
    """Smallest value from which on every (larger) value's agreement is >= ``tolerance``; None if none.

    ``values`` ascending, ``agreement`` the matching agreement with the largest value (whose own is 1)."""
    out = None
    for v, s in zip(reversed(list(values)), reversed(list(agreement)), strict=True):
        if not (np.isfinite(s) and s >= tolerance):
            break
        out = v
    return out
