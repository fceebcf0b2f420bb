"""The ``sparse_validation`` section checked when the Snakefile is parsed, before any job: keep ratios, skip,
block size against the model's position limit, sources and the family's attention hook; every error names the key.

The block size is checked against the longest sequence the model takes (its config.json position limit); a block
larger than a task's actual sequence still fails in the job's first forward (docs/errors.md S6).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

CONTROLS = ("uniform", "random", "negated", "shuffled", "dense")
"""Sources that are no method: equal weights, seeded random importance, the controls_of importance negated or
permuted over heads, and dense attention."""

KEY = "sparse_validation"


def adaptive_sources(config: dict) -> list[str]:
    """The methods and imports whose importance can drive the keep ratios."""
    return [*config["ig"]["methods"], *config["compare"]["importance_files"]]


def sparse_sources(config: dict) -> list[str]:
    """The configured sources, or (null) every method and import followed by every control."""
    chosen = config[KEY]["sources"]
    return list(chosen) if chosen is not None else [*adaptive_sources(config), *CONTROLS]


def controls_of(config: dict) -> str:
    """The importance negated and shuffled transform (default: the first of ig.methods)."""
    return config[KEY]["controls_of"] or config["ig"]["methods"][0]


def _model_config(config: dict, root: Path) -> dict | None:
    path = root / Path(config["model"]["path"]).expanduser() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_attention_hook(config: dict, hf: dict | None) -> None:
    """The family must name an attention callable and run a kernel the hook reaches (not FlashAttention 2)."""
    from ..models.adapters import FAMILIES, MODEL_TYPE_TO_FAMILY

    implementation = config["model"].get("attn_implementation")
    if implementation == "flash_attention_2":
        raise ConfigError(
            f"{KEY}: model.attn_implementation flash_attention_2 runs attention in a kernel the sparse-attention "
            "hook cannot reach; set it to sdpa or eager (or null)"
        )
    family = config["model"]["adapter"] or MODEL_TYPE_TO_FAMILY.get(str((hf or {}).get("model_type", "")).lower())
    if family in FAMILIES and FAMILIES[family].attention is None:
        raise ConfigError(
            f"{KEY}: the {family} family names no attention callable (FamilySpec.attention), so its attention "
            "cannot be made sparse"
        )


def check_sparse_config(config: dict, root: Path | str = ".") -> None:
    """Raise :class:`ConfigError` naming the ``sparse_validation`` key of a bad value (nothing when it is off)."""
    s = config[KEY]
    if not s["tasks"]:
        return
    bad = [x for x in s["select"] if not 0 < x <= 1]
    if bad:
        raise ConfigError(f"{KEY}.select: {bad} not in (0, 1] (the mean fraction of key blocks kept)")
    if not 0 <= s["skip"] < 1:
        raise ConfigError(f"{KEY}.skip: {s['skip']} is not in [0, 1) (skip 1 would never leave dense attention)")
    hf = _model_config(config, Path(root))
    from ..models.checks import POSITION_KEYS

    limit = next((hf[k] for k in POSITION_KEYS if hf and isinstance(hf.get(k), int) and hf[k] > 0), None)
    if limit is not None and s["block_size"] > limit:
        raise ConfigError(
            f"{KEY}.block_size: {s['block_size']} exceeds the longest sequence the model takes ({limit} positions)"
        )
    allowed = [*adaptive_sources(config), *CONTROLS]
    unknown = [x for x in sparse_sources(config) if x not in allowed]
    if unknown:
        raise ConfigError(f"{KEY}.sources: unknown {unknown}; choose from {allowed}")
    if s["controls_of"] is not None and s["controls_of"] not in adaptive_sources(config):
        raise ConfigError(f"{KEY}.controls_of: {s['controls_of']!r} is not in ig.methods or compare.importance_files")
    check_attention_hook(config, hf)
