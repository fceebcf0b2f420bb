"""What one sample's loss is: the noised inputs per mask probability, which outputs are read, and weights.

Diffusion objective (per mask probability p, masked positions M inside the target region T):
- ``mean``:      L_p = sum_{j in M} CE_j / |M|
- ``inverse_p``: L_p = sum_{j in M} CE_j / (p * |T|)        (LLaDA/Dream ELBO, normalised by target length)
- ``sum``:       L_p = sum_{j in M} CE_j                       (the users' ``--loss_normalize sum``)
where CE_j = -log softmax(logits at j - shift)[token_j], shift = 1 for shifted-logit models (Dream), else 0.

Causal objective: the unmasked text, L = mean over target positions j >= 1 of CE(logits at j - 1, token_j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.samples import Sample
from ..errors import ConfigError
from .masking import target_positions, variant_probs

OBJECTIVES = ("diffusion", "causal")
WEIGHTINGS = ("mean", "inverse_p", "sum")


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE_j = -log softmax(logits_j)[target_j] per row of ``logits`` [n, V], accurate where p(target) ~ 1.

    Computed as softplus(logsumexp_{k != y} z_k - z_y). ``F.cross_entropy`` in fp32 adds the whole vocabulary's
    probability mass onto the target's (~1), and every term below half an ulp of 1 (6e-8) is lost: on the demo
    model's confident copy items a loss of 2.0e-3 came out 5.5e-6 low, which left a completeness gap of 1e-5
    that no quadrature removes (docs/convergence.md). Here the target never enters the sum, so the result and
    its gradient (-(1 - p_y) for the target's logit, p_k for the others) keep fp32's relative precision.
    """
    return torch.nn.functional.softplus(_OthersMinusTarget.apply(logits, targets))


class _OthersMinusTarget(torch.autograd.Function):
    """logsumexp_{k != y} z_k - z_y per row of ``logits`` [n, V]; the same values and gradient bits as autograd
    through ``logsumexp(scatter(z, y, -inf)) - gather(z, y)``, with the backward in place on the one [n, V]
    buffer the forward keeps (autograd's allocates and fills about five more: a third of an STP pass on a
    30k vocabulary, docs/performance.md)."""

    @staticmethod
    def forward(ctx, logits, targets):
        index = targets[:, None]
        others = logits.scatter(1, index, float("-inf"))
        lse = torch.logsumexp(others, 1)
        ctx.save_for_backward(others, lse, index)
        ctx.spent = False
        return lse - logits.gather(1, index).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if ctx.spent:
            raise RuntimeError("token_cross_entropy: backward runs once per forward (its buffer is reused)")
        ctx.spent = True
        others, lse, index = ctx.saved_tensors
        # autograd's terms: grad * exp(z_k - lse) for k != y (exp(-inf) = 0 at y), plus -grad at y
        out = others.sub_(lse[:, None]).exp_().mul_(grad[:, None])
        return out.scatter_(1, index, (-grad)[:, None]), None


def token_weight(weighting: str, p: float, n_masked: int, n_target: int) -> float:
    """The factor of every CE term of a row: 1 / |M|, 1 / (p |T|) or 1."""
    if weighting == "mean":
        return 1.0 / n_masked
    return 1.0 if weighting == "sum" else 1.0 / (float(p) * n_target)


@dataclass
class ScoredInput:
    """One sample prepared for scoring under several mask probabilities (one row per p).

    Shapes: ``input_ids`` [n_p, pos]; for each p, ``pred_pos[i]`` and ``targets[i]`` are [n_scored_i];
    ``token_weight`` [n_p] multiplies every CE term of that row.
    """

    sample_id: str
    mask_probs: list[float]
    input_ids: torch.Tensor
    pred_pos: list[torch.Tensor]
    targets: list[torch.Tensor]
    token_weight: torch.Tensor

    @property
    def n_p(self) -> int:
        return len(self.mask_probs)

    @property
    def n_scored(self) -> list[int]:
        return [int(t.numel()) for t in self.targets]


def build_scored_input(
    sample: Sample,
    masks: np.ndarray | None,
    mask_probs,
    objective: str = "diffusion",
    weighting: str = "mean",
    mask_token_id: int | None = None,
    shift: bool = False,
    mask_samples: int = 1,
) -> ScoredInput:
    """Noise ``sample`` with ``masks`` ([n_p * S, pos], from :mod:`headattr.objective.masking`) and list what is
    scored; one row per (p, s) variant, so ``mask_probs`` of the result repeats each p ``mask_samples`` times."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective.kind: {objective!r} is not one of {OBJECTIVES}")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"objective.weighting: {weighting!r} is not one of {WEIGHTINGS}")
    ids = torch.as_tensor(sample.input_ids, dtype=torch.long)
    if objective == "causal":
        scored = torch.as_tensor(target_positions(sample, shift=True))
        return ScoredInput(
            sample_id=sample.sample_id,
            mask_probs=[1.0],
            input_ids=ids[None, :].clone(),
            pred_pos=[scored - 1],
            targets=[ids[scored]],
            token_weight=torch.tensor([1.0 / scored.numel()], dtype=torch.float64),
        )
    if mask_token_id is None:
        raise ConfigError("model.mask_token_id: the diffusion objective needs a mask token id")
    mask_probs = variant_probs(mask_probs, mask_samples)
    if masks is None or masks.shape != (len(mask_probs), sample.length):
        raise ValueError(f"sample {sample.sample_id!r}: masks must have shape [n_p * S, {sample.length}]")
    n_target = target_positions(sample, shift).size
    rows, pred_pos, targets, weights = [], [], [], []
    for p, mask in zip(mask_probs, masks, strict=True):
        scored = torch.as_tensor(np.flatnonzero(mask))
        noised = ids.clone()
        noised[scored] = mask_token_id
        rows.append(noised)
        pred_pos.append(scored - int(shift))
        targets.append(ids[scored])
        weights.append(token_weight(weighting, p, scored.numel(), n_target))
    return ScoredInput(
        sample_id=sample.sample_id,
        mask_probs=[float(p) for p in mask_probs],
        input_ids=torch.stack(rows),
        pred_pos=pred_pos,
        targets=targets,
        token_weight=torch.tensor(weights, dtype=torch.float64),
    )
