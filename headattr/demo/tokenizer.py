"""Train the demo model's tokenizer: byte-level BPE with BERT-style special tokens.

Byte-level BPE has no out-of-vocabulary text (code, symbols and any Unicode round-trip exactly), and the
[MASK] token gives the masked-diffusion objective its absorbing state. Encoding wraps text as
[CLS] ... [SEP], like BERT, so the BertForMaskedLM demo model sees the layout it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on texts (order matters; training is deterministic), save it to out_dir.

    Special tokens get ids 0-4 in SPECIAL_TOKENS order. [MASK] absorbs the space before it (as RoBERTa's
    <mask> does), so "pumps [MASK] through" masks the word " blood" rather than leaving a lone space token.
    The saved files load offline with ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(str(out_dir))
    return tok
