"""The sweep report: markdown over the sweep tables, a stability-matrix heatmap and a sensitivity plot per axis."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..pipeline.dumps import atomic_write
from ..report import plots
from .configs import configs_markdown, write_point_configs
from .own_scores import own_scores_markdown
from .tables import stability_matrix


def _md(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A markdown table (floats as ``floatfmt``; nan and missing as empty cells)."""
    if df.empty:
        return "_none_\n"
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    for row in df.itertuples(index=False):
        cells = ["" if pd.isna(v) else format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sensitivity_ylim(df: pd.DataFrame) -> tuple[float, float]:
    """One y range for every axis's sensitivity panel (Spearman intervals and the noise floor), so panels compare."""
    rows = df[df["metric"] == "spearman"]
    values = pd.concat([rows["ci_low"], rows["value"], rows.get("noise_floor", pd.Series(dtype=float))]).dropna()
    low = float(values.min()) if len(values) else 0.0
    return min(low, 0.0) - 0.05, 1.05


def sensitivity_plot(df: pd.DataFrame, axis: str, path, ylim=None) -> Path:
    """Global Spearman (with its interval) of each value of ``axis`` with the reference point, the noise floor as
    a dashed line, on the y range ``ylim`` shared by all axes' panels."""
    rows = df[(df["axis"] == axis) & (df["metric"] == "spearman")]
    fig, ax = plots.plt.subplots(figsize=(max(4, 0.8 * len(rows) + 2), 3.5))
    x = range(len(rows))
    ax.errorbar(
        x,
        rows["value"],
        yerr=[rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]],
        fmt="o",
        capsize=3,
    )
    if "noise_floor" in rows and rows["noise_floor"].notna().any():
        ax.axhline(float(rows["noise_floor"].dropna().iloc[0]), color="grey", ls="--", lw=1, label="noise floor")
        ax.legend(fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xticks(list(x), rows["label"], rotation=30, ha="right")
    ax.set_ylabel("Spearman with the reference")
    ax.set_title(f"sensitivity to {axis}")
    return plots._save(fig, path)


def pair_intervals(pairs: pd.DataFrame) -> pd.DataFrame:
    """Global Spearman of every pair with its interval, method and the Monte-Carlo error of the ends."""
    rows = pairs[(pairs["scope"] == "global") & (pairs["metric"] == "spearman")]
    cols = [c for c in ("a", "b", "value", "ci_low", "ci_high", "ci_method", "ci_low_mc", "ci_high_mc") if c in rows]
    return rows[cols].reset_index(drop=True)


def noise_floor_markdown(tables: dict) -> list[str]:
    """The noise floor (reference vs the reference with other mask seeds) and the rows that fall below it."""
    floor = tables.get("noise_floor", pd.DataFrame())
    if floor.empty:
        return []
    sens = tables["sensitivity"]
    below = sens[(sens["metric"] == "spearman") & sens["below_floor"].astype(bool)]
    listed = ", ".join(f"`{label}`" for label in below["label"]) or "none"
    cols = ["method", "metric", "value", "ci_low", "ci_high", "ci_method"]
    return [
        "Noise floor: the reference against itself with every mask seed + 1 (same data, point `noise-floor`); an "
        "agreement is only a change of the ranking when its interval lies below the floor's. Spearman intervals "
        f"below the floor: {listed}.\n",
        _md(floor[floor["metric"].isin(["spearman", "pearson"])][cols]),
    ]


def transfer_markdown(transfer: pd.DataFrame) -> list[str]:
    """The transfer matrices (one per method and mode) of the ``transfer`` table; none when it is empty."""
    if transfer.empty:
        return []
    text = ["## Cross-task transfer (held-out AOPC - random, most important first)\n"]
    for (method, mode), rows in transfer.groupby(["method", "mode"], sort=False):
        matrix = rows.pivot_table(index="scores_from", columns="judged_on", values="aopc_vs_random", sort=False)
        text += [
            f"{method}, {mode}: rows = scores from, columns = pruning judged on\n",
            _md(matrix.reset_index().rename(columns={"scores_from": "scores from"})),
        ]
    return text


def task_aopc_markdown(task_aopc: pd.DataFrame, proxy: pd.DataFrame) -> list[str]:
    """Task-metric AOPC beside held-out AOPC per point, and their rank agreement; none without task validation."""
    if task_aopc.empty:
        return []
    cols = ["point", "method", "task", "metric", "order", "heldout_aopc", "task_aopc", "random_task_aopc"]
    return [
        "## Task-metric AOPC per point (lm-eval, headline metric)\n",
        "task_aopc: mean over pruned fractions of unpruned - metric (higher = that order hurts the task sooner); "
        "random_task_aopc: the random masks' mean curve at the same point; heldout_aopc: the held-out loss AOPC "
        "(one-shot, same order) of the pruning validation.\n",
        _md(task_aopc[cols + ["task_aopc_vs_random", "removable_fraction"]]),
        "Held-out AOPC vs task AOPC, Spearman across the (point, method) rows (needs >= 3 rows):\n",
        _md(proxy),
    ]


def write_sweep_report(
    plan: dict, tables: dict, report_md, figures_dir, configs: dict | None = None, configs_dir=None
) -> None:
    """The sweep's markdown report and figures; with ``configs`` (:func:`headattr.sweeps.configs.resolved_configs`)
    also each point's resolved config under ``configs_dir`` and the report section that lists them with the keys
    in which they differ from the base config."""
    if configs is not None:
        write_point_configs(configs, configs_dir)
    labels = [e["label"] for e in plan["entities"]]
    figures = Path(figures_dir)
    mat = stability_matrix(tables["pairs"], labels)
    plots.matrix_heatmap(
        mat, "Spearman between sweep points", figures / "stability_matrix.png", "Spearman", names=labels
    )
    ylim = sensitivity_ylim(tables["sensitivity"])
    for axis in plan["axes"]:
        sensitivity_plot(tables["sensitivity"], axis, figures / f"sensitivity_{axis}.png", ylim)
    axes = pd.DataFrame(
        [{"axis": n, "key": a["key"], "values": ", ".join(a["values"])} for n, a in plan["axes"].items()]
    )
    sens = tables["sensitivity"]
    sens = sens[sens["metric"].isin(["spearman", "pearson"]) | sens["metric"].str.startswith("top")]
    wide = sens.pivot_table(index=["axis", "axis_value", "label"], columns="metric", values="value", sort=False)
    s = plan["settings"]
    text = [
        f"# Sweep `{plan['key']}`\n",
        f"{len(labels)} points ({plan['mode']}), reference `{plan['reference']}`. Agreement of the mean rankings "
        f"(importance after each point's `report.postprocess`); intervals: BCa bootstrap over samples, "
        f"{s['n_boot']} resamples (scipy.stats.bootstrap), or where BCa would exclude the estimate the normal "
        "interval on Fisher's z (`ci_method`), in `pairs.csv` and `sensitivity.csv`.\n",
        "## Axes\n",
        _md(axes),
        "## Stability matrix (global Spearman)\n",
        _md(pd.DataFrame(mat, columns=labels).assign(point=labels)[["point", *labels]]),
        "![stability matrix](figures/stability_matrix.png)\n",
        "## Sensitivity (agreement with the reference)\n",
        _md(wide.reset_index()),
        *noise_floor_markdown(tables),
        "## Pairs (global Spearman, 95 % interval; all metrics in `pairs.csv`)\n",
        _md(pair_intervals(tables["pairs"])),
        *(f"![sensitivity to {a}](figures/sensitivity_{a}.png)\n" for a in plan["axes"]),
        f"## Convergence (Spearman with the largest value; tolerance {s['tolerance']})\n",
        _md(tables["convergence"]),
        "## Held-out pruning AOPC per point\n",
        _md(tables["aopc"]),
    ]
    if configs is not None:
        text += [part if isinstance(part, str) else _md(part) for part in configs_markdown(configs)]
    text += task_aopc_markdown(tables.get("task_aopc", pd.DataFrame()), tables.get("task_proxy", pd.DataFrame()))
    text += transfer_markdown(tables.get("transfer", pd.DataFrame()))
    text += own_scores_markdown(tables.get("own_scores", pd.DataFrame()))
    if "compute" in tables:
        c = tables["compute"]
        once = c.drop_duplicates("ig_keys") if "ig_keys" in c else c  # points sharing an attribution count once
        total = f"Total attribution: {once['wall_s'].sum():.1f} s wall, {once['cpu_s'].sum():.1f} s CPU"
        if "flops" in once:
            gpu = once["gpu_hours"].dropna() if "gpu_hours" in once else []
            total += f", {once['flops'].sum():.3g} FLOPs (cost model)"
            total += f", {gpu.sum():.4g} GPU-hours" if len(gpu) else ""
        total += f" over {len(once)} distinct attributions"
        text += [
            "## Compute per point (attribution jobs: Snakemake benchmarks and engine counts)\n",
            "Passes per computed example (`/ex`), cost-model FLOPs, the engine loop's wall time (`engine_wall_s`), "
            "device and GPU-hours come from the shard manifests (see the run reports' Compute section).\n",
            _md(c.drop(columns=["ig_keys"], errors="ignore"), ".4g"),
            total + " (a point shared with an earlier sweep shows its original cost).\n",
        ]
    atomic_write(report_md, lambda tmp: Path(tmp).write_text("\n".join(text)))
