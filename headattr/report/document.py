"""The run's report: report.md rendered from the template report/report.md.j2 (its whole shape is there), its
figures and the machine-readable summary.json. Python computes tables (as markdown strings) and draws figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..methods.adaptive import DEFAULT_GAP_FLOOR, relative_gap
from ..pipeline.aggregate import head_label, importance_label, score_matrix
from ..pipeline.attribute import STP_DEFAULTS
from ..pipeline.dumps import atomic_write, load_npz, read_meta
from ..pipeline.workflow import write_json
from ..stats.consensus import topk_null_band
from ..stats.kruskal import CHI2_MIN_GROUP, N_RESAMPLES
from .answer import NO_COMPLETENESS, answer_section
from .compute import compute_table, total_line
from .plots import (
    category_heatmaps,
    head_heatmap,
    layer_consistency,
    matrix_heatmap,
    seed_scatter,
    split_half_plot,
    topk_bars,
    variance_histogram,
)
from .pruning import validation_context
from .seed_factors import changed_part, seed_factor_table, seed_factor_verdicts

REPORT_DIR = Path(__file__).resolve().parents[2] / "report"
TEMPLATE = REPORT_DIR / "report.md.j2"
DEFAULT_GAP_THRESHOLD = 0.01


def _wall_time(benchmark_tsvs) -> float | None:
    """Total seconds of a unit's attribution jobs (one benchmark file per shard)."""
    try:
        return float(sum(pd.read_csv(p, sep="\t")["s"].iloc[0] for p in benchmark_tsvs))
    except (OSError, KeyError, IndexError, ValueError):
        return None


GAP_KEYS = ("gap_abs_max", "gap_abs_median", "gap_rel_max", "gap_rel_median", "n_over_threshold", "n_rows")


REFINE_NOTES = {
    "double": "doubled",
    "panels": "then split into Gauss-Legendre panels of as many nodes, bisected where their exact gaps are largest,",
}


def completeness_digest(comp: pd.DataFrame, floor: float, threshold: float, steps_used=None, ig_opts=None) -> dict:
    """Absolute and floored relative gaps of one dump's completeness table, and the paths that hit ig.max_steps.

    ``steps_used`` [N, P, Q] (ig.tol's ``extra_steps_used``, same row order as the table) and ``ig_opts`` (the
    dump's tol / max_steps) add ``steps_min``/``steps_max`` and ``capped``: paths at max_steps still above tol.
    """
    rel = relative_gap(comp["gap"], comp["delta_loss"], floor)
    out = {
        "gap_abs_max": float(comp["gap"].abs().max()),
        "gap_abs_median": float(comp["gap"].abs().median()),
        "gap_rel_max": float(rel.max()),
        "gap_rel_median": float(np.median(rel)),
        "n_over_threshold": int((rel > threshold).sum()),
        "n_rows": len(comp),
    }
    if steps_used is not None:
        steps = np.asarray(steps_used).ravel()
        tol, cap = ig_opts["tol"], ig_opts["max_steps"]
        capped = (steps >= cap) & (rel > tol)
        out |= {
            "steps_min": int(steps.min()),
            "steps_max": int(steps.max()),
            "tol": tol,
            "max_steps": cap,
            "capped": sorted(set(comp["path"].astype(str)[capped])),
        }
    return out


def steps_ran(summaries: list[dict]) -> str:
    """How each method's paths were integrated, read from its dumps (rule, steps, tol, refinement), never from the
    config."""
    groups: dict = {}
    for s in summaries:
        ran = s.get("ran") or {}
        if ran.get("steps") is not None:
            key = (ran.get("rule"), ran["steps"], ran.get("tol"), ran.get("refine") or "double", ran.get("max_steps"))
            groups.setdefault(key, []).append(s["method"])
    notes = []
    for (rule, steps, tol, refine, max_steps), methods in groups.items():
        names = ", ".join(dict.fromkeys(methods))
        if tol is not None:
            notes.append(
                f"{names}: each path starts at {steps} {rule} nodes, {REFINE_NOTES[refine]} until its relative gap "
                f"is <= {tol} or `ig.max_steps` = {max_steps} nodes (column steps)"
            )
        else:
            notes.append(f"{names}: {steps} {rule} steps per path, no refinement")
    return "; ".join(notes) or "no quadrature-path method ran"


def unit_summary(
    unit: dict,
    heads_csv,
    completeness_csv,
    top_k: int,
    dump_path=None,
    floor: float = DEFAULT_GAP_FLOOR,
    threshold: float = DEFAULT_GAP_THRESHOLD,
) -> dict:
    """Digest of one (seed, method): sample count, completeness gaps, top heads, wall time."""
    heads = pd.read_csv(heads_csv)
    top = heads.sort_values("rank").head(top_k)
    ran = {"rule": None, "steps": None, "tol": None, "refine": None, "max_steps": None}
    if unit["method"] in NO_COMPLETENESS:
        completeness = dict.fromkeys(GAP_KEYS)
    else:
        dump = load_npz(dump_path) if dump_path is not None else {}
        settings = read_meta(dump).get("settings", {})
        opts = settings.get("options", {})
        stp = str(settings.get("method", unit["method"])).startswith("stp")
        rule = {**STP_DEFAULTS, **opts}["stp_rule"] if stp else settings.get("rule")
        ran = {
            "rule": rule,
            "steps": settings.get("steps"),
            "tol": opts.get("tol"),
            "refine": opts.get("refine", "double"),
            "max_steps": opts.get("max_steps"),
        }
        completeness = completeness_digest(
            pd.read_csv(completeness_csv), floor, threshold, dump.get("extra_steps_used"), opts
        )
    return {
        "seed": unit["seed"],
        "method": unit["method"],
        "key": unit["key"],
        "n_samples": int(heads["n_samples"].iloc[0]),
        "completeness": completeness,
        "ran": ran,
        "top_heads": [
            {"label": r.label, "layer": int(r.layer), "head": int(r.head), "importance": float(r.importance)}
            for r in top.itertuples()
        ],
        "n_shards": len(unit.get("benchmarks", [])),
        "wall_time_s": _wall_time(unit.get("benchmarks", [])),
    }


def gap_advice(ig_cfg: dict) -> str:
    """What to change when completeness gaps are large, given the run's ig settings."""
    steps = [f"raise `ig.steps` (now {ig_cfg.get('steps')})"]
    if ig_cfg.get("rule") != "gauss_legendre":
        steps.append(f"use `ig.rule: gauss_legendre` (now {ig_cfg.get('rule')}; it converges fastest)")
    if ig_cfg.get("tol") is None:
        steps.append("set `ig.tol: 1e-3` to raise the steps per path until the gap is below it")
    else:
        steps.append(f"raise `ig.max_steps` (now {ig_cfg.get('max_steps')})")
    return "Advice: " + "; or ".join(steps) + "."


def tokenize_counts(tokens_path) -> dict:
    """Every ``n_*`` count and every ``skipped`` reason that the tokens artifact's meta records."""
    meta = read_meta(load_npz(tokens_path)).get("tokenize", {})
    counts = {k: v for k, v in meta.items() if k.startswith("n_")}
    skipped = meta.get("skipped") or {}
    return counts | {f"skipped: {reason}": n for reason, n in skipped.items()}


def data_section(token_sets: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """Rows per (seed, role): asked, every tokenize count; notes for each reduction (fewer kept than asked)."""
    rows, notes = [], []
    for ts in token_sets:
        counts = tokenize_counts(ts["path"])
        rows.append({"seed": ts["seed"], "samples": ts["role"], "asked": ts["asked"], **counts})
        kept = counts.get("n_kept")
        cuts = {k: v for k, v in counts.items() if k not in ("n_in", "n_kept") and v}
        if cuts or (kept is not None and kept < ts["asked"]):
            why = ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in cuts.items())
            notes.append(
                f"seed {ts['seed']}, {ts['role']} samples: {kept} of {ts['asked']} asked"
                f" ({counts.get('n_in', '?')} records drawn{'; ' + why if why else ''})"
            )
    table = pd.DataFrame(rows).fillna(0)
    for col in table.columns:
        if col.startswith(("n_", "skipped")) or col == "asked":
            table[col] = table[col].astype(int)
    return table, notes


P_METHODS = {
    "chi2": f"chi-square p (every category has >= {CHI2_MIN_GROUP} samples)",
    "exact": "exact permutation p (every relabelling of the categories)",
    "permutation": f"permutation p ({N_RESAMPLES} relabellings of categories; smallest {1 / (N_RESAMPLES + 1):.0e})",
}


def _md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x, digits=4) -> str:
    return "nan" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def unit_context(
    unit: dict, diag: dict, figures_dir: Path, thresholds, label: str = "importance (-IG)", marked=None
) -> dict:
    """Report 1's tables and figures for one (method, seed); ``marked``: (layer, head) of gap-flagged heads."""
    method, seed = unit["method"], unit["seed"]
    tag = f"{method}_seed{seed}"
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
    out = {"method": method, "seed": seed, "sample_count": _md_table(table), "n_heads": diag["head_variance"].size}
    if "split_half" in diag and len(diag["split_half"]):
        sh = diag["split_half"]
        out["split_half_plot"] = f"split_half_{tag}.png"
        split_half_plot(sh, f"{method}, seed {seed}", figures_dir / out["split_half_plot"])
        out["split_half"] = _md_table(sh[["n", "half", "metric", "half_median", "reliability", "lo", "hi"]], ".3f")
        out["n_splits"] = int(sh["n_splits"].iloc[0])
    counts = diag.get("category_counts", {})
    out["correlation"] = None
    if "sample_correlation" in diag:
        summ = diag["sample_correlation_summary"]
        name = f"sample_correlation_{tag}.png"
        matrix_heatmap(
            diag["sample_correlation"],
            f"per-sample Pearson, {method} seed {seed}",
            figures_dir / name,
            groups=diag.get("sample_categories"),
        )
        out["correlation"] = {"mean": _fmt(summ["mean"]), "min": _fmt(summ["min"]), "max": _fmt(summ["max"])}
        out["correlation"]["figure"] = name
    hv = diag["head_variance_summary"]
    hist = f"variance_{tag}.png"
    variance_histogram(diag["head_variance"], thresholds, f"{method}, seed {seed}", figures_dir / hist)
    out["variance"] = {
        "mean": f"{hv['mean']:.6f}",
        "median": f"{hv['median']:.6f}",
        "counts": ", ".join(f"{v}/{hv['n_heads']} heads above {k}" for k, v in hv["count_above"].items()),
        "figure": hist,
        "top": _md_table(diag["sample_specific_heads"].head(10)[["label", "variance", "mean"]], ".6f"),
    }
    cat = f"categories_{tag}.png"
    category_heatmaps(
        diag["category_means"],
        f"importance by category, {method} seed {seed}",
        figures_dir / cat,
        counts,
        label,
        marked,
    )
    note = diag.get("category_differences_note", {})
    left_out = note.get("left_out", {})
    out["categories"] = {"figure": cat, "table": None, "tested": ", ".join(note.get("tested", [])), "note": None}
    out["categories"]["contrasts"] = None
    out["categories"]["p_method"] = P_METHODS.get(note.get("p_method"), "p")
    if "category_differences" in diag:
        diff = diag["category_differences"].head(10)
        cols = ["label"] + [c for c in diff.columns if c.startswith("mean_")] + ["H", "p_value", "q_value"]
        if marked:
            flagged = {head_label(a, b) for a, b in marked}
            diff = diff.assign(**{"gap flagged": ["yes" if lab in flagged else "" for lab in diff["label"]]})
            cols.append("gap flagged")
        out["categories"]["table"] = _md_table(diff[cols], ".4g")
    if "category_contrasts" in diag and len(diag["category_contrasts"]):
        con = diag["category_contrasts"]
        cols = ["label", "category", "n_in", "diff", "auc", "p_value", "q_value", "method"]
        out["categories"]["contrasts"] = _md_table(con.head(10)[cols], ".4g")
        out["categories"]["n_contrasts"] = int((con["q_value"] < 0.05).sum())
        out["categories"]["n_contrast_tests"] = len(con)
    if left_out:
        listed = ", ".join(f"{c} ({n} sample{'s' * (n != 1)})" for c, n in left_out.items())
        out["categories"]["note"] = f"Left out of the Kruskal-Wallis test (fewer than 2 samples): {listed}."
    elif "skipped" in note:
        out["categories"]["note"] = f"No Kruskal-Wallis test: {note['skipped']}."
    out["mask_ratio"] = _md_table(diag["mask_ratio_agreement"], ".4f") if "mask_ratio_agreement" in diag else None
    return out


def _p_method(summaries: list[dict]) -> str | None:
    """The Kruskal-Wallis p kind that ran (from the units' diagnostics); "mixed" when units differ."""
    kinds = {s.get("category_test", {}).get("p_method") for s in summaries} - {None}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


def kw_replication_context(tests: dict, p_method: str) -> dict | None:
    """The cross-unit replication of the per-head category test for the report (None with fewer than 2 units)."""
    from ..analysis.replication import ALPHA, kw_replication

    if len(tests) < 2:
        return None
    names = {key: f"{key[0]} seed {key[1]}" for key in tests}
    rep = kw_replication({names[k]: t for k, t in tests.items()}, {names[k]: k[0] for k in tests})
    heads = rep["heads"]
    shown = heads[heads["n_units"] > 0].head(15).rename(columns=lambda c: c.replace("q_", "q ", 1))
    return {
        "alpha": ALPHA,
        "p_method": p_method,
        "counts": _md_table(rep["counts"]),
        "heads": _md_table(shown.drop(columns=["max_q"]), ".3g") if len(shown) else None,
        "summary": rep["summary"],
        "every_seed": ", ".join(f"{m}: {n}" for m, n in rep["summary"]["every_seed"].items()),
    }


def _topk_notes(ks: dict) -> list[str]:
    notes = []
    if ks.get("skipped_per_layer"):
        notes.append(
            f"Per-layer K = {', '.join(map(str, ks['skipped_per_layer']))} skipped: not below the {ks['n_heads']} "
            "heads of a layer (such a K shares every head)."
        )
    if ks.get("added_per_layer"):
        notes.append(f"Per-layer K = {ks['added_per_layer'][0]} used instead (half the heads of a layer).")
    if ks.get("skipped_global"):
        notes.append(
            f"Global K = {', '.join(map(str, ks['skipped_global']))} skipped: not below the {ks['n_all']} heads."
        )
    return notes


def seed_context(meta: dict, diag: dict, figures_dir: Path, label: str = "importance (-IG)") -> dict:
    """Report 2's tables and figures for one method and pair of seeds."""
    method, a, b = meta["method"], meta["seed_a"], meta["seed_b"]
    tag = f"{method}_seed{a}_vs_seed{b}"
    s = diag["summary"]
    rows = []
    for metric in ("pearson", "spearman"):
        m = s[metric]
        row = {"metric": metric.capitalize()} | {k: _fmt(m[k]) for k in ("mean", "median", "min", "max", "std")}
        if "mean_lo" in m:
            row["mean 95% CI (over layers)"] = f"[{_fmt(m['mean_lo'])}, {_fmt(m['mean_hi'])}] {m.get('mean_ci', '')}"
        rows.append(row | {"layers > 0.9": f"{m['n_above_0.9']}/{m['n_layers']}"})
    topk = diag["topk"]
    if "scope" not in topk:
        topk = topk.assign(scope="per_layer")
    tk = pd.DataFrame(
        {
            "scope": topk["scope"].str.replace("_", " "),
            "top-K": [f"Top-{k}" for k in topk["k"]],
            "overlap": topk["mean_overlap"].map(_pct),
            "random (exact)": topk["random_expected"].map(_pct),
            "p": topk["p_value"] if "p_value" in topk else np.nan,
        }
    )
    ks = diag.get("topk_ks", {})
    n_heads = ks.get("n_heads", int(diag["scores"]["head"].max()) + 1)
    topk = topk_null_band(topk, n_heads, len(diag["scores"]) // n_heads)
    tk.insert(
        4, "random 95% range", [f"{_pct(a)}-{_pct(b)}" for a, b in zip(topk["null_lo"], topk["null_hi"], strict=True)]
    )
    best_worst = pd.DataFrame(
        [{"rank": f"best {i + 1}", **r} for i, r in enumerate(s["best_layers"])]
        + [{"rank": f"worst {i + 1}", **r} for i, r in enumerate(s["worst_layers"])]
    )
    overlap_cols = sorted((c for c in best_worst if c.startswith("top")), key=lambda c: int(c[3:].split("_")[0]))
    best_worst = best_worst[["rank", "layer", "pearson", "spearman", *overlap_cols]]
    best_worst = best_worst.rename(columns={c: c.replace("_overlap", " overlap") for c in overlap_cols})
    out = {
        "method": method,
        "seed_a": a,
        "seed_b": b,
        "correlation": _md_table(pd.DataFrame(rows)),
        "global_pearson": _fmt(s["global"]["pearson"]),
        "global_spearman": _fmt(s["global"]["spearman"]),
        "bootstrap": _md_table(diag["bootstrap"].drop(columns="n_boot", errors="ignore"), ".4f")
        if "bootstrap" in diag
        else None,
        "n_boot": int(diag["bootstrap"]["n_boot"].iloc[0]) if "n_boot" in diag.get("bootstrap", {}) else None,
        "topk": _md_table(tk, ".3g"),
        "topk_notes": _topk_notes(ks),
        "n_heads": n_heads,
        "n_all": ks.get("n_all", len(diag["scores"])),
        "distribution": _md_table(diag["distribution"].copy(), ".6f"),
        "best_worst": _md_table(best_worst, ".4f"),
        "trend": _md_table(diag["trend"], ".4f"),
        "scatter": f"seed_scatter_{tag}.png",
        "layer_consistency": f"layer_consistency_{tag}.png",
        "topk_figure": f"topk_{tag}.png",
    }
    seed_scatter(diag["scores"], [f"seed {a}", f"seed {b}"], method, figures_dir / out["scatter"], label)
    layer_consistency(diag["per_layer"], method, figures_dir / out["layer_consistency"])
    topk_bars(topk, method, figures_dir / out["topk_figure"])
    return out


def method_context(seed: int, diag: dict) -> dict:
    return {
        "seed": seed,
        "specificity": _md_table(diag["specificity"], ".4f"),
        "comparison": _md_table(diag["comparison"], ".4f") if "comparison" in diag else None,
    }


def _completeness_rows(summaries: list[dict]) -> pd.DataFrame:
    def na(value):
        return "n/a" if value is None else value

    rows = []
    for s in summaries:
        c = s["completeness"]
        row = {"method": s["method"], "seed": s["seed"], "n_samples": s["n_samples"]}
        row |= {k: na(c[k]) for k in ("gap_abs_max", "gap_abs_median", "gap_rel_max", "gap_rel_median")}
        if "steps_max" in c:
            row["steps (min-max)"] = f"{c['steps_min']}-{c['steps_max']}"
        rows.append(row | {"wall_time_s": s["wall_time_s"] or float("nan")})
    return pd.DataFrame(rows)


def transfer_note(config: dict) -> str:
    """'scores from A, pruning judged on B' when validation.data names another source; else empty."""
    other = (config.get("validation") or {}).get("data")
    if not other or other["source"] == config["data"]["source"]:
        return ""
    return f"Scores from `{config['data']['source']}`, pruning judged on `{other['source']}` (`validation.data`)."


def dispersion_table(units: list[dict], heads_csvs, dispersion: dict) -> pd.DataFrame:
    """Per unit whose seed has a dispersion table: Spearman of its importance with each dispersion metric."""
    from ..analysis.dispersion import METRICS, importance_correlation

    rows = []
    for unit, heads_csv in zip(units, heads_csvs, strict=True):
        if unit["seed"] in dispersion:
            rho = importance_correlation(pd.read_csv(heads_csv), pd.read_csv(dispersion[unit["seed"]]))
            rows.append({"method": unit["method"], "seed": unit["seed"], **rho})
    return pd.DataFrame(rows, columns=["method", "seed", *METRICS])


def render(context: dict, template=TEMPLATE) -> str:
    """report.md from the Jinja2 template and its context (undefined names fail loudly)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(template).parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(Path(template).name).render(**context)


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
    token_sets: list[dict] = (),
    template=TEMPLATE,
    dispersion: dict | None = None,
) -> dict:
    """Write report.md, summary.json and figures for every unit, seed pair, method group and validation.

    ``token_sets``: {seed, role ("attribution" / "held-out"), asked, path (tokens.npz)} for the data section;
    ``dispersion``: {seed: heads.csv of the attention-dispersion pass} (empty: the pass is off).
    """
    from ..analysis.diagnostics import read_tables

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    report_cfg, ig_cfg = config.get("report", {}), config.get("ig", {})
    top_k = report_cfg.get("top_k", 10)
    threshold = report_cfg.get("gap_threshold", DEFAULT_GAP_THRESHOLD)
    floor = ig_cfg.get("gap_floor", DEFAULT_GAP_FLOOR)
    thresholds = config.get("diagnostics", {}).get("variance_thresholds", [0.001, 0.005])
    label = importance_label(report_cfg.get("postprocess", "signed"))
    summaries, unit_ctx, unit_diags, category_tests = [], [], [], {}
    unit_dirs = list(getattr(inputs, "unit_diag", [None] * len(units)))
    dumps = list(getattr(inputs, "dumps", [None] * len(units)))
    validation = {
        seed: pd.read_csv(csv)
        for seed, csv in zip(validation_seeds, getattr(inputs, "validation_summary", []), strict=True)
    }
    answer, answer_ctx, marks = answer_section(units, dumps, config, validation, _md_table)
    gap_col = f"gap > {threshold}"
    for unit, heads_csv, comp_csv, diag_dir, dump, marked in zip(
        units, inputs.heads, inputs.completeness, unit_dirs, dumps, marks, strict=True
    ):
        digest = unit_summary(unit, heads_csv, comp_csv, top_k, dump, floor, threshold)
        name = f"heatmap_{unit['method']}_seed{unit['seed']}.png"
        matrix = score_matrix(pd.read_csv(heads_csv), "importance")
        head_heatmap(matrix, f"{unit['method']} IG, seed {unit['seed']}", figures_dir / name, label, marked)
        top = pd.DataFrame(digest["top_heads"])[["label", "layer", "head", "importance"]]
        top[gap_col] = ["yes" if (a, b) in set(marked) else "" for a, b in zip(top["layer"], top["head"], strict=True)]
        for head in digest["top_heads"]:
            head["gap_marked"] = (head["layer"], head["head"]) in set(marked)
        top = _md_table(top[["label", "importance", gap_col]])
        unit_ctx.append({"method": unit["method"], "seed": unit["seed"], "heatmap": name, "top": top})
        if diag_dir is not None:
            diag = read_tables(diag_dir)
            digest["diagnostics"] = diag["headline"]
            digest["category_test"] = diag.get("category_differences_note", {})
            unit_diags.append(unit_context(unit, diag, figures_dir, thresholds, label, marked))
            if "category_tests" in diag:
                category_tests[(unit["method"], unit["seed"])] = diag["category_tests"]
        summaries.append(digest)
    seed_ctx, seed_heads, factor_rows = [], [], []
    for meta, diag_dir in zip(seed_pairs, getattr(inputs, "seed_diag", []), strict=True):
        diag = read_tables(diag_dir)
        changes = changed_part(config, meta["seed_a"], meta["seed_b"])
        seed_ctx.append(seed_context(meta, diag, figures_dir, label) | {"changes": changes})
        seed_heads.append({**{k: meta[k] for k in ("method", "seed_a", "seed_b")}, **diag["headline"]})
        seed_heads[-1]["changes"] = changes
        if "bootstrap" in diag:
            rho = diag["bootstrap"].set_index("metric").loc["global_spearman"]
            factor_rows.append(
                {**{k: meta[k] for k in ("method", "seed_a", "seed_b")}, "changes": changes}
                | {"spearman": rho["estimate"], "lo": rho["lo"], "hi": rho["hi"]}
            )
    factors = seed_factor_table(factor_rows)
    seed_factors = None
    if factors["changes"].nunique() > 1:
        seed_factors = {"table": _md_table(factors, ".3f"), "verdicts": seed_factor_verdicts(factors)}
    method_ctx, method_heads = [], []
    for meta, diag_dir in zip(method_groups, getattr(inputs, "method_diag", []), strict=True):
        diag = read_tables(diag_dir)
        method_ctx.append(method_context(meta["seed"], diag))
        method_heads.append(
            {
                "seed": meta["seed"],
                **diag["headline"],
                "comparison": diag["comparison"].to_dict("records") if "comparison" in diag else [],
            }
        )
    data_table, data_notes = data_section(list(token_sets))
    compute = compute_table(units)
    disp = dispersion_table(units, inputs.heads, dispersion or {})
    heldout = {ts["seed"]: ts for ts in token_sets if ts["role"] == "held-out"}
    val_ctx, val_heads = [], []
    for seed, curves_csv, summary_csv in zip(
        validation_seeds, getattr(inputs, "validation", []), getattr(inputs, "validation_summary", []), strict=True
    ):
        ctx, head = validation_context(seed, pd.read_csv(curves_csv), pd.read_csv(summary_csv), figures_dir, _md_table)
        ctx["heldout"] = "see Data"
        if seed in heldout:
            counts = tokenize_counts(heldout[seed]["path"])
            ctx["heldout"] = f"{counts.get('n_kept', '?')} of {heldout[seed]['asked']} asked (`validation.n_samples`)"
            head["heldout"] = {"asked": heldout[seed]["asked"], **counts}
        val_ctx.append(ctx)
        val_heads.append(head)
    task_ctx, task_head = None, None
    if getattr(inputs, "task_validation", []):  # validation.tasks (headattr.report.tasks)
        from .tasks import task_context

        tolerance = config["validation"]["tasks"]["tolerance"]
        task_ctx, task_head = task_context(
            inputs.task_validation[0],
            inputs.task_cost[0],
            tolerance,
            getattr(inputs, "validation_summary", []),
            summaries,
            figures_dir,
            _md_table,
            config["validation"]["tasks"].get("chance", {}),
            config["validation"]["tasks"].get("min_margin", 0.1),
        )
    sparse_ctx, sparse_head = None, None
    if getattr(inputs, "sparse_validation", []):  # sparse_validation (headattr.report.sparse)
        from .sparse import sparse_context

        n_boot = config["sparse_validation"]["bootstrap"]
        sparse_ctx, sparse_head = sparse_context(
            inputs.sparse_validation[0], inputs.sparse_items[0], n_boot, figures_dir, _md_table
        )
    flags, capped = [], []
    for s in summaries:
        c = s["completeness"]
        if c.get("n_over_threshold"):
            flags.append(
                {
                    "method": s["method"],
                    "seed": s["seed"],
                    "n_over": c["n_over_threshold"],
                    "n_rows": c["n_rows"],
                    "gap_rel_max": f"{c['gap_rel_max']:.3g}",
                    "gap_abs_max": f"{c['gap_abs_max']:.3g}",
                    "advice": gap_advice(ig_cfg),
                }
            )
        if c.get("capped"):
            capped.append(
                {
                    "method": s["method"],
                    "seed": s["seed"],
                    "n_capped": len(c["capped"]),
                    "paths": ", ".join(c["capped"]),
                    "max_steps": c["max_steps"],
                    "tol": c["tol"],
                }
            )
    steps_note = steps_ran(summaries)
    kw = kw_replication_context(category_tests, P_METHODS.get(_p_method(summaries), "p"))
    summary = {
        "run": config["run"],
        "answer": answer,
        "data": data_table.to_dict("records"),
        "data_notes": data_notes,
        "completeness_flags": [{k: f[k] for k in ("method", "seed", "n_over", "n_rows")} for f in flags],
        "completeness_capped": [{k: c[k] for k in ("method", "seed", "paths", "max_steps")} for c in capped],
        "units": summaries,
        "seed_consistency": seed_heads,
        "method_comparison": method_heads,
        "pruning_validation": val_heads,
        **({"task_validation": task_head} if task_head else {}),
        **({"sparse_validation": sparse_head} if sparse_head else {}),
        "compute": compute.astype(object).where(compute.notna(), None).to_dict("records"),
        "dispersion_spearman": disp.to_dict("records"),
        **({"category_replication": kw["summary"]} if kw else {}),
        "transfer": transfer_note(config) or None,
    }
    context = {
        "run": config["run"],
        "answer": answer_ctx,
        "postprocess": config.get("report", {}).get("postprocess", "signed"),
        "importance_label": label,
        "data_table": _md_table(data_table) if len(data_table) else "(no tokens artifacts given)",
        "data_notes": data_notes,
        "gap_floor": floor,
        "gap_threshold": threshold,
        "steps_note": steps_note,
        "completeness_table": _md_table(_completeness_rows(summaries)),
        "compute_table": _md_table(compute.fillna("-"), ".3g") if len(compute) else "",
        "compute_total": total_line(compute),
        "dispersion_table": _md_table(disp, ".3f") if len(disp) else "",
        "transfer_note": transfer_note(config),
        "completeness_flags": flags,
        "capped": capped,
        "top_k": top_k,
        "units": unit_ctx,
        "unit_diags": unit_diags,
        "n_boot": config.get("diagnostics", {}).get("n_boot", 2000),
        "method_diags": method_ctx,
        "seed_diags": seed_ctx,
        "validations": val_ctx,
        "task_validation": task_ctx,
        "sparse_validation": sparse_ctx,
        "kw_replication": kw,
        "seed_factors": seed_factors,
        "settings_yaml": yaml.safe_dump(config, sort_keys=False),
    }
    text = render(context, template)
    atomic_write(report_md, lambda tmp: Path(tmp).write_text(text))
    write_json(summary_path, summary)
    return summary
