"""Attention internals of every family, reached inside the attention callable the adapters name.

Each family's ``FamilySpec.attention`` is a callable on the layer (a module's ``forward`` or a block method)
that computes attention up to, or including, the output projection. Inside it the probabilities come from one
of two kernels: ``torch.nn.functional.scaled_dot_product_attention`` (SDPA: LLaDA, Dream and transformers'
``sdpa`` models, BERT/DistilBERT ``sdpa``) or the eager softmax over the scores ``q k^T * scale + mask``
(``torch.nn.functional.softmax`` on a [batch, heads, query, key] tensor: transformers' eager models, Dream's
eager attention). :func:`attention_kernels` patches both for the duration of a block and, only while layer i's
attention callable runs, hands each kernel call to ``kernel(i, call)``; a :class:`KernelCall` can compute the
probabilities (from q and k for SDPA: softmax(q k^T * scale + mask, causal if asked), the softmax output for the
eager path) and run the kernel with an extra boolean keep mask (SDPA: combined into ``attn_mask``; eager: the
scores outside the mask set to -inf before the softmax), which is an exact masked attention.

A layer whose attention callable calls neither kernel (FlashAttention, a kernel imported under another name)
fails loudly: :class:`AttentionHookError`, naming the family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .adapters import Adapter, get_submodule


class AttentionHookError(ConfigError):
    """The model's attention does not run through a kernel the hook can reach."""


@dataclass(frozen=True)
class AttentionSite:
    """Where layer i's attention callable lives (``owner.attr``: a module's ``forward`` or a block's method)."""

    owner: object
    attr: str
    proj: nn.Module


def attention_site(layer: nn.Module, path: str | None, proj: nn.Module) -> AttentionSite | None:
    """The attention callable at ``path`` on ``layer`` (None when the family names none or it is missing)."""
    target = get_submodule(layer, path) if path else None
    if isinstance(target, nn.Module):
        return AttentionSite(target, "forward", proj)
    if callable(target):
        parent_path, _, attr = path.rpartition(".")
        return AttentionSite(get_submodule(layer, parent_path) if parent_path else layer, attr, proj)
    return None


@contextmanager
def patched(owner, attr: str, fn):
    """``owner.attr = fn`` (an instance attribute shadowing the class's) for the duration of the block."""
    had = attr in vars(owner)
    previous = vars(owner).get(attr)
    object.__setattr__(owner, attr, fn)
    try:
        yield
    finally:
        if had:
            object.__setattr__(owner, attr, previous)
        else:
            delattr(owner, attr)


def _causal(q_len: int, k_len: int, device) -> torch.Tensor:
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def _with_keep(attn_mask, keep: torch.Tensor):
    """``attn_mask`` (None, boolean = attend, or additive float) restricted to ``keep`` (boolean, broadcastable)."""
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask.masked_fill(~keep, float("-inf"))


class KernelCall:
    """One attention kernel call inside a layer's attention: its probabilities and a masked rerun."""

    def __init__(self, kind: str, original: Callable, args: tuple, kwargs: dict):
        self.kind, self.original, self.args, self.kwargs = kind, original, args, kwargs

    def _sdpa_inputs(self) -> dict:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, self.args, strict=False))
        bound.update(self.kwargs)
        return bound

    def lengths(self) -> tuple[int, int]:
        """(query length, key length) of the call."""
        if self.kind == "softmax":
            return tuple(self.args[0].shape[-2:])
        a = self._sdpa_inputs()
        return a["query"].shape[-2], a["key"].shape[-2]

    def probabilities(self) -> torch.Tensor:
        """Attention probabilities [batch, heads, query, key] in fp32 (GQA keys repeated per query head)."""
        if self.kind == "softmax":
            return self.run().float()
        a = self._sdpa_inputs()
        q, k, mask = a["query"].float(), a["key"].float(), a.get("attn_mask")
        if k.shape[-3] != q.shape[-3]:  # enable_gqa: each kv head serves a group of query heads
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        scale = a.get("scale") or 1 / math.sqrt(q.shape[-1])
        scores = q @ k.transpose(-2, -1) * scale
        if a.get("is_causal"):
            scores = scores.masked_fill(~_causal(q.shape[-2], k.shape[-2], q.device), float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return torch.softmax(scores, dim=-1)

    def flex_ready(self) -> bool:
        """An SDPA call FlexAttention can take over as is: no attention mask, not causal, no dropout."""
        a = self._sdpa_inputs()
        return self.kind == "sdpa" and a.get("attn_mask") is None and not a.get("is_causal") and not a.get("dropout_p")

    def run_flex(self, block_mask, flex: Callable):
        """The call through ``flex(q, k, v, block_mask=..., scale=..., enable_gqa=...)`` (see :meth:`flex_ready`)."""
        a = self._sdpa_inputs()
        q, k = a["query"], a["key"]
        return flex(
            q, k, a["value"], block_mask=block_mask, scale=a.get("scale"), enable_gqa=k.shape[-3] != q.shape[-3]
        )

    def run(self, keep: torch.Tensor | None = None):
        """The kernel's own output; with ``keep`` (boolean [batch or 1, heads, query, key]) the exact attention
        restricted to the kept keys of each query."""
        if keep is None:
            return self.original(*self.args, **self.kwargs)
        if self.kind == "softmax":
            scores, *rest = self.args
            return self.original(scores.masked_fill(~keep, float("-inf")), *rest, **self.kwargs)
        a = self._sdpa_inputs()
        if a.get("is_causal"):
            q, k = a["query"], a["key"]
            keep = keep & _causal(q.shape[-2], k.shape[-2], q.device)
            a["is_causal"] = False
        a["attn_mask"] = _with_keep(a.get("attn_mask"), keep)
        return self.original(**a)


def _is_attention_softmax(args: tuple, kwargs: dict) -> bool:
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return torch.is_tensor(x) and x.ndim == 4 and dim in (-1, 3)


def attention_sites(adapter: Adapter) -> list[AttentionSite | None]:
    """Each layer's attention site (see :func:`attention_site`)."""
    pairs = zip(adapter.layers, adapter.out_projs, strict=True)
    return [attention_site(layer, adapter.spec.attention, proj) for layer, proj in pairs]


@contextmanager
def attention_kernels(adapter: Adapter, kernel: Callable[[int, KernelCall], object], layers=None):
    """Inside, every attention kernel call of layer i (for i in ``layers``, default all) returns ``kernel(i,
    call)``; kernel calls elsewhere run unchanged. A watched layer whose attention ran without calling a kernel
    raises :class:`AttentionHookError` at that layer."""
    sites = attention_sites(adapter)
    wanted = range(adapter.n_layers) if layers is None else sorted(set(int(i) for i in layers))
    missing = [i for i in wanted if sites[i] is None]
    if missing:
        raise AttentionHookError(
            f"the {adapter.family} adapter names no attention callable on layers {missing}: "
            "its attention probabilities cannot be computed"
        )
    active: list[int] = []
    seen: list[int] = []
    F = torch.nn.functional
    originals = {"sdpa": F.scaled_dot_product_attention, "softmax": F.softmax}

    def dispatcher(kind: str):
        def call(*args, **kwargs):
            if active and (kind == "sdpa" or _is_attention_softmax(args, kwargs)):
                seen[-1] += 1
                return kernel(active[-1], KernelCall(kind, originals[kind], args, kwargs))
            return originals[kind](*args, **kwargs)

        return call

    def watched(index: int, original: Callable):
        def run(*args, **kwargs):
            active.append(index)
            seen.append(0)
            try:
                out = original(*args, **kwargs)
            finally:
                active.pop()
                calls = seen.pop()
            if calls == 0:
                raise AttentionHookError(
                    f"layer {index} of the {adapter.family} model computed attention without a kernel the hook "
                    "reaches (scaled_dot_product_attention or an eager softmax): load it with "
                    "model.attn_implementation eager or sdpa"
                )
            return out

        return run

    with ExitStack() as stack:
        stack.enter_context(patched(F, "scaled_dot_product_attention", dispatcher("sdpa")))
        stack.enter_context(patched(F, "softmax", dispatcher("softmax")))
        for i in wanted:
            site = sites[i]
            stack.enter_context(patched(site.owner, site.attr, watched(i, getattr(site.owner, site.attr))))
        yield


def attention_probabilities(adapter: Adapter, input_ids: torch.Tensor, layers=None) -> dict[int, torch.Tensor]:
    """{layer: attention probabilities [rows, heads, query, key] (fp32, on the CPU)} of one no-grad forward."""
    probs: dict[int, torch.Tensor] = {}

    def record(index: int, call: KernelCall):
        probs[index] = call.probabilities().detach().cpu()
        return call.run()

    device = next(adapter.model.parameters()).device
    with torch.no_grad(), attention_kernels(adapter, record, layers):
        adapter.model(**adapter.model_inputs(input_ids.to(device)))
    return probs
