"""A --configfile that leaves data.max_samples to the embedded default config.yaml (the demo's value) over its own,
smaller data: refused when the Snakefile is parsed, saying where the value came from and where to set it."""

import json

import pytest
import yaml
from helpers import text_records, write_tiny_project
from test_workflow import snakemake

from headattr.errors import ConfigError
from headattr.pipeline.checks import check_inputs, validate_config
from headattr.pipeline.origins import inherited


def test_inherited_names_only_keys_the_config_files_leave_unset():
    config = {"data": {"max_samples": 27, "source": "mine.jsonl"}}
    keys = ["data.max_samples", "data.source"]
    assert inherited(keys, {"data": {"source": "mine.jsonl"}}, ["my.yaml"], config) == {
        "data.max_samples": {"value": 27, "files": ["my.yaml"]}
    }
    assert inherited(keys, {"data": {"source": "mine.jsonl"}}, [], config) == {}, (
        "no --configfile: config.yaml is theirs"
    )
    assert inherited(keys, {"data": {"max_samples": 27, "source": "x"}}, ["my.yaml"], config) == {}


def test_max_samples_above_the_records_fails_at_the_input_check(tmp_path):
    write_tiny_project(tmp_path, n_samples=9)  # pairs.jsonl holds 8 records
    config = validate_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), tmp_path)
    with pytest.raises(ConfigError) as info:
        check_inputs(config, tmp_path, passed=None)
    assert str(info.value) == (
        "data.max_samples: 9 asks for more samples than the 8 records of data.source 'pairs.jsonl'; set "
        "data.max_samples: 8 (or fewer) under data: in the config"
    )
    origins = {"data.max_samples": {"value": 9, "files": ["my.yaml"]}}
    with pytest.raises(
        ConfigError,
        match=r"^data.max_samples: 9 \(inherited from the embedded default config.yaml: "
        r"my.yaml does not set it\) asks .* under data: in my.yaml$",
    ):
        check_inputs(config, tmp_path, passed=None, origins=origins)
    config["data"]["max_samples"] = 8
    assert check_inputs(config, tmp_path, passed=None)["family"] == "bert"


@pytest.mark.slow
def test_configfile_inheriting_the_demos_max_samples_is_refused_at_parse(tmp_path):
    write_tiny_project(tmp_path, n_samples=12)  # config.yaml plays the embedded default (the demo's 12 samples)
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in text_records(40)))
    default = yaml.safe_load((tmp_path / "config.yaml").read_text())
    default["data"]["source"] = "big.jsonl"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(default))
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"data": {"source": "pairs.jsonl"}}))  # 8 records
    result = snakemake(tmp_path, "-n", "--configfile", "my.yaml")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "data.max_samples: 12 (inherited from the embedded default config.yaml: my.yaml does not set it) asks for more "
        "samples than the 8 records of data.source 'pairs.jsonl'; set data.max_samples: 8 (or fewer) under data: in "
        "my.yaml"
    ) in out, out[-2000:]
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"data": {"source": "pairs.jsonl", "max_samples": 4}}))
    again = snakemake(tmp_path, "-n", "--configfile", "my.yaml")
    assert again.returncode == 0, (again.stdout + again.stderr)[-2000:]
