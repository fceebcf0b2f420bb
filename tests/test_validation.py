"""Deletion curves: ranking order, random reproducibility, iterative re-attribution, summaries, a real model."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import N_HEADS, N_LAYERS, random_ids, tiny_bert

from headattr.analysis.deletion import (
    CURVE_COLUMNS,
    FRACTIONS,
    deletion_curves,
    deletion_summary,
    heads_off,
    iterative_deletion_curves,
    reattributor,
)
from headattr.data.samples import Sample
from headattr.engine.gate_engine import GateEngine
from headattr.methods.ablation import leave_one_out
from headattr.methods.first_order import first_order
from headattr.models.adapters import Adapter
from headattr.objective.loss import build_scored_input
from headattr.objective.masking import draw_masks

SIGNAL = (0, 1)  # the head that carries the signal
N = N_LAYERS * N_HEADS


WEIGHTS = 0.006 + 0.001 * torch.arange(N, dtype=torch.float64).reshape(N_LAYERS, N_HEADS)
WEIGHTS[SIGNAL] = 3.0


def toy_loss(g):
    """[R, L, H] -> [R]: 1 + sum of WEIGHTS over the heads that are off (3 for SIGNAL, 0.006 to 0.017 else)."""
    return 1 + ((1 - g) * WEIGHTS).sum((1, 2))


class SignalEngine:
    """Stands in for GateEngine over [3, 4] heads: the loss above (scaled by p index + 1) and an accuracy that
    drops to 0.4 without the signal head."""

    adapter = SimpleNamespace(n_layers=N_LAYERS, n_heads=N_HEADS)

    def losses(self, scored, row_p, gates, describe=None):
        return toy_loss(gates.double()) * (row_p + 1)

    def losses_and_accuracy(self, scored, row_p, gates, describe=None):
        g = gates.double()
        acc = 0.9 - 0.5 * (1 - g[:, SIGNAL[0], SIGNAL[1]]) - 0.01 * (1 - g).flatten(1).sum(1)
        return self.losses(scored, row_p, gates), acc


class _Scored:
    sample_id, mask_probs, n_p, n_scored = "toy", [0.2, 0.4], 2, [1, 1]


def expected_loss(gates):
    """Mean over the two mask probabilities (scales 1 and 2) of the toy loss."""
    return float(toy_loss(gates[None].double())[0]) * 1.5


@pytest.fixture
def scores():
    """Leave-one-out scores of the stand-in: the signal head is by far the most important."""
    return leave_one_out(SignalEngine(), _Scored()).ig.mean(0)


def first_steps(curves):
    return {
        key: curve.sort_values("fraction")["loss"].diff().iloc[1]
        for key, curve in curves.groupby(["method", "order", "seed"], dropna=False)
    }


def test_removing_the_signal_head_first_gives_the_largest_first_step(scores):
    curves = deletion_curves(SignalEngine(), [_Scored(), _Scored()], {"loo": scores}, seeds=(0, 1, 2))
    assert list(curves.columns) == CURVE_COLUMNS
    assert len(curves) == (2 + 3) * len(FRACTIONS)
    assert curves["seed"].dtype == "Int64" and curves.loc[curves["method"] == "loo", "seed"].isna().all()
    np.testing.assert_allclose(curves.loc[curves["fraction"] == 0, "loss"], expected_loss(torch.ones(3, 4)))
    for _, curve in curves.groupby(["order", "seed"], dropna=False):
        assert curve["n_heads_off"].tolist() == heads_off(FRACTIONS, N)
    steps = first_steps(curves)
    best = steps.pop(("loo", "most_first", pd.NA))
    assert best == pytest.approx(4.5) and best > max(steps.values())
    most = curves[curves["order"] == "most_first"]
    assert most["accuracy"].iloc[1] == pytest.approx(0.39)  # 0.9 - 0.5 (signal) - 0.01 (one head)


def test_summary_aopc_and_removable_fraction(scores):
    curves = deletion_curves(SignalEngine(), [_Scored()], {"loo": scores}, seeds=(0, 1, 2))
    summary = deletion_summary(curves, tolerance=0.05).set_index(["method", "order"])
    most, least = summary.loc[("loo", "most_first")], summary.loc[("loo", "least_first")]
    random = summary.loc[("random", "random")]
    assert len(random) == 3 and (random["aopc_random_mean"] == random["aopc"].mean()).all()
    assert most["aopc"] > most["aopc_random_mean"] > least["aopc"] > 0
    assert most["aopc_vs_random"] > 0 > least["aopc_vs_random"]
    assert least["aopc_accuracy"] == pytest.approx(np.mean([0.01 * k for k in heads_off(FRACTIONS, N)[1:]]))
    # least first removes heads of weight 0.006, 0.008, 0.009, ...: 5 heads (fraction 0.45) stay within +5 %, 6 do not
    assert least["removable_fraction"] == pytest.approx(0.45)
    assert most["removable_fraction"] == 0.0


def test_random_curves_are_reproducible_from_their_seeds(scores):
    run = [deletion_curves(SignalEngine(), [_Scored()], {}, seeds=(3, 4)) for _ in range(2)]
    pd.testing.assert_frame_equal(run[0], run[1])
    assert set(run[0]["order"]) == {"random"}
    counts = heads_off(FRACTIONS, N)
    for seed in (3, 4):
        order = np.random.default_rng(seed).permutation(N)
        curve = run[0][run[0]["seed"] == seed].sort_values("fraction")
        for count, loss in zip(counts, curve["loss"], strict=True):
            gates = torch.ones(N)
            gates[order[:count]] = 0.0
            assert loss == pytest.approx(expected_loss(gates.reshape(N_LAYERS, N_HEADS)))
    losses = [run[0].loc[run[0]["seed"] == s, "loss"].to_numpy() for s in (3, 4)]
    assert not np.array_equal(*losses)


def test_iterative_mode_rescores_and_never_turns_a_head_back_on(scores):
    seen = []
    loo = reattributor(leave_one_out, SignalEngine(), [_Scored()])

    def rescore(gates):
        seen.append(gates.clone())
        gates.fill_(1.0)  # a callable that tampers with its argument must not change the curve
        out = loo(seen[-1]).copy()
        out[SIGNAL] = -100.0  # still claims the signal head is the most important once it is off
        return out

    counts = heads_off(FRACTIONS, N)
    curves = iterative_deletion_curves(SignalEngine(), [_Scored()], {"loo": rescore}, orders=("most_first",), seeds=())
    assert set(curves["mode"]) == {"iterative"}
    assert len(seen) == len(set(counts)) - 1  # one re-attribution before every step that removes heads
    assert torch.equal(seen[0], torch.ones(N_LAYERS, N_HEADS))
    for before, after in zip(seen, seen[1:], strict=False):
        assert ((after == 0) | (after == 1)).all() and (after <= before).all()
    assert [int((g == 0).sum()) for g in seen] == sorted(set(counts))[:-1]
    assert seen[1][SIGNAL] == 0  # removed first, and stayed off
    rest = np.sort(np.delete(WEIGHTS.numpy().ravel(), SIGNAL[0] * N_HEADS + SIGNAL[1]))[::-1]
    expected = [1.5] + [1.5 * (4 + rest[: c - 1].sum()) for c in counts[1:]]  # signal first, then largest weights
    np.testing.assert_allclose(curves["loss"].to_numpy(), expected)


def test_iterative_with_fixed_scores_equals_one_shot(scores):
    engine, held_out = SignalEngine(), [_Scored()]
    one_shot = deletion_curves(engine, held_out, {"loo": scores}, seeds=(0,))
    iterative = iterative_deletion_curves(engine, held_out, {"loo": lambda gates: scores}, seeds=(0,))
    cols = ["method", "order", "seed", "fraction", "n_heads_off", "loss", "accuracy"]
    pd.testing.assert_frame_equal(one_shot[cols], iterative[cols])


def test_deletion_on_a_tiny_model():
    adapter = Adapter(tiny_bert(), mask_token_id=4)
    engine = GateEngine(adapter, rows_per_pass=64)
    probs = [0.3, 0.7]
    held_out = []
    for seed in (11, 12):
        sample = Sample(f"h{seed}", random_ids(14, seed), 2, 13, "x")
        masks = draw_masks([sample], probs, "bernoulli", 5, False)[sample.sample_id]
        held_out.append(build_scored_input(sample, masks, probs, "diffusion", "mean", 4, False))
    grad = np.mean([first_order(engine, s).ig.mean(0) for s in held_out], axis=0)
    fractions = (0.0, 0.25, 0.5)
    curves = pd.concat(
        [
            deletion_curves(engine, held_out, {"grad": grad}, fractions, seeds=(0,)),
            iterative_deletion_curves(
                engine, held_out, {"grad": reattributor(first_order, engine, held_out)}, fractions, seeds=(0,)
            ),
        ]
    )
    engine.close()
    full = np.mean([engine.losses(s, torch.arange(2), torch.ones(2, N_LAYERS, N_HEADS)).mean() for s in held_out])
    np.testing.assert_allclose(curves.loc[curves["fraction"] == 0, "loss"], full, rtol=1e-6)
    assert curves["accuracy"].between(0, 1).all() and list(curves["n_heads_off"].iloc[:3]) == [0, 3, 6]
    first = curves[(curves["mode"] == "one_shot") & (curves["order"] == "most_first")]["loss"].to_numpy()
    iterated = curves[(curves["mode"] == "iterative") & (curves["order"] == "most_first")]["loss"].to_numpy()
    assert first[1] == pytest.approx(iterated[1])  # the first step ranks by the same gradients
    summary = deletion_summary(curves)
    assert set(summary["mode"]) == {"one_shot", "iterative"} and summary["aopc"].notna().all()
