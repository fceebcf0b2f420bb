"""Rule entry points of the analysis layer: pruning validation and attention dispersion, from files to files."""

from __future__ import annotations

import pandas as pd

from ..data.samples import unpack_samples
from ..engine.gate_engine import engine_for
from ..models.loading import load_adapter
from ..objective.masking import unpack_masks
from ..pipeline.dumps import atomic_write, load_dump, load_npz
from ..pipeline.stages import scored_inputs


def attention_dispersion(tokens_path, masks_path, model_cfg: dict, objective: dict, cfg: dict, out) -> dict:
    """Per-head attention dispersion over the attribution samples and masks (eager attention for this pass only),
    written as a head table (see :mod:`headattr.analysis.dispersion`)."""
    from .dispersion import head_dispersion

    samples = unpack_samples(load_npz(tokens_path))
    masks = unpack_masks(load_npz(masks_path))
    _, _, adapter = load_adapter({**model_cfg, "attn_implementation": "eager"})
    scored = scored_inputs(samples, masks, objective, adapter)
    table = head_dispersion(adapter, scored, cfg["block_size"], cfg["topk_frac"])
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
    return {"n_samples": len(samples), "n_heads": len(table)}


def validate_pruning(
    dump_paths: dict,
    tokens_path,
    masks_path,
    model_cfg: dict,
    objective: dict,
    cfg: dict,
    engine_cfg: dict,
    curves_out,
    summary_out,
    postprocess: str = "signed",
    importance_files: dict | None = None,
) -> dict:
    """Deletion curves on held-out samples for every method's ranking (mean post-processed importance over
    samples, see :func:`headattr.pipeline.aggregate.importance_matrix`) and every imported ``head_importance.pt``."""
    from ..pipeline.aggregate import attributed_layers, importance_matrix
    from ..pipeline.exports import load_importance_file
    from .deletion import deletion_curves, deletion_summary, iterative_deletion_curves, reattributor

    # deletion curves rank by ascending score = descending importance, among the attributed heads (ig.layers)
    dumps = {m: load_dump(p) for m, p in dump_paths.items()}
    rankings = {m: -importance_matrix(d, postprocess) for m, d in dumps.items()}
    layers = sorted({layer for d in dumps.values() for layer in attributed_layers(d)})
    samples = unpack_samples(load_npz(tokens_path))
    masks = unpack_masks(load_npz(masks_path))
    model, _, adapter = load_adapter(model_cfg)
    for name, file in (importance_files or {}).items():
        key = f"compare.importance_files.{name}"
        rankings[name] = -load_importance_file(file, adapter.n_layers, adapter.n_heads, key)
    scored = scored_inputs(samples, masks, objective, adapter)
    engine = engine_for(adapter, model_cfg, engine_cfg)
    seeds = list(range(cfg["random_orders"]))
    candidates = [layer * adapter.n_heads + h for layer in layers for h in range(adapter.n_heads)]
    curves = deletion_curves(engine, scored, rankings, cfg["fractions"], seeds=seeds, candidates=candidates)
    if cfg["iterative"]:
        from ..methods.first_order import first_order

        reattribute = {"first_order": reattributor(first_order, engine, scored)}
        curves = pd.concat(
            [
                curves,
                iterative_deletion_curves(
                    engine, scored, reattribute, cfg["fractions"], seeds=seeds, candidates=candidates
                ),
            ],
            ignore_index=True,
        )
    summary = deletion_summary(curves, cfg["tolerance"])
    atomic_write(curves_out, lambda tmp: curves.to_csv(tmp, index=False))
    atomic_write(summary_out, lambda tmp: summary.to_csv(tmp, index=False))
    return {"n_heldout": len(samples), "methods": list(rankings)}
