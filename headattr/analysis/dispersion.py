"""Attention dispersion of every head through the model (the dispersion pass; never part of an IG pass).

The probabilities come from the attention hook (:mod:`headattr.models.attention`: computed from q and k inside
each layer's attention call), so every family gives them, LLaDA included, with eager or SDPA attention. One
forward per sample over its rows (one per mask probability and draw, the inputs IG scores); each layer's
probabilities [rows, H, Q, K] give per-head metrics by :func:`headattr.stats.dispersion.dispersion` (key blocks
averaged over rows and the queries of ``query_span``). Samples differ in length, hence in key blocks, so the
metrics are computed per sample and averaged over samples.

``query_span`` (the users' ``--query_span``): ``all`` queries, the sample's ``target`` region
[target_start, target_end), or the ``last_n`` positions. ``per_mask_prob`` adds, per mask probability p, the
metrics over that p's rows only (columns ``<metric>_p<p>``): attention sinks of diffusion LMs move with the
noise level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..models.attention import AttentionHookError, attention_probabilities
from ..pipeline.aggregate import head_label
from ..stats.dispersion import dispersion

METRICS = ("entropy", "entropy_norm", "effective_blocks", "topk_mass")
QUERY_SPANS = ("all", "target", "last_n")


def sample_attentions(adapter, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of every layer, [rows, H, Q, K] each, for ``input_ids`` [rows, pos]."""
    try:
        probs = attention_probabilities(adapter, input_ids)
    except AttentionHookError as err:
        raise ConfigError(f"dispersion.enabled: {err}; set dispersion.enabled: false") from err
    return [probs[i] for i in range(adapter.n_layers)]


def query_positions(span: str, length: int, target: tuple[int, int] | None = None, last_n: int = 1) -> slice:
    """The query positions of ``span`` in a sequence of ``length`` (``target``: [start, end) of the sample)."""
    if span == "all":
        return slice(0, length)
    if span == "target":
        if target is None or not 0 <= target[0] < target[1] <= length:
            raise ConfigError(f"dispersion.query_span: target: the sample has no target region in [0, {length})")
        return slice(*target)
    if span == "last_n":
        if last_n < 1:
            raise ConfigError(f"dispersion.last_n: must be >= 1, got {last_n}")
        return slice(max(0, length - last_n), length)
    raise ConfigError(f"dispersion.query_span: {span!r} is not one of {QUERY_SPANS}")


def _column(metric: str, p: float | None) -> str:
    """The table column of ``metric`` over all rows (``p`` None) or over the rows of mask probability ``p``."""
    return metric if p is None else f"{metric}_p{p:g}"


def head_dispersion(
    adapter,
    scored_inputs,
    block_size: int = 1,
    topk_frac: float = 0.1,
    query_span: str = "all",
    targets: list[tuple[int, int]] | None = None,
    last_n: int = 1,
    per_mask_prob: bool = False,
) -> pd.DataFrame:
    """Per head (layer, head, label): the mean over samples of each dispersion metric, and n_samples.

    ``targets``: the [start, end) target region of each scored input (for ``query_span: target``)."""
    if not scored_inputs:
        raise ConfigError("dispersion: no samples to compute attention dispersion on")
    sums: dict[tuple[str, float | None], np.ndarray] = {}
    counts: dict[float | None, int] = {}
    for i, scored in enumerate(scored_inputs):
        length = scored.input_ids.shape[1]
        queries = query_positions(query_span, length, targets[i] if targets else None, last_n)
        probs = np.asarray(scored.mask_probs)
        groups = {None: probs == probs} | ({float(p): probs == p for p in np.unique(probs)} if per_mask_prob else {})
        for p in groups:
            counts[p] = counts.get(p, 0) + 1
        for layer, attn in enumerate(sample_attentions(adapter, scored.input_ids)):
            attn = attn[:, :, queries].numpy()
            for p, rows in groups.items():
                values = dispersion(attn[rows], block_size, topk_frac)
                for m in METRICS:
                    sums.setdefault((m, p), np.zeros((adapter.n_layers, adapter.n_heads)))[layer] += values[m]
    layer, head = np.divmod(np.arange(adapter.n_layers * adapter.n_heads), adapter.n_heads)
    labels = [head_label(a, b) for a, b in zip(layer, head, strict=True)]
    table = pd.DataFrame({"layer": layer, "head": head, "label": labels})
    for (m, p), total in sums.items():
        table[_column(m, p)] = (total / counts[p]).ravel()
    return table.assign(n_samples=len(scored_inputs))


def importance_correlation(heads: pd.DataFrame, disp: pd.DataFrame) -> dict:
    """Spearman rho of a unit's importance (heads.csv) with each dispersion metric over all heads."""
    from scipy.stats import spearmanr

    merged = heads[["layer", "head", "importance"]].merge(disp, on=["layer", "head"], validate="one_to_one")
    return {m: float(spearmanr(merged["importance"], merged[m]).statistic) for m in METRICS}
