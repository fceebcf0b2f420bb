"""Data sources -> records (id, category, prompt/response or text), and the seeded (stratified) draw order.

Sources: a local ``.jsonl`` / ``.jsonl.gz`` / ``.json`` / ``.parquet`` / ``.csv`` file, a folder written by
``datasets``' ``save_to_disk``, a ``datasets`` name (``hf:NAME`` or ``hf:NAME:CONFIG``; needs a network or a
local cache), or ``demo`` (the corpus shipped in ``resources/demo``). Records get stable ids: the id field when
present, else ``row-<index in the source>``.

A row that lacks a configured field (or whose response / text is empty) is a bad record: an error naming the
line and the field, or with ``on_bad_record="skip"`` a record flagged ``skip: <reason>`` that the sampling walk
passes over and counts (nothing becomes the string "nan").
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
DATASET_DIR_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
DEFAULT_FIELDS = {"id": "id", "prompt": "prompt", "response": "response", "text": "text", "category": "category"}
BAD_RECORD_POLICIES = ("error", "skip")
SKIP_FIX = "fix the data, or set data.on_bad_record: skip to skip such records (they are counted in the manifests)"


def repo_root() -> Path:
    """The project checkout that holds ``resources/`` (the package's parent directory)."""
    return Path(__file__).resolve().parents[2]


def demo_corpus_path() -> Path:
    return repo_root() / "resources" / "demo" / "corpus.jsonl.gz"


def is_dataset_dir(path: Path) -> bool:
    """True for a folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / name).is_file() for name in DATASET_DIR_FILES)


def resolve_source(source: str) -> str | Path:
    """A file or ``save_to_disk`` folder (checked to exist and to be readable) or the ``hf:`` name unchanged."""
    if source == "demo":
        return demo_corpus_path()
    if source.startswith("hf:"):
        return source
    path = Path(source).expanduser()
    if path.is_dir():
        if is_dataset_dir(path):
            return path
        raise ConfigError(
            f"data.source: folder {source!r} is not a datasets save_to_disk folder (none of {DATASET_DIR_FILES})"
        )
    if not path.name.endswith(FILE_SUFFIXES):
        raise ConfigError(
            f"data.source: {source!r} is not 'demo', 'hf:NAME', a save_to_disk folder or a file ending in "
            f"{FILE_SUFFIXES}"
        )
    if not path.is_file():
        raise ConfigError(f"data.source: file {source!r} does not exist")
    return path


def hf_name(source: str) -> str:
    """The data set name of an ``hf:NAME`` or ``hf:NAME:CONFIG`` source."""
    return source[3:].partition(":")[0]


def hf_cached(source: str) -> bool:
    """True when the ``hf:`` data set is in the local datasets or hub cache (``load_dataset`` reads it offline)."""
    import datasets.config
    import huggingface_hub.constants

    name = hf_name(source)
    return (Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")).is_dir() or (
        Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    ).is_dir()


def hf_offline_message(source: str, key: str, problem: str) -> str:
    """What to do about an ``hf:`` source the hub cannot serve (``problem``: why, e.g. the hub is offline)."""
    return (
        f"{key}: {source!r} is a Hugging Face hub data set that is not in the local datasets cache, and {problem}; "
        f"download it once where the hub is reachable (datasets.load_dataset({hf_name(source)!r}).save_to_disk(DIR)) "
        f"and set {key} to DIR (or to a jsonl / parquet file)"
    )


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"data.source: {str(path)!r} line {number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"data.source: {str(path)!r} line {number} is not a JSON object")
            rows.append((f"line {number}", row))
    return rows


def _frame_rows(frame) -> list[tuple[str, dict]]:
    return [(f"row {i}", row) for i, row in enumerate(frame.to_dict(orient="records"))]


def _read_dataset(resolved, split: str) -> list[tuple[str, dict]]:
    import datasets

    if isinstance(resolved, Path):
        data = datasets.load_from_disk(str(resolved))
    else:
        name, _, config = resolved[3:].partition(":")
        try:
            data = datasets.load_dataset(name, config or None)
        except (ConnectionError, OSError) as exc:  # requests' ConnectionError is an OSError
            problem = f"the hub is not reachable ({type(exc).__name__}: {str(exc)[:200]})"
            raise DataError(hf_offline_message(resolved, "data.source", problem)) from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ConfigError(f"data.split: {split!r} is not a split of {str(resolved)!r} (splits: {sorted(data)})")
        data = data[split]
    return _frame_rows(data.to_pandas())


def read_table(source: str, split: str = "train") -> list[tuple[str, dict]]:
    """The raw rows of a source as ``(where, row)`` pairs; ``where`` is ``line N`` (jsonl) or ``row N``."""
    import pandas as pd

    resolved = resolve_source(source)
    if isinstance(resolved, str) or resolved.is_dir():
        rows = _read_dataset(resolved, split)
    else:
        name = resolved.name
        try:
            if name.endswith((".jsonl", ".jsonl.gz")):
                rows = _read_jsonl(resolved)
            elif name.endswith(".json"):
                rows = _frame_rows(pd.read_json(resolved, dtype=False))
            elif name.endswith(".parquet"):
                rows = _frame_rows(pd.read_parquet(resolved))
            else:
                rows = _frame_rows(pd.read_csv(resolved, dtype=str, keep_default_na=False))
        except pd.errors.EmptyDataError:
            rows = []
        except DataError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"data.source: cannot read {str(resolved)!r}: {exc}") from exc
    if not rows:
        raise DataError(f"data.source: {source!r} holds no records (the file is empty)")
    return rows


def is_missing(value) -> bool:
    """None, or a float NaN (what pandas puts in a column a row does not have)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def to_records(rows, fields: dict | None = None, on_bad_record: str = "error") -> list[dict]:
    """Map fields to record keys; prompt/response mode when any row has the response field, else text mode.

    Every row must have the fields of its mode (and the id / category fields when any row has them) with a
    non-empty response / text. A row that does not is an error naming its line and the field, or with
    ``on_bad_record="skip"`` a record flagged ``{"skip": reason}``.
    """
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"data.on_bad_record: {on_bad_record!r} is not one of {BAD_RECORD_POLICIES}")
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    cols = set().union(*(row.keys() for _, row in rows)) if rows else set()
    has_response = fields["response"] in cols
    if not has_response and fields["text"] not in cols:
        raise DataError(
            f"data.fields: neither response field {fields['response']!r} nor text field {fields['text']!r} "
            f"is a column of the data (columns: {sorted(cols)})"
        )
    if has_response and fields["prompt"] not in cols:
        raise DataError(f"data.fields: prompt field {fields['prompt']!r} is not a column (columns: {sorted(cols)})")
    roles = ["prompt", "response"] if has_response else ["text"]
    optional = [role for role in ("id", "category") if fields[role] in cols]
    records = []
    for i, (where, row) in enumerate(rows):
        rec, bad = {}, None
        for role in optional + roles:
            value = row.get(fields[role])
            if is_missing(value):
                bad = bad or (f"missing_{role}", f"has no {role} field {fields[role]!r} (data.fields.{role})")
                value = ""
            rec[role] = str(value)
        rec["id"] = rec.get("id") or f"row-{i}"
        rec.setdefault("category", "")
        target = roles[-1]
        if bad is None and not rec[target].strip():
            bad = (f"empty_{target}", f"has an empty {target}")
        if bad is not None:
            if on_bad_record == "error":
                raise DataError(f"data.source: {where} (id {rec['id']!r}) {bad[1]}; {SKIP_FIX}")
            rec["skip"] = bad[0]
        records.append(rec)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"data.fields.id: sample ids are not unique (e.g. {dup!r})")
    return records


def draw_order(records: list, seed: int, stratify: bool = False) -> list:
    """Every record in the seeded draw order; balanced over categories (round robin) if ``stratify``.

    "The first n" of this order is itself a random (balanced) subset, and equals :func:`sample_records`.
    """
    rng = np.random.default_rng(int(seed))
    if not stratify:
        return [records[i] for i in rng.permutation(len(records))]
    by_cat: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_cat.setdefault(rec["category"], []).append(i)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(by_cat.items())]
    order = []
    for rank in range(max((len(q) for q in queues), default=0)):
        order.extend(records[int(q[rank])] for q in queues if rank < len(q))
    return order


def sample_records(records: list[dict], max_samples: int | None, seed: int, stratify: bool = False) -> list[dict]:
    """A seeded subset of ``max_samples`` records (all when None): the head of :func:`draw_order`."""
    order = draw_order(records, seed, stratify)
    return order if max_samples is None else order[: int(max_samples)]


def select_in_order(order: list, n: int | None, accept, stratify: bool = False):
    """Walk the draw ``order`` and return the first ``n`` items that ``accept`` (all when None).

    ``accept(item)`` returns the kept value, or a skip reason (str). With ``stratify`` the round robin over
    categories is redone with skips replaced from the same category, so a skip does not unbalance the draw
    (with no skips the result equals the head of ``order``). Returns (kept values, {reason: count},
    items visited).
    """
    skipped: dict[str, int] = {}
    kept: list = []
    visited = 0
    if stratify:
        queues: dict[str, list] = {}
        for item in order:
            queues.setdefault(item["category"], []).append(item)
        lanes = [queues[c][::-1] for c in sorted(queues)]
    else:
        lanes = [list(order)[::-1]]
    while any(lanes) and (n is None or len(kept) < n):
        for lane in lanes:
            while lane and (n is None or len(kept) < n):
                visited += 1
                value = accept(lane.pop())
                if isinstance(value, str):
                    skipped[value] = skipped.get(value, 0) + 1
                    continue
                kept.append(value)
                break
    return kept, skipped, visited
