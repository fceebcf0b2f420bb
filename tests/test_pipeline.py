"""Data -> tokens -> masks -> IG -> dump -> aggregate, through the CLI and the package, on local tiny models."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import N_HEADS, N_LAYERS, make_tokenizer, text_records, tiny_bert

from headattr.cli import main
from headattr.data.sources import read_table, sample_records, to_records
from headattr.data.tokenize import tokenize_records
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError, DataError, DumpError
from headattr.models.adapters import Adapter
from headattr.models.loading import load_model, resolve_device
from headattr.objective.masking import draw_masks
from headattr.pipeline.aggregate import aggregate, completeness_summary, completeness_table, score_matrix
from headattr.pipeline.attribute import AttributionSettings, run_attribution
from headattr.pipeline.dumps import load_dump, save_npz


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    pd.DataFrame(text_records(6)).to_json(path, orient="records", lines=True)
    return path


def test_tokenization_target_is_the_response():
    tok = make_tokenizer()
    rec = {"id": "x", "category": "a", "prompt": "w1 w2 w3", "response": "w4 w5"}
    (sample,), report = tokenize_records([rec], tok, max_len=64)
    assert sample.input_ids[0] == tok.cls_token_id and sample.input_ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(sample.input_ids[sample.target_start : sample.target_end].tolist()) == [
        "w4",
        "w5",
    ]
    (text_sample,), _ = tokenize_records([{"id": "t", "text": "w1 w2"}], tok, max_len=64)
    assert (text_sample.target_start, text_sample.target_end) == (1, 3)


def test_max_len_policies_are_counted():
    tok = make_tokenizer()
    recs = [{"id": "a", "prompt": "w1", "response": "w2 " * 30}, {"id": "b", "prompt": "w1", "response": "w3"}]
    kept, report = tokenize_records(recs, tok, max_len=10, length_policy="drop")
    assert [s.sample_id for s in kept] == ["b"] and report.n_dropped_too_long == 1
    kept, report = tokenize_records(recs, tok, max_len=10, length_policy="truncate")
    assert kept[0].length == 10 and report.n_truncated == 1
    with pytest.raises(DataError, match="all 2 samples are longer than max_len=3"):
        tokenize_records(recs, tok, max_len=3)
    with pytest.raises(DataError, match="sample 'e': empty response"):
        tokenize_records([{"id": "e", "prompt": "w1", "response": "  "}], tok, max_len=10)


def test_sources_and_seeded_stratified_sampling(data_file, tmp_path):
    records = to_records(read_table(str(data_file)))
    assert len(records) == 6 and records[0]["id"] == "s0"
    first = sample_records(records, 4, seed=3, stratify=True)
    assert first == sample_records(records, 4, seed=3, stratify=True)
    assert sorted(r["category"] for r in first) == ["a", "a", "b", "b"]
    csv = tmp_path / "d.csv"
    pd.DataFrame({"q": ["w1"], "a": ["w2"]}).to_csv(csv, index=False)
    assert to_records(read_table(str(csv)), {"prompt": "q", "response": "a"})[0]["id"] == "row-0"
    with pytest.raises(DataError, match="prompt field 'prompt'"):
        to_records(read_table(str(csv)), {"response": "a"})
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(str(tmp_path / "missing.jsonl"))


def _run(model_dir, data_file, method="per_layer", rows=4):
    model, tok = load_model(str(model_dir), device="cpu")
    adapter = Adapter(model, mask_token_id=tok.mask_token_id)
    samples, _ = tokenize_records(to_records(read_table(str(data_file))), tok, 64)
    settings = AttributionSettings(method=method, steps=3, mask_probs=[0.3, 0.6], mask_seed=5)
    masks = draw_masks(samples, settings.mask_probs, "bernoulli", 5)
    return run_attribution(GateEngine(adapter, rows_per_pass=rows), samples, masks, settings, progress=False)


def test_same_seeds_give_bit_identical_dumps(model_dir, data_file, tmp_path):
    a, meta_a = _run(model_dir, data_file)
    b, meta_b = _run(model_dir, data_file)
    save_npz(tmp_path / "a.npz", a, meta_a)
    save_npz(tmp_path / "b.npz", b, meta_b)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_dump(tmp_path / "a.npz", expect={"method": "per_layer", "steps": 3})
    assert loaded["ig"].shape == (6, 2, N_LAYERS, N_HEADS) and loaded["ig"].dtype == np.float32
    assert json.loads(str(loaded["meta_json"]))["settings"]["mask_probs"] == [0.3, 0.6]
    with pytest.raises(DumpError, match="steps=3, expected 8"):
        load_dump(tmp_path / "a.npz", expect={"steps": 8})


def test_truncated_dump_is_refused(tmp_path, model_dir, data_file):
    a, meta = _run(model_dir, data_file, "joint")
    save_npz(tmp_path / "a.npz", a, meta)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError, match="truncated"):
        load_dump(tmp_path / "cut.npz")
    save_npz(tmp_path / "other.npz", {"x": np.zeros(2)})
    with pytest.raises(DumpError, match="not a headattr dump"):
        load_dump(tmp_path / "other.npz")


def test_aggregation_against_numpy(model_dir, data_file):
    arrays, _ = _run(model_dir, data_file, "joint")
    table = aggregate(arrays)
    x = arrays["ig"].astype(np.float64).mean(1)
    np.testing.assert_allclose(score_matrix(table), x.mean(0))
    np.testing.assert_allclose(score_matrix(table, "std"), x.std(0, ddof=1))
    np.testing.assert_allclose(score_matrix(table, "se"), x.std(0, ddof=1) / np.sqrt(6))
    np.testing.assert_allclose(score_matrix(table, "abs_score"), np.abs(arrays["ig"]).mean((0, 1)), rtol=1e-6)
    assert table.loc[table["rank"] == 1, "importance"].item() == table["importance"].max()
    comp = completeness_table(arrays)
    assert len(comp) == 6 * 2 and np.allclose(comp["ig_sum"] - comp["delta_loss"], comp["gap"])
    assert completeness_summary(arrays)["gap_abs_max"] == np.abs(arrays["gap"]).max()


def test_checkpoint_resume_skips_finished_samples(model_dir, data_file, tmp_path):
    model, tok = load_model(str(model_dir), device="cpu")
    adapter = Adapter(model, mask_token_id=tok.mask_token_id)
    samples, _ = tokenize_records(to_records(read_table(str(data_file))), tok, 64)
    settings = AttributionSettings(method="joint", steps=2, mask_probs=[0.5])
    masks = draw_masks(samples, [0.5], "bernoulli", 0)
    engine = GateEngine(adapter)
    full, _ = run_attribution(engine, samples, masks, settings, checkpoint_dir=tmp_path / "ck", progress=False)
    calls, counted, stats = [], engine.counts.as_dict(), {}
    engine.gradients = lambda *a, **k: calls.append(1)
    again, _ = run_attribution(
        engine, samples, masks, settings, checkpoint_dir=tmp_path / "ck", progress=False, stats=stats
    )
    assert not calls and all(np.array_equal(full[k], again[k]) for k in full)
    assert stats == {"resumed": len(samples)} and engine.counts.as_dict() == counted  # nothing ran, nothing counted


def test_cli_runs_one_attribution(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    code = main(
        [
            "attribute",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            "--max-samples",
            "2",
            "--method",
            "joint",
            "--steps",
            "2",
            "--mask-probs",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--max-len",
            "64",  # the default 256 is beyond the tiny BERT's 80 positions: refused like the workflow does
        ]
    )
    assert code == 0
    dump = load_dump(out)
    assert dump["ig"].shape == (2, 1, N_LAYERS, N_HEADS)
    assert len(pd.read_csv(out.with_suffix(".heads.csv"))) == N_LAYERS * N_HEADS
    assert "completeness gap" in capsys.readouterr().err
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {model_dir}\nsteps: 0\n")
    assert main(["attribute", "--config", str(cfg)]) == 2
    assert "ig.steps" in capsys.readouterr().err


def test_loading_errors(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model(str(model_dir), dtype="float8")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(
        json.dumps({"model_type": "llada", "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig"}})
    )
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_model(str(remote))
    model, tok = load_model(str(model_dir), dtype="float64", device="cpu")
    assert next(model.parameters()).dtype == torch.float64
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
