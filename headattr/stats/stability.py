"""Agreement of two head rankings with bootstrap intervals over samples (BCa, Fisher-z fallback).

Inputs are per-sample importance arrays [N, L, H] (larger = more important); a ranking is the mean over
samples. Metrics, globally over all L*H heads and per layer over its H heads: Spearman rho, Pearson r and
top-K overlap |topK(a) ∩ topK(b)| / K.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from headattr.stats.nulls import N_BOOT, bca_interval
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


def pair_stability(
    a, b, paired: bool, topk=(5, 10), layer_topk: int = 2, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Agreement of the mean rankings of per-sample importance ``a`` [Na, L, H] and ``b`` [Nb, L, H].

    ``paired``: the same samples in the same order (resampled together); otherwise each is resampled on its
    own. Returns rows scope ("global" | "layer"), layer, metric, value, ci_low, ci_high, ci_method: BCa at
    ``level`` where it contains the estimate, else the normal interval with the bootstrap SE, on Fisher's z for
    the correlations (:func:`headattr.stats.nulls.bca_interval`), and ci_low_mc / ci_high_mc, the Monte-Carlo
    error of each end (95 % half-width).
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
        return agreement_vector(a[ia].mean(0), b[ib].mean(0), topk, layer_topk)

    rows = metric_names(n_layers, n_heads, topk, layer_topk)
    correlation = [not m.endswith("_overlap") for _, _, m in rows]
    sizes = [len(a)] if paired else [len(a), len(b)]
    ci = bca_interval(sizes, statistic, n_boot, seed, level, fisher=correlation)
    return pd.DataFrame(
        {
            "scope": [s for s, _, _ in rows],
            "layer": pd.array([layer for _, layer, _ in rows], dtype="Int64"),
            "metric": [m for _, _, m in rows],
            "value": ci.estimate,
            "ci_low": ci.lo,
            "ci_high": ci.hi,
            "ci_method": ci.method,
            "ci_low_mc": ci.mc_lo,
            "ci_high_mc": ci.mc_hi,
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
