"""Head gates: one fp32 scalar per (layer, head) scaling that head's slice of the output projection's input.

Gates act after attention, so they work with any attention implementation (eager, SDPA, flash). A gate
tensor has shape [n_layers, n_heads] (shared by every row) or [batch, n_layers, n_heads] (one gate matrix
per row of the batch, which is what lets IG steps and mask probabilities run as rows of one forward pass).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .adapters import Adapter


class HeadGates:
    """Forward pre-hooks on every output projection that multiply head slices by ``self.gates``.

    With ``gates`` None the hooks are identity, so an installed but unset gate changes nothing.
    """

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        self.gates: torch.Tensor | None = None
        self._handles = [
            proj.register_forward_pre_hook(self._make_hook(layer)) for layer, proj in enumerate(adapter.out_projs)
        ]

    def _make_hook(self, layer: int):
        n_heads, head_dim = self.adapter.n_heads, self.adapter.head_dim

        def hook(module, args):
            gates = self.gates
            if gates is None:
                return None
            z = args[0]  # [batch, pos, n_heads * head_dim]
            g = gates[..., layer, :]  # [n_heads] or [batch, n_heads]
            if g.ndim == 2:
                if g.shape[0] != z.shape[0]:
                    raise ValueError(f"gates have {g.shape[0]} rows but the batch has {z.shape[0]}")
                g = g[:, None, :, None]
            else:
                g = g[None, None, :, None]
            z_heads = z.unflatten(-1, (n_heads, head_dim))
            compute = torch.promote_types(z.dtype, torch.float32)
            gated = (z_heads.to(compute) * g.to(compute)).to(z.dtype).flatten(-2)
            return (gated, *args[1:])

        return hook

    def remove(self) -> None:
        """Detach the hooks; the model is exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def gated(adapter: Adapter, gates: torch.Tensor | None = None):
    """Context in which ``adapter.model`` runs with head gates; yields the :class:`HeadGates` to set."""
    head_gates = HeadGates(adapter)
    head_gates.gates = gates
    try:
        yield head_gates
    finally:
        head_gates.remove()


def ones_gates(adapter: Adapter, rows: int | None = None, device=None) -> torch.Tensor:
    """All-on gates, fp32, shape [n_layers, n_heads] or [rows, n_layers, n_heads]."""
    shape = (adapter.n_layers, adapter.n_heads) if rows is None else (rows, adapter.n_layers, adapter.n_heads)
    return torch.ones(shape, dtype=torch.float32, device=device)
