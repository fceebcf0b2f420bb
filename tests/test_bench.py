"""The benchmark script runs end to end on a small LLaMA and reports that every implementation agrees."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ig.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ig", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_all_implementations_agree(capsys):
    argv = ["--size", "llama-smoke", "--steps", "2", "--no-memory", "--captum-batch", "4", "--threads", "1"]
    assert _bench().main([*argv, "--roofline", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.startswith("llama-smoke")]
    impls = {(row[1], row[2]) for row in table}
    assert impls == {
        ("per_layer", name) for name in ("engine", "engine-igonly", "engine-noprefix", "captum", "plain")
    } | {("joint", name) for name in ("engine", "engine-igonly", "captum", "plain")}
    assert all(row[-1] == "ok" for row in table)
    # the roofline block: every implementation, its counted FLOPs as in the table, and a bound no run exceeds
    roof = [line.split() for line in out.split("roofline:")[1].splitlines() if line.startswith(("per_layer", "joint"))]
    assert {(r[0], r[1]) for r in roof} == impls
    gflop = {(row[1], row[2]): float(row[-5]) for row in table}
    for method, impl, flop, share, ratio, bound in roof:
        assert float(flop) == gflop[method, impl] and 0 < float(share) <= 100
        assert float(bound) >= float(ratio) > 0


def test_time_to_completeness_row_reaches_the_tolerance_both_ways(capsys):
    argv = ["--size", "llama-smoke", "--steps", "2", "--completeness", "0.3", "--threads", "1", "--clock", "cpu"]
    assert _bench().main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("per_layer", "joint"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("per_layer", "plain"),
        ("per_layer", "engine"),
        ("joint", "plain"),
        ("joint", "engine"),
    ]
    for row in rows:
        steps, gap, ratio = int(row[-5]), float(row[-4]), float(row[-1])
        assert gap <= 0.3 and steps >= 2 and ratio > 0
    plain_steps = int(rows[0][-5])
    assert plain_steps in (2, 4, 8, 16, 32) and int(rows[1][-5]) <= plain_steps  # doubled from 2


def test_stp_time_to_completeness_rows_reach_the_tolerance(capsys):
    argv = ["--size", "llama-smoke", "--steps", "2", "--completeness", "0.3", "--threads", "1", "--clock", "cpu"]
    assert _bench().main([*argv, "--methods", "stp", "stp_layer", "--path-samples", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("stp")]
    assert [(r[0], r[2]) for r in rows] == [(m, rule) for m in ("stp", "stp_layer") for rule in RULES]
    evaluations = dict(zip(RULES, ((2, 4, 8, 16, 32), (3, 5, 9, 17, 33), (4, 8, 16, 32)), strict=True))
    for row in rows:
        steps, gap, ratio = int(row[-5]), float(row[-4]), float(row[-1])
        assert gap <= 0.3 and ratio > 0 and steps in evaluations[row[2]]  # doubled from 2 steps, 1 node per level
    for plain, trapezoid in (rows[0], rows[1]), (rows[3], rows[4]):
        assert int(trapezoid[-5]) <= int(plain[-5]) + 1  # second order needs no more nodes than the users' rule


RULES = ("riemann_stieltjes", "trapezoid_stieltjes", "gauss_segments")
