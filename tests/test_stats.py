"""headattr.stats against independent computations and planted structure."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from headattr import stats as hs

L, H = 28, 16


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- similarity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(50,), (L, H), (3, 4, 5)])
def test_correlations_match_scipy(rng, shape):
    a = rng.normal(size=shape)
    b = 0.6 * a + rng.normal(size=shape)
    assert hs.pearson(a, b) == pytest.approx(st.pearsonr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert hs.spearman(a, b) == pytest.approx(st.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_spearman_with_ties_matches_scipy(rng):
    a = rng.integers(0, 5, 60).astype(float)
    b = a + rng.integers(0, 3, 60)
    assert hs.spearman(a, b) == pytest.approx(st.spearmanr(a, b).statistic, abs=1e-12)


def test_planted_correlations():
    a = np.arange(10.0)
    assert hs.pearson(a, 3 * a + 2) == pytest.approx(1.0)
    assert hs.pearson(a, -a) == pytest.approx(-1.0)
    assert hs.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert hs.pearson(a, np.exp(a)) < 1.0


def test_rowwise_matches_scalar(rng):
    a, b = rng.normal(size=(2, L, H))
    np.testing.assert_allclose(
        hs.rowwise_pearson(a, b), [st.pearsonr(x, y).statistic for x, y in zip(a, b, strict=True)]
    )
    np.testing.assert_allclose(
        hs.rowwise_spearman(a, b), [st.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    )


def test_cosine_by_hand(rng):
    a, b = rng.normal(size=(2, 40))
    expected = sum(x * y for x, y in zip(a, b, strict=True)) / (
        sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
    )
    assert hs.cosine(a, b) == pytest.approx(expected, abs=1e-12)
    assert hs.cosine([1, 0], [0, 1]) == 0.0
    assert hs.cosine([1, 2], [2, 4]) == pytest.approx(1.0)


def test_degenerate_inputs_give_nan_without_warnings():
    const = np.full(8, 0.1)
    other = np.arange(8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(hs.pearson(const, other))
        assert np.isnan(hs.spearman(other, const))
        assert np.isnan(hs.cosine(np.zeros(8), other))
        assert np.isnan(hs.rowwise_pearson(np.stack([const, other]), np.stack([other, other]))[0])
        assert np.isnan(hs.sample_correlation_matrix(np.stack([const, other, -other]).reshape(3, 2, 4))[0, 1])


def test_topk_indices_rank_by():
    x = np.array([0.5, -2.0, 1.0, -0.1, 3.0])
    assert list(hs.topk_indices(x, 2, "importance")) == [1, 3]
    assert list(hs.topk_indices(x, 2, "score")) == [4, 2]
    assert list(hs.topk_indices(x, 2, "abs")) == [4, 1]
    with pytest.raises(ValueError):
        hs.topk_indices(x, 2, "bogus")
    with pytest.raises(ValueError):
        hs.topk_indices(x, 6)


def test_topk_overlap_hand_built():
    a = -np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1.0])  # importance order: 0, 1, 2, ...
    b = -np.array([10, 9, 1, 2, 8, 7, 3, 4, 5, 6.0])  # importance order: 0, 1, 4, 5, ...
    assert hs.topk_overlap(a, b, 2) == 1.0
    assert hs.topk_overlap(a, b, 4) == 0.5  # {0,1,2,3} vs {0,1,4,5}
    assert hs.topk_overlap(a, b, 10) == 1.0
    assert hs.topk_overlap(a, -a, 5) == 0.0
    assert hs.topk_overlap(a, -a, 5, rank_by="abs") == 1.0


def test_agreement_keys_and_skip():
    a, b = np.arange(6.0), np.arange(6.0)[::-1]
    out = hs.agreement(a, b, ks=(2, 6, 7))
    assert set(out) == {"pearson", "spearman", "cosine", "top2_overlap", "top6_overlap"}
    assert out["pearson"] == pytest.approx(-1.0)
    assert out["top2_overlap"] == 0.0 and out["top6_overlap"] == 1.0


# --- nulls --------------------------------------------------------------------------------------


def test_random_topk_baseline_matches_monte_carlo():
    n, k, draws = 28, 10, 20_000
    rng = np.random.default_rng(0)
    a = np.argsort(rng.random((draws, n)), axis=1)[:, :k]
    b = np.argsort(rng.random((draws, n)), axis=1)[:, :k]
    shared = np.array([np.intersect1d(x, y).size for x, y in zip(a, b, strict=True)])
    assert hs.random_topk_overlap_expected(n, k) == 10 / 28
    assert abs((shared / k).mean() - 10 / 28) < 0.01
    dist = hs.random_topk_overlap_distribution(n, k)
    assert dist["pmf"].sum() == pytest.approx(1.0)
    assert (dist["overlap"] * dist["pmf"]).sum() == pytest.approx(k / n)
    empirical = np.bincount(shared, minlength=k + 1) / draws
    np.testing.assert_allclose(dist["pmf"], empirical, atol=0.01)


def test_permutation_null(rng):
    a = rng.normal(size=100)
    res = hs.permutation_null(a, a + 0.1 * rng.normal(size=100), hs.pearson, n_perm=200, seed=1)
    assert res.null.shape == (200,)
    assert res.p_value == pytest.approx(1 / 201)
    res = hs.permutation_null(a, rng.normal(size=100), hs.pearson, n_perm=200, seed=1)
    assert res.p_value == (1 + np.sum(res.null >= res.observed)) / 201
    assert res.p_value > 0.01


def test_bootstrap_ci(rng):
    data = rng.normal(loc=2.0, size=400)
    est, lo, hi = hs.bootstrap_ci(data, np.mean, n_boot=500, seed=0)
    assert est == pytest.approx(data.mean())
    assert lo < est < hi
    se = data.std() / np.sqrt(data.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    est, lo, hi = hs.bootstrap_ci(rng.normal(size=(50, 3)), lambda d: d.mean(axis=0), n_boot=100)
    assert est.shape == lo.shape == hi.shape == (3,)


# --- per-sample structure -----------------------------------------------------------------------


def test_sample_correlation_matrix_and_offdiag(rng):
    x = rng.normal(size=(6, 4, 5))
    mat = hs.sample_correlation_matrix(x)
    np.testing.assert_allclose(mat, np.corrcoef(x.reshape(6, -1)), atol=1e-12)
    off = mat[~np.eye(6, dtype=bool)]
    summ = hs.offdiag_summary(mat)
    assert summ["mean"] == pytest.approx(off.mean())
    assert summ["min"] == pytest.approx(off.min()) and summ["max"] == pytest.approx(off.max())
    assert summ["median"] == pytest.approx(np.median(off))
    assert hs.sample_specificity(x) == pytest.approx(off.mean())


def test_head_variance_planted(rng):
    n = 40
    base = rng.normal(scale=0.01, size=(L, H))
    x = base + rng.normal(scale=0.005, size=(n, L, H))
    planted = {(3, 1), (10, 7), (27, 15), (0, 0), (15, 9)}
    for li, hi in planted:
        x[:, li, hi] += rng.normal(scale=0.2, size=n)
    out = hs.head_variance(x, top=len(planted))
    np.testing.assert_allclose(out["variance"], x.var(axis=0))
    assert set(zip(out["top"]["layer"], out["top"]["head"], strict=True)) == planted
    assert out["top"]["variance"].is_monotonic_decreasing
    assert set(out["top"]["label"]) == {f"L{li}H{hi}" for li, hi in planted}
    assert out["count_above"] == {0.001: len(planted), 0.005: len(planted)}
    assert out["mean"] == pytest.approx(x.var(axis=0).mean())
    assert out["median"] == pytest.approx(np.median(x.var(axis=0)))


def test_four_d_input_is_averaged_over_p(rng):
    x4 = rng.normal(size=(5, 3, 4, 6))
    np.testing.assert_allclose(hs.head_variance(x4)["variance"], x4.mean(axis=1).var(axis=0))


def test_sample_count_agreement(rng):
    x = rng.normal(size=(30, 4, 8))
    df = hs.sample_count_agreement(x, ns=[1, 5, 100], ks=(5, 10))
    assert list(df["n"]) == [1, 5, 30]
    last = df.iloc[-1]
    assert last["pearson"] == pytest.approx(1.0) and last["top5_overlap"] == 1.0 and last["top10_overlap"] == 1.0
    assert last["diff_mean"] == pytest.approx(0.0) and last["diff_max"] == pytest.approx(0.0)
    row = df.iloc[1]
    sub, full = x[:5].mean(axis=0).ravel(), x.mean(axis=0).ravel()
    assert row["pearson"] == pytest.approx(st.pearsonr(sub, full).statistic)
    assert row["spearman"] == pytest.approx(st.spearmanr(sub, full).statistic)
    assert row["subset_std"] == pytest.approx(sub.std()) and row["full_min"] == pytest.approx(full.min())
    assert row["diff_max"] == pytest.approx(sub.max() - full.max())


# --- cross-seed ---------------------------------------------------------------------------------


def test_cross_seed_planted_bad_layer(rng):
    a = rng.normal(size=(L, H))
    b = a + 0.05 * rng.normal(size=(L, H))
    bad = 17
    b[bad] = rng.normal(size=H)
    out = hs.cross_seed_consistency(a, b, ks=(5, 10, 20), depth_bins=[[0, 14], [14, 28]], n_perm=200, n_boot=200)
    per_layer = out["per_layer"]
    np.testing.assert_allclose(per_layer["pearson"], [st.pearsonr(x, y).statistic for x, y in zip(a, b, strict=True)])
    assert out["worst_layers"][0]["layer"] == bad
    assert len(out["worst_layers"]) == len(out["best_layers"]) == 3
    assert out["summary"]["pearson"]["n_above_0.9"] == L - 1
    assert out["summary"]["pearson"]["std"] == pytest.approx(np.std(per_layer["pearson"]))
    assert out["summary"]["pearson"]["mean_lo"] <= out["summary"]["pearson"]["mean"] <= 1
    assert out["global"]["pearson"] == pytest.approx(st.pearsonr(a.ravel(), b.ravel()).statistic)
    assert "top20_overlap" not in per_layer
    topk = out["topk"][out["topk"]["scope"] == "per_layer"].set_index("k")
    assert list(topk.index) == [5, 10]
    assert topk.loc[10, "random_expected"] == 10 / H
    assert topk.loc[10, "null_mean"] == pytest.approx(10 / H, abs=0.02)
    assert topk.loc[10, "p_value"] == pytest.approx(1 / 201)
    trend = out["trend"]
    assert list(trend["bin"]) == ["0-13", "14-27"]  # inclusive layer labels of [0, 14), [14, 28)
    assert trend["pearson"].iloc[1] == pytest.approx(per_layer["pearson"].iloc[14:].mean())
    dist = out["distribution"].set_index("seed")
    assert dist.loc["a", "median"] == pytest.approx(np.median(a)) and dist.loc["b", "std"] == pytest.approx(b.std())


def test_depth_bins_equal():
    assert hs.depth_bins_ranges(4, 28) == [(0, 7), (7, 14), (14, 21), (21, 28)]
    assert hs.depth_bins_ranges(3, 28) == [(0, 9), (9, 19), (19, 28)]
    with pytest.raises(ValueError):
        hs.depth_bins_ranges([[0, 30]], 28)


def test_cross_seed_bootstrap(rng):
    truth = rng.normal(size=(6, 8))
    a = truth + 0.5 * rng.normal(size=(40, 6, 8))
    b = truth + 0.5 * rng.normal(size=(30, 6, 8))
    df = hs.cross_seed_bootstrap(a, b, n_boot=100, seed=0).set_index("metric")
    est = hs.pearson(a.mean(axis=0), b.mean(axis=0))
    assert df.loc["global_pearson", "estimate"] == pytest.approx(est)
    for metric in ("global_pearson", "mean_layer_pearson"):
        assert df.loc[metric, "lo"] < df.loc[metric, "hi"] <= 1


def test_global_topk_is_over_all_heads_with_an_exact_p():
    """Global top-K ranks all L * H heads together (the users' "Top-30 of 28 heads" row)."""
    a = np.arange(12.0).reshape(3, 4)  # importance = -score: top-3 of a = flat 0, 1, 2
    b = a.copy()
    b.flat[[2, 5]] = b.flat[[5, 2]]  # b's top-3 = flat 0, 1, 3 ... shares 2 of 3 with a
    b.flat[[3, 5]] = b.flat[[5, 3]]
    out = hs.cross_seed_consistency(a, b, ks=(2, 3, 4, 12), depth_bins=1, n_perm=0, n_boot=0)
    glob = out["topk"][out["topk"]["scope"] == "global"].set_index("k")
    assert list(glob.index) == [2, 3, 4]
    assert glob.loc[3, "mean_overlap"] == pytest.approx(2 / 3)
    assert glob.loc[3, "random_expected"] == pytest.approx(3 / 12)
    p_ref = sum(math.comb(3, j) * math.comb(9, 3 - j) for j in (2, 3)) / math.comb(12, 3)  # P(shared >= 2)
    assert glob.loc[3, "p_value"] == pytest.approx(p_ref)
    ks = out["topk_ks"]
    assert ks["per_layer"] == [2, 3] and ks["skipped_per_layer"] == [4, 12] and ks["skipped_global"] == [12]
    assert hs.split_ks((5, 10), 3, 4)["per_layer"] == [2] and hs.split_ks((5, 10), 3, 4)["added_per_layer"] == [2]


def test_best_and_worst_layers_carry_spearman_and_topk(rng):
    a = rng.normal(size=(8, 6))
    b = a + rng.normal(scale=np.linspace(0.01, 2, 8)[:, None], size=(8, 6))
    out = hs.cross_seed_consistency(a, b, ks=(2, 3), n_perm=0, n_boot=0)
    per_layer = out["per_layer"].set_index("layer")
    for row in out["best_layers"] + out["worst_layers"]:
        ref = per_layer.loc[row["layer"]]
        assert row["spearman"] == pytest.approx(st.spearmanr(a[row["layer"]], b[row["layer"]]).statistic)
        assert row["pearson"] == pytest.approx(ref["pearson"]) and row["top3_overlap"] == ref["top3_overlap"]
    assert [r["layer"] for r in out["best_layers"]] == list(per_layer["pearson"].sort_values().index[::-1][:3])
    small = hs.cross_seed_consistency(a[:4], b[:4], ks=(2,), n_perm=0, n_boot=0)
    assert len(small["best_layers"]) == 2 and not {r["layer"] for r in small["best_layers"]} & {
        r["layer"] for r in small["worst_layers"]
    }


def test_bootstrap_intervals_contain_their_estimates(rng):
    """Few noisy samples: resampled means are noisier, so the percentile interval of a correlation of means
    sits below the estimate (the old interval excluded it); BCa or its fallback never does."""
    truth = rng.normal(size=(16, 16))
    a = truth + 1.2 * rng.normal(size=(12, 16, 16))
    b = truth + 1.2 * rng.normal(size=(12, 16, 16))
    est = hs.spearman(a.mean(0), b.mean(0))
    draws = [hs.spearman(a[rng.integers(0, 12, 12)].mean(0), b[rng.integers(0, 12, 12)].mean(0)) for _ in range(300)]
    assert np.percentile(draws, 97.5) < est, "the planted case must defeat the percentile interval"
    df = hs.cross_seed_bootstrap(a, b, n_boot=300, seed=0)
    assert (df["lo"] <= df["estimate"]).all() and (df["estimate"] <= df["hi"]).all()
    assert set(df["method"]) <= {"BCa", "normal (Fisher z)"} and (df["bias"] < 0).all()
    assert (df["hi"] <= 1).all() and (df["lo"] >= -1).all()


def test_bca_interval_of_a_mean_matches_normal_theory(rng):
    x = rng.normal(loc=1.0, scale=2.0, size=60)
    ci = hs.bca_interval([60], lambda i: [x[i].mean()], n_boot=4000, seed=0)
    se = x.std(ddof=1) / np.sqrt(60)
    assert ci.method == ["BCa"] and ci.estimate[0] == pytest.approx(x.mean())
    assert ci.lo[0] == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert ci.hi[0] == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)
    const = hs.bca_interval([5], lambda i: [1.0], n_boot=50)  # degenerate draws: the normal fallback, width 0
    assert const.method == ["normal"] and const.lo[0] == const.hi[0] == 1.0


# --- methods, categories, mask ratio ------------------------------------------------------------


def test_method_comparison_and_specificity(rng):
    x = rng.normal(size=(10, 4, 6))
    methods = {"ig": x, "ig_neg": -x, "noise": rng.normal(size=(10, 4, 6))}
    df = hs.method_comparison(methods, ks=(5,))
    assert list(zip(df["method_a"], df["method_b"], strict=True)) == [
        ("ig", "ig_neg"),
        ("ig", "noise"),
        ("ig_neg", "noise"),
    ]
    assert df.iloc[0]["pearson"] == pytest.approx(-1.0)
    spec = hs.method_specificity(methods).set_index("method")
    assert spec.loc["ig", "sample_specificity"] == pytest.approx(hs.sample_specificity(x))
    assert spec.loc["ig_neg", "mean_head_variance"] == pytest.approx(x.var(axis=0).mean())


def test_category_differences_planted(rng):
    n = 60
    cats = np.array(["math", "code", "prose"] * (n // 3))
    x = rng.normal(scale=0.1, size=(n, 4, 6))
    x[cats == "code", 2, 3] += 1.0
    means = hs.category_means(x, cats)
    np.testing.assert_allclose(means["code"], x[cats == "code"].mean(axis=0))
    df = hs.category_differences(x, cats, top=None)
    assert len(df) == 24
    assert df.iloc[0]["label"] == "L2H3"
    assert df["q_value"].idxmin() == 0
    expected = st.kruskal(*(x[cats == c, 2, 3] for c in ["math", "code", "prose"]))
    assert df.iloc[0]["p_value"] == pytest.approx(expected.pvalue)
    assert df.iloc[0]["range"] == pytest.approx(np.ptp([means[c][2, 3] for c in means]))
    np.testing.assert_allclose(np.sort(df["q_value"]), np.sort(st.false_discovery_control(df["p_value"].to_numpy())))
    assert len(hs.category_differences(x, cats)) == 20


def test_category_differences_requires_two_groups(rng):
    x = rng.normal(size=(5, 2, 3))
    with pytest.raises(ValueError, match=">= 2 categories"):
        hs.category_differences(x, ["a", "a", "a", "a", "b"])
    df = hs.category_differences(x, ["a", "a", "b", "b", "c"])
    assert df.attrs["dropped_categories"] == ["c"]


def test_category_differences_constant_head(rng):
    x = rng.normal(size=(8, 2, 3))
    x[:, 0, 0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = hs.category_differences(x, ["a", "b"] * 4, top=None)
    assert np.isnan(df.set_index("label").loc["L0H0", "p_value"])
    assert np.isnan(df["p_value"].iloc[-1])


def test_mask_ratio_agreement(rng):
    x = rng.normal(size=(8, 3, 4, 5))
    x[:, 2] = -x[:, 0]
    out = hs.mask_ratio_agreement(x, [0.15, 0.5, 0.85], ks=(3,))
    np.testing.assert_allclose(out["scores"][0.5], x[:, 1].mean(axis=0))
    pairs = out["pairs"]
    assert isinstance(pairs, pd.DataFrame) and len(pairs) == 3
    row = pairs[(pairs["p_a"] == 0.15) & (pairs["p_b"] == 0.85)].iloc[0]
    assert row["pearson"] == pytest.approx(-1.0) and row["top3_overlap"] == 0.0
    with pytest.raises(ValueError):
        hs.mask_ratio_agreement(x, [0.1, 0.2])


def _kw_h(*groups):
    return st.kruskal(*groups).statistic


@pytest.mark.parametrize("sizes", [(3, 3, 2), (2, 2, 2, 2)])
def test_kruskal_exact_equals_scipy_permutation_test(rng, sizes):
    from headattr.stats.kruskal import kruskal_columns

    groups = [rng.normal(loc=0.6 * i, size=(s, 3)) for i, s in enumerate(sizes)]
    groups[0][0, 2] = groups[1][0, 2]  # a tie in one column
    res = kruskal_columns(groups, n_resamples=9999)
    assert res["method"] == "exact"
    for j in range(3):
        cols = [g[:, j] for g in groups]
        ref = st.permutation_test(
            cols, _kw_h, permutation_type="independent", n_resamples=np.inf, alternative="greater"
        )
        assert res["statistic"][j] == pytest.approx(ref.statistic)
        assert res["pvalue"][j] == pytest.approx(ref.pvalue)


def test_kruskal_permutation_matches_scipy_within_mc_error(rng):
    from headattr.stats.kruskal import kruskal_columns

    groups = [rng.normal(loc=0.5 * i, size=(3, 2)) for i in range(5)]
    res = kruskal_columns(groups, n_resamples=20000, seed=1)
    assert res["method"] == "permutation"
    for j in range(2):
        cols = [g[:, j] for g in groups]
        ref = st.permutation_test(
            cols, _kw_h, permutation_type="independent", n_resamples=20000, alternative="greater", rng=2
        )
        p = ref.pvalue
        se = np.sqrt(2 * p * (1 - p) / 20000) + 1e-4
        assert abs(res["pvalue"][j] - p) < 4 * se
        chi = st.kruskal(*cols).pvalue
        if p < 0.01:
            assert chi > 2 * p  # the chi-square p is too conservative at 3 per group


def test_category_differences_small_groups_use_permutation(rng):
    cats = np.array(["a", "b", "c"] * 3)
    x = rng.normal(scale=0.1, size=(9, 2, 2))
    x[cats == "a", 1, 1] += 5.0
    df = hs.category_differences(x, cats, top=None)
    assert df.attrs["p_method"] == "exact"
    ref = st.permutation_test(
        [x[cats == c, 1, 1] for c in "abc"],
        _kw_h,
        permutation_type="independent",
        n_resamples=np.inf,
        alternative="greater",
    )
    assert df.set_index("label").loc["L1H1", "p_value"] == pytest.approx(ref.pvalue)
