"""IG to a completeness tolerance (ig.tol): steps per path, closed-form integrands, the cap, gather, config."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import N_HEADS, N_LAYERS, FunctionEngine, ToyScored, tiny_bert

from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError
from headattr.methods.adaptive import adaptive_integrated_gradients, relative_gap
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import GatePaths, make_paths
from headattr.models.adapters import Adapter
from headattr.pipeline.checks import validate_config
from headattr.pipeline.config import check_config
from headattr.pipeline.keys import method_settings
from headattr.pipeline.shards import gather

REPO = Path(__file__).resolve().parents[1]
COEF = torch.linspace(0.5, 1.5, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)


def cubic_except_layer0(g):
    """Layer 0 linear in its gates (every rule is exact), the other layers cubic."""
    power = torch.tensor([1.0] + [3.0] * (N_LAYERS - 1), dtype=torch.float64)[:, None]
    return (COEF * g**power).sum((-2, -1))


def riemann_right_cubic(m: int) -> float:
    """sum_k (1/m) 3 (k/m)^2 = (m + 1)(2m + 1) / (2 m^2): riemann_right IG of g^3 from 0, per unit coefficient."""
    return (m + 1) * (2 * m + 1) / (2 * m**2)


def test_relative_gap_has_a_floor():
    np.testing.assert_allclose(relative_gap([1e-9, 0.02], [1e-12, 2.0], 1e-3), [1e-6, 0.01])
    np.testing.assert_allclose(relative_gap([1e-9], [1e-12]), [1e-7])  # default floor 1e-2


def test_steps_double_per_path_until_the_tolerance():
    """(3m + 1) / (2 m^2) <= 1e-3 first at m = 2048 from 2 by doubling; the linear layer stays at 2 steps."""
    engine = FunctionEngine(cubic_except_layer0)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    res = adaptive_integrated_gradients(engine, ToyScored(), paths, "riemann_right", 2, tol=1e-3, max_steps=4096)
    assert res.extras["steps_used"].tolist() == [[2, 2048, 2048]] * 2
    expected = COEF.numpy().copy()
    expected[1:] *= riemann_right_cubic(2048)
    np.testing.assert_allclose(res.ig, expected[None] * np.array([1, 2])[:, None, None], rtol=1e-6)
    delta = res.loss_full[:, None] - res.loss_base
    assert relative_gap(res.gap, delta).max() <= 1e-3


def test_the_cap_is_kept_and_visible():
    engine = FunctionEngine(cubic_except_layer0)
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    res = adaptive_integrated_gradients(engine, ToyScored(), paths, "riemann_right", 2, tol=1e-3, max_steps=24)
    assert res.extras["steps_used"].tolist() == [[2, 24, 24]] * 2  # 2, 4, 8, 16, then the cap 24
    np.testing.assert_allclose(res.ig[0, 1], COEF[1].numpy() * riemann_right_cubic(24), rtol=1e-6)
    delta = res.loss_full[:, None] - res.loss_base
    assert (relative_gap(res.gap, delta)[:, 1:] > 1e-3).all()


def test_overlapping_paths_are_rerun_together():
    """Path 0 moves every gate (cubic in layer 0: inexact), path 1 only layers 1.. (linear: exact at any steps).
    Their gates overlap, so ig has no per-path slice: path 0 failing reruns both."""
    power = torch.tensor([3.0] + [1.0] * (N_LAYERS - 1), dtype=torch.float64)[:, None]
    engine = FunctionEngine(lambda g: (COEF * g**power).sum((-2, -1)))
    start = torch.ones(2, N_LAYERS, N_HEADS)
    start[0], start[1, 1:] = 0.0, 0.0
    paths = GatePaths(start, torch.zeros(N_LAYERS), ["a", "b"])
    res = adaptive_integrated_gradients(engine, ToyScored(), paths, "riemann_right", 4, tol=1e-3, max_steps=512)
    m = int(res.extras["steps_used"].max())
    assert m > 4 and res.extras["steps_used"].tolist() == [[m, m]] * 2
    plain = integrated_gradients(engine, ToyScored(), paths, "riemann_right", m)
    np.testing.assert_allclose(res.ig, plain.ig, rtol=1e-6)
    np.testing.assert_allclose(res.ig_sum, plain.ig_sum, rtol=1e-6)


def test_on_a_tiny_model_each_path_equals_plain_ig_at_its_steps():
    from test_ig import _sample, _scored

    adapter = Adapter(tiny_bert(init=0.3))
    engine = GateEngine(adapter, rows_per_pass=64)
    scored = _scored(adapter, _sample(), probs=[0.5])
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    res = adaptive_integrated_gradients(engine, scored, paths, "gauss_legendre", 2, tol=1e-3, max_steps=16)
    delta = res.loss_full[:, None] - res.loss_base
    assert relative_gap(res.gap, delta).max() <= 1e-3
    assert res.extras["steps_used"].max() > 2, "the tolerance must have raised some path"
    for q, m in enumerate(res.extras["steps_used"][0]):  # each layer's slice = plain IG at its steps
        plain = integrated_gradients(
            engine, scored, make_paths("per_layer", N_LAYERS, N_HEADS, layers=[q]), "gauss_legendre", int(m)
        )
        np.testing.assert_allclose(res.ig[:, q], plain.ig[:, q], rtol=1e-5, atol=1e-7)


def test_gather_keeps_steps_used_per_path():
    def shard(layers, n_q, fill):
        return {
            "ig": np.zeros((2, 1, 3, 2), np.float32),
            "loss_full": np.zeros((2, 1)),
            "n_scored": np.ones((2, 1), np.int64),
            "loss_base": np.zeros((2, 1, n_q)),
            "ig_sum": np.zeros((2, 1, n_q)),
            "gap": np.zeros((2, 1, n_q)),
            "extra_steps_used": np.full((2, 1, n_q), fill, np.int64),
            "sample_ids": np.array(["a", "b"]),
            "categories": np.array(["x", "x"]),
            "mask_probs": np.array([0.5]),
            "path_names": np.array([f"L{i}" for i in range(*layers)]),
            "meta_json": np.array('{"settings": {"layers": [0]}}'),
        }

    out, _ = gather([("s0-2_l0-1", shard((0, 1), 1, 8)), ("s0-2_l1-3", shard((1, 3), 2, 16))])
    assert out["extra_steps_used"].tolist() == [[[8, 16, 16]]] * 2


def _config(**ig):
    return validate_config({"ig": ig}, REPO)


def test_tol_enters_the_settings_only_when_set():
    assert method_settings(_config(), "per_layer")["options"] == {}
    opts = method_settings(_config(tol=1e-3, max_steps=64), "joint")["options"]
    assert opts == {"tol": 1e-3, "max_steps": 64, "gap_floor": 1e-2}


def test_max_steps_below_steps_is_a_config_error():
    config = _config()
    config["ig"] |= {"tol": 1e-3, "steps": 16, "max_steps": 8}
    with pytest.raises(ConfigError, match="ig.max_steps"):
        check_config(config, REPO)


def test_panels_without_room_for_a_second_panel_is_a_config_error():
    config = _config()
    config["ig"] |= {"tol": 1e-3, "steps": 8, "max_steps": 15, "refine": "panels"}
    with pytest.raises(ConfigError, match=r"ig.max_steps: 15 < 2 x ig.steps \(8\)"):
        check_config(config, REPO)
    config["ig"]["max_steps"] = 16
    check_config(config, REPO)


SQRT_EPS = 1e-6


def sqrt_layer1(g):
    """Layer 1: c_h sqrt(g + 1e-6), whose dL/dg ~ 1 / (2 sqrt(t)) is near-singular at the start; others linear."""
    layer1 = (COEF[1] * torch.sqrt(g[..., 1, :] + SQRT_EPS)).sum(-1)
    return layer1 + (COEF[[0, 2]] * g[..., [0, 2], :]).sum((-2, -1))


def test_panels_reach_tol_at_a_near_singular_start_where_doubling_does_not():
    """Gauss-Legendre doubled to the cap 128 leaves 2.5e-3 on sqrt(t + 1e-6); panels bisected toward t = 0
    (graded nodes found by the exact panel gaps) reach 1e-3 below the cap; IG = c_h (sqrt(1 + eps) - sqrt(eps))."""
    paths = make_paths("per_layer", N_LAYERS, N_HEADS)
    run = {"tol": 1e-3, "max_steps": 128}
    doubled = adaptive_integrated_gradients(FunctionEngine(sqrt_layer1), ToyScored(), paths, "gauss_legendre", 8, **run)
    engine = FunctionEngine(sqrt_layer1)
    res = adaptive_integrated_gradients(engine, ToyScored(), paths, "gauss_legendre", 8, refine="panels", **run)
    gap = {name: relative_gap(r.gap, r.loss_full[:, None] - r.loss_base) for name, r in (("d", doubled), ("p", res))}
    assert doubled.extras["steps_used"][0, 1] == 128 and gap["d"][:, 1].max() > 2e-3
    assert gap["p"].max() <= 1e-3
    steps = res.extras["steps_used"]
    assert steps[0, [0, 2]].tolist() == [8, 8] and 16 < steps[0, 1] < 128 and steps[0, 1] % 8 == 0
    exact = COEF[1].numpy() * (np.sqrt(1 + SQRT_EPS) - np.sqrt(SQRT_EPS))
    np.testing.assert_allclose(res.ig[1, 1], 2 * exact, rtol=1e-3)  # p index 1 scales the loss by 2
    np.testing.assert_allclose(res.ig[:, [0, 2]], doubled.ig[:, [0, 2]])  # converged paths are not redone


def test_refine_enters_the_settings_only_when_not_double():
    assert "refine" not in method_settings(_config(tol=1e-3, refine="double"), "per_layer")["options"]
    assert method_settings(_config(tol=1e-3, refine="panels"), "per_layer")["options"]["refine"] == "panels"
    assert method_settings(_config(refine="panels"), "per_layer")["options"] == {}  # no tol, no refinement
    with pytest.raises(ConfigError, match="ig.refine"):
        adaptive_integrated_gradients(FunctionEngine(sqrt_layer1), ToyScored(), make_paths("joint", 3, 4), refine="x")
