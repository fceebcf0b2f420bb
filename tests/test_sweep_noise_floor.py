"""Sweeps: the noise-floor point, the floor beside each agreement, pair intervals in the markdown, the stability
matrix labelled with point names and one y range across sensitivity panels (issue 25 items 7 and 8)."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import write_tiny_project
from test_plots import drawn  # noqa: F401  (the figure-keeping fixture)

from headattr.pipeline.checks import validate_config
from headattr.pipeline.keys import units
from headattr.report import plots
from headattr.sweeps import report as sweep_report
from headattr.sweeps.plan import NOISE_FLOOR, sweep_plan, sweep_points
from headattr.sweeps.tables import with_noise_floor


def test_every_sweep_gets_the_reference_with_other_mask_seeds(tmp_path, monkeypatch):
    path = write_tiny_project(tmp_path, methods=("joint",), seeds=(1, 5))
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sweep"] = {"axes": {"K": {"key": "ig.steps", "values": [2, 4]}}, "reference": {"K": 4}}
    cfg = validate_config(copy.deepcopy(cfg))
    points = sweep_points(cfg, validate_config)
    assert [p.name for p in points] == ["K=2", "K=4", NOISE_FLOOR]
    floor, ref = points[-1], points[1]
    assert floor.noise_floor and floor.values == ref.values and floor.config["ig"]["steps"] == 4
    assert floor.config["seeds"] == [{"data": 1, "mask": 2}, {"data": 5, "mask": 6}]
    for a, b in zip(units(floor.config), units(ref.config), strict=True):
        assert a.keys["data"] == b.keys["data"] and a.keys["tokens"] == b.keys["tokens"]
        assert a.keys["masks"] != b.keys["masks"] and a.slices["ig"]["steps"] == b.slices["ig"]["steps"]
    plan = sweep_plan(cfg, points)
    assert plan["reference"] == "K=4"
    assert [e.get("noise_floor") for e in plan["entities"]] == [False, False, True]
    off = copy.deepcopy(cfg)
    off["sweep"]["noise_floor"] = False
    assert [p.name for p in sweep_points(off, validate_config)] == ["K=2", "K=4"]
    assert "noise_floor" not in sweep_plan(off, sweep_points(off, validate_config))["entities"][0]


def _rows(label, value, lo, hi, metric="spearman"):
    return {"axis": "K", "axis_value": label, "label": label, "reference": "K=4", "metric": metric}, {
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
    }


def test_agreements_are_read_against_the_floor():
    sens = pd.DataFrame([a | b for a, b in (_rows("K=2", 0.5, 0.3, 0.6), _rows("K=4", 1.0, 1.0, 1.0))])
    floor = pd.DataFrame(
        [
            {
                "method": "joint",
                "reference": "K=4",
                "metric": "spearman",
                "value": 0.9,
                "ci_low": 0.8,
                "ci_high": 0.95,
                "ci_method": "BCa",
            }
        ]
    )
    out = with_noise_floor(sens, floor)
    assert out["noise_floor"].tolist() == [0.9, 0.9] and out["below_floor"].tolist() == [True, False]
    spearman = {"a": "K=2", "b": "K=4", "value": 0.5, "ci_low": 0.3, "ci_high": 0.6, "ci_method": "BCa"}
    spearman |= {"ci_low_mc": 0.01, "ci_high_mc": 0.02}
    pearson = spearman | {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8}
    pairs = pd.DataFrame(
        [{"scope": "global", "metric": "spearman"} | spearman, {"scope": "global", "metric": "pearson"} | pearson]
    )
    assert sweep_report.pair_intervals(pairs).to_dict("records") == [spearman]
    text = "".join(sweep_report.noise_floor_markdown({"noise_floor": floor, "sensitivity": out}))
    assert "below the floor: `K=2`." in text and "| joint | spearman | 0.900 | 0.800 | 0.950 | BCa |" in text


def test_stability_matrix_names_its_points(drawn):  # noqa: F811 (the fixture imported above)
    names = ["K=2", "K=4", NOISE_FLOOR]
    plots.matrix_heatmap(np.eye(3), "t", "x.png", "Spearman", names=names)
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names


def test_sensitivity_panels_share_one_y_range_with_the_floor(drawn):  # noqa: F811
    sens = pd.DataFrame(
        [a | b | {"noise_floor": 0.7} for a, b in (_rows("K=2", 0.5, -0.2, 0.6), _rows("K=4", 1.0, 1.0, 1.0))]
    )
    other = sens.assign(axis="B", value=[0.9, 1.0], ci_low=[0.8, 1.0], ci_high=[0.95, 1.0])
    both = pd.concat([sens, other], ignore_index=True)
    ylim = sweep_report.sensitivity_ylim(both)
    assert ylim == pytest.approx((-0.25, 1.05))
    sweep_report.sensitivity_plot(both, "K", "k.png", ylim)
    sweep_report.sensitivity_plot(both, "B", "b.png", ylim)
    assert drawn[0].axes[0].get_ylim() == drawn[1].axes[0].get_ylim() == pytest.approx(ylim)
    floor_line = [line for line in drawn[1].axes[0].get_lines() if line.get_label() == "noise floor"]
    assert list(floor_line[0].get_ydata()) == [0.7, 0.7]
