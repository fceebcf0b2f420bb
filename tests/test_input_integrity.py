"""Input integrity (issue 13): no silent wrong result, no stale resume, model problems caught at DAG start.

Each test builds a tiny local stand-in with the property of the case met with a real model or data set;
docs/errors.md lists every case with its message.
"""

import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import make_tokenizer, text_records, tiny_bert, tiny_gpt2, write_tiny_project

from headattr.data.samples import Sample
from headattr.data.sources import draw_order, read_table, to_records
from headattr.data.tokenize import Parts, TokenizeOptions, assemble, encode_pair, select_samples, tokenize_records
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError, DataError
from headattr.models.adapters import Adapter
from headattr.models.loading import load_model
from headattr.pipeline import stages
from headattr.pipeline.attribute import AttributionSettings, run_attribution
from headattr.pipeline.checks import check_inputs, validate_config
from headattr.pipeline.keys import units
from headattr.pipeline.workflow import report_error

DEMO_MODEL = Path(__file__).resolve().parents[1] / "resources" / "demo" / "model"


@pytest.fixture
def project(tmp_path, monkeypatch):
    write_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths of the config resolve against the work dir, as in Snakemake
    return tmp_path


def config_of(project, **changes):
    config = yaml.safe_load((project / "config.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(config, project)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# 1. stale resume and content keys ------------------------------------------------------------------------


def test_artifact_keys_follow_file_content_not_paths(project):
    before = units(config_of(project))[0].keys
    data = project / "pairs.jsonl"
    rows = data.read_text().splitlines()
    rows[0] = rows[0].replace('"response": "', '"response": "w1 ')
    data.write_text("\n".join(rows) + "\n")
    edited = units(config_of(project))[0].keys
    assert all(edited[stage] != before[stage] for stage in ("data", "tokens", "masks", "ig"))
    weights = project / "tiny-model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # replaced in place, same path
    reweighted = units(config_of(project))[0].keys
    assert reweighted["data"] == edited["data"] and reweighted["tokens"] == edited["tokens"]
    assert reweighted["ig"] != edited["ig"]


def test_resume_never_reuses_a_sample_computed_from_other_content(tmp_path):
    model = tiny_bert()
    engine = GateEngine(Adapter(model, mask_token_id=4), rows_per_pass=8)
    settings = AttributionSettings(method="joint", steps=2, mask_probs=[0.5]).validate()
    ids = np.array([2, 10, 11, 12, 13, 14, 3])
    masks = {"a": np.array([[0, 0, 1, 1, 0, 1, 0]], dtype=bool)}
    old = [Sample("a", ids, 1, 6)]
    new = [Sample("a", np.array([2, 20, 21, 22, 23, 24, 3]), 1, 6)]  # same id, same path, new text
    ckpt = tmp_path / "partial"
    run_attribution(engine, old, masks, settings, checkpoint_dir=ckpt, progress=False)
    resumed, _ = run_attribution(engine, new, masks, settings, checkpoint_dir=ckpt, progress=False)
    fresh, _ = run_attribution(engine, new, masks, settings, progress=False)
    assert np.array_equal(resumed["ig"], fresh["ig"])
    again, _ = run_attribution(engine, new, masks, settings, checkpoint_dir=ckpt, progress=False, fingerprint="w2")
    assert np.array_equal(again["ig"], fresh["ig"])
    other = run_attribution(engine, old, masks, settings, progress=False)[0]
    assert not np.array_equal(other["ig"], fresh["ig"]), "the two texts must give different IG for the test to bite"


# 2. missing fields ----------------------------------------------------------------------------------------


def test_missing_response_is_an_error_naming_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"id": "a", "prompt": "w1", "response": "w2"}, {"id": "b", "prompt": "w3"}]
    )
    with pytest.raises(DataError, match=r"line 2 \(id 'b'\) has no response field 'response' \(data.fields.response\)"):
        to_records(read_table(str(path)))


def test_text_rows_mixed_with_pairs_never_become_nan(tmp_path):
    rows = [{"id": "a", "prompt": "w1", "response": "w2"}, {"id": "t", "text": "w5 w6"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="line 2 .* has no prompt field"):
        to_records(read_table(str(path)))
    records = to_records(read_table(str(path)), on_bad_record="skip")
    assert records[1]["skip"] == "missing_prompt" and "nan" not in json.dumps(records)


def test_missing_category_is_not_a_category_named_nan(tmp_path):
    rows = [{"id": "a", "text": "w1", "category": "x"}, {"id": "b", "text": "w2"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="line 2 .* has no category field 'category'"):
        to_records(read_table(str(path)))
    records = to_records(read_table(str(path)), on_bad_record="skip")
    samples, report = tokenize_records(records, make_tokenizer(), 16)
    assert [s.sample_id for s in samples] == ["a"] and report.skipped == {"missing_category": 1}


def test_skipped_records_are_counted_in_both_manifests(tmp_path):
    rows = [*text_records(6), {"id": "x", "category": "a", "prompt": "w1"}]
    rows.append({"id": "y", "category": "a", "prompt": "w1", "response": " "})
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    info = stages.sample_data(str(src), {}, 6, False, 0, tmp_path / "r.jsonl", on_bad_record="skip")
    assert info["skipped"] == {"empty_response": 1, "missing_response": 1} and info["n_usable"] == 6
    model_dir = tmp_path / "m"
    make_tokenizer().save_pretrained(model_dir)
    tiny_bert().config.save_pretrained(model_dir)
    cfg = {"path": str(model_dir), "adapter": None, "trust_remote_code": False, "mask_token_id": None}
    report = stages.tokenize(tmp_path / "r.jsonl", cfg, 48, "drop", False, tmp_path / "t.npz", n=6)
    assert report["n_kept"] == 6 and sum(report["skipped"].values()) == report["n_visited"] - 6
    meta = json.loads(str(np.load(tmp_path / "t.npz")["meta_json"]))
    assert meta["tokenize"]["skipped"] == report["skipped"]
    for key in ("n_in", "n_kept", "n_truncated", "n_dropped_too_long", "skipped"):
        assert key in meta["tokenize"]


# 3. weights that do not fit the config -------------------------------------------------------------------


def bert_config_over_gpt2_weights(root: Path) -> Path:
    model_dir = root / "mixed"
    tiny_gpt2().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    tiny_bert().config.save_pretrained(model_dir)  # config.json of another architecture over the weights
    return model_dir


def test_weights_that_do_not_fit_the_config_fail_at_dag_start_and_at_load(project):
    bert_config_over_gpt2_weights(project)
    with pytest.raises(ConfigError, match=r"weights in 'mixed' do not fit its config.json.*missing"):
        check_inputs(config_of(project, model__path="mixed"), project)
    with pytest.raises(ConfigError, match="do not fit its config.json"):
        load_model(str(project / "mixed"), device="cpu")


def test_a_pooler_left_in_the_checkpoint_is_harmless(project):
    from transformers import BertModel

    model_dir = project / "tiny-model"
    base = BertModel(tiny_bert().config)  # has a pooler the masked LM does not use
    state = {f"bert.{k}": v for k, v in base.state_dict().items()}
    state.update({k: v for k, v in tiny_bert().state_dict().items() if k.startswith("cls.")})
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in state.items()}, model_dir / "model.safetensors")
    check_inputs(config_of(project), project)
    load_model(str(model_dir), device="cpu")


# 4. degenerate tokenization ------------------------------------------------------------------------------


def test_protein_text_that_tokenizes_to_unknown_tokens_fails():
    records = [{"id": f"p{i}", "text": seq} for i, seq in enumerate(["MKVLAAGIVG", "MSTNPKPQRK"])]
    with pytest.raises(DataError, match=r"sample 'p0': 1 of 1 target tokens are the tokenizer's unknown token"):
        tokenize_records(records, make_tokenizer(), 16)
    opts = TokenizeOptions(on_bad_record="skip")
    with pytest.raises(DataError, match="no usable sample in 2 records.*mostly_unknown"):
        tokenize_records(records, make_tokenizer(), 16, options=opts)


def test_identical_samples_are_counted_not_scored_twice():
    records = [{"id": "a", "text": "w1 w2"}, {"id": "b", "text": "w1 w2"}, {"id": "c", "text": "w3"}]
    samples, report = tokenize_records(records, make_tokenizer(), 16)
    assert [s.sample_id for s in samples] == ["a", "c"] and report.skipped == {"duplicate": 1}


def test_too_few_target_tokens_below_the_floor():
    records = [{"id": "a", "prompt": "w1", "response": "w2"}, {"id": "b", "prompt": "w1", "response": "w2 w3 w4"}]
    with pytest.raises(DataError, match="sample 'a': 1 target tokens, fewer than data.min_target_tokens=2"):
        tokenize_records(records, make_tokenizer(), 16, options=TokenizeOptions(min_target_tokens=2))


# 5. objective against architecture -----------------------------------------------------------------------


def test_objective_that_does_not_fit_the_architecture_is_refused(project):
    with pytest.raises(ConfigError, match="objective.kind: 'causal' .* bidirectional bert"):
        check_inputs(config_of(project, objective__kind="causal"), project)
    check_inputs(config_of(project, objective__kind="causal", objective__allow_mismatch=True), project)
    gpt = project / "gpt"
    tiny_gpt2().save_pretrained(gpt)
    make_tokenizer().save_pretrained(gpt)
    with pytest.raises(ConfigError, match="objective.kind: 'diffusion' .* causal gpt2"):
        check_inputs(config_of(project, model__path="gpt"), project)
    check_inputs(config_of(project, model__path="gpt", objective__kind="causal"), project)


# 7. the prompt/response boundary and special-token strings in data ---------------------------------------


def test_boundary_is_a_token_boundary_with_the_in_context_form():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL)
    head, response = "What is AI? ", "print(x)"
    p_ids, r_ids, split = encode_pair(tok, head, response)
    joint = tok(head + response, add_special_tokens=False)["input_ids"]
    assert not split and p_ids + r_ids == joint
    assert tok.convert_ids_to_tokens(r_ids)[0] == "Ġprint"  # not the sentence-initial 'print'
    p_ids, r_ids, split = encode_pair(tok, "say hello", "world")  # 'helloworld' would merge across
    assert split and tok.decode(r_ids) == "world"


def test_special_token_strings_in_data_stay_text():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL)
    record = {"id": "m", "prompt": "fill [MASK] and [SEP]", "response": "the [MASK] here"}
    (sample,), _ = tokenize_records([record], tok, 128)
    body = sample.input_ids[1:-1]
    assert tok.mask_token_id not in body and tok.sep_token_id not in body
    (keep,), _ = tokenize_records([record], tok, 128, options=TokenizeOptions(split_special_tokens=False))
    assert tok.mask_token_id in keep.input_ids[1:-1]


def test_chat_template_keeps_its_specials_and_splits_the_users():
    tok = make_tokenizer()
    tok.chat_template = "{% for m in messages %}[CLS] {{ m['content'] }} [SEP]{% endfor %}"
    record = {"id": "c", "prompt": "w1 [MASK]", "response": "w2 w3"}
    (sample,), _ = tokenize_records([record], tok, 32, chat_template=True)
    prompt = sample.input_ids[: sample.target_start].tolist()
    assert prompt.count(tok.cls_token_id) == 2 and tok.sep_token_id in prompt  # wrapping + template
    assert tok.mask_token_id not in prompt and tok.unk_token_id in prompt  # '[MASK]' is text: unknown words
    with pytest.raises(ConfigError, match="data.chat_template: the tokenizer"):
        tokenize_records([record], make_tokenizer(), 32, chat_template=True)


# issue 11 item 6: keep_answer and max_samples as valid samples -------------------------------------------


def test_keep_answer_cuts_the_prompt_from_the_left():
    parts = Parts([2], [10, 11, 12, 13, 14, 15], [20, 21, 22, 23], [3])
    sample, cut = assemble("s", parts, "", 8, "keep_answer", min_answer_tokens=3)
    assert cut and sample.input_ids.tolist() == [2, 13, 14, 15, 20, 21, 22, 3]
    assert sample.input_ids[sample.target_start : sample.target_end].tolist() == [20, 21, 22]
    sample, _ = assemble("s", parts, "", 8, "keep_answer", min_answer_tokens=6)  # answer has only 4
    assert sample.input_ids.tolist() == [2, 14, 15, 20, 21, 22, 23, 3]
    assert assemble("s", parts, "", 3, "keep_answer", min_answer_tokens=2)[0] is None


def test_max_samples_means_valid_samples_and_held_out_stays_disjoint(tmp_path):
    long = [{"id": f"L{i}", "category": "a", "prompt": "w1", "response": " ".join(["w2"] * 40)} for i in range(3)]
    records = text_records(10, categories=("a", "b")) + long
    order = draw_order(records, 3, stratify=True)
    tok = make_tokenizer()
    kept, report = select_samples(order, tok, 24, n=8, stratify=True)
    assert len(kept) == 8 and report.skipped == {"too_long": report.n_visited - 8} and report.skipped
    assert [s.category for s in kept].count("a") == 4, "a dropped record is replaced from its own category"
    src = write_jsonl(tmp_path / "d.jsonl", records)
    stages.sample_data(str(src), {}, 8, True, 3, tmp_path / "r.jsonl")
    model_dir = tmp_path / "m"
    tok.save_pretrained(model_dir)
    tiny_bert().config.save_pretrained(model_dir)
    cfg = {"path": str(model_dir), "adapter": None, "trust_remote_code": False, "mask_token_id": None}
    stages.tokenize(tmp_path / "r.jsonl", cfg, 24, "drop", False, tmp_path / "t.npz", n=8, stratify=True)
    held = stages.tokenize(
        tmp_path / "r.jsonl", cfg, 24, "drop", False, tmp_path / "h.npz", n=8, heldout=4, stratify=True
    )
    assert held["asked"] == 4 and held["n_kept"] == 2 and held["skipped"] == {"too_long": 3}
    ids = [set(np.load(tmp_path / f)["sample_ids"].tolist()) for f in ("t.npz", "h.npz")]
    assert len(ids[0]) == 8 and len(ids[1]) == 2 and not ids[0] & ids[1]
    with pytest.raises(DataError, match=r"found only 10 valid samples of 12 asked in 13 records.*too_long"):
        stages.tokenize(tmp_path / "r.jsonl", cfg, 24, "drop", False, tmp_path / "x.npz", n=12, stratify=True)


def test_no_records_left_for_held_out_says_both_ways_out(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", text_records(4))
    stages.sample_data(str(src), {}, 4, False, 0, tmp_path / "r.jsonl")
    model_dir = tmp_path / "m"
    make_tokenizer().save_pretrained(model_dir)
    tiny_bert().config.save_pretrained(model_dir)
    cfg = {"path": str(model_dir), "adapter": None, "trust_remote_code": False, "mask_token_id": None}
    with pytest.raises(DataError, match="lower data.max_samples or validation.n_samples"):
        stages.tokenize(tmp_path / "r.jsonl", cfg, 48, "drop", False, tmp_path / "h.npz", n=4, heldout=2)


# late or raw errors, now at DAG start --------------------------------------------------------------------


def test_no_weights(project):
    (project / "tiny-model" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.path: 'tiny-model' has no weights"):
        check_inputs(config_of(project), project)


def test_mask_id_outside_the_vocabulary(project):
    with pytest.raises(
        ConfigError, match=r"model.mask_token_id: mask id 99999 \(from model.mask_token_id\) is outside"
    ):
        check_inputs(config_of(project, model__mask_token_id=99999), project)


def test_mask_id_of_the_checkpoint_config_comes_before_the_tokenizer(project):
    cfg_file = project / "tiny-model" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "mask_token_id": 7}))
    found = check_inputs(config_of(project), project)
    assert (found["mask_token_id"], found["mask_token_from"]) == (7, "the checkpoint's config.json")


def test_tokenizer_larger_than_the_embedding(project):
    make_tokenizer([f"w{i}" for i in range(70)]).save_pretrained(project / "tiny-model")
    with pytest.raises(ConfigError, match="has 75 tokens but the model's vocabulary .* is 64"):
        check_inputs(config_of(project), project)


def test_max_len_beyond_the_position_table(project):
    with pytest.raises(ConfigError, match=r"data.max_len: 256 is beyond the model's 80 positions"):
        check_inputs(config_of(project, data__max_len=256), project)


def test_folder_without_tokenizer_files(project):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (project / "tiny-model" / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        check_inputs(config_of(project), project)


def test_gguf_file_says_how_to_convert(project):
    (project / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ConfigError, match="(?s)GGUF file.*gguf_file=f"):
        check_inputs(config_of(project, model__path="model.gguf"), project)


def test_adapter_of_the_wrong_family_at_dag_start(project):
    with pytest.raises(ConfigError, match="model.adapter: adapter 'gpt2'"):
        check_inputs(config_of(project, model__adapter="gpt2"), project)


def test_chat_template_asked_but_absent(project):
    with pytest.raises(ConfigError, match="data.chat_template: the tokenizer of 'tiny-model' has no chat template"):
        check_inputs(config_of(project, data__chat_template=True), project)


def test_negative_seed_is_a_schema_error(project):
    with pytest.raises(ConfigError, match="config key 'seeds.0': -1 is less than the minimum of 0"):
        config_of(project, seeds=[-1])


def test_empty_data_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no records"):
        read_table(str(tmp_path / "e.jsonl"))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="holds no records"):
        read_table(str(tmp_path / "e.csv"))


def test_malformed_jsonl_line_is_named_by_number(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "w1"}, {"id": "b", "text": "w2"}, '{"id": "c", "text"'])
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        read_table(str(tmp_path / "d.jsonl"))
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"id": "a", "text": "w1"}\n\nnot json\n'))
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        read_table(str(gz))


def test_error_reaches_the_terminal_when_the_log_cannot_be_written():
    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    terminal = io.StringIO()
    try:
        raise OSError(28, "No space left on device")
    except OSError as exc:
        report_error(terminal, FullDisk(), "logs/attribute.log")(type(exc), exc, exc.__traceback__)
    out = terminal.getvalue()
    assert "No space left on device" in out and "could not write this to logs/attribute.log" in out


def test_datasets_save_to_disk_folder_is_a_source(project):
    import datasets

    rows = text_records(6)
    datasets.Dataset.from_list(rows).save_to_disk(str(project / "ds"))
    assert [r["id"] for r in to_records(read_table(str(project / "ds")))] == [r["id"] for r in rows]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(project / "dd"))
    assert len(to_records(read_table(str(project / "dd"), split="test"))) == 6
    with pytest.raises(ConfigError, match="data.split: 'train' is not a split"):
        read_table(str(project / "dd"))
    config = config_of(project, data__source="ds")
    assert units(config)[0].slices["data"]["source_sha256"]
    shutil.rmtree(project / "dd")
