"""The run's report: a markdown file with tables and figures, and the machine-readable summary.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .aggregate import score_matrix
from .dumps import atomic_write
from .plots import (
    category_heatmaps,
    convergence_plot,
    deletion_plot,
    head_heatmap,
    layer_consistency,
    matrix_heatmap,
    seed_scatter,
    topk_bars,
    variance_histogram,
)
from .workflow import write_json


def _wall_time(benchmark_tsvs) -> float | None:
    """Total seconds of a unit's attribution jobs (one benchmark file per shard)."""
    try:
        return float(sum(pd.read_csv(p, sep="\t")["s"].iloc[0] for p in benchmark_tsvs))
    except (OSError, KeyError, IndexError, ValueError):
        return None


# methods whose scores obey no sum rule: their "gap" columns are not completeness gaps (reported as null)
NO_COMPLETENESS = ("first_order", "leave_one_out")


def unit_summary(unit: dict, heads_csv, completeness_csv, top_k: int) -> dict:
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
        }
        if unit["method"] not in NO_COMPLETENESS
        else dict.fromkeys(("gap_abs_max", "gap_abs_median", "gap_rel_max", "gap_rel_median")),
        "top_heads": [
            {"label": r.label, "layer": int(r.layer), "head": int(r.head), "importance": float(r.importance)}
            for r in top.itertuples()
        ],
        "n_shards": len(unit.get("benchmarks", [])),
        "wall_time_s": _wall_time(unit.get("benchmarks", [])),
    }


def _na(value):
    """Completeness of a method without a sum rule is shown as n/a."""
    return "n/a" if value is None else value


def _md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x, digits=4) -> str:
    return "nan" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def unit_section(unit: dict, diag: dict, figures_dir: Path, thresholds) -> tuple[str, list[str]]:
    """Report 1's per-sample sections for one (method, seed)."""
    tag = f"{unit['method']}_seed{unit['seed']}"
    lines = [f"#### 1-vs-N sample agreement ({unit['method']}, seed {unit['seed']})\n"]
    sc = diag["sample_count"]
    topcol = next(c for c in sc.columns if c.startswith("top") and c.endswith("_overlap"))
    table = pd.DataFrame(
        {
            "n vs N": [f"{int(r.n)} vs {int(r.N)}" for r in sc.itertuples()],
            "Pearson": sc["pearson"].map(_fmt),
            "cosine": sc["cosine"].map(_fmt),
            "Spearman": sc["spearman"].map(_fmt),
            topcol.replace("_overlap", " overlap"): sc[topcol].map(_pct),
            "mean (n / N)": [f"{a:.6f} / {b:.6f}" for a, b in zip(sc["subset_mean"], sc["full_mean"], strict=True)],
            "std (n / N)": [f"{a:.6f} / {b:.6f}" for a, b in zip(sc["subset_std"], sc["full_std"], strict=True)],
            "min (n / N)": [f"{a:.3f} / {b:.3f}" for a, b in zip(sc["subset_min"], sc["full_min"], strict=True)],
            "max (n / N)": [f"{a:.3f} / {b:.3f}" for a, b in zip(sc["subset_max"], sc["full_max"], strict=True)],
        }
    )
    lines += [_md_table(table), ""]
    figs = []
    conv = figures_dir / f"convergence_{tag}.png"
    convergence_plot(diag["convergence"], f"{unit['method']}, seed {unit['seed']}", conv)
    lines += [
        f"![convergence](figures/{conv.name})\n",
        "Agreement of the first n samples with all N, with bootstrap bands over sample orderings.\n",
    ]
    figs.append(conv.name)
    if "sample_correlation" in diag:
        summ = diag["sample_correlation_summary"]
        lines += [
            "#### Per-sample correlation\n",
            f"Pearson between samples' IG vectors, off the diagonal: mean {_fmt(summ['mean'])}, "
            f"min {_fmt(summ['min'])}, max {_fmt(summ['max'])}.\n",
        ]
        corr = figures_dir / f"sample_correlation_{tag}.png"
        matrix_heatmap(diag["sample_correlation"], f"per-sample Pearson, {unit['method']} seed {unit['seed']}", corr)
        lines += [
            f"![sample correlation](figures/{corr.name})\n",
            "How alike the samples' head attributions are; a uniform matrix means a model-wide pattern.\n",
        ]
        figs.append(corr.name)
    hv = diag["head_variance_summary"]
    counts = ", ".join(f"{v}/{hv['n_heads']} heads above {k}" for k, v in hv["count_above"].items())
    lines += ["#### Cross-sample variance per head\n", f"Mean {hv['mean']:.6f}, median {hv['median']:.6f}; {counts}.\n"]
    hist = figures_dir / f"variance_{tag}.png"
    variance_histogram(diag["head_variance"], thresholds, f"{unit['method']}, seed {unit['seed']}", hist)
    top = diag["sample_specific_heads"].head(10)
    lines += [
        f"![variance](figures/{hist.name})\n",
        "Distribution of per-head variance across samples.\n",
        "Most sample-specific heads:\n",
        _md_table(top[["label", "variance", "mean"]], ".6f"),
        "",
    ]
    figs.append(hist.name)
    cat = figures_dir / f"categories_{tag}.png"
    category_heatmaps(diag["category_means"], f"importance by category, {unit['method']} seed {unit['seed']}", cat)
    lines += [
        "#### Head use per data category\n",
        f"![categories](figures/{cat.name})\n",
        "Mean importance (-IG) of each head within each data category.\n",
    ]
    figs.append(cat.name)
    if "category_differences" in diag:
        diff = diag["category_differences"].head(10)
        cols = ["label"] + [c for c in diff.columns if c.startswith("mean_")] + ["H", "p_value", "q_value"]
        lines += [
            "Heads whose attribution differs most between categories (Kruskal-Wallis across samples, BH q-values):\n",
            _md_table(diff[cols], ".4g"),
            "",
        ]
    if "mask_ratio_agreement" in diag:
        mr = diag["mask_ratio_agreement"]
        lines += ["#### Agreement between mask probabilities\n", _md_table(mr, ".4f"), ""]
    return "\n".join(lines), figs


def seed_section(meta: dict, diag: dict, figures_dir: Path) -> tuple[str, list[str]]:
    """Report 2's sections for one method and pair of seeds."""
    method, a, b = meta["method"], meta["seed_a"], meta["seed_b"]
    tag = f"{method}_seed{a}_vs_seed{b}"
    s = diag["summary"]
    rows = []
    for metric in ("pearson", "spearman"):
        m = s[metric]
        rows.append(
            {
                "metric": metric.capitalize(),
                "mean": _fmt(m["mean"]),
                "median": _fmt(m["median"]),
                "min": _fmt(m["min"]),
                "max": _fmt(m["max"]),
                "std": _fmt(m["std"]),
                "layers > 0.9": f"{m['n_above_0.9']}/{m['n_layers']}",
            }
        )
    topk = diag["topk"]
    tk = pd.DataFrame(
        {
            "top-K": [f"Top-{k}" for k in topk["k"]],
            "mean overlap": topk["mean_overlap"].map(_pct),
            "random (exact)": topk["random_expected"].map(_pct),
            "p (permutation)": topk["p_value"],
        }
    )
    dist = diag["distribution"].copy()
    lines = [
        f"### {method}: seed {a} vs seed {b}\n",
        "#### Per-layer correlation\n",
        _md_table(pd.DataFrame(rows)),
        "",
        f"Global (all heads): Pearson {_fmt(s['global']['pearson'])}, Spearman {_fmt(s['global']['spearman'])}.\n",
    ]
    if "bootstrap" in diag:
        lines += [
            "Bootstrap 95% intervals (resampling samples of each seed):\n",
            _md_table(diag["bootstrap"], ".4f"),
            "",
        ]
    lines += [
        "#### Top-K overlap (mean over layers)\n",
        _md_table(tk, ".3g"),
        "",
        "#### Score distributions\n",
        _md_table(dist, ".6f"),
        "",
        "Best layers: "
        + ", ".join(f"{int(lay)} ({_fmt(r)})" for lay, r in s["best_layers"])
        + "; worst: "
        + ", ".join(f"{int(lay)} ({_fmt(r)})" for lay, r in s["worst_layers"])
        + ".\n",
        "#### Layer trend\n",
        _md_table(diag["trend"], ".4f"),
        "",
    ]
    figs = []
    for name, draw, caption in (
        (
            f"seed_scatter_{tag}.png",
            lambda p: seed_scatter(diag["scores"], [f"seed {a}", f"seed {b}"], method, p),
            "Each head's score under the two seeds; points on the diagonal agree.",
        ),
        (
            f"layer_consistency_{tag}.png",
            lambda p: layer_consistency(diag["per_layer"], method, p),
            "Per-layer correlation between seeds against depth.",
        ),
        (f"topk_{tag}.png", lambda p: topk_bars(topk, method, p), "Top-K overlap between seeds vs random rankings."),
    ):
        draw(figures_dir / name)
        lines += [f"![{name}](figures/{name})\n", caption + "\n"]
        figs.append(name)
    return "\n".join(lines), figs


def method_section(seed: int, diag: dict) -> str:
    lines = [
        f"### Seed {seed}\n",
        "Sample specificity = mean per-sample Pearson (lower = more sample-specific):\n",
        _md_table(diag["specificity"], ".4f"),
        "",
    ]
    if "comparison" in diag:
        lines += ["Agreement between methods (mean scores over samples):\n", _md_table(diag["comparison"], ".4f"), ""]
    return "\n".join(lines)


def validation_section(seed: int, curves: pd.DataFrame, summary: pd.DataFrame, figures_dir: Path) -> tuple[str, dict]:
    """Pruning validation of one seed: curves figure and methods ranked by faithfulness (AOPC vs random)."""
    name = f"deletion_seed{seed}.png"
    deletion_plot(curves, f"pruning on held-out samples, seed {seed}", figures_dir / name)
    ranked = summary[summary["method"] != "random"]
    most = ranked[ranked["order"] == "most_first"].sort_values("aopc_vs_random", ascending=False)
    least = ranked[ranked["order"] == "least_first"].set_index(["mode", "method"])["removable_fraction"]
    labels = [
        m + (" (iterative)" if mode == "iterative" else "")
        for mode, m in zip(most["mode"], most["method"], strict=True)
    ]
    table = pd.DataFrame(
        {
            "method": labels,
            "AOPC (loss, most first)": most["aopc"].to_numpy(),
            "random AOPC": most["random_aopc"].to_numpy(),
            "AOPC - random": most["aopc_vs_random"].to_numpy(),
            "removable fraction (least first)": [
                least.get((mode, m), float("nan")) for mode, m in zip(most["mode"], most["method"], strict=True)
            ],
        }
    )
    text = "\n".join(
        [
            f"### Seed {seed}\n",
            f"![deletion](figures/{name})\n",
            "Held-out loss and accuracy as heads are switched off in each method's order (solid: most important "
            "first; dashed: least important first) against random orders (grey band).\n",
            "Methods ranked by faithfulness (higher AOPC - random: removing the heads a method ranks first hurts "
            "more than removing random heads):\n",
            _md_table(table, ".4f"),
            "",
        ]
    )
    return text, {"seed": seed, "ranking": table.to_dict("records")}


def build_report(
    units: list[dict],
    inputs,
    config: dict,
    report_md,
    summary_path,
    figures_dir,
    seed_pairs: list[dict] = (),
    method_groups: list[dict] = (),
    validation_seeds: list[int] = (),
) -> dict:
    """Write report.md, summary.json and figures for every unit, seed pair, method group and validation."""
    from .diagnostics import read_tables

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    top_k = config.get("report", {}).get("top_k", 10)
    thresholds = config.get("diagnostics", {}).get("variance_thresholds", [0.001, 0.005])
    summaries, sections, diag_sections = [], [], []
    unit_dirs = list(getattr(inputs, "unit_diag", [None] * len(units)))
    for unit, heads_csv, comp_csv, diag_dir in zip(units, inputs.heads, inputs.completeness, unit_dirs, strict=True):
        digest = unit_summary(unit, heads_csv, comp_csv, top_k)
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
        if diag_dir is not None:
            diag = read_tables(diag_dir)
            digest["diagnostics"] = diag["headline"]
            text, _ = unit_section(unit, diag, figures_dir, thresholds)
            diag_sections.append(text)
        summaries.append(digest)
    seed_texts, seed_heads = [], []
    for meta, diag_dir in zip(seed_pairs, getattr(inputs, "seed_diag", []), strict=True):
        diag = read_tables(diag_dir)
        text, _ = seed_section(meta, diag, figures_dir)
        seed_texts.append(text)
        seed_heads.append({**{k: meta[k] for k in ("method", "seed_a", "seed_b")}, **diag["headline"]})
    method_texts, method_heads = [], []
    for meta, diag_dir in zip(method_groups, getattr(inputs, "method_diag", []), strict=True):
        diag = read_tables(diag_dir)
        method_texts.append(method_section(meta["seed"], diag))
        method_heads.append(
            {
                "seed": meta["seed"],
                **diag["headline"],
                "comparison": diag["comparison"].to_dict("records") if "comparison" in diag else [],
            }
        )
    val_texts, val_heads = [], []
    for seed, curves_csv, summary_csv in zip(
        validation_seeds, getattr(inputs, "validation", []), getattr(inputs, "validation_summary", []), strict=True
    ):
        text, head = validation_section(seed, pd.read_csv(curves_csv), pd.read_csv(summary_csv), figures_dir)
        val_texts.append(text)
        val_heads.append(head)
    comp_rows = pd.DataFrame(
        [
            {
                "method": s["method"],
                "seed": s["seed"],
                "n_samples": s["n_samples"],
                "gap_abs_max": _na(s["completeness"]["gap_abs_max"]),
                "gap_abs_median": _na(s["completeness"]["gap_abs_median"]),
                "gap_rel_max": _na(s["completeness"]["gap_rel_max"]),
                "wall_time_s": s["wall_time_s"] or float("nan"),
            }
            for s in summaries
        ]
    )
    summary = {
        "run": config["run"],
        "units": summaries,
        "seed_consistency": seed_heads,
        "method_comparison": method_heads,
        "pruning_validation": val_heads,
    }
    postprocess = config.get("report", {}).get("postprocess", "signed")
    parts = [
        f"# headattr report: run `{config['run']}`\n",
        "Scores are the raw IG of the loss over head gates; importance = -IG (a head whose gate lowers the loss "
        "is important).\n",
        f"Rankings, heatmaps and pruning orders show postprocess `{postprocess}` (applied per sample to -IG before "
        "averaging: signed -IG, abs |IG|, relu max(-IG, 0)).\n",
        "## Completeness\n",
        "Sum of each path's IG minus (L(all on) - L(path start)), over samples and mask probabilities "
        "(n/a for first-order and leave-one-out scores, which obey no sum rule).\n",
        _md_table(comp_rows),
        "\n## Attribution per method and seed\n",
        *sections,
    ]
    if diag_sections:
        parts += ["## Per-sample structure (report 1)\n", *diag_sections]
    if method_texts:
        parts += ["## Method comparison\n", *method_texts]
    if seed_texts:
        parts += ["## Cross-seed consistency (report 2)\n", *seed_texts]
    if val_texts:
        parts += ["## Pruning validation\n", *val_texts]
    if val_texts:
        parts += ["## Pruning validation\n", *val_texts]
    parts += ["## Settings\n", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```\n"]
    atomic_write(report_md, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    write_json(summary_path, summary)
    return summary
