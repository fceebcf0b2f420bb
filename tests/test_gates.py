"""Head gates on every adapter family: all-on is exact, a closed gate equals zeroed weight columns."""

import pytest
import torch
from helpers import FAMILY_BUILDERS, N_HEADS, N_LAYERS, random_ids, tiny_bert

from headattr.errors import ConfigError
from headattr.models.adapters import Adapter
from headattr.models.gates import gated, ones_gates


def _logits(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.fixture(params=sorted(FAMILY_BUILDERS))
def family(request):
    return request.param


def test_adapter_finds_heads(family):
    adapter = Adapter(FAMILY_BUILDERS[family]())
    assert (adapter.n_layers, adapter.n_heads, adapter.head_dim) == (N_LAYERS, N_HEADS, 8)
    expected = {"roberta": "bert", "qwen2": "llama", "mistral": "llama"}.get(family, family)
    assert adapter.family == expected
    assert adapter.head_module is not None


def test_all_on_gates_reproduce_ungated_logits_exactly(family):
    model = FAMILY_BUILDERS[family]()
    adapter = Adapter(model)
    ids = torch.as_tensor(random_ids(12))[None].repeat(2, 1)
    with torch.no_grad():
        ref = _logits(model, ids)
        with gated(adapter, ones_gates(adapter, rows=2)):
            out = _logits(model, ids)
    assert torch.equal(ref, out)


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (2, 1)])
def test_closed_gate_equals_zeroed_output_projection_columns(family, layer, head):
    model = FAMILY_BUILDERS[family]()
    adapter = Adapter(model)
    ids = torch.as_tensor(random_ids(12, seed=1))[None]
    gates = ones_gates(adapter)
    gates[layer, head] = 0
    with torch.no_grad():
        with gated(adapter, gates):
            out = _logits(model, ids)
        reference = FAMILY_BUILDERS[family]()
        Adapter(reference).zero_head_weights(layer, head)
        ref = _logits(reference, ids)
        untouched = _logits(FAMILY_BUILDERS[family](), ids)
    assert (ref - untouched).abs().max() > 1e-4, "the head must matter for this test to mean anything"
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_per_row_gates_act_on_their_own_row_only():
    model = tiny_bert()
    adapter = Adapter(model)
    ids = torch.as_tensor(random_ids(10))[None].repeat(3, 1)
    gates = ones_gates(adapter, rows=3)
    gates[1, 0, :] = 0.25
    gates[2, 2, 1] = 0.0
    with torch.no_grad(), gated(adapter, gates):
        batched = _logits(model, ids)
    for row in range(3):
        with torch.no_grad(), gated(adapter, gates[row]):
            single = _logits(model, ids[:1])
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=1e-5)


def test_bert_gate_matches_transformers_head_mask_under_eager_attention():
    """BERT's head_mask scales attention probabilities: for one head that equals scaling its z slice."""
    model = tiny_bert(attn="eager")
    adapter = Adapter(model)
    ids = torch.as_tensor(random_ids(10))[None]
    mask = torch.ones(N_LAYERS, N_HEADS)
    mask[1, 2], mask[0, 0], mask[2, 3] = 0.3, 0.0, 1.7
    with torch.no_grad():
        ref = model(input_ids=ids, head_mask=mask).logits
        with gated(adapter, mask):
            out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gates_are_removed_on_exit():
    model = tiny_bert()
    adapter = Adapter(model)
    ids = torch.as_tensor(random_ids(10))[None]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with gated(adapter, torch.zeros(N_LAYERS, N_HEADS)):
            pass
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_unknown_architecture_names_the_adapter_option():
    model = tiny_bert()
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="model.adapter"):
        Adapter(model)
    assert Adapter(model, family="bert").n_layers == N_LAYERS
    with pytest.raises(ConfigError, match="model.adapter"):
        Adapter(model, family="nonsense")
    with pytest.raises(ConfigError, match="model.adapter"):
        Adapter(model, family="gpt2")


def test_dream_padding_uses_4d_mask_and_position_ids():
    adapter = Adapter(FAMILY_BUILDERS["dream"]())
    ids = torch.as_tensor(random_ids(6))[None].repeat(2, 1)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    kwargs = adapter.model_inputs(ids, attn)
    assert kwargs["attention_mask"].shape == (2, 1, 6, 6) and kwargs["attention_mask"].dtype == torch.bool
    assert kwargs["position_ids"][1].tolist() == [0, 0, 0, 1, 2, 3]
    assert not kwargs["attention_mask"][1, 0, 3, 0] and kwargs["attention_mask"][1, 0, 3, 4]
    # a left-padded row scores its real tokens exactly like the unpadded sequence
    model = adapter.model
    with torch.no_grad():
        padded = model(**kwargs)[0][1, 2:]
        plain = model(input_ids=ids[1:, 2:])[0][0]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)
    assert "attention_mask" not in adapter.model_inputs(ids, torch.ones(2, 6))


def test_llada_refuses_padding_because_the_model_ignores_it():
    adapter = Adapter(FAMILY_BUILDERS["llada"]())
    ids = torch.as_tensor(random_ids(6))[None]
    with pytest.raises(ValueError, match="ignores attention_mask"):
        adapter.model_inputs(ids, torch.tensor([[0, 1, 1, 1, 1, 1]]))
    assert adapter.mask_token_id == 126336 and not adapter.shift_logits
    assert Adapter(FAMILY_BUILDERS["dream"]()).mask_token_id == 151666
