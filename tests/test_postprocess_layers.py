"""report.postprocess and ig.layers reach every diagnostic and the pruning validation (issue 11, items 4 and 5).

Each diagnostic of a dump attributed on layers [a, b] must equal the same diagnostic of the dump cut down to
those layers, with the model's layer numbers; with ``abs`` every ranking statistic must be that of |IG|.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_validation import SignalEngine, _Scored

from headattr.analysis import diagnostics
from headattr.analysis.deletion import deletion_curves, iterative_deletion_curves

L, H, N, P = 5, 4, 9, 2
LAYERS = [1, 3]
CFG = {"n_boot": 10, "n_perm": 10, "topk": [2, 5]}


def dump(seed: int, layer_range=None, n_layers: int = L) -> dict:
    """IG with mixed signs (abs and signed rankings differ); zeros outside ``layer_range``."""
    rng = np.random.default_rng(seed)
    ig = rng.normal(0, 0.1, size=(N, P, n_layers, H)) + np.linspace(-0.2, 0.2, n_layers * H).reshape(n_layers, H)
    settings = {}
    if layer_range is not None:
        outside = [i for i in range(n_layers) if not layer_range[0] <= i <= layer_range[1]]
        ig[:, :, outside] = 0.0
        settings["layer_range"] = list(layer_range)
    return {
        "ig": ig.astype(np.float32),
        "categories": np.array(["code", "math", "chat"] * (N // 3)),
        "mask_probs": np.array([0.15, 0.5]),
        "sample_ids": np.array([f"s{i}" for i in range(N)]),
        "meta_json": np.array(json.dumps({"settings": settings})),
    }


def cut(arrays: dict, layers: list[int], transform=None) -> dict:
    """The dump restricted to ``layers`` (no layer range left), its IG optionally transformed."""
    ig = arrays["ig"][:, :, layers].astype(np.float64)
    return {**arrays, "ig": (ig if transform is None else transform(ig)), "meta_json": np.array("{}")}


def shift_layers(value, layers):
    if isinstance(value, pd.DataFrame) and "bin" in value:
        start, end = [layers[i] for i in value["start"]], [layers[i - 1] + 1 for i in value["end"]]
        return value.assign(bin=[f"{a}-{b - 1}" for a, b in zip(start, end, strict=True)], start=start, end=end)
    if isinstance(value, pd.DataFrame) and "layer" in value:
        value = value.assign(layer=[layers[i] for i in value["layer"]])
        if "label" in value:
            value = value.assign(label=[f"L{a}H{b}" for a, b in zip(value["layer"], value["head"], strict=True)])
    if isinstance(value, dict):
        return {k: (layers[v] if k == "layer" else shift_layers(v, layers)) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_layers(v, layers) for v in value]
    return value


def assert_tables_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        g, w = got[name], want[name]
        if isinstance(w, pd.DataFrame):
            pd.testing.assert_frame_equal(g.reset_index(drop=True), w.reset_index(drop=True), check_dtype=False)
        elif isinstance(w, np.ndarray):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
        else:
            assert json.dumps(g, sort_keys=True, default=str) == json.dumps(w, sort_keys=True, default=str), name


def test_unit_diagnostics_of_a_layer_range_equal_those_of_the_cut_dump():
    full = dump(0, layer_range=[1, 3])
    layers = [1, 2, 3]
    got = diagnostics.unit_diagnostics(full, CFG)
    want = shift_layers(diagnostics.unit_diagnostics(cut(full, layers), CFG), layers)
    assert_tables_equal(got, want)
    assert sorted(set(got["category_means"]["layer"])) == layers
    # the zeros of layers 0 and 4 would have entered the per-sample correlations
    wrong = diagnostics.unit_diagnostics({**full, "meta_json": np.array("{}")}, CFG)
    assert not np.allclose(wrong["sample_correlation"], got["sample_correlation"])


def test_seed_and_method_diagnostics_of_a_layer_range():
    a, b = dump(1, layer_range=[1, 3]), dump(2, layer_range=[1, 3])
    layers = [1, 2, 3]
    got = diagnostics.seed_diagnostics(a, b, ("s1", "s2"), CFG)
    want = shift_layers(diagnostics.seed_diagnostics(cut(a, layers), cut(b, layers), ("s1", "s2"), CFG), layers)
    assert_tables_equal(got, want)
    assert got["per_layer"]["layer"].tolist() == layers
    assert got["trend"]["bin"].tolist() == ["1-1", "2-2", "3-3"] and got["trend"]["end"].tolist() == [2, 3, 4]
    imported = {"theirs": np.arange(L * H, dtype=np.float64).reshape(L, H)}
    got = diagnostics.method_diagnostics({"x": a, "y": b}, CFG, imported)
    want = diagnostics.method_diagnostics(
        {"x": cut(a, layers), "y": cut(b, layers)}, CFG, {"theirs": imported["theirs"][layers]}
    )
    assert_tables_equal(got, want)
    with pytest.raises(ValueError, match="different layers"):
        diagnostics.seed_diagnostics(a, dump(3, layer_range=[0, 3]), ("s1", "s2"), CFG)


@pytest.mark.parametrize("postprocess", ["abs", "relu"])
def test_diagnostics_rank_the_postprocessed_importance(postprocess):
    """Unit and seed diagnostics with abs / relu equal those of a dump whose per-sample scores are -f(-x)."""
    f = np.abs if postprocess == "abs" else (lambda y: np.maximum(y, 0.0))
    a, b = dump(4), dump(5)
    layers = list(range(L))

    def per_sample_view(arrays):
        """f applied per sample after the mean over p (the users' order); per p for the mask-ratio tables."""
        x = arrays["ig"].astype(np.float64)
        return {**arrays, "ig": -f(-x)}

    got = diagnostics.unit_diagnostics(a, CFG, postprocess)
    want = diagnostics.unit_diagnostics(per_sample_view(cut(a, layers)), CFG)
    ps = -f(-a["ig"].astype(np.float64).mean(1))
    np.testing.assert_allclose(got["sample_correlation"], np.corrcoef(ps.reshape(N, -1)), atol=1e-12)
    pd.testing.assert_frame_equal(got["mask_ratio_agreement"], want["mask_ratio_agreement"])
    signed = diagnostics.unit_diagnostics(a, CFG)
    assert not np.allclose(signed["sample_correlation"], got["sample_correlation"])
    seeds = diagnostics.seed_diagnostics(a, b, ("a", "b"), CFG, postprocess)
    sa, sb = (-f(-d["ig"].astype(np.float64).mean(1)).mean(0) for d in (a, b))
    np.testing.assert_allclose(seeds["scores"]["score_a"], sa.ravel(), atol=1e-12)
    np.testing.assert_allclose(seeds["scores"]["score_b"], sb.ravel(), atol=1e-12)


def test_pruning_never_removes_heads_outside_the_candidates():
    engine = SignalEngine()
    n_layers, n_heads = engine.adapter.n_layers, engine.adapter.n_heads
    candidates = [n_heads + h for h in range(n_heads)]  # layer 1 only
    scores = np.random.default_rng(0).normal(size=(n_layers, n_heads))
    fractions = [0.0, 0.5, 1.0]
    curves = deletion_curves(engine, [_Scored()], {"m": scores}, fractions, seeds=[0, 1], candidates=candidates)
    assert curves["n_heads_off"].tolist()[:3] == [0, n_heads // 2, n_heads]  # fractions of the 4 candidates
    # all candidates off = the loss of exactly layer 1 off, for every order
    g = torch.ones(1, n_layers, n_heads)
    g[0, 1] = 0
    want = engine.losses(_Scored(), torch.tensor([0, 1]), g.repeat(2, 1, 1)).double().mean().item()
    assert np.allclose(curves.loc[curves["fraction"] == 1.0, "loss"], want)
    # most-first removes the candidates with the lowest score first
    half = np.argsort(scores[1], kind="stable")[:2]
    g = torch.ones(1, n_layers, n_heads)
    g[0, 1, torch.as_tensor(half)] = 0
    want = engine.losses(_Scored(), torch.tensor([0, 1]), g.repeat(2, 1, 1)).double().mean().item()
    row = curves[(curves["order"] == "most_first") & (curves["fraction"] == 0.5)]
    assert row["loss"].item() == pytest.approx(want)
    # no candidates given = all heads, as before
    default = deletion_curves(engine, [_Scored()], {"m": scores}, fractions, seeds=[0, 1])
    every = deletion_curves(engine, [_Scored()], {"m": scores}, fractions, seeds=[0, 1], candidates=range(12))
    pd.testing.assert_frame_equal(default, every)
    iterative = iterative_deletion_curves(
        engine, [_Scored()], {"m": lambda gates: scores}, fractions, seeds=[0], candidates=candidates
    )
    all_off = curves.loc[curves["fraction"] == 1.0, "loss"].iloc[0]
    assert np.allclose(iterative.loc[iterative["fraction"] == 1.0, "loss"], all_off)
    with pytest.raises(ValueError, match="subset"):
        deletion_curves(engine, [_Scored()], {"m": scores}, fractions, candidates=[99])
