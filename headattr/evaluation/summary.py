"""``task_validation.csv`` from the per-point results, and what the report says about it.

Every curve (method x ranked order, and each random seed) gets the shared unpruned point at fraction 0. A task's
headline metric is the first metric lm-eval reports for it (the task YAML's first ``metric_list`` entry).

- removable fraction: the largest fraction f such that the metric stays >= (1 - tolerance) * unpruned at every
  fraction <= f (random: the mean curve over seeds);
- task AOPC: mean over fractions > 0 of unpruned - metric (higher = pruning in that order hurts sooner);
  ``task_aopc_norm`` = task AOPC / (unpruned - chance) (1 = the order takes the task to chance at once);
  ``task_aopc_vs_random`` = task AOPC - the random seeds' mean task AOPC, with a normal 95 % interval
  (``_lo``/``_hi``) from the seeds' spread (sd / sqrt(R)) and the ranked curve's lm-eval standard errors (their
  mean over fractions: the fractions share items, so this does not shrink with more fractions), in raw and
  normalised units;
- uninformative: unpruned - chance < max(``min_margin``, 2 x the unpruned standard error): pruning cannot show a
  fall on that task, its AOPC and ratios carry no verdict;
- drop ratio: (unpruned - metric) / (unpruned - mean random metric) at the same fraction;
- proxy agreement: Spearman, across methods, of the held-out-loss AOPC (most first, pruning validation, mean over
  seeds) and the task AOPC (prune-most) per task; not computed from fewer than :data:`MIN_CORRELATION_POINTS`
  methods (with 2 or 3 it is +-1 or nearly so by construction);
- single-head ablations (order ``single``, rank in ``seed``): the fall of the metric with only that head pruned.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .results import TASK_COLUMNS

COLUMNS = [*TASK_COLUMNS, "seed"]
MIN_CORRELATION_POINTS = 4
Z95 = 1.959963984540054
COST_COLUMNS = ["method", "order", "fraction", "seed", "heads_pruned", "forward_passes", "rows", "items", "wall_s"]


def task_table(points: list[pd.DataFrame]) -> pd.DataFrame:
    """Tidy rows of every curve, the unpruned rows (order ``none``) copied to fraction 0 of each curve, and the
    single-head ablations as they are."""
    df = pd.concat(points, ignore_index=True)
    df["seed"] = df["seed"].astype("Int64")
    base, pruned = df[df["order"] == "none"], df[~df["order"].isin(["none", "single"])]
    curves = pruned[["method", "order", "seed"]].drop_duplicates()
    zero = curves.merge(base.drop(columns=["method", "order", "seed"]), how="cross").assign(fraction=0.0)
    out = pd.concat([zero, pruned, df[df["order"] == "single"]], ignore_index=True)[COLUMNS]
    return out.sort_values(["task", "metric", "method", "order", "seed", "fraction"], ignore_index=True)


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's headline metric."""
    first = table.drop_duplicates("task")[["task", "metric"]]
    return table.merge(first, on=["task", "metric"])


def curves(table: pd.DataFrame) -> pd.DataFrame:
    """Headline metric per (task, method, order, fraction): ranked orders with value +- 1.96 lm-eval standard
    errors as lo, hi; random as the mean over seeds with their 2.5 % and 97.5 % quantiles (columns value, lo, hi,
    stderr). Single-head ablations are not curves (see :func:`single_head_table`)."""
    h = headline(table)
    h = h[h["order"] != "single"]
    ranked = h[h["order"] != "random"]
    half = Z95 * ranked["stderr"].fillna(0.0)
    ranked = ranked.assign(lo=ranked["value"] - half, hi=ranked["value"] + half)
    rnd = (
        h[h["order"] == "random"]
        .groupby(["task", "metric", "method", "order", "fraction"], as_index=False)
        .agg(
            value=("value", "mean"),
            lo=("value", lambda v: v.quantile(0.025)),
            hi=("value", lambda v: v.quantile(0.975)),
            stderr=("stderr", "mean"),
        )
    )
    cols = ["task", "metric", "method", "order", "fraction", "value", "lo", "hi", "stderr"]
    return pd.concat([ranked[cols], rnd[cols]], ignore_index=True)


def removable_fraction(curve: pd.DataFrame, tolerance: float) -> float:
    curve = curve.sort_values("fraction")
    ref = curve["value"].iloc[0]
    ok = (curve["value"] >= (1 - tolerance) * ref).to_numpy()
    last = len(ok) - 1 if ok.all() else int(np.argmin(ok)) - 1
    return float(curve["fraction"].iloc[last]) if last >= 0 else math.nan


def aopc(curve: pd.DataFrame) -> float:
    curve = curve.sort_values("fraction")
    later = curve[curve["fraction"] > 0]
    return float((curve["value"].iloc[0] - later["value"]).mean()) if len(later) else math.nan


def curve_summary(table: pd.DataFrame, tolerance: float, chance: dict | None = None, min_margin: float = 0.1):
    """One row per (task, metric, method, order): unpruned value, removable fraction, task AOPC, its normalised
    value, the random seeds' mean task AOPC and the difference with its interval, and ``uninformative``."""
    chance = chance or {}
    rows = []
    for (task, metric, method, order), c in curves(table).groupby(["task", "metric", "method", "order"]):
        c = c.sort_values("fraction")
        rows.append(
            {
                "task": task,
                "metric": metric,
                "method": method,
                "order": order,
                "unpruned": float(c["value"].iloc[0]),
                "unpruned_stderr": float(c["stderr"].iloc[0]),
                "chance": float(chance.get(task, 0.0)),
                "removable_fraction": removable_fraction(c, tolerance),
                "task_aopc": aopc(c),
                "stderr_mean": float(c.loc[c["fraction"] > 0, "stderr"].fillna(0.0).mean()),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    margin = out["unpruned"] - out["chance"]
    out["task_aopc_norm"] = out["task_aopc"] / margin.where(margin > 0)
    out["uninformative"] = margin < np.maximum(min_margin, 2 * out["unpruned_stderr"].fillna(0.0))
    seeds = random_seed_aopc(table)
    rnd = seeds.groupby("task")["task_aopc"].agg(["mean", "std", "size"])
    out["random_task_aopc"] = out["task"].map(rnd["mean"])
    out["n_random"] = out["task"].map(rnd["size"]).fillna(0).astype(int)
    out["task_aopc_vs_random"] = out["task_aopc"] - out["random_task_aopc"]
    se_random = out["task"].map(rnd["std"].fillna(0.0) / np.sqrt(rnd["size"]))
    half = Z95 * np.sqrt(se_random**2 + out["stderr_mean"] ** 2)
    out["task_aopc_vs_random_lo"] = out["task_aopc_vs_random"] - half
    out["task_aopc_vs_random_hi"] = out["task_aopc_vs_random"] + half
    for end in ("", "_lo", "_hi"):
        out[f"task_aopc_vs_random_norm{end}"] = out[f"task_aopc_vs_random{end}"] / margin.where(margin > 0)
    out.loc[out["order"] == "random", [c for c in out if c.startswith("task_aopc_vs_random")]] = math.nan
    return out.drop(columns=["stderr_mean"])


def random_seed_aopc(table: pd.DataFrame) -> pd.DataFrame:
    """Task AOPC of every random seed's own curve (task, seed, task_aopc)."""
    h = headline(table)
    rows = [
        {"task": task, "seed": seed, "task_aopc": aopc(part)}
        for (task, seed), part in h[h["order"] == "random"].groupby(["task", "seed"])
    ]
    return pd.DataFrame(rows, columns=["task", "seed", "task_aopc"])


def single_head_table(table: pd.DataFrame) -> pd.DataFrame:
    """Single-head ablations: per (task, method, rank) the headline metric with only that head pruned, its fall
    from unpruned and that fall in units of the unpruned standard error."""
    h = headline(table)
    single = h[h["order"] == "single"]
    base = h[(h["order"] != "single") & (h["fraction"] == 0)].drop_duplicates("task").set_index("task")
    if single.empty:
        return pd.DataFrame(columns=["task", "method", "rank", "value", "stderr", "drop"])
    out = single.assign(rank=single["seed"].astype(int), drop=single["task"].map(base["value"]) - single["value"])
    return out[["task", "method", "rank", "value", "stderr", "drop"]].sort_values(["task", "method", "rank"])


def drop_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, order, fraction > 0): the fall of the headline metric from unpruned, the mean fall of the
    random masks at that fraction, and their ratio (how many times more a ranked order hurts than random)."""
    c = curves(table)
    ref = c[c["fraction"] == 0].groupby("task")["value"].first()
    c = c[c["fraction"] > 0].assign(drop=lambda d: d["task"].map(ref) - d["value"])
    rnd = c[c["order"] == "random"].set_index(["task", "fraction"])["drop"].rename("random_drop")
    ranked = c[c["order"] != "random"].join(rnd, on=["task", "fraction"])
    ranked["ratio"] = ranked["drop"] / ranked["random_drop"]
    cols = ["task", "method", "order", "fraction", "drop", "random_drop", "ratio"]
    return ranked[cols].sort_values(["task", "method", "order", "fraction"], ignore_index=True)


def users_table(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """Fractions x (method order) cells 'value ± stderr' of one task's headline metric (random: mean ± sd over
    seeds)."""
    h = headline(table)
    h = h[(h["task"] == task) & (h["order"] != "single")]
    cells = {}
    for (method, order), part in h[h["order"] != "random"].groupby(["method", "order"]):
        cells[f"{method} {order}"] = {
            f: f"{v:.3f} ± {s:.3f}" for f, v, s in part[["fraction", "value", "stderr"]].values
        }
    rnd = h[h["order"] == "random"].groupby("fraction")["value"]
    if len(h[h["order"] == "random"]):
        sd = rnd.std(ddof=1).fillna(0.0)
        cells[f"random (mean ± sd, {h[h['order'] == 'random']['seed'].nunique()} seeds)"] = {
            f: f"{m:.3f} ± {sd[f]:.3f}" for f, m in rnd.mean().items()
        }
    out = pd.DataFrame(cells)
    out.index.name = "fraction"
    return out.reset_index()


def proxy_agreement(summary: pd.DataFrame, heldout_aopc: dict) -> pd.DataFrame:
    """Per task: Spearman across methods of held-out-loss AOPC and task AOPC (prune-most), with the methods used."""
    from scipy.stats import spearmanr

    rows = []
    most = summary[summary["order"] == "most"]
    for task, part in most.groupby("task"):
        part = part[part["method"].isin(list(heldout_aopc))]
        x = [heldout_aopc[m] for m in part["method"]]
        rho = spearmanr(x, part["task_aopc"]).statistic if len(part) >= MIN_CORRELATION_POINTS else math.nan
        rows.append(
            {"task": task, "n_methods": len(part), "spearman": float(rho), "methods": ", ".join(part["method"])}
        )
    return pd.DataFrame(rows)


def cost_summary(cost: pd.DataFrame, attribution_wall: dict) -> pd.DataFrame:
    """Evaluation cost per point (mean forward passes, rows, wall s over points) next to attribution wall s."""
    rows = [
        {
            "job": "task evaluation, per point",
            "points": len(cost),
            "forward_passes": cost["forward_passes"].mean(),
            "rows": cost["rows"].mean(),
            "wall_s": cost["wall_s"].mean(),
        },
        {
            "job": "task evaluation, all points",
            "points": len(cost),
            "forward_passes": cost["forward_passes"].sum(),
            "rows": cost["rows"].sum(),
            "wall_s": cost["wall_s"].sum(),
        },
    ]
    for name, wall in attribution_wall.items():
        rows.append(
            {
                "job": f"attribution {name}",
                "points": math.nan,
                "forward_passes": math.nan,
                "rows": math.nan,
                "wall_s": wall,
            }
        )
    return pd.DataFrame(rows)
