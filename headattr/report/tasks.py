"""The report's task-validation section: the users' table, curves with intervals, the random band and chance,
removable fractions, task AOPC (normalised, minus random, with intervals; uninformative tasks marked), single-head
ablations, proxy agreement and evaluation cost (context for report/report.md.j2; tables as markdown strings)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.summary import (
    MIN_CORRELATION_POINTS,
    cost_summary,
    curve_summary,
    curves,
    drop_ratios,
    proxy_agreement,
    single_head_table,
    users_table,
)

ORDER_NAMES = {"most": "most important first", "least": "least important first"}


def metric_name(metric: str) -> str:
    """lm-eval's ``exact_match,strip`` or ``acc_norm`` as plain words: ``exact match (strip)``, ``acc norm``."""
    name, _, filt = str(metric).partition(",")
    plain = name.replace("_", " ")
    return f"{plain} ({filt.replace('_', ' ')})" if filt and filt != "none" else plain


def task_curves_plot(table: pd.DataFrame, path, chance: dict | None = None) -> Path:
    """Headline metric vs fraction pruned, one panel per task: each method's most / least order with a 95 % band
    (+- 1.96 lm-eval standard errors), the random seeds' mean and 95 % quantile band, and the chance level."""
    from .plots import _save, plt

    c = curves(table)
    tasks = list(dict.fromkeys(c["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = c[c["task"] == task]
        rnd = part[part["order"] == "random"].sort_values("fraction")
        if len(rnd):
            n = table[(table["task"] == task) & (table["order"] == "random")]["seed"].nunique()
            ax.fill_between(
                rnd["fraction"], rnd["lo"], rnd["hi"], color="grey", alpha=0.25, label=f"random, 95 % of {n}"
            )
            ax.plot(rnd["fraction"], rnd["value"], color="grey", lw=1)
        for (method, order), line in part[part["order"] != "random"].groupby(["method", "order"]):
            line = line.sort_values("fraction")
            (drawn,) = ax.plot(line["fraction"], line["value"], "-" if order == "most" else "--", marker=".")
            drawn.set_label(f"{method}, {ORDER_NAMES.get(order, order)}")
            ax.fill_between(line["fraction"], line["lo"], line["hi"], color=drawn.get_color(), alpha=0.15)
        ax.axhline((chance or {}).get(task, 0.0), color="black", ls=":", lw=1, label="chance")
        ax.set_xlabel("fraction of heads pruned")
        ax.set_ylabel(metric_name(part["metric"].iloc[0]))
        ax.set_title(task, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _interval(value, lo, hi) -> str:
    return "" if pd.isna(value) else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def aopc_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task and ranked order: task AOPC, normalised by (unpruned - chance), and minus random with its 95 %
    interval (raw and normalised); uninformative tasks say so instead of a verdict."""
    rows = []
    for r in summary[summary["order"] != "random"].itertuples(index=False):
        lo, hi = r.task_aopc_vs_random_lo, r.task_aopc_vs_random_hi
        if r.uninformative:
            verdict = "uninformative (unpruned near chance)"
        elif lo > 0:
            verdict = "hurts more than random"
        elif hi < 0:
            verdict = "hurts less than random"
        else:
            verdict = "not distinguishable from random"
        rows.append(
            {
                "task": r.task,
                "method": r.method,
                "order": ORDER_NAMES.get(r.order, r.order),
                "unpruned": f"{r.unpruned:.3f}",
                "chance": f"{r.chance:.3f}",
                "task AOPC": f"{r.task_aopc:.3f}",
                "normalised": "" if pd.isna(r.task_aopc_norm) else f"{r.task_aopc_norm:.3f}",
                "minus random [95 % CI]": _interval(r.task_aopc_vs_random, lo, hi),
                "normalised minus random [95 % CI]": _interval(
                    r.task_aopc_vs_random_norm, r.task_aopc_vs_random_norm_lo, r.task_aopc_vs_random_norm_hi
                ),
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows)


def heldout_aopc(validation_summaries) -> dict:
    """{method: held-out-loss AOPC (one-shot, most first), mean over seeds} from the pruning-validation summaries."""
    frames = [pd.read_csv(p) for p in validation_summaries]
    if not frames:
        return {}
    s = pd.concat(frames)
    s = s[(s["mode"] == "one_shot") & (s["order"] == "most_first") & (s["method"] != "random")]
    return s.groupby("method")["aopc"].mean().to_dict()


def unused_chance(chance: dict | None, tasks) -> list[str]:
    """Tasks named in ``validation.tasks.chance`` that did not run (a misspelt name would otherwise leave the real
    task at chance 0 silently): the report lists them."""
    return sorted(set(chance or {}) - {str(t) for t in tasks})


def task_context(
    table_csv,
    cost_csv,
    tolerance: float,
    validation_summaries,
    unit_summaries,
    figures_dir,
    md_table,
    chance: dict | None = None,
    min_margin: float = 0.1,
):
    """(template context, summary.json entry) of the task-validation section."""
    table = pd.read_csv(table_csv)
    cost = pd.read_csv(cost_csv)
    figure = "task_validation.png"
    task_curves_plot(table, Path(figures_dir) / figure, chance)
    summary = curve_summary(table, tolerance, chance, min_margin)
    singles = single_head_table(table)
    uninformative = sorted(set(summary.loc[summary["uninformative"], "task"]))
    proxy = proxy_agreement(summary, heldout_aopc(validation_summaries))
    walls: dict = {}
    for u in unit_summaries:
        if u.get("wall_time_s") is not None:
            walls[u["method"]] = walls.get(u["method"], 0.0) + u["wall_time_s"]
    costs = cost_summary(cost, {f"{m} (all seeds, benchmark wall s)": w for m, w in walls.items()})
    tasks = [
        {
            "task": task,
            "metric": metric_name(part["metric"].iloc[0]),
            "uninformative": bool(part["uninformative"].iloc[0]),
            "unpruned": part["unpruned"].iloc[0],
            "table": md_table(users_table(table, task)),
        }
        for task, part in summary.groupby("task", sort=False)
    ]
    context = {
        "figure": figure,
        "tasks": tasks,
        "tolerance": tolerance,
        "removable": md_table(summary[["task", "method", "order", "unpruned", "removable_fraction"]], ".3f"),
        "aopc": md_table(aopc_table(summary)),
        "uninformative": uninformative,
        "chance_unused": unused_chance(chance, table["task"]),
        "min_margin": min_margin,
        "singles": md_table(singles, ".3f") if len(singles) else None,
        "min_points": MIN_CORRELATION_POINTS,
        "ratios": md_table(drop_ratios(table), ".3f"),
        "proxy": md_table(proxy, ".3f") if len(proxy) else None,
        "cost": md_table(costs, ".4g"),
    }
    head = {
        "curves": summary.to_dict("records"),
        "drop_ratios": drop_ratios(table).to_dict("records"),
        "proxy": proxy.to_dict("records"),
        "uninformative": uninformative,
        "single_heads": singles.to_dict("records"),
        "cost": costs.to_dict("records"),
    }
    return context, head
