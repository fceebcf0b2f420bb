"""Quadrature nodes and weights pinned to exact values (as Captum pins its own)."""

import numpy as np
import pytest

from headattr.errors import ConfigError
from headattr.methods.quadrature import RULES, nodes_and_weights


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
