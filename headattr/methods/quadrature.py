"""Quadrature rules on [0, 1]: nodes t_k and weights w_k with sum_k w_k f(t_k) ~ int_0^1 f(t) dt.

Pure functions, no model. ``riemann_right`` (t = k/m, k = 1..m) is what the users' scripts do, so their
numbers can be reproduced. Every rule's weights sum to 1, so IG is exact for integrands constant in t.
:func:`panel_gauss_legendre` puts a Gauss-Legendre rule on each panel of a split [0, 1] (the panels of
``ig.refine: panels``, see :mod:`headattr.methods.adaptive`).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

RULES = ("riemann_right", "riemann_left", "riemann_middle", "trapezoid", "gauss_legendre")


def nodes_and_weights(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t [steps], w [steps]) in float64 for ``rule`` with ``steps`` nodes."""
    if rule not in RULES:
        raise ConfigError(f"ig.rule: unknown quadrature rule {rule!r}; choose one of {RULES}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"ig.steps: must be an integer >= 1, got {steps!r}")
    m = int(steps)
    k = np.arange(m, dtype=np.float64)
    if rule == "riemann_right":
        return (k + 1) / m, np.full(m, 1.0 / m)
    if rule == "riemann_left":
        return k / m, np.full(m, 1.0 / m)
    if rule == "riemann_middle":
        return (k + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "trapezoid":
        if m < 2:
            raise ConfigError("ig.steps: the trapezoid rule needs at least 2 steps")
        w = np.full(m, 1.0 / (m - 1))
        w[[0, -1]] /= 2
        return k / (m - 1), w
    x, w = np.polynomial.legendre.leggauss(m)
    return (x + 1) / 2, w / 2


def panel_gauss_legendre(panels, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t [P * steps], w [P * steps]): ``steps`` Gauss-Legendre nodes on each panel [a_i, b_i] of ``panels`` [P, 2].

    Panel i owns nodes i * steps .. (i + 1) * steps - 1. Panels that tile [0, 1] make a rule exact for piecewise
    polynomials of degree <= 2 * steps - 1 whose breakpoints are panel edges.
    """
    panels = np.asarray(panels, dtype=np.float64).reshape(-1, 2)
    if not bool(np.all(panels[:, 1] > panels[:, 0])):
        raise ValueError(f"panels must have a < b, got {panels.tolist()}")
    t, w = nodes_and_weights("gauss_legendre", steps)
    lo, width = panels[:, :1], panels[:, 1:] - panels[:, :1]
    return (lo + width * t[None]).ravel(), (width * w[None]).ravel()
