"""The report's pruning-validation section: deletion curves with intervals and a chance line, and the table of
held-out AOPC with intervals, the random band, p and verdict of every ranked order (most and least first)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

ORDER_NAMES = {"most_first": "most important first", "least_first": "least important first"}
METRIC_NAMES = {"loss": "held-out masked-token loss (nats)", "accuracy": "held-out masked-token accuracy"}
CHANCE_NAMES = {"loss": "uniform prediction (ln V)", "accuracy": "uniform prediction (1 / V)"}


def _chance(summary: pd.DataFrame, metric: str) -> float:
    column = f"chance_{metric}"
    return float(summary[column].iloc[0]) if column in summary and len(summary) else math.nan


def deletion_plot(curves: pd.DataFrame, summary: pd.DataFrame, title: str, path) -> Path:
    """Loss and accuracy vs fraction of heads removed: each ranked order with its bootstrap band over samples,
    the random orders' mean and 95 % quantile band, and the uniform predictor's value as a dotted line."""
    from .plots import _save, plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
    random = curves[curves["method"] == "random"]
    ranked = curves[curves["method"] != "random"]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        if len(random):
            band = random.groupby("fraction")[metric]
            lo, hi = band.quantile(0.025), band.quantile(0.975)
            n = random.groupby(["mode", "seed"]).ngroups
            ax.fill_between(lo.index, lo, hi, color="grey", alpha=0.25, label=f"random, 95 % of {n} orders")
            ax.plot(lo.index, band.mean(), color="grey", lw=1)
        for (mode, method, order), part in ranked.groupby(["mode", "method", "order"]):
            part = part.sort_values("fraction")
            label = f"{method}, {ORDER_NAMES.get(order, order)}" + (" (iterative)" if mode == "iterative" else "")
            (line,) = ax.plot(part["fraction"], part[metric], "-" if order == "most_first" else "--", marker=".")
            line.set_label(label)
            if f"{metric}_lo" in part:
                ax.fill_between(
                    part["fraction"], part[f"{metric}_lo"], part[f"{metric}_hi"], color=line.get_color(), alpha=0.15
                )
        chance = _chance(summary, metric)
        if not math.isnan(chance):
            ax.axhline(chance, color="black", ls=":", lw=1, label=CHANCE_NAMES[metric])
        ax.set_xlabel("fraction of heads removed")
        ax.set_ylabel(METRIC_NAMES[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def _interval(value, lo, hi, digits: int = 3) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def pruning_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per ranked order (methods by AOPC - random, most first): AOPC and AOPC - random with their
    intervals, the random mean with its 95 % band, p vs random, verdict and the removable fraction."""
    ranked = summary[(summary["method"] != "random") & summary["order"].isin(list(ORDER_NAMES))].copy()
    ranked["_rank"] = ranked["aopc_vs_random"] * ranked["order"].map({"most_first": 1.0, "least_first": -1.0})
    ranked = ranked.sort_values(["order", "_rank"], ascending=[False, False])
    rows = []
    for r in ranked.itertuples(index=False):
        flag = r.verdict if r.verdict != "worse than random" else "**worse than random**"
        if r.worse_than_random and r.verdict != "worse than random":
            flag += " (point estimate worse)"
        rows.append(
            {
                "method": r.method + (" (iterative)" if r.mode == "iterative" else ""),
                "order": ORDER_NAMES[r.order],
                "AOPC [95 % CI]": _interval(r.aopc, r.aopc_lo, r.aopc_hi),
                "random mean [95 % of orders]": _interval(r.aopc_random_mean, r.random_q025, r.random_q975),
                "AOPC - random [95 % CI]": _interval(r.aopc_vs_random, r.aopc_vs_random_lo, r.aopc_vs_random_hi),
                "p vs random": f"{r.p_vs_random:.3g}",
                "verdict": flag,
                "removable fraction": f"{r.removable_fraction:.2f}",
            }
        )
    return pd.DataFrame(rows)


def flagged(summary: pd.DataFrame) -> list[str]:
    """Sentences for every ranked order whose AOPC lies on the wrong side of the random mean."""
    ranked = summary[summary["method"] != "random"]
    bad = ranked[ranked["worse_than_random"].astype("boolean").fillna(False).astype(bool)]
    out = []
    for r in bad.itertuples(index=False):
        side = "hurts more" if r.order == "least_first" else "hurts less"
        carried = "excludes" if r.verdict == "worse than random" else "does not exclude"
        out.append(
            f"{r.method} {ORDER_NAMES[r.order]}{' (iterative)' if r.mode == 'iterative' else ''} {side} than random "
            f"orders: AOPC {r.aopc:.3f} vs {r.aopc_random_mean:.3f} (difference "
            f"{_interval(r.aopc_vs_random, r.aopc_vs_random_lo, r.aopc_vs_random_hi)}; its interval {carried} 0)."
        )
    return out


def validation_context(seed: int, curves: pd.DataFrame, summary: pd.DataFrame, figures_dir: Path, md_table):
    """(template context, summary.json entry) of one seed's pruning validation."""
    name = f"deletion_seed{seed}.png"
    deletion_plot(curves, summary, f"pruning on held-out samples, seed {seed}", Path(figures_dir) / name)
    table = pruning_table(summary)
    random = summary[summary["method"] == "random"]
    n_random = int(random.groupby("mode").size().max()) if len(random) else 0
    n_samples = int(summary["n_samples"].iloc[0]) if "n_samples" in summary else None
    context = {
        "seed": seed,
        "figure": name,
        "table": md_table(table),
        "flags": flagged(summary),
        "n_random": n_random,
        "n_samples": n_samples,
    }
    cols = [
        "mode",
        "method",
        "order",
        "aopc",
        "aopc_lo",
        "aopc_hi",
        "aopc_random_mean",
        "random_q025",
        "random_q975",
        "aopc_vs_random",
        "aopc_vs_random_lo",
        "aopc_vs_random_hi",
        "p_vs_random",
        "verdict",
        "worse_than_random",
        "removable_fraction",
    ]
    ranked = summary[summary["method"] != "random"]
    records = ranked[[c for c in cols if c in ranked]].to_dict("records")
    return context, {"seed": seed, "n_random": n_random, "n_samples": n_samples, "ranking": records}
