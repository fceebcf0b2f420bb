"""Deletion curves: switch heads off in ranked or random order and measure loss and accuracy on held-out samples.

A curve is the mean masked-diffusion loss and masked-token accuracy (over samples and their mask
probabilities, each (sample, p) row weighted equally) with round(fraction * n_heads) heads off, at each
fraction. Rankings follow importance = -score (scores are raw quantities of the loss, negative = the head
lowers it): ``most_first`` removes the most important heads first, ``least_first`` the least important.
``random`` curves remove heads in ``np.random.default_rng(seed).permutation(n_heads)`` order.
``candidates`` (flat head indices; default all) limits every order to those heads and fractions to their count:
with ``ig.layers`` only the attributed heads are ranked, so heads never gated are never removed.

``one_shot`` ranks once; ``iterative`` asks a callable for new scores given the current gates before every
step (as Michel et al.'s ``mask_heads``) and only ever switches further heads off among those still on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..objective.loss import ScoredInput

FRACTIONS = tuple(round(0.05 * k, 2) for k in range(11))
ORDERS = ("most_first", "least_first")
RANDOM_SEEDS = (0, 1, 2, 3, 4)
CURVE_COLUMNS = ["mode", "method", "order", "seed", "fraction", "n_heads_off", "loss", "accuracy"]

Reattribute = Callable[[torch.Tensor], np.ndarray]


def check_fractions(fractions) -> list[float]:
    """Sorted unique fractions in [0, 1], with 0 added (the reference every summary is measured against)."""
    values = sorted({0.0, *(float(f) for f in fractions)})
    if values[-1] > 1:
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    return values


def heads_off(fractions: Sequence[float], n_heads: int) -> list[int]:
    """round(fraction * n_heads), halves rounded up, per fraction."""
    return [min(n_heads, math.floor(f * n_heads + 0.5)) for f in fractions]


def removal_order(scores: np.ndarray, order: str) -> np.ndarray:
    """Flat head indices in removal order (stable on ties): ``most_first`` = ascending score, i.e. largest
    importance (-score) first; ``least_first`` = descending score."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("scores must be finite to rank heads")
    if order == "most_first":
        return np.argsort(flat, kind="stable")
    if order == "least_first":
        return np.argsort(-flat, kind="stable")
    raise ValueError(f"order: {order!r} is not one of {ORDERS}")


def _gates_from_order(order: np.ndarray, counts: Sequence[int], shape: tuple[int, int]) -> torch.Tensor:
    """[len(counts), L, H]: all on, then the first counts[k] heads of ``order`` off."""
    gates = torch.ones(len(counts), shape[0] * shape[1])
    for k, count in enumerate(counts):
        gates[k, torch.as_tensor(order[:count], dtype=torch.long)] = 0.0
    return gates.reshape(len(counts), *shape)


def _candidates(candidates, shape) -> np.ndarray:
    n = shape[0] * shape[1]
    out = np.arange(n) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
    if not len(out) or out[0] < 0 or out[-1] >= n:
        raise ValueError(f"candidates must be a non-empty subset of the {n} head indices")
    return out


def _ranked(scores: np.ndarray, order: str, candidates: np.ndarray) -> np.ndarray:
    return candidates[removal_order(np.asarray(scores, dtype=np.float64).reshape(-1)[candidates], order)]


def _iterative_gates(
    reattribute: Reattribute, order: str, counts: Sequence[int], shape, candidates: np.ndarray
) -> torch.Tensor:
    """[len(counts), L, H]: before each step that removes heads, rescore at the current gates and switch off the
    next heads in ``order`` among the candidates still on."""
    gates, out, done = torch.ones(shape[0] * shape[1]), [], 0
    for count in counts:
        if count > done:
            scores = np.asarray(reattribute(gates.reshape(shape).clone()), dtype=np.float64).reshape(-1)
            still_on = candidates[gates.numpy()[candidates] == 1.0]
            ranked = still_on[removal_order(scores[still_on], order)]
            gates[torch.as_tensor(ranked[: count - done], dtype=torch.long)] = 0.0
            done = count
        out.append(gates.clone())
    return torch.stack(out).reshape(len(counts), *shape)


def mean_metrics(engine, scored_inputs: Sequence[ScoredInput], gates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(loss, accuracy), float64 [R] each, of gate rows [R, L, H]: means over samples and mask probabilities.

    Identical gate rows are evaluated once; one engine call per sample."""
    unique, inverse = torch.unique(gates.reshape(gates.shape[0], -1), dim=0, return_inverse=True)
    unique = unique.reshape(-1, *gates.shape[1:])
    loss, acc = torch.zeros(len(unique), dtype=torch.float64), torch.zeros(len(unique), dtype=torch.float64)
    for scored in scored_inputs:
        n_p = scored.n_p
        rows = unique.repeat_interleave(n_p, 0)
        row_loss, row_acc = engine.losses_and_accuracy(scored, torch.arange(n_p).repeat(len(unique)), rows)
        loss += row_loss.double().reshape(-1, n_p).mean(1)
        acc += row_acc.double().reshape(-1, n_p).mean(1)
    n = len(scored_inputs)
    return (loss / n)[inverse].numpy(), (acc / n)[inverse].numpy()


def _curves(engine, scored_inputs, labelled_gates, fractions, counts) -> pd.DataFrame:
    """Evaluate every curve's gates in one go; ``labelled_gates`` is [(mode, method, order, seed, gates [F, L, H])]."""
    if not scored_inputs:
        raise ValueError("deletion curves need at least one held-out sample")
    loss, acc = mean_metrics(engine, scored_inputs, torch.cat([g for *_, g in labelled_gates]))
    n_f = len(fractions)
    frames = [
        pd.DataFrame(
            {
                "mode": mode,
                "method": method,
                "order": order,
                "seed": pd.array([seed] * n_f, dtype="Int64"),
                "fraction": fractions,
                "n_heads_off": counts,
                "loss": loss[i * n_f : (i + 1) * n_f],
                "accuracy": acc[i * n_f : (i + 1) * n_f],
            }
        )
        for i, (mode, method, order, seed, _) in enumerate(labelled_gates)
    ]
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]


def _random_gates(mode, seeds, counts, shape, candidates: np.ndarray) -> list:
    n = len(candidates)
    return [
        (
            mode,
            "random",
            "random",
            int(s),
            _gates_from_order(candidates[np.random.default_rng(s).permutation(n)], counts, shape),
        )
        for s in seeds
    ]


def deletion_curves(
    engine,
    scored_inputs: Sequence[ScoredInput],
    rankings: Mapping[str, np.ndarray],
    fractions=FRACTIONS,
    orders: Sequence[str] = ORDERS,
    seeds: Sequence[int] = RANDOM_SEEDS,
    candidates=None,
) -> pd.DataFrame:
    """One-shot curves: each method's scores [L, H] ranked once, in each order, plus random orders per seed.

    Returns a tidy frame with :data:`CURVE_COLUMNS` (``mode`` = "one_shot"; ``seed`` is <NA> for rankings).
    """
    fractions = check_fractions(fractions)
    shape = (engine.adapter.n_layers, engine.adapter.n_heads)
    candidates = _candidates(candidates, shape)
    counts = heads_off(fractions, len(candidates))
    labelled = [
        ("one_shot", name, order, None, _gates_from_order(_ranked(scores, order, candidates), counts, shape))
        for name, scores in rankings.items()
        for order in orders
    ]
    labelled += _random_gates("one_shot", seeds, counts, shape, candidates)
    return _curves(engine, scored_inputs, labelled, fractions, counts)


def iterative_deletion_curves(
    engine,
    scored_inputs: Sequence[ScoredInput],
    reattribute: Mapping[str, Reattribute],
    fractions=FRACTIONS,
    orders: Sequence[str] = ORDERS,
    seeds: Sequence[int] = RANDOM_SEEDS,
    candidates=None,
) -> pd.DataFrame:
    """Iterative curves: ``reattribute[method](gates [L, H] float32) -> scores [L, H]`` is called before every
    step that removes heads; heads already off stay off. Random curves as in :func:`deletion_curves`.

    Returns a tidy frame with :data:`CURVE_COLUMNS` (``mode`` = "iterative")."""
    fractions = check_fractions(fractions)
    shape = (engine.adapter.n_layers, engine.adapter.n_heads)
    candidates = _candidates(candidates, shape)
    counts = heads_off(fractions, len(candidates))
    labelled = [
        ("iterative", name, order, None, _iterative_gates(fn, order, counts, shape, candidates))
        for name, fn in reattribute.items()
        for order in orders
    ]
    labelled += _random_gates("iterative", seeds, counts, shape, candidates)
    return _curves(engine, scored_inputs, labelled, fractions, counts)


def reattributor(method: Callable, engine, scored_inputs: Sequence[ScoredInput], **settings) -> Reattribute:
    """A ``reattribute`` callable from a method taking ``gates`` (e.g. first_order, leave_one_out): its ``ig``
    at the current gates, averaged over ``scored_inputs`` and mask probabilities."""

    def scores(gates: torch.Tensor) -> np.ndarray:
        per_sample = [method(engine, s, gates=gates, **settings).ig.mean(0) for s in scored_inputs]
        return np.mean(per_sample, axis=0)

    return scores


def _curve_summary(curve: pd.DataFrame, tolerance: float) -> dict:
    curve = curve.sort_values("fraction")
    loss0, acc0 = curve["loss"].iloc[0], curve["accuracy"].iloc[0]
    later = curve[curve["fraction"] > 0]
    within = (curve["loss"] <= loss0 * (1 + tolerance)).to_numpy()
    last_ok = int(np.argmin(within)) - 1 if not within.all() else len(within) - 1
    return {
        "aopc": float((later["loss"] - loss0).mean()) if len(later) else math.nan,
        "aopc_accuracy": float((acc0 - later["accuracy"]).mean()) if len(later) else math.nan,
        "removable_fraction": float(curve["fraction"].iloc[last_ok]),
    }


def deletion_summary(curves: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """One row per curve (mode, method, order, seed) with

    - ``aopc``: mean over fractions > 0 of loss(fraction) - loss(0) (higher = the order hurts sooner),
    - ``aopc_accuracy``: mean over fractions > 0 of accuracy(0) - accuracy(fraction),
    - ``removable_fraction``: the largest fraction up to which every loss stays within loss(0) * (1 + tolerance)
      (meaningful for ``least_first``: how much can be pruned),
    - ``random_aopc``, ``random_removable_fraction``: means over the random seeds of the same mode, and
      ``aopc_vs_random`` = aopc - random_aopc.
    """
    keys = ["mode", "method", "order", "seed"]
    rows = [
        dict(zip(keys, key, strict=True)) | _curve_summary(curve, tolerance)
        for key, curve in curves.groupby(keys, dropna=False, sort=False)
    ]
    summary = pd.DataFrame(rows)
    summary["seed"] = summary["seed"].astype("Int64")
    random = summary[summary["method"] == "random"].groupby("mode")[["aopc", "removable_fraction"]].mean()
    random = random.rename(columns={"aopc": "random_aopc", "removable_fraction": "random_removable_fraction"})
    summary = summary.merge(random, how="left", left_on="mode", right_index=True)
    summary["aopc_vs_random"] = summary["aopc"] - summary["random_aopc"]
    return summary.reset_index(drop=True)
