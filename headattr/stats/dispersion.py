"""Attention dispersion per head (the users' compute_head_dispersion.py, "key_block_mass" aggregation).

From attention probabilities ``attn`` [B, H, Q, K] (rows sum to 1 over keys): key positions are summed into
blocks of ``block_size`` (the last block padded with zero mass), the block distribution is averaged over batch
and queries and renormalised to p [H, n_blocks]; then per head

- entropy      = -sum_b p_b log p_b (nats; p clamped at 1e-12 as the users do),
- entropy_norm = entropy / log(n_blocks) (0 for one block),
- effective_blocks = exp(entropy),
- topk_mass    = sum of the ceil(topk_frac * n_blocks) largest p_b.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-12


def block_distribution(attn, block_size: int) -> np.ndarray:
    """[B, H, Q, K] attention -> [H, n_blocks] mean key-block mass (each row sums to 1)."""
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"attention must be [batch, head, query, key], got shape {a.shape}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    pad = (-a.shape[-1]) % block_size
    a = np.pad(a, [(0, 0)] * 3 + [(0, pad)])
    blocks = a.reshape(*a.shape[:3], -1, block_size).sum(-1)  # [B, H, Q, n_blocks]
    p = blocks.mean(axis=(0, 2))
    return p / (p.sum(-1, keepdims=True) + EPS)


def dispersion(attn, block_size: int = 1, topk_frac: float = 0.1) -> dict[str, np.ndarray]:
    """Per-head entropy, entropy_norm, effective_blocks and topk_mass [H] of ``attn`` [B, H, Q, K]."""
    p = block_distribution(attn, block_size)
    n_blocks = p.shape[-1]
    entropy = -(np.clip(p, EPS, None) * np.log(np.clip(p, EPS, None))).sum(-1)
    k = min(n_blocks, max(1, math.ceil(n_blocks * topk_frac)))
    return {
        "entropy": entropy,
        "entropy_norm": entropy / math.log(n_blocks) if n_blocks > 1 else np.zeros_like(entropy),
        "effective_blocks": np.exp(entropy),
        "topk_mass": np.sort(p, axis=-1)[:, ::-1][:, :k].sum(-1),
    }
