"""Seeded synthetic tasks a small masked-diffusion LM can learn, with held-out splits disjoint on content.

Every item is a prompt and an answer of a fixed number of tokens (single letters and digits separated by
spaces, so each symbol is one token of the demo tokenizer). Item i of a task depends only on (seed, task, i).
The split is a hash of the prompt text (not of an id): an item is held out when
``sha256(SPLIT_SALT + prompt)`` falls below ``HELDOUT_FRAC``, so no training item can share a prompt with a
held-out item whatever the seeds, and the answer is a function of the prompt.

Tasks (the chance level is the exact-match rate of a uniform guess over the answer space):
  recall:  six key-value pairs (distinct letters, digits), then a query key; answer its value (chance 1/10).
  copy:    six digits; answer them in order (chance 1e-6).
  reverse: six digits; answer them reversed (chance 1e-6).
  add:     two numbers in [10, 99]; answer their sum as three digits, 020-198 (chance 1/179).

    python -m headattr.demo.tasks recall --n 3 --split heldout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import string
from collections.abc import Callable, Iterator

SPLIT_SALT = "headattr-demo-tasks:"
HELDOUT_FRAC = 0.1
N_PAIRS = 6
N_DIGITS = 6
ADD_RANGE = (10, 99)
SPLITS = ("train", "heldout")

Item = tuple[str, str]  # prompt, answer (space-separated symbols)


def _digits(rng: random.Random, n: int) -> list[str]:
    return [str(rng.randrange(10)) for _ in range(n)]


def recall_item(rng: random.Random) -> Item:
    keys = rng.sample(string.ascii_lowercase, N_PAIRS)
    values = _digits(rng, N_PAIRS)
    q = rng.randrange(N_PAIRS)
    pairs = " ".join(f"{k} {v}" for k, v in zip(keys, values, strict=True))
    return f"recall: {pairs} ? {keys[q]} =", values[q]


def copy_item(rng: random.Random) -> Item:
    digits = " ".join(_digits(rng, N_DIGITS))
    return f"copy: {digits} =", digits


def reverse_item(rng: random.Random) -> Item:
    digits = _digits(rng, N_DIGITS)
    return f"reverse: {' '.join(digits)} =", " ".join(reversed(digits))


def add_item(rng: random.Random) -> Item:
    a, b = rng.randint(*ADD_RANGE), rng.randint(*ADD_RANGE)
    return f"add: {' '.join(str(a))} + {' '.join(str(b))} =", " ".join(f"{a + b:03d}")


MAKERS: dict[str, Callable[[random.Random], Item]] = {
    "recall": recall_item,
    "copy": copy_item,
    "reverse": reverse_item,
    "add": add_item,
}
TASKS = tuple(MAKERS)
CHANCE = {
    "recall": 1 / 10,
    "copy": 10.0**-N_DIGITS,
    "reverse": 10.0**-N_DIGITS,
    "add": 1 / (2 * ADD_RANGE[1] - 2 * ADD_RANGE[0] + 1),
}


def is_heldout_prompt(prompt: str, frac: float = HELDOUT_FRAC) -> bool:
    """The content split: hash of the prompt text mapped to [0, 1), below frac = held out."""
    digest = hashlib.sha256((SPLIT_SALT + prompt).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < frac


def check_task(task: str) -> None:
    if task not in MAKERS:
        raise ValueError(f"unknown demo task {task!r}; known: {', '.join(TASKS)}")


def _stream(task: str, seed: int, split: str) -> Iterator[tuple[int, Item]]:
    """(index, item) of one split, in index order; item i depends only on (seed, task, i)."""
    check_task(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    want_heldout = split == "heldout"
    i = 0
    while True:
        item = MAKERS[task](random.Random(f"{seed}-{task}-{i}"))
        if is_heldout_prompt(item[0]) == want_heldout:
            yield i, item
        i += 1


def task_items(task: str, seed: int, n: int, split: str, unique: bool = False) -> list[Item]:
    """The first n items of a split; unique=True skips repeated prompts (small answer spaces, e.g. add)."""
    out: list[Item] = []
    seen: set[str] = set()
    limit = 1000 * max(n, 1)
    for i, item in _stream(task, seed, split):
        if len(out) == n:
            break
        if i > limit:
            raise ValueError(f"task {task!r}: only {len(out)} distinct {split} items exist, {n} asked")
        if unique and item[0] in seen:
            continue
        seen.add(item[0])
        out.append(item)
    return out


def task_records(task: str, seed: int, n: int, split: str) -> list[dict]:
    """Corpus-style records (id, category, prompt, response, source); held-out prompts are distinct.

    The response starts with a space: the workflow tokenizes prompt and response apart and concatenates
    them, so " 3" (one token) follows "=" as it does in training rows.
    """
    items = task_items(task, seed, n, split, unique=split == "heldout")
    return [
        {
            "id": f"{task}-{split}-{i:05d}",
            "category": task,
            "prompt": prompt,
            "response": " " + answer,
            "source": f"headattr.demo.tasks:{task}:seed={seed}",
        }
        for i, (prompt, answer) in enumerate(items)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    args = parser.parse_args(argv)
    for record in task_records(args.task, args.seed, args.n, args.split):
        print(json.dumps(record))


if __name__ == "__main__":
    main()
