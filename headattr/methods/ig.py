"""Integrated Gradients over head gates, for one sample, every mask probability and every path at once.

Sign convention: the raw IG of the LOSS is stored. A negative value means that opening the head's gate
lowers the loss (the head helps predict the masked tokens); ``importance = -ig``.

Completeness, per (p, path q): sum_{heads} IG[p, q] = L(all on) - L(start_q). For ``per_layer`` the start of
path l is "layer l at the baseline, every other layer on"; for ``joint`` it is "every head at the baseline".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine import GateEngine
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


def integrated_gradients(
    engine: GateEngine, scored: ScoredInput, paths: GatePaths, rule: str = "riemann_right", steps: int = 8
) -> SampleAttribution:
    """IG of ``scored`` along every path in ``paths`` with quadrature ``rule`` at ``steps`` nodes."""
    t, w = nodes_and_weights(rule, steps)
    n_p, n_q, m = scored.n_p, paths.n_paths, len(t)
    node_gates = paths.gates(t)  # [m, Q, L, H]
    n_layers, n_heads = node_gates.shape[-2:]
    # rows ordered (p, q, k): gates [n_p * Q * m, L, H]
    row_gates = node_gates.permute(1, 0, 2, 3)[None].expand(n_p, n_q, m, n_layers, n_heads)
    row_p = torch.arange(n_p).repeat_interleave(n_q * m)

    def describe(row: int) -> str:
        p, rest = divmod(row, n_q * m)
        q, k = divmod(rest, m)
        return f"p={scored.mask_probs[p]}, path {paths.names[q]}, step {k + 1}/{m} (t={t[k]:.4f})"

    _, grads = engine.gradients(scored, row_p, row_gates.reshape(-1, n_layers, n_heads), describe)
    grads = grads.double().reshape(n_p, n_q, m, n_layers, n_heads)
    weighted_velocity = torch.as_tensor(w)[:, None, None, None] * paths.velocity(t)  # [m, Q, L, H]
    ig_paths = torch.einsum("pqklh,kqlh->pqlh", grads, weighted_velocity)  # [n_p, Q, L, H]

    end_rows = torch.cat([torch.ones(n_p, 1, n_layers, n_heads), paths.start[None].expand(n_p, -1, -1, -1)], 1)
    end_p = torch.arange(n_p).repeat_interleave(1 + n_q)
    ends = engine.losses(scored, end_p, end_rows.reshape(-1, n_layers, n_heads).float()).reshape(n_p, 1 + n_q)
    return SampleAttribution(
        sample_id=scored.sample_id,
        ig=ig_paths.sum(1).float().numpy(),
        loss_full=ends[:, 0].numpy(),
        loss_base=ends[:, 1:].numpy(),
        ig_sum=ig_paths.sum((2, 3)).numpy(),
        n_scored=np.asarray(scored.n_scored, dtype=np.int64),
    )
