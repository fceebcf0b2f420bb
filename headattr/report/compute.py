"""Compute accounting of attribution jobs, as tables for the reports.

Each attribute job writes :func:`headattr.engine.cost.compute_record` into its shard manifest (``result.compute``): the
row-passes and layer-passes the engine ran, their FLOPs under the cost model, wall seconds of the attribution
loop (model loading excluded), the device and, on CUDA, GPU-hours. A unit (seed, method) sums its shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SUMMED = ("grad_rows", "loss_rows", "layer_forwards", "layer_backwards", "passes", "flops", "wall_s")
COLUMNS = [
    "rows_fwd_bwd/ex",
    "rows_fwd/ex",
    "layer_fwd/ex",
    "layer_bwd/ex",
    "flops",
    "flops/ex",
    "wall_s",
    "device",
    "gpu_hours",
]


def shard_records(manifest_paths) -> list[dict]:
    """The compute records of the shards' manifests (manifests written before compute accounting are skipped)."""
    records = []
    for path in manifest_paths:
        if not Path(path).is_file():
            continue
        rec = json.loads(Path(path).read_text()).get("result", {}).get("compute")
        if rec:
            records.append(rec)
    return records


def unit_compute(manifest_paths) -> dict | None:
    """Sum of a unit's shard records (None when no shard has one): counts, FLOPs, wall s, samples, devices,
    GPU-hours (None unless some shard ran on CUDA)."""
    records = shard_records(manifest_paths)
    if not records:
        return None
    out = {k: sum(r[k] for r in records) for k in SUMMED}
    gpu = [r["gpu_hours"] for r in records if r.get("gpu_hours") is not None]
    return out | {
        "shards": len(records),
        "n_samples": sum(r["n_samples"] for r in records),
        "computed_samples": sum(r["computed_samples"] for r in records),
        "device": ", ".join(sorted({r["device"] for r in records})),
        "gpu_hours": sum(gpu) if gpu else None,
    }


def per_example(total: dict) -> dict:
    """The table columns of one summed record: passes per computed example, FLOPs, wall, device, GPU-hours."""
    n = max(total["computed_samples"], 1)
    return {
        "rows_fwd_bwd/ex": total["grad_rows"] / n,
        "rows_fwd/ex": total["loss_rows"] / n,
        "layer_fwd/ex": total["layer_forwards"] / n,
        "layer_bwd/ex": total["layer_backwards"] / n,
        "flops": total["flops"],
        "flops/ex": total["flops"] / n,
        "wall_s": total["wall_s"],
        "device": total["device"],
        "gpu_hours": total["gpu_hours"],
    }


def compute_table(units: list[dict]) -> pd.DataFrame:
    """One row per unit {method, seed, manifests}: samples computed / in the unit, then :func:`per_example`."""
    rows = []
    for unit in units:
        total = unit_compute(unit.get("manifests", []))
        if total is None:
            continue
        samples = f"{total['computed_samples']}/{total['n_samples']}"
        rows.append({"method": unit["method"], "seed": unit["seed"], "samples": samples} | per_example(total))
    return pd.DataFrame(rows, columns=["method", "seed", "samples", *COLUMNS])


def total_line(table: pd.DataFrame) -> str:
    """One sentence with the table's total FLOPs, wall seconds and GPU-hours."""
    if table.empty:
        return "No compute records (the shard manifests predate compute accounting)."
    gpu = table["gpu_hours"].dropna()
    text = f"Total: {table['flops'].sum():.3g} FLOPs (cost model), {table['wall_s'].sum():.1f} s wall"
    return text + (f", {gpu.sum():.4g} GPU-hours." if len(gpu) else ".")
