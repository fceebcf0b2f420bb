"""Prefix caching: same IG as the uncached engine on every family, fewer layer passes, model restored exactly."""

import numpy as np
import pytest
import torch
from helpers import FAMILY_BUILDERS, N_HEADS, N_LAYERS, LLaDAStandIn, random_ids, tiny_bert, tiny_llama

from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.engine.prefix import LayerStack, PrefixError
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths
from headattr.models.adapters import Adapter
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks

PROBS = [0.2, 0.5, 0.8]


def _scored(adapter, length=14, seed=1, weighting="mean", probs=PROBS):
    sample = Sample(f"s{seed}", random_ids(length, seed), 2, length - 1, "x")
    masks = draw_masks([sample], probs, "bernoulli", 3, adapter.shift_logits)[sample.sample_id]
    return build_scored_input(sample, masks, probs, "diffusion", weighting, 4, adapter.shift_logits)


def _ig(adapter, scored, prefix, mode="per_layer", rows=7):
    engine = GateEngine(adapter, rows_per_pass=rows, prefix_cache=prefix)
    try:
        return integrated_gradients(engine, scored, make_paths(mode, N_LAYERS, N_HEADS, 0.1), "riemann_right", 3)
    finally:
        engine.close()


def _assert_same(a, b, atol):
    for name in ("ig", "loss_full", "loss_base", "ig_sum"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", sorted(FAMILY_BUILDERS))
@pytest.mark.parametrize("weighting", ["mean", "inverse_p"])
def test_prefix_cached_ig_equals_uncached_float64(family, weighting):
    adapter = Adapter(FAMILY_BUILDERS[family]().double(), mask_token_id=4)
    scored = _scored(adapter, weighting=weighting)
    cached, plain = _ig(adapter, scored, True), _ig(adapter, scored, False)
    assert np.abs(plain.ig).max() > 1e-4
    _assert_same(cached, plain, 1e-6)


@pytest.mark.parametrize("build", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_prefix_cached_ig_equals_uncached_float32(build):
    adapter = Adapter(build(), mask_token_id=4)
    scored = _scored(adapter)
    _assert_same(_ig(adapter, scored, True, rows=5), _ig(adapter, scored, False, rows=16), 1e-6)


def test_joint_and_layered_paths_are_unchanged():
    adapter = Adapter(tiny_bert().double())
    scored = _scored(adapter)
    for mode in ("joint", "layered"):
        _assert_same(_ig(adapter, scored, True, mode), _ig(adapter, scored, False, mode), 1e-9)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "llada", "dream"])
def test_model_is_restored_exactly(family):
    model = FAMILY_BUILDERS[family]()
    adapter = Adapter(model, mask_token_id=4)
    stack = LayerStack(adapter)
    layers = adapter.layers
    ids = torch.as_tensor(random_ids(12, 5))[None]
    before = model(input_ids=ids)[0] if family in ("llada", "dream") else model(input_ids=ids).logits
    _ig(adapter, _scored(adapter), True)
    assert stack.parent._modules[stack.name] is layers
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in layers)
    assert all(site.attr not in vars(site.owner) for site in stack.sites)  # no patched attention left
    assert all(not p._forward_pre_hooks and not p._forward_hooks for p in adapter.out_projs)
    after = model(input_ids=ids)[0] if family in ("llada", "dream") else model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert list(dict(model.named_modules())) == list(dict(FAMILY_BUILDERS[family]().named_modules()))


def _count_layer_rows(adapter, prefix):
    counts = [0] * N_LAYERS
    handles = [
        layer.register_forward_hook(lambda m, a, out, i=i: counts.__setitem__(i, counts[i] + a[0].shape[0]))
        for i, layer in enumerate(adapter.layers)
    ]
    try:
        _ig(adapter, _scored(adapter), prefix, rows=4)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_cached_run_does_fewer_layer_forwards():
    adapter = Adapter(tiny_bert(), mask_token_id=4)
    n_p, m = len(PROBS), 3
    # Both: the node t = 1 ("all on") is one shared row per p (its loss is L(all on)); n_p * L baseline rows.
    # Uncached: (m - 1) rows per path and p, the shared row and the baselines all run every layer.
    assert _count_layer_rows(adapter, False) == [n_p * ((m - 1) * N_LAYERS + 1 + N_LAYERS)] * N_LAYERS
    # Cached: path l's rows (m - 1 steps, baseline) run layers l..L-1, so layer j runs them for the j + 1 paths
    # l <= j; the shared row starts at layer 0; the prefix pass (n_p rows) stops before the last layer.
    expected = [n_p * (m * (j + 1) + 1 + (j < N_LAYERS - 1)) for j in range(N_LAYERS)]
    assert _count_layer_rows(adapter, True) == expected
    assert sum(expected) < N_LAYERS * n_p * ((m - 1) * N_LAYERS + 1 + N_LAYERS)


def test_from_layer_is_checked_against_the_gates():
    engine = GateEngine(Adapter(tiny_bert(), mask_token_id=4))
    scored = _scored(engine.adapter)
    gates = torch.ones(1, N_LAYERS, N_HEADS)
    gates[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="below its from_layer"):
        engine.gradients(scored, torch.tensor([0]), gates, from_layer=torch.tensor([1]))


class _ListLoopLLaDA(LLaDAStandIn):
    """Loops over a plain list captured at construction, so swapping the ModuleList cannot shorten it."""

    def __init__(self):
        super().__init__()
        self._fixed = list(self.model.transformer["blocks"])

    def forward(self, input_ids, attention_mask=None):
        tr = self.model.transformer
        x = tr["wte"](input_ids)
        for block in self._fixed:
            x = block(x)
        return (tr["ff_out"](tr["ln_f"](x)),)


def test_model_that_ignores_its_layer_list_fails_loudly():
    adapter = Adapter(_ListLoopLLaDA().eval(), mask_token_id=4)
    with pytest.raises(PrefixError, match="does not loop over its layer list"):
        _ig(adapter, _scored(adapter), True)
    assert adapter.model.model.transformer["blocks"] is adapter.layers


def test_memory_budget_chooser_runs_and_matches():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    tight = GateEngine(adapter, rows_per_pass=None, memory_budget=1)
    assert tight.rows_for(scored, N_LAYERS, True) == 1
    loose = GateEngine(adapter, rows_per_pass=None, memory_budget=4 << 20)
    assert loose.rows_for(scored, 1, True) > loose.rows_for(scored, N_LAYERS, True) > 1
    a = integrated_gradients(tight, scored, paths, "riemann_right", 2)
    b = integrated_gradients(loose, scored, paths, "riemann_right", 2)
    _assert_same(a, b, 1e-9)


def test_bf16_autocast_keeps_fp32_gates_and_matches_uncached():
    adapter = Adapter(tiny_llama(), mask_token_id=4)
    scored = _scored(adapter)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    results = []
    for prefix in (True, False):
        engine = GateEngine(adapter, rows_per_pass=8, autocast_dtype=torch.bfloat16, prefix_cache=prefix)
        results.append(integrated_gradients(engine, scored, paths, "riemann_right", 2))
        engine.close()
    assert results[0].ig.dtype == np.float32 and np.isfinite(results[0].ig).all()
    scale = np.abs(results[1].ig).max()
    np.testing.assert_allclose(results[0].ig, results[1].ig, atol=1e-2 * scale, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILY_BUILDERS))
def test_every_family_replays_the_attention_of_its_first_layer(family):
    adapter = Adapter(FAMILY_BUILDERS[family]().double(), mask_token_id=4)
    scored = _scored(adapter)
    engine = GateEngine(adapter, rows_per_pass=4)
    engine.prepare_prefix(scored)
    assert sorted(engine._prefix[2]) == list(range(1, N_LAYERS))
    engine.close()
    off = GateEngine(adapter, rows_per_pass=7, attention_cache=False)
    try:
        paths = make_paths("per_layer", N_LAYERS, N_HEADS, 0.1)
        reference = integrated_gradients(off, scored, paths, "riemann_right", 3)
    finally:
        off.close()
    _assert_same(_ig(adapter, scored, True, rows=3), reference, 1e-6)


def _ig_flops(adapter, scored, attention_cache: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    engine = GateEngine(adapter, rows_per_pass=5, attention_cache=attention_cache)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    try:
        with FlopCounterMode(display=False) as counter:
            integrated_gradients(engine, scored, paths, "riemann_right", 3)
    finally:
        engine.close()
    return counter.get_total_flops()


def test_attention_replay_skips_exactly_the_first_layers_qkv_and_attention():
    adapter = Adapter(tiny_bert(), mask_token_id=4)
    scored = _scored(adapter)
    t, d, n_p, m = scored.input_ids.shape[1], 32, len(PROBS), 3
    # rows starting above layer 0: per path l >= 1, (m - 1) gradient rows and one baseline row per p; the
    # capture pass pays for it by running the last layer's attention too (n_p rows), where it stopped before
    replayed_rows = (N_LAYERS - 1) * n_p * m
    per_row = 3 * 2 * t * d * d + 2 * 2 * t * t * d  # q, k, v projections; QK^T and attention-weighted V
    saved = _ig_flops(adapter, scored, False) - _ig_flops(adapter, scored, True)
    assert saved == (replayed_rows - n_p) * per_row


class _CopyingDreamAttention(torch.nn.Module):
    """Returns a copy of its output projection's result: the replay form cannot be verified by identity."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.o_proj = inner.o_proj

    def forward(self, x, mask4d=None):
        return self.inner(x, mask4d).clone()


def test_unverifiable_attention_is_recomputed_not_replayed():
    model = FAMILY_BUILDERS["dream"]().double()
    for layer in model.model.layers:
        layer.self_attn = _CopyingDreamAttention(layer.self_attn)
    adapter = Adapter(model, mask_token_id=4)
    scored = _scored(adapter)
    engine = GateEngine(adapter, rows_per_pass=4)
    engine.prepare_prefix(scored)
    assert engine._prefix[2] == {}
    engine.close()
    _assert_same(_ig(adapter, scored, True), _ig(adapter, scored, False), 1e-6)


def test_cpu_default_budget_depends_on_the_machine_only():
    from headattr.engine.gate_engine import CPU_BUDGET_CAP, default_memory_budget

    budgets = {default_memory_budget(torch.device("cpu")) for _ in range(3)}
    assert len(budgets) == 1 and 0 < budgets.pop() <= CPU_BUDGET_CAP


def test_workflow_engine_settings():
    from headattr.engine.gate_engine import engine_for
    from headattr.pipeline.keys import model_slice

    adapter = Adapter(tiny_llama(), mask_token_id=4)
    engine = engine_for(adapter, {"autocast": "bfloat16"}, {"rows_per_pass": None, "memory_budget_gib": 0.5})
    assert (engine.rows_per_pass, engine.memory_budget, engine.autocast_dtype) == (None, 2**29, torch.bfloat16)
    engine.close()
    engine = engine_for(adapter, {"autocast": None}, {"rows_per_pass": 3, "memory_budget_gib": None})
    assert (engine.rows_per_pass, engine.memory_budget, engine.autocast_dtype) == (3, None, None)
    engine.close()
    model = {"path": "m", "adapter": None, "dtype": "float32", "mask_token_id": None, "attn_implementation": None}
    assert "autocast" not in model_slice({"model": {**model, "autocast": None}})
    assert model_slice({"model": {**model, "autocast": "bfloat16"}})["autocast"] == "bfloat16"
