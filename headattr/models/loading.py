"""Load a model and tokenizer from a local path or hub id, frozen, on the configured dtype and device.

``trust_remote_code`` runs Python code shipped with the checkpoint (LLaDA and Dream need it). It stays off
unless the config turns it on; a checkpoint that needs it fails with an error that names the option.
"""

import json
import os
import re
from pathlib import Path

import torch

from ..errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
MASKED_LM_TYPES = {"bert", "roberta", "distilbert"}
CAUSAL_LM_TYPES = {"llama", "qwen2", "mistral", "gpt2"}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a requested CUDA device that is absent is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def check_model_path(path: str) -> None:
    """Fail early when a local-looking model path does not exist (before any expensive work)."""
    looks_local = path.startswith((".", "/", "~")) or os.sep in path and not _looks_like_hub_id(path)
    if looks_local and not Path(path).expanduser().exists():
        raise ConfigError(f"model.path: {path!r} does not exist")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used from here (offline mode, no connection), or None when it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") != "0":
        return "the hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)"
    import urllib.request

    try:
        urllib.request.urlopen(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=timeout)
    except OSError as exc:
        return f"the hub is not reachable ({type(exc).__name__})"
    return None


def hub_cached(repo_id: str) -> bool:
    """True when the hub id's config.json is in the local Hugging Face cache (usable with the hub offline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def hub_id_problem(path: str) -> str | None:
    """The message for a model path found neither locally nor in the hub cache while the hub cannot be used, or
    None when it may be fetched (the hub answers) or loaded from the cache."""
    if Path(path).expanduser().exists() or hub_cached(path):
        return None
    problem = hub_unreachable()
    if problem is None:
        return None
    return (
        f"model.path: {path!r} is not found locally, and {problem} to fetch it as a hub id; "
        "download it and set model.path to its folder"
    )


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not Path(path).exists()


def load_config(path: str, trust_remote_code: bool = False):
    """The model's transformers config, refusing custom code unless ``trust_remote_code`` is set."""
    from transformers import AutoConfig

    check_model_path(path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(
                f"model.path: {path!r} ships its own modeling code; set model.trust_remote_code: true to run it "
                "(only for checkpoints you trust: it executes Python from the checkpoint)"
            ) from exc
        raise
    except OSError as exc:
        offline = hub_id_problem(path)
        if offline:
            raise ConfigError(offline) from exc
        raise ConfigError(f"model.path: cannot load a model config from {path!r}: {exc}") from exc


def auto_class(config):
    """The transformers auto class that builds the LM of ``config`` (LLaDA and Dream register under AutoModel)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    model_type = str(getattr(config, "model_type", "")).lower()
    if model_type in MASKED_LM_TYPES:
        return AutoModelForMaskedLM
    if model_type in CAUSAL_LM_TYPES:
        return AutoModelForCausalLM
    return AutoModel


def check_loading_info(path: str, info: dict) -> None:
    """Refuse weights that do not fit the model (transformers would initialise them at random and go on)."""
    problems = {
        kind: [k for k in info.get(kind, []) if not (kind == "unexpected_keys" and HARMLESS_KEYS.search(k))]
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {list(v)[:3]})" for k, v in problems.items())
        raise ConfigError(
            f"model.path: the weights in {path!r} do not fit its config.json: {summary}; the config and weights "
            "come from different models"
        )


def load_model(
    path: str,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, tokenizer): the model in eval mode with every parameter frozen (only gates get gradients)."""
    from transformers import AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    config = load_config(path, trust_remote_code)
    model_type = str(getattr(config, "model_type", "")).lower()
    if (
        getattr(config, "auto_map", None)
        and not trust_remote_code
        and model_type not in (MASKED_LM_TYPES | CAUSAL_LM_TYPES)
    ):
        raise ConfigError(
            f"model.path: {path!r} needs its own modeling code; set model.trust_remote_code: true to run it"
        )
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model, info = auto_class(config).from_pretrained(path, config=config, **kwargs)
    check_loading_info(path, info)
    model.to(dev).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer


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


def model_shape(model_path) -> tuple[int, int] | None:
    """(n_layers, n_heads) from a local checkpoint's config.json, or None when it cannot be read."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None
    cfg = json.loads(config_file.read_text())
    layers = next((cfg[k] for k in ("num_hidden_layers", "n_layers", "n_layer") if isinstance(cfg.get(k), int)), None)
    heads = next((cfg[k] for k in ("num_attention_heads", "n_heads", "n_head") if isinstance(cfg.get(k), int)), None)
    return None if layers is None or heads is None else (layers, heads)


HARMLESS_KEYS = re.compile(r"(^|\.)(pooler|seq_relationship)\.|position_ids$|rotary_emb\.inv_freq$")
"""Checkpoint tensors a masked or causal LM does not use (a base model's pooler, BERT's NSP head, buffers)."""


def resolve_mask_id(model_cfg: dict, hf_config, tokenizer, family: str):
    """(mask id, where it came from): model.mask_token_id, the checkpoint's config, the tokenizer, the family."""
    from .adapters import FAMILIES

    for value, where in (
        (model_cfg.get("mask_token_id"), "model.mask_token_id"),
        (getattr(hf_config, "mask_token_id", None), "the checkpoint's config.json"),
        (getattr(tokenizer, "mask_token_id", None), "the tokenizer"),
        (FAMILIES[family].mask_token_id, f"the {family} family default"),
    ):
        if isinstance(value, int):
            return value, where
    return None, None


def model_family_and_shift(model_cfg: dict) -> tuple[str, bool]:
    """Adapter family and logit shift from the model's config alone (no weights loaded)."""
    from .adapters import FAMILIES, family_from_config

    family = family_from_config(load_config(model_cfg["path"], model_cfg["trust_remote_code"]), model_cfg["adapter"])
    return family, FAMILIES[family].shift_logits


def objective_needs_mask(model_cfg: dict, tokenizer) -> bool:
    """True when no mask token id is known for the diffusion objective (family default or tokenizer)."""
    from .adapters import FAMILIES

    family, _ = model_family_and_shift(model_cfg)
    return FAMILIES[family].mask_token_id is None and getattr(tokenizer, "mask_token_id", None) is None


def load_adapter(model_cfg: dict):
    """(model, tokenizer, adapter) from the workflow's ``model`` settings.

    The mask id comes from model.mask_token_id, else the checkpoint's config, the tokenizer, the family."""
    from .adapters import Adapter

    model, tokenizer = load_model(
        model_cfg["path"],
        model_cfg["dtype"],
        model_cfg["device"],
        model_cfg["trust_remote_code"],
        model_cfg.get("attn_implementation"),
    )
    family, _ = model_family_and_shift(model_cfg)
    mask_id, _ = resolve_mask_id(model_cfg, model.config, tokenizer, family)
    adapter = Adapter(model, model_cfg["adapter"], mask_token_id=mask_id)
    return model, tokenizer, adapter
