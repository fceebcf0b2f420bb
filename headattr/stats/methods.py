"""Comparison of attribution methods run on the same samples: agreement of their aggregate scores and
how sample-specific each method is."""

from collections.abc import Iterable, Mapping
from itertools import combinations

import numpy as np
import pandas as pd

from headattr.stats.samples import as_per_sample, head_variance, sample_specificity
from headattr.stats.similarity import agreement


def method_comparison(
    per_sample_by_method: Mapping[str, np.ndarray], ks: Iterable[int] = (10,), rank_by: str = "importance"
) -> pd.DataFrame:
    """One row per pair of methods (dict order): method_a, method_b, pearson, spearman, cosine,
    top{k}_overlap of their mean scores over all heads. Inputs are [n, L, H] or [n, P, L, H]."""
    scores = {name: as_per_sample(x).mean(axis=0) for name, x in per_sample_by_method.items()}
    shapes = {s.shape for s in scores.values()}
    if len(shapes) > 1:
        raise ValueError(f"methods have different [L, H] shapes: {sorted(shapes)}")
    ks = list(ks)
    rows = [
        {"method_a": a, "method_b": b, **agreement(scores[a], scores[b], ks, rank_by)}
        for a, b in combinations(scores, 2)
    ]
    return pd.DataFrame(rows)


def method_specificity(per_sample_by_method: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per method: sample_specificity (mean off-diagonal sample-sample Pearson; lower = more
    sample-specific) and mean_head_variance (mean over heads of the across-sample variance)."""
    rows = [
        {
            "method": name,
            "sample_specificity": sample_specificity(x),
            "mean_head_variance": head_variance(x, top=0)["mean"],
        }
        for name, x in per_sample_by_method.items()
    ]
    return pd.DataFrame(rows, columns=["method", "sample_specificity", "mean_head_variance"])
