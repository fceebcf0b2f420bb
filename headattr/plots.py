"""Figures (seaborn, headless). Each function draws one figure and saves it; none computes statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def head_heatmap(matrix: np.ndarray, title: str, path: str | Path, label: str = "importance (-IG)") -> Path:
    """Layer x head heatmap, diverging around 0."""
    n_layers, n_heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n_heads + 2), max(3, 0.3 * n_layers + 1.5)))
    lim = float(np.nanmax(np.abs(matrix))) or 1.0
    sns.heatmap(matrix, ax=ax, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar_kws={"label": label})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    return _save(fig, path)


def matrix_heatmap(matrix: np.ndarray, title: str, path, label: str = "Pearson r", center=None) -> Path:
    """A square matrix (e.g. the per-sample correlation matrix)."""
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.3 * n), min(10, 1.5 + 0.3 * n)))
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="viridis",
        center=center,
        cbar_kws={"label": label},
        xticklabels=n <= 30,
        yticklabels=n <= 30,
    )
    ax.set_title(title)
    return _save(fig, path)


def variance_histogram(variance: np.ndarray, thresholds, title: str, path) -> Path:
    """Histogram of per-head variance across samples, with the report's thresholds marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.histplot(np.ravel(variance), ax=ax, bins=40)
    for thr in thresholds:
        ax.axvline(thr, color="crimson", ls="--", lw=1)
    ax.set_xlabel("variance of the head's score across samples")
    ax.set_title(title)
    return _save(fig, path)


def convergence_plot(curve, title: str, path) -> Path:
    """Agreement of the first-n-sample mean with the all-N mean vs n, with bootstrap bands."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric, part in curve.groupby("metric"):
        ax.plot(part["n"], part["mean"], marker="o", label=metric)
        ax.fill_between(part["n"], part["lo"], part["hi"], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("samples n")
    ax.set_ylabel("agreement with all N")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def seed_scatter(scores, labels, title: str, path) -> Path:
    """Head scores of two seeds against each other, coloured by layer."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    sns.scatterplot(data=scores, x="score_a", y="score_b", hue="layer", palette="viridis", s=14, ax=ax, legend=False)
    lo = float(min(scores["score_a"].min(), scores["score_b"].min()))
    hi = float(max(scores["score_a"].max(), scores["score_b"].max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel(f"IG score, {labels[0]}")
    ax.set_ylabel(f"IG score, {labels[1]}")
    ax.set_title(title)
    return _save(fig, path)


def layer_consistency(per_layer, title: str, path) -> Path:
    """Per-layer Pearson and Spearman between seeds vs depth."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(per_layer["layer"], per_layer["pearson"], marker="o", label="Pearson")
    ax.plot(per_layer["layer"], per_layer["spearman"], marker="s", label="Spearman")
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("correlation between seeds")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def topk_bars(topk, title: str, path) -> Path:
    """Mean top-K overlap between seeds vs the exact random expectation."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(topk))
    ax.bar(x - 0.2, 100 * topk["mean_overlap"], width=0.4, label="seeds")
    ax.bar(x + 0.2, 100 * topk["random_expected"], width=0.4, label="random (k/n)")
    ax.set_xticks(x, [f"top-{k}" for k in topk["k"]])
    ax.set_ylabel("overlap (%)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def category_heatmaps(category_means, title: str, path) -> Path:
    """One layer x head heatmap of mean importance per data category, on a shared scale."""
    cats = list(dict.fromkeys(category_means["category"]))
    fig, axes = plt.subplots(1, len(cats), figsize=(3.2 * len(cats) + 1, 3.2), squeeze=False)
    lim = float(np.nanmax(np.abs(category_means["score"]))) or 1.0
    for ax, cat in zip(axes[0], cats, strict=True):
        part = category_means[category_means["category"] == cat]
        mat = part.pivot(index="layer", columns="head", values="score").to_numpy()
        sns.heatmap(-mat, ax=ax, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar=False)
        ax.set_title(cat or "(none)")
    fig.suptitle(title)
    return _save(fig, path)


def deletion_plot(curves, title: str, path) -> Path:
    """Loss and accuracy vs fraction of heads removed: each method's orders against the random band."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    random = curves[curves["method"] == "random"]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        if len(random):
            band = random.groupby("fraction")[metric].agg(["mean", "min", "max"]).reset_index()
            ax.fill_between(band["fraction"], band["min"], band["max"], color="grey", alpha=0.25, label="random")
            ax.plot(band["fraction"], band["mean"], color="grey", lw=1)
        ranked = curves[curves["method"] != "random"]
        for (mode, method, order), part in ranked.groupby(["mode", "method", "order"]):
            style = "-" if order == "most_first" else "--"
            label = f"{method} {order}" + (" (iterative)" if mode == "iterative" else "")
            ax.plot(part["fraction"], part[metric], style, marker=".", label=label)
        ax.set_xlabel("fraction of heads removed")
        ax.set_ylabel(f"held-out masked-token {metric}")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
