"""Input integrity through the workflow: in-place edits rerun what depends on them; results/<run> follows the config."""

import os

import pytest
import yaml
from helpers import job_stats, write_tiny_project
from test_workflow import snakemake

SMALL = {"validation": {"enabled": False}}


def planned(root) -> dict:
    result = snakemake(root, "-n")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return job_stats(result.stdout + "\n" + result.stderr)


@pytest.mark.slow
def test_in_place_edits_rerun_downstream_and_the_view_follows_the_config(tmp_path):
    write_tiny_project(tmp_path, methods=("joint",), seeds=(1,), n_samples=3, extra=SMALL)
    config_path = tmp_path / "config.yaml"
    first = snakemake(tmp_path, "--cores", "2")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    view = tmp_path / "results" / "tiny"
    report_a = os.readlink(view)
    assert planned(tmp_path) == {}

    data = tmp_path / "pairs.jsonl"
    original = data.read_text()
    data.write_text(original.replace('"response": "', '"response": "w7 ', 1))  # same path, same ids
    jobs = planned(tmp_path)
    assert {k: jobs.get(k) for k in ("sample_data", "tokenize", "draw_masks", "attribute", "report")} == dict.fromkeys(
        ("sample_data", "tokenize", "draw_masks", "attribute", "report"), 1
    )
    data.write_text(original)
    assert planned(tmp_path) == {}, "restoring the content finds the earlier artifacts"

    weights = tmp_path / "tiny-model" / "model.safetensors"
    saved = weights.read_bytes()
    weights.write_bytes(saved + b" ")
    jobs = planned(tmp_path)
    assert jobs.get("attribute") == 1 and "tokenize" not in jobs and "sample_data" not in jobs
    weights.write_bytes(saved)

    config = yaml.safe_load(config_path.read_text())
    config["ig"]["steps"] = 3
    config_path.write_text(yaml.safe_dump(config))
    second = snakemake(tmp_path, "--cores", "2")
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    report_b = os.readlink(view)
    assert report_b != report_a
    config["ig"]["steps"] = 2
    config_path.write_text(yaml.safe_dump(config))
    back = snakemake(tmp_path, "--cores", "2")
    assert back.returncode == 0 and "Nothing to be done" in back.stdout + back.stderr
    assert os.readlink(view) == report_a, "results/<run> shows the report of the config just run"
    assert (view / "report.md").is_file()
