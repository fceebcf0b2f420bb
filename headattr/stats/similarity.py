"""Similarity between attribution vectors: correlations, cosine and top-K overlap.

All functions flatten their inputs, so [n_layers, n_heads] score arrays compare over every head.
Degenerate inputs (constant or zero vectors) give nan without raising or warning.
"""

from collections.abc import Iterable

import numpy as np
from scipy.stats import rankdata

RANK_BY = ("importance", "score", "abs")


def _flat_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"size mismatch: {a.size} vs {b.size} elements")
    return a, b


def rowwise_pearson(a, b) -> np.ndarray:
    """Pearson r between matching rows of two [m, n] arrays -> [m]; nan for constant rows."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    constant = (a == a[:, :1]).all(axis=1) | (b == b[:, :1]).all(axis=1)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((ac**2).sum(axis=1) * (bc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=1) / denom
    r = np.clip(r, -1.0, 1.0)
    r[constant] = np.nan
    return r


def rowwise_spearman(a, b) -> np.ndarray:
    """Spearman rho (average ranks for ties) between matching rows of two [m, n] arrays -> [m]."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return rowwise_pearson(rankdata(a, axis=1), rankdata(b, axis=1))


def pearson(a, b) -> float:
    """Pearson r over all elements; nan if either input is constant."""
    a, b = _flat_pair(a, b)
    return float(rowwise_pearson(a[None], b[None])[0])


def spearman(a, b) -> float:
    """Spearman rho over all elements (Pearson of average ranks, as scipy); nan if constant."""
    a, b = _flat_pair(a, b)
    return float(rowwise_spearman(a[None], b[None])[0])


def cosine(a, b) -> float:
    """Cosine similarity (uncentered) over all elements; nan if either vector is all zeros."""
    a, b = _flat_pair(a, b)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float(np.clip(a @ b / denom, -1.0, 1.0))


def ranking_key(x, rank_by: str = "importance") -> np.ndarray:
    """Flattened values to rank descending: -score ("importance"), score, or |score| ("abs")."""
    x = np.asarray(x, dtype=float).ravel()
    if rank_by == "importance":
        return -x
    if rank_by == "score":
        return x
    if rank_by == "abs":
        return np.abs(x)
    raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")


def topk_indices(x, k: int, rank_by: str = "importance") -> np.ndarray:
    """Flat indices of the top-k elements by `rank_by`, best first; ties go to the lower index, nan last."""
    key = ranking_key(x, rank_by)
    if not 1 <= k <= key.size:
        raise ValueError(f"k must be in [1, {key.size}], got {k}")
    return np.argsort(-key, kind="stable")[:k]


def topk_overlap(a, b, k: int, rank_by: str = "importance") -> float:
    """|topK(a) ∩ topK(b)| / K over flattened inputs."""
    a, b = _flat_pair(a, b)
    shared = np.intersect1d(topk_indices(a, k, rank_by), topk_indices(b, k, rank_by))
    return shared.size / k


def agreement(a, b, ks: Iterable[int] = (10,), rank_by: str = "importance") -> dict[str, float]:
    """Pearson, Spearman, cosine and top{k}_overlap for each k; k larger than the vector is skipped."""
    a, b = _flat_pair(a, b)
    out = {"pearson": pearson(a, b), "spearman": spearman(a, b), "cosine": cosine(a, b)}
    for k in ks:
        if k <= a.size:
            out[f"top{k}_overlap"] = topk_overlap(a, b, k, rank_by)
    return out
