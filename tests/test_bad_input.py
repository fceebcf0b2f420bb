"""Bad input, tried as a new user would: each case fails with one clear error naming the key, file or sample.

docs/errors.md lists these cases with their messages.
"""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import make_tokenizer, tiny_bert, tiny_gpt2, write_tiny_project

from headattr.data.sources import read_table, to_records
from headattr.data.tokenize import tokenize_records
from headattr.errors import ConfigError, DataError
from headattr.models.adapters import Adapter
from headattr.models.loading import load_model
from headattr.pipeline import stages
from headattr.pipeline.checks import validate_config
from headattr.pipeline.dumps import atomic_write, save_npz


@pytest.fixture
def project(tmp_path):
    write_tiny_project(tmp_path)
    return tmp_path


def config_with(project, **changes):
    config = yaml.safe_load((project / "config.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


CONFIG_CASES = {
    "unknown_key": ({"ig__stepz": 3}, "stepz"),
    "wrong_type": ({"ig__steps": "eight"}, "steps"),
    "integer_given_as_float": ({"ig__steps": 2.0}, "config key 'ig.steps': 2.0 is not of type 'integer'"),
    "max_samples_given_as_float": ({"data__max_samples": 6.0}, "config key 'data.max_samples': 6.0 is not of type"),
    "p_above_one": ({"objective__mask_probs": [0.5, 1.5]}, "mask_probs"),
    "p_zero": ({"objective__mask_probs": [0.0]}, "mask_probs"),
    "steps_below_one": ({"ig__steps": 0}, "steps"),
    "duplicate_seeds": ({"seeds": [47, 47]}, "seeds"),
    "unknown_method": ({"ig__methods": ["per_head"]}, "methods"),
    "baseline_not_below_one": ({"ig__baseline": 1.0}, "baseline"),
    "unknown_rule": ({"ig__rule": "simpson"}, "rule"),
    "missing_data_file": ({"data__source": "nope.jsonl"}, "data.source"),
    "unknown_data_format": ({"data__source": "pairs.txt"}, "data.source"),
    "missing_model_path": ({"model__path": "models/llada/missing"}, "model.path"),
    "run_name_escapes_results": ({"run": "../../etc"}, "run"),
    "results_dir_escapes": ({"results_dir": "../elsewhere"}, "results_dir"),
    "lambdas_without_layered": ({"ig__lambdas": [0.0, 0.5, 1.0]}, "ig.lambdas"),
    "layer_shards_need_local_model": ({"shard__layers": 1, "model__path": "org/model"}, "shard.layers"),
    "unknown_autocast_dtype": ({"model__autocast": "float8"}, "autocast"),
    "memory_budget_not_positive": ({"ig__memory_budget_gib": 0}, "memory_budget_gib"),
    "unknown_activation_checkpointing": ({"model__activation_checkpointing": "one_in_two"}, "activation_checkpointing"),
    "memory_budget_too_small": ({"ig__memory_budget_gib": 1e-4}, "model.activation_checkpointing: whole_layer"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_case(project, case):
    changes, key = CONFIG_CASES[case]
    if case == "unknown_data_format":
        (project / "pairs.txt").write_text("x")
    with pytest.raises(ConfigError) as info:
        validate_config(config_with(project, **changes), project)
    assert key in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(project):
    with pytest.raises(ConfigError, match="model.device.*CUDA is not available"):
        validate_config(config_with(project, model__device="cuda"), project)


def test_unreadable_data_file(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"id": 1, "prompt": "a"}\nnot json at all\n')
    with pytest.raises(DataError, match="broken.jsonl' line 2 is not valid JSON"):
        read_table(str(bad))
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not parquet")
    with pytest.raises(DataError, match="cannot read .*broken.parquet"):
        read_table(str(bad))


def test_wrong_field_names(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "w1", "answer": "w2"}) + "\n")
    with pytest.raises(DataError, match="data.fields: neither response field 'response' nor text field 'text'"):
        to_records(read_table(str(path)))


def test_duplicate_sample_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": "a", "text": "w1"}) + "\n" for _ in range(2)))
    with pytest.raises(DataError, match="data.fields.id: sample ids are not unique"):
        to_records(read_table(str(path)))


def test_empty_response_names_the_sample():
    with pytest.raises(DataError, match="sample 'q7': empty response"):
        tokenize_records([{"id": "q7", "prompt": "w1", "response": ""}], make_tokenizer(), 32)


def test_every_sample_longer_than_max_len():
    recs = [{"id": f"r{i}", "prompt": "w1 w2", "response": "w3 w4 w5"} for i in range(3)]
    with pytest.raises(DataError, match="all 3 samples are longer than max_len=4"):
        tokenize_records(recs, make_tokenizer(), 4)


def test_model_needing_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada", "auto_map": {"AutoConfig": "x.Y"}}))
    with pytest.raises(ConfigError, match="model.trust_remote_code: true"):
        load_model(str(tmp_path))


def test_unknown_architecture():
    model = tiny_bert()
    model.config.model_type = "mamba"
    with pytest.raises(ConfigError, match="unknown architecture.*model.adapter"):
        Adapter(model)


def test_tokenizer_without_mask_token(tmp_path):
    model_dir = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(model_dir)
    tok = make_tokenizer()
    tok.mask_token = None
    tok.save_pretrained(model_dir)
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "a", "prompt": "w1", "response": "w2 w3"}) + "\n")
    cfg = {"path": str(model_dir), "adapter": None, "trust_remote_code": False, "mask_token_id": None}
    with pytest.raises(ConfigError, match="model.mask_token_id: the tokenizer .* has no mask token"):
        stages.tokenize(records, cfg, 32, "drop", False, tmp_path / "t.npz")
    stages.tokenize(records, cfg, 32, "drop", False, tmp_path / "t.npz", objective="causal")


def test_disk_full_while_writing_leaves_no_partial_file(tmp_path):
    target = tmp_path / "dump.npz"

    def write(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, write)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    save_npz(target, {"x": np.arange(3)})
    with pytest.raises(OSError):
        atomic_write(target, write)
    assert np.load(target)["x"].tolist() == [0, 1, 2], "a failed rewrite keeps the finished file intact"


def test_unnamespaced_hub_id_offline_says_so(project, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        validate_config(config_with(project, model__path="bert-base-uncased"), project)
    assert str(info.value) == (
        "model.path: 'bert-base-uncased' is not found locally, and the hub is offline (HF_HUB_OFFLINE / "
        "TRANSFORMERS_OFFLINE is set) to fetch it as a hub id; download it and set model.path to its folder"
    )


def test_hub_id_accepted_when_the_hub_answers(project, monkeypatch):
    import headattr.models.loading as loading

    monkeypatch.setattr(loading, "hub_unreachable", lambda: None)
    config = validate_config(config_with(project, model__path="bert-base-uncased"), project)
    assert config["model"]["path"] == "bert-base-uncased"
    monkeypatch.setattr(loading, "hub_unreachable", lambda: "the hub is not reachable (URLError)")
    with pytest.raises(ConfigError, match=r"the hub is not reachable \(URLError\) to fetch it as a hub id"):
        validate_config(config_with(project, model__path="bert-base-uncased"), project)


def test_hub_id_in_the_local_cache_is_accepted_offline(project, tmp_path, monkeypatch):
    """An un-namespaced id whose config.json is in the Hugging Face cache loads offline: not refused."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--bert-base-uncased" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--bert-base-uncased" / "refs").mkdir()
    (cache / "models--bert-base-uncased" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    config = validate_config(config_with(project, model__path="bert-base-uncased"), project)
    assert config["model"]["path"] == "bert-base-uncased"
    with pytest.raises(ConfigError, match="'distilbert-base-uncased' is not found locally, and the hub is offline"):
        validate_config(config_with(project, model__path="distilbert-base-uncased"), project)


def test_namespaced_hub_id_offline_says_so_at_the_model_check(project, monkeypatch):
    from headattr.pipeline.checks import check_inputs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = validate_config(config_with(project, model__path="org/model"), project)
    with pytest.raises(ConfigError) as info:
        check_inputs(config, project, passed=None)
    assert str(info.value) == (
        "model.path: 'org/model' is not found locally, and the hub is offline (HF_HUB_OFFLINE / "
        "TRANSFORMERS_OFFLINE is set) to fetch it as a hub id; download it and set model.path to its folder"
    )


@pytest.fixture
def empty_hf_caches(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "datasets-cache"


def test_hf_data_source_offline_fails_before_any_job(project, empty_hf_caches):
    with pytest.raises(ConfigError) as info:
        validate_config(config_with(project, data__source="hf:gsm8k:main"), project)
    assert str(info.value) == (
        "data.source: 'hf:gsm8k:main' is a Hugging Face hub data set that is not in the local datasets cache, and "
        "the hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set); download it once where the hub is "
        "reachable (datasets.load_dataset('gsm8k').save_to_disk(DIR)) and set data.source to DIR (or to a jsonl / "
        "parquet file)"
    )
    with pytest.raises(ConfigError, match=r"^validation.data.source: 'hf:org/set' is a Hugging Face hub data set"):
        validate_config(config_with(project, validation__data={"source": "hf:org/set"}), project)
    (empty_hf_caches / "org___set").mkdir(parents=True)  # cached: load_dataset reads it offline
    validate_config(config_with(project, validation__data={"source": "hf:org/set"}), project)


def test_hf_data_source_unreachable_in_the_job_names_the_source(monkeypatch):
    import datasets
    import requests

    def unreachable(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/datasets/gsm8k")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(
        DataError,
        match=r"^data.source: 'hf:gsm8k' is a Hugging Face hub data set .* and the hub is "
        r"not reachable \(ConnectionError: Max retries",
    ):
        read_table("hf:gsm8k")
