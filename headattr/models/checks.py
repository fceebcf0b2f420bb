"""The up-front model and input check, run when the Snakefile is parsed (before any job).

Reads the checkpoint's config.json, tokenizer and weight headers (safetensors metadata; no weights are
loaded) and raises one :class:`ConfigError` naming the key for the first problem: no weights, weights that do
not fit the config, no tokenizer, a GGUF file, a tokenizer larger than the embedding, a mask id outside the
vocabulary, max_len beyond the position table, a missing chat template, an adapter whose layout the model does
not have, or an objective that does not fit the architecture.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import ConfigError
from .loading import HARMLESS_KEYS, resolve_mask_id

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CAUSAL_FAMILIES = ("llama", "gpt2")
ABSOLUTE_POSITIONS = ("bert", "distilbert", "gpt2")  # learned position tables: no position beyond them
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")
GGUF_RECIPE = (
    "convert it once to a transformers folder and set model.path to that folder:\n  pip install gguf\n"
    "  python -c \"from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; d, f = 'DIR', 'FILE.gguf'; "
    "[c.from_pretrained(d, gguf_file=f).save_pretrained('converted') for c in (M, T)]\""
)


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files (shards listed in an index), or [] when there are none."""
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            if name.endswith(".index.json"):
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
                return [model_dir / s for s in shards]
            return [path]
    return sorted(model_dir.glob("*.safetensors"))


def safetensors_shapes(files: list[Path]) -> dict[str, list[int]] | None:
    """{tensor name: shape} from safetensors headers (None when a file is not safetensors)."""
    shapes: dict[str, list[int]] = {}
    for path in files:
        if path.suffix != ".safetensors":
            return None
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def skeleton(hf_config, trust_remote_code: bool):
    """The model class built from its config on the meta device (no memory, no weights)."""
    import torch

    from .loading import auto_class

    auto = auto_class(hf_config)
    with torch.device("meta"):
        return auto.from_config(hf_config, trust_remote_code=trust_remote_code)


def _normalise(name: str, prefix: str) -> str:
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def weight_mismatch(model, shapes: dict[str, list[int]]) -> str | None:
    """A description of missing / unexpected / mis-shaped weights of ``model`` against a checkpoint, or None."""
    prefix = getattr(model, "base_model_prefix", "")
    expected = {_normalise(k, prefix): list(p.shape) for k, p in model.named_parameters(remove_duplicate=False)}
    groups: dict[int, list[str]] = {}  # tied parameters: one saved name is enough
    for k, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(_normalise(k, prefix))
    buffers = {_normalise(k, prefix) for k, _ in model.named_buffers()}
    tied = {_normalise(k, prefix) for k in (getattr(model, "_tied_weights_keys", None) or [])}
    ignore = [HARMLESS_KEYS.pattern, *(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None) or []
    found = {_normalise(k, prefix): v for k, v in shapes.items()}
    missing = [
        names[0]
        for names in groups.values()
        if not any(k in found or k in tied or any(re.search(p, k) for p in ignore_missing) for k in names)
    ]
    unexpected = [
        k for k in found if k not in expected and k not in buffers and not any(re.search(p, k) for p in ignore)
    ]
    shape = [f"{k} {found[k]} vs {v}" for k, v in expected.items() if k in found and found[k] != v]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if shape:
        parts.append(f"{len(shape)} of another shape (e.g. {shape[:2]})")
    return "; ".join(parts) or None


def position_limit(hf_config, family: str) -> tuple[int | None, str | None]:
    for key in POSITION_KEYS:
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            offset = 2 if getattr(hf_config, "model_type", "") == "roberta" else 0
            return value - offset, key
    return None, None


def check_skeleton(model, model_cfg: dict, local_dir: Path | None) -> None:
    """The adapter finds its modules in ``model``, and a local checkpoint's tensors fit it."""
    from .adapters import Adapter

    try:
        Adapter(model, model_cfg["adapter"])
    except ConfigError as exc:
        raise ConfigError(f"model.adapter: {exc}") from exc
    shapes = safetensors_shapes(weight_files(local_dir)) if local_dir is not None else None
    problem = weight_mismatch(model, shapes) if shapes is not None else None
    if problem:
        raise ConfigError(
            f"model.path: the weights in {model_cfg['path']!r} do not fit its config.json "
            f"({type(model).__name__}): {problem}; the config and weights come from different models"
        )


def check_model(config: dict, root: Path | str = ".") -> dict:
    """Check model, tokenizer and their fit to the config; returns what it found (family, vocab, mask id)."""
    from transformers import AutoTokenizer

    from .adapters import family_from_config
    from .loading import load_config

    m, d, o = config["model"], config["data"], config["objective"]
    path = Path(root) / Path(m["path"]).expanduser()
    local = path.exists()
    if local and path.is_file():
        if path.suffix == ".gguf":
            raise ConfigError(
                f"model.path: {m['path']!r} is a GGUF file, which headattr does not load directly; " + GGUF_RECIPE
            )
        raise ConfigError(
            f"model.path: {m['path']!r} is a file; it must be a checkpoint folder (config.json, weights, tokenizer)"
        )
    if local:
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file():
            hint = f" It holds a GGUF file ({ggufs[0].name}); " + GGUF_RECIPE if ggufs else ""
            raise ConfigError(f"model.path: {m['path']!r} has no config.json.{hint}")
        if not weight_files(path):
            raise ConfigError(
                f"model.path: {m['path']!r} has no weights (none of {WEIGHT_FILES} or *.safetensors); copy the "
                "checkpoint's weight files into the folder"
            )
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"model.path: {m['path']!r} has no tokenizer files (none of {TOKENIZER_FILES}); save the model's "
                "tokenizer there (tokenizer.save_pretrained(path))"
            )
    location = str(path) if local else m["path"]
    hf_config = load_config(location, m["trust_remote_code"])
    family = family_from_config(hf_config, m["adapter"])
    try:
        model = skeleton(hf_config, m["trust_remote_code"])
    except Exception as exc:  # custom modeling code that cannot be built on the meta device
        print(f"warning: weights and adapter layout are checked when the model loads ({type(exc).__name__}: {exc})")
        model = None
    if model is not None:
        check_skeleton(model, m, path if local else None)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=m["trust_remote_code"])
    vocab = getattr(hf_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ConfigError(
            f"model.path: the tokenizer of {m['path']!r} has {len(tokenizer)} tokens but the model's vocabulary "
            f"(config.vocab_size) is {vocab}; use the tokenizer that belongs to these weights"
        )
    causal = family in CAUSAL_FAMILIES
    if not o.get("allow_mismatch"):
        if o["kind"] == "causal" and not causal:
            raise ConfigError(
                f"objective.kind: 'causal' (next-token loss) on a bidirectional {family} model gives meaningless "
                "numbers; use objective.kind: diffusion (or objective.allow_mismatch: true if you know better)"
            )
        if o["kind"] == "diffusion" and causal:
            raise ConfigError(
                f"objective.kind: 'diffusion' (masked-token loss) on a causal {family} LM gives meaningless numbers; "
                "use objective.kind: causal (or objective.allow_mismatch: true if you know better)"
            )
    mask_id, where = resolve_mask_id(m, hf_config, tokenizer, family)
    if o["kind"] == "diffusion":
        if mask_id is None:
            raise ConfigError(
                f"model.mask_token_id: the tokenizer of {m['path']!r} has no mask token and the model family has no "
                "known mask id; set model.mask_token_id (or use objective.kind: causal)"
            )
        if isinstance(vocab, int) and not 0 <= mask_id < vocab:
            raise ConfigError(
                f"model.mask_token_id: mask id {mask_id} (from {where}) is outside the vocabulary [0, {vocab}) of "
                f"{m['path']!r}; set model.mask_token_id to the checkpoint's mask id (or null to take it from its "
                "config.json / tokenizer)"
            )
    limit, key = position_limit(hf_config, family)
    if limit is not None and d["max_len"] > limit:
        message = (
            f"data.max_len: {d['max_len']} is beyond the model's {limit} positions (config.{key}); "
            f"set data.max_len <= {limit}"
        )
        if family in ABSOLUTE_POSITIONS:
            raise ConfigError(message)
        print(f"warning: {message} (rotary positions may extrapolate poorly)")
    if d["chat_template"] and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"data.chat_template: the tokenizer of {m['path']!r} has no chat template; set data.chat_template: "
            "false, or add a chat_template to its tokenizer_config.json"
        )
    return {"family": family, "vocab_size": vocab, "mask_token_id": mask_id, "mask_token_from": where}
