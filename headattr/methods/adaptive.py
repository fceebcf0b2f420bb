"""IG to a completeness tolerance: raise each path's quadrature steps until its relative gap is below ``tol``.

The completeness gap of a path (sum of its IG minus L(all on) - L(start)) is exact and free: both sides are
computed anyway, so it serves as the error indicator and no separate estimate (Gauss-Kronrod) is needed.
Round r reruns only the paths still above ``tol`` (relative gap = |gap| / max(|dL|, ``gap_floor``), the
worst over mask probabilities) with twice the previous steps, capped at ``max_steps``, through the unchanged
:func:`~headattr.methods.ig.integrated_gradients`. The nodes of a doubled Gauss-Legendre rule do not nest, so
a round does not reuse the previous nodes; its error falls geometrically with the steps on smooth
integrands, so one doubling (8 + 16 rows) is usually enough, far fewer rows than the nested Riemann sequence
needs for the same gap (``bench/bench_ig.py --completeness``). The path starts' losses are computed once.

``refine="panels"`` answers integrands with sharp interior turns (the demo model's layer-0 paths on its
addition items: dL/dt peaks at -60 inside t in [0.3, 0.55] and is ~0.05 elsewhere, docs/convergence.md), where
doubling a global rule spends its nodes everywhere. It splits [0, 1] into panels with ``steps`` Gauss-Legendre
nodes each, and uses that completeness holds on every panel: the IG over [a, b] must equal L(b) - L(a), so the
loss at each new edge (one forward row per mask probability) gives an exact per-panel gap. Each round bisects
the panels carrying the largest gaps and keeps the others as computed (nested: nothing converged is redone).

A small gap is what the tolerance bounds; errors of single heads that cancel in the sum are not seen by it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..engine.gate_engine import GateEngine
from ..errors import ConfigError
from ..objective.loss import ScoredInput
from .ig import SampleAttribution, first_moving_layer, integrated_gradients
from .paths import GatePaths
from .quadrature import panel_gauss_legendre

DEFAULT_GAP_FLOOR = 1e-2
REFINE = ("double", "panels")
SPLIT_SHARE = 0.25  # a round bisects every panel whose gap is at least this share of the largest one


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
    refine: str = "double",
) -> SampleAttribution:
    """:func:`integrated_gradients` with per-path steps raised until every relative gap <= ``tol``.

    ``refine``: ``double`` (the rule at twice the steps, rerun) or ``panels`` (Gauss-Legendre panels bisected
    where their exact gaps are largest; the first round's rule is ``rule``). Returns the usual attribution with
    ``extras["steps_used"]`` int64 [n_p, Q] (a path's final nodes, the same for every p, since a path's mask
    probabilities run together); ``max_steps`` bounds them, so a gap above ``tol`` there means the cap was hit.
    With ``double``, paths whose moving gates overlap (no per-path slice of ``ig``) are rerun together.
    """
    if refine not in REFINE:
        raise ConfigError(f"ig.refine: {refine!r} is not one of {REFINE}")
    res = integrated_gradients(engine, scored, paths, rule, steps)
    ig, ig_sum = res.ig.copy(), res.ig_sum.copy()
    delta = res.loss_full[:, None] - res.loss_base  # [n_p, Q]
    support = (paths.start != 1).numpy()  # [Q, L, H]
    disjoint = bool(support.sum(0).max(initial=0) <= 1)
    used = np.full(ig_sum.shape, steps, dtype=np.int64)
    if refine == "panels":
        if not disjoint:
            raise ValueError("ig.refine: panels needs paths whose moving gates do not overlap")
        todo = (relative_gap(ig_sum - delta, delta, gap_floor) > tol).any(0) & (max_steps >= 2 * steps)
        for q in np.flatnonzero(todo):
            ends = (res.loss_base[:, q], res.loss_full)
            ig_q, ig_sum[:, q], used[:, q] = refine_panels(
                engine, scored, paths, q, ends, steps, tol, max_steps, gap_floor
            )
            ig[:, support[q]] = ig_q[:, support[q]]
        return dataclasses.replace(res, ig=ig, ig_sum=ig_sum, extras={**res.extras, "steps_used": used})
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


def refine_panels(engine, scored, paths, q, ends, steps, tol, max_steps, gap_floor=DEFAULT_GAP_FLOOR):
    """(ig [n_p, L, H] float64, ig sum [n_p], nodes) of path ``q`` on Gauss-Legendre panels refined to ``tol``.

    ``ends`` = (L(start) [n_p], L(all on) [n_p]). Starts from [0, 1/2], [1/2, 1] and bisects, round by round,
    the panels whose exact gap max_p |IG(a, b) - (L(b) - L(a))| is at least ``SPLIT_SHARE`` of the largest,
    as far as ``max_steps`` nodes allow, until the path's relative gap is <= ``tol``. The path's rows run
    from its first moving layer (prefix cache and attention replay as in :func:`integrated_gradients`).
    """
    path = subset_paths(paths, [q])
    n_p = scored.n_p
    first = int(first_moving_layer(path)[0])
    hint = {"from_layer": torch.full((n_p,), first)} if getattr(engine, "prefix_cache", False) else {}
    loss_at = {0.0: np.asarray(ends[0], dtype=float), 1.0: np.asarray(ends[1], dtype=float)}
    delta = loss_at[1.0] - loss_at[0.0]
    panels: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}  # (a, b) -> (ig [n_p, L, H], sum [n_p])
    split = [(0.0, 1.0)]
    while True:
        children = [c for a, b in split for c in ((a, (a + b) / 2), ((a + b) / 2, b))]
        for ab in split:
            panels.pop(ab, None)  # replaced by its halves
        mids = [(a + b) / 2 for a, b in split]
        gates = path.gates(mids)[:, 0]  # [K, L, H]
        row_p = torch.arange(n_p).repeat(len(mids))
        losses = engine.losses(
            scored,
            row_p,
            gates.repeat_interleave(n_p, 0),
            lambda r, mids=mids: f"p={scored.mask_probs[r % n_p]}, path {path.names[0]} at t={mids[r // n_p]:.6f}",
            **{k: v.repeat(len(mids)) for k, v in hint.items()},
        )
        for k, c in enumerate(mids):
            loss_at[c] = losses[k * n_p : (k + 1) * n_p].numpy()
        res = integrated_gradients(
            engine, scored, path, steps=steps, start_losses=False, nodes=panel_gauss_legendre(children, steps)
        )
        node_ig = res.extras["node_ig"].reshape(n_p, len(children), steps, *res.ig.shape[1:]).sum(2)
        for k, c in enumerate(children):
            panels[c] = (node_ig[:, k], node_ig[:, k].sum((1, 2)))
        total = sum(s for _, s in panels.values())
        room = (max_steps - steps * len(panels)) // steps  # panels that may still be added (one per bisection)
        if relative_gap(total - delta, delta, gap_floor).max() <= tol or room <= 0:
            break
        gaps = {ab: np.abs(s - (loss_at[ab[1]] - loss_at[ab[0]])).max() for ab, (_, s) in panels.items()}
        worst = max(gaps.values())
        ranked = sorted((ab for ab in gaps if gaps[ab] >= SPLIT_SHARE * worst), key=lambda ab: -gaps[ab])
        split = ranked[:room]
    ig = sum(g for g, _ in panels.values())
    return ig, total, steps * len(panels)
