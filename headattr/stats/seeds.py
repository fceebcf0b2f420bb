"""Consistency of head scores between two runs (seeds): per-layer and global correlation, top-K overlap
against the random baseline, score distributions, and the trend over depth."""

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from headattr.stats.nulls import N_BOOT, bca_interval, random_topk_overlap_expected
from headattr.stats.samples import as_per_sample
from headattr.stats.similarity import (
    RANK_BY,
    pearson,
    rowwise_pearson,
    rowwise_spearman,
    spearman,
    topk_indices,
    topk_overlap,
)

DEFAULT_KS = (5, 10, 15, 20, 25, 30)


def _check_scores(scores_a, scores_b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [n_layers, n_heads] arrays of equal shape, got {a.shape}, {b.shape}")
    return a, b


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def _summary(values, threshold: float = 0.9) -> dict[str, float]:
    v = _finite(values)
    if v.size == 0:
        stats = dict.fromkeys(("mean", "median", "min", "max", "std"), np.nan)
    else:
        stats = {
            "mean": float(v.mean()),
            "median": float(np.median(v)),
            "min": float(v.min()),
            "max": float(v.max()),
            "std": float(v.std()),
        }
    return stats | {f"n_above_{threshold}": int((v > threshold).sum()), "n_layers": int(v.size)}


def depth_bins_ranges(depth_bins: int | Sequence[Sequence[int]], n_layers: int) -> list[tuple[int, int]]:
    """[start, end) layer ranges: given explicitly, or `depth_bins` near-equal contiguous bins."""
    if isinstance(depth_bins, int | np.integer):
        if not 1 <= depth_bins <= n_layers:
            raise ValueError(f"depth_bins must be in [1, {n_layers}], got {depth_bins}")
        edges = np.linspace(0, n_layers, int(depth_bins) + 1).round().astype(int)
        return [(int(s), int(e)) for s, e in zip(edges[:-1], edges[1:], strict=True) if e > s]
    ranges = [(int(s), int(e)) for s, e in depth_bins]
    for s, e in ranges:
        if not 0 <= s < e <= n_layers:
            raise ValueError(f"depth bin [{s}, {e}) is not a non-empty range within [0, {n_layers})")
    return ranges


def split_ks(ks: Iterable[int], n_layers: int, n_heads: int) -> dict:
    """Which K each top-K table uses, and which it skips because K is not below its head count.

    Per layer: K < n_heads (K = n_heads would share every head); when none is left, K = max(1, n_heads // 2)
    is used instead (``added``). Global (all L * H heads ranked together): K < L * H.
    """
    ks = sorted({int(k) for k in ks})
    per_layer = [k for k in ks if k < n_heads]
    added = [] if per_layer else [max(1, n_heads // 2)]
    n_all = n_layers * n_heads
    return {
        "per_layer": per_layer or added,
        "global": [k for k in ks if k < n_all],
        "skipped_per_layer": [k for k in ks if k >= n_heads],
        "skipped_global": [k for k in ks if k >= n_all],
        "added_per_layer": added,
        "n_heads": n_heads,
        "n_all": n_all,
    }


def _topk_null(a: np.ndarray, b: np.ndarray, k: int, rank_by: str, n_perm: int, rng) -> np.ndarray:
    """Mean-over-layers overlap when b's top-k heads are a uniformly random k-subset in every layer."""
    n_layers, n_heads = a.shape
    in_a = np.zeros((n_layers, n_heads), dtype=bool)
    in_b = np.zeros((n_layers, n_heads), dtype=bool)
    for layer in range(n_layers):
        in_a[layer, topk_indices(a[layer], k, rank_by)] = True
        in_b[layer, topk_indices(b[layer], k, rank_by)] = True
    perms = np.argsort(rng.random((n_perm, n_layers, n_heads)), axis=2)
    shuffled = np.take_along_axis(np.broadcast_to(in_b, perms.shape), perms, axis=2)
    return (shuffled & in_a).sum(axis=2).mean(axis=1) / k


def cross_seed_consistency(
    scores_a,
    scores_b,
    ks: Iterable[int] = DEFAULT_KS,
    depth_bins: int | Sequence[Sequence[int]] = 4,
    rank_by: str = "importance",
    n_boot: int = N_BOOT,
    n_perm: int = 1000,
    seed: int = 0,
    labels: tuple[str, str] = ("a", "b"),
) -> dict:
    """Compare two runs' [n_layers, n_heads] scores.

    Returns a dict:
      per_layer: DataFrame layer, pearson, spearman, top{k}_overlap for the per-layer Ks (:func:`split_ks`).
      summary: {"pearson"|"spearman": mean, median, min, max, std (ddof=0), n_above_0.9 (strictly),
               n_layers (finite), and with n_boot > 0 mean_lo/mean_hi/mean_ci (a 95% interval of the mean over
               layers, resampling layers, by :func:`~headattr.stats.nulls.bca_interval`, which names its method)}.
      global: pearson and spearman over all flattened heads.
      topk: DataFrame scope, k, mean_overlap, random_expected, null_mean, p_value. scope "per_layer": the mean
            over layers of |top-K of layer l under a ∩ under b| / K, random_expected = K / n_heads, p_value
            one-sided by permutation (null: b's top-K set is a uniform random subset in each layer). scope
            "global": |top-K of all L * H heads under a ∩ under b| / K, random_expected = K / (L * H), p_value
            exact (hypergeometric).
      topk_ks: the Ks used and skipped (:func:`split_ks`).
      distribution: DataFrame seed, mean, median, std, min, max of each run's scores.
      best_layers / worst_layers: min(3, n // 2) rows of ``per_layer`` each (dicts; n finite layers, at least 1),
            best Pearson first / worst first; nan layers excluded.
      trend: DataFrame bin ("start-last", inclusive layers), start, end (exclusive), pearson, spearman,
            n_layers; ``depth_bins`` is a count of near-equal bins or explicit [start, end) ranges.
    """
    a, b = _check_scores(scores_a, scores_b)
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    n_layers, n_heads = a.shape
    topk_ks = split_ks(ks, n_layers, n_heads)
    ks = topk_ks["per_layer"]
    rng = np.random.default_rng(seed)

    per_layer = pd.DataFrame(
        {"layer": np.arange(n_layers), "pearson": rowwise_pearson(a, b), "spearman": rowwise_spearman(a, b)}
    )
    for k in ks:
        per_layer[f"top{k}_overlap"] = [topk_overlap(a[i], b[i], k, rank_by) for i in range(n_layers)]

    summary = {}
    for metric in ("pearson", "spearman"):
        summary[metric] = _summary(per_layer[metric])
        values = _finite(per_layer[metric])
        if n_boot > 0 and values.size:
            ci = bca_interval([values.size], lambda i, v=values: [v[i].mean()], n_boot, seed, fisher=True)
            summary[metric] |= {"mean_lo": float(ci.lo[0]), "mean_hi": float(ci.hi[0]), "mean_ci": ci.method[0]}
            summary[metric] |= {"mean_lo_mc": float(ci.mc_lo[0]), "mean_hi_mc": float(ci.mc_hi[0])}

    topk_rows = []
    for k in ks:
        observed = float(per_layer[f"top{k}_overlap"].mean())
        row = {
            "scope": "per_layer",
            "k": k,
            "mean_overlap": observed,
            "random_expected": random_topk_overlap_expected(n_heads, k),
        }
        if n_perm > 0:
            null = _topk_null(a, b, k, rank_by, n_perm, rng)
            p_value = (1 + int((null >= observed).sum())) / (1 + n_perm)
            row |= {"null_mean": float(null.mean()), "p_value": p_value}
        topk_rows.append(row)
    n_all = topk_ks["n_all"]
    for k in topk_ks["global"]:
        shared = int(round(topk_overlap(a, b, k, rank_by) * k))
        topk_rows.append(
            {
                "scope": "global",
                "k": k,
                "mean_overlap": shared / k,
                "random_expected": random_topk_overlap_expected(n_all, k),
                "null_mean": k / n_all,
                "p_value": float(hypergeom(n_all, k, k).sf(shared - 1)),
            }
        )

    distribution = pd.DataFrame([{"seed": lab} | _distribution(x) for lab, x in zip(labels, (a, b), strict=True)])

    ranked = per_layer.dropna(subset=["pearson"]).sort_values("pearson", kind="stable")
    rows = [{k: (int(v) if k == "layer" else float(v)) for k, v in r.items()} for r in ranked.to_dict("records")]
    n_listed = max(1, min(3, len(rows) // 2))  # best and worst do not overlap

    trend_rows = []
    for start, end in depth_bins_ranges(depth_bins, n_layers):
        chunk = per_layer.iloc[start:end]
        trend_rows.append(
            {
                "bin": f"{start}-{end - 1}",
                "start": start,
                "end": end,
                "pearson": _nan_mean(chunk["pearson"]),
                "spearman": _nan_mean(chunk["spearman"]),
                "n_layers": end - start,
            }
        )

    return {
        "per_layer": per_layer,
        "summary": summary,
        "global": {"pearson": pearson(a, b), "spearman": spearman(a, b)},
        "topk": pd.DataFrame(topk_rows),
        "topk_ks": topk_ks,
        "distribution": distribution,
        "best_layers": rows[::-1][:n_listed],
        "worst_layers": rows[:n_listed],
        "trend": pd.DataFrame(trend_rows),
    }


def _distribution(x: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def _nan_mean(values) -> float:
    v = _finite(values)
    return float(v.mean()) if v.size else float("nan")


def cross_seed_bootstrap(
    per_sample_a, per_sample_b, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Bootstrap CIs for the headline cross-seed numbers, resampling each seed's samples independently.

    Inputs are [n, L, H] (or [n, P, L, H]) per-sample attributions of the two runs (n may differ).
    Returns a DataFrame metric (mean_layer_pearson, global_pearson, mean_layer_spearman,
    global_spearman), estimate (on the full data), lo, hi, method (BCa, or the normal interval on Fisher's z
    where BCa would leave the estimate out: :func:`~headattr.stats.nulls.bca_interval`), lo_mc / hi_mc (the
    Monte-Carlo error of each end, 95 % half-width), n_boot and bias (mean draw -
    estimate; resampling with replacement repeats samples, which adds noise to both means and pulls
    correlations down).
    """
    x = as_per_sample(per_sample_a)
    y = as_per_sample(per_sample_b)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"[L, H] shapes differ: {x.shape[1:]} vs {y.shape[1:]}")

    def stats(ia: np.ndarray, ib: np.ndarray) -> list[float]:
        sa, sb = x[ia].mean(axis=0), y[ib].mean(axis=0)
        return [
            _nan_mean(rowwise_pearson(sa, sb)),
            pearson(sa, sb),
            _nan_mean(rowwise_spearman(sa, sb)),
            spearman(sa, sb),
        ]

    ci = bca_interval([x.shape[0], y.shape[0]], stats, n_boot, seed, level, fisher=True)
    names = ["mean_layer_pearson", "global_pearson", "mean_layer_spearman", "global_spearman"]
    return pd.DataFrame(
        {
            "metric": names,
            "estimate": ci.estimate,
            "lo": ci.lo,
            "hi": ci.hi,
            "method": ci.method,
            "bias": ci.bias,
            "lo_mc": ci.mc_lo,
            "hi_mc": ci.mc_hi,
            "n_boot": n_boot,
        }
    )
