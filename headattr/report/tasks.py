"""The report's task-validation section: the users' table, curves with the random band, removable fractions,
proxy agreement and evaluation cost (context for report/report.md.j2; tables as markdown strings)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.summary import cost_summary, curve_summary, curves, drop_ratios, proxy_agreement, users_table


def task_curves_plot(table: pd.DataFrame, path) -> Path:
    """Headline metric vs fraction pruned, one panel per task: each method's most / least order, the random band
    (min-max over seeds) and its mean."""
    from .plots import _save, plt

    c = curves(table)
    tasks = list(dict.fromkeys(c["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = c[c["task"] == task]
        rnd = part[part["order"] == "random"].sort_values("fraction")
        if len(rnd):
            ax.fill_between(rnd["fraction"], rnd["lo"], rnd["hi"], color="grey", alpha=0.25, label="random")
            ax.plot(rnd["fraction"], rnd["value"], color="grey", lw=1)
        for (method, order), line in part[part["order"] != "random"].groupby(["method", "order"]):
            line = line.sort_values("fraction")
            ax.errorbar(
                line["fraction"],
                line["value"],
                yerr=line["stderr"].fillna(0),
                fmt="-" if order == "most" else "--",
                marker=".",
                capsize=2,
                label=f"{method} {order}",
            )
        ax.set_xlabel("fraction of heads pruned")
        ax.set_ylabel(part["metric"].iloc[0])
        ax.set_title(task, fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def heldout_aopc(validation_summaries) -> dict:
    """{method: held-out-loss AOPC (one-shot, most first), mean over seeds} from the pruning-validation summaries."""
    frames = [pd.read_csv(p) for p in validation_summaries]
    if not frames:
        return {}
    s = pd.concat(frames)
    s = s[(s["mode"] == "one_shot") & (s["order"] == "most_first") & (s["method"] != "random")]
    return s.groupby("method")["aopc"].mean().to_dict()


def task_context(table_csv, cost_csv, tolerance: float, validation_summaries, unit_summaries, figures_dir, md_table):
    """(template context, summary.json entry) of the task-validation section."""
    table = pd.read_csv(table_csv)
    cost = pd.read_csv(cost_csv)
    figure = "task_validation.png"
    task_curves_plot(table, Path(figures_dir) / figure)
    summary = curve_summary(table, tolerance)
    proxy = proxy_agreement(summary, heldout_aopc(validation_summaries))
    walls: dict = {}
    for u in unit_summaries:
        if u.get("wall_time_s") is not None:
            walls[u["method"]] = walls.get(u["method"], 0.0) + u["wall_time_s"]
    costs = cost_summary(cost, {f"{m} (all seeds, benchmark wall s)": w for m, w in walls.items()})
    tasks = [
        {
            "task": task,
            "metric": part["metric"].iloc[0],
            "unpruned": part["unpruned"].iloc[0],
            "table": md_table(users_table(table, task)),
        }
        for task, part in summary.groupby("task", sort=False)
    ]
    context = {
        "figure": figure,
        "tasks": tasks,
        "tolerance": tolerance,
        "removable": md_table(summary, ".3f"),
        "ratios": md_table(drop_ratios(table), ".3f"),
        "proxy": md_table(proxy, ".3f") if len(proxy) else None,
        "cost": md_table(costs, ".4g"),
    }
    head = {
        "curves": summary.to_dict("records"),
        "drop_ratios": drop_ratios(table).to_dict("records"),
        "proxy": proxy.to_dict("records"),
        "cost": costs.to_dict("records"),
    }
    return context, head
