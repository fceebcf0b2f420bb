"""Split-half reliability (headattr.stats.split_half): Spearman-Brown of disjoint halves."""

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from headattr.stats.split_half import spearman_brown, split_half_reliability


def test_spearman_brown_formula():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.0) == 0.0 and spearman_brown(1.0) == 1.0
    assert spearman_brown(0.25, factor=4) == pytest.approx(1 / 1.75)


def test_reliability_of_signal_plus_noise_matches_classical_test_theory():
    """Heads t ~ N(0, 1), samples t + sigma e: two h-sample means correlate (Pearson) at 1 / (1 + sigma^2 / h),
    and Spearman-Brown gives the reliability of a 2h-sample mean, 1 / (1 + sigma^2 / 2h); Spearman of a bivariate
    normal pair at rho is 6 / pi asin(rho / 2)."""
    rng = np.random.default_rng(0)
    n, heads, sigma = 20, (40, 100), 2.0
    x = rng.normal(size=heads)[None] + sigma * rng.normal(size=(n, *heads))
    table = split_half_reliability(x, ns=[8, 20], n_splits=100, seed=1).set_index(["n", "metric"])
    for m in (8, 20):
        h = m // 2
        rho = 1 / (1 + sigma**2 / h)
        assert table.loc[(m, "pearson"), "half_median"] == pytest.approx(rho, abs=0.03)
        assert table.loc[(m, "pearson"), "reliability"] == pytest.approx(1 / (1 + sigma**2 / m), abs=0.03)
        assert table.loc[(m, "spearman"), "half_median"] == pytest.approx(6 / np.pi * np.arcsin(rho / 2), abs=0.03)
        row = table.loc[(m, "pearson")]
        assert row["lo"] < row["reliability"] < row["hi"]


def test_one_split_equals_a_direct_recomputation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 3, 4))
    row = split_half_reliability(x, n_splits=10, seed=3).set_index("metric")
    perm_rng = np.random.default_rng(3)
    rs, ps = [], []
    for _ in range(10):
        perm = perm_rng.permutation(9)
        a, b = x[perm[:4]].mean(0).ravel(), x[perm[4:8]].mean(0).ravel()
        rs.append(spearmanr(a, b).statistic)
        ps.append(pearsonr(a, b).statistic)
    assert row.loc["spearman", "n"] == 8 and row.loc["spearman", "half"] == 4
    assert row.loc["spearman", "half_median"] == pytest.approx(np.median(rs))
    assert row.loc["pearson", "reliability"] == pytest.approx(2 * np.median(ps) / (1 + np.median(ps)))
    lo, hi = np.quantile(rs, [0.025, 0.975])
    assert row.loc["spearman", "lo"] == pytest.approx(2 * lo / (1 + lo))
    assert row.loc["spearman", "hi"] == pytest.approx(2 * hi / (1 + hi))


def test_planted_noise_free_ranking_gives_one_and_pure_noise_near_zero():
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(6, 8))
    clean = np.repeat(signal[None], 12, axis=0) * rng.uniform(0.5, 2, size=(12, 1, 1))  # same order, other scale
    table = split_half_reliability(clean, n_splits=50).set_index("metric")
    assert table.loc["spearman", "reliability"] == pytest.approx(1.0)
    assert table.loc["spearman", "lo"] == pytest.approx(1.0)
    noise = rng.normal(size=(40, 10, 40))
    table = split_half_reliability(noise, n_splits=200).set_index("metric")
    assert abs(table.loc["spearman", "reliability"]) < 0.1
    assert table.loc["spearman", "lo"] < 0 < table.loc["spearman", "hi"]
