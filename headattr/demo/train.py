"""Train the demo masked-diffusion LM: a small BertForMaskedLM with the LLaDA objective, on CPU.

The objective (LLaDA, Nie et al. 2025): for each sequence draw t ~ U(0, 1), set p = (1 - eps) t + eps,
replace every ordinary token by [MASK] with probability p, and minimise sum over masked tokens of
CE / p, divided by batch * length. The acceptance check is held-out masked-token accuracy at p = 0.15
(fixed seeded masks) against the unigram baseline (always predict the most frequent training token).

    python -m headattr.demo.train resources/demo/corpus.jsonl.gz resources/demo/model [--config cfg.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
import yaml
from torch import nn
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from .corpus import read_jsonl, write_jsonl
from .tasks import CHANCE, TASKS, check_task, task_records
from .tokenizer import train_tokenizer

DEFAULT_CFG = {
    "seed": 0,
    "heldout_frac": 0.05,
    "vocab_size": 6000,
    "seq_len": 64,
    "hidden_size": 128,
    "num_layers": 6,
    "num_heads": 8,
    "intermediate_size": 512,
    "batch_size": 16,
    "tasks": list(TASKS),
    "task_train_items": 8000,
    "task_heldout_items": 400,
    "task_len": 22,
    "task_batch_size": 64,
    "task_weight": 1.0,
    "lr": 1.5e-3,
    "weight_decay": 0.01,
    "warmup_steps": 100,
    "max_steps": 1400,
    "max_minutes": 40.0,
    "eps": 1e-3,
    "eval_p": 0.15,
    "threads": 2,
    "bf16": True,
    "log_every": 50,
}
BUCKET = 256
HELDOUT_FILE = "heldout.jsonl.gz"  # held-out text records and task items, saved beside the model


def text_of(record: dict) -> str:
    """Training text of a corpus record."""
    return record["prompt"] + "\n" + record["response"]


def encode(tok: PreTrainedTokenizerFast, records: list[dict]) -> list[list[int]]:
    """Token ids of each record's text, without special tokens (rows add them)."""
    return tok([text_of(r) for r in records], add_special_tokens=False, verbose=False)["input_ids"]


def content_key(record: dict) -> str:
    """A record's text normalised for the split: whitespace runs collapsed, case folded."""
    return " ".join(text_of(record).split()).casefold()


def is_heldout(key: str, seed: int, frac: float) -> bool:
    """Seeded, order-independent split: hash of (seed, key) mapped to [0, 1); key is content_key(record)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < frac


def split_records(records: list[dict], seed: int, frac: float) -> tuple[list[dict], list[dict], int]:
    """(train, heldout, n_duplicates): the split on content, so no held-out text equals a training text.

    Records whose content_key repeats an earlier record's are dropped (counted in n_duplicates); the rest go
    to held-out when is_heldout(content_key) holds, whatever their ids.
    """
    seen: set[str] = set()
    train: list[dict] = []
    heldout: list[dict] = []
    for record in records:
        key = content_key(record)
        if key in seen:
            continue
        seen.add(key)
        (heldout if is_heldout(key, seed, frac) else train).append(record)
    return train, heldout, len(records) - len(seen)


def chunks(ids: list[int], size: int) -> list[list[int]]:
    """Split a token list into consecutive pieces of at most size tokens."""
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def pack_rows(
    token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int, pack: bool
) -> torch.Tensor:
    """Rows of [CLS] piece [SEP] (piece [SEP] ...) [PAD]...; pack=True fills rows greedily with whole pieces.

    Long texts are cut into pieces of seq_len - 2 tokens. Packing avoids spending CPU time on padding.
    """
    rows: list[list[int]] = []
    for ids in token_lists:
        for piece in chunks(ids, seq_len - 2):
            if pack and rows and len(rows[-1]) + len(piece) + 1 <= seq_len:
                rows[-1] += piece + [sep_id]
            else:
                rows.append([cls_id] + piece + [sep_id])
    return torch.tensor([r + [pad_id] * (seq_len - len(r)) for r in rows], dtype=torch.long)


def mask_tokens(
    rows: torch.Tensor, maskable: torch.Tensor, p: torch.Tensor, mask_id: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each maskable token by mask_id with its row's probability p; returns (inputs, masked)."""
    masked = (torch.rand(rows.shape, generator=gen) < p[:, None]) & maskable
    return rows.masked_fill(masked, mask_id), masked


def masked_logits(
    model: BertForMaskedLM, inputs: torch.Tensor, attention: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Vocabulary logits at the masked positions only, in masked.nonzero() order.

    The LM head is the costly part on CPU, so it runs on masked positions only; their count is padded up to
    a multiple of BUCKET so that oneDNN sees few distinct shapes (each new shape grows its primitive cache).
    """
    hidden = model.bert(input_ids=inputs, attention_mask=attention).last_hidden_state.flatten(0, 1)
    where = masked.flatten().nonzero().squeeze(1)
    padded = torch.cat([where, where.new_zeros(-where.numel() % BUCKET)])
    return model.cls(hidden[padded])[: where.numel()]


def mdlm_loss(
    model: BertForMaskedLM,
    rows: torch.Tensor,
    maskable: torch.Tensor,
    pad_id: int,
    mask_id: int,
    eps: float,
    gen: torch.Generator,
    unweighted: bool = False,
) -> torch.Tensor:
    """LLaDA loss of one batch: sum over masked tokens of CE / p, divided by batch * length.

    t is drawn stratified over the batch (row i gets t in [i/B, (i+1)/B)): rows come in random order, so each
    row's t is still U(0, 1), but the batch covers the range evenly, which lowers the loss variance.
    unweighted=True (task rows, where maskable is the answer only and the prompt is never masked, as in
    LLaDA's SFT) returns the plain mean CE over the masked tokens instead: with answers of a few tokens the
    1 / p weight makes rare masks at small p dominate the clipped gradient and starves the text loss.
    """
    n = rows.shape[0]
    t = (torch.arange(n) + torch.rand(n, generator=gen)) / n
    p = (1 - eps) * t + eps
    inputs, masked = mask_tokens(rows, maskable, p, mask_id, gen)
    logits = masked_logits(model, inputs, rows.ne(pad_id), masked)
    ce = nn.functional.cross_entropy(logits, rows[masked], reduction="none")
    if unweighted:
        return ce.sum() / max(ce.numel(), 1)
    weight = (1 / p)[:, None].expand_as(rows)[masked]
    return (ce * weight).sum() / rows.numel()


def task_rows(tok: PreTrainedTokenizerFast, records: list[dict], task_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [N, task_len], answer mask [N, task_len]): [CLS] prompt response [SEP] [PAD]..., one record a row.

    Prompt and response are tokenized apart and concatenated, as the workflow's tokenizer does; each record
    starts at position 1, as a workflow sample does, so position-keyed tasks (copy, reverse) stay learnable.
    """
    rows = torch.full((len(records), task_len), tok.pad_token_id, dtype=torch.long)
    answer = torch.zeros_like(rows, dtype=torch.bool)
    prompts = tok([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    responses = tok([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    for i, (p_ids, r_ids) in enumerate(zip(prompts, responses, strict=True)):
        ids = [tok.cls_token_id, *p_ids, *r_ids, tok.sep_token_id]
        if len(ids) > task_len:
            raise ValueError(f"task record {records[i]['id']!r} has {len(ids)} tokens > task_len={task_len}")
        rows[i, : len(ids)] = torch.tensor(ids)
        answer[i, 1 + len(p_ids) : 1 + len(p_ids) + len(r_ids)] = True
    return rows, answer


@torch.no_grad()
def task_exact_match(model: BertForMaskedLM, tok: PreTrainedTokenizerFast, records: list[dict], task_len: int) -> dict:
    """Per category: exact match and token accuracy with the whole answer masked, decoded in one pass (argmax).

    Returns {category: {"exact_match", "token_accuracy", "n"}}. One pass is exact for one-token answers and
    a lower bound of iterative unmasking for longer ones.
    """
    was_training = model.training
    model.eval()
    rows, answer = task_rows(tok, records, task_len)
    hits = torch.zeros(len(records), dtype=torch.bool)
    token_hits = torch.zeros(len(records))
    for start in range(0, len(records), 128):
        batch, ans = rows[start : start + 128], answer[start : start + 128]
        logits = model(
            input_ids=batch.masked_fill(ans, tok.mask_token_id), attention_mask=batch.ne(tok.pad_token_id)
        ).logits
        ok = (logits.argmax(-1) == batch) | ~ans
        hits[start : start + 128] = ok.all(-1)
        token_hits[start : start + 128] = (ok & ans).sum(-1) / ans.sum(-1)
    model.train(was_training)
    out: dict[str, dict] = {}
    for cat in dict.fromkeys(r["category"] for r in records):
        idx = torch.tensor([i for i, r in enumerate(records) if r["category"] == cat])
        out[cat] = {
            "exact_match": float(hits[idx].float().mean()),
            "token_accuracy": float(token_hits[idx].mean()),
            "n": len(idx),
        }
    return out


@torch.no_grad()
def evaluate(
    model: BertForMaskedLM,
    rows: torch.Tensor,
    maskable: torch.Tensor,
    pad_id: int,
    mask_id: int,
    cfg: dict,
    unigram_id: int,
) -> dict:
    """Held-out accuracy and CE at p = eval_p, unigram baseline, and the MDLM loss, all with fixed masks.

    Held-out rows hold one record (piece) each, as at inference; heldout_loss divides by batch * length
    like the training loss, so its padding lowers it compared with packed training rows.
    """
    model.eval()
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    p = torch.full((rows.shape[0],), cfg["eval_p"])
    correct = baseline = total = 0
    ce_sum = loss_sum = 0.0
    for start in range(0, rows.shape[0], 64):
        batch, ok = rows[start : start + 64], maskable[start : start + 64]
        attention = batch.ne(pad_id)
        inputs, masked = mask_tokens(batch, ok, p[: batch.shape[0]], mask_id, gen)
        logits = masked_logits(model, inputs, attention, masked)
        target = batch[masked]
        correct += int((logits.argmax(-1) == target).sum())
        baseline += int((target == unigram_id).sum())
        total += int(target.numel())
        ce_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        loss_sum += float(mdlm_loss(model, batch, ok, pad_id, mask_id, cfg["eps"], gen)) * batch.shape[0]
    model.train()
    acc, base = correct / max(total, 1), baseline / max(total, 1)
    return {
        "heldout_accuracy": acc,
        "unigram_baseline_accuracy": base,
        "accuracy_ratio": acc / base if base else None,
        "heldout_ce": ce_sum / max(total, 1),
        "heldout_loss": loss_sum / max(rows.shape[0], 1),
        "heldout_masked_tokens": total,
    }


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def git_commit() -> str | None:
    """HEAD of the repository holding this file, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


@contextmanager
def torch_settings(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic torch with a fixed thread count inside; the caller's settings are restored after."""
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(before[0])
            torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def build_model(cfg: dict, tok: PreTrainedTokenizerFast) -> BertForMaskedLM:
    """Post-norm BERT encoder with a tied MLM head, no dropout, eager attention (hookable per head)."""
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=cfg["intermediate_size"],
        max_position_embeddings=cfg["seq_len"],
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return BertForMaskedLM(config)


def train_mdlm(corpus_path: str | Path, out_dir: str | Path, cfg: dict | None = None) -> dict:
    """Train tokenizer and model on corpus_path, save both plus manifest.json to out_dir; return the manifest.

    cfg keys (defaults in DEFAULT_CFG are the shipped checkpoint's):
      seed: seeds the split, init, batch order and masks;  heldout_frac: share of distinct texts held out
      (split_records: on content, duplicates dropped);
      vocab_size: BPE vocabulary;  seq_len: row length (also max positions);
      hidden_size, num_layers, num_heads, intermediate_size: BERT shape;
      batch_size: packed text rows per step;  tasks: synthetic tasks mixed in (headattr.demo.tasks);
      task_train_items, task_heldout_items: items per task in the training pool / held-out check;
      task_len: row length of a task item;  task_batch_size: task rows per step (answer-only masking,
      unweighted mean CE, see mdlm_loss);  task_weight: weight of the task loss in the sum;
      lr, weight_decay, warmup_steps, max_steps: AdamW with warmup + cosine decay;
      max_minutes: wall-clock safety net (the budget is max_steps; a run is deterministic only when it stops
      at max_steps, which the manifest's stopped_by records);
      eps: minimum mask probability;  eval_p: mask probability of the held-out check;
      threads: torch CPU threads;  bf16: training forward passes under CPU bfloat16 autocast (weights, optimiser
      and evaluation stay fp32; about 2x faster here);  log_every: progress line period (stderr).
    """
    cfg = {**DEFAULT_CFG, **(cfg or {})}
    with torch_settings(cfg["seed"], cfg["threads"]):
        return _train(Path(corpus_path), Path(out_dir), cfg)


def _train(corpus_path: Path, out_dir: Path, cfg: dict) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for task in cfg["tasks"]:
        try:
            check_task(task)
        except ValueError as exc:
            raise ValueError(f"demo_model.train.tasks: {exc}") from None

    records = read_jsonl(corpus_path)
    train, heldout, n_duplicates = split_records(records, cfg["seed"], cfg["heldout_frac"])
    task_train = [r for t in cfg["tasks"] for r in task_records(t, cfg["seed"], cfg["task_train_items"], "train")]
    task_heldout = [r for t in cfg["tasks"] for r in task_records(t, cfg["seed"], cfg["task_heldout_items"], "heldout")]
    tok_texts = [text_of(r) for r in train] + [text_of(r) for r in task_train[:: max(1, len(task_train) // 2000)]]
    tok = train_tokenizer(tok_texts, cfg["vocab_size"], out_dir, cfg["seq_len"])
    special = dict(cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=tok.pad_token_id)
    train_ids, heldout_ids = encode(tok, train), encode(tok, heldout)
    train_rows = pack_rows(train_ids, cfg["seq_len"], pack=True, **special)
    heldout_rows = pack_rows(heldout_ids, cfg["seq_len"], pack=False, **special)
    specials = torch.tensor(sorted(tok.all_special_ids))
    train_ok, heldout_ok = ~torch.isin(train_rows, specials), ~torch.isin(heldout_rows, specials)
    unigram_id = int(torch.bincount(train_rows[train_ok], minlength=len(tok)).argmax())
    task_train_rows, task_train_ok = task_rows(tok, task_train, cfg["task_len"]) if task_train else (None, None)

    model = build_model(cfg, tok)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, cfg["warmup_steps"], cfg["max_steps"]))
    gen = torch.Generator().manual_seed(cfg["seed"])
    text_batches = batch_indices(len(train_rows), cfg["batch_size"], gen)
    task_batches = batch_indices(len(task_train), cfg["task_batch_size"], gen) if task_train else None
    step = 0
    model.train()
    while step < cfg["max_steps"] and time.monotonic() - started < 60 * cfg["max_minutes"]:
        idx = next(text_batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):
            loss = mdlm_loss(
                model, train_rows[idx], train_ok[idx], tok.pad_token_id, tok.mask_token_id, cfg["eps"], gen
            )
            task_loss = torch.zeros(())
            if task_batches is not None:
                idx = next(task_batches)
                task_loss = mdlm_loss(
                    model,
                    task_train_rows[idx],
                    task_train_ok[idx],
                    tok.pad_token_id,
                    tok.mask_token_id,
                    cfg["eps"],
                    gen,
                    unweighted=True,
                )
        optim.zero_grad(set_to_none=True)
        (loss + cfg["task_weight"] * task_loss).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        step += 1
        if step % cfg["log_every"] == 0 or step == cfg["max_steps"]:
            print(
                f"step {step} loss {loss.item():.4f} task_loss {task_loss.item():.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} elapsed {time.monotonic() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    metrics = evaluate(model, heldout_rows, heldout_ok, tok.pad_token_id, tok.mask_token_id, cfg, unigram_id)
    tasks = task_exact_match(model, tok, task_heldout, cfg["task_len"]) if task_heldout else {}
    for task, row in tasks.items():
        row["chance_exact_match"] = CHANCE[task]
    model.save_pretrained(out_dir, safe_serialization=True)
    heldout_path = write_jsonl(heldout + task_heldout, out_dir / HELDOUT_FILE)
    manifest = {
        "cfg": cfg,
        "corpus": str(corpus_path),
        "corpus_sha256": sha256_of(corpus_path),
        "n_train_records": len(train),
        "n_heldout_records": len(heldout),
        "n_duplicate_records": n_duplicates,
        "n_train_tokens": sum(map(len, train_ids)),
        "n_heldout_tokens": sum(map(len, heldout_ids)),
        "n_train_rows": len(train_rows),
        "trained_on": {
            "text_categories": dict(Counter(r["category"] for r in train)),
            "task_items": dict(Counter(r["category"] for r in task_train)),
            "task_train_sha256": hashlib.sha256(
                "".join(r["prompt"] + r["response"] + "\n" for r in task_train).encode()
            ).hexdigest(),
            "text_rows_seen": step * cfg["batch_size"],
            "task_rows_seen": step * cfg["task_batch_size"] if task_train else 0,
        },
        "heldout_file": HELDOUT_FILE,
        "heldout_sha256": sha256_of(heldout_path),
        "steps": step,
        "stopped_by": "max_steps" if step == cfg["max_steps"] else "max_minutes",
        "n_params": sum(p.numel() for p in model.parameters()),
        "unigram_token": tok.convert_ids_to_tokens(unigram_id),
        **metrics,
        "tasks": tasks,
        "wall_time_s": round(time.monotonic() - started, 1),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "git_commit": git_commit(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    summary = {k: manifest[k] for k in ("heldout_accuracy", "unigram_baseline_accuracy", "heldout_loss", "wall_time_s")}
    summary["exact_match"] = {t: row["exact_match"] for t, row in tasks.items()}
    print(json.dumps(summary), file=sys.stderr)
    return manifest


def batch_indices(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless seeded batches of row indices: a fresh permutation each epoch, the ragged tail dropped."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("out_dir")
    parser.add_argument("--config", help="YAML file with cfg keys (see train_mdlm)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override cfg keys")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in DEFAULT_CFG:
            parser.error(f"unknown cfg key {key}")
        cfg[key] = yaml.safe_load(value)
    train_mdlm(args.corpus, args.out_dir, cfg)


if __name__ == "__main__":
    main()
