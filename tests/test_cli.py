"""The CLI (`headattr attribute`): the files it writes beside its dump, and the workflow's model checks before IG."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import N_HEADS, N_LAYERS, write_tiny_project

from headattr.cli import main
from headattr.data.sources import read_table, sample_records, to_records
from headattr.data.tokenize import tokenize_records
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError
from headattr.models.loading import load_adapter
from headattr.objective.masking import unpack_masks
from headattr.pipeline import attribute as attribute_module
from headattr.pipeline.attribute import AttributionSettings, run_attribution
from headattr.pipeline.checks import check_inputs, validate_config
from headattr.pipeline.dumps import load_dump, load_npz


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_tiny_project(root)
    return root


def cli(project, *args):
    return [
        "attribute",
        "--model",
        str(project / "tiny-model"),
        "--data",
        str(project / "pairs.jsonl"),
        "--device",
        "cpu",
        "--max-len",
        "48",
        *args,
    ]


def test_cli_writes_masks_and_the_users_files_beside_its_dump(project, tmp_path):
    out = tmp_path / "run" / "ig.npz"
    args = ["--max-samples", "3", "--method", "joint", "--steps", "2", "--mask-probs", "0.3", "0.6"]
    assert main(cli(project, *args, "--postprocess", "abs", "--mask-seed", "5", "--out", str(out))) == 0
    dump = load_dump(out)
    ig = dump["ig"].astype(np.float64)  # [N, n_p, L, H]
    n = ig.shape[0]
    assert ig.shape == (3, 2, N_LAYERS, N_HEADS)

    # the masks it drew reproduce its dump exactly when IG is run again from them
    packed = load_npz(out.with_suffix(".masks.npz"))
    assert packed["sample_ids"].tolist() == dump["sample_ids"].tolist()
    masks = unpack_masks(packed)
    model_cfg = {"path": str(project / "tiny-model"), "dtype": "float32", "device": "cpu"}
    _, tokenizer, adapter = load_adapter(model_cfg | {"trust_remote_code": False, "adapter": None})
    records = sample_records(to_records(read_table(str(project / "pairs.jsonl"))), 3, 0)
    samples, _ = tokenize_records(records, tokenizer, 48, shift=adapter.shift_logits)
    assert [s.sample_id for s in samples] == dump["sample_ids"].tolist()
    assert all(masks[s.sample_id].shape == (2, s.length) and masks[s.sample_id].any() for s in samples)
    settings = AttributionSettings(method="joint", steps=2, mask_probs=[0.3, 0.6], mask_seed=5)
    again, _ = run_attribution(GateEngine(adapter), samples, masks, settings, progress=False)
    np.testing.assert_array_equal(again["ig"], dump["ig"])

    # the users' files, read as they read them, against the dump
    imp = torch.load(out.with_suffix(".head_importance.pt"), weights_only=True)
    theirs = np.stack([imp["importance_scores"][layer].numpy() for layer in range(N_LAYERS)])
    np.testing.assert_allclose(theirs, np.abs(ig.mean(1)).mean(0), rtol=1e-6)  # mean_i |IG_i| of the loss
    ours = np.stack([imp["headattr_importance"][layer].numpy() for layer in range(N_LAYERS)])
    heads = pd.read_csv(out.with_suffix(".heads.csv")).sort_values(["layer", "head"])
    np.testing.assert_allclose(ours.ravel(), heads["importance"].to_numpy(), rtol=1e-6)
    assert imp["metadata"]["ig_postprocess"] == "abs" and imp["metadata"]["sample_ids"] == dump["sample_ids"].tolist()
    per = torch.load(out.with_suffix(".per_sample_ig.pt"), weights_only=True)["per_sample_ig"].numpy()
    np.testing.assert_allclose(per, ig.mean(1).reshape(n, N_LAYERS * N_HEADS), rtol=1e-6)
    assert len(pd.read_csv(out.with_suffix(".completeness.csv"))) == n * 2


def workflow_message(project, **changes) -> str:
    """The workflow's up-front message for the tiny project's config with ``changes`` (section -> values)."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["model"]["path"] = str(project / "tiny-model")
    for section, values in changes.items():
        config[section].update(values)
    with pytest.raises(ConfigError) as info:
        check_inputs(validate_config(config, project), project, passed=None)
    return str(info.value)


CLI_CASES = {
    "mask_id_outside_vocabulary": (["--mask-token-id", "99999"], {"model": {"mask_token_id": 99999}}),
    "max_len_beyond_positions": (["--max-len", "256"], {"data": {"max_len": 256}}),
    "causal_objective_on_masked_lm": (["--objective", "causal"], {"objective": {"kind": "causal"}}),
}


@pytest.mark.parametrize("flags,changes", CLI_CASES.values(), ids=CLI_CASES)
def test_cli_refuses_what_the_workflow_refuses_before_any_ig(project, tmp_path, capsys, monkeypatch, flags, changes):
    expected = workflow_message(project, **changes)
    capsys.readouterr()
    ran = []
    monkeypatch.setattr(attribute_module, "run_attribution", lambda *a, **k: ran.append(1))
    assert main(cli(project, *flags, "--out", str(tmp_path / "x.npz"))) == 2
    assert capsys.readouterr().err.strip() == f"headattr: error: {expected}"
    assert not ran and not list(tmp_path.iterdir())


def test_cli_allow_mismatch_runs_the_causal_objective_on_a_masked_lm(project, tmp_path):
    out = tmp_path / "causal.npz"
    args = ["--objective", "causal", "--allow-mismatch", "--max-samples", "1", "--steps", "1", "--out", str(out)]
    assert main(cli(project, *args)) == 0
    assert load_dump(out)["mask_probs"].tolist() == [1.0] and not out.with_suffix(".masks.npz").exists()
