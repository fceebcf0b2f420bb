"""Where the heads of each model family live, and how the family wants its inputs.

An adapter answers four questions about a loaded model:
- which module is each layer's attention output projection (its input is the per-head activation ``z``,
  shape [batch, pos, n_heads * head_dim]; head h is the slice [h * head_dim, (h + 1) * head_dim)),
- which module turns final hidden states into vocabulary logits (so logits are computed only where scored),
- whether logits are shifted (Dream: the output at position i - 1 scores token i),
- how padding is expressed (2-D mask, Dream's 4-D boolean mask + position_ids, or not at all for LLaDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class FamilySpec:
    """Static description of one model family (attribute paths are dotted, relative to the loaded model)."""

    name: str
    layer_paths: tuple[str, ...]
    out_proj: str
    head_paths: tuple[str, ...]
    shift_logits: bool = False
    padding: str = "mask2d"  # "mask2d" | "mask4d" (Dream) | "unsupported" (LLaDA ignores the mask)
    mask_token_id: int | None = None
    attention: str | None = None  # callable on the layer computing attention before (or up to) out_proj


FAMILIES: dict[str, FamilySpec] = {
    "llada": FamilySpec(
        name="llada",
        layer_paths=("model.transformer.blocks", "transformer.blocks"),
        out_proj="attn_out",
        head_paths=("model.transformer.ff_out", "transformer.ff_out"),
        padding="unsupported",
        mask_token_id=126336,
        attention="attention",
    ),
    "dream": FamilySpec(
        name="dream",
        layer_paths=("model.layers",),
        out_proj="self_attn.o_proj",
        head_paths=("lm_head",),
        shift_logits=True,
        padding="mask4d",
        mask_token_id=151666,
        attention="self_attn",
    ),
    "llama": FamilySpec(
        name="llama",
        layer_paths=("model.layers", "layers"),
        out_proj="self_attn.o_proj",
        head_paths=("lm_head",),
        attention="self_attn",
    ),
    "bert": FamilySpec(
        name="bert",
        layer_paths=("bert.encoder.layer", "roberta.encoder.layer", "encoder.layer"),
        out_proj="attention.output.dense",
        head_paths=("cls", "lm_head"),
        attention="attention.self",
    ),
    "distilbert": FamilySpec(
        name="distilbert",
        layer_paths=("distilbert.transformer.layer", "transformer.layer"),
        out_proj="attention.out_lin",
        head_paths=("vocab_transform",),
        attention="attention",
    ),
    "gpt2": FamilySpec(
        name="gpt2",
        layer_paths=("transformer.h", "h"),
        out_proj="attn.c_proj",
        head_paths=("lm_head",),
        attention="attn",
    ),
}

MODEL_TYPE_TO_FAMILY = {
    "llada": "llada",
    "dream": "dream",
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "distilbert",
    "gpt2": "gpt2",
}


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """Follow a dotted attribute path (integers index ModuleLists); None when any step is missing."""
    obj = root
    for part in path.split("."):
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential)):
            idx = int(part)
            if idx >= len(obj):
                return None
            obj = obj[idx]
        else:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
    return obj


def detect_family(model: nn.Module, override: str | None = None) -> str:
    """The adapter family of ``model``: ``override`` when given, else from ``config.model_type``."""
    return family_from_config(getattr(model, "config", None), override)


def family_from_config(config, override: str | None = None) -> str:
    """The adapter family named by ``override`` or by a transformers config's ``model_type``."""
    if override:
        if override not in FAMILIES:
            raise ConfigError(f"model.adapter: unknown adapter {override!r}; choose one of {sorted(FAMILIES)}")
        return override
    model_type = str(getattr(config, "model_type", "")).lower()
    if model_type in MODEL_TYPE_TO_FAMILY:
        return MODEL_TYPE_TO_FAMILY[model_type]
    raise ConfigError(
        f"unknown architecture (config.model_type={model_type!r}): no head adapter for it. "
        f"Set the config option model.adapter to one of {sorted(FAMILIES)} if the model uses one of their layouts."
    )


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Adapter:
    """A loaded model seen as ``n_layers`` x ``n_heads`` gateable heads.

    Args:
        model: the loaded model (a transformers ``PreTrainedModel`` or a stand-in with the same paths).
        family: name from :data:`FAMILIES`; auto-detected when None.
        mask_token_id: overrides the family default / tokenizer value for the diffusion objective.
    """

    def __init__(self, model: nn.Module, family: str | None = None, mask_token_id: int | None = None):
        self.family = detect_family(model, family)
        self.spec = FAMILIES[self.family]
        self.model = model
        self.layers = self._find_layers()
        self.out_projs = []
        for i, layer in enumerate(self.layers):
            proj = get_submodule(layer, self.spec.out_proj)
            if proj is None:
                raise ConfigError(
                    f"adapter {self.family!r}: layer {i} has no module {self.spec.out_proj!r}; "
                    "set model.adapter to the family whose layout this model uses"
                )
            self.out_projs.append(proj)
        config = getattr(model, "config", None)
        n_heads = _config_int(config, "num_attention_heads", "n_heads", "n_head")
        if n_heads is None:
            raise ConfigError(f"adapter {self.family!r}: the model config names no number of attention heads")
        self.n_heads = n_heads
        in_features = self._in_features(self.out_projs[0])
        if in_features % n_heads:
            raise ConfigError(
                f"adapter {self.family!r}: output projection input width {in_features} is not a multiple "
                f"of {n_heads} heads"
            )
        self.head_dim = in_features // n_heads
        self.head_module = next(
            (m for m in (get_submodule(model, p) for p in self.spec.head_paths) if m is not None), None
        )
        self.mask_token_id = mask_token_id if mask_token_id is not None else self.spec.mask_token_id

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def shift_logits(self) -> bool:
        return self.spec.shift_logits

    def _find_layers(self) -> nn.ModuleList:
        for path in self.spec.layer_paths:
            layers = get_submodule(self.model, path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
        raise ConfigError(
            f"adapter {self.family!r}: none of the layer paths {self.spec.layer_paths} exists in "
            f"{type(self.model).__name__}; set model.adapter to the family whose layout this model uses"
        )

    @staticmethod
    def _in_features(proj: nn.Module) -> int:
        if isinstance(proj, nn.Linear):
            return proj.in_features
        weight = getattr(proj, "weight", None)
        if weight is not None and weight.ndim == 2 and type(proj).__name__ == "Conv1D":
            return weight.shape[0]  # GPT-2's Conv1D stores weight as [in, out]
        if weight is not None and weight.ndim == 2:
            return weight.shape[1]
        raise ConfigError(f"cannot read the input width of output projection {type(proj).__name__}")

    def model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        """Keyword arguments for ``model(**kwargs)``: the family's own form of padding.

        ``attention_mask`` is [batch, pos] with 1 for real tokens; None or all-ones means no padding.
        """
        if attention_mask is None or bool(attention_mask.all()):
            return {"input_ids": input_ids}
        if self.spec.padding == "unsupported":
            raise ValueError(
                f"{self.family} ignores attention_mask, so padded positions would be attended to; "
                "score unpadded sequences (headattr batches rows of one sample, which need no padding)"
            )
        if self.spec.padding == "mask4d":
            keep = attention_mask.bool()
            mask4d = keep[:, None, None, :] & keep[:, None, :, None]
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return {"input_ids": input_ids, "attention_mask": mask4d, "position_ids": position_ids}
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def zero_head_weights(self, layer: int, head: int) -> None:
        """Zero the output-projection weights that read head ``head`` of ``layer`` (an independent reference)."""
        proj = self.out_projs[layer]
        sl = slice(head * self.head_dim, (head + 1) * self.head_dim)
        with torch.no_grad():
            if type(proj).__name__ == "Conv1D":
                proj.weight[sl, :] = 0
            else:
                proj.weight[:, sl] = 0
