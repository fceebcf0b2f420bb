"""Held-out AOPC uncertainty: bootstrap intervals, the random band, the permutation p, verdicts and the report's
flag for an order worse than random; the deletion figure's bands and chance line."""

import numpy as np
import pytest
from test_validation import SignalEngine, _Scored, scores  # noqa: F401

from headattr.analysis.deletion import curve_means, deletion_curves, deletion_summary, sample_aopc
from headattr.analysis.pruning_stats import aopc_uncertainty, curve_interval
from headattr.report.pruning import deletion_plot, flagged, pruning_table


def test_p_and_band_count_the_random_orders_exactly():
    random = np.array([[0.1, 0.3], [0.2, 0.2], [0.5, 0.7], [0.0, 0.2]])  # order means 0.2, 0.2, 0.6, 0.1
    most = aopc_uncertainty(np.array([0.4, 0.4]), random, "most_first", n_boot=200)
    assert most["aopc"] == pytest.approx(0.4) and most["aopc_random_mean"] == pytest.approx(0.275)
    assert most["p_vs_random"] == pytest.approx((1 + 1) / 5)  # only the 0.6 order hurts at least as much
    least = aopc_uncertainty(np.array([0.4, 0.4]), random, "least_first", n_boot=200)
    assert least["p_vs_random"] == pytest.approx((1 + 3) / 5)  # 0.2, 0.2, 0.1 hurt at most as much
    assert least["worse_than_random"] and not most["worse_than_random"]
    q = np.quantile([0.2, 0.2, 0.6, 0.1], [0.025, 0.975])
    assert (most["random_q025"], most["random_q975"]) == pytest.approx(tuple(q))


def test_aopc_interval_matches_the_normal_theory_interval_of_a_mean():
    a = np.random.default_rng(1).normal(0.3, 0.2, size=40)
    u = aopc_uncertainty(a, np.zeros((5, 40)), "most_first", n_boot=20000, seed=3)
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a))
    assert u["aopc_lo"] == pytest.approx(a.mean() - half, abs=0.2 * half)
    assert u["aopc_hi"] == pytest.approx(a.mean() + half, abs=0.2 * half)
    assert u["verdict"] == "better than random" and u["p_vs_random"] == pytest.approx(1 / 6)


def test_difference_is_paired_by_sample():
    """Random orders = the ranked per-sample AOPC + an order offset: the sample spread cancels in the difference,
    whose interval then only reflects the offsets (a difference of unpaired resamples would be far wider)."""
    a = np.random.default_rng(2).normal(0.0, 1.0, size=30)
    offsets = np.linspace(-0.01, 0.01, 20)
    u = aopc_uncertainty(a, a[None, :] + offsets[:, None], "most_first", n_boot=4000)
    assert u["aopc_vs_random"] == pytest.approx(0.0, abs=1e-12)
    assert -0.01 <= u["aopc_vs_random_lo"] < 0 < u["aopc_vs_random_hi"] <= 0.01
    assert u["aopc_hi"] - u["aopc_lo"] > 0.5  # the mean itself is uncertain
    assert u["verdict"] == "not distinguishable from random"


def test_curve_interval_collapses_without_spread_and_covers_the_mean():
    lo, hi = curve_interval(np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]]), n_boot=500)
    assert lo[0] == hi[0] == 1.0 and lo[1] < 1.0 < hi[1] and 0.0 <= lo[1] and hi[1] <= 2.0


def two_samples():
    first, second = _Scored(), _Scored()
    second.sample_id = "toy2"
    return [first, second]


def test_an_order_worse_than_random_is_flagged(scores):  # noqa: F811
    """Scores that call the signal head the least important: least first removes it first and hurts far more than
    random; the summary says so and the report flags it (most first, which keeps it to the end, is flagged too)."""
    wrong = -scores
    curves = deletion_curves(SignalEngine(), two_samples(), {"wrong": wrong}, seeds=range(30), per_sample=True)
    summary = deletion_summary(curves, n_boot=500).set_index(["method", "order"])
    least = summary.loc[("wrong", "least_first")]
    assert least["aopc"] > least["random_q975"] and least["worse_than_random"]
    assert least["verdict"] == "worse than random" and least["p_vs_random"] == 1.0  # every random order is better
    assert least["aopc_vs_random_lo"] > 0
    table = pruning_table(summary.reset_index())
    row = table[table["order"] == "least important first"].iloc[0]
    assert row["verdict"] == "**worse than random**"
    notes = flagged(summary.reset_index())
    assert any(n.startswith("wrong least important first hurts more than random") for n in notes)


def test_per_sample_curves_average_to_the_mean_curves(scores):  # noqa: F811
    engine, held = SignalEngine(), two_samples()
    per = deletion_curves(engine, held, {"loo": scores}, seeds=(0, 1), per_sample=True)
    mean = deletion_curves(engine, held, {"loo": scores}, seeds=(0, 1))
    assert len(per) == 2 * len(mean) and set(per["sample"]) == {0, 1}
    means = curve_means(per, n_boot=50)
    np.testing.assert_allclose(means["loss"], mean["loss"])
    assert (means["loss_lo"] <= means["loss"] + 1e-12).all() and (means["loss"] <= means["loss_hi"] + 1e-12).all()
    aopc = sample_aopc(per)
    first = per[(per["method"] == "loo") & (per["order"] == "most_first") & (per["sample"] == 0)]
    expected = (first["loss"].iloc[1:] - first["loss"].iloc[0]).mean()
    assert aopc.loc[("one_shot", "loo", "most_first", -1), 0] == pytest.approx(expected)


def test_deletion_plot_draws_bands_and_the_chance_line(tmp_path, scores, monkeypatch):  # noqa: F811
    from headattr.report import plots

    per = deletion_curves(SignalEngine(), two_samples(), {"loo": scores}, seeds=range(4), per_sample=True)
    means = curve_means(per, n_boot=50)
    summary = deletion_summary(per, n_boot=50).assign(chance_loss=8.7, chance_accuracy=1 / 6000)
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    deletion_plot(means, summary, "t", tmp_path / "d.png")
    loss_ax, acc_ax = seen["fig"].axes
    assert loss_ax.get_ylabel() == "held-out masked-token loss (nats)"
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert "uniform prediction (ln V)" in labels and "random, 95 % of 4 orders" in labels
    assert "loo, most important first" in labels and not any("_first" in x for x in labels)
    chance = [line for line in loss_ax.get_lines() if line.get_linestyle() == ":"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(8.7)
    # one band per ranked order plus the random band
    assert len(loss_ax.collections) == 3
    random_loss = means[means["method"] == "random"].groupby("fraction")["loss"].quantile(0.975)
    band = loss_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(random_loss.max())
