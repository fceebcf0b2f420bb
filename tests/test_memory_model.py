"""The engine's memory model: by hand, against a measured pass, and the up-front check that a run fits its budget."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_tiny_project

from headattr.engine.budget import check_fits, largest_pass_bytes
from headattr.engine.cost import ModelDims, activation_bytes
from headattr.errors import ConfigError
from headattr.pipeline.checks import job_budget, model_dims, validate_config

ROOT = Path(__file__).resolve().parents[1]
DIMS = ModelDims(n_layers=3, n_heads=2, hidden=8, intermediate=16, vocab=10, gated_mlp=True, dtype_bytes=4)


def test_activation_bytes_by_hand():
    """T = 4 tokens, S = 2 scored, materialised attention, fp32 (values from the module docstring's terms)."""
    t, d, i, h, v, s, f = 4, 8, 16, 2, 10, 2, 4
    kept = 3 * t * i * f + 3 * t * d * f + 3 * t * d * f + h * t * t * f  # MLP, norms + z, q/k/v, probabilities
    first = 3 * t * i * f + 2 * t * d * f
    transient = max(2 * h * t * t * f + t * i * f, 3 * t * i * f + 2 * h * t * t * f)
    logits = s * v * f
    head = t * d * f + s * v * f + logits + s * v * f  # with the log-sum-exp's exponentials
    assert (kept, first, transient, head) == (1664, 1024, 1024, 368)
    plain = 2 * kept + first + max(head, logits + transient)
    assert activation_bytes(DIMS, t, 3, s, rows=2) == 2 * plain == 2 * 5456
    whole = 3 * t * d * f + max(head, logits + kept + transient)
    assert activation_bytes(DIMS, t, 3, s, checkpointed=3) == whole == 3152
    # every_k over layers 0 and 2 of 3: layer 1 keeps its activations, layers 0 and 2 only their inputs
    every = 2 * t * d * f + kept + max(head, logits + kept + transient)
    assert activation_bytes(DIMS, t, 3, s, checkpointed=2, first_checkpointed=True) == every
    # a large vocabulary makes the head's phase the peak: the fp32 copy the loss keeps and one temporary
    wide = ModelDims(**{**DIMS.__dict__, "vocab": 1000})
    assert activation_bytes(wide, t, 3, s) == 2 * kept + first + t * d * f + 3 * s * 1000 * f
    fused = 3 * t * i * f + 3 * t * d * f + 4 * t * d * f + h * t * f
    assert activation_bytes(DIMS, t, 2, s, fused_attention=True) == fused + first + max(head, logits + 3 * t * i * f)


def test_bf16_keeps_fp32_copies():
    """bf16 values halve the MLP, not the fp32 norm inputs, gated z or logits copy; eager keeps both probability
    copies (fp32 softmax, its bf16 cast)."""
    bf16 = ModelDims(**{**DIMS.__dict__, "dtype_bytes": 2})
    t, d, i, h, v, s = 4, 8, 16, 2, 10, 2
    kept = 3 * t * i * 2 + 3 * t * d * 4 + 3 * t * d * 2 + h * t * t * (4 + 2)
    first = 3 * t * i * 2 + 2 * t * d * 4
    head = t * d * 4 + s * v * 4 + s * v * 2 + s * v * (4 + 2)
    layers = s * v * 2 + max(2 * h * t * t * 2 + t * i * 2, 3 * t * i * 2 + 2 * h * t * t * 4)
    assert activation_bytes(bf16, t, 3, s) == 2 * kept + first + max(head, layers)


def test_model_predicts_a_measured_pass_within_20_percent(tmp_path):
    """bench/memory_slice.py on a tiny LLaMA (2 layers, T 256, 2 rows, fp32 and bf16): predicted / measured peak
    in [0.8, 1.2], with and without checkpointing, and checkpointing measurably lowers the peak."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "bench" / "memory_slice.py"), "--shape", "tiny", "--seq", "256", "--rows", "2"]
    cmd += ["--vocab", "8192", "--threads", "1", "--json", str(out)]
    subprocess.run(cmd, check=True, timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    rows = {(r["dtype"], r["checkpointing"]): r for r in json.loads(out.read_text())}
    assert len(rows) == 4
    for row in rows.values():
        assert 0.8 <= row["predicted"] / row["measured"] <= 1.2, row
    for dtype in ("float32", "bfloat16"):
        assert rows[dtype, "whole_layer"]["measured"] < rows[dtype, "none"]["measured"]


@pytest.fixture
def project(tmp_path):
    write_tiny_project(tmp_path)
    return tmp_path


def _config(project, **ig_model):
    config = yaml.safe_load((project / "config.yaml").read_text())
    for dotted, value in ig_model.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


def test_run_over_its_budget_fails_at_parse_naming_the_knobs(project):
    """The tiny project's largest pass (16 rows, all layers, 48 tokens, 70 % scored) against budgets around it."""
    dims = model_dims({"path": "tiny-model", "dtype": "float32"}, project)
    need = largest_pass_bytes(dims, 48, 0.7, 16, fused_attention=True)
    ckpt = largest_pass_bytes(dims, 48, 0.7, 16, fused_attention=True, checkpointing="whole_layer")
    assert ckpt < need
    with pytest.raises(ConfigError) as info:
        validate_config(_config(project, ig__memory_budget_gib=0.99 * need / 2**30), project)
    message = str(info.value)
    for knob in ("ig.memory_budget_gib", "ig.rows_per_pass", "model.activation_checkpointing: whole_layer"):
        assert knob in message, message
    assert f"needs {need / 2**20:.1f} MiB" in message and f"whole_layer ({ckpt / 2**20:.1f} MiB)" in message
    validate_config(_config(project, ig__memory_budget_gib=1.01 * need / 2**30), project)
    between = (ckpt + need) / 2 / 2**30
    validate_config(
        _config(project, ig__memory_budget_gib=between, model__activation_checkpointing="whole_layer"), project
    )
    with pytest.raises(ConfigError, match="ig.memory_budget_gib"):
        validate_config(_config(project, ig__memory_budget_gib=between), project)


def test_one_row_over_the_budget_fails_without_rows_per_pass():
    need = largest_pass_bytes(DIMS, 4, 0.5, 1, fused_attention=False)
    assert check_fits(DIMS, 4, 0.5, need, None, False) == need
    with pytest.raises(ConfigError) as info:
        check_fits(DIMS, 4, 0.5, need - 1, None, False)
    assert "ig.rows_per_pass" not in str(info.value) and "1 row(s)" in str(info.value)


def test_job_budget_is_the_configured_one_or_none_on_cpu():
    model = {"path": "m", "device": "cpu", "dtype": "float32"}
    assert job_budget(model, {"memory_budget_gib": 0.5}) == (2**29, "ig.memory_budget_gib")
    assert job_budget(model, {"memory_budget_gib": None}) is None


def test_cuda_default_budget_is_free_memory_less_the_weights(project, monkeypatch):
    """With ig.memory_budget_gib null on CUDA the job's budget is the engine default less the weights to load."""
    import torch

    from headattr.engine import gate_engine
    from headattr.models import loading

    monkeypatch.setattr(loading, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(gate_engine, "default_memory_budget", lambda device: 10 * 2**30)
    model = {"path": "tiny-model", "device": "auto", "dtype": "float32"}
    dims = model_dims(model, project)
    weights = (dims.n_layers * dims.layer_params + 2 * dims.vocab * dims.hidden) * 4
    budget, source = job_budget(model, {"memory_budget_gib": None}, project)
    assert budget == 10 * 2**30 - weights and "cuda:0" in source and "ig.memory_budget_gib null" in source


def test_attribute_job_over_budget_fails_before_loading_the_model(project, monkeypatch, tmp_path):
    """stages.attribute checks the budget (here 1 KiB) before it loads any weights."""
    import numpy as np

    from headattr.data.samples import Sample, pack_samples
    from headattr.objective.masking import draw_masks, pack_masks
    from headattr.pipeline import stages
    from headattr.pipeline.dumps import save_npz

    monkeypatch.chdir(project)
    monkeypatch.setattr(stages, "load_adapter", lambda cfg: pytest.fail("the model was loaded"))
    samples = [Sample("s0", np.arange(5, 25), 2, 20, "a")]
    save_npz(tmp_path / "tokens.npz", pack_samples(samples))
    save_npz(tmp_path / "masks.npz", pack_masks(samples, draw_masks(samples, [0.5], "bernoulli", 1), [0.5]))
    model = {"path": "tiny-model", "device": "cpu", "dtype": "float32"}
    engine = {"rows_per_pass": 4, "memory_budget_gib": 2**-20}
    with pytest.raises(ConfigError, match="ig.memory_budget_gib: the largest IG pass"):
        stages.attribute(tmp_path / "tokens.npz", tmp_path / "masks.npz", model, {"mask_probs": [0.5]}, engine, "x")
