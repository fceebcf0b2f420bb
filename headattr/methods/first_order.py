"""First-order head importance: dL/dgate at the current gates (all on by default).

This is Michel et al. (2019)'s head importance and attribution patching: with gate g_h scaling head h's slice
z_h of the output projection's input, dL/dg_h = sum over positions of z_h . dL/dz_h (gradient x activation over
the head's slice). Signed scores go to ``ig`` (negative = the head lowers the loss, as IG); Michel's
importance |dL/dg| goes to ``extras["abs"]``, optionally divided by its L2 norm over each layer's heads. Michel
et al. sum |dL/dg| over the whole data set before normalising; to match that exactly, average ``abs`` with
``normalize=False`` over samples and apply :func:`layer_normalized` to the aggregate.

There is no completeness identity: ``loss_base`` [n_p, 1] is L at the gates (the reference the gradient is
taken at) and ``ig_sum`` [n_p, 1] is the sum of the gradients, so ``gap`` reads as that sum.
"""

from __future__ import annotations

import numpy as np
import torch

from ..objective.loss import ScoredInput
from .ig import SampleAttribution


def layer_normalized(importance: torch.Tensor) -> torch.Tensor:
    """Divide each layer by its L2 norm over heads ([..., L, H]), as Michel et al.'s ``compute_heads_importance``."""
    return importance / (importance.pow(2).sum(-1, keepdim=True).sqrt() + 1e-20)


def first_order(
    engine, scored: ScoredInput, normalize: bool = False, gates: torch.Tensor | None = None
) -> SampleAttribution:
    """Gradient of the loss at ``gates`` ([L, H], default all on) for every mask probability: one row per p."""
    n_p = scored.n_p
    at = torch.ones(engine.adapter.n_layers, engine.adapter.n_heads) if gates is None else gates.float()
    losses, grads = engine.gradients(
        scored, torch.arange(n_p), at[None].repeat(n_p, 1, 1), lambda row: f"p={scored.mask_probs[row]}"
    )
    grads = grads.double()
    importance = layer_normalized(grads.abs()) if normalize else grads.abs()
    losses = losses.double().numpy()
    return SampleAttribution(
        sample_id=scored.sample_id,
        ig=grads.float().numpy(),
        loss_full=losses,
        loss_base=losses[:, None].copy(),
        ig_sum=grads.sum((1, 2))[:, None].numpy(),
        n_scored=np.asarray(scored.n_scored, dtype=np.int64),
        extras={"abs": importance.float().numpy()},
    )
