"""Adaptive sparse attention in the two evaluation paths (the users' SparseD schedule).

Generation (:func:`step_schedule`, for :func:`headattr.evaluation.sampler.low_confidence_generate`): denoising
steps are numbered 0..steps-1 over all blocks; steps up to ``end = int(skip * steps) + 1`` run dense, step
``end`` builds every layer's block mask from its own attention at that step, later steps reuse the masks.
skip = 1 (or end >= steps) never leaves dense attention. Likelihood (:func:`elbo_context`): the masks are
rebuilt in every forward from that forward's own attention (their ``recompute_mask_each_call``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from ..errors import ConfigError
from ..models.sparse import PERCENTILES, SparseAttention, importance_weights, keep_ratios


def build_step(skip: float, steps: int) -> int:
    """The step that builds the masks: int(skip * steps) + 1 (the users' end_time)."""
    if not 0 <= skip <= 1:
        raise ConfigError(f"sparse_skip: {skip} is not in [0, 1]")
    return int(skip * steps) + 1


def attention_flops_fraction(density: float, end: int, steps: int) -> float:
    """Attention score FLOPs of one generation relative to dense: steps 0..end dense (end builds the masks from
    dense attention), the later steps at the masks' block density."""
    dense = min(end + 1, steps)
    return (dense + (steps - dense) * density) / steps


def step_schedule(sparse: SparseAttention, skip: float, steps: int) -> Callable[[int], AbstractContextManager]:
    """step -> the context its forward runs in: dense before the build step, building at it, sparse after."""
    end = build_step(skip, steps)

    def context(step: int) -> AbstractContextManager:
        if step < end:
            return nullcontext()
        return sparse.building() if step == end else sparse.applied()

    return context


def elbo_context(sparse: SparseAttention | None) -> AbstractContextManager:
    """The context of a likelihood forward: masks rebuilt per call (dense without ``sparse``)."""
    return nullcontext() if sparse is None else sparse.rebuilt()


def check_sparse_args(select, skip, block_size, min_keep_ratio, scale) -> None:
    """The sparse-attention settings, checked before any model is loaded; errors name the setting."""
    if select is None:
        return
    if not 0 < float(select) <= 1:
        raise ConfigError(f"sparse_select: {select} is not in (0, 1]")
    if not 0 <= float(skip) < 1:
        raise ConfigError(f"sparse_skip: {skip} is not in [0, 1)")
    if int(block_size) < 1:
        raise ConfigError(f"sparse_block_size: {block_size} must be >= 1")
    if not 0 < float(min_keep_ratio) <= 1:
        raise ConfigError(f"sparse_min_keep_ratio: {min_keep_ratio} is not in (0, 1]")
    if float(scale) < 0:
        raise ConfigError(f"sparse_weight_scale: {scale} must be >= 0")


def sparse_ratios(
    importance,
    select: float,
    min_keep_ratio: float = 0.01,
    scale: float = 2 / 3,
    increases_keep: bool = True,
    n_kv_heads: int | None = None,
    percentiles: tuple[float, float] = PERCENTILES,
) -> np.ndarray:
    """Keep ratios [layers, heads] from importance (constant importance: every w = 1, the users' "uniform
    sparse", r = select).

    Layers whose importance is NaN (absent from a ``head_importance.pt``) stay dense (ratio 1), as the users'
    model leaves layers without sparsity levels; the weights are normalised over the other layers."""
    s = np.asarray(importance, dtype=np.float64)
    rows = np.isfinite(s).all(axis=1)
    if not rows.any():
        raise ConfigError("sparse_importance: the importance has no layer with finite scores")
    ratios = np.ones_like(s)
    w = importance_weights(s[rows], scale, increases_keep, n_kv_heads, percentiles)
    ratios[rows] = keep_ratios(w, select, min_keep_ratio)
    return ratios
