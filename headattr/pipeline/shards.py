"""Sharding an attribution over (sample ranges) x (layer ranges, per-layer IG only), and gathering the shards.

A shard is named ``s{a}-{b}_l{c}-{d}``: samples [a, b) of the tokenized order and layers [c, d) (``_lall``:
every layer, which is the case without layer sharding and for joint/layered IG). Masks are
keyed by sample id, samples are attributed one at a time and each layer's rows run on their own, so the
gathered dump equals the unsharded one.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..errors import DumpError

# extras shaped [N, P, Q] like the gap, gathered with it (ig.tol's steps per path)
PER_PATH_EXTRAS = ("extra_steps_used",)
SHARD_RE = re.compile(r"^s(\d+)-(\d+)_l(?:(\d+)-(\d+)|all)$")


def shard_name(samples: tuple[int, int], layers: tuple[int, int] | None) -> str:
    tail = "all" if layers is None else f"{layers[0]}-{layers[1]}"
    return f"s{samples[0]}-{samples[1]}_l{tail}"


def parse_shard(name: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """((first sample, end), (first layer, end) or None for every layer)."""
    match = SHARD_RE.match(name)
    if not match:
        raise ValueError(f"not a shard name: {name!r}")
    a, b, c, d = match.groups()
    return (int(a), int(b)), (None if c is None else (int(c), int(d)))


def _ranges(n: int, size: int | None) -> list[tuple[int, int]]:
    size = n if not size else int(size)
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def plan_shards(
    n_samples: int, n_layers: int, samples_per_shard: int | None, layers_per_shard: int | None, method: str
) -> list[str]:
    """Shard names covering every sample and, when ``layers_per_shard`` is set, every layer range."""
    layer_ranges = _ranges(n_layers, layers_per_shard) if layers_per_shard else [None]
    return [shard_name(s, lay) for s in _ranges(n_samples, samples_per_shard) for lay in layer_ranges]


def gather(shards: list[tuple[str, dict]]) -> tuple[dict, dict]:
    """Combine shard dumps (name, arrays) into the dump of the unsharded run."""
    if not shards:
        raise DumpError("no shards to gather")
    by_samples: dict[tuple[int, int], list[tuple[tuple[int, int], dict]]] = {}
    for name, arrays in shards:
        samples, layers = parse_shard(name)
        by_samples.setdefault(samples, []).append((layers, arrays))
    blocks = []
    for samples in sorted(by_samples):
        parts = sorted(by_samples[samples], key=lambda x: x[0] or (0, 0))
        parts = [a for _, a in parts if a["ig"].shape[0] > 0]
        if not parts:
            continue
        first = parts[0]
        for other in parts[1:]:
            if not np.array_equal(other["sample_ids"], first["sample_ids"]):
                raise DumpError(f"shards of samples {samples} disagree on sample ids")
        block = {k: first[k] for k in ("sample_ids", "categories", "mask_probs", "loss_full", "n_scored")}
        block["ig"] = np.sum([p["ig"] for p in parts], axis=0, dtype=np.float32)
        for key in ("loss_base", "ig_sum", "gap") + PER_PATH_EXTRAS:
            if key in first:
                block[key] = np.concatenate([p[key] for p in parts], axis=2)
        block["path_names"] = np.concatenate([p["path_names"] for p in parts])
        blocks.append(block)
    if not blocks:
        raise DumpError("every shard is empty")
    out = {
        k: np.concatenate([b[k] for b in blocks])
        for k in ("sample_ids", "categories", "ig", "loss_full", "n_scored", "loss_base", "ig_sum", "gap")
        + tuple(k for k in PER_PATH_EXTRAS if k in blocks[0])
    }
    out["mask_probs"] = blocks[0]["mask_probs"]
    out["path_names"] = blocks[0]["path_names"]
    meta = json.loads(str(shards[0][1]["meta_json"]))
    meta["settings"]["layers"] = None
    meta.pop("shard", None)
    return out, meta
