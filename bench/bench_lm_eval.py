"""Benchmark: headattr's lm-eval model against lm-eval's own ``hf`` model on the same requests, in one process.

    python bench/bench_lm_eval.py --threads 1 --clock cpu --repeats 2

A random ``LlamaForCausalLM`` (``--layers`` x ``--heads``, hidden ``--hidden``) with a word-level tokenizer of
``--vocab`` words, both built here (no hub). Requests: ``--questions`` multiple-choice loglikelihood items (a
context of 20-``--max-context`` words; 4 continuations: one word on even items, as MMLU's letters, 1-6 words on
odd ones) and ``--generations`` greedy ``generate_until`` requests (``--gen-toks`` new tokens, a stop sequence that
never occurs). Both models get the same ``--batch-size``; each request type is timed in rounds over both models
(best round kept), the answers are checked equal (log-likelihoods to 1e-5, greedy flags and generated texts
exactly), and the ratio time(hf) / time(headattr) printed (> 1: headattr is faster), with the model forward
calls and rows each ran (generation: one call per new token).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from headattr.evaluation.lm import HeadAttrLM  # noqa: E402


def word_tokenizer(n_words: int):
    """Word-level tokenizer over w0..w{n-1} that adds no special tokens (both models encode alike)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *(f"w{i}" for i in range(n_words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def build_model(args, vocab_size: int):
    import transformers as tf

    config = tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=int(args.hidden * 8 / 3),
        max_position_embeddings=2048,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(config).eval()


def requests(args):
    """(loglikelihood instances, generate_until instances), deterministic."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(args.vocab)]

    def text(lo, hi):
        return " ".join(rng.choice(words, int(rng.integers(lo, hi + 1))))

    ll = []
    for i in range(args.questions):
        context = text(20, args.max_context)
        for j in range(4):  # even items: one-token choices (as MMLU's " A" .. " D"), odd: 1-6 words
            ll.append(Instance("loglikelihood", {}, (context, " " + text(1, 1 if i % 2 == 0 else 6)), i, repeats=j))
    gen = [
        Instance(
            "generate_until", {}, (text(20, args.max_context), {"until": ["[UNK]"], "max_gen_toks": args.gen_toks}), i
        )
        for i in range(args.generations)
    ]
    return ll, gen


def timed(fn, clock: str, model):
    """(output, seconds on ``clock``, wall, cpu, model forward calls, rows through the model) of one run."""
    rows = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append((args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True
    )
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    finally:
        handle.remove()
    return out, {"wall": wall, "cpu": cpu}[clock], wall, cpu, len(rows), sum(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--max-context", type=int, default=300)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--gen-toks", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = word_tokenizer(args.vocab)
    model = build_model(args, len(tok))
    ll, gen = requests(args)
    hf = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=args.batch_size)
    ours = HeadAttrLM(model=model, tokenizer=tok, batch_size=args.batch_size, disable_tqdm=True)
    kinds = {"loglikelihood": ll, "generate_until": gen}
    print(
        f"LLaMA {args.layers} x {args.heads} heads, hidden {args.hidden}, vocab {len(tok)}; {len(ll)} loglikelihood "
        f"requests ({args.questions} x 4 choices), {len(gen)} generate_until ({args.gen_toks} tokens); batch size "
        f"{args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.clock} time"
    )
    best: dict = {}
    answers: dict = {}
    for _ in range(args.repeats):
        for kind, reqs in kinds.items():
            for name, lm in (("hf", hf), ("headattr", ours)):
                out, *times = timed(lambda lm=lm, kind=kind, reqs=reqs: getattr(lm, kind)(reqs), args.clock, model)
                answers[kind, name] = out
                if (kind, name) not in best or times[0] < best[kind, name][0]:
                    best[kind, name] = times
    ok = True
    print(
        f"{'requests':15s} {'model':9s} {'wall s':>8s} {'cpu s':>8s} {'calls':>6s} {'rows':>6s} {'hf / headattr':>14s}"
        " agreement"
    )
    for kind in kinds:
        ref, mine = answers[kind, "hf"], answers[kind, "headattr"]
        if kind == "loglikelihood":
            diff = max(abs(a[0] - b[0]) for a, b in zip(ref, mine, strict=True))
            same = diff <= 1e-5 and [a[1] for a in ref] == [b[1] for b in mine]
            note = f"max |dlogp| {diff:.1e}, greedy flags {'equal' if same else 'DIFFER'}"
        else:
            same = ref == mine
            note = "texts equal" if same else "texts DIFFER"
        ok &= same
        for name in ("hf", "headattr"):
            secs, wall, cpu, calls, rows = best[kind, name]
            ratio = best[kind, "hf"][0] / secs
            print(
                f"{kind:15s} {name:9s} {wall:8.2f} {cpu:8.2f} {calls:6d} {rows:6d} {ratio:14.2f} "
                + (note if name == "headattr" else "")
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
