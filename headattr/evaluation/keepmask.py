"""Which heads a pruning setting keeps: pure functions from an importance matrix to a keep-mask.

``importance`` is [n_layers, n_heads], higher = more important (for headattr dumps that is -IG; the users'
``head_importance.pt`` scores already are importances). A keep-mask is bool [n_layers, n_heads], True = kept,
False = pruned (its head gate is 0).

- ``order``: ``most`` prunes the most important heads first, ``least`` the least important, ``random`` a
  permutation drawn by ``np.random.default_rng(seed)``. Ties go to the lower flat index (layer-major) first.
- ``convention``: ``global`` ranks all eligible heads together and prunes round(fraction * n_eligible);
  ``per_layer`` prunes round(fraction * n_heads) in every eligible layer (halves rounded up, as the deletion
  curves do).
- ``layers``: the eligible layers (None = all); heads outside are always kept.
- ``keep_at_least_one_head``: no layer loses its last head. In the global convention a head whose layer would
  be emptied is skipped and the next one in order is taken, so the count stays exact up to
  n_eligible - n_eligible_layers (beyond that it is capped there). (The users' ``build_head_keep_masks`` keeps one
  head in the whole range instead, and prunes at least one head at any fraction > 0 of theirs, including 0.)

Every setting is nested: the heads pruned at a fraction are a subset of those pruned at any larger one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..analysis.deletion import heads_off, removal_order
from ..errors import ConfigError

ORDERS = ("most", "least", "random")
CONVENTIONS = ("global", "per_layer")


def eligible_layers(n_layers: int, layers: Iterable[int] | None = None) -> list[int]:
    """Sorted unique layer indices to prune in (all when ``layers`` is None); out-of-range indices are an error."""
    chosen = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if bad or not chosen:
        raise ConfigError(f"layers: {bad or 'none'} outside 0..{n_layers - 1}")
    return chosen


def ranked_heads(importance: np.ndarray, order: str, seed: int = 0) -> np.ndarray:
    """Flat indices of ``importance``'s entries in pruning order (stable on ties)."""
    flat = np.asarray(importance, dtype=np.float64).reshape(-1)
    if order == "random":
        return np.random.default_rng(seed).permutation(flat.size)
    if order not in ORDERS:
        raise ConfigError(f"order: {order!r} is not one of {ORDERS}")
    if not np.isfinite(flat).all():
        raise ConfigError("importance: non-finite scores cannot be ranked")
    # removal_order ranks raw scores (importance = -score): most_first = largest importance first
    return removal_order(-flat, "most_first" if order == "most" else "least_first")


def keep_mask(
    importance,
    order: str,
    fraction: float,
    convention: str = "global",
    seed: int = 0,
    keep_at_least_one_head: bool = True,
    layers: Iterable[int] | None = None,
) -> np.ndarray:
    """Bool keep-mask [n_layers, n_heads] for one pruning setting (see the module docstring)."""
    imp = np.asarray(importance, dtype=np.float64)
    if imp.ndim != 2 or 0 in imp.shape:
        raise ConfigError(f"importance: expected a [n_layers, n_heads] matrix, got shape {imp.shape}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"fraction: {fraction} is outside [0, 1]")
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention: {convention!r} is not one of {CONVENTIONS}")
    n_layers, n_heads = imp.shape
    chosen = eligible_layers(n_layers, layers)
    keep = np.ones((n_layers, n_heads), dtype=bool)
    floor = 1 if keep_at_least_one_head else 0
    if convention == "per_layer":
        count = min(heads_off([fraction], n_heads)[0], n_heads - floor)
        rng_seeds = np.random.SeedSequence(seed).spawn(len(chosen)) if order == "random" else [seed] * len(chosen)
        for layer, layer_seed in zip(chosen, rng_seeds, strict=True):
            if order == "random":
                ranked = np.random.default_rng(layer_seed).permutation(n_heads)
            else:
                ranked = ranked_heads(imp[layer], order)
            keep[layer, ranked[:count]] = False
        return keep
    sub = imp[chosen]  # [n_chosen, n_heads]
    count = min(heads_off([fraction], sub.size)[0], sub.size - floor * len(chosen))
    left = np.full(len(chosen), n_heads)
    pruned = 0
    for flat in ranked_heads(sub, order, seed):
        if pruned == count:
            break
        row, head = divmod(int(flat), n_heads)
        if left[row] <= floor:
            continue
        keep[chosen[row], head] = False
        left[row] -= 1
        pruned += 1
    return keep


def pruned_count(keep: np.ndarray) -> int:
    """Number of pruned heads of a keep-mask."""
    return int((~np.asarray(keep, dtype=bool)).sum())
