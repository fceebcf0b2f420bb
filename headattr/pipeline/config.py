"""Workflow config -> checked settings: the JSON schema with its defaults, then the checks the schema cannot
express, each naming the key. A leaf: it reads the config and the model's config.json, and plans nothing
(artifact keys are :mod:`headattr.pipeline.keys`; the whole up-front check is
:func:`headattr.pipeline.checks.validate_config`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..models.loading import hub_id_problem, hub_unreachable, model_n_layers, model_shape
from .sparse_config import check_sparse_config


def _is_local_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") > 1


SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _strict_validator(jsonschema):
    """Draft 2020-12 with ``integer`` meaning a Python int: JSON Schema counts 2.0 as an integer, which passes the
    check and then fails inside a job (``range(2.0)``, a slice by 6.0)."""

    def is_int(checker, value):
        return isinstance(value, int) and not isinstance(value, bool)

    base = jsonschema.Draft202012Validator
    return jsonschema.validators.extend(base, type_checker=base.TYPE_CHECKER.redefine("integer", is_int))


def validate_schema(config: dict, root: Path | str = ".") -> dict:
    """Fill defaults and validate ``config`` against the JSON schema (snakemake.utils.validate), then
    :func:`check_config`. Raises before any rule runs, naming the key."""
    import jsonschema
    import yaml
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(_strict_validator(jsonschema)(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"config key '{'.'.join(str(p) for p in e.absolute_path) or '<top level>'}': {e.message}" for e in errors
        ]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    validate(config, schema=str(SCHEMA), set_default=True)
    check_config(config, root)
    return config


def check_source(source: str, root: Path, key: str) -> None:
    """A data source is 'demo', hf:NAME (cached, or with a reachable hub), a folder, or an existing file of a known
    type; else ConfigError on ``key``."""
    if source.startswith("hf:"):
        check_hf_source(source, key)
    if source != "demo" and not source.startswith("hf:") and not (root / source).is_dir():
        from ..data.sources import FILE_SUFFIXES

        if not source.endswith(FILE_SUFFIXES):
            raise ConfigError(f"{key}: {source!r} is not 'demo', 'hf:NAME' or a file ending in {FILE_SUFFIXES}")
        if not (root / source).is_file():
            raise ConfigError(f"{key}: file {source!r} does not exist")


def check_hf_source(source: str, key: str) -> None:
    """An ``hf:`` data source needs the local datasets cache or a reachable hub (HF_DATASETS_OFFLINE counts as
    offline); else ConfigError on ``key`` before any job (the job would fail with a raw ConnectionError)."""
    import os

    from ..data.sources import hf_cached, hf_offline_message

    if hf_cached(source):
        return
    offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")
    problem = "the hub is offline (HF_DATASETS_OFFLINE is set)" if offline else hub_unreachable()
    if problem:
        raise ConfigError(hf_offline_message(source, key, problem))


def check_model_location(model_path: str, root: Path | str = ".") -> None:
    """A local model path exists; an un-namespaced hub id (bert-base-uncased) not found locally or in the hub
    cache needs a reachable hub. Raises ConfigError on model.path (the workflow and the CLI)."""
    found = (Path(root) / Path(model_path).expanduser()).exists()
    if not found and "/" not in model_path and not model_path.startswith((".", "~")):
        problem = hub_id_problem(model_path)
        if problem:
            raise ConfigError(problem)
    elif _is_local_path(model_path) and not found:
        raise ConfigError(f"model.path: {model_path!r} does not exist")


def check_config(config: dict, root: Path | str = ".") -> None:
    """Checks beyond the JSON schema, before any rule runs; each error names the key."""
    root = Path(root)
    results = Path(config["results_dir"])
    if results.is_absolute() or ".." in results.parts:
        raise ConfigError(f"results_dir: {config['results_dir']!r} must be a relative path without '..'")
    if ".." in config["run"] or "/" in config["run"]:
        raise ConfigError(f"run: {config['run']!r} must be a plain name")
    model_path = config["model"]["path"]
    check_model_location(model_path, root)
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
    if ig["tol"] is not None and ig.get("refine") == "panels" and ig["max_steps"] < 2 * ig["steps"]:
        raise ConfigError(
            f"ig.max_steps: {ig['max_steps']} < 2 x ig.steps ({ig['steps']}): ig.refine panels adds whole panels of "
            "ig.steps nodes, so no path could be refined"
        )
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
    check_sparse_config(config, root)


def check_layer_range(key: str, layers, shape) -> None:
    """``layers`` = [start, end] must be inclusive and inside the model (``shape`` = (layers, heads) or None when
    unknown); else ConfigError on ``key``."""
    start, end = layers
    if start > end or (shape is not None and end >= shape[0]):
        limit = f"0..{shape[0] - 1}" if shape else "the model's layers"
        raise ConfigError(f"{key}: [{start}, {end}] must be an inclusive range start <= end inside {limit}")


RESERVED_LABELS = ("random", "none", "unpruned")
"""Method labels the tables use for their own rows: the random-order baseline (analysis.deletion, evaluation)
and the unpruned model (evaluation.protocol); an import under one of them would be merged into those rows."""


def check_stp_config(config: dict, root: Path) -> None:
    """ig.layers inside the model, no layer shards with it, shapley_all without it; no ig.tol with STP (it does
    not refine); imported names."""

    g = config["ig"]
    shape = model_shape(root / config["model"]["path"])
    if g["layers"] is not None:
        check_layer_range("ig.layers", g["layers"], shape)
        if config["shard"]["layers"]:
            raise ConfigError("ig.layers: cannot be combined with shard.layers (shard the samples instead)")
        if "shapley_all" in g["methods"]:
            raise ConfigError("ig.layers: shapley_all plays every head against every other; it has no layer range")
    stp = [m for m in g["methods"] if m in ("stp", "stp_layer")]
    if g.get("tol") is not None and stp:
        raise ConfigError(
            f"ig.tol: adaptive refinement applies to the quadrature paths of per_layer, joint and layered only; "
            f"{', '.join(stp)} would ignore it (fixed ig.steps, ig.stp_rule): unset ig.tol or run {', '.join(stp)} "
            "in a config without it"
        )
    clash = set(config["compare"]["importance_files"]) & set(g["methods"])
    if clash:
        raise ConfigError(f"compare.importance_files: names {sorted(clash)} clash with ig.methods")
    reserved = set(config["compare"]["importance_files"]) & set(RESERVED_LABELS)
    if reserved:
        raise ConfigError(
            f"compare.importance_files: names {sorted(reserved)} are labels the pipeline uses in its own tables "
            f"(reserved: {', '.join(RESERVED_LABELS)}); rename the import"
        )
