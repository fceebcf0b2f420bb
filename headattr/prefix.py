"""Prefix caching: run only layers l..L-1 of a model, fed with cached hidden states entering layer l.

The gates of layer l act inside layer l, so layers below l compute the same thing for every IG row of layer l
(all their gates are 1). :class:`LayerStack` captures the hidden states entering every layer in one all-on
forward pass, and runs a suffix of the layers by swapping the adapter's layer ``ModuleList`` for
``ModuleList(layers[l:])`` on its parent while a forward pre-hook on layer l substitutes the cached input. The
model itself still builds embeddings, rotary tables, attention masks and caches, so this works for any family
whose layer loop iterates over that attribute (checked: a suffix run fails loudly if layer l does not run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from .models.adapters import Adapter, get_submodule

HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x")


class PrefixError(RuntimeError):
    """The model does not run its layers in a way prefix caching can shortcut."""


class _Stop(Exception):
    """Raised inside a capture pass once every wanted input is captured (skips the rest of the model)."""


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

    def capture(self, forward: Callable[[], object], layers: Iterable[int]) -> dict[int, torch.Tensor]:
        """Hidden states [batch, pos, d] entering each of ``layers`` during ``forward()`` (detached).

        The forward pass is cut short once the highest wanted layer's input is captured.
        """
        wanted = sorted(set(int(x) for x in layers))
        captured: dict[int, torch.Tensor] = {}
        last = wanted[-1] if wanted else -1

        def make_hook(index: int):
            def hook(module, args, kwargs):
                captured[index] = _hidden_input(args, kwargs)[0].detach()
                if index == last:
                    raise _Stop

            return hook

        handles = [self.layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in wanted]
        try:
            forward()
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i in wanted if i not in captured]
        if missing:
            raise PrefixError(f"layers {missing} never ran during the capture pass")
        return captured

    @contextmanager
    def suffix(self, start: int, hidden: Callable[[], torch.Tensor] | torch.Tensor):
        """Inside, the model runs only ``layers[start:]``, with ``hidden`` [batch, pos, d] entering layer ``start``.

        ``hidden`` may be a callable (evaluated when layer ``start`` runs). Yields a list that gets one entry per
        run of layer ``start`` (None for ``start == 0``, a plain run); a run of layer ``start - 1`` raises
        :class:`PrefixError`. The model is restored exactly on exit (same ``ModuleList`` object, no hook left).
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

        handles = [
            first.register_forward_pre_hook(hook, with_kwargs=True),
            self.layers[start - 1].register_forward_pre_hook(below),
        ]
        setattr(self.parent, self.name, nn.ModuleList(list(self.layers)[start:]))
        try:
            yield calls
        finally:
            setattr(self.parent, self.name, self.layers)
            for handle in handles:
                handle.remove()
