"""Gate paths from a baseline to all-on: per-layer, joint and layered (power-law per layer).

A family of Q paths shares one form: g_q(t) = start_q + s_l(t) * (1 - start_q) with s_l(t) = t^(1 + lambda_l),
so g_q(0) = start_q, g_q(1) = 1 and dg_q/dt = (1 + lambda_l) t^lambda_l (1 - start_q). IG along path q is
sum_k w_k * dL/dg(g_q(t_k)) * dg_q/dt(t_k), and completeness reads sum = L(1) - L(start_q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

MODES = ("per_layer", "joint", "layered")


@dataclass
class GatePaths:
    """Q paths over [n_layers, n_heads] gates; ``start`` is [Q, L, H], ``exponent`` (lambda) is [L]."""

    start: torch.Tensor
    exponent: torch.Tensor
    names: list[str]

    @property
    def n_paths(self) -> int:
        return self.start.shape[0]

    def _shape(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)  # [K, 1]
        lam = self.exponent.to(torch.float64)[None, :]  # [1, L]
        s = t ** (1 + lam)
        ds = (1 + lam) * t**lam
        return s[:, None, :, None], ds[:, None, :, None]  # [K, 1, L, 1]

    def gates(self, t) -> torch.Tensor:
        """Gates at nodes ``t`` [K]: float32 [K, Q, L, H]."""
        s, _ = self._shape(t)
        start = self.start.to(torch.float64)[None]
        return (start + s * (1 - start)).float()

    def velocity(self, t) -> torch.Tensor:
        """dg/dt at nodes ``t`` [K]: float64 [K, Q, L, H]."""
        _, ds = self._shape(t)
        return ds * (1 - self.start.to(torch.float64)[None])


def _check_baseline(baseline: float) -> float:
    baseline = float(baseline)
    if not baseline < 1.0:
        raise ConfigError(f"ig.baseline: must be below 1 (the all-on gate), got {baseline}")
    return baseline


def per_layer_paths(n_layers: int, n_heads: int, baseline: float = 0.0, layers=None) -> GatePaths:
    """One path per layer l: only layer l's gates move, every other gate stays at 1."""
    baseline = _check_baseline(baseline)
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"ig.layers: {layers} must be a non-empty subset of 0..{n_layers - 1}")
    start = torch.ones(len(layers), n_layers, n_heads)
    for q, layer in enumerate(layers):
        start[q, layer] = baseline
    return GatePaths(start, torch.zeros(n_layers), [f"L{layer}" for layer in layers])


def joint_path(n_layers: int, n_heads: int, baseline: float = 0.0) -> GatePaths:
    """One path on which every gate moves together."""
    start = torch.full((1, n_layers, n_heads), _check_baseline(baseline))
    return GatePaths(start, torch.zeros(n_layers), ["all"])


def layered_path(n_layers: int, n_heads: int, baseline: float = 0.0, lambdas=None) -> GatePaths:
    """Joint path where layer l follows t^(1 + lambda_l); default lambda_l = l / n_layers."""
    start = torch.full((1, n_layers, n_heads), _check_baseline(baseline))
    lam = torch.arange(n_layers, dtype=torch.float64) / n_layers if lambdas is None else torch.tensor(lambdas)
    if lam.shape != (n_layers,) or bool((lam < 0).any()):
        raise ConfigError(f"ig.lambdas: need {n_layers} non-negative values, got {lambdas}")
    return GatePaths(start, lam.double(), ["all"])


def make_paths(mode: str, n_layers: int, n_heads: int, baseline: float = 0.0, layers=None, lambdas=None):
    """Paths for an IG ``mode`` in :data:`MODES`."""
    if mode == "per_layer":
        return per_layer_paths(n_layers, n_heads, baseline, layers)
    if mode == "joint":
        return joint_path(n_layers, n_heads, baseline)
    if mode == "layered":
        return layered_path(n_layers, n_heads, baseline, lambdas)
    raise ConfigError(f"method: unknown IG mode {mode!r}; choose one of {MODES}")
