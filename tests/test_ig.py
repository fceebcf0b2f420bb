"""IG over gates: exactness on closed-form functions, completeness on a model, equality with a plain loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILY_BUILDERS, N_HEADS, N_LAYERS, FunctionEngine, ToyScored, random_ids, tiny_bert

from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.errors import NonFiniteError
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths
from headattr.methods.quadrature import RULES
from headattr.models.adapters import Adapter
from headattr.models.gates import gated
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks

PROBS = [0.15, 0.5, 0.9]


COEF = torch.linspace(-1, 1, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["per_layer", "joint"])
def test_exact_for_linear_functions_of_the_gates(rule, mode):
    engine = FunctionEngine(lambda g: (g * COEF).sum((-2, -1)))
    res = integrated_gradients(engine, ToyScored(), make_paths(mode, N_LAYERS, N_HEADS, 0.25), rule, 3)
    expected = (COEF * 0.75).numpy()[None] * np.array([1, 2])[:, None, None]
    np.testing.assert_allclose(res.ig, expected, atol=1e-6)
    np.testing.assert_allclose(res.gap, 0, atol=1e-6)


def test_quadratic_joint_ig_has_closed_form():
    """L = sum c g^2 on the joint path from 0: IG_i = c_i (exact with Gauss-Legendre, 2 nodes)."""
    engine = FunctionEngine(lambda g: (COEF * g**2).sum((-2, -1)))
    res = integrated_gradients(engine, ToyScored(), make_paths("joint", N_LAYERS, N_HEADS), "gauss_legendre", 2)
    np.testing.assert_allclose(res.ig[0], COEF.numpy(), atol=1e-6)
    right = integrated_gradients(engine, ToyScored(), make_paths("joint", N_LAYERS, N_HEADS), "riemann_right", 4)
    np.testing.assert_allclose(right.ig[0], COEF.numpy() * 2 * (1 + 2 + 3 + 4) / 16, atol=1e-6)


def test_layered_path_multiplies_by_path_velocity():
    """Per-head product function: layered IG must still be complete (it is wrong without d alpha / dt)."""
    engine = FunctionEngine(lambda g: (COEF * g).sum((-2, -1)) + g.prod(-1).sum(-1))
    paths = make_paths("layered", N_LAYERS, N_HEADS, lambdas=[0.0, 1.0, 2.0])
    res = integrated_gradients(engine, ToyScored(), paths, "gauss_legendre", 16)  # polynomial integrand: exact
    np.testing.assert_allclose(res.gap, 0, atol=1e-6)
    res = integrated_gradients(engine, ToyScored(), make_paths("layered", N_LAYERS, N_HEADS), "gauss_legendre", 64)
    assert np.abs(res.gap).max() < 1e-5


def _sample(length=18, seed=0):
    return Sample(f"s{seed}", random_ids(length, seed), 3, length - 1, "x")


def _scored(adapter, sample, probs=PROBS, weighting="mean"):
    masks = draw_masks([sample], probs, "bernoulli", 7, adapter.shift_logits)[sample.sample_id]
    return build_scored_input(sample, masks, probs, "diffusion", weighting, 4, adapter.shift_logits)


@pytest.mark.parametrize("mode", ["per_layer", "joint"])
def test_completeness_on_a_tiny_model_gauss_legendre_32(mode):
    adapter = Adapter(tiny_bert(init=0.2))
    engine = GateEngine(adapter, rows_per_pass=64)
    res = integrated_gradients(
        engine, _scored(adapter, _sample()), make_paths(mode, N_LAYERS, N_HEADS), "gauss_legendre", 32
    )
    delta = res.loss_full[:, None] - res.loss_base
    assert np.abs(delta).min() > 1e-3, "heads must matter for the check to mean anything"
    assert np.abs(res.gap / delta).max() < 1e-3


def reference_ig(model, adapter, scored, mode, rule, steps):
    """A plain loop: one mask probability, one path, one step at a time, full logits, shared gates."""
    from headattr.methods.quadrature import nodes_and_weights

    t_nodes, weights = nodes_and_weights(rule, steps)
    paths = range(N_LAYERS) if mode == "per_layer" else [None]
    ig = np.zeros((scored.n_p, N_LAYERS, N_HEADS))
    for p in range(scored.n_p):
        ids = scored.input_ids[p : p + 1]
        for layer in paths:
            for t, w in zip(t_nodes, weights, strict=True):
                gates = torch.ones(N_LAYERS, N_HEADS, dtype=torch.float32)
                if layer is None:
                    gates[:] = float(t)
                else:
                    gates[layer] = float(t)
                gates.requires_grad_(True)
                with gated(adapter, gates):
                    out = model(input_ids=ids)
                    logits = (out.logits if hasattr(out, "logits") else out[0])[0]
                    if adapter.shift_logits:
                        logits = torch.cat([logits[:1], logits[:-1]], 0)
                    pos = scored.pred_pos[p] + int(adapter.shift_logits)
                    ce = F.cross_entropy(logits[pos].double(), scored.targets[p], reduction="sum")
                    loss = ce * scored.token_weight[p]
                (grad,) = torch.autograd.grad(loss, gates)
                if layer is None:
                    ig[p] += w * grad.double().numpy()
                else:
                    ig[p, layer] += w * grad[layer].double().numpy()
    return ig


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "llada", "dream"])
@pytest.mark.parametrize("mode", ["per_layer", "joint"])
def test_batched_chunked_ig_equals_plain_loop(family, mode):
    model = FAMILY_BUILDERS[family]().double()
    adapter = Adapter(model, mask_token_id=4)
    scored = _scored(adapter, _sample(16, seed=3), weighting="inverse_p")
    engine = GateEngine(adapter, rows_per_pass=5)
    res = integrated_gradients(engine, scored, make_paths(mode, N_LAYERS, N_HEADS), "riemann_right", 4)
    engine.close()
    ref = reference_ig(model, adapter, scored, mode, "riemann_right", 4)
    assert np.abs(ref).max() > 1e-4
    np.testing.assert_allclose(res.ig, ref, atol=1e-6, rtol=0)


def test_chunk_size_does_not_change_results():
    adapter = Adapter(tiny_bert())
    scored = _scored(adapter, _sample())
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    results = []
    for rows in (1, 7, 1000):
        engine = GateEngine(adapter, rows_per_pass=rows)
        results.append(integrated_gradients(engine, scored, paths, "trapezoid", 3))
        engine.close()
    for other in results[1:]:
        np.testing.assert_allclose(other.ig, results[0].ig, atol=1e-6)
        np.testing.assert_allclose(other.loss_base, results[0].loss_base, atol=1e-6)


def test_model_parameters_never_require_grad():
    model = tiny_bert()
    engine = GateEngine(Adapter(model))
    integrated_gradients(
        engine, _scored(engine.adapter, _sample()), make_paths("joint", N_LAYERS, N_HEADS), "riemann_right", 2
    )
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_nan_loss_names_sample_p_and_step():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[0, 0] = float("nan")
    engine = GateEngine(Adapter(model), rows_per_pass=4)
    scored = _scored(engine.adapter, _sample())
    with pytest.raises(NonFiniteError, match=r"sample 's0', p=0.15, all gates on"):
        integrated_gradients(engine, scored, make_paths("per_layer", N_LAYERS, N_HEADS), "riemann_right", 2)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_nan_on_a_path_names_the_path_and_step(prefix_cache):
    """Loss becomes NaN only when layer 1's gates are partly closed: the error names path L1 and its step."""
    model = tiny_bert()
    engine = GateEngine(Adapter(model), rows_per_pass=4, prefix_cache=prefix_cache)

    def poison(module, args, out):
        gates = engine._gates.gates
        if gates is not None and gates.ndim == 3 and bool((gates[:, 1] < 1).any()):
            return out * float("nan")
        return out

    model.cls.register_forward_hook(poison)
    scored = _scored(engine.adapter, _sample())
    with pytest.raises(NonFiniteError, match=r"sample 's0', p=0.15, path L1, step 1/2 \(t=0.5000\)"):
        integrated_gradients(engine, scored, make_paths("per_layer", N_LAYERS, N_HEADS), "riemann_right", 2)


def test_vocab_logits_only_at_scored_positions():
    model = tiny_bert()
    seen = []
    model.cls.predictions.decoder.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    engine = GateEngine(Adapter(model), rows_per_pass=100)
    scored = _scored(engine.adapter, _sample())
    engine.losses(scored, torch.arange(3), torch.ones(3, N_LAYERS, N_HEADS))
    assert seen == [(1, sum(scored.n_scored), model.config.vocab_size)]


def test_without_start_losses_ig_is_unchanged_and_the_gap_is_nan():
    from test_prefix import _scored

    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter)
    engine = GateEngine(adapter, rows_per_pass=4)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    try:
        full = integrated_gradients(engine, scored, paths, "riemann_right", 3)
        lean = integrated_gradients(engine, scored, paths, "riemann_right", 3, start_losses=False)
    finally:
        engine.close()
    np.testing.assert_array_equal(lean.ig, full.ig)
    np.testing.assert_array_equal(lean.loss_full, full.loss_full)
    assert np.isnan(lean.loss_base).all() and np.isnan(lean.gap).all()
    assert np.abs(full.gap).max() < np.abs(full.loss_full[:, None] - full.loss_base).max()
