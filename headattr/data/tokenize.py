"""Records -> tokenized samples with a target region, under a max-length policy and sample checks.

A record is a dict with ``id``, ``category`` and either ``prompt``/``response`` or ``text``. The sequence is
the tokenizer's special-token wrapping of prompt + separator + response; the target region is the response
(or the whole text). A shifted-logit model needs a token before the target: a BOS is added if the tokenizer
has one and adds none itself. ``data.add_bos`` (the users' scripts) prepends the tokenizer's BOS, when it has
one and its wrapping adds none, for every model.

The prompt/response boundary is always a token boundary: the joined text is tokenized once and split at the
response's first character when no token crosses it (the response's first token then has its in-context form,
e.g. ``Ġprint`` after a space separator); when a token would cross it (a BPE merge such as ``?print``), the two
parts are tokenized separately and the sample is counted in ``n_split_at_boundary``. Special-token strings that
occur in the data (a literal ``[MASK]``) are split into ordinary tokens (``split_special_tokens``); only the
tokenizer's own wrapping and the chat template add special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DataError
from .samples import Sample
from .sources import SKIP_FIX, select_in_order

LENGTH_POLICIES = ("drop", "truncate", "keep_answer")
PLACEHOLDER = "\u2063headattr-prompt\u2063"


@dataclass
class TokenizeOptions:
    """How records become samples (schema keys ``data.*``)."""

    separator: str | dict = ""
    split_special_tokens: bool = True
    min_answer_tokens: int = 1
    min_target_tokens: int = 1
    max_unk_fraction: float = 0.5
    on_bad_record: str = "error"
    add_bos: bool = False


def separator_for(separator: str | dict, category: str) -> str:
    """The text put between a record's prompt and response: ``data.separator`` itself, or from a
    {category: separator} map its category's entry, else the ``"*"`` entry (else none). The demo model was
    trained on ``prompt\\nresponse`` text rows but task items without a separator: its default needs both."""
    if isinstance(separator, str):
        return separator
    return separator.get(str(category), separator.get("*", ""))


@dataclass
class TokenizeReport:
    """What tokenization did: counts of kept, truncated and dropped samples, and every skip by reason.

    ``skipped`` counts the records the seeded walk passed over before the sample set was complete
    (``too_long``, ``missing_<field>``, ``empty_<field>``, ``mostly_unknown``, ``too_few_target_tokens``,
    ``duplicate``); ``asked`` is the number of samples asked for (None: all records).
    """

    n_in: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    n_dropped_too_long: int = 0
    skipped: dict = field(default_factory=dict)
    asked: int | None = None
    n_visited: int = 0
    n_split_at_boundary: int = 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "skipped": dict(sorted(self.skipped.items()))}


@dataclass(frozen=True)
class Parts:
    """Token ids of one record before the length policy: specials, prompt, response (target), specials."""

    prefix: list
    prompt: list
    response: list
    suffix: list
    split_at_boundary: bool = False


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special tokens the tokenizer adds around one sequence, found by probing it."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for offset in range(0, len(full) - len(plain) + 1):
        if full[offset : offset + len(plain)] == plain:
            return list(full[:offset]), list(full[offset + len(plain) :])
    return [], []


def encode(tokenizer, text: str, split_special: bool = True) -> list[int]:
    """Ids of ``text`` without added specials; special-token strings in it stay text when ``split_special``."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"])


def encode_pair(tokenizer, head: str, response: str, split_special: bool = True) -> tuple[list, list, bool]:
    """(head ids, response ids, split separately): the boundary between the two is a token boundary."""
    if not head:
        return [], encode(tokenizer, response, split_special), False
    if getattr(tokenizer, "is_fast", False):
        text, cut = head + response, len(head)
        enc = tokenizer(text, add_special_tokens=False, split_special_tokens=split_special, return_offsets_mapping=True)
        sides = []
        for start, end in enc["offset_mapping"]:
            crosses = start < cut < end
            sides.append(int(end > cut) if not crosses or text[start:cut].isspace() else -1)
        if -1 not in sides and sides == sorted(sides):
            k = sides.count(0)
            return list(enc["input_ids"][:k]), list(enc["input_ids"][k:]), False
    return encode(tokenizer, head, split_special), encode(tokenizer, response, split_special), True


def chat_prompt_ids(tokenizer, prompt: str, split_special: bool = True) -> list[int]:
    """The prompt wrapped in the tokenizer's chat template (one user turn + generation prompt).

    The template's own special tokens stay special; the user's text inside it is tokenized as data."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"data.chat_template: the tokenizer ({type(tokenizer).__name__}) has no chat template; set "
            "data.chat_template: false, or add a chat_template to the model's tokenizer_config.json"
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PLACEHOLDER}], tokenize=False, add_generation_prompt=True
    )
    before, _, after = rendered.partition(PLACEHOLDER)
    return encode(tokenizer, before, False) + encode(tokenizer, prompt, split_special) + encode(tokenizer, after, False)


def encode_record(
    record: dict, tokenizer, chat_template: bool = False, shift: bool = False, options: TokenizeOptions | None = None
) -> Parts:
    """One record -> :class:`Parts` (no length policy applied)."""
    opts = options or TokenizeOptions()
    sid, split = str(record["id"]), opts.split_special_tokens
    boundary_split = False
    if "response" in record and record.get("response") is not None:
        prompt, response = str(record.get("prompt") or ""), str(record["response"])
        if not response.strip():
            raise DataError(f"sample {sid!r}: empty response")
        if chat_template:
            p_ids, r_ids = chat_prompt_ids(tokenizer, prompt, split), encode(tokenizer, response, split)
        else:
            head = prompt + separator_for(opts.separator, record.get("category", "")) if prompt else ""
            p_ids, r_ids, boundary_split = encode_pair(tokenizer, head, response, split)
    else:
        text = str(record.get("text") or "")
        if not text.strip():
            raise DataError(f"sample {sid!r}: empty text")
        p_ids, r_ids = [], encode(tokenizer, text, split)
    if not r_ids:
        raise DataError(f"sample {sid!r}: the target region tokenizes to nothing")
    prefix, suffix = special_affixes(tokenizer)
    if opts.add_bos and not prefix and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id]
    if shift and not prefix:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        if bos is None and not p_ids:
            raise DataError(f"sample {sid!r}: a shifted-logit model needs a token before the target (no BOS)")
        if bos is not None:
            prefix = [bos]
    return Parts(prefix, p_ids, r_ids, suffix, boundary_split)


def assemble(
    sid: str, parts: Parts, category: str, max_len: int, policy: str, min_answer_tokens: int = 1
) -> tuple[Sample | None, bool]:
    """Apply the length policy: (sample or None when dropped, truncated?).

    ``drop``: longer samples are dropped. ``truncate``: the end is cut, keeping a non-empty target.
    ``keep_answer``: the prompt is cut from the left so that at least ``min_answer_tokens`` answer tokens
    (all of a shorter answer) stay, then the answer is cut at the end; the special tokens stay.
    """
    ids = [*parts.prefix, *parts.prompt, *parts.response, *parts.suffix]
    start = len(parts.prefix) + len(parts.prompt)
    if len(ids) <= max_len:
        return Sample(sid, np.asarray(ids, dtype=np.int64), start, start + len(parts.response), category), False
    if policy == "drop":
        return None, False
    if policy == "truncate":
        end = min(start + len(parts.response), max_len)
        if end <= start:
            return None, False
        return Sample(sid, np.asarray(ids[:max_len], dtype=np.int64), start, end, category), True
    budget = max_len - len(parts.prefix) - len(parts.suffix)
    need = min(len(parts.response), max(1, int(min_answer_tokens)))
    if budget < need:
        return None, False
    n_prompt = min(len(parts.prompt), budget - need)
    n_answer = min(len(parts.response), budget - n_prompt)
    prompt = parts.prompt[len(parts.prompt) - n_prompt :]
    ids = [*parts.prefix, *prompt, *parts.response[:n_answer], *parts.suffix]
    start = len(parts.prefix) + n_prompt
    return Sample(sid, np.asarray(ids, dtype=np.int64), start, start + n_answer, category), True


def degenerate_reason(sample: Sample, unk_id, opts: TokenizeOptions) -> tuple[str, str] | None:
    """(reason, message) when the sample's target is mostly unknown tokens or shorter than the floor."""
    target = sample.input_ids[sample.target_start : sample.target_end]
    if unk_id is not None and len(target):
        n_unk = int((target == unk_id).sum())
        if n_unk / len(target) > opts.max_unk_fraction:
            return "mostly_unknown", (
                f"{n_unk} of {len(target)} target tokens are the tokenizer's unknown token (data.max_unk_fraction "
                f"{opts.max_unk_fraction}): the tokenizer does not cover this text (e.g. residues written without "
                "spaces for a per-residue vocabulary)"
            )
    if len(target) < opts.min_target_tokens:
        return "too_few_target_tokens", (
            f"{len(target)} target tokens, fewer than data.min_target_tokens={opts.min_target_tokens}"
        )
    return None


def select_samples(
    records: list[dict],
    tokenizer,
    max_len: int,
    length_policy: str = "drop",
    chat_template: bool = False,
    shift: bool = False,
    n: int | None = None,
    stratify: bool = False,
    options: TokenizeOptions | None = None,
) -> tuple[list[Sample], TokenizeReport]:
    """Walk ``records`` (in draw order) and keep the first ``n`` valid samples (all when None).

    A record is skipped and counted by reason when it is flagged bad by the source, too long for the policy,
    a duplicate of a kept sample's token ids, or degenerate (mostly unknown tokens, too few target tokens);
    with ``options.on_bad_record == "error"`` the degenerate cases raise instead, naming the sample.
    """
    opts = options or TokenizeOptions()
    if length_policy not in LENGTH_POLICIES:
        raise ConfigError(f"data.length_policy: {length_policy!r} is not one of {LENGTH_POLICIES}")
    report = TokenizeReport(n_in=len(records), asked=n)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    seen: set[bytes] = set()

    def accept(record):
        if record.get("skip"):
            return str(record["skip"])
        sid = str(record["id"])
        parts = encode_record(record, tokenizer, chat_template, shift, opts)
        sample, truncated = assemble(
            sid, parts, str(record.get("category", "")), max_len, length_policy, opts.min_answer_tokens
        )
        if sample is None:
            report.n_dropped_too_long += 1
            return "too_long"
        bad = degenerate_reason(sample, unk_id, opts)
        if bad is not None:
            if opts.on_bad_record == "error":
                raise DataError(f"sample {sid!r}: {bad[1]}; {SKIP_FIX}")
            return bad[0]
        content = sample.input_ids.tobytes() + np.int64(sample.target_start).tobytes()
        if content in seen:
            return "duplicate"
        seen.add(content)
        report.n_truncated += int(truncated)
        report.n_split_at_boundary += int(parts.split_at_boundary)
        return sample

    samples, report.skipped, report.n_visited = select_in_order(records, n, accept, stratify)
    report.n_kept = len(samples)
    if not samples:
        if report.skipped.keys() == {"too_long"}:
            raise DataError(
                f"data.max_len: all {len(records)} samples are longer than max_len={max_len} "
                f"(policy {length_policy!r}); raise max_len or use length_policy: truncate or keep_answer"
            )
        raise DataError(f"data.source: no usable sample in {len(records)} records (skipped: {report.skipped})")
    return samples, report


def tokenize_records(
    records: list[dict],
    tokenizer,
    max_len: int,
    length_policy: str = "drop",
    chat_template: bool = False,
    shift: bool = False,
    options: TokenizeOptions | None = None,
) -> tuple[list[Sample], TokenizeReport]:
    """Tokenize every record (skips counted in the report); raise when nothing is left."""
    return select_samples(records, tokenizer, max_len, length_policy, chat_template, shift, None, False, options)
