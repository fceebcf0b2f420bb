"""Adaptive block-sparse attention from head importance (the users' SparseD-based validation 1).

The math, as the users' ``allocate_adaptive_sparsity_from_importance`` and ``create_attention_block_mask``:

- weights (:func:`importance_weights`): importance [layers, heads] normalised globally by its 5th / 95th
  percentiles to n in [0, 1] (clipped), centred, w = 1 + scale * 2 * (n - 0.5) (``scale`` 2/3; minus when
  importance should decrease the keep ratio), clamped to [0.1, 10], divided by the global mean (mean w = 1);
  with GQA the weights of a kv group's query heads are averaged and shared by the group;
- keep ratios (:func:`keep_ratios`): r_h = clamp(w_h * select, min_keep_ratio, 1);
- block mask (:func:`block_mask`): per query block of ``block_size`` queries, each key block's importance is the
  mean |attention| over the block (zero-padded to block_size x block_size, so a partial block counts its sum /
  block_size^2), and the top floor(r_h * n_kv_blocks) + 1 key blocks are kept (at most all). The key blocks from
  ``last`` on (the first query block lying in the final ``gen_length`` positions, and at least the final block)
  are chosen separately: the prompt selection drops them, and a second top floor(r_h * n_gen) + 1 over those
  blocks, from the attention renormalised over their keys (the users' softmax over the generation keys), is
  added. Ties go to the lower block index.

The sparse attention itself (:class:`SparseAttention`) is the exact attention restricted to the kept blocks,
run inside each layer's attention kernel through :mod:`headattr.models.attention`: on CUDA through FlexAttention
with a block mask (compiled) for SDPA calls without a mask of their own, elsewhere (CPU, eager softmax paths,
masked or causal calls) as SDPA / softmax with the expanded boolean mask; ``backend: flex`` forces FlexAttention
(eager, a reference implementation) on the CPU too, which is how the two are checked equal. A layer whose mask keeps
every block runs its kernel unchanged, so select 1 with uniform weights is dense attention bit for bit.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import ConfigError
from .attention import KernelCall, attention_kernels

WEIGHT_CLAMP = (0.1, 10.0)
PERCENTILES = (0.05, 0.95)
BACKENDS = ("auto", "exact", "flex")


def importance_weights(
    importance,
    scale: float = 2 / 3,
    increases_keep: bool = True,
    n_kv_heads: int | None = None,
    percentiles: tuple[float, float] = PERCENTILES,
) -> np.ndarray:
    """Relative keep weights w [layers, heads] (global mean 1 before the GQA average) from ``importance``,
    normalised by its global ``percentiles`` (the users' 5th / 95th; (0, 1) = by minimum and maximum)."""
    s = np.asarray(importance, dtype=np.float64)
    if s.ndim != 2 or not np.isfinite(s).all():
        raise ValueError(f"importance must be a finite [layers, heads] matrix, got shape {s.shape}")
    lo, hi = np.quantile(s, percentiles)
    n = np.clip((s - lo) / (hi - lo + 1e-8), 0.0, 1.0)
    sign = 1.0 if increases_keep else -1.0
    w = np.clip(1.0 + sign * scale * 2.0 * (n - 0.5), *WEIGHT_CLAMP)
    w = w / w.mean()
    n_heads = s.shape[1]
    if n_kv_heads and n_kv_heads != n_heads:
        if n_heads % n_kv_heads:
            raise ValueError(f"{n_heads} query heads do not split into {n_kv_heads} kv groups")
        group = n_heads // n_kv_heads
        w = np.repeat(w.reshape(s.shape[0], n_kv_heads, group).mean(-1), group, axis=-1)
    return w


def keep_ratios(weights, select: float, min_keep_ratio: float = 0.01) -> np.ndarray:
    """r = clamp(w * select, min_keep_ratio, 1) per head."""
    if not 0 < select <= 1:
        raise ConfigError(f"sparse select: {select} is not in (0, 1]")
    return np.clip(np.asarray(weights, dtype=np.float64) * select, min_keep_ratio, 1.0)


def _n_blocks(length: int, block_size: int) -> int:
    return (length + block_size - 1) // block_size


def _block_importance(probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, H, Q, K] -> [B, H, nQ, nK]: sum of |p| per block over block_size^2 (zero-padded)."""
    b, h, q, k = probs.shape
    padded = torch.nn.functional.pad(probs.abs(), (0, (-k) % block_size, 0, (-q) % block_size))
    nq, nk = padded.shape[-2] // block_size, padded.shape[-1] // block_size
    return padded.reshape(b, h, nq, block_size, nk, block_size).sum((-1, -3)) / block_size**2


def _top_blocks(importance: torch.Tensor, ratios: np.ndarray) -> torch.Tensor:
    """Boolean [B, H, nQ, nK]: per row the floor(r_h * nK) + 1 (at most nK) most important blocks of head h."""
    nk = importance.shape[-1]
    counts = torch.tensor([min(math.floor(float(r) * nk) + 1, nk) for r in ratios], device=importance.device)
    order = torch.argsort(importance, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(nk, device=order.device).expand_as(order))
    return ranks < counts.view(1, -1, 1, 1)


def generation_start(q_len: int, block_size: int, gen_length: int) -> int:
    """Index of the first query (and key) block of the generation region: the first block starting within the
    last ``gen_length`` positions, and at most the final block."""
    n = _n_blocks(q_len, block_size)
    return next((i for i in range(n) if q_len - i * block_size <= gen_length), n - 1)


def block_mask(probs: torch.Tensor, ratios, block_size: int, gen_length: int = 0) -> torch.Tensor:
    """Boolean keep mask [B, H, nQ, nK] of key blocks per query block (see the module docstring)."""
    probs = probs.float()
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (probs.shape[1],):
        raise ValueError(f"need one keep ratio per head ({probs.shape[1]}), got shape {ratios.shape}")
    if block_size > probs.shape[-1]:
        raise ConfigError(f"sparse block_size: {block_size} exceeds the sequence length {probs.shape[-1]}")
    last = generation_start(probs.shape[-2], block_size, gen_length)
    mask = _top_blocks(_block_importance(probs, block_size), ratios)
    mask[..., last:] = False
    tail = probs[..., last * block_size :]
    tail = tail / tail.sum(-1, keepdim=True).clamp_min(1e-30)
    mask[..., last:] |= _top_blocks(_block_importance(tail, block_size), ratios)
    return mask


def token_mask(blocks: torch.Tensor, q_len: int, k_len: int, block_size: int) -> torch.Tensor:
    """Boolean [B, H, Q, K] of a block mask [B, H, nQ, nK]."""
    expanded = blocks.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)
    return expanded[..., :q_len, :k_len]


def flex_block_mask(blocks: torch.Tensor, q_len: int, k_len: int, block_size: int):
    """A FlexAttention ``BlockMask`` of a block mask [B, H, nQ, nK] (tiles of block_size x block_size)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def keep(b, h, q, k):
        return blocks[b, h, q // block_size, k // block_size]

    b, h = blocks.shape[:2]
    return create_block_mask(keep, b, h, q_len, k_len, device=blocks.device, BLOCK_SIZE=block_size, _compile=False)


@functools.cache
def _flex_kernel(cuda: bool):
    """flex_attention, compiled on CUDA (the fused kernel); eager elsewhere (a reference implementation)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if cuda else flex_attention


def block_density(blocks: torch.Tensor) -> np.ndarray:
    """Per head: kept blocks / (nQ * nK), averaged over the batch rows."""
    return blocks.float().mean(dim=(0, 2, 3)).cpu().numpy()


class SparseAttention:
    """Per-layer block masks built from the model's own attention and applied in later forwards.

    ``ratios`` [layers, heads] are the keep ratios r_h. Inside :meth:`building` each layer's attention runs dense
    and its block mask is built from that call's probabilities (replacing the previous one); inside
    :meth:`applied` each layer's attention is restricted to its mask; :meth:`rebuilt` does both in one call.
    ``densities`` holds the realised block density [layers, heads] of the masks last built.
    """

    def __init__(self, adapter, ratios, block_size: int, gen_length: int = 0, backend: str = "auto"):
        self.adapter = adapter
        self.ratios = np.asarray(ratios, dtype=np.float64)
        if self.ratios.shape != (adapter.n_layers, adapter.n_heads):
            raise ValueError(f"keep ratios must be [{adapter.n_layers}, {adapter.n_heads}], got {self.ratios.shape}")
        if backend not in BACKENDS:
            raise ConfigError(f"sparse backend: {backend!r} is not one of {BACKENDS}")
        self.block_size, self.gen_length, self.backend = block_size, gen_length, backend
        self.masks: dict[int, torch.Tensor] = {}
        self._flex_masks: dict[int, object] = {}

    @property
    def densities(self) -> np.ndarray:
        return np.stack([block_density(self.masks[i]) for i in range(self.adapter.n_layers)])

    def _store(self, index: int, call: KernelCall) -> None:
        self.masks[index] = block_mask(call.probabilities(), self.ratios[index], self.block_size, self.gen_length)
        self._flex_masks.pop(index, None)

    def _uses_flex(self, call: KernelCall) -> bool:
        if self.backend == "exact" or not call.flex_ready():
            return False
        return self.backend == "flex" or call.kwargs.get("query", call.args[0]).is_cuda

    def _build(self, index: int, call: KernelCall):
        self._store(index, call)
        return call.run()

    def _apply(self, index: int, call: KernelCall):
        blocks = self.masks[index]
        if bool(blocks.all()):
            return call.run()
        if self._uses_flex(call):
            if index not in self._flex_masks:
                self._flex_masks[index] = flex_block_mask(blocks, *call.lengths(), self.block_size)
            return call.run_flex(self._flex_masks[index], _flex_kernel(blocks.is_cuda))
        return call.run(token_mask(blocks, *call.lengths(), self.block_size))

    def _rebuild(self, index: int, call: KernelCall):
        self._store(index, call)
        return self._apply(index, call)

    @contextmanager
    def rebuilt(self):
        """Inside, each attention call builds its mask from its own dense probabilities and runs restricted to
        it (the users' ``recompute_mask_each_call``, for likelihood scoring)."""
        with attention_kernels(self.adapter, self._rebuild):
            yield self

    @contextmanager
    def building(self):
        with attention_kernels(self.adapter, self._build):
            yield self

    @contextmanager
    def applied(self):
        if len(self.masks) != self.adapter.n_layers:
            raise RuntimeError("SparseAttention.applied before the masks of every layer were built")
        with attention_kernels(self.adapter, self._apply):
            yield self
