"""Compute accounting: the record an attribute job writes, summed per unit, and the report tables."""

import json

import pytest

from headattr.engine.cost import PassCounts, compute_record
from headattr.report.compute import compute_table, total_line, unit_compute


def _manifest(path, counts: PassCounts, wall, n, resumed=0, device="cpu"):
    record = compute_record(counts, wall, device, n, resumed)
    path.write_text(json.dumps({"result": {"compute": record}}))
    return path


def test_record_sums_per_unit_and_divides_by_computed_samples(tmp_path):
    a = PassCounts(grad_rows=30, loss_rows=12, layer_forwards=87, layer_backwards=63, passes=9, flops_forward=1e6)
    b = PassCounts(grad_rows=10, loss_rows=4, layer_forwards=29, layer_backwards=21, passes=3, flops_forward=5e5)
    rec = compute_record(a, 2.5, "cpu", 3, resumed=1)
    assert rec["computed_samples"] == 2 and rec["gpu_hours"] is None and rec["device"].startswith("cpu (")
    assert rec["flops"] == 1e6 and rec["wall_s"] == 2.5
    paths = [_manifest(tmp_path / "s0.json", a, 2.5, 3, 1), _manifest(tmp_path / "s1.json", b, 1.0, 1)]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"result": {"n_samples": 2}}))  # written before compute accounting: skipped
    total = unit_compute([*paths, old])
    assert (total["grad_rows"], total["computed_samples"], total["n_samples"], total["shards"]) == (40, 3, 4, 2)
    table = compute_table([{"method": "per_layer", "seed": 1, "manifests": [*paths, old]}])
    row = table.iloc[0]
    assert row["samples"] == "3/4" and row["rows_fwd_bwd/ex"] == pytest.approx(40 / 3)
    assert row["layer_fwd/ex"] == pytest.approx(116 / 3) and row["flops"] == 1.5e6 and row["wall_s"] == 3.5
    assert "1.5e+06 FLOPs" in total_line(table) and "GPU-hours" not in total_line(table)
    assert compute_table([{"method": "joint", "seed": 1, "manifests": [old]}]).empty
    assert "predate" in total_line(compute_table([]))


def test_gpu_hours_only_for_cuda_records(tmp_path):
    rec = {**compute_record(PassCounts(), 7200.0, "cpu", 1), "device": "cuda:0 (H200)", "gpu_hours": 2.0}
    (tmp_path / "m.json").write_text(json.dumps({"result": {"compute": rec}}))
    table = compute_table([{"method": "joint", "seed": 0, "manifests": [tmp_path / "m.json"]}])
    assert table.iloc[0]["gpu_hours"] == 2.0 and total_line(table).endswith("2 GPU-hours.")
