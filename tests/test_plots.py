"""Figures, each drawn at 16 and at 1024 heads: colorbars, labels, counts, ticks and orderings readers need."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from headattr.report import plots


@pytest.fixture
def drawn(monkeypatch):
    """Keep each figure open instead of saving it; the list collects them."""
    figs = []

    def keep(fig, path):
        fig.canvas.draw()
        figs.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    for fig in figs:
        plt.close(fig)


SHAPES = [(4, 4), (32, 32)]


def long_means(n_layers, n_heads, cats, rng):
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "layer": np.repeat(np.arange(n_layers), n_heads),
                    "head": np.tile(np.arange(n_heads), n_layers),
                    "score": rng.normal(size=n_layers * n_heads),
                    "category": c,
                }
            )
            for c in cats
        ]
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_categories_have_a_colorbar_labels_and_n(drawn, shape):
    means = long_means(*shape, ["code", "math"], np.random.default_rng(0))
    plots.category_heatmaps(means, "t", "x.png", {"code": 5, "math": 1})
    fig = drawn[0]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "importance (-IG)"]
    assert len(bars) == 1, "one shared, labelled colorbar"
    panels = [ax for ax in fig.axes if ax.get_xlabel() == "head"]
    assert [ax.get_title() for ax in panels] == ["code (n = 5)", "math (n = 1)"]
    assert panels[0].get_ylabel() == "layer" and len(panels[0].get_xticklabels()) >= 4


@pytest.mark.parametrize("shape", SHAPES)
def test_seed_scatter_shows_importance_a_layer_colorbar_and_r(drawn, shape):
    n_layers, n_heads = shape
    rng = np.random.default_rng(1)
    a = rng.normal(size=n_layers * n_heads)
    scores = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            "score_a": a,
            "score_b": a + 0.5 * rng.normal(size=a.size),
        }
    )
    plots.seed_scatter(scores, ["seed 1", "seed 2"], "t", "x.png")
    fig = drawn[0]
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], -scores["score_a"])  # importance, as in the heatmaps
    assert fig.axes[1].get_ylabel() == "layer"
    ticks = [t for t in fig.axes[1].get_yticks() if -0.5 <= t <= n_layers - 0.5]
    assert all(float(t).is_integer() for t in ticks)
    r = np.corrcoef(scores["score_a"], scores["score_b"])[0, 1]
    assert any(t.get_text().startswith(f"r = {r:.3f}") for t in ax.texts)
    assert len(ax.get_xticks()) <= 7  # no colliding labels


@pytest.mark.parametrize("n_heads", [16, 1024])
def test_variance_thresholds_are_labelled_and_counts_are_integers(drawn, n_heads):
    variance = np.random.default_rng(2).gamma(1.0, 0.002, n_heads)
    plots.variance_histogram(variance, [0.001, 0.005], "t", "x.png")
    ax = drawn[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{thr:g}: {(variance > thr).sum()}/{n_heads} heads above" for thr in (0.001, 0.005)]
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert len(ax.patches) == plots.histogram_bins(n_heads) == (6 if n_heads == 16 else 21)


@pytest.mark.parametrize("n_layers", [4, 32])
def test_layer_consistency_has_integer_layer_ticks(drawn, n_layers):
    per_layer = pd.DataFrame(
        {
            "layer": np.arange(n_layers),
            "pearson": np.linspace(0.5, 1, n_layers),
            "spearman": np.linspace(0.4, 1, n_layers),
        }
    )
    plots.layer_consistency(per_layer, "t", "x.png")
    assert all(float(t).is_integer() for t in drawn[0].axes[0].get_xticks())


def test_split_half_ticks_every_n_and_shows_n(drawn):
    ns = [2, 4, 10, 24, 50]
    table = pd.DataFrame(
        [
            {"n": n, "N": 51, "metric": m, "reliability": 1 - 1 / n, "lo": 0.9 - 1 / n, "hi": 1.0}
            for n in ns
            for m in ("spearman", "pearson")
        ]
    )
    plots.split_half_plot(table, "per_layer", "x.png")
    ax = drawn[0].axes[0]
    assert list(ax.get_xticks()) == ns and [t.get_text() for t in ax.get_xticklabels()] == [str(n) for n in ns]
    assert "N = 51" in ax.get_title() and "N = 51" in ax.get_xlabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["spearman"].get_ydata()) == [1 - 1 / n for n in ns]


def test_sample_correlation_is_ordered_by_category_with_blocks(drawn):
    cats = ["b", "a", "b", "a", "c"]
    mat = np.arange(25.0).reshape(5, 5)
    plots.matrix_heatmap(mat, "t", "x.png", groups=cats)
    ax = drawn[0].axes[0]
    order = [0, 2, 1, 3, 4]  # b b a a c, first appearance first
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(5, 5), mat[np.ix_(order, order)])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b (2)", "a (2)", "c (1)"]
    assert len(ax.patches) == 3
