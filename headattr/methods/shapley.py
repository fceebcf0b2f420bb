"""Shapley values of heads by antithetic permutation sampling; the value function is the loss itself.

Games, one per path q (``scope``):
- ``per_layer``: game q = layer l, players = its heads, v(S) = L(heads S of layer l on, the rest of layer l off,
  every other layer on). Q = number of layers scored.
- ``all``: one game, players = every head, v(S) = L(heads S on, every other head off). Q = 1.

phi_i = E_pi[v(S_i^pi + i) - v(S_i^pi)], averaged over permutations pi drawn in antithetic pairs (pi and its
reverse). Efficiency holds per permutation by telescoping: the marginals of one permutation sum to
v(all) - v(none) = L(all on) - L(base_q), because every permutation starts and ends at the same two
evaluations. Hence ``loss_base`` [n_p, Q] = L(base_q), ``ig_sum`` [n_p, Q] = sum of phi over game q's players,
and ``gap`` is rounding only. Sign as IG: negative = turning the head on lowers the loss; importance = -phi.

Permutation pair k of game q for a sample is drawn from an RNG keyed by (seed, sample_id, q, k), so results
do not depend on how permutations are split into rounds, on other layers, or on row batching. With a
prefix-caching engine every row runs from its first layer with a gate off (``per_layer`` game l: from layer l).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.gate_engine import clear_prefix, prefix_hint
from ..errors import ConfigError
from ..objective.loss import ScoredInput
from .ig import SampleAttribution

SCOPES = ("per_layer", "all")
MAX_EXACT_PLAYERS = 8


@dataclass
class Games:
    """Q games over [L, H] gates: ``base`` [Q, L, H] (all players off), ``players`` [Q, N] flat head indices."""

    base: torch.Tensor
    players: torch.Tensor
    keys: list[int]
    names: list[str]

    @property
    def n_games(self) -> int:
        return self.base.shape[0]

    @property
    def n_players(self) -> int:
        return self.players.shape[1]


def make_games(scope: str, n_layers: int, n_heads: int, layers=None) -> Games:
    """The games of ``scope`` in :data:`SCOPES` (``layers`` restricts ``per_layer`` to a subset)."""
    if scope == "all":
        players = torch.arange(n_layers * n_heads)[None]
        return Games(torch.zeros(1, n_layers, n_heads), players, [0], ["all"])
    if scope != "per_layer":
        raise ConfigError(f"shapley.scope: {scope!r} is not one of {SCOPES}")
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if not layers or any(not 0 <= x < n_layers for x in layers):
        raise ConfigError(f"shapley.layers: {layers} must be a non-empty subset of 0..{n_layers - 1}")
    base = torch.ones(len(layers), n_layers, n_heads)
    for q, layer in enumerate(layers):
        base[q, layer] = 0.0
    players = torch.stack([torch.arange(n_heads) + layer * n_heads for layer in layers])
    return Games(base, players, [layer + 1 for layer in layers], [f"L{layer}" for layer in layers])


def sample_key(sample_id: str) -> int:
    """A stable 64-bit integer for ``sample_id`` (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")


def antithetic_permutations(seed: int, sample_id: str, game_key: int, first_pair: int, n_pairs: int, n: int):
    """Pairs ``first_pair .. first_pair + n_pairs - 1`` as int64 [2 * n_pairs, n]: rows 2k, 2k+1 = pi, reversed pi."""
    key = sample_key(sample_id)
    perms = []
    for pair in range(first_pair, first_pair + n_pairs):
        pi = np.random.default_rng([seed, key, game_key, pair]).permutation(n)
        perms += [pi, pi[::-1]]
    return torch.as_tensor(np.stack(perms), dtype=torch.long)


def all_permutations(n: int) -> torch.Tensor:
    """Every permutation of n players as antithetic pairs: int64 [n!, n] (rows 2k, 2k+1 reverse each other)."""
    if n == 1:
        return torch.zeros(2, 1, dtype=torch.long)
    pairs = [(pi, pi[::-1]) for pi in itertools.permutations(range(n)) if pi < pi[::-1]]
    return torch.tensor([row for pair in pairs for row in pair], dtype=torch.long)


def game_endpoints(engine, scored: ScoredInput, games: Games) -> tuple[torch.Tensor, torch.Tensor]:
    """(L(all on) float64 [n_p], L(base_q) float64 [n_p, Q]) in one batched call."""
    n_p, (n_layers, n_heads) = scored.n_p, games.base.shape[1:]
    ends = torch.cat([torch.ones(1, n_layers, n_heads), games.base])
    rows = ends[None].expand(n_p, -1, -1, -1).reshape(-1, n_layers, n_heads)
    row_p = torch.arange(n_p).repeat_interleave(len(ends))
    losses = engine.losses(scored, row_p, rows, **prefix_hint(engine, rows)).reshape(n_p, len(ends))
    return losses[:, 0].double(), losses[:, 1:].double()


def marginal_contributions(
    engine, scored: ScoredInput, games: Games, perms: torch.Tensor, loss_full: torch.Tensor, loss_base: torch.Tensor
) -> torch.Tensor:
    """Marginal of every player in every permutation: float64 [n_p, Q, M, N], indexed by player position.

    ``perms`` is int64 [Q, M, N] (positions into ``games.players``). All interior prefixes (N - 1 per
    permutation, every p) run as rows of one engine call; the empty and full prefixes are ``loss_base`` and
    ``loss_full``, shared by every permutation, so each permutation's marginals sum exactly to their difference.
    """
    n_p, (n_q, n_perm, n) = scored.n_p, perms.shape
    n_layers, n_heads = games.base.shape[1:]
    rank = torch.empty_like(perms).scatter_(2, perms, torch.arange(n).expand(n_q, n_perm, n).contiguous())
    on = (rank[:, :, None, :] < torch.arange(1, n)[None, None, :, None]).float()  # [Q, M, N-1, N]
    gates = games.base.flatten(1)[:, None, None, :].repeat(1, n_perm, n - 1, 1)
    gates.scatter_(3, games.players[:, None, None, :].expand_as(on), on)
    rows = gates.reshape(1, -1, n_layers, n_heads).expand(n_p, -1, -1, -1).reshape(-1, n_layers, n_heads)
    per_p = n_q * n_perm * (n - 1)

    def describe(row: int) -> str:
        p, rest = divmod(row, per_p)
        q, rest = divmod(rest, n_perm * (n - 1))
        m, k = divmod(rest, n - 1)
        return f"p={scored.mask_probs[p]}, game {games.names[q]}, permutation {m}, prefix {k + 1}/{n}"

    row_p = torch.arange(n_p).repeat_interleave(per_p)
    if per_p:
        mid = engine.losses(scored, row_p, rows, describe, **prefix_hint(engine, rows)).double()
    else:
        mid = torch.zeros(0, dtype=torch.float64)
    values = torch.cat(
        [
            loss_base[:, :, None, None].expand(n_p, n_q, n_perm, 1),
            mid.reshape(n_p, n_q, n_perm, n - 1),
            loss_full[:, None, None, None].expand(n_p, n_q, n_perm, 1),
        ],
        dim=-1,
    )
    steps = values.diff(dim=-1)  # step j adds the player at position j of the permutation
    return torch.zeros_like(steps).scatter_(3, perms[None].expand_as(steps), steps)


def _check(n_permutations: int, max_permutations: int | None, tol: float, seed: int) -> int:
    max_permutations = n_permutations if max_permutations is None else int(max_permutations)
    for name, value in (("n_permutations", n_permutations), ("max_permutations", max_permutations)):
        if value < 2 or value % 2:
            raise ConfigError(f"shapley.{name}: must be even and >= 2 (antithetic pairs), got {value}")
    if max_permutations < n_permutations:
        raise ConfigError(f"shapley.max_permutations: {max_permutations} is below n_permutations {n_permutations}")
    if tol < 0 or seed < 0:
        raise ConfigError(f"shapley: tol and seed must be >= 0, got tol={tol}, seed={seed}")
    return max_permutations


def shapley_values(
    engine,
    scored: ScoredInput,
    scope: str = "per_layer",
    n_permutations: int = 32,
    max_permutations: int | None = None,
    tol: float = 0.0,
    seed: int = 0,
    layers=None,
    exact: bool = False,
) -> SampleAttribution:
    """Shapley values of the loss for one sample, every mask probability.

    Runs ``n_permutations`` permutations, then further rounds of ``n_permutations`` while the largest standard
    error exceeds ``tol`` and fewer than ``max_permutations`` (default ``n_permutations``) have run. ``exact``
    enumerates all N! permutations instead (N <= 8 players). ``extras``: ``se`` [n_p, L, H] (std over
    permutation-pair means / sqrt(n_pairs); NaN with a single pair), ``n_permutations`` (scalar) and
    ``efficiency_gap`` [n_p, Q] (largest |sum of one permutation's marginals - (L(all on) - L(base_q))|).
    """
    max_permutations = _check(n_permutations, max_permutations, float(tol), int(seed))
    games = make_games(scope, engine.adapter.n_layers, engine.adapter.n_heads, layers)
    n_p, n_q, n = scored.n_p, games.n_games, games.n_players
    if exact and n > MAX_EXACT_PLAYERS:
        raise ConfigError(f"shapley.exact: {n} players is too many to enumerate (at most {MAX_EXACT_PLAYERS})")
    loss_full, loss_base = game_endpoints(engine, scored, games)
    target = (loss_full[:, None] - loss_base)[:, :, None]
    pair_means, worst, done = [], torch.zeros(n_p, n_q, dtype=torch.float64), 0
    while True:
        if exact:
            perms = all_permutations(n)[None].expand(n_q, -1, -1)
        else:
            size = min(n_permutations, max_permutations - done)
            perms = torch.stack(
                [antithetic_permutations(seed, scored.sample_id, key, done // 2, size // 2, n) for key in games.keys]
            )
        contrib = marginal_contributions(engine, scored, games, perms, loss_full, loss_base)  # [n_p, Q, M, N]
        worst = torch.maximum(worst, (contrib.sum(-1) - target).abs().amax(-1))
        pair_means.append(contrib.unflatten(2, (-1, 2)).mean(3))  # [n_p, Q, pairs, N]
        done += perms.shape[1]
        means = torch.cat(pair_means, 2)
        n_pairs = means.shape[2]
        se = means.std(2) / math.sqrt(n_pairs) if n_pairs > 1 else torch.full_like(means[:, :, 0], math.nan)
        if exact or done >= max_permutations or (n_pairs > 1 and float(se.max()) < tol):
            break
    clear_prefix(engine)
    phi = means.mean(2)  # [n_p, Q, N]
    return SampleAttribution(
        sample_id=scored.sample_id,
        ig=_to_heads(phi, games).float().numpy(),
        loss_full=loss_full.numpy(),
        loss_base=loss_base.numpy(),
        ig_sum=phi.sum(-1).numpy(),
        n_scored=np.asarray(scored.n_scored, dtype=np.int64),
        extras={
            "se": _to_heads(se, games).float().numpy(),
            "n_permutations": np.asarray(done, dtype=np.int64),
            "efficiency_gap": worst.numpy(),
        },
    )


def _to_heads(per_player: torch.Tensor, games: Games) -> torch.Tensor:
    """[n_p, Q, N] by player -> [n_p, L, H] by head (0 for heads in no game)."""
    n_layers, n_heads = games.base.shape[1:]
    out = torch.zeros(per_player.shape[0], n_layers * n_heads, dtype=per_player.dtype)
    out[:, games.players.flatten()] = per_player.flatten(1)
    return out.reshape(-1, n_layers, n_heads)
