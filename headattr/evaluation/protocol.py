"""The pruning protocol of ``validation.tasks`` as versioned artifacts: one keep-mask and one task evaluation per
point (method, order, fraction, random seed).

- Keep-mask keys hash the importance source (the method's attribution keys and ``report.postprocess``, or an
  imported file's checksum), the order, fraction, seed, convention, ``keep_at_least_one_head``, layer range and
  model. ``random`` masks do not depend on a method (one per seed and fraction, method ``random``); fraction 0 is
  one ``unpruned`` mask shared by every curve.
- Evaluation keys hash the keep-mask key, the model and the evaluation settings (tasks and the checksums of their
  local files, limit, MC-ELBO and sampler settings). Adding a fraction therefore adds points and changes no
  existing key.
- ``heads`` (head counts) add the fractions k / eligible heads (global convention: exactly k heads; per_layer: k
  per layer); ``single_heads`` k adds, per ranked method, k single-head ablations: order ``single``, only the
  head of rank ``seed`` (1 = the most important) pruned.
- Specs are self-contained: a mask spec names its importance source, a point spec its evaluation settings and
  task files, so the rules read nothing else from the config and the plans of several configs (a sweep's points)
  merge into one table of jobs; points shared by configs (unpruned, random, an unchanged method) have one key.

A method's importance for pruning is the mean over the run's seeds of its mean post-processed importance
(:func:`headattr.pipeline.aggregate.importance_matrix`, higher = more important); an imported file's is its own scores.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..pipeline.keys import model_slice, stage_key, units
from ..pipeline.workflow import sha256_file
from .tasks import resolve_tasks

EVAL_SETTINGS = ("limit", "mc_num", "seed", "batch_size", "gen_length", "block_length", "steps")
RANKED = ("most", "least")
SINGLE = "single"


def enabled(config: dict) -> bool:
    return bool(config["validation"]["tasks"]["tasks"])


def importance_sources(config: dict) -> dict:
    """{method: what its importance is read from}: the attribution keys (all seeds) or an imported file."""
    by = defaultdict(list)
    for u in units(config):
        by[u.method].append(u.keys["ig"])
    post = config["report"]["postprocess"]
    out = {m: {"ig": by[m], "postprocess": post} for m in config["ig"]["methods"]}
    for name, file in config["compare"]["importance_files"].items():
        out[name] = {"file": file, "sha256": sha256_file(file)}
    return out


def _fraction_label(fraction: float) -> str:
    return f"f{float(fraction):g}"


def head_count_fractions(config: dict, root: Path | str = ".") -> list[float]:
    """The fractions of ``validation.tasks.heads``: k / eligible heads (k / heads per layer with ``per_layer``)."""
    from ..models.loading import model_shape

    t = config["validation"]["tasks"]
    if not t.get("heads"):
        return []
    shape = model_shape(str(Path(root) / config["model"]["path"]))
    if shape is None:
        raise ConfigError(
            f"validation.tasks.heads: model.path {config['model']['path']!r} has no config.json with layer and head "
            "counts to turn head counts into fractions"
        )
    n_layers, n_heads = shape
    layers = n_layers if t["layers"] is None else t["layers"][1] - t["layers"][0] + 1
    eligible = n_heads if t["convention"] == "per_layer" else layers * n_heads
    too_many = [k for k in t["heads"] if k > eligible]
    if too_many:
        raise ConfigError(f"validation.tasks.heads: {too_many} exceed the {eligible} eligible heads")
    return [k / eligible for k in t["heads"]]


def task_plan(config: dict, root: Path | str = ".") -> dict:
    """{"masks": {mask_key: spec}, "points": {eval_key: spec}} of the run (empty when no tasks are configured).

    A mask spec has method, order, fraction, seed (None for ranked orders), the settings keep_mask needs, ``source``
    (the ranked method's name, else None) and ``importance`` (what :func:`importance_sources` gives for it, else
    None); a point spec has method, order, fraction, seed, ``mask`` (its mask key), ``eval``
    (:func:`eval_settings`) and ``files`` (the local task files it reads). The ``unpruned`` point (fraction 0) has
    method and order ``none``."""
    if not enabled(config):
        return {"masks": {}, "points": {}}
    t = config["validation"]["tasks"]
    model = model_slice(config)
    common = {k: t[k] for k in ("convention", "keep_at_least_one_head", "layers")}
    resolved = resolve_tasks(t["tasks"], root)
    evaluation = {
        "tasks": t["tasks"],
        "files_sha256": [sha256_file(Path(root) / f) for f in resolved["files"]],
        **{k: t[k] for k in EVAL_SETTINGS},
        "model": model,
    }
    sources = importance_sources(config)
    specs = [({"method": "none", "order": "none", "fraction": 0.0, "seed": None}, "unpruned", {"model": model})]
    fractions = {float(f) for f in t["fractions"]} | set(head_count_fractions(config, root))
    for fraction in sorted(fractions - {0.0}):
        f_label = _fraction_label(fraction)
        for method, source in sources.items():
            for order in (o for o in t["orders"] if o in RANKED):
                spec = {"method": method, "order": order, "fraction": fraction, "seed": None}
                specs.append((spec, f"{method}-{order}-{f_label}", {"source": source, **spec, **common, "m": model}))
        if "random" in t["orders"]:
            for seed in range(t["random_seeds"]):
                spec = {"method": "random", "order": "random", "fraction": fraction, "seed": seed}
                specs.append((spec, f"random-r{seed}-{f_label}", {**spec, **common, "m": model}))
    for rank in range(1, t.get("single_heads", 0) + 1):
        for method, source in sources.items():
            spec = {"method": method, "order": SINGLE, "fraction": 0.0, "seed": rank}
            specs.append((spec, f"{method}-single-r{rank}", {"source": source, **spec, **common, "m": model}))
    masks, points = {}, {}
    run = {"eval": eval_settings(config), "files": [str(p) for p in resolved["files"]]}
    for spec, label, params in specs:
        mask_key = stage_key(label, params)
        ranked = spec["order"] in (*RANKED, SINGLE)
        masks[mask_key] = {
            **spec,
            **common,
            "source": spec["method"] if ranked else None,
            "importance": sources[spec["method"]] if ranked else None,
        }
        points[stage_key(label, {"mask": mask_key, "eval": evaluation})] = {**spec, "mask": mask_key, **run}
    return {"masks": masks, "points": points}


def merged_plans(plans) -> dict:
    """One {"masks", "points"} table of the jobs of several task plans (equal keys are the same job)."""
    return {part: {k: v for plan in plans for k, v in plan[part].items()} for part in ("masks", "points")}


def importance_inputs(spec: dict, dump_path) -> list[str]:
    """The files a mask spec's keep-mask reads: its imported file, or the dumps (all seeds) of its method
    (``dump_path(ig_key)``); none for random and unpruned masks."""
    source = spec["importance"]
    if source is None:
        return []
    return [source["file"]] if "file" in source else [dump_path(k) for k in source["ig"]]


def method_importance(dump_paths, postprocess: str) -> np.ndarray:
    """Mean over seeds of each dump's mean post-processed importance [L, H] (higher = more important)."""
    from ..pipeline.aggregate import importance_matrix
    from ..pipeline.dumps import load_dump

    return np.mean([importance_matrix(load_dump(p), postprocess) for p in dump_paths], axis=0)


def build_keep_mask(spec: dict, shape: tuple[int, int], importance: np.ndarray | None = None) -> np.ndarray:
    """The keep-mask [L, H] of a mask spec; ``importance`` is needed for ranked orders only."""
    from .keepmask import keep_mask

    if spec["order"] == "none":
        return np.ones(shape, dtype=bool)
    if spec["order"] == SINGLE:
        return single_head_mask(importance, spec["seed"], spec["layers"])
    if spec["order"] == "random":
        importance = np.zeros(shape)
    layers = None if spec["layers"] is None else range(spec["layers"][0], spec["layers"][1] + 1)
    return keep_mask(
        importance,
        spec["order"],
        spec["fraction"],
        spec["convention"],
        spec["seed"] or 0,
        spec["keep_at_least_one_head"],
        layers,
    )


def single_head_mask(importance: np.ndarray, rank: int, layers=None) -> np.ndarray:
    """Keep-mask [L, H] with only the head of importance rank ``rank`` (1 = most important; among the layers
    ``[start, end]`` when given) pruned."""
    from .keepmask import ranked_heads

    imp = np.asarray(importance, dtype=np.float64)
    keep = np.ones(imp.shape, dtype=bool)
    start, end = (0, imp.shape[0] - 1) if layers is None else layers
    flat = ranked_heads(imp[start : end + 1], "most")[rank - 1]
    keep[start + flat // imp.shape[1], flat % imp.shape[1]] = False
    return keep


def lm_arguments(model_cfg: dict, t: dict) -> dict:
    """HeadAttrLM arguments from the workflow's ``model`` settings and ``validation.tasks``."""
    args = {
        k: model_cfg.get(k)
        for k in ("dtype", "device", "trust_remote_code", "adapter", "mask_token_id", "attn_implementation", "autocast")
    }
    return {
        "pretrained": model_cfg["path"],
        **args,
        **{k: t[k] for k in ("mc_num", "seed", "batch_size", "gen_length", "block_length", "steps")},
        "disable_tqdm": True,
    }


class ForwardCounter:
    """Counts the model's forward calls and the rows they carry (a forward hook; removed on exit)."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def _hook(self, module, args, kwargs, output):
        self.calls += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += int(ids.shape[0]) if hasattr(ids, "shape") else 0

    def __enter__(self):
        self._handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def evaluate_point(lm, keep: np.ndarray, tasks: list[str], manager, limit, labels: dict) -> tuple[list[dict], dict]:
    """Tidy rows (:data:`headattr.evaluation.results.TASK_COLUMNS` + seed) and cost of one keep-mask on ``tasks``."""
    import lm_eval

    from .results import tidy_results

    lm.set_keep_mask(keep)
    start = time.perf_counter()
    with ForwardCounter(lm.model) as counter:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            bootstrap_iters=100,  # mean metrics get their analytic stderr; only others are bootstrapped
            log_samples=False,
            verbosity="ERROR",
        )
    wall = time.perf_counter() - start
    rows = tidy_results(results, **labels)
    n_items = sum(int(r["n"] or 0) for r in {r["task"]: r for r in rows}.values())
    cost = {
        **labels,
        "heads_pruned": int((~np.asarray(keep, dtype=bool)).sum()),
        "forward_passes": counter.calls,
        "rows": counter.rows,
        "items": n_items,
        "wall_s": wall,
    }
    return rows, cost


def eval_settings(config: dict) -> dict:
    """What a task evaluation reads from ``validation.tasks`` (not the fractions or orders: adding a fraction must
    leave the other evaluation jobs' parameters unchanged)."""
    t = config["validation"]["tasks"]
    return {k: t[k] for k in ("tasks", *EVAL_SETTINGS)}


# ----- stages (thin scripts call these) -----------------------------------------------------------------------


def keepmask_stage(spec: dict, importance_paths, model_cfg: dict, out) -> dict:
    """Write one point's keep-mask (.npy, bool [L, H], no pickle) from the files :func:`importance_inputs` names."""
    from ..models.loading import model_shape
    from ..pipeline.dumps import write_npy
    from ..pipeline.exports import load_importance_file

    shape = model_shape(model_cfg["path"])
    if shape is None:
        raise ConfigError(f"model.path: {model_cfg['path']!r} has no config.json with layer and head counts")
    importance, source = None, spec["importance"]
    if source is not None and "file" in source:
        key = f"compare.importance_files.{spec['source']}"
        importance = load_importance_file(importance_paths[0], *shape, key)
    elif source is not None:
        importance = method_importance(importance_paths, source["postprocess"])
    keep = build_keep_mask(spec, shape, importance)
    write_npy(out, keep)
    return {"pruned": int((~keep).sum()), "shape": list(shape)}


def eval_stage(spec: dict, keep_path, model_cfg: dict, results_out, cost_out) -> dict:
    """Evaluate one keep-mask on the tasks of its point spec (``spec["eval"]``); tidy rows to ``results_out``, cost
    to ``cost_out``."""
    import os

    import pandas as pd

    from ..pipeline.dumps import atomic_write
    from ..pipeline.workflow import write_json
    from .lm import HeadAttrLM
    from .summary import COLUMNS
    from .tasks import task_manager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    t = spec["eval"]
    resolved = resolve_tasks(t["tasks"])
    start = time.perf_counter()
    lm = HeadAttrLM(**lm_arguments(model_cfg, t))
    load_s = time.perf_counter() - start
    keep = np.load(keep_path, allow_pickle=False)
    labels = {k: spec[k] for k in ("method", "order", "fraction", "seed")}
    rows, cost = evaluate_point(lm, keep, resolved["names"], task_manager(resolved), t["limit"], labels)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write(results_out, lambda tmp: frame.to_csv(tmp, index=False))
    write_json(cost_out, {**cost, "load_s": load_s})
    return cost


def table_stage(results, costs, keys, table_out, cost_out) -> dict:
    """task_validation.csv and task_eval_cost.csv (one row per point, with its key) from the points' outputs."""
    import json

    import pandas as pd

    from ..pipeline.dumps import atomic_write
    from .summary import COST_COLUMNS, task_table

    table = task_table([pd.read_csv(p) for p in results])
    cost = pd.DataFrame([json.loads(Path(p).read_text()) for p in costs])
    cost = cost[COST_COLUMNS + ["load_s"]].assign(key=list(keys))
    cost["seed"] = cost["seed"].astype("Int64")
    atomic_write(table_out, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(cost_out, lambda tmp: cost.to_csv(tmp, index=False))
    return {"rows": len(table), "points": len(cost)}
