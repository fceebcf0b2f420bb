"""The run's report: a markdown file with tables and figures, and the machine-readable summary.json."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .aggregate import score_matrix
from .dumps import atomic_write
from .plots import head_heatmap
from .workflow import write_json


def _wall_time(benchmark_tsv) -> float | None:
    try:
        return float(pd.read_csv(benchmark_tsv, sep="\t")["s"].iloc[0])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def unit_summary(unit: dict, heads_csv, completeness_csv, benchmark_tsv, top_k: int) -> dict:
    """Digest of one (seed, method): sample count, completeness gaps, top heads, wall time."""
    heads = pd.read_csv(heads_csv)
    comp = pd.read_csv(completeness_csv)
    top = heads.sort_values("rank").head(top_k)
    return {
        "seed": unit["seed"],
        "method": unit["method"],
        "key": unit["key"],
        "n_samples": int(heads["n_samples"].iloc[0]),
        "completeness": {
            "gap_abs_max": float(comp["gap"].abs().max()),
            "gap_abs_median": float(comp["gap"].abs().median()),
            "gap_rel_max": float(comp["rel_gap"].max()),
            "gap_rel_median": float(comp["rel_gap"].median()),
        },
        "top_heads": [
            {"label": r.label, "layer": int(r.layer), "head": int(r.head), "importance": float(r.importance)}
            for r in top.itertuples()
        ],
        "wall_time_s": _wall_time(benchmark_tsv),
    }


def _md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(units: list[dict], inputs, config: dict, report_md, summary_path, figures_dir) -> dict:
    """Write report.md, summary.json and figures for every unit of the run."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    top_k = config.get("report", {}).get("top_k", 10)
    summaries, sections = [], []
    for unit, heads_csv, comp_csv, bench in zip(
        units, inputs.heads, inputs.completeness, inputs.benchmarks, strict=True
    ):
        digest = unit_summary(unit, heads_csv, comp_csv, bench, top_k)
        summaries.append(digest)
        name = f"heatmap_{unit['method']}_seed{unit['seed']}"
        matrix = score_matrix(pd.read_csv(heads_csv), "importance")
        head_heatmap(matrix, f"{unit['method']} IG, seed {unit['seed']}", figures_dir / f"{name}.png")
        top = pd.DataFrame(digest["top_heads"])[["label", "importance"]]
        sections.append(
            f"### {unit['method']}, seed {unit['seed']}\n\n"
            f"![{name}](figures/{name}.png)\n\n"
            f"Importance (-IG) of every head; red heads lower the loss when switched on.\n\n"
            f"Top {top_k} heads:\n\n{_md_table(top)}\n"
        )
    comp_rows = pd.DataFrame(
        [
            {
                "method": s["method"],
                "seed": s["seed"],
                "n_samples": s["n_samples"],
                "gap_abs_max": s["completeness"]["gap_abs_max"],
                "gap_abs_median": s["completeness"]["gap_abs_median"],
                "gap_rel_max": s["completeness"]["gap_rel_max"],
                "wall_time_s": s["wall_time_s"] or float("nan"),
            }
            for s in summaries
        ]
    )
    summary = {"run": config["run"], "units": summaries}
    text = "\n".join(
        [
            f"# headattr report: run `{config['run']}`\n",
            "Scores are the raw IG of the loss over head gates; importance = -IG (a head whose gate lowers the loss "
            "is important).\n",
            "## Completeness\n",
            "Sum of each path's IG minus (L(all on) - L(path start)), over samples and mask probabilities.\n",
            _md_table(comp_rows),
            "\n## Attribution per method and seed\n",
            *sections,
            "## Settings\n",
            "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```\n",
        ]
    )
    atomic_write(report_md, lambda tmp: Path(tmp).write_text(text))
    write_json(summary_path, summary)
    return summary
