"""One function per stage of the workflow DAG, from explicit arguments to files on disk.

Rule scripts call these with ``snakemake.input/params/output``; each writes its outputs atomically, so an
interrupted stage leaves no file that looks finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data.samples import pack_samples, unpack_samples
from ..data.sources import draw_order, read_table, to_records
from ..engine.gate_engine import engine_for
from ..errors import ConfigError, DataError
from ..models.loading import load_adapter, model_family_and_shift, objective_needs_mask
from ..objective.masking import draw_masks, pack_masks, unpack_masks
from .aggregate import aggregate, completeness_table
from .attribute import AttributionSettings, run_attribution
from .checks import check_memory, job_budget
from .dumps import atomic_write, load_dump, load_npz, save_npz


def sample_data(
    source: str,
    fields: dict,
    max_samples: int,
    stratify: bool,
    seed: int,
    out: str | Path,
    on_bad_record: str = "error",
    split: str = "train",
) -> dict:
    """Read the source and write every record in the seeded draw order as jsonl (one normalised record a line).

    The tokenize stage walks this order and keeps the first ``max_samples`` valid samples (then the held-out
    ones), so a dropped record is replaced by the next of the same draw. Bad records (with
    ``on_bad_record="skip"``) stay in the order, flagged ``skip``, so the walk counts them where they fall.
    """
    records = to_records(read_table(source, split), fields, on_bad_record)
    order = draw_order(records, seed, stratify)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in order)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    skipped: dict[str, int] = {}
    for rec in records:
        if rec.get("skip"):
            skipped[rec["skip"]] = skipped.get(rec["skip"], 0) + 1
    return {
        "n_records": len(records),
        "n_usable": len(records) - sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "asked": max_samples,
        "categories": sorted({r["category"] for r in records}),
    }


def read_records(path) -> list[dict]:
    """The records written by :func:`sample_data`, in draw order."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def tokenize(
    records_path,
    model_cfg: dict,
    max_len: int,
    length_policy: str,
    chat_template: bool,
    out,
    objective: str = "diffusion",
    n: int | None = None,
    heldout: int = 0,
    stratify: bool = False,
    options: dict | None = None,
) -> dict:
    """Tokenize the drawn records with the model's tokenizer and write the packed samples.

    The first ``n`` valid samples of the draw order (all when None), or with ``heldout`` the ``heldout``
    valid samples after them (disjoint from the attribution samples). Fewer than ``n`` valid samples is an
    error saying how many were found and why the rest were dropped; fewer held-out samples than asked are
    recorded (``asked`` / ``n_kept``), none is an error.
    """
    from transformers import AutoTokenizer

    from ..data.tokenize import TokenizeOptions, select_samples

    _, shift = model_family_and_shift(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_cfg["path"], trust_remote_code=model_cfg["trust_remote_code"])
    if (
        objective == "diffusion"
        and model_cfg.get("mask_token_id") is None
        and objective_needs_mask(model_cfg, tokenizer)
    ):
        raise ConfigError(
            f"model.mask_token_id: the tokenizer of {model_cfg['path']!r} has no mask token and the model family "
            "has no known mask id; set model.mask_token_id (or use objective.kind: causal)"
        )
    records = read_records(records_path)
    opts = TokenizeOptions(**{k: v for k, v in (options or {}).items() if k in TokenizeOptions.__dataclass_fields__})
    target = None if n is None else n + heldout
    samples, report = select_samples(
        records, tokenizer, max_len, length_policy, chat_template, shift, target, stratify, opts
    )
    if n is not None and len(samples) < n:
        raise DataError(
            f"data.max_samples: found only {len(samples)} valid samples of {n} asked in {len(records)} records "
            f"(skipped: {report.as_dict()['skipped']}); lower data.max_samples, use another source, or change "
            "data.max_len / data.length_policy / data.on_bad_record"
        )
    if heldout:
        samples = samples[n:]
        report.asked, report.n_kept = heldout, len(samples)
        if not samples:
            raise DataError(
                f"validation.n_samples: no records left for held-out validation after the {n} attribution samples "
                f"({len(records)} records, skipped: {report.as_dict()['skipped']}); lower data.max_samples or "
                "validation.n_samples (or set validation.enabled: false)"
            )
    save_npz(out, pack_samples(samples), {"tokenize": report.as_dict()})
    return report.as_dict()


def save_masks(out, samples, drawn: dict, probs, mask_mode: str, seed: int, shift: bool, mask_samples: int = 1) -> None:
    """The drawn masks as ``masks.npz`` (:func:`headattr.objective.masking.pack_masks` and how they were drawn)."""
    save_npz(
        out,
        pack_masks(samples, drawn, probs, mask_samples),
        {"mask_mode": mask_mode, "mask_seed": seed, "shift": shift}
        | ({"mask_samples": mask_samples} if mask_samples > 1 else {}),
    )


def masks(
    tokens_path, model_cfg: dict, kind: str, mask_probs, mask_mode: str, seed: int, out, mask_samples: int = 1
) -> dict:
    """Draw the masks every method will score (keyed by seed, sample id, p and draw s < ``mask_samples``)."""
    _, shift = model_family_and_shift(model_cfg)
    samples = unpack_samples(load_npz(tokens_path))
    probs = [1.0] if kind == "causal" else list(mask_probs)
    if kind == "causal":
        mask_samples = 1
        drawn = {s.sample_id: np.zeros((1, s.length), dtype=bool) for s in samples}
    else:
        drawn = draw_masks(samples, probs, mask_mode, seed, shift, mask_samples)
    save_masks(out, samples, drawn, probs, mask_mode, seed, shift, mask_samples)
    counts = [int(m.sum()) for m in drawn.values()]
    return {"n_samples": len(samples), "masked_tokens_total": int(np.sum(counts))}


def attribute(
    tokens_path,
    masks_path,
    model_cfg: dict,
    settings: dict,
    engine_cfg: dict,
    out,
    checkpoint_dir=None,
    meta: dict | None = None,
    shard: str | None = None,
) -> dict:
    """Load the model, run IG over the shard's samples and layers (checkpointing per sample), write the dump."""
    from .shards import parse_shard

    samples = unpack_samples(load_npz(tokens_path))
    if shard is not None:
        (first, end), layers = parse_shard(shard)
        samples = samples[first:end]
        if layers is not None:
            settings = {**settings, "layers": list(range(*layers))}
    mask_arrays = load_npz(masks_path)
    mask_ids = {str(s) for s in mask_arrays["sample_ids"]}
    if not {s.sample_id for s in samples} <= mask_ids:
        raise DataError(f"{masks_path}: masks were drawn for other samples than {tokens_path}")
    budget = job_budget(model_cfg, engine_cfg)
    if budget is not None and samples:
        seq_len = max(s.length for s in samples)
        probs = settings.get("mask_probs") or [1.0]
        check_memory(model_cfg, engine_cfg, seq_len, probs, budget[0], source=budget[1])  # before the weights load
    model, _, adapter = load_adapter(model_cfg)
    run_settings = AttributionSettings(**settings).validate()
    if samples and run_settings.method in ("per_layer", "joint", "layered"):
        from ..engine.cost import estimate_from_model, format_estimate

        seq_len = int(round(np.mean([s.length for s in samples])))
        est = estimate_from_model(
            model,
            seq_len,
            len(samples),
            len(run_settings.mask_probs),
            run_settings.steps,
            "per_layer" if run_settings.method == "per_layer" else "joint",
            rule=run_settings.rule,
            rows_per_pass=engine_cfg.get("rows_per_pass") or 16,
        )
        print(format_estimate(est), flush=True)
    from ..engine.cost import compute_record

    engine = engine_for(adapter, model_cfg, engine_cfg)
    started, stats = time.perf_counter(), {}
    arrays, full_meta = run_attribution(
        engine,
        samples,
        unpack_masks(mask_arrays),
        run_settings,
        {**(meta or {}), "shard": shard},
        checkpoint_dir=checkpoint_dir,
        fingerprint=str(((meta or {}).get("params") or {}).get("model", {}).get("files_sha256") or ""),
        stats=stats,
    )
    wall = time.perf_counter() - started
    save_npz(out, arrays, full_meta)
    return {
        "n_samples": len(samples),
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "family": adapter.family,
        "compute": compute_record(engine.counts, wall, engine.device, len(samples), stats.get("resumed", 0)),
    }


def gather_and_aggregate(
    shard_paths, dump_out, heads_out, completeness_out, exports=None, postprocess: str = "signed"
) -> dict:
    """Gather shard dumps into the run's dump, then write its per-head and completeness tables (and exports)."""
    from .shards import gather

    arrays, meta = gather([(Path(p).stem, load_npz(p)) for p in shard_paths])
    save_npz(dump_out, arrays, meta)
    return aggregate_dump(dump_out, heads_out, completeness_out, exports, postprocess)


def aggregate_dump(dump_path, heads_out, completeness_out, exports=None, postprocess: str = "signed") -> dict:
    """Per-head table and per-(sample, p, path) completeness table of a dump; with ``exports`` =
    (head_importance.pt, per_sample_ig.pt) paths also the users' files (see :mod:`headattr.pipeline.exports`)."""
    arrays = load_dump(dump_path)
    heads = aggregate(arrays, postprocess)
    comp = completeness_table(arrays)
    atomic_write(heads_out, lambda tmp: heads.to_csv(tmp, index=False))
    atomic_write(completeness_out, lambda tmp: comp.to_csv(tmp, index=False))
    if exports is not None:
        from .exports import write_exports

        write_exports(arrays, heads, *exports)
    return {"gap_abs_max": float(comp["gap"].abs().max()), "gap_rel_max": float(comp["rel_gap"].max())}


def scored_inputs(samples, masks: dict, objective: dict, adapter) -> list:
    """The scored inputs (one row per mask probability and draw) of ``samples`` under the ``objective`` config."""
    from ..objective.loss import build_scored_input

    probs = [1.0] if objective["kind"] == "causal" else objective["mask_probs"]
    return [
        build_scored_input(
            s,
            None if objective["kind"] == "causal" else masks[s.sample_id],
            probs,
            objective["kind"],
            objective["weighting"],
            adapter.mask_token_id,
            adapter.shift_logits,
            objective.get("mask_samples", 1) if objective["kind"] == "diffusion" else 1,
        )
        for s in samples
    ]
