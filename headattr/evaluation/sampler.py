"""LLaDA's low-confidence remasking sampler (greedy, temperature 0), and stop-sequence cutting.

The answer region (``gen_length`` masks after the prompt) is split into ``gen_length / block_length`` blocks,
decoded left to right (semi-autoregressive when there is more than one block), each in ``steps / n_blocks``
steps. At the start of a block with m masked tokens, step s unmasks m // steps_per_block tokens, plus one for
the first m % steps_per_block steps (LLaDA's ``get_num_transfer_tokens``: the linear schedule moves the same
expected number of tokens per step). At each step every masked position of the current block predicts its
argmax token; the positions whose argmax has the highest probability (softmax in float64) are unmasked, ties to
the leftmost. Positions of later blocks are never unmasked early. Unlike LLaDA's code the mask token itself is
never predicted (its logit is excluded from the argmax), so an unmasked position always holds a real token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens unmasked at each of ``steps`` steps: n_masked // steps each, one more for the first remainder."""
    base, extra = divmod(int(n_masked), int(steps))
    return [base + (1 if s < extra else 0) for s in range(steps)]


def check_schedule(gen_length: int, block_length: int, steps: int) -> int:
    """Steps per block; ``ValueError`` naming the model argument when the lengths do not divide."""
    if gen_length < 1 or block_length < 1 or steps < 1:
        raise ValueError(f"gen_length {gen_length}, block_length {block_length} and steps {steps} must be >= 1")
    if gen_length % block_length:
        raise ValueError(f"block_length: {block_length} does not divide gen_length {gen_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps: {steps} is not a multiple of the number of blocks {n_blocks}")
    return steps // n_blocks


@torch.no_grad()
def low_confidence_generate(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    gen_length: int,
    block_length: int,
    steps: int,
    mask_token_id: int,
    trace: list | None = None,
    suffix: Sequence[int] = (),
    step_context: Callable[[int], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Prompt long [batch, P] -> long [batch, P + gen_length].

    ``logits_fn(x)`` returns [batch, P + gen_length + S, vocab] logits aligned so that position j scores token j
    (a shifted-logit model's wrapper shifts them first). ``suffix`` (S fixed ids, e.g. BERT's [SEP]) follows the
    masked span in every forward, as the tokenizer's template puts it after a text, and is cut from the output.
    With ``trace`` a list, each step appends the bool [batch, P + gen_length + S] of positions it unmasked.
    ``step_context(i)`` is the context the forward of step i (0..steps-1 over all blocks) runs in (e.g. the
    sparse-attention schedule of :func:`headattr.evaluation.sparse.step_schedule`).
    """
    per_block = check_schedule(gen_length, block_length, steps)
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length + len(suffix)), mask_token_id, dtype=torch.long, device=prompt.device)
    x[:, :plen] = prompt
    if len(suffix):
        x[:, plen + gen_length :] = torch.as_tensor(list(suffix), dtype=torch.long, device=prompt.device)
    positions = torch.arange(x.shape[1], device=x.device)
    for block in range(gen_length // block_length):
        lo, hi = plen + block * block_length, plen + (block + 1) * block_length
        in_block = (positions >= lo) & (positions < hi)
        schedules = [transfer_schedule(int((row[lo:hi] == mask_token_id).sum()), per_block) for row in x]
        for step in range(per_block):
            masked = (x == mask_token_id) & in_block
            with (step_context or (lambda i: nullcontext()))(block * per_block + step):
                logits = logits_fn(x).to(torch.float64)
            logits[..., mask_token_id] = -torch.inf
            probs = torch.softmax(logits, dim=-1)
            conf, pred = probs.max(dim=-1)
            conf = torch.where(masked, conf, torch.tensor(-torch.inf, dtype=conf.dtype, device=conf.device))
            chosen = torch.zeros_like(masked)
            for r in range(batch):
                n = schedules[r][step]
                if n:
                    order = torch.sort(conf[r], descending=True, stable=True).indices
                    chosen[r, order[:n]] = True
            chosen &= masked
            x = torch.where(chosen, pred, x)
            if trace is not None:
                trace.append(chosen.clone())
    return x[:, : plen + gen_length]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop sequence (empty stops ignored)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def cut_at_token(ids: Sequence[int], stop_ids: Sequence[int | None]) -> list[int]:
    """Token ids up to (not including) the first id in ``stop_ids`` (e.g. EOS)."""
    stop = {int(s) for s in stop_ids if s is not None}
    ids = [int(t) for t in ids]
    return next((ids[:i] for i, t in enumerate(ids) if t in stop), ids)
