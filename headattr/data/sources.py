"""Data sources -> records (id, category, prompt/response or text), and seeded (stratified) sampling.

Sources: a local ``.jsonl`` / ``.jsonl.gz`` / ``.json`` / ``.parquet`` / ``.csv`` file, a ``datasets`` name
(``hf:NAME`` or ``hf:NAME:CONFIG``; needs a network or a local cache), or ``demo`` (the corpus shipped in
``resources/demo``). Records get stable ids: the id field when present, else ``row-<index in the source>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
DEFAULT_FIELDS = {"id": "id", "prompt": "prompt", "response": "response", "text": "text", "category": "category"}


def repo_root() -> Path:
    """The project checkout that holds ``resources/`` (the package's parent directory)."""
    return Path(__file__).resolve().parents[2]


def demo_corpus_path() -> Path:
    return repo_root() / "resources" / "demo" / "corpus.jsonl.gz"


def resolve_source(source: str) -> str | Path:
    """A file path (checked to exist and to have a known suffix) or the ``hf:`` name unchanged."""
    if source == "demo":
        return demo_corpus_path()
    if source.startswith("hf:"):
        return source
    path = Path(source).expanduser()
    if not path.name.endswith(FILE_SUFFIXES):
        raise ConfigError(f"data.source: {source!r} is not 'demo', 'hf:NAME' or a file ending in {FILE_SUFFIXES}")
    if not path.is_file():
        raise ConfigError(f"data.source: file {source!r} does not exist")
    return path


def read_table(source: str) -> pd.DataFrame:
    """The raw table of a source."""
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        import datasets

        name, _, config = resolved[3:].partition(":")
        return datasets.load_dataset(name, config or None, split="train").to_pandas()
    name = resolved.name
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            return pd.read_json(resolved, lines=True, dtype=False)
        if name.endswith(".json"):
            return pd.read_json(resolved, dtype=False)
        if name.endswith(".parquet"):
            return pd.read_parquet(resolved)
        return pd.read_csv(resolved, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"data.source: cannot read {str(resolved)!r}: {exc}") from exc


def to_records(table: pd.DataFrame, fields: dict | None = None) -> list[dict]:
    """Map columns to record keys; require ``response`` or ``text``."""
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    cols = set(table.columns)
    has_response = fields["response"] in cols
    if not has_response and fields["text"] not in cols:
        raise DataError(
            f"data.fields: neither response field {fields['response']!r} nor text field {fields['text']!r} "
            f"is a column of the data (columns: {sorted(cols)})"
        )
    if has_response and fields["prompt"] not in cols:
        raise DataError(f"data.fields: prompt field {fields['prompt']!r} is not a column (columns: {sorted(cols)})")
    records = []
    for i, row in enumerate(table.to_dict(orient="records")):
        rec = {
            "id": str(row[fields["id"]]) if fields["id"] in cols else f"row-{i}",
            "category": str(row.get(fields["category"], "") or ""),
        }
        if has_response:
            rec["prompt"] = "" if row[fields["prompt"]] is None else str(row[fields["prompt"]])
            rec["response"] = "" if row[fields["response"]] is None else str(row[fields["response"]])
        else:
            rec["text"] = "" if row[fields["text"]] is None else str(row[fields["text"]])
        records.append(rec)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"data.fields.id: sample ids are not unique (e.g. {dup!r})")
    return records


def sample_records(records: list[dict], max_samples: int | None, seed: int, stratify: bool = False) -> list[dict]:
    """A seeded subset of ``max_samples`` records (all when None), balanced over categories if ``stratify``.

    Order of the result follows the seeded draw, so "the first n samples" is itself a random subset.
    """
    rng = np.random.default_rng(int(seed))
    n = len(records) if max_samples is None else min(int(max_samples), len(records))
    if not stratify:
        order = rng.permutation(len(records))[:n]
        return [records[i] for i in order]
    by_cat: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_cat.setdefault(rec["category"], []).append(i)
    queues = {c: list(rng.permutation(idx)) for c, idx in sorted(by_cat.items())}
    chosen: list[int] = []
    while len(chosen) < n:
        for cat in sorted(queues):
            if queues[cat] and len(chosen) < n:
                chosen.append(int(queues[cat].pop(0)))
    return [records[i] for i in chosen]
