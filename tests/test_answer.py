"""The report's first section "Which heads matter" (headattr.report.answer, headattr.stats.consensus): planted
structure found with the right categories, pure noise names none, and the statistics equal their formulas."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom

from headattr.report.answer import answer_text, build_answer, gap_marks
from headattr.stats.consensus import (
    bootstrap_heads,
    importance_statistic,
    overlap_null_quantile,
    reproducible_k,
    stratified_counts,
)

L, H = 3, 4
CATS = ["A"] * 6 + ["B"] * 6 + ["C"] * 6
A_ONLY = (0, 1)  # heads that matter for category A only (L0H1, L0H2)
ALL = 5  # a head that matters for every category (L1H1)


def planted_unit(method: str, seed: int, noise: float = 0.3, planted: bool = True) -> dict:
    """Per-sample importance of L*H heads on 18 samples (3 categories): noise, plus the planted heads."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, noise, (len(CATS), L * H))
    if planted:
        is_a = np.array([c == "A" for c in CATS])
        x[is_a, A_ONLY[0]] += 5.0
        x[is_a, A_ONLY[1]] += 4.0
        x[:, ALL] += 3.0
    return {
        "method": method,
        "seed": seed,
        "x": x,
        "layers": np.repeat(np.arange(L), H),
        "heads": np.tile(np.arange(H), L),
        "categories": list(CATS),
    }


def units(planted: bool) -> list[dict]:
    return [
        planted_unit(m, s, planted=planted) for m, s in [("per_layer", 1), ("per_layer", 2), ("joint", 3), ("joint", 4)]
    ]


@pytest.mark.parametrize("rank_within", [None, "category"])
def test_planted_heads_named_with_their_categories(rank_within):
    ans, _ = build_answer(units(planted=True), k=3, n_boot=400, seed=0, rank_within=rank_within)
    named = {c["label"]: sorted(c["sources"]) for c in ans["consensus"]}
    assert named == {"L0H0": ["A"], "L0H1": ["A"], "L1H1": ["A", "B", "C"]}
    # best mean rank first: L1H1 (mean 3.0), L0H0 (5 x 6/18 = 1.67), L0H1 (4 x 6/18 = 1.33); normalised the same
    assert [c["label"] for c in ans["consensus"]] == ["L1H1", "L0H0", "L0H1"]
    # A-only heads differ across categories (KW q < 0.05 in every unit), the all-category head does not
    by_label = {c["label"]: c for c in ans["consensus"]}
    assert by_label["L0H0"]["kw_significant"] == 4 and by_label["L0H1"]["kw_significant"] == 4
    assert by_label["L1H1"]["kw_significant"] == 0
    text = answer_text(ans)
    assert "3 head(s)" in text["lead"] and "L0H0" in text["lead"] and "L1H1" in text["lead"]
    assert "comes from A (interval" in text["heads"][[c["label"] for c in ans["consensus"]].index("L0H0")]


def test_pure_noise_names_no_head_and_says_so():
    ans, _ = build_answer(units(planted=False), k=3, n_boot=400, seed=0)
    assert ans["consensus"] == []
    assert ans["text"]["lead"].startswith("No head is in the top 3 of all 4 units")
    assert "name no head" in ans["text"]["lead"]


def test_planted_reproducible_k_and_noise_zero():
    planted = build_answer(units(planted=True), k=3, n_boot=100, seed=0)[0]["reproducibility"]
    assert [r["k_max"] for r in planted] == [3, 3]  # the three planted heads, then noise
    noise = build_answer(units(planted=False), k=3, n_boot=100, seed=0)[0]["reproducibility"]
    assert all(r["k_max"] <= 1 for r in noise)


def test_stratified_counts_keep_category_sizes():
    counts = stratified_counts(CATS, 50, seed=3)
    cats = np.array(CATS)
    for c in "ABC":
        assert np.all(counts[:, cats == c].sum(axis=1) == 6)


def test_bootstrap_heads_equal_a_direct_resampling():
    """Importance interval, rank interval and selection equal a loop over the same stratified draws."""
    x = planted_unit("m", 7)["x"]
    got = bootstrap_heads(x, CATS, k=3, n_boot=300, seed=5)
    counts = stratified_counts(CATS, 300, seed=5)
    means = np.array([np.repeat(x, c.astype(int), axis=0).mean(axis=0) for c in counts])
    rank = np.array([1 + (m[None, :] > m[:, None]).sum(axis=1) for m in means])
    np.testing.assert_allclose(got["importance"], x.mean(axis=0))
    np.testing.assert_allclose(got["lo"], np.percentile(means, 2.5, axis=0))
    np.testing.assert_allclose(got["hi"], np.percentile(means, 97.5, axis=0))
    np.testing.assert_array_equal(got["rank_hi"], np.percentile(rank, 97.5, axis=0, method="inverted_cdf"))
    np.testing.assert_allclose(got["selection"], (rank <= 3).mean(axis=0))


def test_category_normalised_importance_weighs_categories_equally():
    """A category on a 100x loss scale dominates the mean but not the category-normalised importance."""
    x = np.array([[100.0, 0.0], [100.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cats = ["task", "task", "text", "text"]
    np.testing.assert_allclose(importance_statistic(x, cats)[0], [50.0, 0.5])
    # task: means (100, 0), scale 50 -> (2, 0); text: (0, 1), scale 0.5 -> (0, 2); mean -> (1, 1)
    np.testing.assert_allclose(importance_statistic(x, cats, "category")[0], [1.0, 1.0])
    with pytest.raises(ValueError, match="report.rank_within"):
        importance_statistic(x, cats, "layer")


def test_overlap_null_quantile_exact():
    assert overlap_null_quantile(48, 5) == hypergeom(48, 5, 5).ppf(0.95) / 5
    # mean over 2 groups: the 95% quantile of the sum of two independent hypergeoms, by enumeration
    pmf = hypergeom(4, 2, 2).pmf(np.arange(3))
    total = np.zeros(5)
    for i in range(3):
        for j in range(3):
            total[i + j] += pmf[i] * pmf[j]
    expected = int(np.argmax(np.cumsum(total) >= 0.95)) / 4
    assert overlap_null_quantile(4, 2, n_groups=2) == expected


def _reference_k(a, b, level=0.95):
    """Largest K with |top-K(a) ∩ top-K(b)| above hypergeom's level quantile at every testable K' <= K."""
    m, best = len(a), 0
    for k in range(1, m):
        top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        q = hypergeom(m, k, k).ppf(level)
        if q >= k:
            continue
        if len(top_a & top_b) <= q:
            break
        best = k
    return best


def test_reproducible_k_stops_at_first_chance_level_k():
    a = np.arange(40, 0, -1, dtype=float)  # head 0 best
    b = a.copy()
    b[3:] = b[3:][::-1]  # the top 3 agree, the rest in reverse order
    out = reproducible_k(a, b)
    table = out["table"].set_index("k")
    assert table.loc[3, "shared"] == 3 and table.loc[8, "shared"] == 3
    assert table.loc[8, "null_quantile"] == hypergeom(40, 8, 8).ppf(0.95)
    assert out["k_max"] == _reference_k(a, b)
    assert 3 <= out["k_max"] < 10
    miss = out["first_miss"]
    assert miss["k"] == out["k_max"] + 1 and miss["shared"] == table.loc[miss["k"], "shared"] <= miss["null_quantile"]
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=30), rng.normal(size=30)
        b[:5] += 3 * rng.random()
        a[:5] += 3 * rng.random()
        assert reproducible_k(a, b)["k_max"] == _reference_k(a, b)


def test_gap_marks_per_layer_path_marks_its_layer_joint_marks_all():
    unit = planted_unit("per_layer", 1)
    rel = np.zeros((len(CATS), 1, L))
    rel[0, 0, 1] = 0.5  # sample 0 (A), path L1
    unit |= {"rel_gap": rel, "path_names": ["L0", "L1", "L2"]}
    marks = gap_marks(unit, 0.01)
    assert marks["head"].tolist() == [4, 5, 6, 7]
    assert marks["categories"].tolist() == [["A"]] * 4
    joint = planted_unit("joint", 1)
    rel = np.zeros((len(CATS), 1, 1))
    rel[7, 0, 0] = 0.02  # sample 7 (B)
    joint |= {"rel_gap": rel, "path_names": ["all"]}
    assert gap_marks(joint, 0.01)["head"].tolist() == list(range(L * H))
    assert gap_marks(joint, 0.03).empty


def test_caveat_and_marked_consensus_head_in_text():
    us = units(planted=True)
    rel = np.zeros((len(CATS), 1, L))
    rel[2, 0, 1] = 0.2  # per_layer seed 1, sample 2 (A), layer 1: touches L1H1
    us[0] |= {"rel_gap": rel, "path_names": ["L0", "L1", "L2"]}
    ans, _ = build_answer(us, k=3, n_boot=100, seed=0, threshold=0.01)
    by_label = {c["label"]: c for c in ans["consensus"]}
    assert by_label["L1H1"]["gap_marked"] and not by_label["L0H0"]["gap_marked"]
    assert ans["caveats"] == [
        {
            "method": "per_layer",
            "seed": 1,
            "n_over": 1,
            "n_rows": rel.size,
            "heads": ["L1H0", "L1H1", "L1H2", "L1H3"],
            "categories": ["A"],
        }
    ]
    assert "1 of 54 (sample, p, path) gaps above 0.01" in ans["text"]["caveats"][0]


def test_pruning_verdict_with_and_without_interval():
    summary = pd.DataFrame(
        {
            "method": ["per_layer", "random"],
            "order": ["most_first", "most_first"],
            "mode": ["static", "static"],
            "aopc": [0.5, 0.2],
            "aopc_vs_random": [0.3, 0.0],
        }
    )
    ans, _ = build_answer(units(planted=True), k=3, n_boot=50, validation={47: summary})
    assert ans["pruning"] == [
        {
            "seed": 47,
            "method": "per_layer",
            "mode": "static",
            "aopc": 0.5,
            "aopc_vs_random": 0.3,
            "lo": None,
            "hi": None,
        }
    ]
    assert "no interval yet" in ans["text"]["pruning"][0]
    with_ci = summary.assign(aopc_vs_random_lo=[0.1, 0.0], aopc_vs_random_hi=[0.4, 0.0])
    ans, _ = build_answer(units(planted=True), k=3, n_boot=50, validation={47: with_ci})
    assert ans["text"]["pruning"][0].endswith("0.300 [0.100, 0.400]: beats random pruning.")


def test_heads_for_text_and_tasks_shown_when_scales_differ():
    """Task items on a 10x loss scale with their own top heads: the view lists each group's heads apart."""
    from headattr.report.groups import absent_categories, category_groups, group_view

    us = []
    for seed in (1, 2):
        u = planted_unit("per_layer", seed, planted=False)
        cats = ["add"] * 6 + ["chat"] * 6 + ["code"] * 6
        u["categories"] = cats
        u["x"][:6, 0] += 10.0  # add: L0H0
        u["x"][6:, 7] += 1.0  # text: L1H3
        us.append(u)
    groups = category_groups(us[0]["categories"])
    assert groups == {"tasks": ["add"], "text": ["chat", "code"]}
    view = group_view(us, groups, k=2)
    assert view["shown"] and view["scale_ratio"] >= 3
    assert view["groups"]["tasks"]["top"][0] == "L0H0" and view["groups"]["text"]["top"][0] == "L1H3"
    expected = np.mean([np.abs(u["x"][:6]).mean() for u in us]) / np.mean([np.abs(u["x"][6:]).mean() for u in us])
    assert view["scale_ratio"] == pytest.approx(expected)
    # the same structure in both groups on one scale: not shown
    same = [planted_unit("per_layer", s, planted=False) for s in (1, 2)]
    for u in same:
        u["categories"] = ["add"] * 9 + ["chat"] * 9
        u["x"] += np.linspace(0, 3, L * H)
    flat = group_view(same, category_groups(same[0]["categories"]), k=2)
    assert not flat["shown"]
    assert category_groups(["chat", "code"]) == {}
    assert category_groups(["x", "y"], {"g1": ["x"], "g2": ["y", "absent"]}) == {"g1": ["x"], "g2": ["y"]}
    assert absent_categories(["x", "y"], {"g1": ["x"], "g2": ["y", "absent"]}) == ["absent"]
    assert absent_categories(["x"], None) == []


def _write_dump(path, unit: dict, gap_rows=()) -> str:
    """A dump whose per-sample IG is -x (importance x) at two mask probabilities, per-layer paths."""
    from headattr.pipeline.dumps import save_npz

    n = len(unit["categories"])
    ig = -np.repeat(unit["x"].reshape(n, 1, L, H), 2, axis=1)
    ig_sum = ig.sum(-1)
    loss_full = np.full((n, 2), 5.0)
    loss_base = loss_full[:, :, None] - ig_sum
    gap = np.zeros_like(ig_sum)
    for i, q in gap_rows:
        gap[i, 0, q] = 0.5 * abs(ig_sum[i, 0, q]) + 0.5
    arrays = {
        "ig": ig.astype(np.float32),
        "ig_sum": ig_sum,
        "loss_full": loss_full,
        "loss_base": loss_base - gap,
        "gap": gap,
        "sample_ids": np.array([f"s{i}" for i in range(n)]),
        "categories": np.array(unit["categories"]),
        "mask_probs": np.array([0.3, 0.7]),
        "path_names": np.array([f"L{i}" for i in range(L)]),
    }
    save_npz(path, arrays, {"settings": {"options": {}}})
    return str(path)


@pytest.mark.parametrize("planted", [True, False])
def test_first_section_from_dumps(tmp_path, planted):
    """Dumps -> report.answer.answer_section -> report/answer.md.j2: the planted heads named with their
    categories (and the gap-flagged one marked), pure noise: none named, said so."""
    from headattr.report.answer import answer_section
    from headattr.report.document import TEMPLATE, _md_table, render

    us = units(planted)
    dumps = [_write_dump(tmp_path / f"d{i}.npz", u, [(0, 0)] if i == 0 else ()) for i, u in enumerate(us)]
    meta = [{"method": u["method"], "seed": u["seed"]} for u in us]
    config = {"report": {"top_k": 3, "gap_threshold": 0.01}, "diagnostics": {"n_boot": 200}}
    ans, ctx, marks = answer_section(meta, dumps, config, {}, _md_table)
    text = render({"answer": ctx}, TEMPLATE.parent / "answer.md.j2")
    assert text.startswith("## Which heads matter")
    assert marks[0] == [(0, h) for h in range(H)] and marks[1] == []  # sample 0's layer-0 path of unit 0
    if planted:
        assert {c["label"]: sorted(c["sources"]) for c in ans["consensus"]} == {
            "L0H0": ["A"],
            "L0H1": ["A"],
            "L1H1": ["A", "B", "C"],
        }
        assert "- **L0H0**:" in text and "its importance comes from A (interval above 0" in text
        sentence = {c["label"]: text.split(f"**{c['label']}**")[1].split("\n- **")[0] for c in ans["consensus"]}
        all_three = ", ".join(next(c["sources"] for c in ans["consensus"] if c["label"] == "L1H1"))
        assert sorted(all_three.split(", ")) == ["A", "B", "C"] and f"comes from {all_three} (" in sentence["L1H1"]
        assert "rests on paths above the gap threshold" in sentence["L0H0"]
        assert "rests on paths" not in sentence["L1H1"]
        assert "1 of 108 (sample, p, path) gaps above 0.01, touching 4 head(s) (L0H0, L0H1, L0H2, L0H3) on A" in text
    else:
        assert ans["consensus"] == []
        assert "these numbers name no head that matters" in text


def test_report_key_keeps_old_keys_until_rank_within_or_groups_are_set(tmp_path):
    """The schema fills rank_within / category_groups with null: the key is the one without them; set, it moves."""
    import yaml
    from helpers import write_tiny_project

    from headattr.pipeline.checks import validate_config
    from headattr.report.keys import report_key

    path = Path(write_tiny_project(tmp_path, methods=("per_layer",), seeds=(1,), n_samples=2))
    config = validate_config(yaml.safe_load(path.read_text()), path.parent)
    assert config["report"]["rank_within"] is None and config["report"]["category_groups"] is None
    base = report_key(config)
    old = {k: v for k, v in config["report"].items() if k not in ("rank_within", "category_groups")}
    assert report_key(config | {"report": old}) == base
    keys = {
        report_key(config | {"report": config["report"] | change})
        for change in [
            {"rank_within": "category"},
            {"category_groups": {"a": ["x"], "b": ["y"]}},
        ]
    }
    assert len(keys | {base}) == 3


def test_bad_rank_within_fails_naming_the_key(tmp_path):
    import yaml
    from helpers import write_tiny_project

    from headattr.errors import ConfigError
    from headattr.pipeline.checks import validate_config

    path = Path(write_tiny_project(tmp_path, methods=("per_layer",), seeds=(1,), n_samples=2))
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("report", {})["rank_within"] = "layer"
    with pytest.raises(ConfigError, match="config key 'report.rank_within': 'layer' is not one of"):
        validate_config(raw, path.parent)


def test_report_marks_gap_flagged_heads_in_its_tables(tmp_path):
    """A unit whose per-layer paths miss completeness: its heads carry 'yes' in the top-K table, the summary's
    top heads say gap_marked, and the first section lists the caveat; the converged unit has no mark."""
    from types import SimpleNamespace

    from test_report import synthetic_dump, write_unit

    from headattr.report.document import build_report

    arrays = {
        1: write_unit(tmp_path, "u1", synthetic_dump(1, gap_scale=0.5)),
        2: write_unit(tmp_path, "u2", synthetic_dump(2)),
    }
    units_ = [{"seed": s, "method": "per_layer", "key": f"u{s}"} for s in (1, 2)]
    inputs = SimpleNamespace(
        heads=[tmp_path / f"ig/u{s}/heads.csv" for s in (1, 2)],
        completeness=[tmp_path / f"ig/u{s}/completeness.csv" for s in (1, 2)],
        dumps=[tmp_path / f"ig/u{s}/dump.npz" for s in (1, 2)],
        unit_diag=[tmp_path / f"diag/u{s}" for s in (1, 2)],
    )
    config = {"run": "t", "ig": {"steps": 8, "rule": "riemann_right", "tol": None}, "report": {"gap_threshold": 0.01}}
    summary = build_report(units_, inputs, config, tmp_path / "r.md", tmp_path / "s.json", tmp_path / "fig")
    report = (tmp_path / "r.md").read_text()
    assert report.index("## Which heads matter") < report.index("## Data")
    first, second = report.split("### per_layer, seed 1")[1].split("### per_layer, seed 2")
    assert "| label | importance | gap > 0.01 |" in first
    assert first.split("Top 10 heads:")[1].count("| yes |") == 10  # gap_scale 0.5: every layer's paths miss
    assert "| yes |" not in second.split("Top 10 heads:")[1].split("##")[0]
    assert all(h["gap_marked"] for h in summary["units"][0]["top_heads"])
    assert not any(h["gap_marked"] for h in summary["units"][1]["top_heads"])
    caveat = summary["answer"]["caveats"]
    assert [(c["method"], c["seed"]) for c in caveat] == [("per_layer", 1)]
    assert len(caveat[0]["heads"]) == arrays[1]["ig"].shape[2] * arrays[1]["ig"].shape[3]
    assert summary["answer"]["text"]["caveats"][0] in report


def test_misspelt_group_category_is_named_in_the_report(tmp_path):
    """A category in report.category_groups that no sample has is left out of the groups and said in the report."""
    from headattr.report.answer import answer_section
    from headattr.report.document import TEMPLATE, _md_table, render

    us = units(True)
    dumps = [_write_dump(tmp_path / f"d{i}.npz", u) for i, u in enumerate(us)]
    meta = [{"method": u["method"], "seed": u["seed"]} for u in us]
    groups = {"first": ["A", "Bb"], "rest": ["B", "C"]}
    config = {"report": {"top_k": 3, "gap_threshold": 0.01, "category_groups": groups}, "diagnostics": {"n_boot": 50}}
    ans, ctx, _ = answer_section(meta, dumps, config, {}, _md_table)
    assert ans["groups"]["absent"] == ["Bb"]
    text = render({"answer": ctx}, TEMPLATE.parent / "answer.md.j2")
    assert "without a sample in this run, left out of the groups: Bb." in text
