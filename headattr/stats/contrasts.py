"""Post-hoc contrast after the per-head Kruskal-Wallis test: each category against all other samples.

Per head and category: a two-sided Mann-Whitney U test of the category's samples against the rest (exact p
when neither side has ties, which float attributions do not; else the normal approximation with tie
correction; scipy.stats.mannwhitneyu), Benjamini-Hochberg q over every (head, category) tested. Says *which*
category makes a head's attribution differ, and in which direction (diff = mean in the category - mean of the
rest; auc = U / (n_in n_rest), the probability that a sample of the category scores above one of the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, mannwhitneyu

from headattr.stats.samples import as_per_sample

COLUMNS = ["layer", "head", "label", "category", "n_in", "n_rest", "mean_in", "mean_rest", "diff", "auc", "p_value"]


def category_contrasts(per_sample, categories: Sequence) -> pd.DataFrame:
    """One row per (head, category with >= 2 samples) of the one-vs-rest Mann-Whitney contrast (module doc):
    COLUMNS + q_value and method ("exact" | "asymptotic"); heads constant over all samples are left out.
    Sorted by p_value."""
    x = as_per_sample(per_sample)
    cats = np.asarray(categories, dtype=object)
    if cats.shape != (x.shape[0],):
        raise ValueError(f"need one category per sample: {cats.shape[0]} categories for {x.shape[0]} samples")
    n_layers, n_heads = x.shape[1:]
    flat = x.reshape(x.shape[0], -1)
    testable = np.flatnonzero(~(flat == flat[:1]).all(axis=0))
    rows = []
    for cat in pd.unique(cats):
        inside = cats == cat
        if inside.sum() < 2 or (~inside).sum() < 2:
            continue
        a, b = flat[inside][:, testable], flat[~inside][:, testable]
        ties = np.array([np.unique(flat[:, j]).size < flat.shape[0] for j in testable])
        for method, cols in (("exact", ~ties), ("asymptotic", ties)):
            if not cols.any():
                continue
            res = mannwhitneyu(a[:, cols], b[:, cols], alternative="two-sided", method=method, axis=0)
            for j, u, p in zip(testable[cols], np.atleast_1d(res.statistic), np.atleast_1d(res.pvalue), strict=True):
                layer, head = divmod(int(j), n_heads)
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "label": f"L{layer}H{head}",
                        "category": str(cat),
                        "n_in": int(inside.sum()),
                        "n_rest": int((~inside).sum()),
                        "mean_in": float(flat[inside, j].mean()),
                        "mean_rest": float(flat[~inside, j].mean()),
                        "diff": float(flat[inside, j].mean() - flat[~inside, j].mean()),
                        "auc": float(u) / (inside.sum() * (~inside).sum()),
                        "p_value": float(p),
                        "method": method,
                    }
                )
    df = pd.DataFrame(rows, columns=[*COLUMNS, "method"])
    df["q_value"] = false_discovery_control(df["p_value"].to_numpy()) if len(df) else []
    return df.sort_values(["p_value", "layer", "head"], kind="stable").reset_index(drop=True)
