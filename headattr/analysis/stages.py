"""Rule entry points of the analysis layer, from files to files: diagnostics tables, pruning validation and
attention dispersion."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.samples import unpack_samples
from ..engine.gate_engine import engine_for
from ..models.loading import load_adapter
from ..objective.masking import unpack_masks
from ..pipeline.dumps import atomic_write, load_dump, load_npz
from ..pipeline.exports import load_importance_file
from ..pipeline.stages import scored_inputs
from .diagnostics import method_diagnostics, seed_diagnostics, unit_diagnostics, write_tables


def attention_dispersion(tokens_path, masks_path, model_cfg: dict, objective: dict, cfg: dict, out) -> dict:
    """Per-head attention dispersion over the attribution samples and masks, written as a head table (see
    :mod:`headattr.analysis.dispersion`; the probabilities come from the attention hook, any implementation)."""
    from .dispersion import head_dispersion

    samples = unpack_samples(load_npz(tokens_path))
    masks = unpack_masks(load_npz(masks_path))
    _, _, adapter = load_adapter(model_cfg)
    scored = scored_inputs(samples, masks, objective, adapter)
    table = head_dispersion(
        adapter,
        scored,
        cfg["block_size"],
        cfg["topk_frac"],
        query_span=cfg.get("query_span", "all"),
        targets=[(s.target_start, s.target_end) for s in samples],
        last_n=cfg.get("last_n", 1),
        per_mask_prob=cfg.get("per_mask_prob", False),
    )
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
    samples, see :func:`headattr.pipeline.aggregate.importance_matrix`) and every imported ``head_importance.pt``.

    Curves are evaluated per sample; ``curves_out`` has their means with bootstrap intervals over samples,
    ``summary_out`` AOPC with intervals over samples and random orders (``validation.n_boot`` resamples), the
    random orders' band and p, the uniform predictor's loss and accuracy (``chance_loss``, ``chance_accuracy``) and
    each method's task-specific criterion (:mod:`headattr.analysis.verdicts`)."""
    import math

    from ..pipeline.aggregate import attributed_layers, importance_matrix
    from .deletion import curve_means, deletion_curves, deletion_summary, iterative_deletion_curves, reattributor
    from .verdicts import pruning_criterion

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
    per = {"seeds": seeds, "candidates": candidates, "per_sample": True}
    curves = deletion_curves(engine, scored, rankings, cfg["fractions"], **per)
    if cfg["iterative"]:
        from ..methods.first_order import first_order

        reattribute = {"first_order": reattributor(first_order, engine, scored)}
        curves = pd.concat(
            [
                curves,
                iterative_deletion_curves(engine, scored, reattribute, cfg["fractions"], **per),
            ],
            ignore_index=True,
        )
    n_boot = cfg.get("n_boot", 2000)
    summary = deletion_summary(curves, cfg["tolerance"], n_boot=n_boot)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    summary = summary.assign(
        chance_loss=math.log(vocab) if vocab else math.nan, chance_accuracy=1 / vocab if vocab else math.nan
    )
    means = curve_means(curves, n_boot=n_boot)
    summary = summary.merge(pruning_criterion(means), on=["mode", "method"], how="left")
    atomic_write(curves_out, lambda tmp: means.to_csv(tmp, index=False))
    atomic_write(summary_out, lambda tmp: summary.to_csv(tmp, index=False))
    return {"n_heldout": len(samples), "methods": list(rankings)}


def unit_tables(dump_path, cfg: dict, postprocess: str, out_dir) -> list[Path]:
    """Rule diagnose_unit: the diagnostics of one (seed, method) dump, written as tables."""
    return write_tables(unit_diagnostics(load_dump(dump_path), dict(cfg), postprocess), out_dir)


def seed_tables(dump_a, dump_b, labels, cfg: dict, postprocess: str, out_dir) -> list[Path]:
    """Rule diagnose_seeds: agreement of one method between two seeds, written as tables."""
    tables = seed_diagnostics(load_dump(dump_a), load_dump(dump_b), labels, dict(cfg), postprocess)
    return write_tables(tables, out_dir)


def method_tables(dump_paths: dict, imported_files: dict, cfg: dict, postprocess: str, out_dir) -> list[Path]:
    """Rule diagnose_methods: agreement between the methods of one seed and the imported importance files."""
    by_method = {m: load_dump(p) for m, p in dump_paths.items()}
    shape = next(iter(by_method.values()))["ig"].shape[2:]
    imported = {k: load_importance_file(p, *shape, key=k) for k, p in imported_files.items()}
    return write_tables(method_diagnostics(by_method, dict(cfg), imported, postprocess), out_dir)
