"""Versioned artifact keys: the config slices that determine each stage, hashed into its path.

Every artifact lives under a key made of a readable label and a hash of the parameter slice that determines
it (upstream slices included), e.g. ``results/ig/per_layer-seed47-1f0c2a9be4``. Changing a parameter changes
the keys of exactly the stages that depend on it; switching back finds the earlier artifacts on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..models.loading import model_n_layers


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


def seed_entry(entry) -> tuple:
    """(label, data_seed, mask_seed) of one ``seeds`` entry: a plain seed sets both (label: the seed itself, so
    such configs keep their artifact keys); ``{data: d, mask: m}`` varies data sampling and masks apart (label
    ``d<d>m<m>``)."""
    if isinstance(entry, dict):
        return f"d{entry['data']}m{entry['mask']}", int(entry["data"]), int(entry["mask"])
    return entry, entry, entry


def seed_labels(config: dict) -> list:
    """The labels of the run's seeds (the ``seed`` of its units), in config order."""
    return [seed_entry(e)[0] for e in config["seeds"]]


def input_checksums(config: dict) -> dict:
    """Content checksums of the data source (when the config has one) and model files (see
    :func:`headattr.pipeline.workflow.input_checksums`)."""
    from ..data.sources import demo_corpus_path
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


def tol_options(ig: dict) -> dict:
    """ig.tol's options; ig.tol null (or ig.refine at its default, double) leaves the options, and so the
    artifact keys, of configs without them unchanged."""
    if ig.get("tol") is None:
        return {}
    options = {k: ig[k] for k in ("tol", "max_steps", "gap_floor")}
    if ig.get("refine", "double") != "double":
        options["refine"] = ig["refine"]
    return options


def method_settings(config: dict, method: str) -> dict:
    """The settings that determine a method's numbers (beyond data, masks and model)."""
    g = config["ig"]
    if method in IG_METHODS:
        return {
            "rule": g["rule"],
            "steps": g["steps"],
            "baseline": g["baseline"],
            "lambdas": g["lambdas"] if method == "layered" else None,
            "options": tol_options(g),
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
    for entry in config["seeds"]:
        seed, data_seed, mask_seed = seed_entry(entry)
        data = data_slice(config, data_seed)
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
        if d.get("add_bos"):  # only when set: the keys of configs without it are unchanged
            tokens["options"]["add_bos"] = True
        masks = {
            "tokens": tokens,
            "kind": o["kind"],
            "mask_probs": o["mask_probs"],
            "mask_mode": o["mask_mode"],
            "mask_seed": mask_seed,
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
                "data": stage_key(f"seed{data_seed}", data),
                "tokens": stage_key(f"seed{data_seed}", tokens),
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
        data_seed = unit.slices["data"]["data_seed"]
        if other is None:
            data = unit.slices["data"]
            tokens = {**unit.slices["tokens"], "heldout": val["n_samples"]}
            data_key = unit.keys["data"]
        else:
            data = data_slice(other, data_seed)
            tokens = {**unit.slices["tokens"], "data": data}
            data_key = stage_key(f"transfer-seed{data_seed}", data)
        masks = {**unit.slices["masks"], "tokens": tokens}
        keys = {
            "data": data_key,
            "tokens": stage_key(f"heldout-seed{data_seed}", tokens),
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
    seeds, methods = seed_labels(config), config["ig"]["methods"]
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
    if config["compare"]["importance_files"]:  # the files' content, so that an edit in place reruns the comparison
        from .workflow import sha256_file

        ranking["imported_sha256"] = {n: sha256_file(p) for n, p in config["compare"]["importance_files"].items()}
    for seed in seeds:
        keys = {m: by[(m, seed)] for m in methods}
        out["methods"][stage_key(f"seed{seed}-methods", {"ig": keys, "d": diag, **ranking})] = (seed, keys)
    return out


DISPERSION_ADDED = {"query_span": "all", "last_n": 1, "per_mask_prob": False}


def _set_only(cfg: dict, added: dict) -> dict:
    """``cfg`` without the keys of ``added`` left at their defaults (configs that do not set them keep their keys)."""
    return {k: v for k, v in cfg.items() if k not in added or v != added[k]}


def dispersion_groups(config: dict) -> dict:
    """Per seed, when ``dispersion.enabled``: {key: (seed, unit)} of the attention-dispersion pass over that seed's
    attribution samples and masks (the unit's tokens and masks keys; no attribution settings enter the key)."""
    cfg = config.get("dispersion", {})
    if not cfg.get("enabled"):
        return {}
    out = {}
    for unit in {u.seed: u for u in units(config)}.values():
        params = {"masks": unit.slices["masks"], "model": model_slice(config), "d": _set_only(cfg, DISPERSION_ADDED)}
        out[stage_key(f"seed{unit.seed}-dispersion", params)] = (unit.seed, unit)
    return out
