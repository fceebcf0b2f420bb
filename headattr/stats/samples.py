"""Per-sample structure of attributions: sample-sample correlation, per-head variance, and how many
samples are needed for the aggregate scores to settle (split-half reliability: headattr.stats.split_half).

`per_sample` is [n_samples, n_layers, n_heads], or [n_samples, n_p, n_layers, n_heads], which is
averaged over mask probabilities first.
"""

from collections.abc import Iterable

import numpy as np
import pandas as pd

from headattr.stats.similarity import agreement, rowwise_pearson

DEFAULT_NS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def as_per_sample(per_sample) -> np.ndarray:
    """Float [n, L, H] array; a 4-D [n, P, L, H] input is averaged over P."""
    x = np.asarray(per_sample, dtype=float)
    if x.ndim == 4:
        x = x.mean(axis=1)
    if x.ndim != 3:
        raise ValueError(f"per_sample must be [n, L, H] or [n, P, L, H], got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("per_sample has no samples")
    return x


def _nan_stats(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": np.nan, "median": np.nan, "min": np.nan, "max": np.nan}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def sample_correlation_matrix(per_sample) -> np.ndarray:
    """[n, n] Pearson r between samples' flattened head vectors; nan rows for constant samples."""
    x = as_per_sample(per_sample)
    n = x.shape[0]
    x = x.reshape(n, -1)
    i, j = np.triu_indices(n)
    r = rowwise_pearson(x[i], x[j])
    mat = np.empty((n, n))
    mat[i, j] = r
    mat[j, i] = r
    return mat


def offdiag_summary(mat) -> dict[str, float]:
    """mean / median / min / max of the off-diagonal entries of a square matrix (nan entries ignored)."""
    mat = np.asarray(mat, dtype=float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {mat.shape}")
    return _nan_stats(mat[~np.eye(mat.shape[0], dtype=bool)])


def sample_specificity(per_sample) -> float:
    """Mean off-diagonal sample-sample Pearson r: lower means attributions are more sample-specific."""
    return offdiag_summary(sample_correlation_matrix(per_sample))["mean"]


def head_variance(per_sample, thresholds: Iterable[float] = (0.001, 0.005), top: int = 20) -> dict:
    """Variance of each head's attribution across samples (np.var, ddof=0).

    Returns variance [L, H], mean, median, count_above {thr: #heads with variance > thr} and `top`, a
    DataFrame of the `top` highest-variance (most sample-specific) heads: layer, head, label, variance,
    mean (the head's mean score).
    """
    x = as_per_sample(per_sample)
    var = x.var(axis=0)
    mean = x.mean(axis=0)
    order = np.argsort(-var.ravel(), kind="stable")[:top]
    layer, head = np.unravel_index(order, var.shape)
    table = pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "label": [f"L{li}H{hi}" for li, hi in zip(layer, head, strict=True)],
            "variance": var.ravel()[order],
            "mean": mean.ravel()[order],
        }
    )
    return {
        "variance": var,
        "mean": float(var.mean()),
        "median": float(np.median(var)),
        "count_above": {float(t): int((var > t).sum()) for t in thresholds},
        "top": table,
    }


def _describe(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


def _resolve_ns(ns: Iterable[int] | None, n_total: int) -> list[int]:
    ns = DEFAULT_NS if ns is None else ns
    clipped = {min(int(n), n_total) for n in ns}
    if any(n < 1 for n in clipped):
        raise ValueError("sample counts in ns must be >= 1")
    return sorted(clipped | {n_total})


def sample_count_agreement(
    per_sample, ns: Iterable[int] | None = None, ks: Iterable[int] = (10,), rank_by: str = "importance"
) -> pd.DataFrame:
    """Mean of the first n samples vs the mean of all N, one row per n (clipped to N; N always included).

    Columns: n, N, pearson, spearman, cosine, top{k}_overlap (over all heads, k > L*H skipped), then
    subset_/full_ mean, std, min, max of the two score arrays and diff_* = subset - full of each stat.
    """
    x = as_per_sample(per_sample)
    n_total = x.shape[0]
    full = x.mean(axis=0)
    full_stats = _describe(full)
    rows = []
    for n in _resolve_ns(ns, n_total):
        sub = x[:n].mean(axis=0)
        sub_stats = _describe(sub)
        row = {"n": n, "N": n_total, **agreement(sub, full, ks, rank_by)}
        row |= {f"subset_{k}": v for k, v in sub_stats.items()}
        row |= {f"full_{k}": v for k, v in full_stats.items()}
        row |= {f"diff_{k}": sub_stats[k] - full_stats[k] for k in sub_stats}
        rows.append(row)
    return pd.DataFrame(rows)
