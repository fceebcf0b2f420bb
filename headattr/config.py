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


def model_slice(config: dict) -> dict:
    m = config["model"]
    return {k: m.get(k) for k in ("path", "adapter", "dtype", "mask_token_id", "attn_implementation")}


def data_slice(config: dict, seed: int) -> dict:
    d = config["data"]
    return {
        "source": d["source"],
        "fields": d["fields"],
        "max_samples": d["max_samples"],
        "stratify": d["stratify"],
        "data_seed": seed,
    }


def units(config: dict) -> list[Unit]:
    """Every (seed, method) unit of the run, in config order."""
    out = []
    d, o, g = config["data"], config["objective"], config["ig"]
    for seed in config["seeds"]:
        data = data_slice(config, seed)
        tokens = {
            "data": data,
            "model": config["model"]["path"],
            "adapter": config["model"]["adapter"],
            "max_len": d["max_len"],
            "length_policy": d["length_policy"],
            "chat_template": d["chat_template"],
        }
        masks = {
            "tokens": tokens,
            "kind": o["kind"],
            "mask_probs": o["mask_probs"],
            "mask_mode": o["mask_mode"],
            "mask_seed": seed,
        }
        for method in g["methods"]:
            ig = {
                "masks": masks,
                "model": model_slice(config),
                "weighting": o["weighting"],
                "method": method,
                "rule": g["rule"],
                "steps": g["steps"],
                "baseline": g["baseline"],
                "lambdas": g["lambdas"] if method == "layered" else None,
            }
            slices = {"data": data, "tokens": tokens, "masks": masks, "ig": ig}
            keys = {
                "data": stage_key(f"seed{seed}", data),
                "tokens": stage_key(f"seed{seed}", tokens),
                "masks": stage_key(f"seed{seed}", masks),
                "ig": stage_key(f"{method}-seed{seed}", ig),
            }
            out.append(Unit(seed, method, slices, keys))
    return out


def diagnostic_groups(config: dict) -> dict:
    """Diagnostics of the run: per unit, per (method, seed pair), per seed across methods; each with its key.

    Returns ``{"unit": {key: ig_key}, "seeds": {key: (method, seed_a, seed_b, ig_key_a, ig_key_b)},
    "methods": {key: (seed, {method: ig_key})}}``.
    """
    diag = config["diagnostics"]
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
    for seed in seeds:
        keys = {m: by[(m, seed)] for m in methods}
        out["methods"][stage_key(f"seed{seed}-methods", {"ig": keys, "d": diag})] = (seed, keys)
    return out


def report_key(config: dict) -> str:
    """Key of the run's report: every attribution and diagnostic key plus the report settings."""
    groups = diagnostic_groups(config)
    return stage_key(
        config["run"],
        {
            "ig": [u.keys["ig"] for u in units(config)],
            "report": config["report"],
            "diagnostics": {k: sorted(v) for k, v in groups.items()},
        },
    )


def _is_local_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1


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
    source = config["data"]["source"]
    if source != "demo" and not source.startswith("hf:") and not (root / source).is_file():
        raise ConfigError(f"data.source: file {source!r} does not exist")
    device = config["model"]["device"]
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"model.device: {device!r} requested but CUDA is not available")
    if config["objective"]["kind"] == "causal" and config["objective"]["mask_probs"] != [1.0]:
        config["objective"]["mask_probs"] = [1.0]  # the causal objective does not mask
    lambdas = config["ig"]["lambdas"]
    if lambdas is not None and "layered" not in config["ig"]["methods"]:
        raise ConfigError("ig.lambdas: only used by the 'layered' method, which is not in ig.methods")
