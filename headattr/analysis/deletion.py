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


def sample_metrics(engine, scored_inputs: Sequence[ScoredInput], gates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(loss, accuracy), float64 [R, N] each, of gate rows [R, L, H] on each of the N samples: means over that
    sample's mask probabilities. Identical gate rows are evaluated once; one engine call per sample."""
    unique, inverse = torch.unique(gates.reshape(gates.shape[0], -1), dim=0, return_inverse=True)
    unique = unique.reshape(-1, *gates.shape[1:])
    loss = torch.zeros(len(unique), len(scored_inputs), dtype=torch.float64)
    acc = torch.zeros_like(loss)
    for i, scored in enumerate(scored_inputs):
        n_p = scored.n_p
        rows = unique.repeat_interleave(n_p, 0)
        row_loss, row_acc = engine.losses_and_accuracy(scored, torch.arange(n_p).repeat(len(unique)), rows)
        loss[:, i] = row_loss.double().reshape(-1, n_p).mean(1)
        acc[:, i] = row_acc.double().reshape(-1, n_p).mean(1)
    return loss[inverse].numpy(), acc[inverse].numpy()


def mean_metrics(engine, scored_inputs: Sequence[ScoredInput], gates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(loss, accuracy), float64 [R] each, of gate rows [R, L, H]: means over samples and mask probabilities."""
    loss, acc = sample_metrics(engine, scored_inputs, gates)
    return loss.mean(axis=1), acc.mean(axis=1)


def _curves(engine, scored_inputs, labelled_gates, fractions, counts, per_sample: bool = False) -> pd.DataFrame:
    """Evaluate every curve's gates in one go; ``labelled_gates`` is [(mode, method, order, seed, gates [F, L, H])].
    ``per_sample``: one row per (curve, fraction, sample) with the sample's index in column ``sample``."""
    if not scored_inputs:
        raise ValueError("deletion curves need at least one held-out sample")
    loss, acc = sample_metrics(engine, scored_inputs, torch.cat([g for *_, g in labelled_gates]))
    if not per_sample:
        loss, acc = loss.mean(axis=1, keepdims=True), acc.mean(axis=1, keepdims=True)
    n_f, n_s = len(fractions), loss.shape[1]
    frames = [
        pd.DataFrame(
            {
                "mode": mode,
                "method": method,
                "order": order,
                "seed": pd.array([seed] * n_f * n_s, dtype="Int64"),
                "fraction": np.repeat(fractions, n_s),
                "n_heads_off": np.repeat(counts, n_s),
                "loss": loss[i * n_f : (i + 1) * n_f].reshape(-1),
                "accuracy": acc[i * n_f : (i + 1) * n_f].reshape(-1),
                "sample": np.tile(np.arange(n_s), n_f),
            }
        )
        for i, (mode, method, order, seed, _) in enumerate(labelled_gates)
    ]
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS + (["sample"] if per_sample else [])]


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
    per_sample: bool = False,
) -> pd.DataFrame:
    """One-shot curves: each method's scores [L, H] ranked once, in each order, plus random orders per seed.

    Returns a tidy frame with :data:`CURVE_COLUMNS` (``mode`` = "one_shot"; ``seed`` is <NA> for rankings); with
    ``per_sample`` one row per held-out sample (column ``sample``) instead of their mean.
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
    return _curves(engine, scored_inputs, labelled, fractions, counts, per_sample)


def iterative_deletion_curves(
    engine,
    scored_inputs: Sequence[ScoredInput],
    reattribute: Mapping[str, Reattribute],
    fractions=FRACTIONS,
    orders: Sequence[str] = ORDERS,
    seeds: Sequence[int] = RANDOM_SEEDS,
    candidates=None,
    per_sample: bool = False,
) -> pd.DataFrame:
    """Iterative curves: ``reattribute[method](gates [L, H] float32) -> scores [L, H]`` is called before every
    step that removes heads; heads already off stay off. Random curves as in :func:`deletion_curves`.

    Returns a tidy frame with :data:`CURVE_COLUMNS` (``mode`` = "iterative"), per sample as there."""
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
    return _curves(engine, scored_inputs, labelled, fractions, counts, per_sample)


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


KEYS = ["mode", "method", "order", "seed"]


def _per_sample(curves: pd.DataFrame) -> pd.DataFrame:
    """Per-sample curves (mean curves count as one sample), seed <NA> as -1 so that it can be grouped on."""
    out = curves if "sample" in curves else curves.assign(sample=0)
    return out.assign(seed=out["seed"].astype("Int64").fillna(-1).astype(np.int64))


def curve_means(curves: pd.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Mean curves (:data:`CURVE_COLUMNS`) of per-sample curves with a bootstrap interval over samples per point:
    ``loss_lo``, ``loss_hi``, ``accuracy_lo``, ``accuracy_hi`` (see :func:`pruning_stats.curve_interval`)."""
    from .pruning_stats import curve_interval

    frames = []
    for _, part in _per_sample(curves).groupby(KEYS, sort=False):
        wide = {m: part.pivot(index="fraction", columns="sample", values=m) for m in ("loss", "accuracy")}
        mean = part.groupby("fraction").first()[[c for c in [*KEYS, "n_heads_off"] if c in part]].reset_index()
        for metric, table in wide.items():
            lo, hi = curve_interval(table.to_numpy(), n_boot, seed, level)
            mean = mean.assign(**{metric: table.mean(axis=1).to_numpy(), f"{metric}_lo": lo, f"{metric}_hi": hi})
        frames.append(mean)
    out = pd.concat(frames, ignore_index=True)
    out["seed"] = out["seed"].where(out["seed"] >= 0).astype("Int64")
    bands = [f"{m}_{e}" for m in ("loss", "accuracy") for e in ("lo", "hi")]
    return out[[c for c in CURVE_COLUMNS if c in out] + bands]


def sample_aopc(curves: pd.DataFrame) -> pd.DataFrame:
    """Per-sample AOPC, index (mode, method, order, seed with -1 for rankings) x columns sample: mean over
    fractions > 0 of loss(fraction) - loss(0) of that sample."""
    per = _per_sample(curves)
    wide = per.pivot_table(index=KEYS + ["sample"], columns="fraction", values="loss", sort=False)
    fractions = sorted(wide.columns)
    later = [f for f in fractions if f > 0]
    aopc = wide[later].sub(wide[fractions[0]], axis=0).mean(axis=1) if later else wide[fractions[0]] * math.nan
    return aopc.unstack("sample")


def deletion_summary(
    curves: pd.DataFrame, tolerance: float = 0.05, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """One row per curve (mode, method, order, seed) with

    - ``aopc``: mean over fractions > 0 of loss(fraction) - loss(0) (higher = the order hurts sooner),
    - ``aopc_accuracy``: mean over fractions > 0 of accuracy(0) - accuracy(fraction),
    - ``removable_fraction``: the largest fraction up to which every loss stays within loss(0) * (1 + tolerance)
      (meaningful for ``least_first``: how much can be pruned),
    - ``aopc_random_mean``, ``random_removable_fraction``: means over the random orders of the same mode, and
      ``aopc_vs_random`` = aopc - aopc_random_mean,
    - for ranked orders, against the random orders of the same mode (:func:`pruning_stats.aopc_uncertainty`):
      ``aopc_lo``/``aopc_hi``, ``random_q025``/``random_q975``, ``aopc_vs_random_lo``/``_hi``, ``p_vs_random``,
      ``verdict`` and ``worse_than_random``; ``n_samples`` and ``n_random`` say what they rest on.

    ``curves`` per sample (column ``sample``, :func:`deletion_curves` with ``per_sample``) give the intervals over
    samples; mean curves count as one sample (intervals over random orders only).
    """
    from .pruning_stats import aopc_uncertainty

    means = curve_means(curves, n_boot=1, seed=seed)
    rows = [
        dict(zip(KEYS, key, strict=True)) | _curve_summary(curve, tolerance)
        for key, curve in means.groupby(KEYS, dropna=False, sort=False)
    ]
    summary = pd.DataFrame(rows)
    summary["seed"] = summary["seed"].astype("Int64")
    random = summary[summary["method"] == "random"].groupby("mode")[["aopc", "removable_fraction"]].mean()
    random = random.rename(columns={"aopc": "aopc_random_mean", "removable_fraction": "random_removable_fraction"})
    summary = summary.merge(random, how="left", left_on="mode", right_index=True)
    summary["aopc_vs_random"] = summary["aopc"] - summary["aopc_random_mean"]
    per = sample_aopc(curves)
    stats = []
    for row in summary.itertuples(index=False):
        key = (row.mode, row.method, row.order, -1 if pd.isna(row.seed) else int(row.seed))
        rnd = per[(per.index.get_level_values("mode") == row.mode) & (per.index.get_level_values("method") == "random")]
        extra = {"n_samples": per.shape[1], "n_random": len(rnd)}
        if row.method != "random" and len(rnd) and row.order in ("most_first", "least_first"):
            u = aopc_uncertainty(per.loc[key].to_numpy(), rnd.to_numpy(), row.order, n_boot, seed, level)
            extra |= {k: v for k, v in u.items() if k not in ("aopc", "aopc_random_mean", "aopc_vs_random")}
        elif len(rnd):
            q = np.quantile(rnd.mean(axis=1).to_numpy(), [(1 - level) / 2, (1 + level) / 2])
            extra |= {"random_q025": float(q[0]), "random_q975": float(q[1])}
        stats.append(extra)
    return pd.concat([summary.reset_index(drop=True), pd.DataFrame(stats)], axis=1)
