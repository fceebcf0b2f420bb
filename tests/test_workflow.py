"""The Snakemake workflow on a tiny project: dry runs, lint, a full run, incremental rebuilds, config errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import N_HEADS, N_LAYERS, job_stats, write_tiny_project

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def snakemake(cwd, *args, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_tables_not_empty(markdown: str):
    """Every markdown table has at least one data row."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|---|"):
            assert i + 1 < len(lines) and lines[i + 1].startswith("|"), f"empty table after: {lines[i - 1]}"


def planned_jobs(result) -> dict:
    """Job counts from a dry run's 'Job stats' table."""
    return job_stats(result.stdout + "\n" + result.stderr)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-run")
    write_tiny_project(root)
    result = snakemake(root, "--cores", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return root


def test_default_config_dry_run_and_lint():
    result = snakemake(REPO, "-n", "--directory", str(REPO))
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    jobs = planned_jobs(result)
    assert jobs == {} or jobs.get("attribute", 0) <= 4
    lint = snakemake(REPO, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout[-2000:]


def test_tiny_dry_run_plans_every_stage(tmp_path):
    write_tiny_project(tmp_path)
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    assert jobs == {
        "sample_data": 2,
        "tokenize": 4,
        "draw_masks": 4,
        "attribute": 4,
        "aggregate": 4,
        "diagnose_unit": 4,
        "diagnose_seeds": 2,
        "diagnose_methods": 2,
        "validate_pruning": 2,
        "report": 1,
        "all": 1,
    }


def test_full_tiny_run_outputs_and_manifests(tiny_run):
    results = tiny_run / "results"
    summary = json.loads((results / "tiny" / "summary.json").read_text())
    assert len(summary["units"]) == 4
    for unit in summary["units"]:
        assert unit["n_samples"] == 4 and len(unit["top_heads"]) == 10
        assert np.isfinite(unit["completeness"]["gap_abs_max"]) and unit["wall_time_s"] > 0
        assert {h["label"] for h in unit["top_heads"]} <= {f"L{i}H{j}" for i in range(N_LAYERS) for j in range(N_HEADS)}
        dump = np.load(results / "ig" / unit["key"] / "dump.npz", allow_pickle=False)
        assert dump["ig"].shape == (4, 2, N_LAYERS, N_HEADS)
        top = unit["top_heads"][0]
        assert top["importance"] == pytest.approx(
            -dump["ig"].astype(np.float64).mean((0, 1))[top["layer"], top["head"]]
        )
    for stage in ("data", "tokens", "masks", "ig"):
        for manifest in (results / stage).glob("*/manifest.json"):
            m = json.loads(manifest.read_text())
            assert {"params", "inputs", "git_commit", "libraries", "wall_time_s", "headattr_version"} <= set(m)
            assert m["libraries"]["torch"] and all(len(v) == 64 for v in m["inputs"].values())
    for compute in summary["compute"]:  # per_layer, K = 2 riemann_right, 2 mask probs, 3 layers: see test_cost.py
        want = (8, 8, 34) if compute["method"] == "per_layer" else (4, 2, 18)
        assert (compute["rows_fwd_bwd/ex"], compute["rows_fwd/ex"], compute["layer_fwd/ex"]) == want
        assert compute["samples"] == "4/4" and compute["device"].startswith("cpu") and compute["gpu_hours"] is None
    report = (results / "tiny" / "report.md").read_text()
    for heading in (
        "## Compute",
        "## Attention dispersion",
        "## Completeness",
        "## Attribution per method and seed",
        "## Per-sample structure (report 1)",
        "#### 1-vs-N sample agreement",
        "#### Per-sample correlation",
        "#### Cross-sample variance",
        "#### Head use per data category",
        "#### Agreement between mask probabilities",
        "## Method comparison",
        "## Cross-seed consistency (report 2)",
        "#### Per-layer correlation",
        "#### Top-K overlap",
        "#### Score distributions",
        "#### Layer trend",
        "## Pruning validation",
        "## Settings",
    ):
        assert heading in report, heading
    assert_tables_not_empty(report)
    for figure in re.findall(r"\(figures/([^)]+)\)", report):
        assert (results / "tiny" / "figures" / figure).stat().st_size > 1000, figure
    assert "figures/heatmap_per_layer_seed1.png" in report
    assert {"seed_consistency", "method_comparison"} <= set(summary)
    assert all("diagnostics" in u for u in summary["units"])
    assert (results / "tiny" / "figures" / "heatmap_joint_seed2.png").stat().st_size > 1000
    logs = list((results / "logs" / "attribute").glob("*/*.log"))
    assert len(logs) == 4 and all("SLURM_JOB_ID=" in p.read_text() for p in logs)
    # the same samples and masks feed both methods of a seed
    keys = {(u["seed"], u["method"]): u["key"] for u in summary["units"]}
    a = np.load(results / "ig" / keys[(1, "per_layer")] / "dump.npz")
    b = np.load(results / "ig" / keys[(1, "joint")] / "dump.npz")
    assert np.array_equal(a["sample_ids"], b["sample_ids"]) and np.array_equal(a["n_scored"], b["n_scored"])
    assert np.allclose(a["loss_full"], b["loss_full"])


def test_snakemake_html_report(tiny_run):
    result = snakemake(tiny_run, "--report", "report.html")
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "heatmap_per_layer_seed1" in html


def test_incremental_rebuild_after_a_parameter_change(tiny_run):
    config_path = tiny_run / "config.yaml"
    original = config_path.read_text()
    assert planned_jobs(snakemake(tiny_run, "-n")) == {}
    config = yaml.safe_load(original)
    config["ig"]["steps"] = 3
    config_path.write_text(yaml.safe_dump(config))
    try:
        downstream = {
            "aggregate": 4,
            "diagnose_unit": 4,
            "diagnose_seeds": 2,
            "diagnose_methods": 2,
            "validate_pruning": 2,
            "report": 1,
            "all": 1,
        }
        assert planned_jobs(snakemake(tiny_run, "-n")) == {"attribute": 4, **downstream}
        config["objective"]["mask_probs"] = [0.3, 0.5]
        config["ig"]["steps"] = 2
        config_path.write_text(yaml.safe_dump(config))
        assert planned_jobs(snakemake(tiny_run, "-n")) == {"draw_masks": 4, "attribute": 4, **downstream}
    finally:
        config_path.write_text(original)
    assert planned_jobs(snakemake(tiny_run, "-n")) == {}


BAD_CONFIGS = [
    ({"ig": {"stepz": 3}}, "stepz"),
    ({"ig": {"steps": "eight"}}, "steps"),
    ({"ig": {"steps": 0}}, "steps"),
    ({"objective": {"mask_probs": [0.5, 1.5]}}, "mask_probs"),
    ({"objective": {"mask_probs": [0.0]}}, "mask_probs"),
    ({"data": {"source": "missing.jsonl"}}, "data.source"),
    ({"model": {"path": "no/such/model-dir"}}, "model.path"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"run": "../escape"}, "run"),
]


@pytest.mark.parametrize("extra,needle", BAD_CONFIGS, ids=[n for _, n in BAD_CONFIGS])
def test_config_errors_fail_before_any_rule_runs(tmp_path, extra, needle):
    write_tiny_project(tmp_path, extra=extra)
    result = snakemake(tmp_path, "--cores", "1")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert needle in out, out[-2000:]
    assert not (tmp_path / "results").exists()
