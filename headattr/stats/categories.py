"""Heads whose attribution depends on a sample category (e.g. task or domain): per-category means and a
Kruskal-Wallis test per head (permutation p for small groups) with Benjamini-Hochberg q-values."""

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from headattr.stats.kruskal import N_RESAMPLES, kruskal_columns
from headattr.stats.samples import as_per_sample


def _groups(per_sample, categories: Sequence) -> tuple[np.ndarray, np.ndarray, list]:
    x = as_per_sample(per_sample)
    cats = np.asarray(categories, dtype=object)
    if cats.shape != (x.shape[0],):
        raise ValueError(f"need one category per sample: {cats.shape[0]} categories for {x.shape[0]} samples")
    return x, cats, list(pd.unique(cats))


def category_means(per_sample, categories: Sequence) -> dict:
    """Category -> [L, H] mean attribution over that category's samples (order of first appearance)."""
    x, cats, order = _groups(per_sample, categories)
    return {c: x[cats == c].mean(axis=0) for c in order}


def category_differences(
    per_sample, categories: Sequence, top: int | None = 20, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """Per-head test of whether attribution differs across categories.

    Categories with fewer than 2 samples are left out (listed in df.attrs["dropped_categories"]); at
    least 2 categories must remain. Columns: layer, head, label, mean_<category> for each category,
    H (Kruskal-Wallis statistic), p_value (chi-square when every group has >= 5 samples, else an exact
    or `n_resamples`-draw permutation p, see stats.kruskal; the kind in df.attrs["p_method"]), q_value
    (Benjamini-Hochberg over the tested heads), range (max - min of the category means). Heads constant
    across all samples get nan H/p/q. Sorted by p_value (nan last); `top` keeps the first rows (None
    keeps all).
    """
    x, cats, order = _groups(per_sample, categories)
    kept = [c for c in order if (cats == c).sum() >= 2]
    if len(kept) < 2:
        counts = {c: int((cats == c).sum()) for c in order}
        raise ValueError(f"need >= 2 categories with >= 2 samples each; got sample counts {counts}")
    n_layers, n_heads = x.shape[1:]
    groups = [x[cats == c].reshape(-1, n_layers * n_heads) for c in kept]
    pooled = np.concatenate(groups)
    testable = ~(pooled == pooled[:1]).all(axis=0)

    stat = np.full(n_layers * n_heads, np.nan)
    p = np.full(n_layers * n_heads, np.nan)
    q = np.full(n_layers * n_heads, np.nan)
    method = None
    if testable.any():
        res = kruskal_columns([g[:, testable] for g in groups], n_resamples=n_resamples, seed=seed)
        stat[testable], p[testable], method = res["statistic"], res["pvalue"], res["method"]
        q[testable] = false_discovery_control(p[testable])

    means = np.stack([g.mean(axis=0) for g in groups])
    layer, head = np.unravel_index(np.arange(n_layers * n_heads), (n_layers, n_heads))
    df = pd.DataFrame(
        {"layer": layer, "head": head, "label": [f"L{li}H{hi}" for li, hi in zip(layer, head, strict=True)]}
    )
    for c, m in zip(kept, means, strict=True):
        df[f"mean_{c}"] = m
    df["H"], df["p_value"], df["q_value"] = stat, p, q
    df["range"] = means.max(axis=0) - means.min(axis=0)
    df = df.sort_values(["p_value", "H"], ascending=[True, False], na_position="last", kind="stable")
    df = df.reset_index(drop=True)
    if top is not None:
        df = df.head(top)
    df.attrs["dropped_categories"] = [c for c in order if c not in kept]
    df.attrs["p_method"] = method
    return df
