"""validation.tasks: the pruning protocol as DAG rules (keys per point, up-front task checks, the tidy table)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import job_stats, write_tiny_project

from headattr.errors import ConfigError
from headattr.evaluation.protocol import build_keep_mask, task_plan
from headattr.evaluation.summary import curve_summary, drop_ratios, removable_fraction, task_table
from headattr.evaluation.tasks import check_tasks, resolve_tasks
from headattr.pipeline.checks import validate_config
from headattr.report.keys import report_key

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def snakemake(cwd, *args, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def jobs_after_edit(root, edit) -> dict:
    """Job counts of a dry run with the project's config changed by ``edit(cfg)`` (restored afterwards)."""
    config_path = Path(root) / "config.yaml"
    original = config_path.read_text()
    cfg = yaml.safe_load(original)
    edit(cfg)
    config_path.write_text(yaml.safe_dump(cfg))
    try:
        result = snakemake(root, "-n")
        return job_stats(result.stdout + "\n" + result.stderr)
    finally:
        config_path.write_text(original)


def tiny_task_project(root, fractions=(0.0, 0.25), task_entry="tasks/tiny_mc.yaml", **tasks):
    """The tiny workflow project plus a 6-item multiple-choice task over its vocabulary (data path relative to the
    project root, as lm-eval reads it from the working directory)."""
    root = Path(root)
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "tiny_mc.yaml").write_text(MC_TASK.replace("docs.jsonl", "tasks/docs.jsonl"))
    docs = [
        {"q": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 3}", f"w{i + 4}"], "label": i % 3} for i in range(6)
    ]
    (root / "tasks" / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    settings = {"tasks": [task_entry], "fractions": list(fractions), "random_seeds": 2, "limit": 4, "mc_num": 4}
    extra = {"validation": {"n_samples": 2, "tasks": settings | tasks}}
    return write_tiny_project(root, methods=("per_layer",), seeds=(1,), n_samples=2, extra=extra)


def load_config(config_path):
    root = Path(config_path).parent
    return validate_config(yaml.safe_load(Path(config_path).read_text()), root), root


def plan_in(root, config):
    cwd = os.getcwd()
    os.chdir(root)  # keys hash the task files, read relative to the project root
    try:
        return task_plan(config, root), report_key(config)
    finally:
        os.chdir(cwd)


def test_adding_a_fraction_adds_only_its_points(tmp_path):
    config, root = load_config(tiny_task_project(tmp_path, fractions=(0.0, 0.25)))
    before, report_before = plan_in(root, config)
    config["validation"]["tasks"]["fractions"] = [0.0, 0.25, 0.5]
    after, report_after = plan_in(root, config)
    assert set(before["points"]) < set(after["points"])
    new = {k: v for k, v in after["points"].items() if k not in before["points"]}
    # per_layer most + least, and 2 random seeds, at the new fraction only
    assert sorted((v["method"], v["order"], v["seed"]) for v in new.values()) == [
        ("per_layer", "least", None),
        ("per_layer", "most", None),
        ("random", "random", 0),
        ("random", "random", 1),
    ]
    assert {v["fraction"] for v in new.values()} == {0.5}
    assert set(before["masks"]) < set(after["masks"]) and len(after["masks"]) - len(before["masks"]) == 4
    assert report_before != report_after  # the report reruns
    # 1 unpruned + (2 ranked + 2 random) per fraction > 0
    assert len(before["points"]) == 5 and len(after["points"]) == 9


def test_editing_the_task_data_changes_every_point(tmp_path):
    config, root = load_config(tiny_task_project(tmp_path))
    before, _ = plan_in(root, config)
    with open(root / "tasks" / "docs.jsonl", "a") as fh:
        fh.write(json.dumps({"q": "w1", "choices": ["w2", "w3"], "label": 0}) + "\n")
    after, _ = plan_in(root, config)
    assert set(before["masks"]) == set(after["masks"])
    assert not set(before["points"]) & set(after["points"])


def test_missing_task_file_and_data_file_name_the_key(tmp_path):
    config, root = load_config(tiny_task_project(tmp_path))
    config["validation"]["tasks"]["tasks"] = ["tasks/tiny_mc.yaml", "tasks/nope.yaml"]
    with pytest.raises(ConfigError, match=r"validation\.tasks\.tasks\[1\].*does not exist"):
        check_tasks(config, root)
    (root / "tasks" / "bad.yaml").write_text("dataset_path: json\n")
    config["validation"]["tasks"]["tasks"] = ["tasks/bad.yaml"]
    with pytest.raises(ConfigError, match=r"validation\.tasks\.tasks\[0\].*has no 'task: NAME' entry"):
        check_tasks(config, root)
    (root / "tasks" / "bad.yaml").unlink()
    config["validation"]["tasks"]["tasks"] = ["tasks/tiny_mc.yaml"]
    config["validation"]["tasks"]["layers"] = [0, 99]
    with pytest.raises(ConfigError, match=r"validation\.tasks\.layers: \[0, 99\]"):
        check_tasks(config, root)
    config["validation"]["tasks"]["layers"] = None
    (root / "tasks" / "docs.jsonl").unlink()
    config["validation"]["tasks"]["tasks"] = ["tasks"]
    with pytest.raises(ConfigError, match=r"validation\.tasks\.tasks\[0\].*data file 'tasks/docs.jsonl'"):
        check_tasks(config, root)


def test_local_tasks_resolve_to_names_and_include_paths():
    resolved = resolve_tasks(["resources/tasks", "resources/tasks/add.yaml"], REPO)
    assert resolved["names"] == ["headattr_demo_add", "headattr_demo_copy", "headattr_demo_recall_mc"]
    assert resolved["include_path"] == ["resources/tasks"] and resolved["lm_eval_names"] == []
    assert sum(str(f).endswith(".jsonl") for f in resolved["files"]) == 4  # add.jsonl twice


@pytest.mark.slow
def test_missing_task_file_fails_the_dry_run_before_any_job(tmp_path):
    tiny_task_project(tmp_path, task_entry="tasks/missing.yaml")
    result = snakemake(tmp_path, "-n")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "validation.tasks.tasks[0]" in out and "does not exist" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_unknown_task_name_fails_the_dry_run_naming_the_key(tmp_path):
    """Looking a name up indexes lm-eval's ~15k built-in tasks (about 20 s)."""
    pytest.importorskip("lm_eval")
    tiny_task_project(tmp_path, task_entry="no_such_task_xyz")
    result = snakemake(tmp_path, "-n")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "validation.tasks.tasks[0]: 'no_such_task_xyz'" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def test_random_and_unpruned_masks_do_not_depend_on_the_method():
    spec = {
        "order": "random",
        "fraction": 0.25,
        "seed": 1,
        "convention": "per_layer",
        "keep_at_least_one_head": True,
        "layers": None,
    }
    keep = build_keep_mask(spec, (3, 4))
    assert (~keep).sum(axis=1).tolist() == [1, 1, 1]
    assert build_keep_mask({**spec, "order": "none"}, (3, 4)).all()
    ranked = build_keep_mask({**spec, "order": "most", "seed": None}, (3, 4), np.arange(12.0).reshape(3, 4))
    assert (~ranked).nonzero()[1].tolist() == [3, 3, 3]  # the largest importance of each layer


def test_task_table_copies_the_unpruned_point_into_every_curve_and_removable_fraction():
    def rows(method, order, seed, fraction, value):
        return pd.DataFrame(
            [
                {
                    "method": method,
                    "task": "t",
                    "metric": "acc",
                    "order": order,
                    "fraction": fraction,
                    "value": value,
                    "stderr": 0.01,
                    "n": 10,
                    "seed": seed,
                }
            ]
        )

    points = [
        rows("none", "none", None, 0.0, 0.8),
        rows("m", "least", None, 0.1, 0.78),
        rows("m", "least", None, 0.2, 0.6),
        rows("m", "most", None, 0.1, 0.2),
        rows("random", "random", 0, 0.1, 0.7),
        rows("random", "random", 1, 0.1, 0.5),
    ]
    table = task_table(points)
    zero = table[table["fraction"] == 0]
    assert len(zero) == 4 and (zero["value"] == 0.8).all()  # m least, m most, random 0, random 1
    s = curve_summary(table, 0.1).set_index(["method", "order"])
    assert s.loc[("m", "least"), "removable_fraction"] == 0.1  # 0.78 >= 0.72 > 0.6
    assert s.loc[("m", "most"), "removable_fraction"] == 0.0
    assert s.loc[("m", "most"), "task_aopc"] == pytest.approx(0.6)
    assert s.loc[("random", "random"), "task_aopc"] == pytest.approx(0.2)  # mean curve 0.6
    assert removable_fraction(pd.DataFrame({"fraction": [0.0, 0.1], "value": [0.5, 0.5]}), 0.0) == 0.1
    r = drop_ratios(table).set_index(["order", "fraction"])
    assert r.loc[("most", 0.1), "ratio"] == pytest.approx(3.0)  # 0.6 vs the random mean's 0.2
    assert r.loc[("least", 0.2), "drop"] == pytest.approx(0.2) and len(r) == 3


@pytest.fixture(scope="module")
def tiny_task_run(tmp_path_factory):
    pytest.importorskip("lm_eval")
    root = tmp_path_factory.mktemp("task-run")
    tiny_task_project(root)
    result = snakemake(root, "--cores", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return root


@pytest.mark.slow
def test_task_validation_csv_equals_a_direct_evaluation(tiny_task_run):
    import lm_eval

    from headattr.evaluation.lm import HeadAttrLM
    from headattr.evaluation.results import tidy_results
    from headattr.evaluation.tasks import task_manager

    table = pd.read_csv(tiny_task_run / "results" / "tiny" / "task_validation.csv")
    assert list(table.columns[:8]) == ["method", "task", "metric", "order", "fraction", "value", "stderr", "n"]
    report = (tiny_task_run / "results" / "tiny" / "report.md").read_text()
    assert "## Task validation (lm-eval)" in report and "tiny_mc" in report
    config, root = load_config(tiny_task_run / "config.yaml")
    plan, _ = plan_in(root, config)
    key, spec = next((k, s) for k, s in plan["points"].items() if s["order"] == "most")
    keep = np.load(tiny_task_run / "results" / "task_masks" / spec["mask"] / "keep.npy")
    assert (~keep).sum() == round(0.25 * keep.size)
    cwd = os.getcwd()
    os.chdir(tiny_task_run)
    try:
        lm = HeadAttrLM(pretrained="tiny-model", device="cpu", mc_num=4, batch_size=32, disable_tqdm=True)
        lm.set_keep_mask(keep)
        resolved = resolve_tasks(["tasks/tiny_mc.yaml"])
        direct = tidy_results(
            lm_eval.simple_evaluate(
                model=lm, tasks=["tiny_mc"], limit=4, bootstrap_iters=100, task_manager=task_manager(resolved)
            )
        )
    finally:
        os.chdir(cwd)
    row = table[(table["order"] == "most") & (table["fraction"] == 0.25) & (table["metric"] == "acc")]
    assert len(row) == 1 and row["n"].iloc[0] == 4
    assert row["value"].iloc[0] == pytest.approx(direct[0]["value"], abs=1e-12)
    assert row["stderr"].iloc[0] == pytest.approx(direct[0]["stderr"], abs=1e-12)
    cost = pd.read_csv(tiny_task_run / "results" / "tiny" / "task_eval_cost.csv")
    assert len(cost) == len(plan["points"]) and (cost["forward_passes"] > 0).all()
    assert cost.set_index("key").loc[key, "heads_pruned"] == (~keep).sum()


@pytest.mark.slow
def test_adding_a_fraction_reruns_only_that_point_and_the_report(tiny_task_run):
    jobs = jobs_after_edit(tiny_task_run, lambda cfg: cfg["validation"]["tasks"].update(fractions=[0.0, 0.25, 0.5]))
    # the new fraction: per_layer most + least and 2 random seeds; then the table and the report
    assert jobs == {"task_keepmask": 4, "task_eval": 4, "task_validation": 1, "report": 1, "all": 1}, jobs


def test_multiple_choice_rows_without_choices_fail_at_parse_naming_task_and_row(tmp_path):
    config, root = load_config(tiny_task_project(tmp_path))
    docs = root / "tasks" / "docs.jsonl"
    rows = [json.loads(line) for line in docs.read_text().splitlines()]
    rows[2]["choices"] = []
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError) as info:
        check_tasks(config, root)
    assert str(info.value) == (
        f"validation.tasks.tasks[0] ('tasks/tiny_mc.yaml'): multiple-choice task 'tiny_mc': line 3 of "
        f"{str(root / 'tasks' / 'docs.jsonl')!r} has no choices (field 'choices' is []); give every row at least one "
        "choice or drop the row"
    )
    rows[2]["choices"], rows[4]["label"] = ["w1", "w2", "w3"], 3
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"line 5 of .* has target 'label' = 3, outside its 3 choices"):
        check_tasks(config, root)
    rows[4]["label"] = 2
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert check_tasks(config, root)["names"] == ["tiny_mc"]
