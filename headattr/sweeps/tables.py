"""Stability of head rankings across the points of a sweep (:func:`headattr.sweeps.plan.sweep_plan`), as tidy tables.

- ``points``: one row per entity (point, method): axis values, seeds' ig keys, samples.
- ``pairs``: agreement of every pair of entities (global and per layer; Spearman, Pearson, top-K overlap), with
  bootstrap intervals over samples (paired when both saw the same samples): BCa, or where BCa would exclude the
  estimate the normal interval on Fisher's z (``ci_method``).
- ``sensitivity``: per axis and value, the global agreement with the reference point (other axes at the
  reference's values in grid mode).
- ``noise_floor``: per method, the global agreement of the reference with itself under other mask seeds (the
  ``noise-floor`` point, ``sweep.noise_floor``); ``sensitivity`` rows carry it as ``noise_floor`` and flag
  ``below_floor`` where the row's interval lies below the floor's.
- ``convergence``: along each numeric axis, Spearman with the largest value and the smallest value from which on
  it stays >= ``sweep.tolerance``.
- ``aopc``: held-out pruning AOPC per point, method, mode and order (mean over seeds), from the validation summaries.
- ``task_aopc``: with ``validation.tasks`` configured, per point, method, task and ranked order: the task-metric
  AOPC of the headline metric (:mod:`headattr.evaluation.summary`), the random masks' AOPC at that point and their
  difference, the removable fraction, and the held-out AOPC (one-shot, same order) beside it.
- ``task_proxy``: per task and order, Spearman across the (point, method) rows of held-out AOPC and task AOPC: does
  the cheap held-out loss rank the sweep's attributions as the task does?
- ``transfer``: with ``validation.data`` on some point, AOPC minus random (most important first) per method, mode,
  source of the scores and source pruning was judged on (a sweep over ``data.source`` x ``validation.data``
  fills the transfer matrix).
- ``compute``: measured attribution cost per entity from Snakemake's benchmark files (wall and CPU seconds summed
  over seeds and shards, peak resident memory) and from the shard manifests (row- and layer-passes per example,
  cost-model FLOPs, the engine loop's wall seconds, device, GPU-hours; see :mod:`headattr.report.compute`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluation.summary import curve_summary, task_table
from ..pipeline.aggregate import per_sample_importance
from ..pipeline.dumps import load_dump
from ..report.compute import COLUMNS, per_example, unit_compute
from ..stats.stability import converged_at, pair_stability
from .own_scores import own_scores_table


def entity_samples(entity: dict, dumps: dict) -> tuple[np.ndarray, list[str]]:
    """Per-sample importance [N, L, H] of an entity (its seeds' samples in seed order) and sample ids."""
    arrays = [load_dump(dumps[k]) for k in entity["ig"]]
    x = np.concatenate([per_sample_importance(a, entity["postprocess"]) for a in arrays])
    ids = [f"{i}:{s}" for i, a in enumerate(arrays) for s in a["sample_ids"].tolist()]
    return x, ids


class Comparer:
    """Memoised :func:`pair_stability` between entities of a plan."""

    def __init__(self, plan: dict, dumps: dict):
        self.settings = plan["settings"]
        self.labels = [e["label"] for e in plan["entities"]]
        self.samples = {e["label"]: entity_samples(e, dumps) for e in plan["entities"]}
        self.cache: dict = {}

    def __call__(self, a: str, b: str) -> pd.DataFrame:
        key = tuple(sorted((a, b)))
        if key not in self.cache:
            (xa, ia), (xb, ib) = self.samples[key[0]], self.samples[key[1]]
            s = self.settings
            self.cache[key] = pair_stability(xa, xb, ia == ib, s["topk"], s["layer_topk"], s["n_boot"], s["seed"])
        return self.cache[key]


def _reference_entity(plan: dict, entity: dict) -> dict:
    ref = [e for e in plan["entities"] if e["point"] == plan["reference"] and not e.get("noise_floor")]
    same = [e for e in ref if e["method"] == entity["method"]]
    return (same or ref)[0]


def _axis_slice(plan: dict, axis: str) -> list[dict]:
    """Entities that vary only along ``axis`` from the reference (grid), or every entity (zip)."""
    swept = [e for e in plan["entities"] if not e.get("noise_floor")]
    if plan["mode"] == "zip":
        return swept
    ref = _reference_entity(plan, plan["entities"][0])["values"]
    return [e for e in swept if all(v == ref[n] for n, v in e["values"].items() if n != axis)]


def noise_floor_table(plan: dict, compare: Comparer) -> pd.DataFrame:
    """Per method: the global agreement (value, interval) of the noise-floor entity (the reference with other
    mask seeds) with the reference; empty without one."""
    rows = []
    for entity in (e for e in plan["entities"] if e.get("noise_floor")):
        ref = _reference_entity(plan, entity)
        stab = _global(compare(entity["label"], ref["label"]))
        rows += [{"method": entity["method"], "reference": ref["label"]} | r for r in stab.to_dict("records")]
    columns = ["method", "reference", "metric", "value", "ci_low", "ci_high", "ci_method", "ci_low_mc", "ci_high_mc"]
    return pd.DataFrame(rows, columns=columns)  # with its columns when empty: an empty CSV would not read back


def with_noise_floor(sensitivity: pd.DataFrame, floor: pd.DataFrame) -> pd.DataFrame:
    """``sensitivity`` with noise_floor (the floor's value of the same metric and reference) and below_floor
    (the row's upper end under the floor's lower end: the axis value moves the ranking beyond mask noise)."""
    if floor.empty or sensitivity.empty:
        return sensitivity
    f = floor[["reference", "metric", "value", "ci_low"]].rename(columns={"value": "noise_floor", "ci_low": "_f_lo"})
    out = sensitivity.merge(f, on=["reference", "metric"], how="left")
    out["below_floor"] = out["ci_high"] < out["_f_lo"]
    return out.drop(columns="_f_lo")


def _global(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["scope"] == "global"].drop(columns=["scope", "layer"])


def sensitivity_table(plan: dict, compare: Comparer) -> pd.DataFrame:
    rows = []
    for axis in plan["axes"]:
        for entity in _axis_slice(plan, axis):
            ref = _reference_entity(plan, entity)
            stab = _global(compare(entity["label"], ref["label"]))
            meta = {"axis": axis, "axis_value": entity["values"][axis], "label": entity["label"]}
            meta["reference"] = ref["label"]
            rows += [meta | r for r in stab.to_dict("records")]
    return pd.DataFrame(rows)


def convergence_table(plan: dict, compare: Comparer, tolerance: float) -> pd.DataFrame:
    rows = []
    for axis, spec in plan["axes"].items():
        if not spec["numeric"]:
            continue
        order = dict(zip(spec["values"], spec["order"], strict=True))
        for method in dict.fromkeys(e["method"] for e in plan["entities"]):
            line = sorted(
                (e for e in _axis_slice(plan, axis) if e["method"] == method), key=lambda e: order[e["values"][axis]]
            )
            if len(line) < 2:
                continue
            largest = line[-1]
            rho = [
                float(_global(compare(e["label"], largest["label"])).set_index("metric").loc["spearman", "value"])
                for e in line
            ]
            values = [order[e["values"][axis]] for e in line]
            at = converged_at(values, rho, tolerance)
            rows += [
                {
                    "axis": axis,
                    "method": method,
                    "axis_value": v,
                    "label": e["label"],
                    "spearman_vs_largest": r,
                    "tolerance": tolerance,
                    "converged_at": at,
                }
                for v, e, r in zip(values, line, rho, strict=True)
            ]
    columns = ["axis", "method", "axis_value", "label", "spearman_vs_largest", "tolerance", "converged_at"]
    return pd.DataFrame(rows, columns=columns)  # no numeric axis: a header-only CSV, not an empty file


def aopc_table(plan: dict, summaries: dict) -> pd.DataFrame:
    """Mean over seeds of the held-out AOPC (and vs random) per point, method, mode and order."""
    frames = []
    for row in plan["validation"]:
        df = pd.read_csv(summaries[row["key"]])
        frames.append(df[df["method"] != "random"].assign(point=row["point"]))
    if not frames:
        return pd.DataFrame(columns=["point", "method", "mode", "order", "aopc", "aopc_vs_random", "n_seeds"])
    df = pd.concat(frames)
    return (
        df.groupby(["point", "method", "mode", "order"], sort=False)
        .agg(aopc=("aopc", "mean"), aopc_vs_random=("aopc_vs_random", "mean"), n_seeds=("aopc", "size"))
        .reset_index()
    )


TASK_AOPC_COLUMNS = [
    "point",
    "method",
    "task",
    "metric",
    "order",
    "unpruned",
    "removable_fraction",
    "task_aopc",
    "random_task_aopc",
    "task_aopc_vs_random",
    "heldout_aopc",
]


def task_aopc_table(plan: dict, results: dict, aopc: pd.DataFrame) -> pd.DataFrame:
    """Task-metric AOPC per point, method, task and ranked order from the points' task evaluations (``results``
    {evaluation key: results.csv}), with the point's random AOPC and its held-out AOPC (one-shot, same order)."""
    frames = []
    tasks = pd.DataFrame(plan.get("tasks", []), columns=["point", "key", "tolerance"])
    for point, entries in tasks.groupby("point", sort=False):
        table = task_table([pd.read_csv(results[k]) for k in entries["key"]])
        summary = curve_summary(table, float(entries["tolerance"].iloc[0]))
        random = summary[summary["order"] == "random"].set_index("task")["task_aopc"]
        ranked = summary[summary["order"] != "random"]
        ranked = ranked.assign(point=point, random_task_aopc=ranked["task"].map(random))
        frames.append(ranked.assign(task_aopc_vs_random=ranked["task_aopc"] - ranked["random_task_aopc"]))
    if not frames:
        return pd.DataFrame(columns=TASK_AOPC_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    heldout = aopc[aopc["mode"] == "one_shot"].assign(order=lambda d: d["order"].str.removesuffix("_first"))
    heldout = heldout.rename(columns={"aopc": "heldout_aopc"})[["point", "method", "order", "heldout_aopc"]]
    return df.merge(heldout, on=["point", "method", "order"], how="left")[TASK_AOPC_COLUMNS]


def task_proxy_table(task_aopc: pd.DataFrame) -> pd.DataFrame:
    """Per task and order: Spearman across (point, method) rows of held-out AOPC and task AOPC, and the row count."""
    from scipy.stats import spearmanr

    rows = []
    for (task, order), part in task_aopc.dropna(subset=["heldout_aopc", "task_aopc"]).groupby(["task", "order"]):
        rho = spearmanr(part["heldout_aopc"], part["task_aopc"]).statistic if len(part) >= 3 else np.nan
        rows.append({"task": task, "order": order, "n": len(part), "spearman": float(rho)})
    return pd.DataFrame(rows, columns=["task", "order", "n", "spearman"])


def transfer_table(plan: dict, aopc: pd.DataFrame) -> pd.DataFrame:
    """Cross-task transfer: held-out AOPC minus random (most important first) per method and mode, with the
    source the scores came from and the source pruning was judged on (mean over the points of each pair).
    Empty unless some point judges its scores on another source (``validation.data``)."""
    columns = ["method", "mode", "scores_from", "judged_on", "aopc_vs_random", "n_points"]
    sources = pd.DataFrame(
        [{"point": e["point"], "method": e["method"], **{k: e.get(k) for k in columns[2:4]}} for e in plan["entities"]]
    )
    if aopc.empty or not (sources["scores_from"] != sources["judged_on"]).any():
        return pd.DataFrame(columns=columns)
    df = aopc[aopc["order"] == "most_first"].merge(sources, on=["point", "method"])
    return (
        df.groupby(columns[:4], sort=False)
        .agg(aopc_vs_random=("aopc_vs_random", "mean"), n_points=("point", "nunique"))
        .reset_index()
    )


def compute_table(plan: dict, benchmarks: dict, manifests: dict | None = None) -> pd.DataFrame:
    """Per entity: attribution jobs, wall and CPU seconds (sums) and peak RSS; ``benchmarks`` {name: path}; with
    ``manifests`` {name: path} also the engine's counts per example, FLOPs, device and GPU-hours
    (see :mod:`headattr.report.compute`)."""
    rows = []
    for e in plan["entities"]:
        bench = pd.concat([pd.read_csv(benchmarks[b], sep="\t") for b in e["benchmarks"]])
        row = {
            "label": e["label"],
            "attribute_jobs": len(bench),
            "wall_s": float(bench["s"].sum()),
            "cpu_s": float(bench["cpu_time"].sum()),
            "max_rss_mb": float(bench["max_rss"].max()),
            "ig_keys": " ".join(e.get("ig", [])),
        }
        total = unit_compute([manifests[m] for m in e.get("manifests", [])]) if manifests else None
        if total is not None:
            counted = per_example(total)
            row |= {k: counted[k] for k in COLUMNS if k != "wall_s"} | {"engine_wall_s": counted["wall_s"]}
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_tables(
    plan: dict,
    dumps: dict,
    summaries: dict,
    benchmarks: dict | None = None,
    manifests: dict | None = None,
    task_results: dict | None = None,
) -> dict:
    """Every table of the sweep comparison; ``dumps`` {ig key: path}, ``summaries`` {validation key: path},
    ``benchmarks`` {entity benchmark name: path} of the attribution jobs (None: no compute table),
    ``manifests`` {entity manifest name: path} of their shards (engine counts in the compute table),
    ``task_results`` {task evaluation key: results.csv} of ``plan["tasks"]``."""
    compare = Comparer(plan, dumps)
    labels = compare.labels
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            pairs.append(compare(a, b).assign(a=a, b=b))
    points = pd.DataFrame(
        [
            {"label": e["label"], "point": e["point"], "method": e["method"], **e["values"]}
            | {"n_samples": len(compare.samples[e["label"]][1]), "ig_keys": " ".join(e["ig"])}
            for e in plan["entities"]
        ]
    )
    columns = ["a", "b", "scope", "layer", "metric", "value", "ci_low", "ci_high", "ci_method"]
    aopc = aopc_table(plan, summaries)
    task_aopc = task_aopc_table(plan, task_results or {}, aopc)
    return {
        "points": points,
        "pairs": pd.concat(pairs)[columns] if pairs else pd.DataFrame(columns=columns),
        "sensitivity": with_noise_floor(sensitivity_table(plan, compare), noise_floor_table(plan, compare)),
        "noise_floor": noise_floor_table(plan, compare),
        "convergence": convergence_table(plan, compare, plan["settings"]["tolerance"]),
        "aopc": aopc,
        "transfer": transfer_table(plan, aopc),
        "own_scores": own_scores_table(plan, summaries),
        "task_aopc": task_aopc,
        "task_proxy": task_proxy_table(task_aopc),
    } | ({"compute": compute_table(plan, benchmarks, manifests)} if benchmarks is not None else {})


def stability_matrix(pairs: pd.DataFrame, labels: list[str], metric: str = "spearman") -> np.ndarray:
    """[n, n] global ``metric`` between entities (diagonal 1) from the ``pairs`` table."""
    index = {label: i for i, label in enumerate(labels)}
    mat = np.eye(len(labels))
    rows = pairs[(pairs["scope"] == "global") & (pairs["metric"] == metric)]
    for a, b, v in rows[["a", "b", "value"]].itertuples(index=False):
        mat[index[a], index[b]] = mat[index[b], index[a]] = v
    return mat
