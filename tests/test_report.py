"""report.md and summary.json on synthetic dumps: template shape, silent reductions, completeness flags."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from headattr.analysis import diagnostics
from headattr.engine.cost import PassCounts, compute_record
from headattr.pipeline.aggregate import aggregate, completeness_table
from headattr.pipeline.dumps import save_npz
from headattr.report.document import TEMPLATE, build_report, completeness_digest, data_section

L, H, N, P = 3, 4, 7, 2
CATEGORIES = ["a", "a", "a", "b", "b", "b", "z"]  # z: one sample, left out of Kruskal-Wallis


def synthetic_dump(seed: int, gap_scale: float = 0.0, steps_used=None, options=None) -> dict:
    rng = np.random.default_rng(seed)
    base = np.linspace(-0.1, 0.1, L * H).reshape(L, H)
    ig = (base + rng.normal(0, 0.02, (N, P, L, H))).astype(np.float32)
    ig_sum = ig.astype(np.float64).sum(-1)  # per-layer paths: Q = L
    loss_full = 5.0 + rng.random((N, P))
    loss_base = loss_full[:, :, None] - ig_sum - gap_scale * rng.random((N, P, L))
    loss_base[0, 0, 0] = loss_full[0, 0] - 1e-12  # a path that does not change the loss
    ig_sum[0, 0, 0] = 1e-9
    arrays = {
        "ig": ig,
        "loss_full": loss_full,
        "loss_base": loss_base,
        "ig_sum": ig_sum,
        "gap": ig_sum - (loss_full[:, :, None] - loss_base),
        "n_scored": np.full((N, P), 5),
        "sample_ids": np.array([f"s{i}" for i in range(N)]),
        "categories": np.array(CATEGORIES),
        "mask_probs": np.array([0.3, 0.7]),
        "path_names": np.array([f"L{i}" for i in range(L)]),
    }
    if steps_used is not None:
        arrays["extra_steps_used"] = steps_used
    return arrays | {"meta": {"settings": {"options": options or {}}}}


def write_unit(root: Path, name: str, arrays: dict) -> dict:
    meta = arrays.pop("meta")
    out = root / "ig" / name
    save_npz(out / "dump.npz", arrays, meta)
    aggregate(arrays).to_csv(out / "heads.csv", index=False)
    completeness_table(arrays).to_csv(out / "completeness.csv", index=False)
    diagnostics.write_tables(diagnostics.unit_diagnostics(arrays, {"n_boot": 20}), root / "diag" / name)
    return arrays


def write_tokens(path: Path, counts: dict) -> str:
    save_npz(path, {"ids": np.zeros(3)}, {"tokenize": counts})
    return str(path)


def curves() -> pd.DataFrame:
    rows = []
    for method, order, seed, slope in [("per_layer", "most_first", None, 2.0), ("per_layer", "least_first", None, 0.1)]:
        rows += [
            dict(mode="single", method=method, order=order, seed=seed, fraction=f, loss=5 + slope * f)
            for f in (0, 0.5, 1)
        ]
    for seed in (0, 1):
        rows += [
            dict(mode="single", method="random", order="random", seed=seed, fraction=f, loss=5 + f) for f in (0, 0.5, 1)
        ]
    frame = pd.DataFrame(rows)
    return frame.assign(accuracy=0.5 - 0.1 * frame["fraction"])


TASK_POINTS = [  # (method, order, seed, fraction, value): per_layer least keeps 0.8 at 0.1, most falls to 0.2
    ("none", "none", None, 0.0, 0.8),
    ("per_layer", "least", None, 0.1, 0.8),
    ("per_layer", "most", None, 0.1, 0.2),
    ("random", "random", 0, 0.1, 0.7),
    ("random", "random", 1, 0.1, 0.5),
]


def task_csvs(root):
    """task_validation.csv and task_eval_cost.csv of the points above (one task, metric acc)."""
    from headattr.evaluation.summary import task_table

    points = [
        pd.DataFrame(
            [
                {
                    "method": m,
                    "task": "t",
                    "metric": "acc",
                    "order": o,
                    "fraction": f,
                    "value": v,
                    "stderr": 0.05,
                    "n": 20,
                    "seed": s,
                }
            ]
        )
        for m, o, s, f, v in TASK_POINTS
    ]
    task_table(points).to_csv(root / "task_validation.csv", index=False)
    cost = pd.DataFrame(
        [
            {
                "method": m,
                "order": o,
                "fraction": f,
                "seed": s,
                "heads_pruned": 1,
                "forward_passes": 10 * (i + 1),
                "rows": 40,
                "items": 20,
                "wall_s": 2.0,
                "load_s": 0.1,
                "key": f"k{i}",
            }
            for i, (m, o, s, f, _) in enumerate(TASK_POINTS)
        ]
    )
    cost.to_csv(root / "task_eval_cost.csv", index=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from headattr.analysis.deletion import deletion_summary

    root = tmp_path_factory.mktemp("report")
    steps = np.full((N, P, L), 8, np.int64)
    steps[:, :, 2] = 64  # layer 2's path hit the cap
    a = write_unit(
        root, "u1", synthetic_dump(1, gap_scale=0.5, steps_used=steps, options={"tol": 1e-3, "max_steps": 64})
    )
    b = write_unit(root, "u2", synthetic_dump(2))
    diagnostics.write_tables(
        diagnostics.seed_diagnostics(a, b, ("seed1", "seed2"), {"n_boot": 30, "n_perm": 20}), root / "seeds"
    )
    diagnostics.write_tables(diagnostics.method_diagnostics({"per_layer": a}), root / "methods")
    curves().to_csv(root / "curves.csv", index=False)
    deletion_summary(curves()).to_csv(root / "summary.csv", index=False)
    tokenize = {"n_in": 8, "n_kept": 7, "n_truncated": 1, "n_dropped_too_long": 1, "skipped": {"missing response": 2}}
    token_sets = [
        {"seed": 1, "role": "attribution", "asked": 10, "path": write_tokens(root / "t1.npz", tokenize)},
        {
            "seed": 1,
            "role": "held-out",
            "asked": 4,
            "path": write_tokens(root / "h1.npz", {"n_in": 4, "n_kept": 3, "n_dropped_too_long": 1}),
        },
    ]
    units = [{"seed": s, "method": "per_layer", "key": f"u{s}"} for s in (1, 2)]
    task_csvs(root)
    record = compute_record(PassCounts(grad_rows=30, loss_rows=12, layer_forwards=87), 4.0, "cpu", 6, resumed=1)
    (root / "shard.manifest.json").write_text(json.dumps({"result": {"compute": record}}))
    units[0]["manifests"] = [root / "shard.manifest.json"]  # unit 2 predates compute accounting
    inputs = SimpleNamespace(
        heads=[root / f"ig/u{s}/heads.csv" for s in (1, 2)],
        completeness=[root / f"ig/u{s}/completeness.csv" for s in (1, 2)],
        dumps=[root / f"ig/u{s}/dump.npz" for s in (1, 2)],
        unit_diag=[root / f"diag/u{s}" for s in (1, 2)],
        seed_diag=[root / "seeds"],
        method_diag=[root / "methods"],
        validation=[root / "curves.csv"],
        validation_summary=[root / "summary.csv"],
        task_validation=[root / "task_validation.csv"],
        task_cost=[root / "task_eval_cost.csv"],
    )
    config = {
        "run": "synthetic",
        "seeds": [1, 2],
        "validation": {"tasks": {"tolerance": 0.1}},
        "ig": {"steps": 8, "rule": "riemann_right", "tol": None},
        "report": {"gap_threshold": 0.01},
    }
    heads = pd.read_csv(root / "ig/u1/heads.csv")  # dispersion planted on seed 1: entropy ranks as importance,
    disp = heads[["layer", "head"]].assign(  # topk_mass in reverse, the other two by layer alone
        entropy=heads["importance"] * 2 + 1,
        entropy_norm=heads["layer"],
        effective_blocks=heads["layer"] ** 2,
        topk_mass=-heads["importance"],
    )
    disp.to_csv(root / "dispersion.csv", index=False)
    summary = build_report(
        units,
        inputs,
        config,
        root / "report.md",
        root / "summary.json",
        root / "figures",
        seed_pairs=[{"method": "per_layer", "seed_a": 1, "seed_b": 2}],
        method_groups=[{"seed": 1}],
        validation_seeds=[1],
        token_sets=token_sets,
        dispersion={1: root / "dispersion.csv"},
    )
    return root, (root / "report.md").read_text(), summary, a


def _template_lines(path: Path) -> list[str]:
    """The template's lines with every ``{% include "x" %}`` line replaced by x's lines (files beside it)."""
    lines = []
    for line in path.read_text().splitlines():
        included = re.match(r'^\{% include "([^"]+)" %\}$', line.strip())
        lines += _template_lines(path.parent / included.group(1)) if included else [line]
    return lines


def test_headings_are_the_templates_once_each_in_order(built):
    """The report's shape is the template's: every heading once per block (Pruning validation was doubled)."""
    _, report, _, _ = built
    assert report.count("## Pruning validation") == 1
    template_heads = [line.split("{{")[0].strip() for line in _template_lines(TEMPLATE) if re.match(r"^#{2} \w", line)]
    assert template_heads[:2] == ["## Which heads matter", "## Data"]  # the answer first
    report_heads = [line for line in report.splitlines() if re.match(r"^#{2} \w", line)]
    # the fixture runs no sparse validation: its section (tests/test_sparse_validation.py) stays out
    sparse = "## Adaptive sparse attention (lm-eval)"
    assert sparse in template_heads and sparse not in report_heads
    assert report_heads == [h for h in template_heads if h != sparse]
    json.loads((built[0] / "summary.json").read_text())


def test_compute_table_is_in_the_report(built):
    _, report, summary, _ = built
    section = report.split("## Compute")[1].split("## ")[0]
    assert "| per_layer | 1 | 5/6 | 6 | 2.4 | 17.4 |" in section  # 30, 12 and 87 over 5 computed samples
    assert "Total: 0 FLOPs (cost model), 4.0 s wall." in section
    assert [(r["method"], r["seed"], r["gpu_hours"]) for r in summary["compute"]] == [("per_layer", 1, None)]


def test_dispersion_correlation_per_method(built):
    root, report, summary, _ = built
    (row,) = summary["dispersion_spearman"]  # seed 2 has no dispersion table
    heads = pd.read_csv(root / "ig/u1/heads.csv")
    by_layer = sps.spearmanr(heads["importance"], heads["layer"]).statistic
    assert (row["method"], row["seed"], row["entropy"], row["topk_mass"]) == ("per_layer", 1, 1.0, -1.0)
    assert row["entropy_norm"] == pytest.approx(by_layer) and row["effective_blocks"] == pytest.approx(by_layer)
    section = report.split("## Attention dispersion")[1].split("## ")[0]
    assert "| per_layer | 1 | 1.000 |" in section and "Off" not in section


def test_every_tokenize_count_and_skip_reason_is_reported(built):
    _, report, summary, _ = built
    row = summary["data"][0]
    assert row["asked"] == 10 and row["n_kept"] == 7 and row["n_dropped_too_long"] == 1
    assert row["skipped: missing response"] == 2 and row["n_truncated"] == 1
    assert any("7 of 10 asked" in n and "missing response 2" in n for n in summary["data_notes"])
    assert "| skipped: missing response |" in report
    assert "Held-out samples: 3 of 4 asked" in report
    assert summary["pruning_validation"][0]["heldout"] == {"asked": 4, "n_in": 4, "n_kept": 3, "n_dropped_too_long": 1}


def test_data_section_works_without_a_skipped_dict(tmp_path):
    table, notes = data_section(
        [
            {
                "seed": 3,
                "role": "attribution",
                "asked": 5,
                "path": write_tokens(tmp_path / "t.npz", {"n_in": 5, "n_kept": 5}),
            }
        ]
    )
    assert table.to_dict("records") == [{"seed": 3, "samples": "attribution", "asked": 5, "n_in": 5, "n_kept": 5}]
    assert notes == []


def test_one_sample_category_left_out_is_said(built):
    _, report, summary, _ = built
    assert "Left out of the Kruskal-Wallis test (fewer than 2 samples): z (1 sample)." in report
    assert summary["units"][0]["category_test"]["left_out"] == {"z": 1}
    assert summary["units"][0]["category_test"]["tested"] == ["a", "b"]


def test_completeness_gaps_use_a_floor_and_large_ones_are_flagged(built):
    root, report, summary, arrays = built
    delta = arrays["loss_full"][:, :, None] - arrays["loss_base"]
    expected = np.abs(arrays["gap"]) / np.maximum(np.abs(delta), 0.01)
    c = summary["units"][0]["completeness"]
    assert c["gap_rel_max"] == pytest.approx(expected.max())
    assert c["n_over_threshold"] == int((expected > 0.01).sum()) > 0
    assert summary["units"][1]["completeness"]["gap_rel_max"] < 1e-5  # the ~0 dL path does not blow up
    flagged = [(f["method"], f["seed"]) for f in summary["completeness_flags"]]
    assert flagged == [("per_layer", 1)]
    assert "Advice: raise `ig.steps` (now 8); or use `ig.rule: gauss_legendre`" in report and "`ig.tol: 1e-3`" in report


def test_paths_at_the_step_cap_are_flagged(built):
    _, report, summary, _ = built
    assert summary["completeness_capped"] == [{"method": "per_layer", "seed": 1, "paths": "L2", "max_steps": 64}]
    assert "1 path(s) hit `ig.max_steps` = 64" in report
    assert "8-64" in report  # steps column


def test_completeness_digest_caps_only_paths_above_tol():
    comp = pd.DataFrame({"gap": [1e-6, 0.5], "delta_loss": [1.0, 1.0], "path": ["L0", "L1"]})
    out = completeness_digest(comp, 0.01, 0.01, np.array([64, 64]), {"tol": 1e-3, "max_steps": 64})
    assert out["capped"] == ["L1"] and out["n_over_threshold"] == 1


def test_report_names_the_bootstrap_method_and_top_k_definitions(built):
    _, report, _, _ = built
    assert "| metric | estimate | lo | hi | method | bias |" in report
    assert re.search(r"\| global_pearson \| [-0-9.]+ \| [-0-9.]+ \| [-0-9.]+ \| (BCa|normal \(Fisher z\)) \|", report)
    assert "Per-layer K = 5, 10, 15, 20, 25, 30 skipped: not below the 4 heads of a layer" in report
    assert "Global K = 15, 20, 25, 30 skipped: not below the 12 heads." in report
    assert "| rank | layer | pearson | spearman | top2 overlap |" in report


def test_task_validation_section_numbers(built):
    _, report, summary, _ = built
    section = report.split("## Task validation (lm-eval)")[1].split("## Settings")[0]
    assert "0.800 ± 0.050" in section and "0.200 ± 0.050" in section  # per_layer least / most at 0.1
    assert "0.600 ± 0.141" in section  # random mean ± sd of 0.7 and 0.5
    tv = summary["task_validation"]
    ratio = {(r["order"], r["fraction"]): r["ratio"] for r in tv["drop_ratios"]}
    assert ratio[("most", 0.1)] == pytest.approx(3.0) and ratio[("least", 0.1)] == pytest.approx(0.0)
    curves = {(r["method"], r["order"]): r for r in tv["curves"]}
    assert curves[("per_layer", "least")]["removable_fraction"] == 0.1
    assert curves[("per_layer", "most")]["removable_fraction"] == 0.0
    per_point = next(r for r in tv["cost"] if r["job"] == "task evaluation, per point")
    assert per_point["forward_passes"] == pytest.approx(30.0) and per_point["points"] == 5
