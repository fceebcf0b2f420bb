"""Scored inputs for lm-eval requests: exact causal log-likelihood and LLaDA's Monte-Carlo ELBO.

Both build a :class:`headattr.objective.loss.ScoredInput`, so the gate engine scores them (batched rows, vocabulary
logits only at scored positions, the logit shift of Dream, NaN/inf checks): a row's loss is
sum_j token_weight * CE_j.

**Masked diffusion LMs.** For a context c and continuation x of length n, the ELBO is
    log p(x | c) >= -E_{k ~ U{1..n}} E_{M: |M| = k} [ (n / k) * sum_{j in M} CE(x_j | x with M masked, c) ],
the prompt never masked. Row i of ``mc_num`` rows masks exactly k_i continuation tokens (uniform subset), with
k_i = ((k0 - 1 + round(i * n / mc_num)) mod n) + 1 and one k0 ~ U{1..n} per request: every row's k_i is
marginally uniform on 1..n (so the mean of the rows is an unbiased estimate of the ELBO) and the counts are
stratified over [1, n] as LLaDA's ``_forward_process``. (LLaDA rounds k0 + i * n / b with torch.round, whose
half-to-even rule makes k_i depend on k0's parity and its marginal slightly non-uniform; the integer offset here
avoids that.) Draws come from a generator keyed by (seed, context tokens, continuation tokens): the estimate of
a request does not depend on batching, order or device.
"""

from __future__ import annotations

import hashlib

import torch

from ..objective.loss import ScoredInput


def request_generator(seed: int, context: list[int], continuation: list[int]) -> torch.Generator:
    """A CPU generator determined by the seed and the request's tokens alone."""
    text = f"{int(seed)}|{','.join(map(str, context))}|{','.join(map(str, continuation))}"
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1))
    return gen


def stratified_counts(n_rows: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Masked-token counts in 1..length, long [n_rows]: one uniform k0, then evenly spaced offsets mod length."""
    if length < 1 or n_rows < 1:
        raise ValueError(f"need a non-empty continuation and at least one row (length {length}, rows {n_rows})")
    k0 = int(torch.randint(1, length + 1, (), generator=generator))
    offsets = (2 * torch.arange(n_rows) * length + n_rows) // (2 * n_rows)  # round(i * length / n_rows), halves up
    return (k0 - 1 + offsets) % length + 1


def elbo_masks(counts: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Bool [n_rows, length]: row i masks a uniformly drawn subset of exactly counts[i] positions."""
    order = torch.stack([torch.randperm(length, generator=generator) for _ in range(counts.numel())])
    return order < counts[:, None]


def elbo_scored_input(
    request_id: str,
    context: list[int],
    continuation: list[int],
    mc_num: int,
    mask_token_id: int,
    shift: bool,
    seed: int,
) -> ScoredInput:
    """``mc_num`` noised copies of context + continuation; row loss = (n / k) * sum of CE at its k masked tokens."""
    ids = torch.as_tensor(list(context) + list(continuation), dtype=torch.long)
    n, start = len(continuation), len(context)
    if shift and start < 1:
        raise ValueError(f"{request_id}: a shifted-logit model needs at least one context token before position 0")
    gen = request_generator(seed, context, continuation)
    counts = stratified_counts(mc_num, n, gen)
    masks = elbo_masks(counts, n, gen)
    rows, pred_pos, targets = [], [], []
    for mask in masks:
        scored = start + torch.nonzero(mask).flatten()
        noised = ids.clone()
        noised[scored] = mask_token_id
        rows.append(noised)
        pred_pos.append(scored - int(shift))
        targets.append(ids[scored])
    return ScoredInput(
        sample_id=request_id,
        mask_probs=[float(k) / n for k in counts.tolist()],
        input_ids=torch.stack(rows),
        pred_pos=pred_pos,
        targets=targets,
        token_weight=n / counts.to(torch.float64),
    )


def causal_scored_input(
    request_id: str, rows: list[tuple[list[int], list[int]]], max_length: int, pad_id: int | None = None
) -> ScoredInput:
    """Rows (context, continuation); row loss = -log p(continuation | context).

    As lm-eval's HF model: the last ``max_length + 1`` tokens of context + continuation, the model reads all
    but the last, and position t predicts token t + 1. Rows of different lengths need ``pad_id``: they are
    padded on the right, which a causal model never reads from an earlier position (lm-eval's ``hf`` batches so).
    """
    inputs, pred_pos, targets = [], [], []
    for context, continuation in rows:
        tokens = (list(context) + list(continuation))[-(max_length + 1) :]
        n = min(len(continuation), len(tokens) - 1)
        inp = torch.as_tensor(tokens[:-1], dtype=torch.long)
        inputs.append(inp)
        pred_pos.append(torch.arange(len(inp) - n, len(inp)))
        targets.append(torch.as_tensor(tokens[len(tokens) - n :], dtype=torch.long))
    lengths = {len(x) for x in inputs}
    if len(lengths) != 1 and pad_id is None:
        raise ValueError(f"{request_id}: causal rows of one scored input must share a length, got {sorted(lengths)}")
    longest = max(lengths)
    return ScoredInput(
        sample_id=request_id,
        mask_probs=[1.0] * len(rows),
        input_ids=torch.stack([torch.nn.functional.pad(x, (0, longest - len(x)), value=pad_id or 0) for x in inputs]),
        pred_pos=pred_pos,
        targets=targets,
        token_weight=torch.ones(len(rows), dtype=torch.float64),
    )


def causal_input_length(context: list[int], continuation: list[int], max_length: int) -> int:
    """Length of the model input :func:`causal_scored_input` builds for one (context, continuation)."""
    return min(len(context) + len(continuation), max_length + 1) - 1
