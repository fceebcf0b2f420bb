"""Diagnostics find planted structure in synthetic dumps, and write/read their tables losslessly."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headattr.analysis import diagnostics

REPO = Path(__file__).resolve().parents[1]
L, H, N, P = 6, 5, 12, 2
SPECIFIC = {(1, 2), (4, 0), (5, 3)}


def synthetic_dump(seed=0, randomize_layer=None, category_head=None, base_seed=7, specific=True):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(base_seed).normal(0, 0.05, size=(L, H))
    ig = base[None, None] + rng.normal(0, 1e-4, size=(N, P, L, H))
    for layer, head in SPECIFIC if specific else ():
        ig[:, :, layer, head] += rng.normal(0, 0.3, size=(N, 1))
    if randomize_layer is not None:
        ig[:, :, randomize_layer, :] = rng.normal(0, 0.05, size=H)[None, None]
    cats = np.array(["code", "math", "chat"] * (N // 3))
    if category_head is not None:
        ig[cats == "math", :, category_head[0], category_head[1]] -= 0.5
    return {
        "ig": ig.astype(np.float32),
        "categories": cats,
        "mask_probs": np.array([0.15, 0.5]),
        "sample_ids": np.array([f"s{i}" for i in range(N)]),
    }


def test_finds_exactly_the_sample_specific_heads():
    out = diagnostics.unit_diagnostics(synthetic_dump(), {"n_boot": 20, "variance_thresholds": [0.001, 0.005]})
    top = out["sample_specific_heads"]
    found = {(int(r.layer), int(r.head)) for r in top.head(len(SPECIFIC)).itertuples()}
    assert found == SPECIFIC
    assert out["head_variance_summary"]["count_above"] == {"0.001": 3, "0.005": 3}
    assert out["sample_count"]["n"].tolist() == [1, 5, 10, 12]
    assert set(out) >= {"split_half", "sample_correlation", "category_means", "mask_ratio_agreement", "headline"}


def test_finds_the_layer_where_two_seeds_disagree():
    a = synthetic_dump(seed=1, specific=False)
    b = synthetic_dump(seed=2, randomize_layer=3, specific=False)
    out = diagnostics.seed_diagnostics(a, b, ("seed1", "seed2"), {"n_boot": 20, "n_perm": 50})
    assert out["summary"]["worst_layers"][0]["layer"] == 3
    assert out["summary"]["pearson"]["n_above_0.9"] == L - 1
    per_layer = out["per_layer"].set_index("layer")["pearson"]
    assert per_layer.drop(3).min() > 0.9 and per_layer[3] < 0.9
    per_layer_topk = out["topk"][out["topk"]["scope"] == "per_layer"]
    assert per_layer_topk["random_expected"].tolist() == pytest.approx([k / H for k in per_layer_topk["k"]])
    glob = out["topk"][out["topk"]["scope"] == "global"]
    assert glob["random_expected"].tolist() == pytest.approx([k / (L * H) for k in glob["k"]])


def test_depth_bins_as_explicit_ranges():
    a, b = synthetic_dump(seed=1, specific=False), synthetic_dump(seed=2, specific=False)
    out = diagnostics.seed_diagnostics(a, b, cfg={"n_boot": 10, "n_perm": 10, "depth_bins": [[0, 2], [2, 6]]})
    assert out["trend"]["bin"].tolist() == ["0-1", "2-5"] and out["trend"]["n_layers"].tolist() == [2, 4]


def test_one_sample_category_is_named_as_left_out():
    dump = synthetic_dump()
    dump["categories"] = np.array(["code"] * 6 + ["math"] * 5 + ["chat"])
    out = diagnostics.unit_diagnostics(dump, {"n_boot": 10})
    assert out["category_differences_note"] == {"tested": ["code", "math"], "left_out": {"chat": 1}, "p_method": "chi2"}
    assert out["category_counts"] == {"code": 6, "math": 5, "chat": 1}


def test_finds_the_category_dependent_head():
    out = diagnostics.unit_diagnostics(synthetic_dump(category_head=(2, 4)), {"n_boot": 10})
    first = out["category_differences"].iloc[0]
    assert (int(first["layer"]), int(first["head"])) == (2, 4)


def test_method_comparison_orders_specificity():
    shared = synthetic_dump(seed=3)
    specific = synthetic_dump(seed=4)
    specific["ig"] = specific["ig"] + np.random.default_rng(0).normal(0, 0.2, size=specific["ig"].shape).astype(
        np.float32
    )
    out = diagnostics.method_diagnostics({"joint": shared, "per_layer": specific})
    spec = out["headline"]["specificity"]
    assert spec["joint"] > spec["per_layer"]
    assert len(out["comparison"]) == 1


def test_tables_round_trip(tmp_path):
    tables = {"a": pd.DataFrame({"x": [1.5, 2.0]}), "b": {"k": 1}, "c": np.eye(3)}
    diagnostics.write_tables(tables, tmp_path)
    back = diagnostics.read_tables(tmp_path)
    assert back["a"].equals(tables["a"]) and back["b"] == {"k": 1} and np.array_equal(back["c"], np.eye(3))


def test_depth_bins_ranges_are_checked_against_the_model_before_any_rule():
    from headattr.errors import ConfigError
    from headattr.models.loading import model_n_layers
    from headattr.pipeline.checks import validate_config

    n = model_n_layers(str(REPO / "resources" / "demo" / "model"))  # the default config's model
    ok = validate_config({"diagnostics": {"depth_bins": [[0, 1], [1, n]]}}, REPO)
    assert ok["diagnostics"]["depth_bins"] == [[0, 1], [1, n]]
    with pytest.raises(ConfigError, match=rf"diagnostics.depth_bins: \[\[{n}, {n + 10}\]\] not"):
        validate_config({"diagnostics": {"depth_bins": [[0, n], [n, n + 10]]}}, REPO)
    with pytest.raises(ConfigError, match="diagnostics.depth_bins"):
        validate_config({"diagnostics": {"depth_bins": [[0]]}}, REPO)
