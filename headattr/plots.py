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
