"""Does an IG run fit its activation-memory budget? Checked from the model's config alone, before its weights load.

The largest pass of every IG method is a gradient pass through all layers (joint and layered rows, per-layer rows
of layer 0 and the shared all-on rows) of sequences up to ``data.max_len`` tokens, scoring ``max(mask_probs)``
of them. With ``ig.rows_per_pass`` set, that many rows must fit; with it null (rows chosen from the budget), one
row must. :func:`activation_bytes` is the memory model (measured within 20 % on LLaDA-8B-shaped slices,
docs/performance-8b.md). A run that does not fit fails with the bytes it needs and the knobs that change them.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..models.checkpointing import checkpointed_layers
from .cost import ModelDims, activation_bytes

GIB = 2**30


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def largest_pass_bytes(
    dims: ModelDims,
    seq_len: int,
    max_mask_prob: float,
    rows: int,
    fused_attention: bool,
    checkpointing: str = "none",
    checkpoint_every: int = 2,
) -> int:
    """Peak activation bytes of ``rows`` gradient rows through every layer (see the module docstring)."""
    layers = checkpointed_layers(dims.n_layers, checkpointing, checkpoint_every)
    return activation_bytes(
        dims,
        seq_len,
        dims.n_layers,
        math.ceil(max_mask_prob * seq_len),
        rows=rows,
        fused_attention=fused_attention,
        checkpointed=len(layers),
        first_checkpointed=0 in layers,
    )


def check_fits(
    dims: ModelDims,
    seq_len: int,
    max_mask_prob: float,
    budget_bytes: int,
    rows_per_pass: int | None,
    fused_attention: bool,
    checkpointing: str = "none",
    checkpoint_every: int = 2,
    budget_source: str = "ig.memory_budget_gib",
) -> int:
    """Bytes of the largest pass; ConfigError naming the knobs when it exceeds ``budget_bytes``."""
    rows = rows_per_pass or 1
    need = largest_pass_bytes(dims, seq_len, max_mask_prob, rows, fused_attention, checkpointing, checkpoint_every)
    if need <= budget_bytes:
        return need
    knobs = [f"raise {budget_source}"]
    if rows_per_pass and rows_per_pass > 1:
        knobs.append("lower ig.rows_per_pass (or null: as many as fit)")
    if checkpointing != "whole_layer":
        saved = largest_pass_bytes(dims, seq_len, max_mask_prob, rows, fused_attention, "whole_layer")
        knobs.append(f"set model.activation_checkpointing: whole_layer ({_size(saved)})")
    knobs.append("lower data.max_len")
    raise ConfigError(
        f"ig.memory_budget_gib: the largest IG pass needs {_size(need)} of activations ({rows} row(s) of "
        f"{seq_len} tokens through {dims.n_layers} layers, model.activation_checkpointing {checkpointing}) but the "
        f"budget ({budget_source}) is {_size(budget_bytes)}: " + "; ".join(knobs)
    )
