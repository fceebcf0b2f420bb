"""``seeds`` entries {data, mask}: the data draw and the masks vary apart (issue 25 item 3)."""

import copy

import pandas as pd
import pytest
import yaml
from helpers import write_tiny_project

from headattr.errors import ConfigError
from headattr.pipeline.checks import validate_config
from headattr.pipeline.keys import diagnostic_groups, heldout_units, stage_key, units
from headattr.report.seed_factors import changed_part, seed_factor_table, seed_factor_verdicts


@pytest.fixture
def project(tmp_path, monkeypatch):
    path = write_tiny_project(tmp_path, methods=("joint",), seeds=(1, 2))
    monkeypatch.chdir(tmp_path)
    return yaml.safe_load(path.read_text())


def _cfg(project, seeds):
    cfg = copy.deepcopy(project)
    cfg["seeds"] = seeds
    return validate_config(cfg)


def test_plain_seeds_keep_their_keys_and_set_both_parts(project):
    (u,) = units(_cfg(project, [1]))
    assert u.seed == 1 and u.slices["data"]["data_seed"] == 1 and u.slices["masks"]["mask_seed"] == 1
    for stage in ("data", "tokens", "masks"):
        assert u.keys[stage] == stage_key("seed1", u.slices[stage])
    assert u.keys["ig"] == stage_key("joint-seed1", u.slices["ig"])


def test_changing_the_mask_seed_reruns_masks_and_ig_not_the_data(project):
    (plain,) = units(_cfg(project, [1]))
    (other,) = units(_cfg(project, [{"data": 1, "mask": 2}]))
    assert other.seed == "d1m2" and other.slices["masks"]["mask_seed"] == 2
    assert other.keys["data"] == plain.keys["data"] and other.keys["tokens"] == plain.keys["tokens"]
    assert other.keys["masks"] != plain.keys["masks"] and other.keys["ig"] != plain.keys["ig"]
    (data_only,) = units(_cfg(project, [{"data": 2, "mask": 1}]))
    assert data_only.keys["data"] != plain.keys["data"] and data_only.slices["masks"]["mask_seed"] == 1
    # held-out samples follow the data seed; pairs of runs are formed over the labels
    cfg = _cfg(project, [1, {"data": 1, "mask": 2}])
    held = heldout_units(cfg)
    assert [h.keys["data"] for h in held] == [plain.keys["data"]] * 2
    assert held[0].keys["tokens"] == held[1].keys["tokens"] and held[0].keys["masks"] != held[1].keys["masks"]
    (pair,) = diagnostic_groups(cfg)["seeds"].values()
    assert pair[:3] == ("joint", 1, "d1m2")


def test_bad_seed_entries_fail_naming_the_key(project):
    for bad in ([{"data": 1}], [{"data": 1, "mask": 2, "x": 3}], [{"data": -1, "mask": 2}]):
        with pytest.raises(ConfigError, match="seeds"):
            _cfg(project, bad)


def test_which_seed_moves_the_ranking():
    config = {"seeds": [1, {"data": 1, "mask": 2}, {"data": 2, "mask": 1}]}
    assert changed_part(config, 1, "d1m2") == "masks"
    assert changed_part(config, 1, "d2m1") == "data"
    assert changed_part(config, "d1m2", "d2m1") == "data and masks"
    rows = [
        {"method": "m", "seed_a": 1, "seed_b": "d1m2", "changes": "masks", "spearman": 0.9, "lo": 0.85, "hi": 0.95},
        {"method": "m", "seed_a": 1, "seed_b": "d2m1", "changes": "data", "spearman": 0.3, "lo": 0.1, "hi": 0.5},
        {"method": "n", "seed_a": 1, "seed_b": "d1m2", "changes": "masks", "spearman": 0.5, "lo": 0.3, "hi": 0.7},
        {"method": "n", "seed_a": 1, "seed_b": "d2m1", "changes": "data", "spearman": 0.4, "lo": 0.2, "hi": 0.6},
    ]
    verdicts = seed_factor_verdicts(seed_factor_table(rows))
    assert verdicts[0].startswith("m: the data draw moves the ranking more")
    assert verdicts[1].startswith("n: the data-only and masks-only intervals overlap")
    assert seed_factor_verdicts(seed_factor_table(rows[:1])) == []
    assert isinstance(seed_factor_table([]), pd.DataFrame)
