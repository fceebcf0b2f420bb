"""Records -> tokenized samples with a target region, under a max-length policy.

A record is a dict with ``id``, ``category`` and either ``prompt``/``response`` or ``text``. The sequence is
the tokenizer's special-token wrapping of prompt + response; the target region is the response (or the
whole text). A shifted-logit model needs a token before the target: a BOS is added if the tokenizer has one
and adds none itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from .samples import Sample

LENGTH_POLICIES = ("drop", "truncate")


@dataclass
class TokenizeReport:
    """What tokenization did: counts of kept, truncated and dropped samples."""

    n_in: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    n_dropped_too_long: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special tokens the tokenizer adds around one sequence, found by probing it."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for offset in range(0, len(full) - len(plain) + 1):
        if full[offset : offset + len(plain)] == plain:
            return list(full[:offset]), list(full[offset + len(plain) :])
    return [], []


def tokenize_record(record: dict, tokenizer, chat_template: bool = False, shift: bool = False) -> Sample:
    """One record -> :class:`Sample` (no length policy applied)."""
    sid = str(record["id"])
    if "response" in record and record.get("response") is not None:
        prompt, response = str(record.get("prompt") or ""), str(record["response"])
        if not response.strip():
            raise DataError(f"sample {sid!r}: empty response")
        if chat_template:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    else:
        text = str(record.get("text") or "")
        if not text.strip():
            raise DataError(f"sample {sid!r}: empty text")
        p_ids, r_ids = [], tokenizer(text, add_special_tokens=False)["input_ids"]
    if not r_ids:
        raise DataError(f"sample {sid!r}: the target region tokenizes to nothing")
    prefix, suffix = special_affixes(tokenizer)
    ids, offset = [*prefix, *p_ids, *r_ids, *suffix], len(prefix)
    if shift and offset == 0:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        if bos is None and not p_ids:
            raise DataError(f"sample {sid!r}: a shifted-logit model needs a token before the target (no BOS)")
        if bos is not None:
            ids, offset = [bos, *ids], 1
    start = offset + len(p_ids)
    return Sample(sid, np.asarray(ids, dtype=np.int64), start, start + len(r_ids), str(record.get("category", "")))


def apply_max_len(sample: Sample, max_len: int, policy: str) -> Sample | None:
    """Apply the length policy: None when dropped; truncation cuts the end and keeps a non-empty target."""
    if sample.length <= max_len:
        return sample
    if policy == "drop":
        return None
    end = min(sample.target_end, max_len)
    if end <= sample.target_start:
        return None
    return Sample(sample.sample_id, sample.input_ids[:max_len].copy(), sample.target_start, end, sample.category)


def tokenize_records(
    records: list[dict],
    tokenizer,
    max_len: int,
    length_policy: str = "drop",
    chat_template: bool = False,
    shift: bool = False,
) -> tuple[list[Sample], TokenizeReport]:
    """Tokenize every record; raise when nothing is left."""
    if length_policy not in LENGTH_POLICIES:
        raise ConfigError(f"data.length_policy: {length_policy!r} is not one of {LENGTH_POLICIES}")
    report = TokenizeReport(n_in=len(records))
    samples = []
    for record in records:
        sample = tokenize_record(record, tokenizer, chat_template, shift)
        kept = apply_max_len(sample, max_len, length_policy)
        if kept is None:
            report.n_dropped_too_long += 1
            continue
        report.n_truncated += int(kept.length < sample.length)
        samples.append(kept)
    report.n_kept = len(samples)
    if not samples:
        raise DataError(
            f"data.max_len: all {len(records)} samples are longer than max_len={max_len} "
            f"(policy {length_policy!r}); raise max_len or use length_policy: truncate"
        )
    return samples, report
