"""Exact leave-one-out: score(l, h) = L(gates) - L(gates with head (l, h) off), gates all on by default.

Same sign as IG: negative = switching the head off raises the loss (the head lowers it); importance = -score.
A head already off at ``gates`` scores 0.

Per p the rows are: the gates, each of the L * H single-head ablations, and each of the L whole-layer
ablations, all in one batched engine call (with a prefix-caching engine a row runs from its first changed
layer). ``loss_base`` [n_p, L] = L(layer l off) and ``ig_sum`` [n_p, L] = sum of the layer's scores, so
``gap`` = sum_h [L(on) - L(-h)] - [L(on) - L(-layer)] measures how far the layer's heads are from acting
additively on the loss (0 iff additive); it is no error of the method.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.gate_engine import clear_prefix, prefix_hint
from ..objective.loss import ScoredInput
from .ig import SampleAttribution


def ablation_rows(gates: torch.Tensor) -> torch.Tensor:
    """[1 + L * H + L, L, H]: ``gates``, then each head off (row-major), then each layer off."""
    n_layers, n_heads = gates.shape
    heads = gates.flatten().repeat(n_layers * n_heads, 1)
    heads.fill_diagonal_(0.0)
    layers = gates.repeat(n_layers, 1, 1)
    layers[torch.arange(n_layers), torch.arange(n_layers)] = 0.0
    return torch.cat([gates[None], heads.reshape(-1, n_layers, n_heads), layers])


def leave_one_out(engine, scored: ScoredInput, gates: torch.Tensor | None = None) -> SampleAttribution:
    """Leave-one-out scores of every head at ``gates`` ([L, H], default all on), every mask probability."""
    n_layers, n_heads = engine.adapter.n_layers, engine.adapter.n_heads
    at = torch.ones(n_layers, n_heads) if gates is None else gates.float()
    rows = ablation_rows(at)
    n_p, n_rows, n_h = scored.n_p, rows.shape[0], n_layers * n_heads

    def describe(row: int) -> str:
        p, r = divmod(row, n_rows)
        what = "all on" if r == 0 else f"head {divmod(r - 1, n_heads)} off" if r <= n_h else f"layer {r - 1 - n_h} off"
        return f"p={scored.mask_probs[p]}, {what}"

    row_p = torch.arange(n_p).repeat_interleave(n_rows)
    all_rows = rows[None].expand(n_p, -1, -1, -1).reshape(-1, n_layers, n_heads)
    losses = engine.losses(scored, row_p, all_rows, describe, **prefix_hint(engine, all_rows))
    clear_prefix(engine)
    losses = losses.double().reshape(n_p, n_rows)
    full = losses[:, 0]
    scores = (full[:, None] - losses[:, 1 : 1 + n_h]).reshape(n_p, n_layers, n_heads)
    return SampleAttribution(
        sample_id=scored.sample_id,
        ig=scores.float().numpy(),
        loss_full=full.numpy(),
        loss_base=losses[:, 1 + n_h :].numpy(),
        ig_sum=scores.sum(-1).numpy(),
        n_scored=np.asarray(scored.n_scored, dtype=np.int64),
    )
