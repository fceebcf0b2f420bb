"""Shapley sampling, first-order and leave-one-out: closed forms, enumeration, hand computations, plain loops."""

from itertools import combinations
from math import factorial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILY_BUILDERS, N_HEADS, N_LAYERS, FunctionEngine, ToyScored, random_ids, tiny_bert

from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError
from headattr.methods.ablation import leave_one_out
from headattr.methods.first_order import first_order
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths
from headattr.methods.shapley import (
    antithetic_permutations,
    game_endpoints,
    make_games,
    marginal_contributions,
    shapley_values,
)
from headattr.models.adapters import Adapter
from headattr.models.gates import gated
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks


def interacting(g):
    """Four heads as [2, 2] with pairwise and triple interactions."""
    x = g.flatten(-2)
    return (
        x[..., 0] * x[..., 1]
        + x[..., 2] ** 2
        + 0.5 * x[..., 0] * x[..., 1] * x[..., 3]
        - 0.7 * x[..., 1]
        + (0.3 * x[..., 2] * x[..., 3] + 0.2 * x[..., 0] * x[..., 2])
    )


def six_heads(g):
    """Six heads as [2, 3], strongly non-additive."""
    x = g.flatten(-2)
    return (x[..., :3].prod(-1) - x[..., 3:].prod(-1)) * 2 + x[..., 0] * x[..., 5] + 0.1 * x.sum(-1)


def enumerate_shapley(fn, base, players):
    """Shapley values of the game v(S) = fn(base with S on) by the subset formula."""
    shape, n, cache = base.shape, len(players), {}

    def v(subset):
        key = frozenset(subset)
        if key not in cache:
            g = base.clone().flatten()
            g[[players[j] for j in subset]] = 1.0
            cache[key] = float(fn(g.reshape(1, *shape).double()))
        return cache[key]

    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            for subset in combinations(others, r):
                phi[i] += factorial(r) * factorial(n - r - 1) / factorial(n) * (v((*subset, i)) - v(subset))
    return phi


def enumerated_heads(fn, scope, n_layers, n_heads):
    """[L, H] Shapley values by enumeration, one game per layer or one over all heads."""
    games = make_games(scope, n_layers, n_heads)
    out = np.zeros(n_layers * n_heads)
    for q in range(games.n_games):
        players = games.players[q].tolist()
        out[players] = enumerate_shapley(fn, games.base[q], players)
    return out.reshape(n_layers, n_heads)


@pytest.mark.parametrize("scope", ["all", "per_layer"])
def test_exact_mode_equals_enumeration(scope):
    engine = FunctionEngine(interacting, 2, 2)
    res = shapley_values(engine, ToyScored(), scope, exact=True)
    expected = enumerated_heads(interacting, scope, 2, 2)
    np.testing.assert_allclose(res.ig, expected[None] * np.array([1, 2])[:, None, None], atol=1e-6)
    assert np.abs(res.gap).max() < 1e-12
    assert res.extras["efficiency_gap"].max() < 1e-12


def test_sampled_values_agree_with_enumeration_within_their_standard_error():
    engine = FunctionEngine(interacting, 2, 2)
    res = shapley_values(engine, ToyScored(), "all", n_permutations=400)
    expected = enumerated_heads(interacting, "all", 2, 2)[None] * np.array([1, 2])[:, None, None]
    assert res.extras["se"].max() > 0
    assert (np.abs(res.ig - expected) < 4 * res.extras["se"] + 1e-9).all()
    assert np.abs(res.ig - expected).max() < 0.03


def test_linear_function_is_exact_from_any_permutations_and_stops_at_the_minimum():
    coef = torch.linspace(-1, 1, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)
    engine = FunctionEngine(lambda g: (g * coef).sum((-2, -1)), N_LAYERS, N_HEADS)
    for scope in ("all", "per_layer"):
        res = shapley_values(engine, ToyScored(), scope, n_permutations=4, max_permutations=64, tol=1e-9)
        np.testing.assert_allclose(res.ig, coef.numpy()[None] * np.array([1, 2])[:, None, None], atol=1e-6)
        assert int(res.extras["n_permutations"]) == 4
        assert res.extras["se"].max() < 1e-9
    one_layer = shapley_values(engine, ToyScored(), "per_layer", n_permutations=2, layers=[1])
    assert one_layer.loss_base.shape == (2, 1) and np.all(one_layer.ig[:, [0, 2]] == 0)
    np.testing.assert_allclose(one_layer.ig[:, 1], coef[1].numpy()[None] * np.array([[1], [2]]), atol=1e-6)


def test_every_permutation_is_efficient_and_paired_with_its_reverse():
    engine = FunctionEngine(six_heads, 2, 3)
    for scope in ("all", "per_layer"):
        games = make_games(scope, 2, 3)
        perms = torch.stack(
            [antithetic_permutations(3, "toy", key, 0, 5, games.n_players) for key in games.keys]
        )  # [Q, 10, N]
        assert torch.equal(perms[:, 1::2], perms[:, 0::2].flip(-1))
        full, base = game_endpoints(engine, ToyScored(), games)
        contrib = marginal_contributions(engine, ToyScored(), games, perms, full, base)
        target = (full[:, None] - base)[:, :, None].expand(-1, -1, perms.shape[1])
        np.testing.assert_allclose(contrib.sum(-1), target, atol=1e-6)
        assert contrib.abs().min() < contrib.abs().max()  # permutations disagree: the function is non-additive
        res = shapley_values(engine, ToyScored(), scope, n_permutations=6)
        assert res.extras["efficiency_gap"].max() < 1e-6
        assert np.abs(res.gap).max() < 1e-6


def test_standard_error_shrinks_with_more_permutations():
    engine = FunctionEngine(six_heads, 2, 3)
    few = shapley_values(engine, ToyScored(), "all", n_permutations=4)
    many = shapley_values(engine, ToyScored(), "all", n_permutations=64)
    assert np.isfinite(few.extras["se"]).all() and few.extras["se"].max() > 0
    assert many.extras["se"].mean() < 0.5 * few.extras["se"].mean()
    assert many.extras["se"].max() < few.extras["se"].max()


def test_rounds_and_adaptive_stopping():
    engine = FunctionEngine(six_heads, 2, 3)
    one_round = shapley_values(engine, ToyScored(), "all", n_permutations=32, seed=5)
    engine.calls.clear()
    rounds = shapley_values(engine, ToyScored(), "all", n_permutations=8, max_permutations=32, seed=5)
    assert len(engine.calls) == 1 + 4  # endpoints, then four rounds of 8 permutations
    np.testing.assert_array_equal(rounds.ig, one_round.ig)
    np.testing.assert_array_equal(rounds.extras["se"], one_round.extras["se"])
    tol = float(one_round.extras["se"].max()) * 1.2
    adaptive = shapley_values(engine, ToyScored(), "all", n_permutations=8, max_permutations=512, tol=tol, seed=5)
    assert 8 < int(adaptive.extras["n_permutations"]) < 512
    assert adaptive.extras["se"].max() < tol
    other = shapley_values(engine, type("Other", (ToyScored,), {"sample_id": "other"})(), "all", n_permutations=32)
    assert not np.array_equal(other.ig, one_round.ig)


def test_bad_settings_name_the_key():
    engine = FunctionEngine(six_heads, 2, 3)
    with pytest.raises(ConfigError, match="n_permutations"):
        shapley_values(engine, ToyScored(), n_permutations=3)
    with pytest.raises(ConfigError, match="max_permutations"):
        shapley_values(engine, ToyScored(), n_permutations=8, max_permutations=4)
    with pytest.raises(ConfigError, match="scope"):
        shapley_values(engine, ToyScored(), scope="pairs")


def _sample(length=16, seed=0):
    return Sample(f"s{seed}", random_ids(length, seed), 3, length - 1, "x")


def _scored(adapter, sample, probs=(0.3, 0.7), weighting="mean"):
    masks = draw_masks([sample], list(probs), "bernoulli", 7, adapter.shift_logits)[sample.sample_id]
    return build_scored_input(sample, masks, list(probs), "diffusion", weighting, 4, adapter.shift_logits)


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert().double()
    adapter = Adapter(model, mask_token_id=4)
    engine = GateEngine(adapter, rows_per_pass=64)
    yield model, adapter, engine, _scored(adapter, _sample())
    engine.close()


def test_shapley_on_a_tiny_model_is_efficient_and_exact_per_layer(bert):
    _, _, engine, scored = bert
    res = shapley_values(engine, scored, "all", n_permutations=4)
    assert res.loss_base.shape == (2, 1) and res.ig.shape == (2, N_LAYERS, N_HEADS)
    assert res.extras["efficiency_gap"].max() < 1e-5 and np.abs(res.gap).max() < 1e-5
    exact = shapley_values(engine, scored, "per_layer", exact=True)
    assert exact.loss_base.shape == (2, N_LAYERS)
    assert exact.extras["efficiency_gap"].max() < 1e-5 and np.abs(exact.gap).max() < 1e-5

    def fn(g):
        return engine.losses(scored, torch.tensor([p]), g.float())

    for p in range(scored.n_p):
        expected = enumerated_heads(fn, "per_layer", N_LAYERS, N_HEADS)
        np.testing.assert_allclose(exact.ig[p], expected, atol=1e-6)
    assert np.abs(exact.ig).max() > 1e-3


def test_first_order_is_the_ig_integrand_at_all_on(bert):
    _, _, engine, scored = bert
    res = first_order(engine, scored)
    losses, grads = engine.gradients(scored, torch.arange(scored.n_p), torch.ones(scored.n_p, N_LAYERS, N_HEADS))
    np.testing.assert_array_equal(res.ig, grads.numpy())
    np.testing.assert_allclose(res.loss_full, losses.numpy())
    one_step = integrated_gradients(engine, scored, make_paths("joint", N_LAYERS, N_HEADS), "riemann_right", 1)
    np.testing.assert_allclose(res.ig, one_step.ig, atol=1e-7)
    np.testing.assert_allclose(res.loss_base[:, 0], res.loss_full)
    np.testing.assert_allclose(res.gap[:, 0], res.ig.sum((1, 2)), atol=1e-6)
    np.testing.assert_allclose(res.extras["abs"], np.abs(res.ig))


def gradient_times_activation(model, adapter, scored, p):
    """[L, H]: z . dL/dz summed over each head's slice and all positions, z = input of the output projection."""
    zs, probes = [], []

    def capture(module, args):
        probe = torch.zeros_like(args[0], requires_grad=True)  # dL/dprobe = dL/dz, every later layer connected
        zs.append(args[0].detach())
        probes.append(probe)
        return (args[0] + probe, *args[1:])

    handles = [proj.register_forward_pre_hook(capture) for proj in adapter.out_projs]
    try:
        logits = model(input_ids=scored.input_ids[p : p + 1]).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    loss = F.cross_entropy(logits[scored.pred_pos[p]], scored.targets[p], reduction="sum") * scored.token_weight[p]
    dz = torch.autograd.grad(loss, probes)
    return torch.stack(
        [(z * d).reshape(-1, N_HEADS, adapter.head_dim).sum((0, 2)) for z, d in zip(zs, dz, strict=True)]
    )


def test_first_order_equals_gradient_times_activation(bert):
    model, adapter, engine, scored = bert
    res = first_order(engine, scored)
    for p in range(scored.n_p):
        by_hand = gradient_times_activation(model, adapter, scored, p)
        np.testing.assert_allclose(res.ig[p], by_hand.numpy(), rtol=1e-5, atol=1e-7)


def test_first_order_layer_normalisation(bert):
    _, _, engine, scored = bert
    res = first_order(engine, scored, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(res.extras["abs"], axis=-1), 1.0, atol=1e-6)
    raw = np.abs(res.ig)
    np.testing.assert_allclose(res.extras["abs"], raw / np.linalg.norm(raw, axis=-1, keepdims=True), rtol=1e-5)
    gates = torch.ones(N_LAYERS, N_HEADS)
    gates[1, 2] = 0.0
    at = first_order(engine, scored, gates=gates)
    _, grads = engine.gradients(scored, torch.arange(scored.n_p), gates[None].expand(scored.n_p, -1, -1))
    np.testing.assert_array_equal(at.ig, grads.numpy())


def _loss_of(model, adapter, scored, p, gates):
    """One row, full logits, shared gates: the plain loss of mask probability ``p``."""
    with torch.no_grad(), gated(adapter, gates):
        out = model(input_ids=scored.input_ids[p : p + 1])
    logits = (out.logits if hasattr(out, "logits") else out[0])[0]
    if adapter.shift_logits:
        logits = torch.cat([logits[:1], logits[:-1]], 0)
    pos = scored.pred_pos[p] + int(adapter.shift_logits)
    return float(F.cross_entropy(logits[pos].double(), scored.targets[p], reduction="sum") * scored.token_weight[p])


@pytest.mark.parametrize("family", ["bert", "dream"])
def test_leave_one_out_equals_a_plain_loop(family):
    model = FAMILY_BUILDERS[family]().double()
    adapter = Adapter(model, mask_token_id=4)
    scored = _scored(adapter, _sample(seed=2), weighting="inverse_p")
    engine = GateEngine(adapter, rows_per_pass=7)
    res = leave_one_out(engine, scored)
    engine.close()
    for p in range(scored.n_p):
        full = _loss_of(model, adapter, scored, p, torch.ones(N_LAYERS, N_HEADS))
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                gates = torch.ones(N_LAYERS, N_HEADS)
                gates[layer, head] = 0.0
                assert res.ig[p, layer, head] == pytest.approx(
                    full - _loss_of(model, adapter, scored, p, gates), abs=1e-6
                )
            gates = torch.ones(N_LAYERS, N_HEADS)
            gates[layer] = 0.0
            assert res.loss_base[p, layer] == pytest.approx(_loss_of(model, adapter, scored, p, gates), abs=1e-9)
        assert res.loss_full[p] == pytest.approx(full, abs=1e-9)
    assert np.abs(res.ig).max() > 1e-3


def test_leave_one_out_is_one_batched_call_with_layer_references():
    coef = torch.linspace(-1, 1, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)
    engine = FunctionEngine(lambda g: (g * coef).sum((-2, -1)) + g[..., 0, 0] * g[..., 0, 1], N_LAYERS, N_HEADS)
    res = leave_one_out(engine, ToyScored())
    assert engine.calls == [2 * (1 + N_LAYERS * N_HEADS + N_LAYERS)]
    expected = coef.clone()
    expected[0, :2] += 1.0
    np.testing.assert_allclose(res.ig, expected.numpy()[None] * np.array([1, 2])[:, None, None], atol=1e-6)
    np.testing.assert_allclose(res.gap[:, 1:], 0, atol=1e-9)  # additive layers
    np.testing.assert_allclose(res.gap[:, 0], [1.0, 2.0], atol=1e-6)  # the g00 * g01 interaction


def test_prefix_caching_hints_do_not_change_results():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter, _sample(seed=4))
    results = []
    for prefix in (False, True):
        engine = GateEngine(adapter, rows_per_pass=16, prefix_cache=prefix)
        results.append((leave_one_out(engine, scored), shapley_values(engine, scored, "per_layer", n_permutations=2)))
        engine.close()
    for plain, cached in zip(*results, strict=True):
        np.testing.assert_allclose(cached.ig, plain.ig, atol=1e-6)
        np.testing.assert_allclose(cached.loss_base, plain.loss_base, atol=1e-9)
