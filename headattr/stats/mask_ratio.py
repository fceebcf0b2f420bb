"""Agreement of head scores computed at different mask probabilities p."""

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from headattr.stats.similarity import agreement


def mask_ratio_agreement(
    per_sample_p, mask_probs: Sequence[float], ks: Iterable[int] = (10,), rank_by: str = "importance"
) -> dict:
    """Scores per mask probability and their pairwise agreement.

    per_sample_p is [n, P, L, H] with mask_probs[i] the p of slice i. Returns {"scores": {p: [L, H] mean
    over samples}, "pairs": DataFrame p_a, p_b, pearson, spearman, cosine, top{k}_overlap over all heads}.
    """
    x = np.asarray(per_sample_p, dtype=float)
    if x.ndim != 4:
        raise ValueError(f"per_sample_p must be [n, P, L, H], got shape {x.shape}")
    if len(mask_probs) != x.shape[1]:
        raise ValueError(f"{len(mask_probs)} mask_probs for {x.shape[1]} mask-probability slices")
    scores = {float(p): x[:, i].mean(axis=0) for i, p in enumerate(mask_probs)}
    if len(scores) != len(mask_probs):
        raise ValueError(f"mask_probs must be distinct, got {list(mask_probs)}")
    ks = list(ks)
    rows = [
        {"p_a": pa, "p_b": pb, **agreement(scores[pa], scores[pb], ks, rank_by)} for pa, pb in combinations(scores, 2)
    ]
    return {"scores": scores, "pairs": pd.DataFrame(rows)}
