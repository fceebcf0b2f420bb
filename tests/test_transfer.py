"""Cross-task transfer: validation.data draws the held-out samples of pruning validation from another source."""

import copy
import json

import pytest
import yaml
from helpers import text_records, write_tiny_project

from headattr.errors import ConfigError
from headattr.pipeline.checks import validate_config
from headattr.pipeline.keys import heldout_units, units, validation_groups
from headattr.report.document import transfer_note


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
    assert (
        transfer_note(cfg) == ("Scores from `pairs.jsonl`, pruning judged on `other.jsonl` (`validation.data`).")
        and transfer_note(plain) == ""
    )


def test_the_attribution_source_itself_means_in_task_heldout(project):
    plain = validate_config(copy.deepcopy(project))
    cfg = copy.deepcopy(project)
    cfg["validation"] = {"data": {"source": "pairs.jsonl"}}
    cfg = validate_config(cfg)
    assert [h.keys for h in heldout_units(cfg)] == [h.keys for h in heldout_units(plain)] and not transfer_note(cfg)


@pytest.mark.parametrize(
    ("data", "message"),
    [
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


def test_transfer_matrix_from_the_sweep_points(tmp_path):
    import pandas as pd

    from headattr.sweeps.report import transfer_markdown
    from headattr.sweeps.tables import transfer_table

    pairs = {"p1": ("a", "b"), "p2": ("b", "a"), "p3": ("a", "a"), "p4": ("b", "b")}
    plan = {
        "entities": [{"point": p, "method": "joint", "scores_from": f, "judged_on": j} for p, (f, j) in pairs.items()]
    }
    aopc = pd.DataFrame(
        [
            {"point": p, "method": "joint", "mode": "one_shot", "order": o, "aopc": 0.0, "aopc_vs_random": v}
            for p, v in zip(pairs, (0.1, 0.2, 0.3, 0.4), strict=True)
            for o, v in (("most_first", v), ("least_first", -v))
        ]
    )
    table = transfer_table(plan, aopc)
    matrix = table.pivot_table(index="scores_from", columns="judged_on", values="aopc_vs_random")
    assert matrix.loc["a", "b"] == 0.1 and matrix.loc["b", "a"] == 0.2 and matrix.loc["a", "a"] == 0.3
    assert (table["n_points"] == 1).all() and len(table) == 4
    in_task = {"entities": [e | {"judged_on": e["scores_from"]} for e in plan["entities"]]}
    assert transfer_table(in_task, aopc).empty and transfer_markdown(transfer_table(in_task, aopc)) == []
    text = "\n".join(transfer_markdown(table))
    assert "| scores from | b | a |" in text and "| a | 0.100 | 0.300 |" in text and "| b | 0.400 | 0.200 |" in text


def test_dry_run_draws_the_heldout_samples_from_the_other_source(project, tmp_path):
    from test_workflow import planned_jobs, snakemake

    cfg = copy.deepcopy(project)
    cfg["validation"] = {"n_samples": 3, "data": {"source": "other.jsonl"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    # per seed one draw of each source (the default shares one), tokenized and masked once each
    assert (jobs["sample_data"], jobs["tokenize"], jobs["draw_masks"], jobs["validate_pruning"]) == (4, 4, 4, 2)
