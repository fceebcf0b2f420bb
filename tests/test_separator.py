"""data.separator of the default config tokenizes the demo model's records as its training script did (issue 25
item 9): text records as ``prompt\\nresponse``, task items as prompt + response with nothing between."""

import copy
import gzip
import json
from pathlib import Path

import pytest
import yaml

from headattr.data.tokenize import TokenizeOptions, encode_record, separator_for
from headattr.pipeline.config import validate_schema
from headattr.pipeline.keys import TOKENIZE_OPTIONS

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "resources" / "demo" / "model"
TASKS = {"recall", "copy", "reverse", "add"}


def test_separator_for_picks_the_category_entry_then_star():
    sep = {"*": "\n", "add": ""}
    assert separator_for(sep, "add") == ""
    assert separator_for(sep, "chat") == "\n"
    assert separator_for({"add": ""}, "chat") == ""
    assert separator_for(" ", "add") == " "


@pytest.mark.skipif(not (MODEL / "heldout.jsonl.gz").is_file(), reason="demo model not built")
def test_default_tokenization_equals_the_training_script():
    from transformers import AutoTokenizer

    from headattr.demo.train import encode, task_rows

    config = validate_schema(copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text())), REPO)
    options = TokenizeOptions(**{k: config["data"][k] for k in TOKENIZE_OPTIONS})
    tok = AutoTokenizer.from_pretrained(MODEL)
    records = [json.loads(line) for line in gzip.open(MODEL / "heldout.jsonl.gz", "rt")]
    seen: dict[str, int] = {}
    for record in records:
        cat = record["category"]
        if seen.get(cat, 0) >= 5:
            continue
        seen[cat] = seen.get(cat, 0) + 1
        if cat in TASKS:
            rows, _ = task_rows(tok, [record], 64)
            trained = [t for t in rows[0].tolist() if t != tok.pad_token_id][1:-1]  # without [CLS] ... [SEP]
        else:
            trained = encode(tok, [record])[0]
        parts = encode_record(record, tok, options=options)
        assert parts.prompt + parts.response == trained, (cat, record["id"])
    assert set(seen) >= TASKS | {"chat", "code"}
    # the old default ("") tokenizes text records in a format the model never saw
    text = next(r for r in records if r["category"] not in TASKS)
    old = encode_record(text, tok, options=TokenizeOptions(separator=""))
    assert old.prompt + old.response != encode(tok, [text])[0]
