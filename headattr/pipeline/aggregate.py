"""Aggregation of a dump: per-head statistics over samples and mask probabilities, as a tidy table.

For head (l, h), with x_i = mean over p of ig[i, p, l, h] (sample i's score):
score = mean_i x_i;  abs_score = mean over i and p of |ig|;  std = std_i x_i (ddof=1);  se = std / sqrt(N);
importance = mean_i f(-x_i) with the post-processing f of ``report.postprocess`` applied per sample before
averaging (the users' order): ``signed`` f(y) = y (importance = -score: IG of the loss, negative = the head
lowers the loss), ``abs`` f(y) = |y| (= the users' default |IG|), ``relu`` f(y) = max(y, 0) (only the part
where the head lowers the loss). Rankings, heatmaps, pruning orders and exports use this importance; dumps
keep the raw signed IG. Heads of layers outside ``ig.layers`` are left out of the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POSTPROCESS = ("signed", "abs", "relu")


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def per_sample_scores(arrays: dict) -> np.ndarray:
    """Sample scores [N, L, H]: IG averaged over mask probabilities."""
    return arrays["ig"].astype(np.float64).mean(axis=1)


def postprocess_importance(y: np.ndarray, postprocess: str = "signed") -> np.ndarray:
    """f(y) of ``report.postprocess`` (see module docstring) on importance values y = -IG."""
    if postprocess == "signed":
        return y
    if postprocess == "abs":
        return np.abs(y)
    if postprocess == "relu":
        return np.maximum(y, 0.0)
    raise ValueError(f"report.postprocess: {postprocess!r} is not one of {POSTPROCESS}")


def importance_label(postprocess: str = "signed") -> str:
    """How figures and tables name the importance of ``postprocess``."""
    return {"signed": "importance (-IG)", "abs": "importance (|IG|)", "relu": "importance (max(-IG, 0))"}[postprocess]


def postprocessed_scores(x: np.ndarray, postprocess: str = "signed") -> np.ndarray:
    """-f(-x): post-processed importance back in the score convention of the dumps (descending importance =
    ascending score), the input every ranking statistic of :mod:`headattr.stats` takes; identity for signed."""
    return -postprocess_importance(-np.asarray(x, dtype=np.float64), postprocess)


def per_sample_importance(arrays: dict, postprocess: str = "signed") -> np.ndarray:
    """Post-processed importance per sample [N, L, H]: f(-x_i), f from ``postprocess`` (see module docstring)."""
    return postprocess_importance(-per_sample_scores(arrays), postprocess)


def attributed_layers(arrays: dict) -> list[int]:
    """Model layers whose heads the dump attributes (``ig.layers``, inclusive; default all)."""
    from .dumps import read_meta

    n_layers = arrays["ig"].shape[2]
    layer_range = read_meta(arrays).get("settings", {}).get("layer_range")
    return list(range(n_layers)) if layer_range is None else list(range(layer_range[0], layer_range[1] + 1))


def importance_matrix(arrays: dict, postprocess: str = "signed") -> np.ndarray:
    """Mean post-processed importance [L, H]; heads outside ``ig.layers`` have IG 0 (their gates never move),
    hence importance 0."""
    return per_sample_importance(arrays, postprocess).mean(0)


def aggregate(arrays: dict, postprocess: str = "signed") -> pd.DataFrame:
    """Tidy table, one row per attributed head: layer, head, label, score, importance, abs_score, std, se, n,
    rank, postprocess."""
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
            "importance": per_sample_importance(arrays, postprocess).mean(0).ravel(),
            "abs_score": np.abs(arrays["ig"].astype(np.float64)).mean((0, 1)).ravel(),
            "std": std.ravel(),
            "se": (std / np.sqrt(n)).ravel(),
            "n_samples": n,
        }
    )
    table = table[table["layer"].isin(attributed_layers(arrays))].reset_index(drop=True)
    table["rank"] = table["importance"].rank(ascending=False, method="first").astype(int)
    table["postprocess"] = postprocess
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
