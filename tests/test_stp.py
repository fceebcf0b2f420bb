"""The users' HeadIG: STP paths and their quadrature, S masks per p, loss sum, layer ranges, postprocess, exports."""

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import N_HEADS, N_LAYERS, FunctionEngine, ToyScored, random_ids, tiny_bert

from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError
from headattr.methods.ig import integrated_gradients
from headattr.methods.paths import make_paths
from headattr.methods.stp import ThresholdPaths, stp_layer_paths, stp_paths
from headattr.models.adapters import Adapter
from headattr.models.gates import gated
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks, pack_masks
from headattr.pipeline.aggregate import aggregate, importance_matrix, per_sample_scores
from headattr.pipeline.attribute import AttributionSettings, attribute_sample, run_attribution
from headattr.pipeline.dumps import load_dump, save_npz
from headattr.pipeline.exports import load_importance_file, write_exports
from headattr.pipeline.shards import gather

COEF = torch.linspace(-1, 1, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)
LIN = torch.linspace(0.5, -0.3, N_LAYERS * N_HEADS, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)


def _paths(scheme="riemann_stieltjes", baseline=0.2, levels=None, n=3):
    return stp_paths(N_LAYERS, N_HEADS, "toy", baseline, n, 5, scheme=scheme, levels=levels)


def test_thresholds_keyed_by_seed_sample_and_path_only():
    a = stp_paths(N_LAYERS, N_HEADS, "s1", 0.0, 3, 7)
    b = stp_paths(N_LAYERS, N_HEADS, "s1", 0.0, 5, 7)  # more paths: the first three are unchanged
    assert torch.equal(a.threshold, b.threshold[:3])
    assert not torch.equal(a.threshold, stp_paths(N_LAYERS, N_HEADS, "s2", 0.0, 3, 7).threshold)
    assert not torch.equal(a.threshold, stp_paths(N_LAYERS, N_HEADS, "s1", 0.0, 3, 8).threshold)
    one = stp_layer_paths(N_LAYERS, N_HEADS, "s1", 0.0, 2, 7, layers=[2])
    full = stp_layer_paths(N_LAYERS, N_HEADS, "s1", 0.0, 2, 7)
    assert torch.equal(one.threshold, full.threshold[4:]) and one.names == full.names[4:] == ["L2P0", "L2P1"]
    assert float(a.threshold.min()) >= 0 and float(a.threshold.max()) < 1


@pytest.mark.parametrize("scheme", ["trapezoid_stieltjes", "gauss_segments"])
def test_separable_quadratic_has_closed_form(scheme):
    """L = sum c g^2 + e g: IG_d = c_d (1 - b^2) + e_d (1 - b) on any monotone path; trapezoid-Stieltjes telescopes
    (c (a_k^2 - a_{k-1}^2)) and segment Gauss-Legendre integrates the linear pieces exactly."""
    engine = FunctionEngine(lambda g: (COEF * g**2 + LIN * g).sum((-2, -1)))
    res = integrated_gradients(engine, ToyScored(), _paths(scheme, levels=5), scheme, 3)
    expected = (COEF * (1 - 0.2**2) + LIN * 0.8).numpy()
    np.testing.assert_allclose(res.ig[0], expected, atol=1e-6)
    np.testing.assert_allclose(res.gap, 0, atol=2e-6)


def test_riemann_stieltjes_is_the_users_sum_and_converges_first_order():
    """Right sums of grad x increment: linear L exact at any K; quadratic L off by sum_k c (da_k)^2 = O(1/K)."""
    lin = FunctionEngine(lambda g: (LIN * g).sum((-2, -1)))
    res = integrated_gradients(lin, ToyScored(), _paths(), "riemann_stieltjes", 3)
    np.testing.assert_allclose(res.ig[0], (LIN * 0.8).numpy(), atol=1e-6)
    quad = FunctionEngine(lambda g: (COEF * g**2).sum((-2, -1)))
    paths = _paths()
    errors = []
    for k in (8, 64):
        res = integrated_gradients(quad, ToyScored(), paths, "riemann_stieltjes", k)
        alpha = paths._alpha(np.arange(k + 1) / k)  # [K + 1, Q, L, H]
        bias = (COEF * ((alpha[1:] - alpha[:-1]) ** 2).sum(0)).mean(0)  # mean over the P paths
        np.testing.assert_allclose(res.ig[0], (COEF * 0.96 + bias).numpy(), atol=1e-6)
        errors.append(np.abs(res.ig[0] - (COEF * 0.96).numpy()).max())
    assert errors[1] < errors[0] / 4


def test_gauss_segments_complete_on_products_of_gates():
    """Along each segment every gate is linear: a product of two gates is quadratic, exact with 2 nodes."""
    engine = FunctionEngine(lambda g: (COEF * g).sum((-2, -1)) + g.prod(-1).sum(-1) * g[..., 0, 0])
    res = integrated_gradients(engine, ToyScored(), _paths("gauss_segments", levels=4), "gauss_segments", 4)
    np.testing.assert_allclose(res.gap, 0, atol=2e-6)


def _sample(length=18, seed=0, sid=None):
    return Sample(sid or f"s{seed}", random_ids(length, seed), 3, length - 1, "x")


def _scored(adapter, sample, probs=(0.15, 0.5), mask_samples=1, weighting="mean"):
    masks = draw_masks([sample], probs, "bernoulli", 7, adapter.shift_logits, mask_samples)[sample.sample_id]
    return build_scored_input(sample, masks, probs, "diffusion", weighting, 4, adapter.shift_logits, mask_samples)


def test_all_thresholds_zero_equals_joint_exactly():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter, _sample())
    engine = GateEngine(adapter, rows_per_pass=8)
    stp = _paths(baseline=0.0, n=1)
    stp.threshold.zero_()
    a = integrated_gradients(engine, scored, stp, "riemann_stieltjes", 8)
    b = integrated_gradients(engine, scored, make_paths("joint", N_LAYERS, N_HEADS), "riemann_right", 8)
    engine.close()
    for name in ("ig", "loss_full", "loss_base", "ig_sum"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("scheme", ["riemann_stieltjes", "trapezoid_stieltjes"])
def test_path_average_equals_mean_of_single_path_runs(scheme):
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter, _sample())
    engine = GateEngine(adapter, rows_per_pass=16)
    paths = stp_layer_paths(N_LAYERS, N_HEADS, "s0", 0.1, 3, 0)
    together = integrated_gradients(engine, scored, paths, scheme, 4)
    singles = [
        integrated_gradients(
            engine,
            scored,
            ThresholdPaths(paths.start[q : q + 1], paths.threshold[q : q + 1], [paths.names[q]], torch.ones(1)),
            scheme,
            4,
        )
        for q in range(paths.n_paths)
    ]
    engine.close()
    np.testing.assert_allclose(together.ig, sum(s.ig for s in singles) / 3, atol=1e-7)
    np.testing.assert_allclose(together.ig_sum, np.concatenate([s.ig_sum for s in singles], 1), atol=1e-10)


def reference_stp(model, adapter, sample, masks, probs, n_draws, thresholds, baseline, steps, layer_of_path):
    """The users' loop from the formulas: per path, per step k = 1..K, gates alpha(t_k), the loss = mean over the
    (p, s) variants of each variant's mean masked CE (full logits, one variant at a time), its gradient x
    (alpha(t_k) - alpha(t_{k-1})); paths averaged (per layer for stp_layer)."""
    ids = torch.as_tensor(sample.input_ids)
    n_paths = len(thresholds)
    ig = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.float64)
    per_layer = {}
    for q in range(n_paths):
        u = thresholds[q]
        moving = torch.ones(N_LAYERS, dtype=torch.bool) if layer_of_path[q] is None else torch.zeros(N_LAYERS).bool()
        if layer_of_path[q] is not None:
            moving[layer_of_path[q]] = True

        def alpha(t, u=u, moving=moving):
            ramp = torch.clamp((t - u) / torch.clamp(1 - u, min=1e-6), 0, 1)
            return torch.where(moving[:, None], baseline + ramp * (1 - baseline), torch.ones(()))

        prev = alpha(0.0)
        total = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.float64)
        for k in range(1, steps + 1):
            now = alpha(k / steps)
            gates = now.float().clone().requires_grad_(True)
            loss = 0.0
            with gated(adapter, gates):
                for mask in masks:
                    noised = ids.clone()
                    noised[torch.as_tensor(mask)] = 4
                    logits = model(input_ids=noised[None]).logits[0]
                    pos = torch.as_tensor(np.flatnonzero(mask))
                    loss = loss + F.cross_entropy(logits[pos].double(), ids[pos]) / len(masks)
            (grad,) = torch.autograd.grad(loss, gates)
            total += grad.double() * (now - prev)
            prev = now
        per_layer.setdefault(layer_of_path[q], []).append(total)
    for totals in per_layer.values():
        ig += sum(totals) / len(totals)
    return ig.numpy()


@pytest.mark.parametrize("method", ["stp", "stp_layer"])
def test_engine_equals_reference_loop_with_two_draws_and_two_probs(method):
    model = tiny_bert().double()
    adapter = Adapter(model, mask_token_id=4)
    sample, probs = _sample(16, seed=3), [0.3, 0.7]
    masks = draw_masks([sample], probs, "bernoulli", 11, False, 2)[sample.sample_id]
    assert masks.shape == (4, 16) and not (masks[0] == masks[1]).all()
    settings = AttributionSettings(
        method=method,
        steps=4,
        baseline=0.1,
        mask_probs=probs,
        mask_seed=11,
        mask_samples=2,
        options={"path_samples": 2, "path_seed": 5},
    ).validate()
    engine = GateEngine(adapter, rows_per_pass=7)
    res = attribute_sample(engine, sample, masks, settings)
    engine.close()
    build = stp_paths if method == "stp" else stp_layer_paths
    paths = build(N_LAYERS, N_HEADS, sample.sample_id, 0.1, 2, 5)
    layer_of = [None] * 2 if method == "stp" else [int(n[1]) for n in paths.names]
    thresholds = [paths.threshold[q] for q in range(paths.n_paths)]
    ref = reference_stp(model, adapter, sample, masks, probs, 2, thresholds, 0.1, 4, layer_of)
    assert np.abs(ref).max() > 1e-4
    np.testing.assert_allclose(res.ig.mean(0), ref, atol=1e-6, rtol=0)
    assert np.isfinite(res.gap).all()
    assert res.ig.shape == (2, N_LAYERS, N_HEADS) and res.loss_base.shape == (2, paths.n_paths)


def test_masks_s1_are_the_masks_of_before_and_draws_are_keyed():
    samples = [_sample(20, seed=i) for i in range(3)]
    one = draw_masks(samples, [0.2, 0.6], "bernoulli", 3)
    two = draw_masks(samples[::-1], [0.2, 0.6], "bernoulli", 3, mask_samples=2)
    for s in samples:
        np.testing.assert_array_equal(two[s.sample_id][[0, 2]], one[s.sample_id])  # draw 0 = the old mask
        assert not np.array_equal(two[s.sample_id][0], two[s.sample_id][1])
    # the old key, written from its definition: sha256 of "seed \x1f sample id \x1f repr(p)"
    digest = hashlib.sha256(f"3\x1f{samples[0].sample_id}\x1f{0.2!r}".encode()).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    target = np.arange(samples[0].target_start, samples[0].target_end)
    expected = np.zeros(20, bool)
    expected[target[rng.random(target.size) < 0.2]] = True
    np.testing.assert_array_equal(one[samples[0].sample_id][0], expected)
    assert "mask_samples" not in pack_masks(samples, one, [0.2, 0.6])
    assert int(pack_masks(samples, two, [0.2, 0.6], 2)["mask_samples"]) == 2


def test_s1_settings_and_digest_unchanged():
    s = AttributionSettings(method="per_layer")
    assert "mask_samples" not in s.as_dict() and "layer_range" not in s.as_dict()
    assert AttributionSettings(method="per_layer", mask_samples=2).digest() != s.digest()


def _run(engine, samples, masks, settings):
    arrays, meta = run_attribution(engine, samples, masks, settings, progress=False)
    return arrays, meta


def test_stp_results_do_not_depend_on_batching_order_or_shards():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    samples = [_sample(14, seed=i) for i in range(3)]
    masks = draw_masks(samples, [0.3, 0.8], "bernoulli", 2, False, 2)
    common = {"steps": 3, "mask_probs": [0.3, 0.8], "mask_seed": 2, "mask_samples": 2}
    opts = {"path_samples": 2, "path_seed": 1}
    base = AttributionSettings(method="stp_layer", options=opts, **common)
    full, meta = _run(GateEngine(adapter, rows_per_pass=64), samples, masks, base)
    small, _ = _run(GateEngine(adapter, rows_per_pass=3), samples[::-1], masks, base)
    np.testing.assert_allclose(small["ig"][::-1], full["ig"], atol=1e-9)
    engine = GateEngine(adapter, rows_per_pass=64)
    shards = []
    for name, part, layers in (("s0-2_l0-2", samples[:2], [0, 1]), ("s0-2_l2-3", samples[:2], [2])):
        settings = AttributionSettings(method="stp_layer", options=opts, layers=layers, **common)
        arrays, m = _run(engine, part, masks, settings)
        shards.append((name, arrays | {"meta_json": np.array(__import__("json").dumps(m))}))
    settings = AttributionSettings(method="stp_layer", options=opts, **common)
    arrays, m = _run(engine, samples[2:], masks, settings)
    shards.append(("s2-3_lall", arrays | {"meta_json": np.array(__import__("json").dumps(m))}))
    gathered, _ = gather(shards)
    for key in ("ig", "loss_full", "loss_base", "ig_sum", "gap"):
        np.testing.assert_array_equal(gathered[key], full[key])
    assert list(gathered["path_names"]) == [f"L{x}P{i}" for x in range(3) for i in range(2)]


def test_layer_range_gates_only_those_layers():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    sample = _sample()
    masks = draw_masks([sample], [0.5], "bernoulli", 0)
    engine = GateEngine(adapter, rows_per_pass=32)
    for method in ("stp", "per_layer", "joint", "first_order", "leave_one_out"):
        opts = {"stp_rule": "gauss_segments", "stp_levels": 4} if method == "stp" else {}
        rule = "riemann_right" if method == "stp" else "gauss_legendre"
        settings = AttributionSettings(method, rule, 8, mask_probs=[0.5], layer_range=[1, 2], options=opts).validate()
        arrays, meta = _run(engine, [sample], masks, settings)
        assert np.all(arrays["ig"][:, :, 0] == 0) and np.abs(arrays["ig"][:, :, 1:]).max() > 0, method
        if method in ("stp", "per_layer", "joint"):
            delta = arrays["loss_full"][:, :, None] - arrays["loss_base"]
            assert np.abs(arrays["gap"]).max() < np.abs(delta).max()
        if method == "per_layer":
            assert list(arrays["path_names"]) == ["L1", "L2"]
        table = aggregate(arrays | {"meta_json": np.array(__import__("json").dumps(meta))})
        assert sorted(table["layer"].unique()) == [1, 2]
    with pytest.raises(ConfigError, match="ig.layers"):
        attribute_sample(
            engine, sample, masks[sample.sample_id], AttributionSettings(mask_probs=[0.5], layer_range=[1, 3])
        )
    engine.close()


def test_loss_sum_is_sum_of_masked_ce():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    sample = _sample()
    mean = _scored(adapter, sample, weighting="mean")
    total = _scored(adapter, sample, weighting="sum")
    engine = GateEngine(adapter)
    a = engine.losses(mean, torch.arange(2), torch.ones(2, N_LAYERS, N_HEADS))
    b = engine.losses(total, torch.arange(2), torch.ones(2, N_LAYERS, N_HEADS))
    np.testing.assert_allclose(b.numpy(), a.numpy() * np.array(mean.n_scored), rtol=1e-12)


def _toy_dump(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ig = rng.normal(size=(n, 2, N_LAYERS, N_HEADS)).astype(np.float32)
    return {
        "ig": ig,
        "sample_ids": np.array([f"s{i}" for i in range(n)]),
        "mask_probs": np.array([0.2, 0.5]),
        "meta_json": np.array('{"settings": {"method": "stp"}}'),
    }


def test_postprocess_applied_per_sample_before_averaging():
    arrays = _toy_dump()
    x = arrays["ig"].astype(np.float64).mean(1)  # [N, L, H]
    for post, f in (("signed", lambda y: y), ("abs", np.abs), ("relu", lambda y: np.maximum(y, 0))):
        table = aggregate(arrays, post)
        np.testing.assert_allclose(table["importance"].to_numpy(), f(-x).mean(0).ravel(), rtol=1e-12)
        assert table.loc[table["rank"] == 1, "importance"].item() == table["importance"].max()
    np.testing.assert_array_equal(aggregate(arrays)["importance"], -aggregate(arrays)["score"])
    assert not np.allclose(aggregate(arrays, "abs")["importance"], np.abs(aggregate(arrays)["importance"]))


def test_export_round_trip_and_imports(tmp_path):
    arrays = _toy_dump(5)
    heads = aggregate(arrays, "abs")
    write_exports(arrays, heads, tmp_path / "head_importance.pt", tmp_path / "per_sample_ig.pt")
    data = torch.load(tmp_path / "head_importance.pt", weights_only=True)
    assert sorted(data["importance_scores"]) == list(range(N_LAYERS))
    for layer, scores in data["importance_scores"].items():
        assert scores.dtype == torch.float32 and scores.shape == (N_HEADS,)
        expected = heads[heads["layer"] == layer].sort_values("head")["importance"].to_numpy()
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    assert data["metadata"]["postprocess"] == "abs" and data["metadata"]["settings"]["method"] == "stp"
    per = torch.load(tmp_path / "per_sample_ig.pt", weights_only=True)
    np.testing.assert_allclose(per["per_sample_ig"].numpy(), per_sample_scores(arrays).reshape(5, -1), rtol=1e-6)
    back = load_importance_file(tmp_path / "head_importance.pt", N_LAYERS, N_HEADS)
    np.testing.assert_allclose(back, importance_matrix(arrays, "abs"), rtol=1e-6)


def test_import_errors_name_the_file(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"importance_scores": {0: torch.zeros(N_HEADS + 1)}, "metadata": {}}, wrong)
    with pytest.raises(ConfigError, match=r"compare.importance_files.old: .*wrong.pt: has \[5\] heads"):
        load_importance_file(wrong, N_LAYERS, N_HEADS, key="compare.importance_files.old")
    bad = tmp_path / "bad.pt"
    torch.save({"importance_scores": {0: [0.1, 0.2]}}, bad)
    with pytest.raises(ConfigError, match=r"bad.pt: importance_scores\[0\] is not a 1-D float tensor"):
        load_importance_file(bad, N_LAYERS, N_HEADS)
    pickled = tmp_path / "pickled.pt"
    torch.save({"importance_scores": {0: torch.zeros(N_HEADS)}, "obj": Sample("a", np.zeros(2), 0, 1)}, pickled)
    with pytest.raises(ConfigError, match="pickled.pt: cannot be read safely"):
        load_importance_file(pickled, N_LAYERS, N_HEADS)
    high = tmp_path / "high.pt"
    torch.save({"importance_scores": {N_LAYERS: torch.zeros(N_HEADS)}}, high)
    with pytest.raises(ConfigError, match="outside the model"):
        load_importance_file(high, N_LAYERS, N_HEADS)


def test_dump_of_stp_saves_and_loads(tmp_path):
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    sample = _sample()
    masks = draw_masks([sample], [0.5], "bernoulli", 0)
    settings = AttributionSettings(method="stp", steps=2, mask_probs=[0.5], options={"path_samples": 3})
    arrays, meta = _run(GateEngine(adapter), [sample], masks, settings)
    save_npz(tmp_path / "d.npz", arrays, meta)
    back = load_dump(tmp_path / "d.npz")
    assert back["gap"].shape == (1, 1, 3) and list(back["path_names"]) == ["P0", "P1", "P2"]


STP_CONFIG_CASES = {
    "path_samples_zero": ({"ig": {"path_samples": 0}}, "path_samples"),
    "mask_samples_zero": ({"objective": {"mask_samples": 0}}, "mask_samples"),
    "layers_out_of_range": ({"ig": {"layers": [1, N_LAYERS]}}, "ig.layers"),
    "layers_reversed": ({"ig": {"layers": [2, 1]}}, "ig.layers"),
    "layers_one_value": ({"ig": {"layers": [1]}}, "ig.layers"),
    "layers_with_layer_shards": ({"ig": {"layers": [0, 1]}, "shard": {"layers": 1}}, "ig.layers"),
    "unknown_stp_rule": ({"ig": {"stp_rule": "simpson"}}, "stp_rule"),
    "unknown_postprocess": ({"report": {"postprocess": "square"}}, "postprocess"),
    "loss_normalize_typo": ({"objective": {"weighting": "mean_masked"}}, "weighting"),
    "missing_importance_file": ({"compare": {"importance_files": {"old": "nope.pt"}}}, "importance_files.old"),
    "importance_file_not_tensors": ({"compare": {"importance_files": {"old": "lists.pt"}}}, "not a 1-D float"),
    "importance_file_wrong_shape": ({"compare": {"importance_files": {"old": "wide.pt"}}}, "wide.pt: has [5] heads"),
    "tol_with_stp": ({"ig": {"tol": 0.01}}, "ig.tol: adaptive refinement applies to the quadrature paths"),
    "importance_name_clash": ({"compare": {"importance_files": {"stp": "ok.pt"}}}, "clash"),
    "importance_named_random": ({"compare": {"importance_files": {"random": "ok.pt"}}}, "['random'] are labels"),
    "importance_named_unpruned": ({"compare": {"importance_files": {"unpruned": "ok.pt"}}}, "reserved: random"),
}


@pytest.mark.parametrize("case", sorted(STP_CONFIG_CASES))
def test_stp_config_errors_before_any_rule(tmp_path, case):
    import yaml
    from helpers import write_tiny_project

    from headattr.pipeline.checks import validate_config

    changes, message = STP_CONFIG_CASES[case]
    write_tiny_project(tmp_path, methods=("stp", "stp_layer"), extra=changes)
    torch.save({"importance_scores": {0: [0.1] * N_HEADS}}, tmp_path / "lists.pt")
    torch.save({"importance_scores": {x: torch.zeros(N_HEADS + 1) for x in range(N_LAYERS)}}, tmp_path / "wide.pt")
    torch.save({"importance_scores": {x: torch.zeros(N_HEADS) for x in range(N_LAYERS)}}, tmp_path / "ok.pt")
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    with pytest.raises(ConfigError) as info:
        validate_config(config, tmp_path)
    assert message in str(info.value)


def test_stp_config_keys_and_units(tmp_path):
    import yaml
    from helpers import write_tiny_project

    from headattr.pipeline.checks import validate_config
    from headattr.pipeline.keys import units

    write_tiny_project(tmp_path, methods=("stp", "per_layer"))
    plain = validate_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), tmp_path)
    write_tiny_project(tmp_path, methods=("stp", "per_layer"), extra={"ig": {"layers": [1, 2]}})
    ranged = validate_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), tmp_path)
    a, b = units(plain), units(ranged)
    assert a[0].slices["ig"]["options"] == {"path_samples": 4, "path_seed": None, "stp_rule": "riemann_stieltjes"}
    assert "layer_range" not in a[1].slices["ig"] and b[1].slices["ig"]["layer_range"] == [1, 2]
    assert a[1].keys["masks"] == b[1].keys["masks"] and a[1].keys["ig"] != b[1].keys["ig"]


def test_stp_layer_rows_start_at_their_layer_and_match_the_full_model():
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter, _sample(), mask_samples=2)
    paths = stp_layer_paths(N_LAYERS, N_HEADS, "s0", 0.0, 2, 3)
    cached, full = GateEngine(adapter, rows_per_pass=5), GateEngine(adapter, rows_per_pass=5, prefix_cache=False)
    starts = []
    original = cached.gradients

    def spy(scored, row_p, gates, describe=None, from_layer=None):
        starts.append(sorted(set(from_layer.tolist())))
        return original(scored, row_p, gates, describe, from_layer)

    cached.gradients = spy
    a = integrated_gradients(cached, scored, paths, "riemann_stieltjes", 3)
    b = integrated_gradients(full, scored, paths, "riemann_stieltjes", 3)
    cached.close(), full.close()
    assert starts == [[0]] + [[q // 2] for q in range(paths.n_paths)]  # the all-on row, then each path's layer
    np.testing.assert_allclose(a.ig, b.ig, atol=1e-10)
    np.testing.assert_allclose(a.loss_base, b.loss_base, atol=1e-10)


def test_imported_rankings_enter_the_method_comparison():
    from headattr.analysis.diagnostics import method_diagnostics

    arrays = {"stp": _toy_dump(4, 0), "joint": _toy_dump(4, 1)}
    theirs = importance_matrix(arrays["stp"], "abs")
    out = method_diagnostics(arrays, {"topk": [3, 5]}, {"theirs": theirs}, "abs")
    row = out["comparison"].set_index(["method_a", "method_b"]).loc[("stp", "theirs")]
    assert row["pearson"] == pytest.approx(1.0) and row["top3_overlap"] == 1.0
    assert list(out["specificity"]["method"]) == ["stp", "joint"]


def test_benchmark_stp_rows_agree(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_ig", Path(__file__).parents[1] / "bench" / "bench_ig.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = [
        "--size",
        "llama-smoke",
        "--steps",
        "2",
        "--no-memory",
        "--skip-captum",
        "--captum-batch",
        "4",
        "--threads",
        "1",
    ]
    assert bench.main([*argv, "--methods", "stp", "stp_layer", "--path-samples", "1"]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("llama-smoke")]
    assert {(r[1], r[2]) for r in table} >= {("stp", "plain"), ("stp", "engine"), ("stp_layer", "engine-noprefix")}
    assert all(r[-1] == "ok" for r in table)


def test_users_config_is_their_default_run():
    from pathlib import Path

    import yaml

    from headattr.pipeline.checks import validate_config
    from headattr.pipeline.keys import units

    root = Path(__file__).parents[1]
    config = validate_config(yaml.safe_load((root / "configs" / "users-stp.yaml").read_text()), root)
    stp = next(u for u in units(config) if u.method == "stp")
    assert stp.slices["ig"]["options"] == {"path_samples": 4, "path_seed": None, "stp_rule": "riemann_stieltjes"}
    assert stp.slices["ig"]["steps"] == 8 and stp.slices["ig"]["baseline"] == 0.0
    assert stp.slices["masks"]["mask_probs"] == [0.15, 0.3, 0.5, 0.7, 0.9] and "mask_samples" not in stp.slices["masks"]
    assert config["objective"]["weighting"] == "mean" and config["report"]["postprocess"] == "abs"


@pytest.mark.parametrize("method", ["stp", "stp_layer"])
def test_paths_with_one_start_share_one_start_loss_call(method):
    adapter = Adapter(tiny_bert().double(), mask_token_id=4)
    scored = _scored(adapter, _sample())
    engine = GateEngine(adapter, rows_per_pass=16)
    build = stp_paths if method == "stp" else stp_layer_paths
    paths = build(N_LAYERS, N_HEADS, "s0", 0.1, 3, 0)
    starts = []
    losses = engine.losses
    engine.losses = lambda s, row_p, gates, *a, **k: starts.append(gates[0].clone()) or losses(s, row_p, gates, *a, **k)
    together = integrated_gradients(engine, scored, paths, "riemann_stieltjes", 4)
    engine.losses = losses
    singles = [
        integrated_gradients(
            engine,
            scored,
            ThresholdPaths(paths.start[q : q + 1], paths.threshold[q : q + 1], [paths.names[q]], torch.ones(1)),
            "riemann_stieltjes",
            4,
        )
        for q in range(paths.n_paths)
    ]
    engine.close()
    distinct = 1 if method == "stp" else N_LAYERS  # one start per layer's P paths, one for all STP paths
    assert len(starts) == distinct and all((s != 1).any() for s in starts)
    np.testing.assert_array_equal(together.loss_base, np.concatenate([s.loss_base for s in singles], 1))
