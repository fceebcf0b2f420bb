"""Task-metric AOPC per sweep point: every point's task validation planned from its own config, shared
evaluations run once, and the sweep's task_aopc table against hand computation."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import job_stats
from scipy import stats as sps
from test_task_validation import jobs_after_edit, load_config, snakemake, tiny_task_project

from headattr.evaluation.protocol import merged_plans, task_plan
from headattr.evaluation.summary import COLUMNS
from headattr.sweeps.plan import sweep_plan, sweep_points
from headattr.sweeps.tables import task_aopc_table, task_proxy_table


def sweep_project(root, axes, fractions=(0.0, 0.25)):
    """The tiny task project with ``sweep.axes`` = {name: (key, values)}, without the noise-floor point (its own
    jobs are checked in tests/test_sweep_noise_floor.py; the counts here are the axes' points)."""
    path = tiny_task_project(root, fractions=fractions)
    cfg = yaml.safe_load(path.read_text())
    cfg["sweep"] = {"axes": {n: {"key": k, "values": list(v)} for n, (k, v) in axes.items()}, "noise_floor": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def planned(root):
    """(validated config, its sweep points, the sweep plan), read from the project root like the Snakefile."""
    from headattr.pipeline.checks import validate_config

    config, root = load_config(root / "config.yaml")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        points = sweep_points(config, lambda c: validate_config(c, root))
        return config, points, sweep_plan(config, points)
    finally:
        os.chdir(cwd)


def test_each_point_plans_its_own_evaluations_and_shared_ones_are_one_job(tmp_path, monkeypatch):
    sweep_project(tmp_path, {"K": ("ig.steps", [2, 4])})
    config, points, plan = planned(tmp_path)
    rows = pd.DataFrame(plan["tasks"])
    # per point: unpruned + per_layer most/least + 2 random seeds at fraction 0.25
    assert rows.groupby("point").size().to_dict() == {"K=2": 5, "K=4": 5}
    shared = rows[rows["order"].isin(["none", "random"])].groupby("key")["point"].nunique()
    assert len(shared) == 3 and (shared == 2).all()  # unpruned and random masks do not depend on ig.steps
    ranked = rows[rows["order"].isin(["most", "least"])]
    assert ranked["key"].nunique() == 4  # the ranked masks do (their importance differs)
    monkeypatch.chdir(tmp_path)  # task files are hashed relative to the project root
    jobs = merged_plans([task_plan(config)] + [task_plan(p.config) for p in points])
    assert len(jobs["points"]) == 7 and len(jobs["masks"]) == 7
    for spec in jobs["masks"].values():
        if spec["order"] in ("most", "least"):
            assert spec["importance"]["postprocess"] == "signed" and len(spec["importance"]["ig"]) == 1
        else:
            assert spec["importance"] is None
    assert all(s["eval"]["tasks"] == ["tasks/tiny_mc.yaml"] for s in jobs["points"].values())
    assert all(s["files"] == ["tasks/tiny_mc.yaml", "tasks/docs.jsonl"] for s in jobs["points"].values())


def test_postprocess_axis_gives_masks_of_each_points_importance(tmp_path, monkeypatch):
    sweep_project(tmp_path, {"post": ("report.postprocess", ["signed", "abs"])})
    config, points, _ = planned(tmp_path)
    monkeypatch.chdir(tmp_path)  # task files are hashed relative to the project root
    masks = [task_plan(p.config)["masks"] for p in points]
    ranked = [{s["importance"]["postprocess"] for s in m.values() if s["importance"]} for m in masks]
    assert ranked == [{"signed"}, {"abs"}]
    assert not {k for k, s in masks[0].items() if s["importance"]} & set(masks[1])  # ranked masks differ


def write_results(root, values):
    """{key: results.csv} and plan rows for {point: {(method, order, seed): {fraction: value}}} (one task)."""
    files, rows = {}, []
    for point, curves in values.items():
        for (method, order, seed), by_fraction in curves.items():
            for fraction, value in by_fraction.items():
                key = f"{point}-{method}-{order}-{seed}-{fraction}"
                row = {"method": method, "task": "t", "metric": "acc", "order": order, "fraction": fraction}
                row |= {"value": value, "stderr": 0.01, "n": 10, "seed": seed}
                files[key] = Path(root) / f"{key}.csv"
                pd.DataFrame([row], columns=COLUMNS).to_csv(files[key], index=False)
                rows.append({"point": point, "key": key, "method": method, "order": order, "fraction": fraction})
                rows[-1] |= {"seed": seed, "tolerance": 0.05}
    return files, rows


def test_task_aopc_table_equals_hand_computation(tmp_path):
    shared = {  # unpruned and random curves: the same evaluations at every point
        ("none", "none", None): {0.0: 0.9},
        ("random", "random", 0): {0.25: 0.7, 0.5: 0.5},
        ("random", "random", 1): {0.25: 0.5, 0.5: 0.3},
    }
    ranked = {"A": ((0.3, 0.1), (0.9, 0.8)), "B": ((0.6, 0.2), (0.86, 0.88)), "C": ((0.8, 0.6), (0.5, 0.4))}
    curves = {
        point: shared
        | {("m", "most", None): {0.25: most[0], 0.5: most[1]}}
        | {("m", "least", None): {0.25: least[0], 0.5: least[1]}}
        for point, (most, least) in ranked.items()
    }
    files, rows = write_results(tmp_path, curves)
    heldout = pd.DataFrame(
        [
            {"point": p, "method": "m", "mode": mode, "order": o, "aopc": v}
            for p, most, least in (("A", 2.0, 0.1), ("B", 1.5, 0.2), ("C", 0.5, 0.9))
            for mode, scale in (("one_shot", 1.0), ("iterative", 10.0))
            for o, v in (("most_first", most * scale), ("least_first", least * scale))
        ]
    )
    table = task_aopc_table({"tasks": rows}, files, heldout).set_index(["point", "order"])
    random_aopc = 0.9 - np.mean([0.6, 0.4])  # mean random curve 0.6, 0.4
    expected = {
        ("A", "most"): (0.9 - np.mean([0.3, 0.1]), 0.0, 2.0),
        ("A", "least"): (0.9 - np.mean([0.9, 0.8]), 0.25, 0.1),
        ("B", "most"): (0.9 - np.mean([0.6, 0.2]), 0.0, 1.5),
        ("B", "least"): (0.9 - np.mean([0.86, 0.88]), 0.5, 0.2),  # 0.86, 0.88 >= 0.95 * 0.9
        ("C", "most"): (0.9 - np.mean([0.8, 0.6]), 0.0, 0.5),
        ("C", "least"): (0.9 - np.mean([0.5, 0.4]), 0.0, 0.9),
    }
    assert len(table) == 6
    for index, (aopc, removable, held) in expected.items():
        row = table.loc[index]
        assert row["task_aopc"] == pytest.approx(aopc) and row["unpruned"] == pytest.approx(0.9)
        assert row["random_task_aopc"] == pytest.approx(random_aopc)
        assert row["task_aopc_vs_random"] == pytest.approx(aopc - random_aopc)
        assert row["removable_fraction"] == pytest.approx(removable) and row["heldout_aopc"] == pytest.approx(held)
    proxy = task_proxy_table(table.reset_index()).set_index("order")
    most = [expected[(p, "most")] for p in "ABC"]
    rho = sps.spearmanr([m[2] for m in most], [m[0] for m in most]).statistic
    assert proxy.loc["most", "spearman"] == pytest.approx(rho) and rho == pytest.approx(1.0)
    least = [expected[(p, "least")] for p in "ABC"]
    assert proxy.loc["least", "spearman"] == pytest.approx(
        sps.spearmanr([m[2] for m in least], [m[0] for m in least]).statistic
    )
    assert (proxy["n"] == 3).all()
    assert task_aopc_table({"tasks": []}, {}, heldout).empty  # no task validation: header-only table


@pytest.fixture(scope="module")
def swept_task_run(tmp_path_factory):
    pytest.importorskip("lm_eval")
    root = tmp_path_factory.mktemp("sweep-tasks")
    sweep_project(root, {"K": ("ig.steps", [2, 4])})
    dry = snakemake(root, "-n")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
    jobs = job_stats(dry.stdout + "\n" + dry.stderr)
    result = snakemake(root, "--cores", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return root, jobs


@pytest.mark.slow
def test_sweep_runs_each_task_evaluation_once_and_tables_match_the_results(swept_task_run):
    root, jobs = swept_task_run
    # 1 unpruned + 2 random + 2 points x (most, least); no per-point report or task_validation table
    assert jobs["task_keepmask"] == 7 and jobs["task_eval"] == 7 and "task_validation" not in jobs, jobs
    _, _, plan = planned(root)
    tables = root / "results" / "sweeps" / plan["key"] / "tables"
    task_aopc = pd.read_csv(tables / "task_aopc.csv").set_index(["point", "order"])
    summaries = {v["point"]: root / "results" / "validation" / v["key"] / "summary.csv" for v in plan["validation"]}
    results = {
        r["key"]: pd.read_csv(root / "results" / "task_eval" / r["key"] / "results.csv").query("metric == 'acc'")
        for r in plan["tasks"]
    }
    for point in ("K=2", "K=4"):
        rows = [r for r in plan["tasks"] if r["point"] == point]
        value = {(r["order"], r["seed"]): results[r["key"]]["value"].iloc[0] for r in rows}
        unpruned = value[("none", None)]
        random_fall = unpruned - np.mean([value[("random", s)] for s in (0, 1)])
        held = pd.read_csv(summaries[point]).query("mode == 'one_shot' and method == 'per_layer'")
        for order in ("most", "least"):
            row = task_aopc.loc[(point, order)]
            assert row["task"] == "tiny_mc" and row["metric"] == "acc" and row["unpruned"] == pytest.approx(unpruned)
            assert row["task_aopc"] == pytest.approx(unpruned - value[(order, None)], abs=1e-12)
            assert row["random_task_aopc"] == pytest.approx(random_fall, abs=1e-12)
            held_aopc = held.set_index("order").loc[f"{order}_first", "aopc"]
            assert row["heldout_aopc"] == pytest.approx(held_aopc, abs=1e-12)
    report = (root / "results" / "sweeps" / plan["key"] / "report.md").read_text()
    assert "## Task-metric AOPC per point" in report and "tiny_mc" in report


@pytest.mark.slow
def test_adding_a_sweep_value_evaluates_only_the_new_points_ranked_masks(swept_task_run):
    root, _ = swept_task_run
    jobs = jobs_after_edit(root, lambda cfg: cfg["sweep"]["axes"]["K"].update(values=[2, 4, 8]))
    new_point = {"attribute": 1, "aggregate": 1, "validate_pruning": 1, "task_keepmask": 2, "task_eval": 2}
    assert jobs == new_point | {"sweep_stability": 1, "sweep_report": 1, "all": 1}, jobs
