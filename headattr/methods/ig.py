"""Integrated Gradients over head gates, for one sample, every mask probability and every path at once.

Sign convention: the raw IG of the LOSS is stored. A negative value means that opening the head's gate
lowers the loss (the head helps predict the masked tokens); ``importance = -ig``.

Completeness, per (p, path q): sum_{heads} IG[p, q] = L(all on) - L(start_q). For ``per_layer`` the start of
path l is "layer l at the baseline, every other layer on"; for ``joint`` it is "every head at the baseline".

No wasted rows, and no dependence on which other paths run (so a layer-sharded run gives the same bits):
- the all-on gate matrix (node t = 1 of every path) runs once per mask probability, in its own engine call
  from layer 0; it gives L(all on) and the gradient at t = 1 for every path;
- every path then runs its other nodes (and its start, unless the start is a node or an earlier path's start
  from the same layer, as on STP paths) in its own engine call,
  from its first moving layer: an engine with prefix caching runs only the layers from there up (gates below
  never move, so their gradients are not needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.gate_engine import GateEngine
from ..objective.loss import ScoredInput
from .paths import GatePaths
from .quadrature import nodes_and_weights


@dataclass
class SampleAttribution:
    """IG of one sample. ``ig`` [n_p, L, H] float32; ``loss_full`` [n_p]; ``loss_base``, ``ig_sum`` [n_p, Q]."""

    sample_id: str
    ig: np.ndarray
    loss_full: np.ndarray
    loss_base: np.ndarray
    ig_sum: np.ndarray
    n_scored: np.ndarray
    extras: dict = field(default_factory=dict)

    @property
    def gap(self) -> np.ndarray:
        """Completeness gap [n_p, Q]: sum of IG minus (L(all on) - L(path start))."""
        return self.ig_sum - (self.loss_full[:, None] - self.loss_base)


def first_moving_layer(paths: GatePaths) -> torch.Tensor:
    """Lowest layer whose gates leave 1 on each path, long [Q] (0 for a path that never moves)."""
    moves = (paths.start != 1).any(-1)  # [Q, L]
    return torch.where(moves.any(-1), moves.float().argmax(-1), 0).long()


def _same_start(paths, first: torch.Tensor, q: int) -> int | None:
    """An earlier path with the same start and first moving layer as path ``q`` (its start loss is the same call,
    so the same bits), else None."""
    for earlier in range(q):
        if int(first[earlier]) == int(first[q]) and torch.equal(paths.start[earlier], paths.start[q]):
            return earlier
    return None


def node_weights(paths, rule: str, steps: int, nodes=None) -> tuple[np.ndarray, torch.Tensor]:
    """(nodes t [m], weights [m, Q, L, H]) with IG = sum_k dL/dg(g(t_k)) * weights_k: the path's own quadrature
    (threshold paths, see :mod:`headattr.methods.stp`) or w_k * dg/dt(t_k) for a smooth path, at the rule's
    nodes or at ``nodes`` = (t [m], w [m]) when given."""
    if hasattr(paths, "quadrature"):
        return paths.quadrature(rule, steps)
    t, w = nodes_and_weights(rule, steps) if nodes is None else nodes
    return t, torch.as_tensor(w)[:, None, None, None] * paths.velocity(t)


def integrated_gradients(
    engine: GateEngine,
    scored: ScoredInput,
    paths: GatePaths,
    rule: str = "riemann_right",
    steps: int = 8,
    start_losses: bool = True,
    nodes=None,
) -> SampleAttribution:
    """IG of ``scored`` along every path in ``paths`` with quadrature ``rule`` at ``steps`` nodes.

    ``paths``: :class:`GatePaths` (``rule`` from :mod:`.quadrature`) or
    :class:`~headattr.methods.stp.ThresholdPaths` (``rule`` one of its schemes, per-path weights averaged).

    ``start_losses=False`` skips the forward rows that only serve the completeness check (the loss at a path
    start that is not a quadrature node): ``loss_base`` and ``gap`` are NaN there, ``ig`` is unchanged.
    ``nodes`` = (t [m], w [m]) replaces the rule's nodes (smooth paths); the result then carries
    ``extras["node_ig"]`` float64 [n_p, m, L, H], each node's term of ``ig`` (summed over paths).
    """
    t, weights = node_weights(paths, rule, steps, nodes)  # [m], [m, Q, L, H]
    n_p, n_q, m = scored.n_p, paths.n_paths, len(t)
    node_gates = paths.gates(t)  # [m, Q, L, H]
    n_layers, n_heads = node_gates.shape[-2:]
    # rows ordered (p, q, k): gates [n_p * Q * m, L, H]
    row_gates = node_gates.permute(1, 0, 2, 3)[None].expand(n_p, n_q, m, n_layers, n_heads)
    row_gates = row_gates.reshape(-1, n_layers, n_heads)
    row_p = torch.arange(n_p).repeat_interleave(n_q * m)
    row_q = torch.arange(n_q).repeat_interleave(m).repeat(n_p)
    first = first_moving_layer(paths)  # [Q]

    def describe(row: int) -> str:
        p, rest = divmod(row, n_q * m)
        q, k = divmod(rest, m)
        return f"p={scored.mask_probs[p]}, path {paths.names[q]}, step {k + 1}/{m} (t={t[k]:.4f})"

    prefix = getattr(engine, "prefix_cache", False)
    all_on = (row_gates == 1).flatten(1).all(1)  # [n_p * Q * m]
    grads = torch.zeros(row_gates.shape, dtype=torch.float64)
    loss_base = torch.empty(n_p, n_q, dtype=torch.float64)
    on_p = torch.arange(n_p)
    t_zero = np.flatnonzero(t == 0)

    def from_layer(n: int, layer: int) -> dict:
        return {"from_layer": torch.full((n,), int(layer))} if prefix else {}

    try:
        on_gates, on_what = torch.ones(n_p, n_layers, n_heads), lambda r: f"p={scored.mask_probs[r]}, all gates on"
        if bool(all_on.any()):  # a node at t = 1: one gradient row per p serves every path
            loss_full, grad_on = engine.gradients(scored, on_p, on_gates, on_what, **from_layer(n_p, 0))
            grads[all_on] = grad_on.double()[row_p[all_on]]
        else:
            loss_full = engine.losses(scored, on_p, on_gates, on_what, **from_layer(n_p, 0))
        if prefix and bool((first > 0).any()) and hasattr(engine, "prepare_prefix"):
            engine.prepare_prefix(scored)
        for q in range(n_q):
            rows = torch.nonzero((row_q == q) & ~all_on).flatten()
            losses_q, grads_q = engine.gradients(
                scored,
                row_p[rows],
                row_gates[rows],
                lambda r, rows=rows: describe(int(rows[r])),
                **from_layer(len(rows), first[q]),
            )
            grads[rows] = grads_q.double()
            if bool((paths.start[q] == 1).all()):
                loss_base[:, q] = loss_full
            elif t_zero.size:  # the start is the node t = 0 of this path
                loss_base[:, q] = losses_q[(rows % m == int(t_zero[0])).nonzero().flatten()]
            elif not start_losses:
                loss_base[:, q] = float("nan")
            elif (same := _same_start(paths, first, q)) is not None:  # STP: every path (of a layer) starts alike
                loss_base[:, q] = loss_base[:, same]
            else:
                loss_base[:, q] = engine.losses(
                    scored,
                    on_p,
                    paths.start[q].float().expand(n_p, -1, -1),
                    lambda r, q=q: f"p={scored.mask_probs[r]}, path {paths.names[q]} start",
                    **from_layer(n_p, first[q]),
                )
    finally:
        if prefix and hasattr(engine, "clear_prefix"):
            engine.clear_prefix()  # the cache belongs to this sample and this model state
    grads = grads.reshape(n_p, n_q, m, n_layers, n_heads)
    ig_paths = torch.einsum("pqklh,kqlh->pqlh", grads, weights)  # [n_p, Q, L, H]
    path_weight = getattr(paths, "weight", None)  # [Q]: 1 / P for P averaged paths
    ig = ig_paths.sum(1) if path_weight is None else torch.einsum("pqlh,q->plh", ig_paths, path_weight.double())
    extras = {} if nodes is None else {"node_ig": torch.einsum("pqklh,kqlh->pklh", grads, weights).numpy()}
    return SampleAttribution(
        sample_id=scored.sample_id,
        ig=ig.float().numpy(),
        loss_full=loss_full.double().numpy(),
        loss_base=loss_base.numpy(),
        ig_sum=ig_paths.sum((2, 3)).numpy(),
        n_scored=np.asarray(scored.n_scored, dtype=np.int64),
        extras=extras,
    )
