"""Quadrature nodes and weights pinned to exact values (as Captum pins its own)."""

import numpy as np
import pytest

from headattr.errors import ConfigError
from headattr.methods.quadrature import RULES, nodes_and_weights, panel_gauss_legendre


def test_pinned_values():
    t, w = nodes_and_weights("riemann_right", 4)
    np.testing.assert_allclose(t, [0.25, 0.5, 0.75, 1.0]) and np.testing.assert_allclose(w, [0.25] * 4)
    t, w = nodes_and_weights("riemann_left", 2)
    np.testing.assert_allclose(t, [0.0, 0.5])
    t, w = nodes_and_weights("riemann_middle", 2)
    np.testing.assert_allclose(t, [0.25, 0.75])
    t, w = nodes_and_weights("trapezoid", 3)
    np.testing.assert_allclose(t, [0, 0.5, 1]) and np.testing.assert_allclose(w, [0.25, 0.5, 0.25])
    t, w = nodes_and_weights("gauss_legendre", 2)
    np.testing.assert_allclose(t, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)])
    np.testing.assert_allclose(w, [0.5, 0.5])


@pytest.mark.parametrize("rule", RULES)
def test_weights_sum_to_one_and_integrate_polynomials(rule):
    t, w = nodes_and_weights(rule, 6)
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    if rule == "gauss_legendre":
        assert (w * t**11).sum() == pytest.approx(1 / 12, rel=1e-12)  # exact to degree 2n - 1


@pytest.mark.parametrize("steps", [0, -1, 2.5, "8"])
def test_bad_steps(steps):
    with pytest.raises(ConfigError, match="ig.steps"):
        nodes_and_weights("riemann_right", steps)


def test_bad_rule_and_short_trapezoid():
    with pytest.raises(ConfigError, match="ig.rule"):
        nodes_and_weights("simpson", 4)
    with pytest.raises(ConfigError, match="trapezoid"):
        nodes_and_weights("trapezoid", 1)


def test_panel_gauss_legendre_is_exact_for_piecewise_polynomials_on_its_edges():
    """f = t^3 below 5/16, 2 - (1 - t)^3 above: a kink at 5/16; 2 nodes per panel integrate cubics exactly."""
    t, w = panel_gauss_legendre([[0, 5 / 16], [5 / 16, 1]], 2)
    f = np.where(t < 5 / 16, t**3, 2 - (1 - t) ** 3)
    exact = (5 / 16) ** 4 / 4 + 2 * (11 / 16) - (11 / 16) ** 4 / 4  # antiderivatives t^4/4 and 2t + (1-t)^4/4
    assert t.shape == w.shape == (4,)
    assert np.isclose(w @ f, exact, rtol=1e-14, atol=0)
    assert not np.isclose(nodes_and_weights("gauss_legendre", 4)[1] @ f, exact, rtol=1e-6)  # one panel is not


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_panel_gauss_legendre_degree(steps):
    panels = [[0.0, 0.125], [0.125, 0.5], [0.5, 1.0]]
    t, w = panel_gauss_legendre(panels, steps)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-14)
    for degree in range(2 * steps):
        np.testing.assert_allclose(w @ t**degree, 1 / (degree + 1), rtol=1e-12)
    assert abs(w @ t ** (2 * steps) - 1 / (2 * steps + 1)) > 1e-10  # degree 2 steps is not exact
    assert np.all(np.diff(t) > 0)  # panel by panel, in order


def test_panel_gauss_legendre_needs_increasing_panels():
    with pytest.raises(ValueError, match="a < b"):
        panel_gauss_legendre([[0.5, 0.5]], 2)
