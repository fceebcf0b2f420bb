"""Keep-masks, the stratified ELBO counts and the low-confidence sampler: pure functions, hand-made references."""

import itertools

import numpy as np
import pytest
import torch

from headattr.errors import ConfigError
from headattr.evaluation.elbo import elbo_masks, request_generator, stratified_counts
from headattr.evaluation.keepmask import keep_mask, pruned_count
from headattr.evaluation.sampler import (
    check_schedule,
    cut_at_stops,
    cut_at_token,
    low_confidence_generate,
    transfer_schedule,
)

IMPORTANCE = np.array(
    [
        [0.9, 0.1, 0.5, 0.3],
        [0.2, 0.8, 0.7, 0.0],
        [0.6, 0.4, 1.0, -0.5],
    ]
)


def _pruned(keep):
    return sorted(map(tuple, np.argwhere(~keep).tolist()))


# ----- keep-masks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction, count", [(0.0, 0), (0.1, 1), (0.125, 2), (0.25, 3), (0.5, 6), (0.75, 9)])
def test_global_most_and_least_prune_exact_counts_of_the_ranked_heads(fraction, count):
    flat = IMPORTANCE.reshape(-1)
    most = {divmod(i, 4) for i in np.argsort(-flat)[:count]}
    least = {divmod(i, 4) for i in np.argsort(flat)[:count]}
    keep_most = keep_mask(IMPORTANCE, "most", fraction, keep_at_least_one_head=False)
    keep_least = keep_mask(IMPORTANCE, "least", fraction, keep_at_least_one_head=False)
    assert pruned_count(keep_most) == pruned_count(keep_least) == count  # 12 heads: round(f * 12), halves up
    assert set(_pruned(keep_most)) == most
    assert set(_pruned(keep_least)) == least


def test_ties_go_to_the_lower_flat_index_for_every_order():
    flat = np.zeros((2, 3))
    assert _pruned(keep_mask(flat, "most", 0.5, keep_at_least_one_head=False)) == [(0, 0), (0, 1), (0, 2)]
    assert _pruned(keep_mask(flat, "least", 0.5, keep_at_least_one_head=False)) == [(0, 0), (0, 1), (0, 2)]
    tied = np.array([[1.0, 2.0, 2.0], [2.0, 0.0, 1.0]])
    assert _pruned(keep_mask(tied, "most", 2 / 6, keep_at_least_one_head=False)) == [(0, 1), (0, 2)]
    assert _pruned(keep_mask(tied, "least", 3 / 6, keep_at_least_one_head=False)) == [(0, 0), (1, 1), (1, 2)]


def test_per_layer_prunes_the_same_count_in_every_layer():
    keep = keep_mask(IMPORTANCE, "most", 0.5, "per_layer")
    assert (~keep).sum(axis=1).tolist() == [2, 2, 2]
    assert _pruned(keep) == [(0, 0), (0, 2), (1, 1), (1, 2), (2, 0), (2, 2)]
    least = keep_mask(IMPORTANCE, "least", 0.25, "per_layer")
    assert _pruned(least) == [(0, 1), (1, 3), (2, 3)]
    assert (~keep_mask(IMPORTANCE, "least", 0.125, "per_layer")).sum(axis=1).tolist() == [1, 1, 1]  # 0.5 -> 1


def test_keep_at_least_one_head_skips_a_layers_last_head_and_keeps_counts_exact():
    # layer 0 holds the 4 most important heads: with the floor, the 4th most important overall is skipped
    imp = np.array([[9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 3.0, 4.0]])
    keep = keep_mask(imp, "most", 0.5, keep_at_least_one_head=True)
    assert _pruned(keep) == [(0, 0), (0, 1), (0, 2), (1, 3)]
    assert _pruned(keep_mask(imp, "most", 0.5, keep_at_least_one_head=False)) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    full = keep_mask(IMPORTANCE, "least", 1.0, keep_at_least_one_head=True)
    assert keep.sum(axis=1).min() >= 1 and full.sum(axis=1).tolist() == [1, 1, 1]
    assert full[0, 0] and full[1, 1] and full[2, 2]  # the most important head of each layer survives
    assert keep_mask(IMPORTANCE, "most", 1.0, "per_layer").sum(axis=1).tolist() == [1, 1, 1]
    assert not keep_mask(IMPORTANCE, "most", 1.0, keep_at_least_one_head=False).any()


def test_layer_range_limits_pruning_and_the_count_base():
    keep = keep_mask(IMPORTANCE, "most", 0.5, layers=[1, 2], keep_at_least_one_head=False)
    assert keep[0].all()
    assert _pruned(keep) == [(1, 1), (1, 2), (2, 0), (2, 2)]  # round(0.5 * 8) = 4 among layers 1-2
    with pytest.raises(ConfigError, match="layers"):
        keep_mask(IMPORTANCE, "most", 0.5, layers=[3])


def test_random_orders_are_seeded_exact_and_nested():
    masks = [keep_mask(IMPORTANCE, "random", f, seed=7) for f in (0.1, 0.25, 0.5)]
    assert [pruned_count(m) for m in masks] == [1, 3, 6]
    for small, large in itertools.pairwise(masks):
        assert not (~small & large).any()  # pruned at the smaller fraction => pruned at the larger
    assert (keep_mask(IMPORTANCE, "random", 0.5, seed=7) == masks[2]).all()
    others = {tuple(keep_mask(IMPORTANCE, "random", 0.5, seed=s).reshape(-1)) for s in range(6)}
    assert len(others) > 1
    per_layer = keep_mask(IMPORTANCE, "random", 0.5, "per_layer", seed=3)
    assert (~per_layer).sum(axis=1).tolist() == [2, 2, 2]


def test_keep_mask_rejects_bad_settings():
    with pytest.raises(ConfigError, match="order"):
        keep_mask(IMPORTANCE, "biggest", 0.1)
    with pytest.raises(ConfigError, match="fraction"):
        keep_mask(IMPORTANCE, "most", 1.5)
    with pytest.raises(ConfigError, match="convention"):
        keep_mask(IMPORTANCE, "most", 0.1, "layerwise")
    with pytest.raises(ConfigError, match="non-finite"):
        keep_mask(np.array([[np.nan, 1.0]]), "most", 0.5)


# ----- ELBO counts -----------------------------------------------------------------------------------------------


def test_stratified_counts_are_k0_plus_fixed_offsets_so_each_row_is_uniform():
    length, rows = 3, 2
    seen = set()
    for seed in range(60):
        counts = stratified_counts(rows, length, request_generator(seed, [1], [2, 3, 4]))
        assert ((counts - 1 - (counts[0] - 1)) % length).tolist() == [0, 2]  # round(1 * 3 / 2) = 2 (half up)
        seen.add(int(counts[0]))
    assert seen == {1, 2, 3}  # k0 takes every value, so each row's count runs over 1..3 once per k0
    counts = stratified_counts(8, 4, request_generator(0, [], [1]))
    assert sorted(counts.tolist()) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_elbo_masks_have_exact_counts():
    gen = request_generator(1, [5], [6, 7, 8, 9, 10])
    counts = stratified_counts(10, 5, gen)
    masks = elbo_masks(counts, 5, gen)
    assert masks.sum(1).tolist() == counts.tolist()


# ----- sampler ---------------------------------------------------------------------------------------------------


def test_transfer_schedule_matches_llada():
    assert transfer_schedule(5, 3) == [2, 2, 1]
    assert transfer_schedule(4, 4) == [1, 1, 1, 1]
    assert transfer_schedule(2, 4) == [1, 1, 0, 0]
    assert check_schedule(8, 4, 6) == 3
    with pytest.raises(ValueError, match="block_length"):
        check_schedule(8, 3, 8)
    with pytest.raises(ValueError, match="steps"):
        check_schedule(8, 4, 5)


MASK, V = 0, 8


def _fixed_logits(probs_by_pos):
    """A logits function ignoring its input: position j has log(probs_by_pos[j]) (uniform where not given)."""

    def fn(x):
        logits = torch.zeros(x.shape[0], x.shape[1], V, dtype=torch.float64)
        for pos, probs in probs_by_pos.items():
            logits[:, pos] = torch.log(torch.as_tensor(probs, dtype=torch.float64))
        return logits

    return fn


def _peak(token, p):
    probs = np.full(V, (1 - p) / (V - 1))
    probs[token] = p
    return probs


def test_sampler_unmasks_the_most_confident_tokens_of_the_current_block_only():
    # prompt at 0; answer positions 1..4 in blocks [1, 2] and [3, 4]; 4 steps = 2 per block = 1 token per step
    conf = {1: _peak(3, 0.5), 2: _peak(5, 0.9), 3: _peak(6, 0.99), 4: _peak(7, 0.6)}
    trace = []
    out = low_confidence_generate(_fixed_logits(conf), torch.tensor([[2]]), 4, 2, 4, MASK, trace)
    assert out.tolist() == [[2, 3, 5, 6, 7]]
    unmasked = [torch.nonzero(t[0]).flatten().tolist() for t in trace]
    assert unmasked == [[2], [1], [3], [4]]  # position 3 (0.99) waits for its block


def test_sampler_counts_per_step_follow_the_schedule_and_ties_go_left():
    tie = _peak(1, 0.7)  # identical rows: an exact tie
    conf = {1: tie, 2: tie, 3: _peak(3, 0.8), 4: _peak(4, 0.2), 5: tie}
    trace = []
    out = low_confidence_generate(_fixed_logits(conf), torch.tensor([[6], [6]]), 5, 5, 3, MASK, trace)
    assert out[0].tolist() == [6, 1, 1, 3, 4, 1]
    unmasked = [torch.nonzero(t[0]).flatten().tolist() for t in trace]
    assert unmasked == [[1, 3], [2, 5], [4]]  # schedule [2, 2, 1]; ties at 0.7 to the leftmost
    assert all((t[0] == t[1]).all() for t in trace)


def test_sampler_never_predicts_the_mask_token():
    probs = np.full(V, 0.05)
    probs[MASK], probs[4] = 0.5, 0.15
    out = low_confidence_generate(_fixed_logits({1: probs / probs.sum()}), torch.tensor([[2]]), 1, 1, 1, MASK)
    assert out.tolist() == [[2, 4]]


def test_sampler_reads_the_current_sequence():
    """Each step's prediction depends on what is already unmasked (token at j = 1 + token at j - 1)."""

    def fn(x):
        logits = torch.full((*x.shape, V), -10.0, dtype=torch.float64)
        for j in range(1, x.shape[1]):
            prev = x[0, j - 1]
            if prev != MASK:
                logits[0, j, (int(prev) % (V - 1)) + 1] = 10.0
        return logits

    out = low_confidence_generate(fn, torch.tensor([[3]]), 4, 4, 4, MASK)
    assert out.tolist() == [[3, 4, 5, 6, 7]]


def test_sampler_keeps_the_template_suffix_fixed_and_visible():
    """The suffix (e.g. [SEP] = 7) sits after the masked span in every forward, is never unmasked or predicted,
    and is cut from the output; the model reads it (here: the last answer token copies it)."""
    seen = []

    def fn(x):
        seen.append(x.clone())
        logits = torch.full((*x.shape, V), -10.0, dtype=torch.float64)
        logits[0, 1:-2, 5] = 10.0
        logits[0, -2, int(x[0, -1])] = 10.0  # the position before the suffix predicts the suffix's token
        logits[0, -1, 1] = 20.0  # most confident of all, but not a generated position
        return logits

    out = low_confidence_generate(fn, torch.tensor([[3]]), 3, 3, 3, MASK, suffix=[7])
    assert out.tolist() == [[3, 5, 5, 7]]
    assert all(x.shape == (1, 5) and int(x[0, -1]) == 7 for x in seen)
    assert int((seen[0] == MASK).sum()) == 3


def test_stop_sequences_cut_at_the_earliest_one():
    assert cut_at_stops("a b STOP c END", ["END", "STOP"]) == "a b "
    assert cut_at_stops("a b", ["x", ""]) == "a b"
    assert cut_at_token([5, 6, 2, 7, 3], [3, 2]) == [5, 6]
    assert cut_at_token([5, 6], [None]) == [5, 6]
