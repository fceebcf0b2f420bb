"""Workflow config -> checked settings and versioned artifact keys.

Every artifact lives under a key made of a readable label and a hash of the parameter slice that determines
it (upstream slices included), e.g. ``results/ig/per_layer-seed47-1f0c2a9be4``. Changing a parameter changes
the keys of exactly the stages that depend on it; switching back finds the earlier artifacts on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


def param_hash(params: dict, length: int = 10) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:length]


def stage_key(label: str, params: dict) -> str:
    return f"{label}-{param_hash(params)}"


@dataclass(frozen=True)
class Unit:
    """One (seed, method) attribution with the parameter slices and keys of every stage it depends on."""

    seed: int
    method: str
    slices: dict
    keys: dict
    shards: tuple[str, ...] = ()


def model_n_layers(path: str) -> int:
    """Number of layers from a local checkpoint's config.json (needed to plan layer shards)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"shard.layers: needs a local model.path with a config.json to count layers ({path!r})")
    cfg = json.loads(config_file.read_text())
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    raise ConfigError(f"shard.layers: cannot read the number of layers from {config_file}")


def input_checksums(config: dict) -> dict:
    """Content checksums of the data source (when the config has one) and model files (see
    :func:`headattr.workflow.input_checksums`)."""
    from .data.sources import demo_corpus_path
    from .workflow import input_checksums as checksums

    source = config.get("data", {}).get("source")
    if source is None or source.startswith("hf:"):
        path = None
    else:
        path = demo_corpus_path() if source == "demo" else Path(source)
    cache = Path(".snakemake") / "headattr-checksums.json"
    return checksums(path, config["model"]["path"], cache)


def model_slice(config: dict) -> dict:
    m = config["model"]
    out = {k: m.get(k) for k in ("path", "adapter", "dtype", "mask_token_id", "attn_implementation")}
    out["files_sha256"] = input_checksums({"model": m})["model"]  # the model's files only
    if m.get("autocast"):  # only when set, so configs without it keep their artifact keys
        out["autocast"] = m["autocast"]
    return out


def data_slice(config: dict, seed: int) -> dict:
    d = config["data"]
    return {
        "source": d["source"],
        "fields": d["fields"],
        "max_samples": d["max_samples"],
        "stratify": d["stratify"],
        "data_seed": seed,
        "on_bad_record": d["on_bad_record"],
        "split": d["split"],
        "source_sha256": input_checksums(config)["data"],
    }


TOKENIZE_OPTIONS = (
    "separator",
    "split_special_tokens",
    "min_answer_tokens",
    "min_target_tokens",
    "max_unk_fraction",
    "on_bad_record",
)


IG_METHODS = ("per_layer", "joint", "layered")
STP_METHODS = ("stp", "stp_layer")


def method_settings(config: dict, method: str) -> dict:
    """The settings that determine a method's numbers (beyond data, masks and model)."""
    g = config["ig"]
    if method in IG_METHODS:
        return {
            "rule": g["rule"],
            "steps": g["steps"],
            "baseline": g["baseline"],
            "lambdas": g["lambdas"] if method == "layered" else None,
            # ig.tol null leaves the options (and so the artifact keys) of configs without it unchanged
            "options": {k: g[k] for k in ("tol", "max_steps", "gap_floor")} if g.get("tol") is not None else {},
        }
    if method in STP_METHODS:
        options = {k: g[k] for k in ("path_samples", "path_seed", "stp_rule")}
        if g["stp_rule"] == "gauss_segments":
            options["stp_levels"] = g["stp_levels"]
        return {"steps": g["steps"], "baseline": g["baseline"], "options": options}
    if method.startswith("shapley"):
        return {"options": dict(config["shapley"])}
    if method == "first_order":
        return {"options": dict(config["first_order"])}
    return {"options": {}}


def units(config: dict) -> list[Unit]:
    """Every (seed, method) unit of the run, in config order."""
    from .shards import plan_shards

    out = []
    d, o, g = config["data"], config["objective"], config["ig"]
    shard = config["shard"]
    n_layers = model_n_layers(config["model"]["path"]) if shard["layers"] else 1
    for seed in config["seeds"]:
        data = data_slice(config, seed)
        tokens = {
            "data": data,
            "model": config["model"]["path"],
            "adapter": config["model"]["adapter"],
            "max_len": d["max_len"],
            "length_policy": d["length_policy"],
            "chat_template": d["chat_template"],
            "tokenizer_sha256": input_checksums(config)["tokenizer"],
            "options": {k: d[k] for k in TOKENIZE_OPTIONS},
        }
        masks = {
            "tokens": tokens,
            "kind": o["kind"],
            "mask_probs": o["mask_probs"],
            "mask_mode": o["mask_mode"],
            "mask_seed": seed,
        }
        if o["mask_samples"] > 1:  # only when set, so S = 1 configs keep their artifact keys
            masks["mask_samples"] = o["mask_samples"]
        for method in g["methods"]:
            ig = {
                "masks": masks,
                "model": model_slice(config),
                "weighting": o["weighting"],
                "method": method,
                **method_settings(config, method),
            }
            if g["layers"] is not None:
                ig["layer_range"] = list(g["layers"])
            slices = {"data": data, "tokens": tokens, "masks": masks, "ig": ig}
            keys = {
                "data": stage_key(f"seed{seed}", data),
                "tokens": stage_key(f"seed{seed}", tokens),
                "masks": stage_key(f"seed{seed}", masks),
                "ig": stage_key(f"{method}-seed{seed}", ig),
            }
            layer_shards = shard["layers"] if method in ("per_layer", "shapley_layer", "stp_layer") else None
            shards = plan_shards(d["max_samples"], n_layers, shard["samples"], layer_shards, method)
            out.append(Unit(seed, method, slices, keys, tuple(shards)))
    return out


def transfer_config(config: dict) -> dict | None:
    """The config whose ``data`` is ``validation.data`` over ``data`` (max_samples = validation.n_samples), or None
    when the held-out samples come from the attribution data (no ``validation.data``, or the same source: the
    in-task diagonal of a transfer sweep, held-out samples after the attribution samples)."""
    val = config["validation"]
    if not val.get("data") or val["data"]["source"] == config["data"]["source"]:
        return None
    d, vd = config["data"], val["data"]
    data = {
        **d,
        "source": vd["source"],
        "split": vd.get("split", d["split"]),
        "fields": {**d["fields"], **vd.get("fields", {})},
        "max_samples": val["n_samples"],
    }
    return {**config, "data": data}


def heldout_units(config: dict) -> list[Unit]:
    """Per seed: the held-out samples of pruning validation (data, tokens, masks keys), or none when disabled.

    With ``validation.data`` (cross-task transfer) they are the first ``validation.n_samples`` valid samples of
    that source, else the ``validation.n_samples`` after the attribution samples of the attribution data."""
    val = config["validation"]
    if not val["enabled"]:
        return []
    by_seed = {u.seed: u for u in units(config)}
    other = transfer_config(config)
    out = []
    for seed, unit in by_seed.items():
        if other is None:
            data = unit.slices["data"]
            tokens = {**unit.slices["tokens"], "heldout": val["n_samples"]}
            data_key = unit.keys["data"]
        else:
            data = data_slice(other, seed)
            tokens = {**unit.slices["tokens"], "data": data}
            data_key = stage_key(f"transfer-seed{seed}", data)
        masks = {**unit.slices["masks"], "tokens": tokens}
        keys = {
            "data": data_key,
            "tokens": stage_key(f"heldout-seed{seed}", tokens),
            "masks": stage_key(f"heldout-seed{seed}", masks),
        }
        out.append(Unit(seed, "heldout", {"data": data, "tokens": tokens, "masks": masks}, keys))
    return out


def heldout_validation(config: dict) -> dict:
    """The held-out pruning validation's settings: ``validation`` without ``tasks`` (which has its own artifacts)."""
    return {k: v for k, v in config["validation"].items() if k != "tasks"}


def validation_groups(config: dict) -> dict:
    """Per seed: {key: (seed, {method: ig_key}, heldout unit)} for the pruning-validation rule."""
    by = {(u.method, u.seed): u.keys["ig"] for u in units(config)}
    out = {}
    for held in heldout_units(config):
        methods = {m: by[(m, held.seed)] for m in config["ig"]["methods"]}
        params = {"ig": methods, "heldout": held.keys["masks"], "v": heldout_validation(config)}
        if config["report"]["postprocess"] != "signed" or config["compare"]["importance_files"]:
            params |= {"postprocess": config["report"]["postprocess"], "imported": config["compare"]}
        key = stage_key(f"seed{held.seed}-pruning", params)
        out[key] = (held.seed, methods, held)
    return out


def diagnostic_groups(config: dict) -> dict:
    """Diagnostics of the run: per unit, per (method, seed pair), per seed across methods; each with its key.

    Returns ``{"unit": {key: ig_key}, "seeds": {key: (method, seed_a, seed_b, ig_key_a, ig_key_b)},
    "methods": {key: (seed, {method: ig_key})}}``.
    """
    diag = config["diagnostics"]
    if config["report"]["postprocess"] != "signed":  # only when set, so that default configs keep their keys
        diag = {**diag, "postprocess": config["report"]["postprocess"]}
    all_units = units(config)
    by = {(u.method, u.seed): u.keys["ig"] for u in all_units}
    out: dict = {"unit": {}, "seeds": {}, "methods": {}}
    for u in all_units:
        out["unit"][stage_key(u.keys["ig"], diag)] = u.keys["ig"]
    seeds, methods = config["seeds"], config["ig"]["methods"]
    for method in methods:
        for i, a in enumerate(seeds):
            for b in seeds[i + 1 :]:
                ka, kb = by[(method, a)], by[(method, b)]
                out["seeds"][stage_key(f"{method}-seed{a}-vs-seed{b}", {"a": ka, "b": kb, "d": diag})] = (
                    method,
                    a,
                    b,
                    ka,
                    kb,
                )
    ranking = {}  # only when set, so that default configs keep their keys
    if config["report"]["postprocess"] != "signed" or config["compare"]["importance_files"]:
        ranking = {"postprocess": config["report"]["postprocess"], "imported": config["compare"]}
    for seed in seeds:
        keys = {m: by[(m, seed)] for m in methods}
        out["methods"][stage_key(f"seed{seed}-methods", {"ig": keys, "d": diag, **ranking})] = (seed, keys)
    return out


def dispersion_groups(config: dict) -> dict:
    """Per seed, when ``dispersion.enabled``: {key: (seed, unit)} of the attention-dispersion pass over that seed's
    attribution samples and masks (the unit's tokens and masks keys; no attribution settings enter the key)."""
    cfg = config.get("dispersion", {})
    if not cfg.get("enabled"):
        return {}
    out = {}
    for unit in {u.seed: u for u in units(config)}.values():
        params = {"masks": unit.slices["masks"], "model": model_slice(config), "d": cfg}
        out[stage_key(f"seed{unit.seed}-dispersion", params)] = (unit.seed, unit)
    return out


def _floor_if_set(config: dict) -> dict:
    """ig.gap_floor changes the report (relative gaps) even without ig.tol; the default keeps existing keys."""
    floor = config["ig"].get("gap_floor", 0.01)
    return {} if floor == 0.01 else {"gap_floor": floor}


def _tasks_if_set(config: dict) -> dict:
    """The task-validation points and tolerance, only when validation.tasks is on (other configs keep their keys)."""
    if not config["validation"]["tasks"]["tasks"]:
        return {}
    from .evaluation.protocol import task_plan

    points = sorted(task_plan(config)["points"])
    return {"tasks": {"points": points, "tolerance": config["validation"]["tasks"]["tolerance"]}}


def report_key(config: dict) -> str:
    """Key of the run's report: every attribution and diagnostic key plus the report settings."""
    groups = diagnostic_groups(config)
    return stage_key(
        config["run"],
        {
            "ig": [u.keys["ig"] for u in units(config)],
            "report": config["report"] | _floor_if_set(config),
            "diagnostics": {k: sorted(v) for k, v in groups.items()},
        }
        | _tasks_if_set(config)
        | ({"dispersion": sorted(dispersion_groups(config))} if dispersion_groups(config) else {}),
    )


def _is_local_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1


SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def validate_config(config: dict, root: Path | str = ".") -> dict:
    """Fill defaults and validate ``config`` against the JSON schema (snakemake.utils.validate), then
    :func:`check_config`. Raises before any rule runs, naming the key."""
    import jsonschema
    import yaml
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"config key '{'.'.join(str(p) for p in e.absolute_path) or '<top level>'}': {e.message}" for e in errors
        ]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    validate(config, schema=str(SCHEMA), set_default=True)
    check_config(config, root)
    units(config)
    return config


def check_source(source: str, root: Path, key: str) -> None:
    """A data source is 'demo', hf:NAME, a folder, or an existing file of a known type; else ConfigError on ``key``."""
    if source != "demo" and not source.startswith("hf:") and not (root / source).is_dir():
        from .data.sources import FILE_SUFFIXES

        if not source.endswith(FILE_SUFFIXES):
            raise ConfigError(f"{key}: {source!r} is not 'demo', 'hf:NAME' or a file ending in {FILE_SUFFIXES}")
        if not (root / source).is_file():
            raise ConfigError(f"{key}: file {source!r} does not exist")


def check_config(config: dict, root: Path | str = ".") -> None:
    """Checks beyond the JSON schema, before any rule runs; each error names the key."""
    root = Path(root)
    results = Path(config["results_dir"])
    if results.is_absolute() or ".." in results.parts:
        raise ConfigError(f"results_dir: {config['results_dir']!r} must be a relative path without '..'")
    if ".." in config["run"] or "/" in config["run"]:
        raise ConfigError(f"run: {config['run']!r} must be a plain name")
    model_path = config["model"]["path"]
    if _is_local_path(model_path) and not (root / Path(model_path).expanduser()).exists():
        raise ConfigError(f"model.path: {model_path!r} does not exist")
    check_source(config["data"]["source"], root, "data.source")
    transfer = config["validation"].get("data")
    if transfer:
        check_source(transfer["source"], root, "validation.data.source")
    device = config["model"]["device"]
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"model.device: {device!r} requested but CUDA is not available")
    if config["objective"]["kind"] == "causal" and config["objective"]["mask_probs"] != [1.0]:
        config["objective"]["mask_probs"] = [1.0]  # the causal objective does not mask
    ig = config["ig"]
    if ig["tol"] is not None and ig["max_steps"] < ig["steps"]:
        raise ConfigError(f"ig.max_steps: {ig['max_steps']} < ig.steps ({ig['steps']}): ig.tol only raises them")
    bins = config["diagnostics"]["depth_bins"]
    if isinstance(bins, list):
        bad = [b for b in bins if not b[0] < b[1]]
        config_file = root / Path(model_path).expanduser() / "config.json"
        if not bad and config_file.is_file():
            n_layers = model_n_layers(str(config_file.parent))
            bad = [b for b in bins if b[1] > n_layers]
        if bad:
            raise ConfigError(f"diagnostics.depth_bins: {bad} not [start, end) ranges with start < end <= n_layers")
    lambdas = config["ig"]["lambdas"]
    if lambdas is not None and "layered" not in config["ig"]["methods"]:
        raise ConfigError("ig.lambdas: only used by the 'layered' method, which is not in ig.methods")
    check_stp_config(config, root)


def check_layer_range(key: str, layers, shape) -> None:
    """``layers`` = [start, end] must be inclusive and inside the model (``shape`` = (layers, heads) or None when
    unknown); else ConfigError on ``key``."""
    start, end = layers
    if start > end or (shape is not None and end >= shape[0]):
        limit = f"0..{shape[0] - 1}" if shape else "the model's layers"
        raise ConfigError(f"{key}: [{start}, {end}] must be an inclusive range start <= end inside {limit}")


def check_stp_config(config: dict, root: Path) -> None:
    """ig.layers inside the model, no layer shards with it, shapley_all without it; the imported files."""
    from .exports import check_importance_files, model_shape

    g = config["ig"]
    shape = model_shape(root / config["model"]["path"])
    if g["layers"] is not None:
        check_layer_range("ig.layers", g["layers"], shape)
        if config["shard"]["layers"]:
            raise ConfigError("ig.layers: cannot be combined with shard.layers (shard the samples instead)")
        if "shapley_all" in g["methods"]:
            raise ConfigError("ig.layers: shapley_all plays every head against every other; it has no layer range")
    clash = set(config["compare"]["importance_files"]) & set(g["methods"])
    if clash:
        raise ConfigError(f"compare.importance_files: names {sorted(clash)} clash with ig.methods")
    files = {k: str(root / v) for k, v in config["compare"]["importance_files"].items()}
    check_importance_files(files, root / config["model"]["path"])
