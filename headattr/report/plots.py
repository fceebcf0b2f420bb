"""Figures (seaborn, headless). Each function draws one figure and saves it; none computes statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import Normalize, SymLogNorm  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

MARK = "x"  # drawn in the cell of every head whose importance rests on a path above report.gap_threshold
SYMLOG_RATIO = 10.0  # category panels whose largest |value| differ by this factor share a symlog scale


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tick_step(n: int, most: int = 16) -> int:
    """Label every step-th row or column so at most ``most`` labels show (32 layers: every 2nd)."""
    return max(1, -(-n // most))


def mark_cells(ax, marked, fontsize: float = 8) -> None:
    """Draw MARK in the (layer, head) cells of ``marked`` (heads resting on paths above the gap threshold)."""
    for layer, head in marked or ():
        ax.text(head + 0.5, layer + 0.5, MARK, ha="center", va="center", color="black", fontsize=fontsize)


def head_heatmap(
    matrix: np.ndarray, title: str, path: str | Path, label: str = "importance (-IG)", marked=None
) -> Path:
    """Layer x head heatmap, diverging around 0; ``marked`` (layer, head) cells get MARK (gap above threshold)."""
    n_layers, n_heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n_heads + 2), max(3, 0.3 * n_layers + 1.5)))
    lim = float(np.nanmax(np.abs(matrix))) or 1.0
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="RdBu_r",
        center=0,
        vmin=-lim,
        vmax=lim,
        cbar_kws={"label": label},
        xticklabels=tick_step(n_heads),
        yticklabels=tick_step(n_layers),
    )
    mark_cells(ax, marked)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title + (f" ({MARK}: completeness gap above threshold)" if marked else ""))
    return _save(fig, path)


def category_order(groups) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Stable order of samples by category (first appearance) and the blocks (category, start, end)."""
    groups = [str(g) for g in groups]
    cats = list(dict.fromkeys(groups))
    order = np.array([i for c in cats for i, g in enumerate(groups) if g == c], dtype=int)
    blocks, start = [], 0
    for c in cats:
        n = groups.count(c)
        blocks.append((c, start, start + n))
        start += n
    return order, blocks


def matrix_heatmap(
    matrix: np.ndarray, title: str, path, label: str = "Pearson r", center=None, groups=None, names=None
) -> Path:
    """A square matrix (e.g. the per-sample correlation matrix); with ``groups`` (a category per row) the rows
    and columns are ordered by category and the blocks are outlined and named; with ``names`` (one per row, e.g.
    sweep points) every row and column is labelled with its name."""
    n = matrix.shape[0]
    blocks = []
    if groups is not None and len(groups) == n:
        order, blocks = category_order(groups)
        matrix = matrix[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.3 * n), min(10, 2.5 + 0.3 * n)))
    sns.heatmap(matrix, ax=ax, cmap="viridis", center=center, cbar_kws={"label": label}, square=True)
    if blocks:
        for _, start, end in blocks:
            ax.add_patch(plt.Rectangle((start, start), end - start, end - start, fill=False, ec="white", lw=1.5))
        mids = [(start + end) / 2 for _, start, end in blocks]
        names = [f"{c} ({end - start})" for c, start, end in blocks]
        ax.set_xticks(mids, names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(mids, names, rotation=0, fontsize=8)
        ax.set_xlabel("samples by category (n)")
    elif names is not None:
        ax.set_xticks(np.arange(n) + 0.5, names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(np.arange(n) + 0.5, names, rotation=0, fontsize=7)
    else:
        step = max(1, n // 16)
        ticks = np.arange(0, n, step)
        ax.set_xticks(ticks + 0.5, ticks, fontsize=8)
        ax.set_yticks(ticks + 0.5, ticks, fontsize=8)
        ax.set_xlabel("sample")
    ax.set_title(title)
    return _save(fig, path)


def histogram_bins(n: int) -> int:
    """Bins for n values: the Rice rule 2 n^(1/3), between 5 and 40 (6 for 16 heads, 21 for 1024)."""
    return int(np.clip(np.ceil(2 * max(n, 1) ** (1 / 3)), 5, 40))


def variance_histogram(variance: np.ndarray, thresholds, title: str, path) -> Path:
    """Histogram of per-head variance across samples, with the report's thresholds marked and labelled."""
    values = np.ravel(variance)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.histplot(values, ax=ax, bins=histogram_bins(values.size))
    for thr, color in zip(thresholds, sns.color_palette("flare", len(thresholds)), strict=True):
        n_above = int((values > thr).sum())
        ax.axvline(thr, color=color, ls="--", lw=1.2, label=f"{thr:g}: {n_above}/{values.size} heads above")
    if len(thresholds):
        ax.legend(fontsize=8, title="threshold", title_fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("variance of the head's score across samples")
    ax.set_ylabel("heads")
    ax.set_title(title)
    return _save(fig, path)


def split_half_plot(table, title: str, path) -> Path:
    """Split-half reliability (Spearman-Brown) of an n-sample mean vs n, with the spread over splits; a tick at
    every n and a line at 0 (what a pure-noise ranking gives)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric, part in table.groupby("metric"):
        ax.plot(part["n"], part["reliability"], marker="o", label=metric)
        ax.fill_between(part["n"], part["lo"], part["hi"], alpha=0.2)
    ns = sorted({int(n) for n in table["n"]})
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ns, [str(n) for n in ns])
    n_total = int(table["N"].iloc[0])
    ax.set_xlabel(f"samples n (two disjoint halves of n / 2; N = {n_total})")
    ax.set_ylabel("split-half reliability")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}, N = {n_total}")
    return _save(fig, path)


def seed_scatter(scores, labels, title: str, path, label: str = "importance (-IG)") -> Path:
    """Importance (as in the heatmaps) of every head under two seeds, coloured by layer, with Pearson r and
    Spearman beside it (a few extreme heads can carry r alone)."""
    x, y = -scores["score_a"].to_numpy(dtype=float), -scores["score_b"].to_numpy(dtype=float)
    layers = scores["layer"].to_numpy()
    n_layers = int(layers.max()) + 1
    fig, ax = plt.subplots(figsize=(5.2, 4.5))
    cmap = plt.get_cmap("viridis", n_layers)
    points = ax.scatter(x, y, c=layers, cmap=cmap, vmin=-0.5, vmax=n_layers - 0.5, s=14 if x.size <= 256 else 5)
    bar = fig.colorbar(points, ax=ax, label="layer")
    bar.locator = MaxNLocator(integer=True, nbins=min(n_layers, 8))
    bar.update_ticks()
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    varied = x.std() > 0 and y.std() > 0
    r = np.corrcoef(x, y)[0, 1] if varied else float("nan")
    rho = spearmanr(x, y).statistic if varied else float("nan")
    text = f"r = {r:.3f} (Pearson), Spearman {rho:.3f}, {x.size} heads"
    ax.text(0.03, 0.95, text, transform=ax.transAxes, va="top", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel(f"{label}, {labels[0]}")
    ax.set_ylabel(f"{label}, {labels[1]}")
    ax.set_title(title)
    return _save(fig, path)


def layer_consistency(per_layer, title: str, path) -> Path:
    """Per-layer Pearson and Spearman between seeds vs depth."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(per_layer["layer"], per_layer["pearson"], marker="o", label="Pearson")
    ax.plot(per_layer["layer"], per_layer["spearman"], marker="s", label="Spearman")
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("correlation between seeds")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def topk_bars(topk, title: str, path) -> Path:
    """Mean top-K overlap between seeds vs the exact random expectation, per layer and global (``scope``); with
    ``null_lo`` / ``null_hi`` columns (stats.consensus.topk_null_band) the random bar carries the null's range."""
    scope = topk["scope"] if "scope" in topk else ["per_layer"] * len(topk)
    names = [f"top-{k}\n{str(s).replace('_', ' ')}" for k, s in zip(topk["k"], scope, strict=True)]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(topk) + 2), 3.5))
    x = np.arange(len(topk))
    ax.bar(x - 0.2, 100 * topk["mean_overlap"], width=0.4, label="seeds")
    expected = 100 * topk["random_expected"].to_numpy(dtype=float)
    if {"null_lo", "null_hi"} <= set(topk.columns):
        err = [expected - 100 * topk["null_lo"].to_numpy(float), 100 * topk["null_hi"].to_numpy(float) - expected]
        ax.bar(x + 0.2, expected, width=0.4, yerr=err, capsize=3, label="random (exact; bar: 95% range)")
    else:
        ax.bar(x + 0.2, expected, width=0.4, label="random (exact)")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("overlap (%)")
    ax.set_ylim(0, 119)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.set_title(title)
    return _save(fig, path)


def category_norm(panel_max) -> Normalize:
    """One colour scale for every category panel: linear to the largest |value|, or, when the panels' largest
    |values| differ by SYMLOG_RATIO or more, symlog with its linear part up to the smallest panel's largest
    |value|, so a text category on a tenth of a task's scale still shows its pattern."""
    peaks = [float(p) for p in panel_max if p > 0] or [1.0]
    lim = max(peaks)
    if lim / min(peaks) < SYMLOG_RATIO:
        return Normalize(vmin=-lim, vmax=lim)
    return SymLogNorm(linthresh=min(peaks), linscale=1.0, vmin=-lim, vmax=lim, base=10)


def category_heatmaps(
    category_means,
    title: str,
    path,
    counts: dict | None = None,
    label: str = "importance (-IG)",
    marked=None,
) -> Path:
    """One layer x head heatmap of mean importance per data category on a shared, labelled colour scale
    (:func:`category_norm`; rows named by the model's layers); ``counts`` (category -> samples) puts n in each
    panel's title; ``marked`` (layer, head) cells get MARK."""
    cats = list(dict.fromkeys(category_means["category"]))
    n_layers = int(category_means["layer"].max()) + 1
    n_heads = int(category_means["head"].max()) + 1
    side = float(np.clip(0.12 * max(n_layers, n_heads), 2.6, 5.0))
    fig, axes = plt.subplots(
        1,
        len(cats) + 1,
        figsize=(side * len(cats) + 1.2, side + 0.9),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * len(cats) + [0.06]},
    )
    peaks = category_means.assign(a=category_means["score"].abs()).groupby("category", sort=False)["a"].max()
    norm = category_norm(peaks.to_numpy())
    step = max(tick_step(n_layers, 8), tick_step(n_heads, 8))
    for i, (ax, cat) in enumerate(zip(axes[0][:-1], cats, strict=True)):
        part = category_means[category_means["category"] == cat]
        mat = part.pivot(index="layer", columns="head", values="score")
        sns.heatmap(
            -mat,
            ax=ax,
            cmap="RdBu_r",
            norm=norm,
            cbar=i == len(cats) - 1,
            cbar_ax=axes[0][-1] if i == len(cats) - 1 else None,
            cbar_kws={"label": label},
            xticklabels=step,
            yticklabels=step,
            square=True,
        )
        mark_cells(ax, marked, fontsize=6)
        n = (counts or {}).get(cat)
        ax.set_title(f"{cat or '(none)'}" + (f" (n = {n})" if n is not None else ""), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
        ax.tick_params(labelsize=7)
    scale = "symlog" if isinstance(norm, SymLogNorm) else "linear"
    fig.suptitle(f"{title} ({scale} colour scale" + (f"; {MARK}: gap above threshold)" if marked else ")"))
    return _save(fig, path)
