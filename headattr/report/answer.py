"""The report's first section, "Which heads matter": pure functions from the units' per-sample importance (read
from the dumps), the seed pairs and the held-out pruning rows to an ``answer`` dict whose ``text`` lines the
report prints and summary.json keeps. The rules (docs/diagnostics.md, "Which heads matter"):

- consensus head: in every unit (method x seed) its 95% bootstrap rank interval (samples resampled within
  category) lies inside the top K (``report.top_k``): it is a top-K head in every method and seed, and no
  resampling of the samples moves it out;
- its categories: those whose mean importance has a 95% bootstrap interval above 0 in every unit, with the
  per-head Kruskal-Wallis test across categories (BH q over all heads, stats.category_differences) per unit;
- reproducibility: per method and pair of seeds the largest K whose top-K overlap stays above the random
  ranking's 95% quantile at every K' <= K (stats.consensus.reproducible_k);
- pruning verdict: per seed the held-out AOPC - random of every method (most important first), with its interval
  where the validation summary has one (columns ``aopc_vs_random_lo`` / ``aopc_vs_random_hi``);
- caveats: every (sample, p, path) whose relative completeness gap exceeds ``report.gap_threshold``, and the
  heads (a per-layer path's layer, a joint path's every head) and categories it touches.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..methods.adaptive import relative_gap
from ..pipeline.aggregate import attributed_layers, head_label, per_sample_importance
from ..pipeline.dumps import load_npz, read_meta
from ..stats.categories import category_differences
from ..stats.consensus import bootstrap_heads, category_intervals, reproducible_k
from ..stats.similarity import spearman

# methods whose scores obey no sum rule: their "gap" columns are not completeness gaps (reported as null)
NO_COMPLETENESS = ("first_order", "leave_one_out")
LEVEL = 0.95
Q_SIGNIFICANT = 0.05
IMPORTANCE_RULES = {
    None: "the mean over samples (`report.rank_within: null`)",
    "category": "each category's mean divided by its mean |importance| over heads, averaged over categories with "
    "equal weight (`report.rank_within: category`)",
}
_LAYER_PATH = re.compile(r"^L(\d+)")


def unit_inputs(unit: dict, dump_path, postprocess: str = "signed", floor: float = 0.01) -> dict:
    """What the answer needs of one unit's dump: per-sample importance x [N, M] over the attributed heads, their
    labels, the sample categories and every path's relative completeness gap."""
    arrays = load_npz(dump_path)
    layers = attributed_layers(arrays)
    imp = per_sample_importance(arrays, postprocess)[:, layers]
    n, n_layers, n_heads = imp.shape
    out = {
        "method": unit["method"],
        "seed": unit["seed"],
        "x": imp.reshape(n, -1),
        "layers": np.repeat(layers, n_heads),
        "heads": np.tile(np.arange(n_heads), n_layers),
        "categories": [str(c) for c in arrays["categories"]],
        "mask_samples": read_meta(arrays).get("settings", {}).get("mask_samples", 1),
    }
    if "gap" in arrays and unit["method"] not in NO_COMPLETENESS:
        gap = np.asarray(arrays["gap"], dtype=float)
        delta = arrays["loss_full"][:, :, None] - arrays["loss_base"]
        names = [str(p) for p in arrays["path_names"]] if "path_names" in arrays else ["all"] * gap.shape[2]
        out["rel_gap"] = relative_gap(gap, delta, floor)  # [N, P, Q]
        out["path_names"] = names
    return out


def gap_marks(unit: dict, threshold: float) -> pd.DataFrame:
    """Heads of one unit whose importance rests on a path above ``threshold``: a per-layer path ``L<l>`` touches
    the heads of layer l, any other path every head. Columns head (index), n_paths, categories (sorted)."""
    rel = unit.get("rel_gap")
    if rel is None:
        return pd.DataFrame(columns=["head", "n_paths", "categories"])
    layers = np.asarray(unit["layers"])
    hits: dict[int, list] = {}
    for i, _, q in zip(*np.nonzero(rel > threshold), strict=True):
        match = _LAYER_PATH.match(unit["path_names"][q])
        touched = np.flatnonzero(layers == int(match.group(1))) if match else np.arange(layers.size)
        for h in touched:
            hits.setdefault(int(h), []).append(unit["categories"][i])
    rows = [{"head": h, "n_paths": len(c), "categories": sorted(set(c))} for h, c in sorted(hits.items())]
    return pd.DataFrame(rows, columns=["head", "n_paths", "categories"])


def unit_answer(unit: dict, k: int, n_boot: int, seed: int, rank_within=None, threshold: float = 0.01) -> dict:
    """Per head of one unit: bootstrap importance / rank / selection, per-category intervals, KW q, gap marks."""
    x, cats = unit["x"], unit["categories"]
    heads = bootstrap_heads(x, cats, k, n_boot, seed, rank_within, LEVEL)
    per_cat = category_intervals(x, cats, n_boot, seed, LEVEL)
    heads["q_value"] = np.nan
    try:
        diff = category_differences(x[:, None, :], cats, top=None, seed=seed)
        heads.loc[diff["head"].to_numpy(), "q_value"] = diff["q_value"].to_numpy()
    except ValueError:  # fewer than 2 categories with 2 samples: no test
        pass
    marks = gap_marks(unit, threshold)
    return {"heads": heads, "categories": per_cat, "marks": marks}


def _label(unit: dict, h: int) -> str:
    return head_label(int(unit["layers"][h]), int(unit["heads"][h]))


def consensus(units: list[dict], results: list[dict], k: int) -> list[dict]:
    """Consensus heads (module docstring), best mean rank first, each with its per-unit numbers and sources."""
    inside = np.all([r["heads"]["rank_hi"].to_numpy() <= k for r in results], axis=0)
    chosen = np.flatnonzero(inside)
    mean_rank = np.mean([r["heads"]["rank"].to_numpy() for r in results], axis=0)
    out = []
    for h in chosen[np.argsort(mean_rank[chosen], kind="stable")]:
        per_unit = []
        for u, r in zip(units, results, strict=True):
            row = r["heads"].iloc[h]
            marks = r["marks"]
            mark = marks[marks["head"] == h]
            per_unit.append(
                {
                    "method": u["method"],
                    "seed": u["seed"],
                    **{c: float(row[c]) for c in ("importance", "lo", "hi", "selection", "q_value")},
                    **{c: int(row[c]) for c in ("rank", "rank_lo", "rank_hi")},
                    "gap_paths": int(mark["n_paths"].sum()),
                    "gap_categories": sorted({c for cs in mark["categories"] for c in cs}),
                }
            )
        cats = list(dict.fromkeys(c for r in results for c in r["categories"]["category"]))
        means, sources = {}, []
        for cat in cats:
            parts = [
                r["categories"][(r["categories"]["category"] == cat) & (r["categories"]["head"] == h)] for r in results
            ]
            means[cat] = float(np.mean([p["mean"].iloc[0] for p in parts if len(p)]))
            if all(len(p) and p["lo"].iloc[0] > 0 for p in parts):
                sources.append(cat)
        q = [p["q_value"] for p in per_unit if np.isfinite(p["q_value"])]
        out.append(
            {
                "label": _label(units[0], h),
                "head_index": int(h),
                "units": per_unit,
                "category_means": means,
                "sources": sorted(sources, key=lambda c: -means[c]),
                "kw_significant": sum(v < Q_SIGNIFICANT for v in q),
                "kw_tested": len(q),
                "gap_marked": any(p["gap_paths"] for p in per_unit),
            }
        )
    return out


def reproducibility(units: list[dict], results: list[dict]) -> list[dict]:
    """Per method and pair of its seeds: reproducible_k of the point importances and their Spearman."""
    rows = []
    by_method: dict = {}
    for u, r in zip(units, results, strict=True):
        by_method.setdefault(u["method"], []).append((u["seed"], r["heads"]["importance"].to_numpy()))
    for method, seeds in by_method.items():
        for i, (sa, a) in enumerate(seeds):
            for sb, b in seeds[i + 1 :]:
                rk = reproducible_k(a, b, LEVEL)
                rows.append(
                    {
                        "method": method,
                        "seed_a": sa,
                        "seed_b": sb,
                        "k_max": rk["k_max"],
                        "n_heads": rk["n_heads"],
                        "first_miss": rk["first_miss"],
                        "spearman": spearman(a, b),
                    }
                )
    return rows


def _interval_columns(summary: pd.DataFrame) -> tuple[str, str] | None:
    lo, hi = "aopc_vs_random_lo", "aopc_vs_random_hi"
    return (lo, hi) if {lo, hi} <= set(summary.columns) else None


def pruning(validation: dict) -> list[dict]:
    """Per seed and method (most important first): held-out AOPC - random, with its interval where one exists."""
    rows = []
    for seed, summary in validation.items():
        most = summary[(summary["method"] != "random") & (summary["order"] == "most_first")]
        cols = _interval_columns(summary)
        for r in most.sort_values("aopc_vs_random", ascending=False).to_dict("records"):
            row = {"seed": seed, "method": r["method"], "mode": r.get("mode", "static")}
            row |= {"aopc": float(r["aopc"]), "aopc_vs_random": float(r["aopc_vs_random"])}
            row |= {"lo": float(r[cols[0]]), "hi": float(r[cols[1]])} if cols else {"lo": None, "hi": None}
            rows.append(row)
    return rows


def caveats(units: list[dict], results: list[dict], threshold: float) -> list[dict]:
    """Per unit with paths above the gap threshold: how many (sample, p, path) rows, which heads, categories."""
    rows = []
    for u, r in zip(units, results, strict=True):
        rel = u.get("rel_gap")
        n_over = int((rel > threshold).sum()) if rel is not None else 0
        if n_over:
            marks = r["marks"]
            cats = sorted({c for cs in marks["categories"] for c in cs})
            rows.append(
                {
                    "method": u["method"],
                    "seed": u["seed"],
                    "n_over": n_over,
                    "n_rows": int(rel.size),
                    "heads": [_label(u, h) for h in marks["head"]],
                    "categories": cats,
                }
            )
    return rows


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _head_sentence(c: dict, k: int) -> str:
    units = c["units"]
    imp = "; ".join(
        f"{u['method']} seed {u['seed']}: {_fmt(u['importance'])} [{_fmt(u['lo'])}, {_fmt(u['hi'])}], "
        f"rank {u['rank']} [{u['rank_lo']}, {u['rank_hi']}], in the top {k} of {100 * u['selection']:.0f}% of draws"
        for u in units
    )
    means = ", ".join(f"{cat} {_fmt(v)}" for cat, v in sorted(c["category_means"].items(), key=lambda t: -t[1]))
    if c["sources"]:
        where = f"its importance comes from {', '.join(c['sources'])} (interval above 0 in every unit)"
    else:
        where = "no category has an interval above 0 in every unit"
    kw = (
        f"the Kruskal-Wallis test across categories gives q < {Q_SIGNIFICANT} in {c['kw_significant']} of "
        f"{c['kw_tested']} units"
        if c["kw_tested"]
        else "no Kruskal-Wallis test (too few samples per category)"
    )
    gap = " It rests on paths above the gap threshold (see Caveats)." if c["gap_marked"] else ""
    seeds = ", ".join(f"{m} {100 * v:.0f}%" for m, v in c["seed_frequency"].items())
    return (
        f"**{c['label']}**: {imp}. In the top {k} of the seeds: {seeds}. Per-category mean: {means}; {where}; "
        f"{kw}.{gap}"
    )


def answer_text(ans: dict) -> dict:
    """The section's sentences, by part (what the template prints and summary.json keeps)."""
    k, n_units = ans["k"], len(ans["units"])
    heads = ans["consensus"]
    if heads:
        lead = (
            f"{len(heads)} head(s) are in the top {k} of all {n_units} units (methods x seeds) with their 95% "
            f"bootstrap rank interval inside the top {k}: {', '.join(c['label'] for c in heads)}."
        )
    else:
        lead = (
            f"No head is in the top {k} of all {n_units} units (methods x seeds) with its 95% bootstrap rank interval "
            f"inside the top {k}: these numbers name no head that matters."
        )
    repro = []
    for r in ans["reproducibility"]:
        miss = r["first_miss"]
        at = (
            f" (at K = {miss['k']} the seeds share {miss['shared']} of {miss['k']} heads; the null's 95% quantile is "
            f"{miss['null_quantile']})"
            if miss
            else ""
        )
        if r["k_max"]:
            repro.append(
                f"{r['method']}: its top-K overlap between seeds {r['seed_a']} and {r['seed_b']} stays above the "
                f"random ranking's 95% quantile up to K = {r['k_max']} of {r['n_heads']} heads (Spearman over all "
                f"heads {r['spearman']:.2f}); beyond its top {r['k_max']} the seeds' top-K sets are not shown to agree "
                f"beyond chance{at}."
                if miss
                else f"{r['method']}: its top-K overlap between seeds {r['seed_a']} and {r['seed_b']} stays above "
                f"the random ranking's 95% quantile at every K (Spearman over all heads {r['spearman']:.2f})."
            )
        else:
            repro.append(
                f"{r['method']}: seeds {r['seed_a']} and {r['seed_b']} do not agree on their top heads beyond "
                f"chance{at}; Spearman over all heads {r['spearman']:.2f}: its ranking is not reproducible."
            )
    prune = []
    for p in ans["pruning"]:
        what = f"seed {p['seed']}, {p['method']}" + (" (iterative)" if p["mode"] == "iterative" else "")
        if p["lo"] is None:
            prune.append(
                f"{what}: held-out AOPC - random = {p['aopc_vs_random']:.3f} (point estimate; no interval yet, so "
                "no verdict on whether it beats random pruning)."
            )
        else:
            verdict = (
                "beats random pruning"
                if p["lo"] > 0
                else ("hurts less than random" if p["hi"] < 0 else "does not differ from random")
            )
            prune.append(
                f"{what}: held-out AOPC - random = {p['aopc_vs_random']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]: {verdict}."
            )
    cav = [
        f"{c['method']}, seed {c['seed']}: {c['n_over']} of {c['n_rows']} (sample, p, path) gaps above "
        f"{ans['gap_threshold']}, touching {len(c['heads'])} head(s) ({_heads_list(c['heads'])}) on "
        f"{', '.join(c['categories'])} samples."
        for c in ans["caveats"]
    ]
    return {
        "lead": lead,
        "heads": [_head_sentence(c, k) for c in heads],
        "reproducibility": repro,
        "pruning": prune,
        "caveats": cav or [f"Every path is within report.gap_threshold = {ans['gap_threshold']} relative."],
    }


def _heads_list(labels: list[str], most: int = 8) -> str:
    return ", ".join(labels[:most]) + (f" and {len(labels) - most} more" if len(labels) > most else "")


def build_answer(
    units: list[dict],
    k: int = 10,
    n_boot: int = 2000,
    seed: int = 0,
    rank_within=None,
    threshold: float = 0.01,
    validation: dict | None = None,
) -> tuple[dict, list[dict]]:
    """(the answer dict, per-unit results) from :func:`unit_inputs` entries and {seed: validation summary}."""
    results = [unit_answer(u, k, n_boot, seed, rank_within, threshold) for u in units]
    ans = {
        "k": k,
        "level": LEVEL,
        "n_boot": n_boot,
        "rank_within": rank_within,
        "gap_threshold": threshold,
        "units": [
            {
                "method": u["method"],
                "seed": u["seed"],
                "n_samples": len(u["categories"]),
                "mask_samples": u.get("mask_samples", 1),
            }
            for u in units
        ],
        "consensus": consensus(units, results, k),
        "reproducibility": reproducibility(units, results),
        "pruning": pruning(validation or {}),
        "caveats": caveats(units, results, threshold),
    }
    for c in ans["consensus"]:
        c["seed_frequency"] = _seed_frequency(units, results, c["head_index"], k)
    ans["text"] = answer_text(ans)
    return ans, results


def _seed_frequency(units: list[dict], results: list[dict], h: int, k: int) -> dict:
    """Per method: the fraction of its seeds whose point ranking has head h in the top k."""
    freq: dict = {}
    for u, r in zip(units, results, strict=True):
        freq.setdefault(u["method"], []).append(int(r["heads"]["rank"].iloc[h]) <= k)
    return {m: float(np.mean(v)) for m, v in freq.items()}


def _json_safe(value):
    """numpy scalars and tuples as plain JSON values (summary.json)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.DataFrame):
        return _json_safe(value.to_dict("records"))
    return value


def consensus_table(ans: dict) -> pd.DataFrame:
    """One row per (consensus head, unit): importance and rank with their intervals, selection, KW q, gap paths."""
    rows = []
    for c in ans["consensus"]:
        for u in c["units"]:
            rows.append(
                {
                    "head": c["label"],
                    "method": u["method"],
                    "seed": u["seed"],
                    "importance [95% CI]": f"{_fmt(u['importance'])} [{_fmt(u['lo'])}, {_fmt(u['hi'])}]",
                    "rank [95% CI]": f"{u['rank']} [{u['rank_lo']}, {u['rank_hi']}]",
                    f"in top {ans['k']} (draws)": f"{100 * u['selection']:.0f}%",
                    "KW q": "n/a" if not np.isfinite(u["q_value"]) else f"{u['q_value']:.3g}",
                    "paths > gap threshold": u["gap_paths"],
                }
            )
    return pd.DataFrame(rows)


def answer_section(units: list[dict], dumps, config: dict, validation: dict, md_table) -> tuple[dict, dict, list]:
    """(summary.json's answer, the template's context, per unit the (layer, head) of its gap-flagged heads)
    from the report's units, their dumps and config (report.*, diagnostics.n_boot / seed, ig.gap_floor)."""
    from .groups import absent_categories, category_groups, group_view

    report_cfg, diag_cfg = config.get("report", {}), config.get("diagnostics", {})
    if any(d is None for d in dumps) or not units:
        text = "No per-sample dumps reached the report: no answer."
        return {"skipped": text}, {"skipped": text}, [[] for _ in units]
    threshold = report_cfg.get("gap_threshold", 0.01)
    rank_within = report_cfg.get("rank_within")
    k = report_cfg.get("top_k", 10)
    postprocess = report_cfg.get("postprocess", "signed")
    inputs = [
        unit_inputs(u, d, postprocess, config.get("ig", {}).get("gap_floor", 0.01))
        for u, d in zip(units, dumps, strict=True)
    ]
    ans, results = build_answer(
        inputs, k, diag_cfg.get("n_boot", 200), diag_cfg.get("seed", 0), rank_within, threshold, validation
    )
    groups = category_groups(inputs[0]["categories"], report_cfg.get("category_groups"))
    view = group_view(inputs, groups, k, rank_within)
    ans["groups"] = {key: v for key, v in view.items() if key != "table"}
    ans["groups"]["absent"] = absent_categories(inputs[0]["categories"], report_cfg.get("category_groups"))
    marks = [
        [(int(u["layers"][h]), int(u["heads"][h])) for h in r["marks"]["head"]]
        for u, r in zip(inputs, results, strict=True)
    ]
    table = consensus_table(ans)
    context = {
        "skipped": None,
        **ans["text"],
        "k": k,
        "n_units": len(units),
        "n_boot": ans["n_boot"],
        "rank_within": rank_within,
        "importance_rule": IMPORTANCE_RULES[rank_within],
        "mask_samples": sorted({u["mask_samples"] for u in ans["units"]}),
        "table": md_table(table) if len(table) else "",
        "groups": {**ans["groups"], "table": md_table(view["table"]) if "table" in view else ""},
    }
    return _json_safe(ans), context, marks
