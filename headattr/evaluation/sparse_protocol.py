"""``sparse_validation`` as versioned artifacts: one task evaluation per point (source, select, task entry, seed)
with adaptive block-sparse attention (:mod:`headattr.evaluation.sparse`), then ``sparse_validation.csv``.

- Sources (:data:`headattr.pipeline.sparse_config.CONTROLS` and the adaptive ones): a method's importance (mean
  over the run's seeds after ``report.postprocess``, as the task validation's), an imported ``head_importance.pt``,
  ``uniform`` (every w = 1), ``random`` (importance drawn uniformly in [0, 1) per head with the point's seed),
  ``negated`` (minus ``controls_of``'s importance), ``shuffled`` (``controls_of``'s importance permuted over the
  heads with the point's seed: same values, no head identity) and ``dense`` (no sparsity; one point per task).
- Keys hash the source (and what its importance is read from), the seed, the select, the sparse settings, the task
  entry and the checksums of its files, the evaluation settings and the model: a new select, task or seed adds
  points and changes no existing key. Specs are self-contained, so the plans of sweep points merge.
- Every point writes its tidy rows, its per-item scores (lm-eval ``log_samples``: the paired bootstrap of the
  report needs them) and what ran: realised block density (mean over the sparse calls), attention FLOPs fraction,
  the mean keep ratio and wall time.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from ..pipeline.keys import model_slice, stage_key
from ..pipeline.sparse_config import KEY, controls_of, sparse_sources
from ..pipeline.workflow import sha256_file
from .protocol import importance_sources
from .tasks import resolve_tasks

SPARSE_SETTINGS = ("skip", "block_size", "min_keep_ratio", "weight_scale", "normalisation", "importance_increases_keep")
EVAL_SETTINGS = ("limit", "mc_num", "seed", "batch_size", "gen_length", "block_length", "steps")
NORMALISATION = {"percentile": (0.05, 0.95), "minmax": (0.0, 1.0)}
SEEDED = ("random", "shuffled")
TRANSFORMED = ("negated", "shuffled")
COLUMNS = [
    "source",
    "select",
    "task",
    "metric",
    "value",
    "stderr",
    "n",
    "seed",
    "density",
    "flops_fraction",
    "mean_keep_ratio",
    "wall_s",
]
ITEM_COLUMNS = ["source", "select", "seed", "task", "metric", "doc_id", "value"]


def enabled(config: dict) -> bool:
    return bool(config.get(KEY, {}).get("tasks"))


def _task_label(entry: str) -> str:
    name = Path(entry).stem if entry.endswith((".yaml", ".yml")) else Path(entry).name or entry
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def point_sources(config: dict) -> list[tuple[str, int | None, dict | None]]:
    """(source, seed, what its importance is read from) of every sparse source of the run (dense excluded)."""
    sources = importance_sources(config)
    n_seeds = config[KEY]["seeds"]
    out = []
    for name in sparse_sources(config):
        if name == "dense":
            continue
        base = sources[controls_of(config)] if name in TRANSFORMED else sources.get(name)
        seeds = range(n_seeds) if name in SEEDED else [None]
        out.extend((name, seed, base) for seed in seeds)
    return out


def sparse_plan(config: dict, root: Path | str = ".") -> dict:
    """{eval_key: spec} of the run's points (empty when off). A spec has source, seed, select (None for dense),
    task (the entry), ``importance`` (see :func:`headattr.evaluation.protocol.importance_sources`, or None),
    ``base`` (the method or import it is read from), ``sparse`` (the settings), ``eval`` and ``files``."""
    if not enabled(config):
        return {}
    s = config[KEY]
    model = model_slice(config)
    settings = {k: s[k] for k in SPARSE_SETTINGS}
    evaluation = {k: s[k] for k in EVAL_SETTINGS}
    base_name = controls_of(config)
    points = {}
    for entry in s["tasks"]:
        files = resolve_tasks([entry], root, f"{KEY}.tasks")["files"]
        task = {"task": entry, "files_sha256": [sha256_file(Path(root) / f) for f in files]}
        run = {"task": entry, "eval": {"tasks": [entry], **evaluation}, "files": [str(p) for p in files]}
        label = _task_label(entry)
        if "dense" in sparse_sources(config):
            spec = {"source": "dense", "seed": None, "select": None, "importance": None, "base": None}
            key = stage_key(f"dense-{label}", {**task, "eval": run["eval"], "model": model})
            points[key] = {**spec, "sparse": None, **run}
        for select in sorted(float(x) for x in s["select"]):
            for name, seed, importance in point_sources(config):
                spec = {
                    "source": name,
                    "seed": seed,
                    "select": select,
                    "importance": importance,
                    "base": base_name if name in TRANSFORMED else (name if importance else None),
                }
                seed_label = "" if seed is None else f"-r{seed}"
                params = {**spec, "sparse": settings, **task, "eval": run["eval"], "model": model}
                points[stage_key(f"{name}{seed_label}-s{select:g}-{label}", params)] = {
                    **spec,
                    "sparse": settings,
                    **run,
                }
    return points


def merged_sparse_plans(plans) -> dict:
    """One {key: spec} table of the points of several plans (equal keys are the same job)."""
    return {k: v for plan in plans for k, v in plan.items()}


def source_importance(source: str, shape: tuple[int, int], base: np.ndarray | None, seed: int | None) -> np.ndarray:
    """The importance [layers, heads] that the keep weights of ``source`` are mapped from (``base``: the adaptive
    source's or ``controls_of``'s importance; NaN rows, layers an import lacks, stay NaN and dense)."""
    if source == "uniform":
        return np.ones(shape)
    if source == "random":
        return np.random.default_rng(seed).random(shape)
    if base is None:
        raise ValueError(f"source {source!r} needs an importance")
    base = np.asarray(base, dtype=np.float64)
    if source == "negated":
        return -base
    if source == "shuffled":
        out = base.copy()
        finite = np.isfinite(out)
        out[finite] = np.random.default_rng(seed).permutation(out[finite])
        return out
    return base


def item_rows(samples: dict, labels: dict) -> list[dict]:
    """Per-item scores from lm-eval's ``log_samples`` output: one row per (task, metric, document); a metric is
    named as in :func:`headattr.evaluation.results.tidy_results` (``<metric>,<filter>`` unless the filter is none)."""
    rows = []
    for task, entries in samples.items():
        for entry in entries:
            filt = entry.get("filter", "none")
            for metric in entry.get("metrics", []):
                value = entry.get(metric)
                if isinstance(value, (int, float, np.floating, np.integer, bool)):
                    name = metric if filt == "none" else f"{metric},{filt}"
                    doc = int(entry["doc_id"])
                    rows.append({**labels, "task": task, "metric": name, "doc_id": doc, "value": float(value)})
    return rows


def _importance(spec: dict, paths, shape) -> np.ndarray | None:
    from ..pipeline.exports import load_importance_file
    from .protocol import method_importance

    source = spec["importance"]
    if source is None:
        return None
    if "file" in source:
        return load_importance_file(paths[0], *shape, f"compare.importance_files.{spec['base']}")
    return method_importance(paths, source["postprocess"])


def keep_ratios_of(spec: dict, importance_paths, shape, n_kv_heads=None) -> np.ndarray | None:
    """The point's keep ratios [layers, heads] (None for dense)."""
    from .sparse import sparse_ratios

    if spec["select"] is None:
        return None
    s = spec["sparse"]
    base = _importance(spec, importance_paths, shape)
    importance = source_importance(spec["source"], shape, base, spec["seed"])
    return sparse_ratios(
        importance,
        spec["select"],
        s["min_keep_ratio"],
        s["weight_scale"],
        s["importance_increases_keep"],
        n_kv_heads,
        NORMALISATION[s["normalisation"]],
    )


def run_point(lm, spec: dict, ratios, names, manager) -> tuple[list[dict], list[dict], dict]:
    """(tidy rows, item rows, info) of one point on a loaded :class:`headattr.evaluation.lm.HeadAttrLM`."""
    import lm_eval

    from .results import tidy_results

    if ratios is None:
        lm.set_sparse_attention(None)
    else:
        lm.set_sparse_attention(ratios, spec["sparse"]["block_size"], spec["sparse"]["skip"])
    lm.sparse_densities.clear()
    lm.sparse_flops.clear()
    labels = {k: spec[k] for k in ("source", "select", "seed")}
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(names),
        task_manager=manager,
        limit=spec["eval"]["limit"],
        bootstrap_iters=100,
        log_samples=True,
        verbosity="ERROR",
    )
    wall = time.perf_counter() - start
    rows = tidy_results(results, **labels)
    items = item_rows(results.get("samples", {}), labels)
    info = {
        **labels,
        "density": float(np.mean(lm.sparse_densities)) if lm.sparse_densities else float("nan"),
        "flops_fraction": float(np.mean(lm.sparse_flops)) if lm.sparse_flops else 1.0,
        "sparse_calls": len(lm.sparse_densities),
        "mean_keep_ratio": float(np.mean(ratios)) if ratios is not None else 1.0,
        "wall_s": wall,
    }
    return rows, items, info


# ----- stages (thin scripts call these) -----------------------------------------------------------------------


def importance_inputs(spec: dict, dump_path) -> list[str]:
    """The files a point reads its importance from (none for uniform, random and dense)."""
    from .protocol import importance_inputs as inputs

    return inputs(spec, dump_path)


def eval_stage(spec: dict, importance_paths, model_cfg: dict, results_out, items_out, info_out) -> dict:
    """Evaluate one point: tidy rows to ``results_out``, per-item scores to ``items_out``, what ran to ``info_out``."""
    import os

    import pandas as pd

    from ..pipeline.dumps import atomic_write
    from ..pipeline.workflow import write_json
    from .lm import HeadAttrLM
    from .protocol import lm_arguments
    from .tasks import task_manager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    resolved = resolve_tasks(spec["eval"]["tasks"], ".", f"{KEY}.tasks")
    start = time.perf_counter()
    lm = HeadAttrLM(**lm_arguments(model_cfg, spec["eval"]))
    load_s = time.perf_counter() - start
    shape = (lm.adapter.n_layers, lm.adapter.n_heads)
    n_kv = getattr(getattr(lm.model, "config", None), "num_key_value_heads", None)
    ratios = keep_ratios_of(spec, importance_paths, shape, n_kv if isinstance(n_kv, int) else None)
    rows, items, info = run_point(lm, spec, ratios, resolved["names"], task_manager(resolved))
    frame = pd.DataFrame(rows)
    atomic_write(results_out, lambda tmp: frame.to_csv(tmp, index=False))
    item_frame = pd.DataFrame(items, columns=ITEM_COLUMNS)
    atomic_write(items_out, lambda tmp: item_frame.to_csv(tmp, index=False))
    write_json(info_out, {**info, "load_s": load_s})
    return info


def table_stage(results, items, infos, keys, table_out, items_out) -> dict:
    """sparse_validation.csv (:data:`COLUMNS` + key) and sparse_items.csv from the points' outputs."""
    import json

    import pandas as pd

    from ..pipeline.dumps import atomic_write

    frames = []
    for res, info, key in zip(results, infos, keys, strict=True):
        what = json.loads(Path(info).read_text())
        frame = pd.read_csv(res)
        for k in ("density", "flops_fraction", "mean_keep_ratio", "wall_s"):
            frame[k] = what[k]
        frames.append(frame.assign(key=key))
    table = pd.concat(frames, ignore_index=True)
    table["seed"] = table["seed"].astype("Int64")
    table = table[[*COLUMNS, "key"]].sort_values(["task", "metric", "source", "select", "seed"], ignore_index=True)
    per_item = pd.concat([pd.read_csv(p) for p in items], ignore_index=True)
    per_item["seed"] = per_item["seed"].astype("Int64")
    atomic_write(table_out, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(items_out, lambda tmp: per_item.to_csv(tmp, index=False))
    return {"rows": len(table), "points": len(frames), "items": len(per_item)}
