"""Issue 25's figures on hand-built cases: symlog category scale, gap marks, Spearman beside Pearson, the top-K
null's spread, and tick labels that do not collide at 32 layers."""

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import SymLogNorm
from scipy.stats import hypergeom, spearmanr
from test_plots import drawn, long_means  # noqa: F401 (fixture)

from headattr.report import plots
from headattr.stats.consensus import topk_null_band


def _collide(labels) -> bool:
    """Whether any two visible, non-empty tick labels overlap on the canvas."""
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_category_panels_on_a_100x_scale_share_a_symlog_scale(drawn):  # noqa: F811
    rng = np.random.default_rng(0)
    means = long_means(4, 4, ["add", "chat"], rng)
    means.loc[means["category"] == "add", "score"] *= 100
    plots.category_heatmaps(means, "t", "x.png")
    fig = drawn[0]
    panels = [ax for ax in fig.axes if ax.get_xlabel() == "head"]
    norm = panels[1].collections[0].norm
    chat_peak = means.loc[means["category"] == "chat", "score"].abs().max()
    assert isinstance(norm, SymLogNorm) and norm.linthresh == pytest.approx(chat_peak)
    assert norm.vmax == pytest.approx(means["score"].abs().max())
    # the chat panel's largest cell lies a third of the half-range from white (a linear scale: 1/200 of it)
    assert abs(float(norm(chat_peak)) - 0.5) > 0.15
    assert "symlog colour scale" in fig._suptitle.get_text()


def test_category_panels_on_one_scale_stay_linear(drawn):  # noqa: F811
    means = long_means(4, 4, ["a", "b"], np.random.default_rng(1))
    plots.category_heatmaps(means, "t", "x.png")
    norm = drawn[0].axes[0].collections[0].norm
    assert not isinstance(norm, SymLogNorm)
    assert norm.vmax == pytest.approx(means["score"].abs().max()) and norm.vmin == -norm.vmax


def test_marked_heads_carry_the_mark_in_heatmaps(drawn):  # noqa: F811
    plots.head_heatmap(np.arange(12.0).reshape(3, 4), "t", "x.png", marked=[(1, 2)])
    means = long_means(3, 4, ["a", "b"], np.random.default_rng(2))
    plots.category_heatmaps(means, "t", "y.png", marked=[(0, 3), (2, 1)])
    marks = [(t.get_position(), t.get_text()) for t in drawn[0].axes[0].texts]
    assert marks == [((2.5, 1.5), plots.MARK)]
    panels = [ax for ax in drawn[1].axes if ax.get_xlabel() == "head"]
    for ax in panels:
        assert sorted(t.get_position() for t in ax.texts if t.get_text() == plots.MARK) == [(1.5, 2.5), (3.5, 0.5)]


def test_seed_scatter_prints_spearman_beside_pearson(drawn):  # noqa: F811
    rng = np.random.default_rng(3)
    a = rng.normal(size=48)
    b = a + rng.normal(size=48)
    b[0] = 40.0  # one extreme head: Pearson and Spearman part
    scores = pd.DataFrame({"layer": np.repeat(np.arange(6), 8), "head": np.tile(np.arange(8), 6)})
    plots.seed_scatter(scores.assign(score_a=a, score_b=b), ["s1", "s2"], "t", "x.png")
    text = drawn[0].axes[0].texts[0].get_text()
    r, rho = np.corrcoef(a, b)[0, 1], spearmanr(a, b).statistic
    assert text == f"r = {r:.3f} (Pearson), Spearman {rho:.3f}, 48 heads"


def test_topk_bars_show_the_exact_null_range(drawn):  # noqa: F811
    topk = pd.DataFrame(
        {
            "scope": ["per_layer", "global"],
            "k": [2, 5],
            "mean_overlap": [0.5, 0.4],
            "random_expected": [2 / 8, 5 / 48],
        }
    )
    band = topk_null_band(topk, n_heads=8, n_layers=6)
    # global: hypergeom(48, 5, 5) quantiles / 5
    assert band["null_lo"].iloc[1] == hypergeom(48, 5, 5).ppf(0.025) / 5
    assert band["null_hi"].iloc[1] == hypergeom(48, 5, 5).ppf(0.975) / 5
    # per layer: the mean over 6 layers of hypergeom(8, 2, 2), by Monte Carlo to one overlap step
    draws = hypergeom(8, 2, 2).rvs(size=(200_000, 6), random_state=0).mean(axis=1) / 2
    assert abs(band["null_hi"].iloc[0] - np.quantile(draws, 0.975)) <= 1 / 12 + 1e-12
    plots.topk_bars(band, "t", "x.png")
    ax = drawn[0].axes[0]
    bars = next(c for c in ax.containers if getattr(c, "errorbar", None) is not None)
    caps = bars.errorbar.lines[2][0].get_segments()
    lows = [seg[0][1] for seg in caps]
    highs = [seg[1][1] for seg in caps]
    np.testing.assert_allclose(lows, 100 * band["null_lo"])
    np.testing.assert_allclose(highs, 100 * band["null_hi"])


def test_tick_labels_do_not_collide_at_32_layers(drawn):  # noqa: F811
    rng = np.random.default_rng(4)
    plots.head_heatmap(rng.normal(size=(32, 32)), "t", "x.png")
    plots.category_heatmaps(long_means(32, 32, ["a", "b", "c"], rng), "t", "y.png")
    assert plots.tick_step(32) == 2 and plots.tick_step(16) == 1
    for fig in drawn:
        for ax in fig.axes:
            assert not _collide(ax.get_xticklabels()) and not _collide(ax.get_yticklabels())
    heat = drawn[0].axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == [str(i) for i in range(0, 32, 2)]
