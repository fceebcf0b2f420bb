"""Tiny models for tests: real transformers classes built from configs, and LLaDA/Dream stand-ins.

LLaDA's and Dream's modeling code cannot be installed here, so their adapters are tested on small modules
that use the same attribute paths, shapes, logit shift and padding behaviour.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB = 64
N_LAYERS = 3
N_HEADS = 4
HIDDEN = 32


def _seeded(fn):
    def wrapper(*args, **kwargs):
        torch.manual_seed(kwargs.pop("seed", 0))
        return fn(*args, **kwargs).eval()

    wrapper.__name__ = fn.__name__
    return wrapper


@_seeded
def tiny_bert(family: str = "bert", init: float = 0.2, attn: str = "eager"):
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    cls, cfg_cls = (BertForMaskedLM, BertConfig) if family == "bert" else (RobertaForMaskedLM, RobertaConfig)
    cfg = cfg_cls(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=64,
        max_position_embeddings=80,
        initializer_range=init,
        attn_implementation=attn,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return cls(cfg)


@_seeded
def tiny_distilbert(init: float = 0.2):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    cfg = DistilBertConfig(
        vocab_size=VOCAB,
        dim=HIDDEN,
        n_layers=N_LAYERS,
        n_heads=N_HEADS,
        hidden_dim=64,
        max_position_embeddings=80,
        initializer_range=init,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return DistilBertForMaskedLM(cfg)


@_seeded
def tiny_gpt2(init: float = 0.2):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_positions=80,
        initializer_range=init,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


@_seeded
def tiny_llama(family: str = "llama", init: float = 0.2):
    import transformers as tf

    cfg_cls, cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
    }[family]
    cfg = cfg_cls(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        initializer_range=init,
    )
    return cls(cfg)


class _Cfg:
    def __init__(self, model_type: str):
        self.model_type = model_type
        self.num_attention_heads = N_HEADS
        self.n_heads = N_HEADS


class _Attention(nn.Module):
    """Bidirectional multi-head attention with separate q/k/v and a named output projection."""

    def __init__(self, out_name: str):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(3))
        self.out_name = out_name
        setattr(self, out_name, nn.Linear(HIDDEN, HIDDEN, bias=False))

    def forward(self, x, mask4d=None):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, N_HEADS, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask4d)
        return getattr(self, self.out_name)(att.transpose(1, 2).reshape(b, t, HIDDEN))


class _LLaDABlock(nn.Module):
    """Laid out like LLaDALlamaBlock: q/k/v/attn_out on the block; its ``attention`` method ends in attn_out."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.attn_out = (nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(4))
        self.ff = nn.Sequential(nn.Linear(HIDDEN, 64), nn.GELU(), nn.Linear(64, HIDDEN))
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)

    def attention(self, q, k, v, attention_bias=None, layer_past=None, use_cache=False):
        b, t, _ = q.shape
        q, k, v = (x.view(b, t, N_HEADS, -1).transpose(1, 2) for x in (q, k, v))
        att = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.attn_out(att.transpose(1, 2).reshape(b, t, HIDDEN)), None

    def forward(self, x):
        x_normed = self.norm1(x)
        q, k, v = self.q_proj(x_normed), self.k_proj(x_normed), self.v_proj(x_normed)
        att, _ = self.attention(q, k, v, None, layer_past=None, use_cache=False)
        x = x + att
        return x + self.ff(self.norm2(x))


class LLaDAStandIn(nn.Module):
    """``model.transformer.blocks[i].attn_out``, head ``model.transformer.ff_out``; attention_mask ignored."""

    def __init__(self):
        super().__init__()
        self.config = _Cfg("llada")
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(VOCAB, HIDDEN),
                "blocks": nn.ModuleList([_LLaDABlock() for _ in range(N_LAYERS)]),
                "ln_f": nn.LayerNorm(HIDDEN),
                "ff_out": nn.Linear(HIDDEN, VOCAB, bias=False),
            }
        )

    def forward(self, input_ids, attention_mask=None):
        tr = self.model.transformer
        x = tr["wte"](input_ids)
        for block in tr["blocks"]:
            x = block(x)
        return (tr["ff_out"](tr["ln_f"](x)),)


class _DreamLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = _Attention("o_proj")
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 64), nn.GELU(), nn.Linear(64, HIDDEN))

    def forward(self, x, mask4d):
        x = x + self.self_attn(x, mask4d)
        return x + self.mlp(x)


class DreamStandIn(nn.Module):
    """``model.layers[i].self_attn.o_proj`` + ``lm_head``; rejects 2-D masks like Dream does."""

    def __init__(self):
        super().__init__()
        self.config = _Cfg("Dream")
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.model.pos = nn.Embedding(80, HIDDEN)
        self.model.layers = nn.ModuleList([_DreamLayer() for _ in range(N_LAYERS)])
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if attention_mask is not None and attention_mask.ndim == 2:
            raise ValueError("Dream: 2-D attention masks are not supported")
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1])[None].expand_as(input_ids)
        x = self.model.embed_tokens(input_ids) + self.model.pos(position_ids)
        for layer in self.model.layers:
            x = layer(x, attention_mask)
        return (self.lm_head(x),)


@_seeded
def llada_standin():
    return LLaDAStandIn()


@_seeded
def dream_standin():
    return DreamStandIn()


FAMILY_BUILDERS = {
    "bert": lambda: tiny_bert("bert"),
    "roberta": lambda: tiny_bert("roberta"),
    "distilbert": tiny_distilbert,
    "gpt2": tiny_gpt2,
    "llama": lambda: tiny_llama("llama"),
    "qwen2": lambda: tiny_llama("qwen2"),
    "mistral": lambda: tiny_llama("mistral"),
    "llada": llada_standin,
    "dream": dream_standin,
}


def random_ids(length: int, seed: int = 0, low: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, VOCAB, length).astype(np.int64)


def make_tokenizer(words: list[str] | None = None):
    """A word-level fast tokenizer with BERT-style special tokens, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = words or [f"w{i}" for i in range(VOCAB - len(specials))]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def text_records(n: int, seed: int = 0, categories=("a", "b")) -> list[dict]:
    """Prompt/response records over the :func:`make_tokenizer` vocabulary."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(VOCAB - 5)]
    recs = []
    for i in range(n):
        prompt = " ".join(rng.choice(words, rng.integers(3, 8)))
        response = " ".join(rng.choice(words, rng.integers(4, 12)))
        recs.append(
            {"id": f"s{i}", "category": categories[i % len(categories)], "prompt": prompt, "response": response}
        )
    return recs


def write_tiny_project(root, methods=("per_layer", "joint"), seeds=(1, 2), n_samples=4, steps=2, extra=None):
    """A tiny random BERT, a jsonl of prompt/response pairs and a config for the workflow, under ``root``."""
    import json
    from pathlib import Path

    import yaml

    root = Path(root)
    model_dir = root / "tiny-model"
    if not model_dir.exists():
        tiny_bert().save_pretrained(model_dir)
        make_tokenizer().save_pretrained(model_dir)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in text_records(8, categories=("a", "b", "c", "d"))))
    config = {
        "run": "tiny",
        "model": {"path": "tiny-model", "device": "cpu"},
        "data": {"source": "pairs.jsonl", "max_samples": n_samples, "max_len": 48},
        "seeds": list(seeds),
        "objective": {"mask_probs": [0.3, 0.7]},
        "ig": {"methods": list(methods), "steps": steps, "rows_per_pass": 16},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {})
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "config.yaml"


class FunctionEngine:
    """Stands in for GateEngine: L_p(g) = f(g) * (p index + 1) over gates [R, L, H]; counts engine calls."""

    def __init__(self, fn, n_layers: int = N_LAYERS, n_heads: int = N_HEADS):
        from types import SimpleNamespace

        self.fn = fn
        self.adapter = SimpleNamespace(n_layers=n_layers, n_heads=n_heads)
        self.calls = []

    def losses(self, scored, row_p, gates, describe=None):
        self.calls.append(len(row_p))
        with torch.no_grad():
            return (self.fn(gates.double()) * (row_p + 1)).double()

    def gradients(self, scored, row_p, gates, describe=None):
        self.calls.append(len(row_p))
        g = gates.double().requires_grad_(True)
        out = self.fn(g) * (row_p + 1)
        (grad,) = torch.autograd.grad(out.sum(), g)
        return out.detach(), grad.float()


class ToyScored:
    """A scored input with two mask probabilities, for FunctionEngine."""

    sample_id, mask_probs, n_p, n_scored = "toy", [0.2, 0.4], 2, [1, 1]


def job_stats(output: str) -> dict:
    """Job counts per rule from the first 'Job stats' table of Snakemake's output ({} when nothing is to do)."""
    if "Nothing to be done" in output:
        return {}
    lines = output.splitlines()
    start = lines.index("Job stats:") + 3
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


NO_VALIDATION = {"validation": {"enabled": False}}


def dumps_of(root):
    """{unit key: arrays} of every dump.npz under root/results/ig."""
    out = {}
    for path in sorted((root / "results" / "ig").glob("*/dump.npz")):
        with np.load(path, allow_pickle=False) as data:
            out[path.parent.name] = {k: data[k] for k in data.files}
    return out


def assert_same_dumps(a, b):
    """Same units, same arrays, bit for bit."""
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)
