"""The lm-eval model: lm-eval's own HF model as reference (causal), enumeration of every mask (diffusion ELBO),
weight zeroing (pruning), hand-fixed logits (generation)."""

import copy
import itertools
from math import comb

import numpy as np
import pytest
import torch
from helpers import VOCAB, dream_standin, llada_standin, make_tokenizer, tiny_bert, tiny_gpt2, tiny_llama

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from headattr.errors import ConfigError  # noqa: E402
from headattr.evaluation.lm import HeadAttrLM  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402

WORDS = [f"w{i}" for i in range(VOCAB - 5)]
MASK_ID = 4  # [MASK] of make_tokenizer


def plain_tokenizer():
    """Word-level tokenizer that adds no special tokens (so lm-eval's HF model and ours encode alike)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]"
    )


def ll_requests(n=12, seed=0):
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        ctx = " ".join(rng.choice(WORDS, rng.integers(0, 10)))  # some empty contexts
        cont = " " + " ".join(rng.choice(WORDS, rng.integers(1, 5)))
        reqs.append(Instance("loglikelihood", {}, (ctx + (" " if i % 3 == 0 and ctx else ""), cont), i))
    reqs.append(Instance("loglikelihood", {}, (" ".join(rng.choice(WORDS, 100)), " w1 w2"), n))  # > max_length 80
    return reqs


def greedy_continuation(model, tok, context: str, n: int) -> str:
    ids = tok.encode(context)
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return " " + tok.decode(ids[-n:])


@pytest.mark.parametrize("build", [tiny_gpt2, lambda: tiny_llama("llama")], ids=["gpt2", "llama"])
def test_causal_loglikelihoods_equal_lm_evals_hf_model(build):
    from lm_eval.models.huggingface import HFLM

    model, tok = build(), plain_tokenizer()
    reqs = ll_requests()
    greedy = greedy_continuation(model, tok, "w3 w4 w5", 3)
    reqs.append(Instance("loglikelihood", {}, ("w3 w4 w5", greedy), len(reqs)))
    ref = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=4).loglikelihood(reqs)
    ours = HeadAttrLM(model=model, tokenizer=tok, batch_size=3, disable_tqdm=True).loglikelihood(reqs)
    assert [g for _, g in ours] == [g for _, g in ref]
    assert ours[-1][1] is True
    np.testing.assert_allclose([lp for lp, _ in ours], [lp for lp, _ in ref], rtol=0, atol=1e-5)

    text = [Instance("loglikelihood_rolling", {}, (" ".join(np.random.default_rng(1).choice(WORDS, 150)),), 0)]
    ref_roll = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=4).loglikelihood_rolling(text)
    ours_roll = HeadAttrLM(model=model, tokenizer=tok, disable_tqdm=True).loglikelihood_rolling(text)
    np.testing.assert_allclose(ours_roll, ref_roll, rtol=0, atol=1e-4)


def _zeroed(model, keep):
    ref = copy.deepcopy(model)
    adapter = Adapter(ref)
    for layer, head in np.argwhere(~keep):
        adapter.zero_head_weights(int(layer), int(head))
    return ref


KEEP = np.ones((3, 4), dtype=bool)
KEEP[0, 1] = KEEP[1, 0] = KEEP[1, 3] = KEEP[2, 2] = False


@pytest.mark.parametrize("build", [tiny_gpt2, lambda: tiny_llama("llama")], ids=["gpt2", "llama"])
def test_pruned_causal_model_equals_the_weight_zeroed_model_without_reload(build):
    model, tok = build(), plain_tokenizer()
    reqs = ll_requests(6)
    lm = HeadAttrLM(model=model, tokenizer=tok, disable_tqdm=True)
    full = lm.loglikelihood(reqs)
    lm.set_keep_mask(KEEP)
    pruned = lm.loglikelihood(reqs)
    zeroed = HeadAttrLM(model=_zeroed(model, KEEP), tokenizer=tok, disable_tqdm=True).loglikelihood(reqs)
    np.testing.assert_allclose([x for x, _ in pruned], [x for x, _ in zeroed], rtol=0, atol=1e-5)
    assert max(abs(a - b) for (a, _), (b, _) in zip(full, pruned, strict=True)) > 1e-3
    lm.set_keep_mask(None)
    np.testing.assert_array_equal([x for x, _ in lm.loglikelihood(reqs)], [x for x, _ in full])
    assert lm.get_model_info()["headattr_pruned_heads"] == 0


def test_pruned_diffusion_elbo_equals_the_weight_zeroed_model():
    model, tok = tiny_bert(), make_tokenizer()
    reqs = [Instance("loglikelihood", {}, ("w1 w2 w3", " w4 w5 w6"), 0)]
    lm = HeadAttrLM(model=model, tokenizer=tok, mc_num=8, disable_tqdm=True, keep_at_least_one_head=True)
    lm.set_keep_mask(KEEP)
    zeroed = HeadAttrLM(model=_zeroed(model, KEEP), tokenizer=tok, mc_num=8, disable_tqdm=True)
    assert lm.loglikelihood(reqs)[0][0] == pytest.approx(zeroed.loglikelihood(reqs)[0][0], abs=1e-5)


# ----- the Monte-Carlo ELBO --------------------------------------------------------------------------------------


def _logits(model, ids):
    out = model(input_ids=torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out[0])[0].double()


def enumerated_elbo_loss(model, context, continuation, shift):
    """E_k E_M [(n / k) sum_{j in M} CE_j] by summing over every non-empty mask M of the continuation."""
    n, start = len(continuation), len(context)
    total = 0.0
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            ids = list(context) + list(continuation)
            for j in subset:
                ids[start + j] = MASK_ID
            logp = torch.log_softmax(_logits(model, ids), -1)
            ce = sum(-float(logp[start + j - int(shift), continuation[j]]) for j in subset)
            total += (1 / n) * (1 / comb(n, k)) * (n / k) * ce
    return total


ELBO_MODELS = {"bert": tiny_bert, "llada": llada_standin, "dream": dream_standin}


@pytest.mark.parametrize("family", list(ELBO_MODELS))
def test_mc_elbo_is_unbiased_for_the_enumerated_elbo(family):
    model, tok = ELBO_MODELS[family](), make_tokenizer()
    lm = HeadAttrLM(model=model, tokenizer=tok, mask_token_id=MASK_ID, mc_num=4, disable_tqdm=True)
    req = Instance("loglikelihood", {}, ("w1 w2", " w7 w8 w9"), 0)
    (_, context, continuation), *_ = [((), *lm._encode_pair(*req.args))]
    assert len(continuation) == 3 and context[0] == tok.cls_token_id
    exact = enumerated_elbo_loss(model, context, continuation, lm.adapter.shift_logits)
    estimates = []
    for seed in range(150):
        lm.seed = seed
        estimates.append(-lm.loglikelihood([req])[0][0])
    estimates = np.array(estimates)
    se = estimates.std(ddof=1) / np.sqrt(estimates.size)
    assert se > 1e-3  # a real Monte-Carlo estimate, not the enumeration itself
    assert abs(estimates.mean() - exact) < 3.5 * se, (estimates.mean(), exact, se)
    lm.seed = 5
    again = -lm.loglikelihood([req])[0][0]
    assert again == estimates[5]  # deterministic given the seed


def test_elbo_equals_the_exact_likelihood_of_a_context_free_mdlm():
    """With value projections zeroed, a masked position's prediction depends on its position only: the MDLM's
    joint is the product of those, whose log-likelihood the ELBO's expectation reaches exactly."""
    model, tok = tiny_bert(), make_tokenizer()
    for layer in model.bert.encoder.layer:
        layer.attention.self.value.weight.data.zero_()
        layer.attention.self.value.bias.data.zero_()
    context, continuation = [2, 10, 11], [20, 21, 22]
    all_masked = _logits(model, context + [MASK_ID] * 3)
    exact_logp = sum(float(torch.log_softmax(all_masked[3 + j], -1)[t]) for j, t in enumerate(continuation))
    assert enumerated_elbo_loss(model, context, continuation, False) == pytest.approx(-exact_logp, abs=1e-5)
    lm = HeadAttrLM(model=model, tokenizer=tok, mc_num=6, disable_tqdm=True)
    lp = lm._loglikelihood_tokens([(None, context, continuation)])[0][0]
    assert lp != pytest.approx(exact_logp, abs=1e-6)  # one estimate still varies with its masks
    estimates = []
    for seed in range(100):
        lm.seed = seed
        estimates.append(lm._loglikelihood_tokens([(None, context, continuation)])[0][0])
    se = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact_logp) < 3.5 * se


def test_elbo_does_not_depend_on_rows_per_pass():
    model, tok = tiny_bert(), make_tokenizer()
    reqs = [Instance("loglikelihood", {}, ("w1 w2 w3", " w4 w5 w6 w7"), 0)]
    a = HeadAttrLM(model=model, tokenizer=tok, mc_num=12, batch_size=12, disable_tqdm=True).loglikelihood(reqs)
    b = HeadAttrLM(model=model, tokenizer=tok, mc_num=12, batch_size=5, disable_tqdm=True).loglikelihood(reqs)
    assert a[0][0] == pytest.approx(b[0][0], abs=1e-9)


# ----- generation ------------------------------------------------------------------------------------------------


def test_causal_generation_is_greedy_and_cut_at_stop_sequences():
    model, tok = tiny_gpt2(), plain_tokenizer()
    lm = HeadAttrLM(model=model, tokenizer=tok, batch_size=2, disable_tqdm=True)
    contexts = ["w3 w4 w5", "w6 w7 w8", "w9 w10"]
    expected = [greedy_continuation(model, tok, c, 6).strip() for c in contexts]
    out = lm.generate_until(
        [Instance("generate_until", {}, (c, {"max_gen_toks": 6}), i) for i, c in enumerate(contexts)]
    )
    assert out == expected
    stop = expected[0].split()[2]
    cut = lm.generate_until([Instance("generate_until", {}, (contexts[0], {"until": [stop], "max_gen_toks": 6}), 0)])
    assert cut == [expected[0][: expected[0].index(stop)]]


def test_diffusion_generation_runs_the_sampler_and_honours_stops():
    model, tok = tiny_bert(), make_tokenizer()
    lm = HeadAttrLM(model=model, tokenizer=tok, gen_length=4, block_length=2, steps=4, disable_tqdm=True)
    words = [tok.convert_tokens_to_ids(w) for w in ("w10", "w11", "w12", "w13")]
    assert lm._template_suffix() == [tok.sep_token_id]  # BERT's template: [CLS] text [SEP]

    def fixed(x):  # answer position j (after the prompt) -> words[j]; a later position is always more confident
        assert int(x[0, -1]) == tok.sep_token_id  # the answer span is generated in front of [SEP]
        logits = torch.zeros(*x.shape, VOCAB)
        plen = x.shape[1] - 4 - 1
        for j, w in enumerate(words):
            logits[:, plen + j, w] = 5.0 + j
        return logits

    lm._aligned_logits = fixed
    req = lambda until: Instance("generate_until", {}, ("w1 w2", {"until": until}), 0)  # noqa: E731
    assert lm.generate_until([req([])]) == ["w10 w11 w12 w13"]
    assert lm.generate_until([req(["w12", "w11"])]) == ["w10 "]
    words[2] = tok.sep_token_id  # an EOS-like token ends the answer
    lm.tokenizer.eos_token = "[SEP]"
    assert lm.generate_until([req([])]) == ["w10 w11"]


def test_sampler_on_a_real_model_under_a_keep_mask_matches_the_zeroed_model():
    model, tok = tiny_bert(), make_tokenizer()
    settings = dict(gen_length=4, block_length=4, steps=4, disable_tqdm=True)
    lm = HeadAttrLM(model=model, tokenizer=tok, **settings)
    lm.set_keep_mask(KEEP)
    zeroed = HeadAttrLM(model=_zeroed(model, KEEP), tokenizer=tok, **settings)
    req = [Instance("generate_until", {}, ("w1 w2 w3", {}), 0)]
    assert lm.generate_until(req) == zeroed.generate_until(req)


# ----- settings --------------------------------------------------------------------------------------------------


def test_bad_model_args_fail_naming_the_key(tmp_path):
    model, tok = tiny_bert(), make_tokenizer()
    with pytest.raises(ConfigError, match="mc_nm"):
        HeadAttrLM(model=model, tokenizer=tok, mc_nm=4)
    with pytest.raises(ConfigError, match="keep_mask"):
        HeadAttrLM(model=model, tokenizer=tok, keep_mask=str(tmp_path / "absent.npy"))
    with pytest.raises(ConfigError, match="importance"):
        HeadAttrLM(model=model, tokenizer=tok, prune_order="most", prune_fraction=0.25)
    np.save(tmp_path / "k.npy", np.ones((2, 4), dtype=bool))
    with pytest.raises(ConfigError, match="shape"):
        HeadAttrLM(model=model, tokenizer=tok, keep_mask=str(tmp_path / "k.npy"))
    with pytest.raises(ConfigError, match="mask_token_id"):
        HeadAttrLM(model=model, tokenizer=plain_tokenizer(), objective="diffusion")
    with pytest.raises(ConfigError, match="block_length"):
        HeadAttrLM(model=model, tokenizer=tok, gen_length=4, block_length=3)
    lm = HeadAttrLM(model=model, tokenizer=tok, block_length=3)  # gen_length from the request: checked there
    with pytest.raises(ConfigError, match="block_length"):
        lm.generate_until([Instance("generate_until", {}, ("w1", {"max_gen_toks": 4}), 0)])
    # pruning arguments and files are checked before the model is loaded (the path below does not exist)
    for bad, key in (
        ({"prune_order": "top"}, "prune_order"),
        ({"prune_order": "least", "prune_fraction": 2}, "prune_fraction"),
        ({"importance": str(tmp_path / "none.npy"), "prune_order": "least", "prune_fraction": 0.1}, "importance"),
        ({"prune_fraction": 0.1}, "prune_order"),
    ):
        with pytest.raises(ConfigError, match=key):
            HeadAttrLM(pretrained=str(tmp_path / "no-model"), **bad)


def test_pruning_model_args_build_the_keep_mask(tmp_path):
    model, tok = tiny_bert(), make_tokenizer()
    importance = np.arange(12.0).reshape(3, 4)
    np.save(tmp_path / "imp.npy", importance)
    lm = HeadAttrLM(
        model=model,
        tokenizer=tok,
        importance=str(tmp_path / "imp.npy"),
        prune_order="most",
        prune_fraction=0.5,
        prune_convention="per_layer",
        layer_start=1,
        layer_end=2,
    )
    expected = np.ones((3, 4), dtype=bool)
    expected[1:, 2:] = False
    np.testing.assert_array_equal(lm.keep_mask, expected)
    rand = HeadAttrLM(model=model, tokenizer=tok, prune_order="random", prune_fraction=0.25, prune_seed=3)
    assert (~rand.keep_mask).sum() == 3


class DreamWithGenerate(type(dream_standin())):
    """Dream stand-in whose 'remote code' ships ``diffusion_generate``: it records its arguments and the logits of
    one forward pass over prompt + masks, and fills every new position with their argmax."""

    def diffusion_generate(self, inputs, attention_mask=None, max_new_tokens=0, steps=0, **kwargs):
        x = torch.cat([inputs, torch.full((inputs.shape[0], max_new_tokens), MASK_ID)], dim=1)
        logits = self(x)[0]
        self.calls.append(({"max_new_tokens": max_new_tokens, "steps": steps, **kwargs}, logits))
        x[:, inputs.shape[1] :] = logits.argmax(-1)[:, inputs.shape[1] - 1 : -1]  # shifted logits
        return type("Out", (), {"sequences": x})()


def test_dream_generation_uses_the_checkpoints_diffusion_generate_under_the_keep_mask():
    torch.manual_seed(0)
    model, tok = DreamWithGenerate().eval(), make_tokenizer()
    zeroed = _zeroed(model, KEEP)
    model.calls, zeroed.calls = [], []
    settings = dict(tokenizer=tok, mask_token_id=MASK_ID, gen_length=3, steps=3, disable_tqdm=True)
    lm = HeadAttrLM(model=model, **settings)
    lm.set_keep_mask(KEEP)
    req = [Instance("generate_until", {}, ("w1 w2 w3", {}), 0)]
    out = lm.generate_until(req)
    assert model.calls[0][0] == {"max_new_tokens": 3, "steps": 3, "temperature": 0.0, "alg": "entropy",
                                 "output_history": False, "return_dict_in_generate": True}  # fmt: skip
    assert out == HeadAttrLM(model=zeroed, **settings).generate_until(req)
    torch.testing.assert_close(model.calls[0][1], zeroed.calls[0][1], rtol=0, atol=1e-5)
    lm.set_keep_mask(None)
    lm.generate_until(req)
    assert (model.calls[1][1] - model.calls[0][1]).abs().max() > 1e-3  # the gates were on in the first call
    HeadAttrLM(model=model, dream_generate="false", **settings).generate_until(req)
    assert len(model.calls) == 2  # the sampler ran instead
    with pytest.raises(ConfigError, match="dream_generate"):
        HeadAttrLM(model=dream_standin(), dream_generate="true", **settings).generate_until(req)


@pytest.mark.parametrize("objective", ["causal", "diffusion"])
def test_rolling_loglikelihood_of_a_one_window_text_is_its_loglikelihood_after_the_prefix(objective):
    model, tok = (tiny_gpt2(), plain_tokenizer()) if objective == "causal" else (tiny_bert(), make_tokenizer())
    lm = HeadAttrLM(model=model, tokenizer=tok, mc_num=8, disable_tqdm=True)
    text = "w5 w6 w7 w8"
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    ids = lm.tok_encode(text, add_special_tokens=False)
    direct = lm._loglikelihood_tokens([(None, [lm.prefix_token_id], ids)])[0][0]
    assert rolling == pytest.approx(direct, abs=1e-9)  # (several windows: see the comparison with lm-eval's hf)


def _count_rows(model):
    """A list that gets the batch size of every forward call of ``model``, and the hook handle."""
    rows = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append((args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True
    )
    return rows, handle


@pytest.mark.parametrize("build", [tiny_gpt2, lambda: tiny_llama("llama")], ids=["gpt2", "llama"])
def test_choices_after_one_context_share_a_row_and_equal_hf(build):
    from lm_eval.models.huggingface import HFLM

    model, tok = build(), plain_tokenizer()
    rng = np.random.default_rng(4)
    reqs = []
    for q in range(3):  # multiple choice: one context, four one-token choices (one input: the context itself)
        context = " ".join(rng.choice(WORDS, 5 + 3 * q))
        reqs += [Instance("loglikelihood", {}, (context, f" {w}"), len(reqs)) for w in ("w1", "w2", "w3", "w4")]
    reqs += ll_requests(5, seed=2)[:5]  # distinct inputs of various lengths in the same padded passes
    ref = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=4).loglikelihood(reqs)
    rows, handle = _count_rows(model)
    ours = HeadAttrLM(model=model, tokenizer=tok, batch_size=4, disable_tqdm=True).loglikelihood(reqs)
    handle.remove()
    assert rows == [4, 4]  # 3 + 5 distinct inputs of 17 requests: padded passes of batch_size distinct rows
    assert [g for _, g in ours] == [g for _, g in ref]
    np.testing.assert_allclose([lp for lp, _ in ours], [lp for lp, _ in ref], rtol=0, atol=1e-5)


def test_causal_prompts_of_different_lengths_generate_in_one_left_padded_batch():
    model, tok = tiny_gpt2(), plain_tokenizer()
    contexts = ["w3 w4 w5 w11 w12", "w6 w7", "w9 w10 w2"]
    expected = [greedy_continuation(model, tok, c, 5).strip() for c in contexts]  # each alone, unpadded
    lm = HeadAttrLM(model=model, tokenizer=tok, batch_size=3, disable_tqdm=True)
    calls = []
    generate = model.generate
    model.generate = lambda ids, **kw: calls.append(kw["attention_mask"].tolist()) or generate(ids, **kw)
    out = lm.generate_until(
        [Instance("generate_until", {}, (c, {"max_gen_toks": 5}), i) for i, c in enumerate(contexts)]
    )
    del model.generate
    assert out == expected
    assert calls == [[[1] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]]  # longest first, padding masked


def test_unique_rows_scores_repeated_rows_from_one_forward_row():
    from headattr.engine.gate_engine import GateEngine

    model, tok = tiny_bert(), make_tokenizer()
    reqs = [Instance("loglikelihood", {}, ("w1 w2 w3", " w4"), 0)]  # one masked token: every MC row is the same
    plain = HeadAttrLM(model=model, tokenizer=tok, mc_num=8, batch_size=8, disable_tqdm=True)
    plain.engine = GateEngine(plain.adapter, rows_per_pass=8, prefix_cache=False)  # without unique_rows
    rows, handle = _count_rows(model)
    ref = plain.loglikelihood(reqs)
    n_plain = list(rows)
    ours = HeadAttrLM(model=model, tokenizer=tok, mc_num=8, batch_size=8, disable_tqdm=True).loglikelihood(reqs)
    handle.remove()
    assert n_plain == [8] and rows[1:] == [1]
    assert ours[0][0] == pytest.approx(ref[0][0], abs=1e-6)
