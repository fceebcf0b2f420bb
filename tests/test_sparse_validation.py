"""sparse_validation (issue 24, items 3-5): config checks at parse, the plan of versioned jobs, the sources and
controls, the table and report numbers, and a planted model on which adaptive must beat uniform."""

import json

import numpy as np
import pytest
import torch
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


# ----- planted model: one head needs every key block, the others are not read ------------------------------


class _PlantedBlock(torch.nn.Module):
    """One LLaDA-layout block: q = k = 0 (every head attends uniformly to all positions), head h's value is the
    token's bit; only head 0 reaches the output (attn_out reads its value dimension alone)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.attn_out = torch.nn.Linear(n_heads, 1, bias=False)
        with torch.no_grad():
            self.attn_out.weight.zero_()
            self.attn_out.weight[0, 0] = 1.0

    def attention(self, q, k, v):
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [B, H, T, 1]
        return self.attn_out(att.squeeze(-1).transpose(1, 2))  # [B, T, 1]


class PlantedModel(torch.nn.Module):
    """Majority of the bits of a sequence, read at the last position: head 0 averages the bits of every position
    it attends to (it needs dense attention: dropping key blocks averages fewer bits), heads 1.. are ignored."""

    def __init__(self, n_heads: int = 4):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "llada", "num_attention_heads": n_heads})()
        self.model = torch.nn.Module()
        self.model.transformer = torch.nn.ModuleDict(
            {"blocks": torch.nn.ModuleList([_PlantedBlock(n_heads)]), "ff_out": torch.nn.Identity()}
        )

    def forward(self, bits):
        b, t = bits.shape
        block = self.model.transformer["blocks"][0]
        q = torch.zeros(b, block.n_heads, t, 1)
        v = bits.float()[:, None, :, None].expand(b, block.n_heads, t, 1)
        mean = block.attention(q, q, v)[:, -1, 0]  # head 0's mean over the positions it kept
        return (mean > 0.5).long()


def planted_items(n: int = 240, length: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (4 * n, length))
    bits = bits[bits.sum(1) != length // 2][:n]  # no ties: the majority is defined
    return torch.as_tensor(bits), (bits.sum(1) > length // 2).astype(int)


def test_planted_head_adaptive_beats_uniform_and_negated_is_worse(tmp_path):
    import pandas as pd

    from headattr.evaluation.sparse_protocol import NORMALISATION, keep_ratios_of
    from headattr.models.adapters import Adapter
    from headattr.models.sparse import SparseAttention
    from headattr.report.sparse import paired_differences

    model = PlantedModel()
    adapter = Adapter(model, "llada")
    bits, labels = planted_items()
    importance_file = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {0: torch.tensor([1.0, 0.0, 0.0, 0.0])}}, importance_file)
    settings = {
        "skip": 0.2,
        "block_size": 4,
        "min_keep_ratio": 0.01,
        "weight_scale": 2 / 3,
        "normalisation": "percentile",
        "importance_increases_keep": True,
    }
    assert set(NORMALISATION) == {"percentile", "minmax"}
    dense = model(bits).numpy()
    assert (dense == labels).all()  # dense attention reads every bit
    rows, items = [], []
    for source in ("planted", "uniform", "negated"):
        spec = {
            "source": source,
            "seed": None,
            "select": 0.2,
            "sparse": settings,
            "importance": None if source == "uniform" else {"file": str(importance_file)},
            "base": "planted",
        }
        ratios = keep_ratios_of(spec, [importance_file], (1, 4))
        sparse = SparseAttention(adapter, ratios, settings["block_size"])
        with sparse.rebuilt():
            correct = (model(bits).numpy() == labels).astype(float)
        density = float(sparse.densities.mean())
        # reference: per head the floor(r * 10) + 1 lowest key blocks (uniform attention: ties go to the lower
        # index; block 9, the final one, is chosen on its own) plus block 9, of 10 x 10 blocks
        kept = [min(np.floor(r * 10) + 1, 9) + 1 for r in ratios[0]]
        assert density == pytest.approx(np.mean(kept) / 10)
        rows.append(
            {
                "source": source,
                "select": 0.2,
                "task": "majority",
                "metric": "acc",
                "value": correct.mean(),
                "stderr": correct.std(ddof=1) / np.sqrt(len(correct)),
                "n": len(correct),
                "seed": pd.NA,
                "density": density,
                "flops_fraction": 1 + density,
                "mean_keep_ratio": ratios.mean(),
                "wall_s": 0.0,
            }
        )
        items.append(
            pd.DataFrame(
                {
                    "source": source,
                    "select": 0.2,
                    "seed": pd.NA,
                    "task": "majority",
                    "metric": "acc",
                    "doc_id": range(len(correct)),
                    "value": correct,
                }
            )
        )
    table = pd.DataFrame(rows).set_index("source")
    # uniform r 0.2 keeps 2 + 1 + the final block of each head's 10 (16 / 40); the planted importance gives
    # head 0 r 0.5 and the others 0.1, which the floors make 6 + 3 x 3 = 15 / 40: adaptive wins with less attention
    assert table.loc["uniform", "density"] == pytest.approx(16 / 40)
    assert table.loc["planted", "density"] == pytest.approx(15 / 40)
    assert table.loc["planted", "value"] > table.loc["uniform", "value"] > table.loc["negated", "value"]
    diffs = paired_differences(table.reset_index(), pd.concat(items), n_boot=1000).set_index("source")
    assert diffs.loc["planted", "lo"] > 0  # adaptive minus uniform: interval above 0
    assert diffs.loc["negated", "hi"] < 0  # negated minus uniform: interval below 0
    assert diffs["excludes_0"].all()
    print(table[["value", "density"]], diffs[["difference", "lo", "hi"]], sep="\n")  # the numbers of docs/sparse.md


@pytest.mark.slow
def test_points_table_and_report_on_the_demo_model(tmp_path, monkeypatch):
    """End to end on the demo model (lm-eval, the diffusion sampler): dense, uniform and random points through
    the job and table stages and the report section; the table's numbers are the items' means."""
    import pandas as pd

    from headattr.evaluation.sparse_protocol import eval_stage, sparse_plan, table_stage
    from headattr.report.document import _md_table
    from headattr.report.sparse import sparse_context

    config, repo = demo_config(select=[0.3], seeds=1, limit=6, block_size=1, sources=["uniform", "random", "dense"])
    monkeypatch.chdir(repo)
    plan = sparse_plan(config, repo)
    outs = {k: [tmp_path / k / n for n in ("results.csv", "items.csv", "info.json")] for k in plan}
    infos = {k: eval_stage(spec, [], config["model"], *outs[k]) for k, spec in plan.items()}
    for key, info in infos.items():
        res, items = pd.read_csv(outs[key][0]), pd.read_csv(outs[key][1])
        first = res.iloc[0]
        mean = items[items["metric"] == first["metric"]]["value"].mean()
        assert first["value"] == pytest.approx(mean) and first["n"] == 6
        if plan[key]["source"] == "dense":
            assert np.isnan(info["density"]) and info["flops_fraction"] == 1.0
        else:  # 17 positions, r = 0.3 (uniform) and random ratios: kept blocks exceed select, fewer than all
            assert 0.3 < info["density"] < 1 and info["flops_fraction"] < 1
    table_out, items_out = tmp_path / "sparse_validation.csv", tmp_path / "sparse_items.csv"
    keys = list(plan)
    table_stage(*([outs[k][i] for k in keys] for i in (0, 1, 2)), keys, table_out, items_out)
    table = pd.read_csv(table_out)
    assert sorted(table["source"].unique()) == ["dense", "random", "uniform"]
    context, head = sparse_context(table_out, items_out, 200, tmp_path, _md_table)
    (diff,) = head["differences"]
    items = pd.read_csv(items_out)
    by = items[items["metric"] == table["metric"].iloc[0]].groupby("source")["value"].mean()
    assert diff["source"] == "random" and diff["difference"] == pytest.approx(by["random"] - by["uniform"])
    assert (tmp_path / context["figure"]).is_file()
