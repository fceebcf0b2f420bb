"""Activation checkpointing of the gated passes: same gate gradients, layers really recomputed, model restored."""

import numpy as np
import pytest
import torch
from helpers import N_HEADS, N_LAYERS, dream_standin, llada_standin, random_ids, tiny_llama

from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths
from headattr.models.adapters import Adapter
from headattr.models.checkpointing import checkpointed_layers
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks

PROBS = [0.3, 0.7]
BUILDERS = {"llada": llada_standin, "dream": dream_standin, "llama": lambda: tiny_llama("llama")}


def _scored(adapter, length=12):
    sample = Sample("s", random_ids(length, 3), 2, length - 1, "x")
    masks = draw_masks([sample], PROBS, "bernoulli", 5, adapter.shift_logits)[sample.sample_id]
    return build_scored_input(sample, masks, PROBS, "diffusion", "mean", 4, adapter.shift_logits)


def _gates(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, N_LAYERS, N_HEADS, generator=torch.Generator().manual_seed(seed))


def _out_proj_calls(adapter) -> list[int]:
    calls = [0] * adapter.n_layers
    for i, proj in enumerate(adapter.out_projs):
        proj.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_checkpointed_layers():
    assert checkpointed_layers(5, "none") == []
    assert checkpointed_layers(5, "whole_layer") == [0, 1, 2, 3, 4]
    assert checkpointed_layers(5, "every_k", 2) == [0, 2, 4]
    assert checkpointed_layers(7, "every_k", 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="checkpoint_every"):
        checkpointed_layers(4, "every_k", 0)
    with pytest.raises(ValueError, match="not one of"):
        checkpointed_layers(4, "one_in_two")


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize(("mode", "every"), [("whole_layer", 1), ("every_k", 2)])
def test_gate_gradients_equal_with_and_without(family, mode, every):
    """dL/dgates of random gate rows (from layer 0 and, prefix-cached with attention replay, from layer 1) are
    the same with checkpointing, and the checkpointed layers' attention output projections ran twice (forward
    and recomputation) where the plain engine ran them once."""
    adapter = Adapter(BUILDERS[family]())
    scored = _scored(adapter)
    gates = _gates(4)
    gates[2:, 0] = 1.0  # rows 2, 3 start at layer 1
    start = torch.tensor([0, 0, 1, 1])
    row_p = torch.tensor([0, 1, 0, 1])
    results, calls = {}, {}
    for name, kwargs in {"plain": {}, "ckpt": {"activation_checkpointing": mode, "checkpoint_every": every}}.items():
        engine = GateEngine(adapter, rows_per_pass=4, **kwargs)
        engine.prepare_prefix(scored)
        counter = _out_proj_calls(adapter)
        results[name] = engine.gradients(scored, row_p, gates, from_layer=start)
        calls[name] = list(counter)
        engine.close()
        for proj in adapter.out_projs:
            proj._forward_pre_hooks.clear()
    (loss_a, grad_a), (loss_b, grad_b) = results["plain"], results["ckpt"]
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=1e-6)
    # the first group (start 0) runs every layer; the second (start 1) replays layer 1's attention, so its
    # projection runs there once (from the cached z) and again in the recomputation when layer 1 is checkpointed
    ckpt = set(checkpointed_layers(N_LAYERS, mode, every))
    assert calls["ckpt"] == [c * (2 if i in ckpt else 1) for i, c in enumerate(calls["plain"])]
    assert not any("forward" in vars(layer) for layer in adapter.layers)


def test_ig_equal_with_whole_layer_checkpointing():
    """Per-layer IG (prefix cache, attention replay) of the LLaDA stand-in: same attributions bit for bit."""
    adapter = Adapter(llada_standin())
    scored = _scored(adapter)
    out = {}
    for mode in ("none", "whole_layer"):
        engine = GateEngine(adapter, rows_per_pass=5, activation_checkpointing=mode)
        out[mode] = integrated_gradients(
            engine, scored, make_paths("per_layer", N_LAYERS, N_HEADS), "gauss_legendre", 4
        )
        engine.close()
    np.testing.assert_allclose(out["whole_layer"].ig, out["none"].ig, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["whole_layer"].loss_full, out["none"].loss_full)


def test_workflow_setting_reaches_the_engine_and_not_the_keys():
    """model.activation_checkpointing builds a checkpointing engine; it changes no result, so no artifact key."""
    from headattr.engine.gate_engine import engine_for
    from headattr.pipeline.keys import model_slice

    adapter = Adapter(tiny_llama(), mask_token_id=4)
    settings = {"rows_per_pass": 2, "memory_budget_gib": None}
    engine = engine_for(adapter, {"activation_checkpointing": "every_k", "checkpoint_every": 2}, settings)
    assert engine._checkpointed == [0, 2] and engine.activation_checkpointing == "every_k"
    engine.close()
    model = {"path": "m", "adapter": None, "dtype": "float32", "mask_token_id": None, "attn_implementation": None}
    assert model_slice({"model": {**model, "activation_checkpointing": "whole_layer", "checkpoint_every": 3}}) == (
        model_slice({"model": model})
    )
