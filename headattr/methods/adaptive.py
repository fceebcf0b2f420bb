"""IG to a completeness tolerance: raise each path's quadrature steps until its relative gap is below ``tol``.

The completeness gap of a path (sum of its IG minus L(all on) - L(start)) is exact and free: both sides are
computed anyway, so it serves as the error indicator and no separate estimate (Gauss-Kronrod) is needed.
Round r reruns only the paths still above ``tol`` (relative gap = |gap| / max(|dL|, ``gap_floor``), the
worst over mask probabilities) with twice the previous steps, capped at ``max_steps``, through the unchanged
:func:`~headattr.methods.ig.integrated_gradients`. The nodes of a doubled Gauss-Legendre rule do not nest, so
a round does not reuse the previous nodes; its error falls geometrically with the steps on smooth
integrands, so one doubling (8 + 16 rows) is usually enough, far fewer rows than the nested Riemann sequence
needs for the same gap (``bench/bench_ig.py --completeness``). The path starts' losses are computed once.

A small gap is what the tolerance bounds; errors of single heads that cancel in the sum are not seen by it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..engine.gate_engine import GateEngine
from ..objective.loss import ScoredInput
from .ig import SampleAttribution, integrated_gradients
from .paths import GatePaths

DEFAULT_GAP_FLOOR = 1e-2


def relative_gap(gap, delta, floor: float = DEFAULT_GAP_FLOOR) -> np.ndarray:
    """|gap| / max(|delta|, floor): relative where |delta| is large, |gap| / floor where it is ~0."""
    return np.abs(np.asarray(gap, dtype=float)) / np.maximum(np.abs(np.asarray(delta, dtype=float)), floor)


def subset_paths(paths: GatePaths, idx) -> GatePaths:
    """The paths ``idx`` of a family (start rows and names; other fields as they are)."""
    idx = [int(i) for i in idx]
    return dataclasses.replace(paths, start=paths.start[idx], names=[paths.names[i] for i in idx])


def adaptive_integrated_gradients(
    engine: GateEngine,
    scored: ScoredInput,
    paths: GatePaths,
    rule: str = "gauss_legendre",
    steps: int = 8,
    tol: float = 1e-3,
    max_steps: int = 128,
    gap_floor: float = DEFAULT_GAP_FLOOR,
) -> SampleAttribution:
    """:func:`integrated_gradients` with per-path steps doubled until every relative gap <= ``tol``.

    Returns the usual attribution with ``extras["steps_used"]`` int64 [n_p, Q] (a path's steps, the same for
    every p, since a path's mask probabilities run together); ``max_steps`` there with a gap above ``tol``
    means the cap was hit. Paths whose moving gates overlap (no per-path slice of ``ig``) are rerun together.
    """
    res = integrated_gradients(engine, scored, paths, rule, steps)
    ig, ig_sum = res.ig.copy(), res.ig_sum.copy()
    delta = res.loss_full[:, None] - res.loss_base  # [n_p, Q]
    support = (paths.start != 1).numpy()  # [Q, L, H]
    disjoint = bool(support.sum(0).max(initial=0) <= 1)
    used = np.full(ig_sum.shape, steps, dtype=np.int64)
    m = steps
    while m < max_steps:
        todo = np.flatnonzero((relative_gap(ig_sum - delta, delta, gap_floor) > tol).any(0))
        if not todo.size:
            break
        todo = todo if disjoint else np.arange(paths.n_paths)
        m = min(2 * m, max_steps)
        redo = integrated_gradients(engine, scored, subset_paths(paths, todo), rule, m, start_losses=False)
        moved = support[todo].any(0)  # [L, H]
        ig[:, moved] = redo.ig[:, moved]
        ig_sum[:, todo] = redo.ig_sum
        used[:, todo] = m
    return dataclasses.replace(res, ig=ig, ig_sum=ig_sum, extras={**res.extras, "steps_used": used})
