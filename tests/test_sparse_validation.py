"""sparse_validation (issue 24, items 3-5): config checks at parse, the plan of versioned jobs, the sources and
controls, the table and report numbers, and a planted model on which adaptive must beat uniform."""

import json

import numpy as np
import pytest
import yaml
from helpers import write_tiny_project

from headattr.errors import ConfigError
from headattr.models import adapters
from headattr.pipeline.checks import validate_config


@pytest.fixture
def project(tmp_path):
    write_tiny_project(tmp_path)
    return tmp_path


def sparse_config(project, **sparse):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["sparse_validation"] = {"tasks": ["resources/tasks/copy.yaml"], **sparse}
    return config


def position_limit(project):
    return json.loads((project / "tiny-model" / "config.json").read_text())["max_position_embeddings"]


BAD = {
    "select_zero": ({"select": [0.3, 0.0]}, r"sparse_validation.select: \[0.0\] not in \(0, 1\]"),
    "select_above_one": ({"select": [1.5]}, r"sparse_validation.select: \[1.5\] not in \(0, 1\]"),
    "skip_one": ({"skip": 1.0}, r"sparse_validation.skip: 1.0 is not in \[0, 1\)"),
    "skip_negative": ({"skip": -0.1}, r"sparse_validation.skip: -0.1 is not in \[0, 1\)"),
    "unknown_source": ({"sources": ["per_layer", "uniformm"]}, r"sparse_validation.sources: unknown \['uniformm'\]"),
    "unknown_controls_of": ({"controls_of": "stp"}, r"sparse_validation.controls_of: 'stp' is not in ig.methods"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sparse_values_fail_at_parse(project, case):
    changes, message = BAD[case]
    with pytest.raises(ConfigError, match=message):
        validate_config(sparse_config(project, **changes), project)


def test_block_size_above_the_model_positions_fails(project):
    limit = position_limit(project)
    validate_config(sparse_config(project, block_size=limit), project)
    with pytest.raises(ConfigError, match=rf"sparse_validation.block_size: {limit + 1} exceeds the longest sequence"):
        validate_config(sparse_config(project, block_size=limit + 1), project)


def test_family_without_attention_hook_fails(project, monkeypatch):
    config = sparse_config(project)
    config["model"]["attn_implementation"] = "flash_attention_2"
    with pytest.raises(ConfigError, match="sparse_validation: model.attn_implementation flash_attention_2"):
        validate_config(config, project)
    spec = adapters.FAMILIES["bert"]
    monkeypatch.setitem(adapters.FAMILIES, "bert", type(spec)(**{**spec.__dict__, "attention": None}))
    with pytest.raises(ConfigError, match="sparse_validation: the bert family names no attention callable"):
        validate_config(sparse_config(project), project)


def test_off_by_default_checks_nothing(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["sparse_validation"] = {"select": [2.0], "skip": 1.0}  # no tasks: the section is off
    assert validate_config(config, project)["sparse_validation"]["tasks"] == []


# ----- the plan: keys, sources, controls ---------------------------------------------------------------------


def demo_config(**sparse):
    import copy
    from pathlib import Path

    from snakemake.utils import update_config

    repo = Path(__file__).resolve().parents[1]
    config = copy.deepcopy(yaml.safe_load((repo / "config.yaml").read_text()))
    update_config(config, {"sparse_validation": {"tasks": ["resources/tasks/copy.yaml"], **sparse}})
    return validate_config(config, repo), repo


def test_plan_points_and_keys(monkeypatch):
    from headattr.evaluation.sparse_protocol import sparse_plan
    from headattr.report.keys import report_key

    config, repo = demo_config(select=[0.2, 0.5], seeds=2)
    monkeypatch.chdir(repo)
    plan = sparse_plan(config, repo)
    got = sorted((p["source"], p["select"], p["seed"]) for p in plan.values())
    adaptive = [(m, s, None) for m in ("per_layer", "joint", "uniform", "negated") for s in (0.2, 0.5)]
    seeded = [(m, s, r) for m in ("random", "shuffled") for s in (0.2, 0.5) for r in (0, 1)]
    assert got == sorted([("dense", None, None), *adaptive, *seeded])
    assert {p["base"] for p in plan.values() if p["source"] in ("negated", "shuffled")} == {"per_layer"}
    # a new select adds points and keeps every existing key; a changed skip changes every sparse key, not dense
    more, _ = demo_config(select=[0.2, 0.5, 0.3], seeds=2)
    assert set(plan) < set(sparse_plan(more, repo))
    other, _ = demo_config(select=[0.2, 0.5], seeds=2, skip=0.5)
    changed = set(plan) - set(sparse_plan(other, repo))
    assert changed == {k for k, p in plan.items() if p["source"] != "dense"}
    # off by default: no points, and the report key of a config without the section is unchanged by it
    base, _ = demo_config(tasks=[])
    assert sparse_plan(base, repo) == {}
    assert report_key(base) != report_key(config)
    base.pop("sparse_validation")
    assert report_key(base) == report_key(demo_config(tasks=[])[0])


def test_source_importance_controls():
    from headattr.evaluation.sparse_protocol import source_importance

    base = np.array([[3.0, 1.0, 2.0], [np.nan, np.nan, np.nan]])
    assert (source_importance("uniform", (2, 3), None, None) == 1).all()
    np.testing.assert_array_equal(source_importance("negated", (2, 3), base, None)[0], [-3.0, -1.0, -2.0])
    shuffled = source_importance("shuffled", (2, 3), base, 0)
    assert sorted(shuffled[0]) == [1.0, 2.0, 3.0] and np.isnan(shuffled[1]).all()
    perms = {tuple(source_importance("shuffled", (2, 3), base, s)[0]) for s in range(6)}
    assert len(perms) > 1  # the seed changes the permutation
    r0, r1 = (source_importance("random", (2, 3), None, s) for s in (0, 1))
    np.testing.assert_array_equal(r0, np.random.default_rng(0).random((2, 3)))
    assert not np.array_equal(r0, r1)
    np.testing.assert_array_equal(source_importance("per_layer", (2, 3), base, None), base)


def test_flops_fraction_formula():
    from headattr.evaluation.sparse import attention_flops_fraction, build_step

    # 6 steps, skip 0.2: steps 0..2 dense (2 builds the masks), 3..5 at density 0.25
    assert attention_flops_fraction(0.25, build_step(0.2, 6), 6) == pytest.approx((3 + 3 * 0.25) / 6)
    assert attention_flops_fraction(0.25, build_step(0.9, 6), 6) == 1.0  # never sparse


def test_paired_bootstrap_matches_a_reference():
    import pandas as pd

    from headattr.report.sparse import paired_differences, users_table

    rng = np.random.default_rng(3)
    n = 40
    a, u = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    items = pd.concat(
        [
            pd.DataFrame(
                {
                    "source": s,
                    "select": 0.3,
                    "seed": pd.NA,
                    "task": "t",
                    "metric": "acc",
                    "doc_id": range(n),
                    "value": v,
                }
            )
            for s, v in (("per_layer", a), ("uniform", u))
        ]
    )
    items = items.sample(frac=1, random_state=0)  # pairing is by doc_id, not by row order
    table = pd.DataFrame(
        [
            {
                "source": s,
                "select": 0.3,
                "task": "t",
                "metric": "acc",
                "value": v.mean(),
                "stderr": 0.1,
                "n": n,
                "seed": pd.NA,
                "density": d,
                "flops_fraction": 0.5,
                "mean_keep_ratio": 0.3,
                "wall_s": 1.0,
            }
            for s, v, d in (("per_layer", a, 0.41), ("uniform", u, 0.40))
        ]
    )
    diff = paired_differences(table, items, n_boot=500, seed=7).iloc[0]
    d = a - u
    ref_rng = np.random.default_rng(7)
    draws = np.array([d[ref_rng.integers(0, n, n)].mean() for _ in range(500)])
    assert diff["difference"] == pytest.approx(d.mean())
    assert (diff["lo"], diff["hi"]) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert (diff["density"], diff["density_ref"]) == (0.41, 0.40)
    cells = users_table(table, "t").set_index("source")["select 0.3"]
    assert cells["Adaptive (per_layer)"] == f"{a.mean():.3f} ± 0.100 (d 0.410)"
