"""Aggregation of a dump: per-head statistics over samples and mask probabilities, as a tidy table.

For head (l, h), with x_i = mean over p of ig[i, p, l, h] (sample i's score):
score = mean_i x_i;  abs_score = mean over i and p of |ig|;  std = std_i x_i (ddof=1);  se = std / sqrt(N);
importance = -score (the sign convention: IG of the loss, negative = the head lowers the loss).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def per_sample_scores(arrays: dict) -> np.ndarray:
    """Sample scores [N, L, H]: IG averaged over mask probabilities."""
    return arrays["ig"].astype(np.float64).mean(axis=1)


def aggregate(arrays: dict) -> pd.DataFrame:
    """Tidy table, one row per head: layer, head, label, score, importance, abs_score, std, se, n, rank."""
    x = per_sample_scores(arrays)
    n, n_layers, n_heads = x.shape
    score = x.mean(0)
    std = x.std(0, ddof=1) if n > 1 else np.full_like(score, np.nan)
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    table = pd.DataFrame(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "label": [head_label(a, b) for a, b in zip(layer.ravel(), head.ravel(), strict=True)],
            "score": score.ravel(),
            "importance": -score.ravel(),
            "abs_score": np.abs(arrays["ig"].astype(np.float64)).mean((0, 1)).ravel(),
            "std": std.ravel(),
            "se": (std / np.sqrt(n)).ravel(),
            "n_samples": n,
        }
    )
    table["rank"] = table["importance"].rank(ascending=False, method="first").astype(int)
    return table


def score_matrix(table: pd.DataFrame, column: str = "score") -> np.ndarray:
    """[L, H] matrix of one column of :func:`aggregate`'s table."""
    n_layers, n_heads = int(table["layer"].max()) + 1, int(table["head"].max()) + 1
    out = np.full((n_layers, n_heads), np.nan)
    out[table["layer"].to_numpy(), table["head"].to_numpy()] = table[column].to_numpy()
    return out


def completeness_table(arrays: dict) -> pd.DataFrame:
    """One row per (sample, p, path): both sides of completeness and the gap (absolute and relative)."""
    n, p, q = arrays["gap"].shape
    rhs = arrays["loss_full"][:, :, None] - arrays["loss_base"]
    idx = np.indices((n, p, q)).reshape(3, -1)
    return pd.DataFrame(
        {
            "sample_id": arrays["sample_ids"][idx[0]],
            "mask_prob": arrays["mask_probs"][idx[1]],
            "path": arrays["path_names"][idx[2]] if "path_names" in arrays else idx[2],
            "ig_sum": arrays["ig_sum"].ravel(),
            "loss_full": np.repeat(arrays["loss_full"].ravel(), q),
            "loss_base": arrays["loss_base"].ravel(),
            "delta_loss": rhs.ravel(),
            "gap": arrays["gap"].ravel(),
            "rel_gap": (np.abs(arrays["gap"]) / np.maximum(np.abs(rhs), 1e-12)).ravel(),
        }
    )


def completeness_summary(arrays: dict) -> dict:
    """Max and median absolute / relative completeness gap of a dump."""
    table = completeness_table(arrays)
    return {
        "gap_abs_max": float(table["gap"].abs().max()),
        "gap_abs_median": float(table["gap"].abs().median()),
        "gap_rel_max": float(table["rel_gap"].max()),
        "gap_rel_median": float(table["rel_gap"].median()),
    }
