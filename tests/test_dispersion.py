"""Attention dispersion: closed-form values on uniform and one-hot patterns."""

import math

import numpy as np
import pytest

from headattr.stats.dispersion import block_distribution, dispersion


def test_uniform_attention_has_maximal_dispersion():
    attn = np.full((2, 3, 5, 12), 1 / 12)  # every query spreads evenly over 12 keys
    d = dispersion(attn, block_size=4, topk_frac=0.5)  # 3 blocks of mass 1/3
    np.testing.assert_allclose(d["entropy"], math.log(3))
    np.testing.assert_allclose(d["entropy_norm"], 1.0)
    np.testing.assert_allclose(d["effective_blocks"], 3.0)
    np.testing.assert_allclose(d["topk_mass"], 2 / 3)  # ceil(0.5 * 3) = 2 blocks


def test_one_hot_attention_has_none():
    attn = np.zeros((1, 2, 4, 10))
    attn[..., 7] = 1.0  # every query looks at key 7 only
    d = dispersion(attn, block_size=3, topk_frac=0.1)  # 4 blocks (last one padded), all mass in block 2
    np.testing.assert_allclose(block_distribution(attn, 3), [[0, 0, 1, 0]] * 2, atol=1e-12)
    np.testing.assert_allclose(d["entropy"], 0.0, atol=1e-9)
    np.testing.assert_allclose(d["entropy_norm"], 0.0, atol=1e-9)
    np.testing.assert_allclose(d["effective_blocks"], 1.0, atol=1e-9)
    np.testing.assert_allclose(d["topk_mass"], 1.0)


def test_two_point_mixture_and_bad_shapes():
    attn = np.zeros((1, 1, 2, 4))
    attn[0, 0, 0, 0] = attn[0, 0, 1, 3] = 1.0  # the queries' mean puts 1/2 on keys 0 and 3
    d = dispersion(attn, block_size=1, topk_frac=0.25)
    assert d["entropy"][0] == pytest.approx(math.log(2))
    assert d["entropy_norm"][0] == pytest.approx(math.log(2) / math.log(4))
    assert d["topk_mass"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="batch, head, query, key"):
        dispersion(np.ones((2, 3)))
