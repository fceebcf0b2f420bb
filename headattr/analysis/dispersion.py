"""Attention dispersion of every head through the model (the dispersion pass; never part of an IG pass).

The model runs with ``output_attentions=True`` (it must be loaded with eager attention: fused kernels return no
probabilities), one forward per sample over its rows (one per mask probability and draw, the inputs IG scores);
each layer's probabilities [rows, H, Q, K] give per-head metrics by :func:`headattr.stats.dispersion.dispersion`
(key blocks averaged over rows and queries). Samples differ in length, hence in key blocks, so the metrics are
computed per sample and averaged over samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..pipeline.aggregate import head_label
from ..stats.dispersion import dispersion

METRICS = ("entropy", "entropy_norm", "effective_blocks", "topk_mass")


def sample_attentions(adapter, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of every layer, [rows, H, Q, K] each, for ``input_ids`` [rows, pos]."""
    device = next(adapter.model.parameters()).device
    try:
        with torch.no_grad():
            out = adapter.model(**adapter.model_inputs(input_ids.to(device)), output_attentions=True)
    except TypeError:  # a forward without output_attentions
        out = None
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions) or len(attentions) != adapter.n_layers:
        raise ConfigError(
            f"dispersion.enabled: the {adapter.family} model returned no attention probabilities for "
            "output_attentions=True (it needs model.attn_implementation eager support); set dispersion.enabled: false"
        )
    return [a.float().cpu() for a in attentions]


def head_dispersion(adapter, scored_inputs, block_size: int = 1, topk_frac: float = 0.1) -> pd.DataFrame:
    """Per head (layer, head, label): the mean over samples of each dispersion metric, and n_samples."""
    if not scored_inputs:
        raise ConfigError("dispersion: no samples to compute attention dispersion on")
    sums = {m: np.zeros((adapter.n_layers, adapter.n_heads)) for m in METRICS}
    for scored in scored_inputs:
        for layer, attn in enumerate(sample_attentions(adapter, scored.input_ids)):
            values = dispersion(attn.numpy(), block_size, topk_frac)
            for m in METRICS:
                sums[m][layer] += values[m]
    n = len(scored_inputs)
    layer, head = np.divmod(np.arange(adapter.n_layers * adapter.n_heads), adapter.n_heads)
    labels = [head_label(a, b) for a, b in zip(layer, head, strict=True)]
    table = pd.DataFrame({"layer": layer, "head": head, "label": labels})
    for m in METRICS:
        table[m] = (sums[m] / n).ravel()
    return table.assign(n_samples=n)


def importance_correlation(heads: pd.DataFrame, disp: pd.DataFrame) -> dict:
    """Spearman rho of a unit's importance (heads.csv) with each dispersion metric over all heads."""
    from scipy.stats import spearmanr

    merged = heads[["layer", "head", "importance"]].merge(disp, on=["layer", "head"], validate="one_to_one")
    return {m: float(spearmanr(merged["importance"], merged[m]).statistic) for m in METRICS}
