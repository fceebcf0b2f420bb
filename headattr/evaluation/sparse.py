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

from ..errors import ConfigError
from ..models.sparse import SparseAttention


def build_step(skip: float, steps: int) -> int:
    """The step that builds the masks: int(skip * steps) + 1 (the users' end_time)."""
    if not 0 <= skip <= 1:
        raise ConfigError(f"sparse_validation.skip: {skip} is not in [0, 1)")
    return int(skip * steps) + 1


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
