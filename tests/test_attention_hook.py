"""The attention hook: per-head probabilities from inside each family's attention call, eager or SDPA."""

import numpy as np
import pytest
import torch
from helpers import dream_standin, llada_standin, random_ids, tiny_bert, tiny_distilbert, tiny_gpt2, tiny_llama

from headattr.models.adapters import Adapter
from headattr.models.attention import AttentionHookError, attention_kernels, attention_probabilities


def _ids(n=11, rows=2):
    return torch.as_tensor(random_ids(n, 3))[None].repeat(rows, 1)


def _eager(model):
    model.config._attn_implementation = "eager"
    return model


def _output_attentions(model, ids):
    with torch.no_grad():
        return _eager(model)(input_ids=ids, output_attentions=True).attentions


@pytest.mark.parametrize("build", [lambda: tiny_bert(attn="eager"), lambda: _eager(tiny_llama())])
def test_hook_equals_output_attentions_on_eager_models(build):
    model = build()
    ids = _ids()
    probs = attention_probabilities(Adapter(model, mask_token_id=4), ids)
    for layer, reference in enumerate(_output_attentions(model, ids)):
        torch.testing.assert_close(probs[layer], reference.float(), rtol=0, atol=0)


@pytest.mark.parametrize("build", [lambda: tiny_bert(attn="sdpa"), tiny_llama, tiny_gpt2, tiny_distilbert])
def test_hook_computes_them_from_q_and_k_under_sdpa(build):
    model = build()  # tiny_llama has GQA (2 kv heads for 4 query heads); GPT-2 is causal
    ids = _ids()
    probs = attention_probabilities(Adapter(model, mask_token_id=4), ids)
    for layer, reference in enumerate(_output_attentions(build(), ids)):
        torch.testing.assert_close(probs[layer], reference.float(), rtol=1e-5, atol=1e-6)


def test_stand_ins_give_softmax_of_their_own_q_and_k():
    """LLaDA (no output_attentions) and Dream: softmax(q k^T / sqrt(d)) from the layer weights, written here."""
    ids = _ids()
    for model in (llada_standin(), dream_standin()):
        adapter = Adapter(model, mask_token_id=4)
        probs = attention_probabilities(adapter, ids)
        hidden: list[torch.Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda m, a, out=hidden: out.append(a[0])) for layer in adapter.layers]
        with torch.no_grad():
            model(input_ids=ids)
        for h in hooks:
            h.remove()
        for layer, x in enumerate(hidden):
            block = adapter.layers[layer]
            if adapter.family == "llada":
                x, owner = block.norm1(x), block
            else:
                owner = block.self_attn
            q, k = (p(x).view(2, ids.shape[1], 4, -1).transpose(1, 2) for p in (owner.q_proj, owner.k_proj))
            reference = torch.softmax(q @ k.transpose(-2, -1) / np.sqrt(q.shape[-1]), dim=-1)
            torch.testing.assert_close(probs[layer], reference, rtol=1e-5, atol=1e-6)


def test_outputs_are_unchanged_and_unwatched_layers_untouched():
    model = tiny_llama()
    ids = _ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        probs = attention_probabilities(Adapter(model, mask_token_id=4), ids, layers=[1])
        after = model(input_ids=ids).logits
    assert list(probs) == [1]
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert torch.nn.functional.scaled_dot_product_attention.__module__.startswith("torch")  # restored


def test_an_adapter_without_an_attention_callable_fails_loudly():
    adapter = Adapter(tiny_bert(), mask_token_id=4)
    object.__setattr__(adapter, "spec", type(adapter.spec)(**{**adapter.spec.__dict__, "attention": "no.such"}))
    with pytest.raises(AttentionHookError, match="names no attention callable on layers"):
        with attention_kernels(adapter, lambda i, call: call.run()):
            pass
