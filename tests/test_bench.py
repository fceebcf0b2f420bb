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
    assert _bench().main(argv) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.startswith("llama-smoke")]
    impls = {(row[1], row[2]) for row in table}
    assert impls == {
        ("per_layer", name) for name in ("engine", "engine-igonly", "engine-noprefix", "captum", "plain")
    } | {("joint", name) for name in ("engine", "engine-igonly", "captum", "plain")}
    assert all(row[-1] == "ok" for row in table)
