"""The report's sparse-attention section (sparse_validation): the users' table (Standard / Uniform / Adaptive per
method / controls at each select), task score against realised density with the random band, and each source
minus uniform with a paired bootstrap interval over items. Everything is read from what ran (the tables of the
sparse_validation rule), never from the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..pipeline.sparse_config import CONTROLS
from ..stats.nulls import bootstrap_ci

BANDED = ("random", "shuffled")
"""Sources with several seeds: shown as the mean and the min-max band over seeds."""


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's headline metric (the first metric lm-eval reports for it)."""
    first = table.drop_duplicates("task")[["task", "metric"]]
    return table.merge(first, on=["task", "metric"])


def _row_name(source: str) -> str:
    if source == "dense":
        return "Standard (dense)"
    if source == "uniform":
        return "Uniform sparse"
    return source if source in CONTROLS else f"Adaptive ({source})"


def _order(sources) -> list[str]:
    rank = {"dense": 0, "uniform": 1, "random": 3, "negated": 4, "shuffled": 5}
    return sorted(dict.fromkeys(sources), key=lambda s: (rank.get(s, 2), s))


def by_source(table: pd.DataFrame) -> pd.DataFrame:
    """Headline metric per (task, source, select): value (mean over seeds), lo / hi (min-max over seeds), stderr,
    density and flops_fraction (means), seeds."""
    h = headline(table)
    return h.groupby(["task", "metric", "source", "select"], as_index=False, dropna=False).agg(
        value=("value", "mean"),
        lo=("value", "min"),
        hi=("value", "max"),
        stderr=("stderr", "mean"),
        density=("density", "mean"),
        flops_fraction=("flops_fraction", "mean"),
        seeds=("seed", "count"),
    )


def users_table(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task: rows Standard / Uniform / Adaptive per method / controls, columns the selects; a cell is
    "value ± stderr (density d)" (banded sources: "mean [min, max] (density d)" over seeds)."""
    s = by_source(table)
    s = s[s["task"] == task]
    selects = sorted(x for x in s["select"].dropna().unique())
    out = []
    for source in _order(s["source"]):
        part = s[s["source"] == source]
        row = {"source": _row_name(source)}
        for select in selects:
            cell = part if source == "dense" else part[part["select"] == select]
            if cell.empty:
                row[f"select {select:g}"] = "-"
                continue
            c = cell.iloc[0]
            score = (
                f"{c['value']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"
                if source in BANDED
                else f"{c['value']:.3f} ± {c['stderr']:.3f}"
            )
            density = "dense" if source == "dense" else f"d {c['density']:.3f}"
            row[f"select {select:g}"] = f"{score} ({density})"
        out.append(row)
    return pd.DataFrame(out)


def paired_differences(
    table: pd.DataFrame, items: pd.DataFrame, n_boot: int = 2000, seed: int = 0, reference: str = "uniform"
) -> pd.DataFrame:
    """Each non-reference sparse source minus ``reference`` (uniform) at each (task, select) on the headline
    metric: mean difference over the items both scored (paired by document), its 95 % percentile bootstrap
    interval over items, the densities of both, and whether the interval excludes 0. Seeded sources are averaged
    over seeds per item first."""
    metrics = headline(table)[["task", "metric"]].drop_duplicates()
    it = items.merge(metrics, on=["task", "metric"])
    it = it[it["source"] != "dense"]
    per = it.groupby(["task", "source", "select", "doc_id"], as_index=False)["value"].mean()
    dens = by_source(table).set_index(["task", "source", "select"])["density"]
    rows = []
    for (task, select), part in per.groupby(["task", "select"]):
        wide = part.pivot(index="doc_id", columns="source", values="value")
        if reference not in wide:
            continue
        for source in _order(c for c in wide.columns if c != reference):
            pair = wide[[source, reference]].dropna()
            diff = (pair[source] - pair[reference]).to_numpy()
            est, lo, hi = bootstrap_ci(diff, np.mean, n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "task": task,
                    "select": select,
                    "source": source,
                    "minus": reference,
                    "difference": est,
                    "lo": lo,
                    "hi": hi,
                    "n_items": len(diff),
                    "density": dens.get((task, source, select), np.nan),
                    "density_ref": dens.get((task, reference, select), np.nan),
                    "excludes_0": bool(lo > 0 or hi < 0),
                }
            )
    return pd.DataFrame(rows)


def density_plot(table: pd.DataFrame, path) -> Path:
    """Headline metric vs realised density, one panel per task: a line per source over its selects, the random
    band (min-max over seeds) shaded, dense as a horizontal line."""
    from .plots import _save, plt

    s = by_source(table)
    tasks = list(dict.fromkeys(s["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = s[s["task"] == task]
        for source in _order(part["source"]):
            line = part[part["source"] == source].sort_values("density")
            if source == "dense":
                ax.axhline(line["value"].iloc[0], color="black", lw=1, ls=":", label="dense")
                continue
            if source == "random":
                ax.fill_between(line["density"], line["lo"], line["hi"], color="grey", alpha=0.3, label="random")
                ax.plot(line["density"], line["value"], color="grey", lw=1)
                continue
            ax.errorbar(
                line["density"],
                line["value"],
                yerr=None if source in BANDED else line["stderr"].fillna(0),
                fmt="--" if source in CONTROLS else "-",
                marker=".",
                capsize=2,
                label=source,
            )
        ax.set_xlabel("realised attention density (kept key blocks)")
        ax.set_ylabel(part["metric"].iloc[0])
        ax.set_title(task, fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def sparse_context(table_csv, items_csv, n_boot: int, figures_dir, md_table) -> tuple[dict, dict]:
    """(template context, summary.json entry) of the sparse-attention section."""
    table = pd.read_csv(table_csv)
    table["seed"] = table["seed"].astype("Int64")
    items = pd.read_csv(items_csv)
    figure = "sparse_validation.png"
    density_plot(table, Path(figures_dir) / figure)
    diffs = paired_differences(table, items, n_boot)
    h = headline(table).drop_duplicates("task")
    tasks = [
        {"task": t, "metric": m, "table": md_table(users_table(table, t))}
        for t, m in zip(h["task"], h["metric"], strict=True)
    ]
    context = {"figure": figure, "tasks": tasks, "differences": md_table(diffs, ".3f"), "n_boot": n_boot}
    head = {"by_source": by_source(table).to_dict("records"), "differences": diffs.to_dict("records")}
    return context, head
