"""Masks keyed by (mask_seed, sample id, p, s): identical however samples are batched, ordered or sharded.

``s`` = 0..S-1 numbers the S independent draws per mask probability (``objective.mask_samples``, the users'
``--mask_samples_per_prob``); draw 0 uses the key (mask_seed, sample id, p) alone, so S = 1 gives the masks
of before, bit for bit. With S draws a sample's masks are [n_p * S, pos], rows ordered (p, s).

Two modes:
- ``bernoulli``: each target token is masked independently with probability p (LLaDA pre-training). A draw
  that masks nothing is redrawn from the same stream (up to 1000 times), then falls back to one token, so
  every (sample, p) has a loss.
- ``exact``: exactly max(1, round(p * n)) target tokens, uniformly without replacement (LLaDA likelihood).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..data.samples import Sample
from ..errors import ConfigError, DataError

MASK_MODES = ("bernoulli", "exact")


def check_mask_probs(mask_probs) -> list[float]:
    """Validate mask probabilities: a non-empty list of distinct numbers in (0, 1]."""
    probs = [float(p) for p in mask_probs]
    if not probs:
        raise ConfigError("objective.mask_probs: give at least one mask probability")
    for p in probs:
        if not (0.0 < p <= 1.0) or np.isnan(p):
            raise ConfigError(f"objective.mask_probs: {p} is outside (0, 1]")
    if len(set(probs)) != len(probs):
        raise ConfigError(f"objective.mask_probs: duplicates in {probs}")
    return probs


def check_mask_samples(mask_samples) -> int:
    """Validate S, the draws per mask probability: an integer >= 1."""
    if not isinstance(mask_samples, (int, np.integer)) or isinstance(mask_samples, bool) or mask_samples < 1:
        raise ConfigError(f"objective.mask_samples: must be an integer >= 1, got {mask_samples!r}")
    return int(mask_samples)


def variant_probs(mask_probs, mask_samples: int = 1) -> list[float]:
    """The mask probability of every (p, s) variant row, ordered (p, s): each p repeated S times."""
    return [float(p) for p in mask_probs for _ in range(check_mask_samples(mask_samples))]


def mask_rng(mask_seed: int, sample_id: str, p: float, draw: int = 0) -> np.random.Generator:
    """A generator determined by (mask_seed, sample_id, p, draw) alone (draw 0: the key without a draw)."""
    key = f"{int(mask_seed)}\x1f{sample_id}\x1f{float(p)!r}" + (f"\x1f{int(draw)}" if draw else "")
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def target_positions(sample: Sample, shift: bool) -> np.ndarray:
    """Positions that may be masked/scored; a shifted-logit model never scores position 0."""
    start = max(sample.target_start, 1) if shift else sample.target_start
    positions = np.arange(start, sample.target_end)
    if positions.size == 0:
        raise DataError(
            f"sample {sample.sample_id!r}: empty target region [{sample.target_start}, {sample.target_end})"
            + (" (position 0 is never scored with shifted logits)" if shift else "")
        )
    return positions


def draw_mask(sample: Sample, p: float, mode: str, mask_seed: int, shift: bool = False, draw: int = 0) -> np.ndarray:
    """Boolean mask [pos] over ``sample``'s tokens (draw number ``draw`` of p); True = masked (and scored)."""
    if mode not in MASK_MODES:
        raise ConfigError(f"objective.mask_mode: {mode!r} is not one of {MASK_MODES}")
    positions = target_positions(sample, shift)
    rng = mask_rng(mask_seed, sample.sample_id, p, draw)
    n = positions.size
    if mode == "exact":
        k = min(n, max(1, int(round(p * n))))
        chosen = positions[np.sort(rng.choice(n, size=k, replace=False))]
    else:
        for _ in range(1000):
            chosen = positions[rng.random(n) < p]
            if chosen.size:
                break
        else:
            chosen = positions[[int(rng.integers(n))]]
    mask = np.zeros(sample.length, dtype=bool)
    mask[chosen] = True
    return mask


def draw_masks(
    samples: list[Sample], mask_probs, mode: str, mask_seed: int, shift: bool = False, mask_samples: int = 1
) -> dict[str, np.ndarray]:
    """Masks for every sample, p and draw: sample_id -> bool [n_p * S, pos], rows ordered (p, s)."""
    probs = check_mask_probs(mask_probs)
    draws = range(check_mask_samples(mask_samples))
    return {
        s.sample_id: np.stack([draw_mask(s, p, mode, mask_seed, shift, d) for p in probs for d in draws])
        for s in samples
    }


def pack_masks(
    samples: list[Sample], masks: dict[str, np.ndarray], mask_probs, mask_samples: int = 1
) -> dict[str, np.ndarray]:
    """Masks as flat arrays aligned with :func:`headattr.data.samples.pack_samples` (``mask`` [n_p * S, total];
    ``mask_samples`` = S is stored only when S > 1, so S = 1 files are those of before)."""
    extra = {"mask_samples": np.array(check_mask_samples(mask_samples))} if mask_samples > 1 else {}
    return extra | {
        "mask": np.concatenate([masks[s.sample_id] for s in samples], axis=1),
        "offsets": np.concatenate([[0], np.cumsum([s.length for s in samples])]).astype(np.int64),
        "sample_ids": np.array([s.sample_id for s in samples], dtype=str),
        "mask_probs": np.asarray(check_mask_probs(mask_probs), dtype=np.float64),
    }


def unpack_masks(arrays) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_masks`: sample_id -> bool [n_p * S, pos]."""
    offsets = arrays["offsets"]
    return {
        str(sid): np.asarray(arrays["mask"][:, offsets[i] : offsets[i + 1]], dtype=bool)
        for i, sid in enumerate(arrays["sample_ids"])
    }
