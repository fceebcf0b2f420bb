"""Load a model and tokenizer from a local path or hub id, frozen, on the configured dtype and device.

``trust_remote_code`` runs Python code shipped with the checkpoint (LLaDA and Dream need it). It stays off
unless the config turns it on; a checkpoint that needs it fails with an error that names the option.
"""

from __future__ import annotations

import os
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
        raise ConfigError(f"model.path: cannot load a model config from {path!r}: {exc}") from exc


def load_model(
    path: str,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, tokenizer): the model in eval mode with every parameter frozen (only gates get gradients)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

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
    if model_type in MASKED_LM_TYPES:
        auto = AutoModelForMaskedLM
    elif model_type in CAUSAL_LM_TYPES:
        auto = AutoModelForCausalLM
    else:
        auto = AutoModel  # LLaDA and Dream register their LM classes under AutoModel
    kwargs = {"torch_dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = auto.from_pretrained(path, config=config, **kwargs)
    model.to(dev).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer
