"""The up-front checks of a run, before any job: the config (schema, keys, imported files, plan) and the inputs
(model, tokenizer, data), the latter remembered under the checksums of what it read, so later starts skip it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ..engine.budget import check_fits
from ..engine.cost import ModelDims
from ..errors import ConfigError
from ..models.checks import check_model
from .config import check_model_location, validate_schema
from .exports import check_importance_files
from .keys import units


def validate_config(config: dict, root: Path | str = ".") -> dict:
    """The config checked before any rule runs: schema and key checks (:func:`validate_schema`), the imported
    importance files against the model, and the run's plan (units and shards); raises naming the key."""
    root = Path(root)
    validate_schema(config, root)
    files = {k: str(root / v) for k, v in config["compare"]["importance_files"].items()}
    check_importance_files(files, root / config["model"]["path"])
    units(config)
    budget = config["ig"]["memory_budget_gib"]
    if budget is not None:
        check_memory(
            config["model"],
            config["ig"],
            config["data"]["max_len"],
            config["objective"]["mask_probs"],
            int(budget * 2**30),
            root,
        )
    return config


VALUE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def model_dims(model_cfg: dict, root: Path | str = ".") -> ModelDims | None:
    """Cost-model dims from a local checkpoint's config.json (activations in the autocast dtype when set), or
    None when there is none to read (a hub id) or it lacks a dimension."""
    config_file = Path(root) / model_cfg["path"] / "config.json"
    if not config_file.is_file():
        return None
    value = model_cfg.get("autocast") or model_cfg["dtype"]
    try:
        return ModelDims.from_config(SimpleNamespace(**json.loads(config_file.read_text())), VALUE_BYTES[value])
    except ValueError:
        return None


def check_memory(
    model_cfg: dict,
    ig_cfg: dict,
    seq_len: int,
    mask_probs,
    budget_bytes: int,
    root: Path | str = ".",
    source: str = "ig.memory_budget_gib",
) -> int | None:
    """The run's largest IG pass fits ``budget_bytes`` (:func:`headattr.engine.budget.check_fits`), from the model's
    config.json alone (before any weights load); bytes it needs, None without a local config to read."""
    dims = model_dims(model_cfg, root)
    if dims is None:
        return None
    return check_fits(
        dims,
        seq_len,
        max(mask_probs),
        budget_bytes,
        ig_cfg.get("rows_per_pass"),
        fused_attention=model_cfg.get("attn_implementation") != "eager",
        checkpointing=model_cfg.get("activation_checkpointing") or "none",
        checkpoint_every=model_cfg.get("checkpoint_every") or 2,
        budget_source=source,
    )


PASSED = Path(".snakemake") / "headattr-checks.json"


def check_record_count(config: dict, root: Path | str = ".", origins: dict | None = None) -> None:
    """``data.max_samples`` is at most the records of a local ``data.source`` (valid samples are fewer still), so
    the tokenize job cannot fail for lack of records; the error says when the value is inherited from the embedded
    default config.yaml (``origins``, :func:`headattr.pipeline.origins.inherited`) and where to set it."""
    from ..data.sources import read_table
    from .origins import origin_note, where_to_set

    d = config["data"]
    if d["source"] == "demo" or d["source"].startswith("hf:"):
        return
    n = len(read_table(str(Path(root) / d["source"]), d["split"]))
    asked = d["max_samples"]
    if asked > n:
        key = "data.max_samples"
        raise ConfigError(
            f"{key}: {asked}{origin_note(origins, key, asked)} asks for more samples than the {n} records of "
            f"data.source {d['source']!r}; set data.max_samples: {n} (or fewer) under data: in "
            f"{where_to_set(origins, key, asked)}"
        )


def check_inputs(
    config: dict, root: Path | str = ".", passed: Path | None = PASSED, origins: dict | None = None
) -> dict:
    """Every check of the model and data source that needs files (the schema checks ran before).

    ``origins``: the keys whose values the run's ``--configfile`` files inherit from the embedded default
    config.yaml (:func:`headattr.pipeline.origins.inherited`), named in the errors about them.

    A check that passed is remembered in ``passed`` under a hash of the settings it read and the content
    checksums of the model and data, so later starts skip it (no transformers import) until one of them changes.
    """
    from ..data.sources import resolve_source
    from .keys import input_checksums, param_hash

    sources = [config["data"]["source"]] + [v["source"] for v in [config["validation"].get("data")] if v]
    for source in sources:
        if source != "demo" and not source.startswith("hf:"):
            resolve_source(str(Path(root) / source))
    d, o = config["data"], config["objective"]
    checksums = input_checksums(config)
    key = param_hash(
        {
            "model": config["model"],
            "data": {k: d[k] for k in ("max_len", "chat_template", "max_samples", "source", "split")},
            "objective": {k: o[k] for k in ("kind", "allow_mismatch")},
            "checksums": checksums,
        }
    )
    store = Path(root) / passed if passed is not None else None
    done = json.loads(store.read_text()) if store is not None and store.is_file() else {}
    if key in done and checksums["model"] is not None:
        return done[key]
    check_record_count(config, root, origins)
    found = check_model_settings(config, root)
    if store is not None:
        from .dumps import atomic_write

        text = json.dumps({**done, key: found}, sort_keys=True)
        try:
            atomic_write(store, lambda tmp: Path(tmp).write_text(text))
        except OSError:
            pass  # only costs checking again next time
    return found


def check_model_settings(config: dict, root: Path | str = ".") -> dict:
    """The model checks of a run (its ``model``, ``data.max_len`` / ``chat_template`` and ``objective``
    sections): the path or hub id, then :func:`headattr.models.checks.check_model`. The workflow (through
    :func:`check_inputs`) and the CLI run this one path, so they refuse the same settings with the same message."""
    check_model_location(config["model"]["path"], root)
    return check_model(config, root)


def job_budget(model_cfg: dict, engine_cfg: dict, root: Path | str = ".") -> tuple[int, str] | None:
    """(bytes, where it came from) an attribute job's passes must fit, known before the model loads: the
    configured ig.memory_budget_gib, else on CUDA the engine's default (80 % of free memory) less the weights
    about to load; None on CPU without a configured budget (rows then fit RAM as the engine chooses them)."""
    budget = engine_cfg.get("memory_budget_gib")
    if budget is not None:
        return int(budget * 2**30), "ig.memory_budget_gib"
    import torch

    from ..engine.gate_engine import default_memory_budget
    from ..models.loading import resolve_device

    device = resolve_device(model_cfg["device"])
    dims = model_dims(model_cfg, root)
    if device.type != "cuda" or dims is None:
        return None
    weights = (dims.n_layers * dims.layer_params + 2 * dims.vocab * dims.hidden) * VALUE_BYTES[model_cfg["dtype"]]
    source = f"80 % of free memory on {device} less {weights / 2**30:.1f} GiB of weights; ig.memory_budget_gib null"
    return int(default_memory_budget(torch.device(device)) - weights), source
