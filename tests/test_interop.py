"""The users' files both ways: our head_importance.pt read by their loader and pruning rule (written here from their
file format), and their files read by ours, with the same meaning (docs/interop.md)."""

import numpy as np
import pytest
import torch

from headattr.pipeline.aggregate import aggregate, importance_matrix
from headattr.pipeline.exports import load_importance_file, write_exports

N, P, L, H, K = 6, 2, 2, 4, 3


def _dump():
    """IG of the loss with planted heads: L1H2, L1H3 raise the loss (large positive IG), L0H0, L0H2 lower it
    (large negative IG), so signed, abs and relu rank them differently."""
    rng = np.random.default_rng(3)
    ig = rng.normal(0.0, 0.05, (N, P, L, H))
    ig[:, :, 1, 2] += 1.0
    ig[:, :, 1, 3] += 0.8
    ig[:, :, 0, 0] -= 1.2
    ig[:, :, 0, 2] -= 0.6
    return {
        "ig": ig.astype(np.float32),
        "sample_ids": np.array([f"s{i}" for i in range(N)]),
        "mask_probs": np.array([0.15, 0.5]),
        "meta_json": np.array('{"settings": {"method": "joint"}}'),
    }


def _their_prune_most(path, k):
    """The users' loader and global top-k rule: read importance_scores, prune the k highest over all layers."""
    scores = torch.load(path, map_location="cpu", weights_only=True)["importance_scores"]
    flat = [(float(v), layer, head) for layer in sorted(scores) for head, v in enumerate(scores[layer].tolist())]
    return {(layer, head) for _, layer, head in sorted(flat, reverse=True)[:k]}


def _their_scores(arrays, postprocess):
    x = arrays["ig"].astype(np.float64).mean(1)
    g = {"signed": x, "abs": np.abs(x), "relu": np.clip(x, 0.0, None)}[postprocess]
    return g.mean(0)


def _top(matrix, k, largest=True):
    order = np.argsort(matrix.ravel(), kind="stable")
    picked = order[::-1][:k] if largest else order[:k]
    return {divmod(int(i), matrix.shape[1]) for i in picked}


@pytest.mark.parametrize("postprocess", ["signed", "abs", "relu"])
def test_their_pruning_of_our_file_matches_their_script_and_our_tables(tmp_path, postprocess):
    arrays = _dump()
    heads = aggregate(arrays, postprocess)
    write_exports(arrays, heads, tmp_path / "head_importance.pt", tmp_path / "per_sample_ig.pt")
    pruned = _their_prune_most(tmp_path / "head_importance.pt", 2)
    assert pruned == _top(_their_scores(arrays, postprocess), 2)
    ours = importance_matrix(arrays, postprocess)
    expected = {"signed": {(1, 2), (1, 3)}, "abs": {(0, 0), (1, 2)}, "relu": {(1, 2), (1, 3)}}[postprocess]
    assert pruned == expected
    if postprocess == "signed":
        assert pruned == _top(ours, 2, largest=False)  # their most = the heads our table ranks last (-IG)
    if postprocess == "abs":
        assert pruned == _top(ours, 2)
    meta = torch.load(tmp_path / "head_importance.pt", weights_only=True)["metadata"]
    assert meta["ig_postprocess"] == postprocess
    assert "IG of the loss" in meta["importance_scores_convention"] and "-IG" in meta["headattr_importance_convention"]
    np.testing.assert_allclose(load_importance_file(tmp_path / "head_importance.pt", L, H), ours, rtol=1e-6)


@pytest.mark.parametrize("postprocess", ["signed", "relu", "abs"])
def test_users_file_imported_in_our_convention(tmp_path, postprocess):
    arrays = _dump()
    theirs = _their_scores(arrays, postprocess)
    path = tmp_path / "theirs.pt"
    scores = {layer: torch.tensor(theirs[layer], dtype=torch.float32) for layer in range(L)}
    torch.save({"importance_scores": scores, "metadata": {"ig_postprocess": postprocess}}, path)
    imported = load_importance_file(path, L, H)
    sign = 1.0 if postprocess == "abs" else -1.0
    np.testing.assert_allclose(imported, sign * theirs, rtol=1e-6)
    if postprocess == "signed":
        ours = importance_matrix(arrays, "signed")
        assert np.corrcoef(imported.ravel(), ours.ravel())[0, 1] == pytest.approx(1.0)


def test_refused_import_names_its_problem_not_the_unsafe_retry(tmp_path):
    from headattr.errors import ConfigError

    pickled = tmp_path / "np.pt"
    torch.save({"importance_scores": {0: torch.zeros(H)}, "extra": np.zeros(2)}, pickled)
    with pytest.raises(ConfigError) as info:
        load_importance_file(pickled, L, H, key="compare.importance_files.x")
    assert "compare.importance_files.x" in str(info.value) and "holds a Python object (numpy" in str(info.value)
    assert "weights_only=False" not in str(info.value) and "Re-running" not in str(info.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="junk.pt: cannot be read safely .*: not a torch file or truncated"):
        load_importance_file(junk, L, H)


def _bos_tokenizer():
    """A LLaDA-like tokenizer: a BOS token that its own wrapping does not add (no post-processor), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "w0", "w1", "w2", "w3"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="<mask>",
    )


def test_add_bos_prepends_the_tokenizers_bos_as_the_users_do():
    from headattr.data.tokenize import TokenizeOptions, encode_record

    tok, record = _bos_tokenizer(), {"id": "a", "prompt": "w0 w1", "response": "w2 w3"}
    parity = encode_record(record, tok, options=TokenizeOptions(separator=" ", add_bos=True))
    assert (parity.prefix, parity.prompt, parity.response) == ([2], [5, 6], [7, 8])
    default = encode_record(record, tok, options=TokenizeOptions(separator=" "))
    assert default.prefix == [] and default.prompt == [5, 6]


def test_add_bos_changes_only_the_keys_of_configs_that_set_it(tmp_path, monkeypatch):
    import yaml
    from helpers import write_tiny_project

    from headattr.pipeline.checks import validate_config
    from headattr.pipeline.keys import units

    monkeypatch.chdir(tmp_path)
    path = write_tiny_project(tmp_path)
    base = validate_config(yaml.safe_load(path.read_text()), tmp_path)
    write_tiny_project(
        tmp_path, extra={"data": {"source": "pairs.jsonl", "max_samples": 4, "max_len": 48, "add_bos": True}}
    )
    with_bos = validate_config(yaml.safe_load(path.read_text()), tmp_path)
    a, b = units(base), units(with_bos)
    assert base["data"]["add_bos"] is False and with_bos["data"]["add_bos"] is True
    assert "add_bos" not in a[0].slices["tokens"]["options"]
    assert all(
        u.keys["tokens"] != v.keys["tokens"] and u.keys["data"] == v.keys["data"] for u, v in zip(a, b, strict=True)
    )


def test_report_steps_note_reads_the_dumps_not_the_config():
    from headattr.report.document import steps_ran

    summaries = [
        {"method": "joint", "ran": {"rule": "gauss_legendre", "steps": 2, "tol": 0.01, "max_steps": 64}},
        {"method": "joint", "ran": {"rule": "gauss_legendre", "steps": 2, "tol": 0.01, "max_steps": 64}},
        {"method": "layered", "ran": {"rule": "gauss_legendre", "steps": 2, "tol": 0.01, "refine": "panels"}},
        {"method": "stp", "ran": {"rule": "riemann_stieltjes", "steps": 8, "tol": None}},
    ]
    note = steps_ran(summaries)
    assert note == (
        "joint: each path starts at 2 gauss_legendre nodes, doubled until its relative gap is <= 0.01 or "
        "`ig.max_steps` = 64 nodes (column steps); layered: each path starts at 2 gauss_legendre nodes, then split "
        "into Gauss-Legendre panels of as many nodes, bisected where their exact gaps are largest, until its "
        "relative gap is <= 0.01 or `ig.max_steps` = None nodes (column steps); stp: 8 riemann_stieltjes steps per "
        "path, no refinement"
    )


def test_editing_an_imported_file_in_place_changes_the_method_comparison_key(tmp_path, monkeypatch):
    import yaml
    from helpers import N_HEADS, N_LAYERS, write_tiny_project

    from headattr.pipeline.checks import validate_config
    from headattr.pipeline.keys import diagnostic_groups

    monkeypatch.chdir(tmp_path)
    path = write_tiny_project(tmp_path, extra={"compare": {"importance_files": {"old": "old.pt"}}})
    rows = {x: torch.arange(N_HEADS, dtype=torch.float32) for x in range(N_LAYERS)}
    torch.save({"importance_scores": rows}, tmp_path / "old.pt")
    before = sorted(diagnostic_groups(validate_config(yaml.safe_load(path.read_text()), tmp_path))["methods"])
    torch.save({"importance_scores": {x: -v for x, v in rows.items()}}, tmp_path / "old.pt")
    after = sorted(diagnostic_groups(validate_config(yaml.safe_load(path.read_text()), tmp_path))["methods"])
    assert len(before) == len(after) == 2 and set(before).isdisjoint(after)
