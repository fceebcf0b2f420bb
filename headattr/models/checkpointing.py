"""Activation checkpointing of an adapter's layers: keep only each checkpointed layer's input, recompute the rest
in the backward pass (``torch.utils.checkpoint``, non-reentrant).

The users' memory lever (their LLaDA runner's ``--activation_checkpointing whole_layer``, Dream's gradient
checkpointing). Modes: ``none``; ``whole_layer`` (every layer); ``every_k`` (layers 0, k, 2k, ...: OLMo/LLaDA's
``one_in_k``). The checkpoint wraps a layer's ``forward`` (an instance attribute shadowing the class's), so the
module's own forward hooks (prefix caching's input substitution) run once, outside it, while hooks and patched
callables inside the layer (head gates, attention replay) run again in the recomputation with the same inputs:
the forward values, and with them the gradients, are the same as without checkpointing.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from torch.utils.checkpoint import checkpoint

from .adapters import Adapter
from .attention import patched

MODES = ("none", "whole_layer", "every_k")


def checkpointed_layers(n_layers: int, mode: str, every: int = 1) -> list[int]:
    """Indices of the layers ``mode`` checkpoints (``every``: k of ``every_k``)."""
    if mode not in MODES:
        raise ValueError(f"activation_checkpointing {mode!r} is not one of {MODES}")
    if mode == "none":
        return []
    step = 1 if mode == "whole_layer" else int(every)
    if step < 1:
        raise ValueError("checkpoint_every must be >= 1")
    return list(range(0, n_layers, step))


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@contextmanager
def layer_checkpointing(adapter: Adapter, layers: list[int]):
    """Inside, each of ``layers`` of ``adapter`` runs checkpointed; the model is restored exactly on exit."""
    with ExitStack() as stack:
        for i in layers:
            layer = adapter.layers[i]
            stack.enter_context(patched(layer, "forward", _checkpointed(layer.forward)))
        yield
