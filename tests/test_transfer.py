"""Cross-task transfer: validation.data draws the held-out samples of pruning validation from another source."""

import copy
import json

import pytest
import yaml
from helpers import text_records, write_tiny_project

from headattr.config import heldout_units, units, validate_config, validation_groups
from headattr.errors import ConfigError
from headattr.report import transfer_note


@pytest.fixture
def project(tmp_path, monkeypatch):
    path = write_tiny_project(tmp_path, methods=("joint",), seeds=(1, 2))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in text_records(6, seed=5, categories=("x", "y"))))
    monkeypatch.chdir(tmp_path)
    return yaml.safe_load(path.read_text())


def test_heldout_samples_come_from_the_other_source(project):
    plain = validate_config(copy.deepcopy(project))
    cfg = copy.deepcopy(project)
    cfg["validation"] = {"n_samples": 3, "data": {"source": "other.jsonl"}}
    cfg = validate_config(cfg)
    held, same = heldout_units(cfg), heldout_units(plain)
    assert [h.slices["data"]["source"] for h in held] == ["other.jsonl", "other.jsonl"]
    assert [h.slices["data"]["data_seed"] for h in held] == [1, 2]  # drawn with the seed, as data.source is
    assert held[0].slices["data"]["max_samples"] == 3 and "heldout" not in held[0].slices["tokens"]
    assert held[0].slices["data"]["source_sha256"] != same[0].slices["data"]["source_sha256"]
    assert held[0].slices["data"]["fields"] == plain["data"]["fields"]  # not given: taken from data
    assert held[0].keys["data"].startswith("transfer-seed1-") and held[0].keys["data"] != same[0].keys["data"]
    # attribution is untouched (same keys), the validation key changes
    assert [u.keys for u in units(cfg)] == [u.keys for u in units(plain)]
    assert set(validation_groups(cfg)).isdisjoint(validation_groups(plain))
    assert transfer_note(cfg) == (
        "Scores from `pairs.jsonl`, pruning judged on `other.jsonl` (`validation.data`)."
    ) and transfer_note(plain) == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "pairs.jsonl"}, "validation.data.source: 'pairs.jsonl' is the attribution source"),
        ({"source": "missing.jsonl"}, "validation.data.source: file 'missing.jsonl' does not exist"),
        ({"source": "notes.txt"}, "validation.data.source: 'notes.txt' is not 'demo'"),
        ({"split": "test"}, "'source' is a required property"),
        ({"source": "other.jsonl", "colour": 1}, "Additional properties are not allowed"),
    ],
)
def test_bad_validation_data_fails_before_any_rule(project, data, message):
    cfg = copy.deepcopy(project)
    cfg["validation"] = {"data": data}
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)
