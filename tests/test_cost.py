"""Cost estimator arithmetic on a hand-computed config, the rows-per-pass chooser, and the estimate CLI."""

import numpy as np
import pytest
import torch
from helpers import tiny_bert

from headattr.cli import main
from headattr.engine.cost import (
    ModelDims,
    choose_rows,
    estimate,
    estimate_from_model,
    format_estimate,
    ig_cost,
    row_bytes,
    row_flops,
    wall_time,
)
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths

# L=2, H=2, d=8, I=16, V=10: P_layer = q 64 + o 64 + k,v 2*64 + MLP 2*8*16 = 512; q/k/v = 192.
DIMS = ModelDims(n_layers=2, n_heads=2, hidden=8, intermediate=16, vocab=10)
T = 4
LINEAR, ATTN, HEAD = 2 * 512 * T, 4 * T * T * 8, 2 * 8 * 10 * 2  # 4096, 512, 320 (2 scored positions)
TAIL = 1 - (2 * 192 * T + ATTN) / (LINEAR + ATTN)  # share of the moving layer that needs a backward


def test_dims_and_row_flops_by_hand():
    assert DIMS.layer_params == 512 and DIMS.qkv_params == 192
    assert row_flops(DIMS, T, 2, 2, grad=False).forward == 2 * (LINEAR + ATTN) + HEAD == 9536
    assert row_flops(DIMS, T, 2, 2, grad=True).backward == 2 * (LINEAR + 2 * ATTN) + HEAD == 10560
    assert row_flops(DIMS, T, 2, 2, grad=True, param_grads=True).backward == 2 * (2 * LINEAR + 2 * ATTN) + 2 * HEAD


def test_per_layer_counts_and_flops_by_hand():
    kw = dict(seq_len=T, n_samples=3, n_p=1, steps=2, method="per_layer", scored_fraction=0.5)
    plain, cached = ig_cost(DIMS, prefix_cache=False, **kw), ig_cost(DIMS, attention_cache=False, **kw)
    fwd2, fwd1 = 2 * (LINEAR + ATTN) + HEAD, (LINEAR + ATTN) + HEAD
    back2 = (1 + TAIL) * (LINEAR + 2 * ATTN) + HEAD
    back1 = TAIL * (LINEAR + 2 * ATTN) + HEAD
    # uncached, riemann_right (t = 1/2, 1): one row per path at t = 1/2, one shared "all on" row at t = 1 (which
    # gives L(all on)), two baseline rows; everything through 2 layers
    assert (plain["grad_rows"], plain["loss_rows"], plain["layer_forwards"]) == (9, 6, 30)
    assert plain["flops"] == pytest.approx(3 * (5 * fwd2 + 3 * back2))
    # cached: path 0's rows run 2 layers, path 1's run 1; the shared row runs 2; the prefix pass 1 layer
    assert (cached["grad_rows"], cached["loss_rows"], cached["layer_forwards"]) == (9, 9, 27)
    prefix = LINEAR + ATTN
    expected = 3 * ((fwd2 + back2) + (fwd1 + back1) + fwd2 + fwd1 + (fwd2 + back2) + prefix)
    assert cached["flops"] == pytest.approx(expected)
    # attention replay: path 1's two rows skip layer 1's q/k/v and attention; the prefix pass runs them once
    replayed = ig_cost(DIMS, prefix_cache=True, **kw)
    qkv_attention = 2 * 192 * T + ATTN
    assert replayed["flops"] == pytest.approx(expected - 3 * (2 - 1) * qkv_attention)
    est = estimate(DIMS, T, 3, 1, 2, "per_layer", device_class="h100")
    assert est["speedup_vs_uncached"] == pytest.approx(plain["flops"] / replayed["flops"])
    assert est["seconds"] == {"h100": pytest.approx(wall_time(replayed["flops"], "h100"))}


def test_shared_rows_depend_on_the_rule():
    kw = dict(seq_len=T, n_samples=1, n_p=1, steps=2, method="per_layer", prefix_cache=False)
    every = ig_cost(DIMS, shared_rows=False, **kw)  # L * m gradient rows, 1 + L end rows
    assert (every["grad_rows"], every["loss_rows"]) == (4, 3)
    left = ig_cost(DIMS, rule="riemann_left", **kw)  # t = 0 rows give the path starts' losses
    assert (left["grad_rows"], left["loss_rows"]) == (4, 1)
    trap = ig_cost(DIMS, rule="trapezoid", **kw)  # t = 0 and t = 1: 2 path rows + 1 shared, no end rows
    assert (trap["grad_rows"], trap["loss_rows"]) == (3, 0)
    gauss = ig_cost(DIMS, rule="gauss_legendre", **kw)  # no shared node
    assert (gauss["grad_rows"], gauss["loss_rows"]) == (4, 3)


def test_joint_ignores_prefix_cache_and_plain_loop_costs_more():
    kw = dict(seq_len=T, n_samples=1, n_p=2, steps=3, method="joint")
    assert ig_cost(DIMS, prefix_cache=True, **kw)["flops"] == ig_cost(DIMS, prefix_cache=False, **kw)["flops"]
    assert ig_cost(DIMS, **kw)["grad_rows"] == 6 and ig_cost(DIMS, **kw)["loss_rows"] == 2  # all on from t = 1
    loop = ig_cost(DIMS, prefix_cache=False, param_grads=True, full_logits=True, end_losses=False, **kw)
    assert loop["flops"] > ig_cost(DIMS, **kw)["flops"]


def test_row_bytes_by_hand():
    # kept per layer: T (12 d + 4 I) 4 B + scores 2 H T^2 4 B = 2560 + 256; transient 1536 + 256;
    # logits 3 * 2 * V * 4 + 2 T d 4 = 496; cached input T d 4 = 128
    assert row_bytes(DIMS, T, 2, 2) == 2 * 2816 + 1792 + 496 + 128
    assert row_bytes(DIMS, T, 2, 2, grad=False) == 1792 + 496 + 128
    assert row_bytes(DIMS, T, 2, 2, attention_matrix=False) < row_bytes(DIMS, T, 2, 2)
    assert row_bytes(DIMS, T, 1, 2) < row_bytes(DIMS, T, 2, 2) < row_bytes(DIMS, 2 * T, 2, 2)


@pytest.mark.parametrize("per_row", [1, 7, 8048, 10**9 + 7])
def test_chooser_never_exceeds_the_budget_and_is_monotone(per_row):
    budgets = sorted([per_row, per_row + 1, 2 * per_row - 1, 2 * per_row, 10 * per_row + 3, 123_456_789_012])
    chosen = [choose_rows(b, per_row) for b in budgets]
    assert all(rows * per_row <= b for rows, b in zip(chosen, budgets, strict=True))
    assert chosen == sorted(chosen) and chosen[0] == 1
    assert choose_rows(per_row - 1, per_row) == 1  # a row over budget still runs alone
    assert choose_rows(budgets[-1], per_row, max_rows=5) <= 5


def test_chooser_with_the_estimator_fits_the_budget():
    for layers in (1, 2):
        per_row = row_bytes(DIMS, T, layers, 2)
        for budget in range(per_row, 40 * per_row, 997):
            assert choose_rows(budget, per_row) * per_row <= budget


def test_estimate_from_model_and_cli(tmp_path, capsys):
    model = tiny_bert()
    est = estimate_from_model(model, 16, 2, 2, 4, "per_layer")
    assert est["dims"]["n_layers"] == 3 and est["dims"]["intermediate"] == 64 and est["dims"]["vocab"] == 64
    assert set(est["seconds"]) == {"cpu-2core", "a100", "h100", "h200"}
    assert "prefix cache on" in format_estimate(est)
    model.save_pretrained(tmp_path / "m")
    argv = ["estimate", "--model", str(tmp_path / "m"), "--seq-len", "32", "--samples", "2", "--mask-probs", "2"]
    assert main([*argv, "--steps", "4", "--method", "per_layer", "--device-class", "h100"]) == 0
    out = capsys.readouterr().out
    assert "expected on h100" in out and "cpu-2core" not in out
    assert main([*argv, "--device-class", "tpu"]) == 2


class _CountingEngine:
    """Records the rows an IG run asks for (gates are ignored; losses and gradients are zeros)."""

    prefix_cache = True

    def __init__(self):
        self.grad_rows, self.loss_rows, self.layer_rows = 0, 0, 0

    def _count(self, gates, from_layer):
        self.layer_rows += int((gates.shape[1] - from_layer).sum())
        return gates.shape[0]

    def gradients(self, scored, row_p, gates, describe=None, from_layer=None):
        self.grad_rows += self._count(gates, from_layer)
        return torch.zeros(gates.shape[0], dtype=torch.float64), torch.zeros(gates.shape)

    def losses(self, scored, row_p, gates, describe=None, from_layer=None):
        self.loss_rows += self._count(gates, from_layer)
        return torch.zeros(gates.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_left", "trapezoid", "gauss_legendre"])
@pytest.mark.parametrize("method", ["per_layer", "joint"])
def test_estimated_rows_are_the_rows_ig_runs(rule, method):
    class _Scored:
        sample_id, mask_probs, n_p, n_scored = "toy", [0.2, 0.5], 2, [1, 1]

    n_layers, steps = 4, 3
    dims = ModelDims(n_layers=n_layers, n_heads=2, hidden=8, intermediate=16, vocab=10)
    engine = _CountingEngine()
    integrated_gradients(engine, _Scored(), make_paths(method, n_layers, 2), rule, steps)
    est = ig_cost(dims, T, 1, 2, steps, method, prefix_cache=True, rule=rule)
    prefix_rows = 2 if method == "per_layer" else 0  # the engine's own capture pass, n_p rows x (L - 1) layers
    assert est["grad_rows"] == engine.grad_rows
    assert est["loss_rows"] == engine.loss_rows + prefix_rows
    assert est["layer_forwards"] == engine.layer_rows + prefix_rows * (n_layers - 1)


def _engine_run(method, rule, steps, probs, prefix_cache=True, rows_per_pass=5):
    from helpers import random_ids

    from headattr.data.samples import Sample
    from headattr.engine.gate_engine import GateEngine
    from headattr.models.adapters import Adapter
    from headattr.objective.loss import build_scored_input
    from headattr.objective.masking import draw_masks

    model = tiny_bert()
    adapter = Adapter(model)
    engine = GateEngine(adapter, rows_per_pass=rows_per_pass, prefix_cache=prefix_cache)
    sample = Sample("s0", random_ids(18, 0), 3, 17, "x")
    masks = draw_masks([sample], probs, "bernoulli", 7, adapter.shift_logits)["s0"]
    scored = build_scored_input(sample, masks, probs, "diffusion", "mean", 4, adapter.shift_logits)
    integrated_gradients(engine, scored, make_paths(method, adapter.n_layers, adapter.n_heads), rule, steps)
    return engine, scored, model


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_engine_counts_per_layer_equal_the_formulas(prefix_cache):
    probs, steps = [0.3, 0.5, 0.9], 4
    engine, scored, model = _engine_run("per_layer", "riemann_right", steps, probs, prefix_cache)
    n_p, n_layers, t = len(probs), 3, scored.input_ids.shape[1]
    c = engine.counts
    if prefix_cache:
        # per layer l: K - 1 gradient rows and one baseline row per p through layers l..L-1; one shared "all on"
        # gradient row per p at t = 1 through all L layers; one capture row per p through L - 1 layers
        assert c.grad_rows == n_p * (n_layers * (steps - 1) + 1) == 30
        assert c.loss_rows == n_p * (n_layers + 1) == 12
        assert c.layer_forwards == n_p * (steps * n_layers * (n_layers + 1) // 2 + n_layers + n_layers - 1) == 87
        assert c.layer_backwards == n_p * ((steps - 1) * n_layers * (n_layers + 1) // 2 + n_layers) == 63
    else:
        assert (c.grad_rows, c.loss_rows) == (30, 9)
        assert c.layer_forwards == (30 + 9) * n_layers and c.layer_backwards == 30 * n_layers
    mean_scored = float(np.mean(scored.n_scored))
    dims = ModelDims.from_config(model.config)
    est = ig_cost(dims, t, 1, n_p, steps, "per_layer", prefix_cache, mean_scored / t, rows_per_pass=5)
    keys = ("grad_rows", "loss_rows", "layer_forwards", "layer_backwards", "passes")
    assert tuple(est[k] for k in keys) == tuple(getattr(c, k) for k in keys)
    if prefix_cache:  # chunks of 5, layers l..2 for l = 0, 1, 2 (3 + 2 + 1 = 6): per l 9 gradient rows (2 chunks,
        # forward and backward) and 3 baseline rows (1 chunk); 3 all-on gradient rows (3 layers); capture (2 layers)
        assert c.layer_calls == 2 * 2 * 6 + 6 + 2 * 3 + 2 == 38
    assert est["layer_calls"] == c.layer_calls
    assert c.flops_forward == pytest.approx(est["flops_forward"]) and c.flops == pytest.approx(est["flops"])


def test_engine_counts_joint_and_passes():
    probs, steps = [0.5, 0.9], 3
    engine, scored, model = _engine_run("joint", "trapezoid", steps, probs, rows_per_pass=4)
    c = engine.counts
    # trapezoid K = 3 has nodes 0, 1/2, 1: K gradient rows per p give L(start) and L(all on); no extra loss rows
    assert (c.grad_rows, c.loss_rows, c.layer_forwards, c.layer_backwards) == (6, 0, 18, 18)
    assert c.passes == 2  # 6 rows in chunks of 4
    est = ig_cost(
        ModelDims.from_config(model.config),
        scored.input_ids.shape[1],
        1,
        2,
        steps,
        "joint",
        rule="trapezoid",
        scored_fraction=float(np.mean(scored.n_scored)) / scored.input_ids.shape[1],
        rows_per_pass=4,
    )
    assert c.flops == pytest.approx(est["flops"]) and est["layer_calls"] == c.layer_calls == 2 * 3 * 2
    assert (est["layer_backwards"], est["passes"]) == (c.layer_backwards, c.passes)


def test_cpu_estimate_adds_the_per_layer_call_overhead():
    from headattr.engine.cost import DEVICE_FLOPS, LAYER_CALL_SECONDS

    est = estimate(DIMS, T, 3, 1, 2, "per_layer", device_class="cpu-2core", rows_per_pass=16)
    # per sample (K = 2, riemann_right, cached): layer 0's path row (2 layers, forward and backward) 4 + its
    # baseline row 2; layer 1's path row 2 + baseline 1; the all-on row 4; the capture pass 1 = 14 layer calls
    assert est["layer_calls"] == 3 * 14
    want = est["flops"] / DEVICE_FLOPS["cpu-2core"] + 42 * LAYER_CALL_SECONDS["cpu-2core"]
    assert est["seconds"]["cpu-2core"] == pytest.approx(want) and LAYER_CALL_SECONDS["cpu-2core"] > 0
    assert wall_time(est["flops"], "h100", est["layer_calls"]) == pytest.approx(est["flops"] / DEVICE_FLOPS["h100"])
