"""Ablation sweeps: config checks, shared artifact keys, stability numbers against scipy, dry-run job lists."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import write_tiny_project
from scipy import stats as sps
from test_workflow import planned_jobs, snakemake

from headattr.engine.cost import PassCounts, compute_record
from headattr.errors import ConfigError
from headattr.pipeline.checks import validate_config
from headattr.pipeline.dumps import save_npz
from headattr.pipeline.keys import units
from headattr.stats.stability import converged_at, pair_stability
from headattr.sweeps.plan import sweep_plan, sweep_points
from headattr.sweeps.tables import compute_table, stability_matrix, sweep_tables


@pytest.fixture
def tiny_config(tmp_path, monkeypatch):
    """A validated tiny-project config (cwd = the project)."""
    path = write_tiny_project(tmp_path, methods=("joint",), seeds=(1,))
    monkeypatch.chdir(tmp_path)
    return yaml.safe_load(path.read_text())


def points_of(config, axes, **sweep):
    """Validated config and points of ``axes`` {name: (key, values[, labels])}; without the noise-floor point
    unless ``noise_floor=True`` (tests/test_sweep_noise_floor.py)."""
    sweep = {"noise_floor": False, **sweep}
    cfg = copy.deepcopy(config)
    cfg["sweep"] = {
        "axes": {n: {"key": a[0], "values": a[1]} | ({"labels": a[2]} if len(a) > 2 else {}) for n, a in axes.items()},
        **sweep,
    }
    validate_config(cfg)
    return cfg, sweep_points(cfg, validate_config)


@pytest.mark.parametrize(
    ("axes", "sweep", "message"),
    [
        ({"K": ("ig.stepz", [2, 4])}, {}, "sweep.axes.K.key: 'ig.stepz' is not a config key"),
        ({"K": ("ig.steps", [4])}, {}, "sweep.axes.K.values: an axis needs at least two values"),
        ({"K": ("ig.steps", [2, 4]), "S": ("objective.mask_samples", [1, 2, 3])}, {"mode": "zip"}, "equal length"),
        ({"K": ("ig.steps", [2, 0])}, {}, "sweep point sweep.axes.K (ig.steps=0): invalid config"),
        ({"M": ("model.path", ["a", "b"])}, {}, "sweep.axes.M.key: 'model.path' cannot be swept"),
        ({"K": ("ig.steps", [2, 2])}, {}, "repeated values"),
        ({"B": ("ig.baseline", [0.5, 0.5])}, {}, "repeated values"),
        ({"K": ("ig.steps", [2, 2.0])}, {}, "sweep.axes.K.values: repeated values [2, 2.0]"),
        ({"K": ("ig.steps", [2, 4])}, {"reference": {"K": 8}}, "sweep.reference: {'K': 8} is not a point"),
        ({"K": ("ig.steps", [2, 4])}, {"reference": {"X": 2}}, "sweep.reference: ['X'] are not axes"),
        ({"P": ("ig.methods", [["joint"], ["nope"]])}, {}, 'ig.methods=["nope"]'),
        ({"K": ("ig.steps", [2, 4], ["two"])}, {}, "sweep.axes.K.labels: ['two'] must be distinct, one per value"),
        ({"K": ("ig.steps", [2, 4], ["a", "a"])}, {}, "sweep.axes.K.labels: ['a', 'a'] must be distinct"),
    ],
)
def test_sweep_config_errors_name_the_key(tiny_config, axes, sweep, message):
    with pytest.raises(ConfigError) as err:
        points_of(tiny_config, axes, **sweep)
    assert message in str(err.value)


def test_section_axis_merges_over_the_base_config(tiny_config):
    base = copy.deepcopy(tiny_config)
    base["ig"]["rule"], base["data"]["length_policy"] = "gauss_legendre", "truncate"
    _, points = points_of(base, {"I": ("ig", [{"methods": ["joint"]}, {"methods": ["per_layer"]}])})
    for point, method in zip(points, ["joint", "per_layer"], strict=True):
        assert point.config["ig"]["methods"] == [method]
        assert point.config["ig"]["rule"] == "gauss_legendre" and point.config["ig"]["steps"] == base["ig"]["steps"]
        assert point.config["data"]["length_policy"] == "truncate"


def test_grid_and_zip_points_and_shared_keys(tiny_config):
    cfg, grid = points_of(tiny_config, {"K": ("ig.steps", [2, 4, 8]), "S": ("objective.mask_samples", [1, 2])})
    assert [p.name for p in grid][:3] == ["K=2,S=1", "K=2,S=2", "K=4,S=1"] and len(grid) == 6
    assert grid[3].config["ig"]["steps"] == 4 and grid[3].config["objective"]["mask_samples"] == 2
    assert cfg["ig"]["steps"] == 2 and grid[0].config["sweep"] == {"axes": {}} | {
        k: v for k, v in grid[0].config["sweep"].items() if k != "axes"
    }
    keys = {p.name: units(p.config)[0].keys for p in grid}
    # K changes the attribution only; S changes the masks too; nothing changes data or tokens
    assert keys["K=2,S=1"]["masks"] == keys["K=8,S=1"]["masks"] != keys["K=2,S=2"]["masks"]
    assert len({k["tokens"] for k in keys.values()}) == 1 and len({k["data"] for k in keys.values()}) == 1
    assert len({k["ig"] for k in keys.values()}) == 6
    _, zipped = points_of(tiny_config, {"K": ("ig.steps", [2, 4]), "S": ("objective.mask_samples", [1, 2])}, mode="zip")
    assert [p.name for p in zipped] == ["K=2,S=1", "K=4,S=2"]
    # a point of a later sweep is the same unit as in the earlier one
    _, more = points_of(tiny_config, {"K": ("ig.steps", [2, 4, 8, 16])})
    assert units(more[1].config)[0].keys == keys["K=4,S=1"]


def fake_dump(path, ig, ids=None):
    """A minimal valid dump with per-sample IG ``ig`` [N, P, L, H]."""
    n, p = ig.shape[:2]
    save_npz(
        path,
        {
            "ig": ig.astype(np.float32),
            "loss_full": np.zeros((n, p)),
            "loss_base": np.zeros((n, p, 1)),
            "ig_sum": np.zeros((n, p, 1)),
            "gap": np.zeros((n, p, 1)),
            "n_scored": np.ones((n, p), dtype=np.int64),
            "sample_ids": np.array(ids or [f"s{i}" for i in range(n)]),
            "mask_probs": np.linspace(0.2, 0.8, p),
        },
        {"settings": {}},
    )
    return str(path)


def planted_plan(values, dumps, settings=None):
    entities = [
        {
            "label": f"K={v}",
            "point": f"K={v}",
            "method": "joint",
            "values": {"K": str(v)},
            "ig": [k],
            "postprocess": "signed",
        }
        for v, k in zip(values, dumps, strict=True)
    ]
    axes = {"K": {"key": "ig.steps", "values": [str(v) for v in values], "numeric": True, "order": list(values)}}
    s = {"topk": [3, 6], "layer_topk": 2, "tolerance": 0.9, "n_boot": 50, "seed": 0} | (settings or {})
    return {
        "entities": entities,
        "validation": [],
        "reference": f"K={values[-1]}",
        "axes": axes,
        "mode": "grid",
        "settings": s,
    }


def test_stability_equals_scipy_on_the_dumps(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(1, 1, 3, 4))
    noise = {2: 8.0, 4: 0.4, 8: 0.0}  # K=8 repeats K=4's dump: the planted identical pair
    base = truth + rng.normal(size=(12, 2, 3, 4))
    igs = {k: base + s * rng.normal(size=base.shape) for k, s in noise.items()}
    igs[8] = igs[4]
    paths = {k: fake_dump(tmp_path / f"K{k}.npz", v) for k, v in igs.items()}
    plan = planted_plan([2, 4, 8], [f"k{k}" for k in paths])
    tables = sweep_tables(plan, {f"k{k}": p for k, p in paths.items()}, {})
    pairs = tables["pairs"].set_index(["a", "b", "scope", "layer", "metric"])
    imp = {k: -v.astype(np.float32).astype(float).mean(axis=(0, 1)) for k, v in igs.items()}
    a, b = imp[2], imp[4]
    g = ("K=2", "K=4", "global", pd.NA)
    assert pairs.loc[(*g, "spearman"), "value"] == pytest.approx(sps.spearmanr(a.ravel(), b.ravel()).statistic)
    assert pairs.loc[(*g, "pearson"), "value"] == pytest.approx(sps.pearsonr(a.ravel(), b.ravel()).statistic)
    top = lambda x, k: set(np.argsort(-x.ravel())[:k])  # noqa: E731
    assert pairs.loc[(*g, "top6_overlap"), "value"] == len(top(a, 6) & top(b, 6)) / 6
    for layer in range(3):
        row = ("K=2", "K=4", "layer", layer)
        assert pairs.loc[(*row, "spearman"), "value"] == pytest.approx(sps.spearmanr(a[layer], b[layer]).statistic)
        assert pairs.loc[(*row, "top2_overlap"), "value"] == len(top(a[layer], 2) & top(b[layer], 2)) / 2
    same = tables["pairs"][(tables["pairs"]["a"] == "K=4") & (tables["pairs"]["b"] == "K=8")]
    assert (same[["value", "ci_low", "ci_high"]].to_numpy() == 1.0).all()  # Spearman 1 and full overlap
    noisy = pairs.loc[(*g, "spearman")]
    assert -1 <= noisy["ci_low"] < noisy["ci_high"] <= 1  # BCa: bias-corrected, need not contain the estimate
    # sensitivity against the reference K=8, convergence along K
    sens = tables["sensitivity"].set_index(["label", "metric"])
    assert sens.loc[("K=2", "spearman"), "value"] == pytest.approx(sps.spearmanr(a.ravel(), imp[8].ravel()).statistic)
    conv = tables["convergence"]
    rho = conv["spearman_vs_largest"].tolist()
    assert rho[1:] == [1.0, 1.0] and rho[0] < 0.9
    assert set(conv["converged_at"]) == {converged_at([2, 4, 8], rho, 0.9)} == {4.0}
    mat = stability_matrix(tables["pairs"], ["K=2", "K=4", "K=8"])
    assert mat[1, 2] == 1.0 and mat[0, 1] == mat[1, 0] == pytest.approx(rho[0])


def test_compute_table_sums_the_benchmarks(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, (wall, rss, cpu) in {"a/s0.tsv": (2.5, 100.0, 4.0), "a/s1.tsv": (1.5, 300.0, 2.0)}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(header + f"{wall}\t0:00:02\t{rss}\t0\t0\t0\t0\t0\t1\t{cpu}\n")
    plan = {"entities": [{"label": "K=2", "benchmarks": ["a/s0.tsv", "a/s1.tsv"]}]}
    row = compute_table(plan, {b: tmp_path / b for b in plan["entities"][0]["benchmarks"]}).iloc[0]
    assert (row["attribute_jobs"], row["wall_s"], row["cpu_s"], row["max_rss_mb"]) == (2, 4.0, 6.0, 300.0)
    record = compute_record(PassCounts(grad_rows=8, loss_rows=2, flops_forward=3e9), 1.5, "cpu", 2)
    (tmp_path / "m0.json").write_text(json.dumps({"result": {"compute": record}}))
    plan["entities"][0]["manifests"] = ["m0.json"]
    benchmarks = {b: tmp_path / b for b in plan["entities"][0]["benchmarks"]}
    row = compute_table(plan, benchmarks, {"m0.json": tmp_path / "m0.json"}).iloc[0]
    assert (row["rows_fwd_bwd/ex"], row["rows_fwd/ex"], row["flops"], row["engine_wall_s"]) == (4.0, 1.0, 3e9, 1.5)


def test_unpaired_samples_and_converged_at():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 2, 3)), rng.normal(size=(9, 2, 3))
    df = pair_stability(a, b, paired=False, topk=[2], n_boot=30)
    want = sps.spearmanr(a.mean(0).ravel(), b.mean(0).ravel()).statistic
    assert df.iloc[0]["value"] == pytest.approx(want) and np.isfinite(df["ci_low"]).all()
    with pytest.raises(ValueError, match="paired samples need equal shapes"):
        pair_stability(a, b, paired=True)
    assert converged_at([1, 2, 4, 8], [0.95, 0.5, 0.92, 1.0], 0.9) == 4
    assert converged_at([1, 2], [0.5, float("nan")], 0.9) is None


def test_sweep_plan_entities_and_key(tiny_config):
    cfg, points = points_of(
        tiny_config, {"K": ("ig.steps", [2, 4]), "P": ("ig.methods", [["joint"], ["stp"]])}, reference={"K": 4}
    )
    plan = sweep_plan(cfg, points)
    assert plan["reference"] == 'K=4,P=["joint"]'
    assert [e["method"] for e in plan["entities"]] == ["joint", "stp", "joint", "stp"]
    assert plan["axes"]["K"]["numeric"] and not plan["axes"]["P"]["numeric"]
    assert json.loads(json.dumps(plan)) == plan
    cfg2, points2 = points_of(tiny_config, {"K": ("ig.steps", [2, 4, 8]), "P": ("ig.methods", [["joint"], ["stp"]])})
    assert sweep_plan(cfg2, points2)["key"] != plan["key"]


def test_labels_name_the_points_and_leave_artifact_keys_alone(tiny_config):
    axes = {"K": ("ig.steps", [2, 4]), "B": ("ig.baseline", [0.0, 0.3])}
    cfg, plain = points_of(tiny_config, axes, reference={"K": 4})
    labelled_axes = {"K": ("ig.steps", [2, 4], ["coarse", "fine"]), "B": ("ig.baseline", [0.0, 0.3])}
    cfg_l, labelled = points_of(tiny_config, labelled_axes, reference={"K": "fine"})
    assert [p.name for p in labelled] == ["K=coarse,B=0.0", "K=coarse,B=0.3", "K=fine,B=0.0", "K=fine,B=0.3"]
    assert [p.values for p in labelled] == [p.values for p in plain]
    assert [units(p.config)[0].keys for p in labelled] == [units(p.config)[0].keys for p in plain]
    plan = sweep_plan(cfg_l, labelled)
    assert plan["reference"] == "K=fine,B=0.0" == sweep_plan(cfg, plain)["reference"].replace("K=4", "K=fine")
    assert plan["axes"]["K"]["values"] == ["coarse", "fine"] and plan["entities"][0]["values"]["K"] == "coarse"
    cfg_l["sweep"]["reference"] = {"K": 4}  # the value itself still names the reference
    assert sweep_plan(cfg_l, labelled)["reference"] == "K=fine,B=0.0"


def materialize(root):
    """Create every output the current config plans (as Snakemake's --summary lists them) and the attribution
    benchmarks, then --touch them."""
    result = snakemake(root, "--summary")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) > 4 and parts[4] == "missing":
            path = root / parts[0]
            if parts[2] == "attribute" and path.suffixes == [".npz"]:  # the job's benchmark, read by the comparison
                bench = root / "results/benchmarks/attribute" / path.parent.parent.name / f"{path.stem}.tsv"
                bench.parent.mkdir(parents=True, exist_ok=True)
                bench.touch()
            if "." in path.name:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
    touched = snakemake(root, "--touch", "--cores", "1")
    assert touched.returncode == 0, touched.stderr[-2000:]
    assert planned_jobs(snakemake(root, "-n")) == {}


def set_sweep(root, values):
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["sweep"] = {"axes": {"K": {"key": "ig.steps", "values": values}}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_sweep_dry_runs_rerun_only_new_points(tmp_path):
    write_tiny_project(tmp_path, methods=("joint",), seeds=(1,), extra={"validation": {"n_samples": 2}})
    materialize(tmp_path)  # the base run (ig.steps 2) exists
    new_point = {"attribute": 1, "aggregate": 1, "validate_pruning": 1, "sweep_stability": 1, "sweep_report": 1}
    set_sweep(tmp_path, [2, 4])
    # K=4, and the noise floor (reference K=2 with mask seed 2: its attribution and held-out masks, not its data)
    floor = {"attribute": 2, "aggregate": 2, "validate_pruning": 2, "draw_masks": 2}
    assert planned_jobs(snakemake(tmp_path, "-n")) == new_point | floor | {"all": 1}  # no sampling, tokenizing
    materialize(tmp_path)
    set_sweep(tmp_path, [2, 4, 8])
    assert planned_jobs(snakemake(tmp_path, "-n")) == new_point | {"all": 1}  # only K=8 and the comparison


def test_sweep_error_fails_before_any_rule(tmp_path):
    write_tiny_project(tmp_path, extra={"sweep": {"axes": {"K": {"key": "ig.steps", "values": [4]}}}})
    result = snakemake(tmp_path, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "sweep.axes.K.values: an axis needs at least two values" in output
    assert "Job stats" not in output


def test_intervals_contain_the_estimate_with_the_fisher_fallback():
    # noisy per-sample scores: resampled means repeat samples and pull the global Spearman down, so plain BCa
    # gave [0.327, 0.798] around an estimate of 0.853 here
    rng = np.random.default_rng(7)
    base = rng.normal(size=(1, 3, 6))
    a, b = base + rng.normal(scale=2, size=(20, 3, 6)), base + rng.normal(scale=2, size=(20, 3, 6))
    df = pair_stability(a, b, paired=True, topk=[5], layer_topk=2, n_boot=200, seed=0)
    assert ((df["ci_low"] <= df["value"]) & (df["value"] <= df["ci_high"])).all()
    row = df[(df["scope"] == "global") & (df["metric"] == "spearman")].iloc[0]
    assert row["value"] == pytest.approx(sps.spearmanr(a.mean(0).ravel(), b.mean(0).ravel()).statistic)
    assert row["ci_method"] == "normal (Fisher z)"
    z, lo, hi = np.arctanh([row["value"], row["ci_low"], row["ci_high"]])
    assert z - lo == pytest.approx(hi - z) and hi > z  # symmetric on Fisher's z, not degenerate
    assert set(df["ci_method"]) <= {"BCa", "normal", "normal (Fisher z)"}
    overlaps = df[df["metric"].str.endswith("_overlap")]
    assert (overlaps["ci_method"] != "normal (Fisher z)").all()  # overlaps are not correlations


def test_tables_of_a_sweep_without_numeric_axes_read_back(tmp_path):
    from headattr.analysis.diagnostics import read_tables, write_tables

    rng = np.random.default_rng(1)
    paths = [fake_dump(tmp_path / f"d{i}.npz", rng.normal(size=(4, 2, 3, 4))) for i in range(2)]
    plan = planted_plan([2, 4], ["a", "b"])
    plan["axes"]["K"]["numeric"] = False  # e.g. data.source or validation.data values
    tables = sweep_tables(plan, dict(zip(["a", "b"], paths, strict=True)), {})
    assert tables["convergence"].empty and "converged_at" in tables["convergence"].columns
    back = read_tables(write_tables(tables, tmp_path / "tables")[0].parent)  # an empty file would not parse
    assert back["convergence"].empty and list(back["transfer"].columns)[:2] == ["method", "mode"]


def test_point_configs_are_written_and_their_differing_keys_reported(tiny_config, tmp_path):
    from headattr.sweeps.configs import differing_keys, resolved_configs
    from headattr.sweeps.report import write_sweep_report

    base = copy.deepcopy(tiny_config)
    base["ig"]["rule"] = "gauss_legendre"
    cfg, points = points_of(
        base,
        {"I": ("ig", [{"methods": ["joint"], "steps": 3}, {"methods": ["per_layer"]}], ["joint3", "per_layer"])},
    )
    configs = resolved_configs(cfg, points)
    diff = differing_keys(configs)
    # the base runs joint with 2 steps: the first point differs in steps only, the second in methods only
    assert diff[["point", "key", "value", "base"]].values.tolist() == [
        ["I=joint3", "ig.steps", "3", "2"],
        ["I=per_layer", "ig.methods", '["per_layer"]', '["joint"]'],
    ]
    rng = np.random.default_rng(0)
    dumps = [fake_dump(tmp_path / f"d{i}.npz", rng.normal(size=(4, 2, 3, 4))) for i in range(2)]
    plan = planted_plan([2, 4], ["a", "b"]) | {"key": "tiny-sweep-k"}
    tables = sweep_tables(plan, dict(zip(["a", "b"], dumps, strict=True)), {})
    out = tmp_path / "sweep"
    write_sweep_report(plan, tables, out / "report.md", out / "figures", configs, out / "configs")
    files = sorted((out / "configs").iterdir())
    assert [f.name for f in files] == ["00-I=joint3.yaml", "01-I=per_layer.yaml"]
    for f, point in zip(files, points, strict=True):
        written = yaml.safe_load(f.read_text())
        assert written == point.config and not written["sweep"]["axes"]
        assert written["ig"]["rule"] == "gauss_legendre", "the base config's other keys are kept"
        again = validate_config(copy.deepcopy(written))  # the file runs as that point alone
        assert again == written
    report = (out / "report.md").read_text()
    assert "## Point configs (resolved)" in report
    assert '| I=per_layer | configs/01-I=per_layer.yaml | ig.methods | ["per_layer"] | ["joint"] |' in report
    assert "| I=joint3 | configs/00-I=joint3.yaml | ig.steps | 3 | 2 |" in report
