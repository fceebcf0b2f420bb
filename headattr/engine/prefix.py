"""Prefix caching: run only layers l..L-1 of a model, fed with cached hidden states entering layer l.

The gates of layer l act inside layer l, so layers below l compute the same thing for every IG row of layer l
(all their gates are 1). :class:`LayerStack` captures the hidden states entering every layer in one all-on
forward pass, and runs a suffix of the layers by swapping the adapter's layer ``ModuleList`` for
``ModuleList(layers[l:])`` on its parent while a forward pre-hook on layer l substitutes the cached input. The
model itself still builds embeddings, rotary tables, attention masks and caches, so this works for any family
whose layer loop iterates over that attribute (checked: a suffix run fails loudly if layer l does not run).

Attention replay: the gates of layer l act after layer l's attention, so that attention (q/k/v projections and
the attention itself) is the same for every row starting at layer l as well. The capture pass also records z,
the input of each layer's output projection, and how the adapter's attention callable (``FamilySpec.attention``)
hands it on: either it returns z itself (BERT's self-attention; the output projection runs after it) or it
returns the output projection of z (LLaMA, Dream, LLaDA, GPT-2, DistilBERT). A suffix run then replaces that
callable of layer l by one that returns the cached z, or the output projection of it, so the gates still act on
z. Both forms are verified on the capture pass by tensor identity; a layer that matches neither is not replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..models.adapters import Adapter, get_submodule
from ..models.attention import attention_sites, patched

HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x")


class PrefixError(RuntimeError):
    """The model does not run its layers in a way prefix caching can shortcut."""


class _Stop(Exception):
    """Raised inside a capture pass once every wanted input is captured (skips the rest of the model)."""


@dataclass(frozen=True)
class ReplayForm:
    """How an attention callable hands z on: returns ``"z"`` or ``"proj"`` (out_proj(z)), alone or first of n."""

    returns: str
    length: int | None


def _first_tensor(out) -> tuple[object, int | None]:
    if torch.is_tensor(out):
        return out, None
    if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        return out[0], len(out)
    return None, None


def _hidden_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | int]:
    if args and torch.is_tensor(args[0]):
        return args[0], 0
    for name in HIDDEN_KWARGS:
        if torch.is_tensor(kwargs.get(name)):
            return kwargs[name], name
    raise PrefixError("cannot find the hidden-state input of a layer (neither positional nor hidden_states=)")


class LayerStack:
    """The adapter's layer list, where it hangs on the model, and the two operations of prefix caching."""

    def __init__(self, adapter: Adapter):
        self.layers = adapter.layers
        for path in adapter.spec.layer_paths:
            if get_submodule(adapter.model, path) is self.layers:
                parent_path, _, self.name = path.rpartition(".")
                self.parent = get_submodule(adapter.model, parent_path) if parent_path else adapter.model
                break
        else:
            raise PrefixError(f"the layer list of {type(adapter.model).__name__} is not at {adapter.spec.layer_paths}")
        self.sites = attention_sites(adapter)

    def capture(
        self, forward: Callable[[], object], layers: Iterable[int], attention: Iterable[int] = ()
    ) -> tuple[dict[int, torch.Tensor], dict[int, tuple[ReplayForm, torch.Tensor]]]:
        """During ``forward()``: hidden states [batch, pos, d] entering each of ``layers``, and for each layer in
        ``attention`` that has a replayable attention site, (its form, z [batch, pos, n_heads * head_dim]).

        Everything is detached. The forward pass is cut short once the last wanted tensor is captured.
        """
        wanted = sorted(set(int(x) for x in layers))
        att_wanted = sorted(i for i in set(int(x) for x in attention) if self.sites[i] is not None)
        captured: dict[int, torch.Tensor] = {}
        replays: dict[int, tuple[ReplayForm, torch.Tensor]] = {}
        last = max([(i, 0) for i in wanted] + [(i, 1) for i in att_wanted], default=None)

        def layer_hook(index: int):
            def hook(module, args, kwargs):
                captured[index] = _hidden_input(args, kwargs)[0].detach()
                if (index, 0) == last:
                    raise _Stop

            return hook

        with ExitStack() as stack:
            for i in wanted:
                stack.callback(self.layers[i].register_forward_pre_hook(layer_hook(i), with_kwargs=True).remove)
            for i in att_wanted:
                self._watch_attention(stack, i, replays, (i, 1) == last)
            try:
                forward()
            except _Stop:
                pass
        missing = [i for i in wanted if i not in captured]
        if missing:
            raise PrefixError(f"layers {missing} never ran during the capture pass")
        return captured, replays

    def _watch_attention(self, stack: ExitStack, index: int, replays: dict, stop: bool) -> None:
        """Record layer ``index``'s z and replay form during a capture pass (see the module docstring)."""
        site = self.sites[index]
        original = getattr(site.owner, site.attr)
        seen: dict[str, object] = {}

        def proj_pre(module, args):
            returned_first = "slot" in seen and "z" not in seen  # the callable returned before the projection ran
            z = seen["z"] = args[0]
            if returned_first:
                if seen["slot"] is z:
                    replays[index] = (ReplayForm("z", seen["form"]), z.detach())
                if stop:
                    raise _Stop

        def proj_post(module, args, out):
            seen["proj_out"] = out

        def watched(*args, **kwargs):
            seen.clear()
            out = original(*args, **kwargs)
            slot, length = _first_tensor(out)
            z, proj_out = seen.get("z"), seen.get("proj_out")
            if z is not None:  # the projection ran inside the callable
                if slot is not None and slot is proj_out:
                    replays[index] = (ReplayForm("proj", length), z.detach())
                if stop:
                    raise _Stop
                return out
            seen.update(slot=slot, form=length)
            return out

        stack.enter_context(patched(site.owner, site.attr, watched))
        stack.callback(site.proj.register_forward_pre_hook(proj_pre).remove)
        stack.callback(site.proj.register_forward_hook(proj_post).remove)

    @contextmanager
    def suffix(
        self,
        start: int,
        hidden: Callable[[], torch.Tensor] | torch.Tensor,
        replay: tuple[ReplayForm, Callable[[], torch.Tensor]] | None = None,
    ):
        """Inside, the model runs only ``layers[start:]``, with ``hidden`` [batch, pos, d] entering layer ``start``.

        ``hidden`` may be a callable (evaluated when layer ``start`` runs). ``replay`` (form, z callable) replaces
        layer ``start``'s attention by the cached z (see the module docstring). Yields a list that gets ``start``
        per run of layer ``start`` and ``"attention"`` per replayed attention (None for ``start == 0``, a plain
        run); a run of layer ``start - 1`` raises :class:`PrefixError`. The model is restored exactly on exit
        (same ``ModuleList`` object, no hook or patched attribute left).
        """
        if start == 0:
            yield
            return
        first = self.layers[start]
        calls = []

        def hook(module, args, kwargs):
            current, where = _hidden_input(args, kwargs)
            new = hidden() if callable(hidden) else hidden
            if new.shape != current.shape:
                raise PrefixError(f"cached hidden states {tuple(new.shape)} do not match {tuple(current.shape)}")
            calls.append(start)
            if where == 0:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, where: new}

        def below(module, args):
            raise PrefixError(f"layer {start - 1} ran in a suffix run: the model does not loop over its layer list")

        with ExitStack() as stack:
            stack.callback(first.register_forward_pre_hook(hook, with_kwargs=True).remove)
            stack.callback(self.layers[start - 1].register_forward_pre_hook(below).remove)
            if replay is not None:
                stack.enter_context(self._replayed(start, *replay, calls))
            setattr(self.parent, self.name, nn.ModuleList(list(self.layers)[start:]))
            stack.callback(setattr, self.parent, self.name, self.layers)
            yield calls

    def _replayed(self, index: int, form: ReplayForm, z: Callable[[], torch.Tensor], calls: list):
        """Layer ``index``'s attention callable patched to hand on the cached z in the captured form."""
        site = self.sites[index]

        def replay(*args, **kwargs):
            cached = z()
            try:
                current = _hidden_input(args, kwargs)[0]
            except PrefixError:
                current = None
            if current is not None and cached.shape[:-1] != current.shape[:-1]:
                raise PrefixError(f"cached attention {tuple(cached.shape)} does not fit input {tuple(current.shape)}")
            calls.append("attention")
            value = site.proj(cached) if form.returns == "proj" else cached
            return value if form.length is None else (value, *([None] * (form.length - 1)))

        return patched(site.owner, site.attr, replay)
