"""sparse_validation (issue 24, items 3-5): config checks at parse, the plan of versioned jobs, the sources and
controls, the table and report numbers, and a planted model on which adaptive must beat uniform."""

import json

import pytest
import yaml
from helpers import write_tiny_project

from headattr.errors import ConfigError
from headattr.models import adapters
from headattr.pipeline.checks import validate_config


@pytest.fixture
def project(tmp_path):
    write_tiny_project(tmp_path)
    return tmp_path


def sparse_config(project, **sparse):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["sparse_validation"] = {"tasks": ["resources/tasks/copy.yaml"], **sparse}
    return config


def position_limit(project):
    return json.loads((project / "tiny-model" / "config.json").read_text())["max_position_embeddings"]


BAD = {
    "select_zero": ({"select": [0.3, 0.0]}, r"sparse_validation.select: \[0.0\] not in \(0, 1\]"),
    "select_above_one": ({"select": [1.5]}, r"sparse_validation.select: \[1.5\] not in \(0, 1\]"),
    "skip_one": ({"skip": 1.0}, r"sparse_validation.skip: 1.0 is not in \[0, 1\)"),
    "skip_negative": ({"skip": -0.1}, r"sparse_validation.skip: -0.1 is not in \[0, 1\)"),
    "unknown_source": ({"sources": ["per_layer", "uniformm"]}, r"sparse_validation.sources: unknown \['uniformm'\]"),
    "unknown_controls_of": ({"controls_of": "stp"}, r"sparse_validation.controls_of: 'stp' is not in ig.methods"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sparse_values_fail_at_parse(project, case):
    changes, message = BAD[case]
    with pytest.raises(ConfigError, match=message):
        validate_config(sparse_config(project, **changes), project)


def test_block_size_above_the_model_positions_fails(project):
    limit = position_limit(project)
    validate_config(sparse_config(project, block_size=limit), project)
    with pytest.raises(ConfigError, match=rf"sparse_validation.block_size: {limit + 1} exceeds the longest sequence"):
        validate_config(sparse_config(project, block_size=limit + 1), project)


def test_family_without_attention_hook_fails(project, monkeypatch):
    config = sparse_config(project)
    config["model"]["attn_implementation"] = "flash_attention_2"
    with pytest.raises(ConfigError, match="sparse_validation: model.attn_implementation flash_attention_2"):
        validate_config(config, project)
    spec = adapters.FAMILIES["bert"]
    monkeypatch.setitem(adapters.FAMILIES, "bert", type(spec)(**{**spec.__dict__, "attention": None}))
    with pytest.raises(ConfigError, match="sparse_validation: the bert family names no attention callable"):
        validate_config(sparse_config(project), project)


def test_off_by_default_checks_nothing(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["sparse_validation"] = {"select": [2.0], "skip": 1.0}  # no tasks: the section is off
    assert validate_config(config, project)["sparse_validation"]["tasks"] == []
