"""Monte-Carlo error of bootstrap interval ends (headattr.stats.mc_error) and the 2,000-draw default."""

import warnings

import numpy as np
import pytest
from scipy.stats import bootstrap

from headattr.stats.mc_error import bca_ends, jackknife_acceleration
from headattr.stats.nulls import N_BOOT, bca_interval

RNG = np.random.default_rng(3)
X = RNG.lognormal(size=25)  # skewed: BCa corrects, and its ends sit in thin tails
Y = RNG.normal(size=18)


def stat(i, j):
    return [X[i].mean(), X[i].mean() - Y[j].mean()]


def test_bca_ends_recomputed_from_the_draws_equal_scipy():
    """The rule the MC error resamples is scipy's BCa: on scipy's own draws it gives scipy's ends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (np.arange(25), np.arange(18)),
            lambda i, j: np.asarray(stat(i.astype(int), j.astype(int))),
            n_resamples=3000,
            vectorized=False,
            paired=False,
            method="BCa",
            rng=np.random.default_rng(1),
        )
    draws = np.asarray(res.bootstrap_distribution)
    accel = jackknife_acceleration([25, 18], stat)
    lo, hi = bca_ends(draws, np.asarray(stat(np.arange(25), np.arange(18))), accel, 0.95)
    np.testing.assert_allclose(lo, res.confidence_interval.low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi, res.confidence_interval.high, rtol=0, atol=1e-12)
    # acceleration from its formula (Efron & Tibshirani 14.15) for the one-sample mean: skewness of X / (6 sqrt n)
    d = X - X.mean()
    assert jackknife_acceleration([25], lambda i: [X[i].mean()])[0] == pytest.approx(
        (d**3).sum() / (6 * ((d**2).sum()) ** 1.5), rel=1e-10
    )


def test_default_bca_differs_from_a_20000_draw_reference_by_less_than_its_mc_error():
    assert N_BOOT >= 2000
    ci = bca_interval([25, 18], stat, seed=0)
    ref = bca_interval([25, 18], stat, n_boot=20000, seed=7)
    assert ci.method == ["BCa", "BCa"]
    assert np.all(ci.mc_lo > 0) and np.all(ci.mc_hi > 0)
    assert np.all(np.abs(ci.lo - ref.lo) < ci.mc_lo), (ci.lo, ref.lo, ci.mc_lo)
    assert np.all(np.abs(ci.hi - ref.hi) < ci.mc_hi), (ci.hi, ref.hi, ci.mc_hi)
    # the reference's error is ~sqrt(10) smaller, as 1/sqrt(B) says
    ratio = np.r_[ci.mc_lo, ci.mc_hi] / np.r_[ref.mc_lo, ref.mc_hi]
    assert np.all((ratio > 2) & (ratio < 5)), ratio


def test_mc_error_matches_the_spread_of_ends_over_bootstrap_seeds():
    """Stated error (95 % half-width) / 1.96 against the SD of the ends over 40 independent bootstrap runs."""
    runs = [bca_interval([25], lambda i: [X[i].mean()], n_boot=N_BOOT, seed=s) for s in range(40)]
    ends = np.array([[r.lo[0], r.hi[0]] for r in runs])
    stated = np.median([[r.mc_lo[0], r.mc_hi[0]] for r in runs], axis=0) / 1.96
    ratio = ends.std(axis=0, ddof=1) / stated
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def test_constant_draws_have_no_mc_error():
    ci = bca_interval([10], lambda i: [1.0, float(np.mean(i >= 0))], n_boot=500)
    assert np.all(ci.mc_lo == 0) and np.all(ci.mc_hi == 0)
