"""Diagnostics of dumps, as named tables: what the users' two reports show, for any run.

- :func:`unit_diagnostics` (one method and seed): 1-vs-N sample agreement, split-half reliability, the
  per-sample correlation matrix, per-head variance across samples, per-category head use, per-mask-ratio
  agreement.
- :func:`seed_diagnostics` (one method, two seeds): per-layer and global consistency, top-K overlap against
  the exact random baseline, score distributions, best/worst layers, layer trend, bootstrap CIs.
- :func:`method_diagnostics` (one seed, several methods): agreement between methods and their sample
  specificity.

Every function returns ``{name: DataFrame | dict | ndarray}``; :func:`write_tables` stores them (CSV, JSON, NPY).
Scores are the ``report.postprocess`` importance f(-IG) per sample (per sample and mask probability for the
mask-ratio tables), given back in the dumps' score convention -f(-IG) (identical to the raw IG for ``signed``).
Only the layers of ``ig.layers`` enter: the other heads were never gated, so their zeros would pass for perfect
agreement; ``layer`` columns keep the model's layer numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..pipeline.aggregate import head_label
from ..pipeline.dumps import atomic_write, write_npy
from ..pipeline.workflow import write_json
from ..stats.contrasts import category_contrasts

DEFAULTS = {
    "sample_counts": [1, 5, 10, 25],
    "topk": [5, 10, 15, 20, 25, 30],
    "variance_thresholds": [0.001, 0.005],
    "depth_bins": 3,
    "n_boot": 2000,
    "n_perm": 200,
    "n_splits": 200,
    "top_heads": 20,
    "seed": 0,
}


def _cfg(cfg: dict | None) -> dict:
    return {**DEFAULTS, **(cfg or {})}


def _ks(ks, n: int) -> tuple[int, ...]:
    """Ks of a top-K over n heads: K < n (K = n shares every head), else one K = max(1, n // 2)."""
    return tuple(k for k in ks if k < n) or (max(1, n // 2),)


def _scores(arrays: dict, postprocess: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(per-sample scores [N, l, H], per-(sample, p) scores [N, P, l, H], attributed layers) of a dump: the
    attributed layers only, post-processed and in the score convention (see the module docstring)."""
    from ..pipeline.aggregate import attributed_layers, postprocessed_scores

    layers = attributed_layers(arrays)
    ig = arrays["ig"].astype(np.float64)[:, :, layers]
    return postprocessed_scores(ig.mean(axis=1), postprocess), postprocessed_scores(ig, postprocess), layers


def _model_layers(value, layers: list[int]):
    """Tables with their local ``layer`` indices (0 = first attributed layer) mapped to the model's layers."""
    if layers == list(range(len(layers))):
        return value
    if isinstance(value, pd.DataFrame) and {"bin", "start", "end"} <= set(value.columns):  # depth bins [start, end)
        start = [layers[int(i)] for i in value["start"]]
        last = [layers[int(i) - 1] for i in value["end"]]
        return value.assign(
            bin=[f"{a}-{b}" for a, b in zip(start, last, strict=True)], start=start, end=np.add(last, 1)
        )
    if isinstance(value, pd.DataFrame) and "layer" in value:
        out = value.copy()
        out["layer"] = [layers[int(i)] for i in out["layer"]]
        if "label" in out:
            out["label"] = [head_label(a, b) for a, b in zip(out["layer"], out["head"], strict=True)]
        return out
    if isinstance(value, dict):
        return {k: (layers[int(v)] if k == "layer" else _model_layers(v, layers)) for k, v in value.items()}
    if isinstance(value, list):
        return [_model_layers(v, layers) for v in value]
    return value


def _local_bins(bins, layers: list[int]):
    """``diagnostics.depth_bins`` given as model-layer ranges [[a, b), ...] in local indices of ``layers``."""
    if isinstance(bins, int):
        return min(bins, len(layers))
    return [[max(0, a - layers[0]), min(len(layers), b - layers[0])] for a, b in bins]


def _split_half_headline(table: pd.DataFrame) -> dict:
    """Spearman-Brown split-half Spearman of the all-sample ranking (the largest n) with its spread over splits."""
    rows = table[table["metric"] == "spearman"]
    if rows.empty:
        return {}
    last = rows.iloc[-1]
    return {f"split_half_spearman{k}": float(last[c]) for k, c in (("", "reliability"), ("_lo", "lo"), ("_hi", "hi"))}


def unit_diagnostics(arrays: dict, cfg: dict | None = None, postprocess: str = "signed") -> dict:
    """Diagnostics of one dump (arrays of :mod:`headattr.pipeline.dumps`)."""
    c = _cfg(cfg)
    per_sample, ig, layers = _scores(arrays, postprocess)  # [N, l, H], [N, P, l, H]
    n, n_p, n_layers, n_heads = ig.shape
    ks = _ks(c["topk"], n_layers * n_heads)
    ns = sorted({min(x, n) for x in c["sample_counts"]} | {n})
    out: dict = {
        "sample_count": stats.sample_count_agreement(per_sample, ns=ns, ks=ks),
        "split_half": stats.split_half_reliability(per_sample, ns=ns, n_splits=c["n_splits"], seed=c["seed"]),
    }
    if n >= 2:
        corr = stats.sample_correlation_matrix(per_sample)
        out["sample_correlation"] = corr
        out["sample_correlation_summary"] = stats.offdiag_summary(corr)
    variance = stats.head_variance(per_sample, thresholds=tuple(c["variance_thresholds"]), top=c["top_heads"])
    out["head_variance"] = variance["variance"]
    out["head_variance_summary"] = {
        "mean": variance["mean"],
        "median": variance["median"],
        "count_above": {str(k): int(v) for k, v in variance["count_above"].items()},
        "n_heads": n_layers * n_heads,
    }
    out["sample_specific_heads"] = variance["top"]
    cats = [str(x) for x in arrays["categories"]]
    means = stats.category_means(per_sample, cats)
    out["category_means"] = pd.concat(
        [_long(m, value="score").assign(category=cat) for cat, m in means.items()], ignore_index=True
    )
    counts = {cat: cats.count(cat) for cat in dict.fromkeys(cats)}
    out["category_counts"] = counts
    out["sample_categories"] = cats
    try:
        tests = stats.category_differences(per_sample, cats, top=None, seed=c["seed"])
        diff = tests.head(c["top_heads"])
        out["category_tests"] = tests[["layer", "head", "label", "H", "p_value", "q_value"]]
        out["category_differences"] = diff
        out["category_contrasts"] = category_contrasts(per_sample, cats)
        left_out = {cat: counts[cat] for cat in diff.attrs["dropped_categories"]}
        out["category_differences_note"] = {"tested": [cat for cat in counts if cat not in left_out]}
        out["category_differences_note"]["left_out"] = left_out
        out["category_differences_note"]["p_method"] = tests.attrs["p_method"]
    except ValueError as exc:
        out["category_differences_note"] = {"skipped": str(exc), "left_out": {}}
    if n_p >= 2:
        ratio = stats.mask_ratio_agreement(ig, [float(p) for p in arrays["mask_probs"]], ks=ks[:2])
        out["mask_ratio_agreement"] = ratio["pairs"]
        out["mask_ratio_scores"] = pd.concat(
            [_long(m, value="score").assign(mask_prob=p) for p, m in ratio["scores"].items()], ignore_index=True
        )
    out["headline"] = {
        "n_samples": n,
        "sample_specificity": stats.sample_specificity(per_sample) if n >= 2 else float("nan"),
        "one_vs_all_pearson": float(out["sample_count"]["pearson"].iloc[0]),
        "one_vs_all_cosine": float(out["sample_count"]["cosine"].iloc[0]),
        **_split_half_headline(out["split_half"]),
        "variance_mean": variance["mean"],
        "variance_count_above": out["head_variance_summary"]["count_above"],
    }
    return {k: _model_layers(v, layers) for k, v in out.items()}


def seed_diagnostics(
    arrays_a: dict, arrays_b: dict, labels=("a", "b"), cfg: dict | None = None, postprocess: str = "signed"
) -> dict:
    """Consistency of one method between two seeds (report 2's tables)."""
    c = _cfg(cfg)
    ps_a, _, layers = _scores(arrays_a, postprocess)
    ps_b, _, layers_b = _scores(arrays_b, postprocess)
    if layers != layers_b:
        raise ValueError(f"the two seeds attribute different layers ({layers} vs {layers_b}): compare like with like")
    n_layers, n_heads = ps_a.shape[1:]
    res = stats.cross_seed_consistency(
        ps_a.mean(0),
        ps_b.mean(0),
        ks=c["topk"],
        depth_bins=_local_bins(c["depth_bins"], layers),
        n_boot=c["n_boot"],
        n_perm=c["n_perm"],
        seed=c["seed"],
        labels=tuple(str(x) for x in labels),
    )
    out = {
        "per_layer": res["per_layer"],
        "summary": {
            **res["summary"],
            "global": res["global"],
            "best_layers": res["best_layers"],
            "worst_layers": res["worst_layers"],
        },
        "topk": res["topk"],
        "topk_ks": res["topk_ks"],
        "distribution": res["distribution"],
        "trend": res["trend"],
        "scores": pd.DataFrame(
            {
                "layer": np.repeat(np.arange(n_layers), n_heads),
                "head": np.tile(np.arange(n_heads), n_layers),
                "score_a": ps_a.mean(0).ravel(),
                "score_b": ps_b.mean(0).ravel(),
            }
        ),
    }
    if min(len(ps_a), len(ps_b)) >= 2:
        out["bootstrap"] = stats.cross_seed_bootstrap(ps_a, ps_b, n_boot=c["n_boot"], seed=c["seed"])
    ks = res["topk_ks"]["per_layer"]
    k10 = 10 if 10 in ks else ks[-1]
    per_layer_topk = res["topk"][res["topk"]["scope"] == "per_layer"].set_index("k")
    out["headline"] = {
        "labels": list(labels),
        "mean_layer_pearson": res["summary"]["pearson"]["mean"],
        "mean_layer_spearman": res["summary"]["spearman"]["mean"],
        "n_layers_pearson_above_0.9": res["summary"]["pearson"]["n_above_0.9"],
        "global_pearson": res["global"]["pearson"],
        "global_spearman": res["global"]["spearman"],
        f"top{k10}_overlap": float(per_layer_topk.loc[k10, "mean_overlap"]),
        f"top{k10}_random": float(per_layer_topk.loc[k10, "random_expected"]),
    }
    return {k: _model_layers(v, layers) for k, v in out.items()}


def method_diagnostics(
    arrays_by_method: dict[str, dict], cfg: dict | None = None, imported: dict | None = None, postprocess="signed"
) -> dict:
    """Agreement between methods on one seed (and imported [L, H] importance files) and each method's sample
    specificity; rankings use the ``report.postprocess`` importance."""
    c = _cfg(cfg)
    views = {m: _scores(a, postprocess) for m, a in arrays_by_method.items()}
    layers = next(iter(views.values()))[2]
    if any(v[2] != layers for v in views.values()):
        raise ValueError(f"methods attribute different layers: { {m: v[2] for m, v in views.items()} }")
    per_sample = {m: v[0] for m, v in views.items()}
    any_ps = next(iter(per_sample.values()))
    ks = _ks(c["topk"][:2], any_ps.shape[1] * any_ps.shape[2])
    out = {"specificity": stats.method_specificity(per_sample)}
    compared = per_sample | {
        name: -np.asarray(m, dtype=np.float64)[None, layers] for name, m in (imported or {}).items()
    }
    if len(compared) >= 2:
        out["comparison"] = stats.method_comparison(compared, ks=ks)
    out["headline"] = {
        "specificity": dict(zip(out["specificity"]["method"], out["specificity"]["sample_specificity"], strict=True))
    }
    return out


def _long(matrix: np.ndarray, value: str) -> pd.DataFrame:
    n_layers, n_heads = matrix.shape
    return pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            value: matrix.ravel(),
        }
    )


def write_tables(tables: dict, out_dir: str | Path) -> list[Path]:
    """Write each table: DataFrame -> CSV, dict/list -> JSON, ndarray -> NPY (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in tables.items():
        if isinstance(value, pd.DataFrame):
            path = out_dir / f"{name}.csv"
            atomic_write(path, lambda tmp, v=value: v.to_csv(tmp, index=False))
        elif isinstance(value, np.ndarray):
            path = out_dir / f"{name}.npy"
            write_npy(path, value)
        else:
            path = out_dir / f"{name}.json"
            write_json(path, value)
        written.append(path)
    return written


def read_tables(out_dir: str | Path) -> dict:
    """Inverse of :func:`write_tables`."""
    import json

    tables = {}
    for path in sorted(Path(out_dir).iterdir()):
        if path.suffix == ".csv":
            tables[path.stem] = pd.read_csv(path)
        elif path.suffix == ".npy":
            tables[path.stem] = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            tables[path.stem] = json.loads(path.read_text())
    return tables
