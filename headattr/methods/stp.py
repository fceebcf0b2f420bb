"""Stochastic Threshold Paths (STP, the users' default ``--path_mode random_threshold``) and their quadrature.

Per gate d a threshold u_d in [0, 1): the gate stays at the baseline b until t = u_d, then ramps linearly to 1:

    alpha_d(t) = b + (1 - b) * clip((t - u_d) / (1 - u_d), 0, 1)

(1 - u_d is clamped at 1e-6, as the users do). ``stp``: every gate of the attributed layers has its own
threshold; ``stp_layer``: only one layer's gates move (the other layers stay at 1), one family of paths per layer.
P paths per sample (or per layer) are averaged: ``weight`` = 1 / P per path. All u_d = 0 is the diagonal (joint)
path. Thresholds come from an RNG keyed by (path seed, sample id, [layer,] path index), so they do not depend on
batching, sample order or shards.

The path is kinked (each gate's velocity jumps at its threshold), so schemes (all give IG = sum_k grad_k * W_k
with per-gate weights W [m, Q, L, H]):
- ``riemann_stieltjes`` (the users'): t_k = k/K, k = 1..K, W_k = alpha(t_k) - alpha(t_{k-1}). Error O(1/K).
- ``trapezoid_stieltjes``: nodes t_k = k/K, k = 0..K, W_k = (dalpha_k + dalpha_{k+1}) / 2 with the same exact
  increments (dalpha_0 = dalpha_{K+1} = 0): the trapezoid rule of the Stieltjes integral, O(1/K^2) even across
  kinks (a kink only perturbs the one step it falls in, by O(h) of an O(h) increment).
- ``gauss_segments``: thresholds drawn from ``levels`` values {0, 1/levels, ...} so the path is linear on each
  segment [j/levels, (j+1)/levels]; composite Gauss-Legendre with K nodes per segment (levels * K evaluations),
  exact for polynomial losses of degree <= 2K - 1 along each segment. It samples a discretised STP (the users'
  continuous thresholds are the levels -> infinity limit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .quadrature import nodes_and_weights

SCHEMES = ("riemann_stieltjes", "trapezoid_stieltjes", "gauss_segments")
MODES = ("stp", "stp_layer")
MIN_DENOM = 1e-6


def threshold_rng(path_seed: int, sample_id: str, *index: int) -> np.random.Generator:
    """A generator determined by (path_seed, sample_id, index...) alone."""
    key = "\x1f".join([str(int(path_seed)), sample_id, *(str(int(i)) for i in index)])
    return np.random.default_rng(np.frombuffer(hashlib.sha256(key.encode()).digest(), dtype=np.uint32))


def draw_thresholds(rng: np.random.Generator, n: int, levels: int | None = None) -> np.ndarray:
    """n thresholds in [0, 1), float64: uniform, or uniform on {0, 1/levels, ..., (levels-1)/levels}."""
    if levels is None:
        return rng.random(n)
    return rng.integers(0, levels, size=n) / levels


@dataclass
class ThresholdPaths:
    """Q paths over [L, H] gates: ``start`` (b where the gate moves, 1 elsewhere) and ``threshold`` [Q, L, H];
    ``weight`` [Q] multiplies each path's IG in the sample's total (1 / P); ``levels`` for ``gauss_segments``."""

    start: torch.Tensor
    threshold: torch.Tensor
    names: list[str]
    weight: torch.Tensor
    levels: int | None = None

    @property
    def n_paths(self) -> int:
        return self.start.shape[0]

    def _ramp(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1, 1)  # [K, 1, 1, 1]
        u = self.threshold.to(torch.float64)[None]
        return ((t - u) / (1 - u).clamp(min=MIN_DENOM)).clamp(0, 1)  # [K, Q, L, H]

    def _alpha(self, t) -> torch.Tensor:
        start = self.start.to(torch.float64)[None]
        return start + self._ramp(t) * (1 - start)

    def gates(self, t) -> torch.Tensor:
        """Gates at nodes ``t`` [K]: float32 [K, Q, L, H]."""
        return self._alpha(t).float()

    def quadrature(self, scheme: str, steps: int) -> tuple[np.ndarray, torch.Tensor]:
        """(nodes t [m], per-gate weights W float64 [m, Q, L, H]) with IG = sum_k dL/dg(g(t_k)) * W_k."""
        if scheme not in SCHEMES:
            raise ConfigError(f"ig.stp_rule: {scheme!r} is not one of {SCHEMES}")
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"ig.steps: must be an integer >= 1, got {steps!r}")
        k = np.arange(steps + 1, dtype=np.float64) / steps
        if scheme == "riemann_stieltjes":
            alpha = self._alpha(k)
            return k[1:], alpha[1:] - alpha[:-1]
        if scheme == "trapezoid_stieltjes":
            alpha = self._alpha(k)
            inc = torch.nn.functional.pad(alpha[1:] - alpha[:-1], (0, 0, 0, 0, 0, 0, 1, 1))  # [K + 2, ...]
            return k, (inc[:-1] + inc[1:]) / 2
        if self.levels is None:
            raise ConfigError("ig.stp_levels: gauss_segments needs thresholds drawn on levels")
        x, w = nodes_and_weights("gauss_legendre", steps)
        t = ((np.arange(self.levels)[:, None] + x[None]) / self.levels).reshape(-1)
        w = np.tile(w / self.levels, self.levels)
        u = self.threshold.to(torch.float64)[None]
        start = self.start.to(torch.float64)[None]
        tt = torch.as_tensor(t).reshape(-1, 1, 1, 1)
        velocity = torch.where(tt > u, 1 / (1 - u).clamp(min=MIN_DENOM), torch.zeros(())) * (1 - start)
        return t, torch.as_tensor(w).reshape(-1, 1, 1, 1) * velocity


def _levels(scheme: str, levels) -> int | None:
    if scheme != "gauss_segments":
        return None
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ConfigError(f"ig.stp_levels: must be an integer >= 1, got {levels!r}")
    return levels


def _check(baseline: float, path_samples) -> float:
    if not isinstance(path_samples, int) or isinstance(path_samples, bool) or path_samples < 1:
        raise ConfigError(f"ig.path_samples: must be an integer >= 1, got {path_samples!r}")
    if not float(baseline) < 1:
        raise ConfigError(f"ig.baseline: must be below 1 (the all-on gate), got {baseline}")
    return float(baseline)


def stp_paths(
    n_layers: int,
    n_heads: int,
    sample_id: str,
    baseline: float = 0.0,
    path_samples: int = 4,
    path_seed: int = 0,
    layers=None,
    scheme: str = "riemann_stieltjes",
    levels: int | None = None,
) -> ThresholdPaths:
    """P paths on which every gate of ``layers`` (default all) has its own threshold; other layers stay at 1."""
    baseline = _check(baseline, path_samples)
    levels = _levels(scheme, levels)
    moving = torch.zeros(n_layers, dtype=torch.bool)
    moving[list(range(n_layers)) if layers is None else list(layers)] = True
    start = torch.where(moving[:, None], baseline, 1.0).expand(path_samples, n_layers, n_heads).clone()
    u = np.stack(
        [
            draw_thresholds(threshold_rng(path_seed, sample_id, i), n_layers * n_heads, levels)
            for i in range(path_samples)
        ]
    )
    threshold = torch.as_tensor(u).reshape(path_samples, n_layers, n_heads)
    names = [f"P{i}" for i in range(path_samples)]
    return ThresholdPaths(start, threshold, names, torch.full((path_samples,), 1.0 / path_samples), levels)


def stp_layer_paths(
    n_layers: int,
    n_heads: int,
    sample_id: str,
    baseline: float = 0.0,
    path_samples: int = 4,
    path_seed: int = 0,
    layers=None,
    scheme: str = "riemann_stieltjes",
    levels: int | None = None,
) -> ThresholdPaths:
    """P paths per layer l: only layer l's gates move, each with its own threshold; every other gate stays at 1."""
    baseline = _check(baseline, path_samples)
    levels = _levels(scheme, levels)
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"ig.layers: {layers} must be a non-empty subset of 0..{n_layers - 1}")
    n_q = len(layers) * path_samples
    start = torch.ones(n_q, n_layers, n_heads)
    threshold = torch.zeros(n_q, n_layers, n_heads, dtype=torch.float64)
    names = []
    for j, layer in enumerate(layers):
        for i in range(path_samples):
            q = j * path_samples + i
            start[q, layer] = baseline
            threshold[q, layer] = torch.as_tensor(
                draw_thresholds(threshold_rng(path_seed, sample_id, layer, i), n_heads, levels)
            )
            names.append(f"L{layer}P{i}")
    return ThresholdPaths(start, threshold, names, torch.full((n_q,), 1.0 / path_samples), levels)


def path_names(method: str, layers: list[int], path_samples: int) -> list[str]:
    """Names of the completeness paths of an STP method over ``layers``."""
    if method == "stp":
        return [f"P{i}" for i in range(path_samples)]
    return [f"L{layer}P{i}" for layer in layers for i in range(path_samples)]
