"""Adaptive block-sparse attention: weights, keep ratios, block masks and the masked attention, each against a
reference written here from the formulas (the users' allocate_adaptive_sparsity_from_importance and
create_attention_block_mask semantics)."""

import math

import numpy as np
import pytest
import torch
from helpers import llada_standin, random_ids, tiny_bert, tiny_llama

from headattr.errors import ConfigError
from headattr.models.adapters import Adapter
from headattr.models.sparse import (
    SparseAttention,
    block_density,
    block_mask,
    generation_start,
    importance_weights,
    keep_ratios,
)


def _percentile(values, q):
    """Linear interpolation between order statistics at (n - 1) q."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)


def _reference_weights(importance, scale, increases=True, groups=None):
    flat = [float(x) for x in np.ravel(importance)]
    lo, hi = _percentile(flat, 0.05), _percentile(flat, 0.95)
    w = []
    for x in flat:
        n = min(max((x - lo) / (hi - lo + 1e-8), 0.0), 1.0)
        w.append(min(max(1 + (1 if increases else -1) * scale * 2 * (n - 0.5), 0.1), 10.0))
    mean = sum(w) / len(w)
    w = np.array(w).reshape(np.shape(importance)) / mean
    if groups:
        size = w.shape[1] // groups
        for g in range(groups):
            w[:, g * size : (g + 1) * size] = w[:, g * size : (g + 1) * size].mean(1, keepdims=True)
    return w


@pytest.mark.parametrize("scale", [2 / 3, 4.0, 12.0])  # 4: the 0.1 floor binds; 12: both ends bind
@pytest.mark.parametrize("increases", [True, False])
def test_weights_equal_the_formula(scale, increases):
    importance = np.random.default_rng(1).normal(size=(3, 8)) ** 3  # heavy tails: the percentiles clip
    w = importance_weights(importance, scale, increases)
    np.testing.assert_allclose(w, _reference_weights(importance, scale, increases), rtol=1e-12)
    assert w.mean() == pytest.approx(1.0)
    # n spans [0, 1]: unclamped w runs from 1 - scale to 1 + scale; the clamp to [0.1, 10] binds for 4 and 12
    low, high = max(1 - scale, 0.1), min(1 + scale, 10.0)
    assert w.min() / w.max() == pytest.approx(low / high)


def test_inverted_weights_swap_the_order_and_gqa_shares_weights_per_group():
    importance = np.random.default_rng(2).uniform(size=(2, 8))
    up, down = importance_weights(importance), importance_weights(importance, increases_keep=False)
    assert (np.argsort(up.ravel(), kind="stable") == np.argsort(-down.ravel(), kind="stable")).all()
    gqa = importance_weights(importance, n_kv_heads=2)
    np.testing.assert_allclose(gqa, _reference_weights(importance, 2 / 3, groups=2), rtol=1e-12)
    assert (gqa[:, :4] == gqa[:, :1]).all() and (gqa[:, 4:] == gqa[:, 4:5]).all()
    np.testing.assert_allclose(importance_weights(np.ones((2, 8))), 1.0)  # constant importance: uniform


def test_keep_ratios_clamp_and_reject_bad_select():
    r = keep_ratios(np.array([0.001, 1.0, 4.0]), 0.3, 0.01)
    np.testing.assert_allclose(r, [0.01, 0.3, 1.0])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="sparse select"):
            keep_ratios(np.ones(3), bad)


def _reference_mask(probs, ratios, bs, gen_length):
    """Loops over rows and blocks: top floor(r nK) + 1 blocks by mean |p| (zero-padded), generation split."""
    b_, h_, q_len, k_len = probs.shape
    nq, nk = -(-q_len // bs), -(-k_len // bs)
    last = next((i for i in range(nq) if q_len - i * bs <= gen_length), nq - 1)

    def top(imp, r):
        k = min(math.floor(r * len(imp)) + 1, len(imp))
        order = sorted(range(len(imp)), key=lambda j: (-imp[j], j))
        return set(order[:k])

    out = np.zeros((b_, h_, nq, nk), dtype=bool)
    for b in range(b_):
        for h in range(h_):
            for i in range(nq):
                rows = probs[b, h, i * bs : (i + 1) * bs]
                imp = [np.abs(rows[:, j * bs : (j + 1) * bs]).sum() / bs**2 for j in range(nk)]
                for j in top(imp, ratios[h]):
                    out[b, h, i, j] = j < last
                tail = rows[:, last * bs :] / rows[:, last * bs :].sum(-1, keepdims=True)
                imp = [np.abs(tail[:, j * bs : (j + 1) * bs]).sum() / bs**2 for j in range(nk - last)]
                for j in top(imp, ratios[h]):
                    out[b, h, i, last + j] = True
    return out


def _random_probs(b=2, h=4, t=23, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)


@pytest.mark.parametrize("gen_length", [0, 9, 100])
def test_block_mask_equals_the_reference(gen_length):
    probs = _random_probs()  # 23 positions, block 4: 6 key blocks, the last one partial
    ratios = np.array([0.01, 0.3, 0.55, 1.0])  # 1 block + 0; floor(1.8) + 1; floor(3.3) + 1; all
    mask = block_mask(probs, ratios, 4, gen_length)
    np.testing.assert_array_equal(
        mask.numpy(), _reference_mask(probs.numpy().astype(np.float64), ratios, 4, gen_length)
    )
    assert generation_start(23, 4, gen_length) == {0: 5, 9: 4, 100: 0}[gen_length]
    np.testing.assert_allclose(block_density(mask), mask.numpy().sum((0, 2, 3)) / (2 * 6 * 6))
    assert mask[:, 3].all()  # r = 1 keeps every block


def test_uniform_ratios_give_every_head_the_same_density():
    probs = _random_probs(h=6, t=40, seed=3)
    mask = block_mask(probs, np.full(6, 0.3), 5, gen_length=40)  # one region: top floor(0.3 * 8) + 1 = 3 of 8
    np.testing.assert_allclose(block_density(mask), 3 / 8)
    with pytest.raises(ConfigError, match="sparse block_size"):
        block_mask(probs, np.full(6, 0.3), 41)


def _llada_reference(model, ids, masks, bs):
    """The stand-in's forward with each layer's attention restricted to its block mask, written out here."""
    tr = model.model.transformer
    x = tr["wte"](ids)
    for i, block in enumerate(tr["blocks"]):
        h = block.norm1(x)
        b, t, _ = h.shape
        q, k, v = (p(h).view(b, t, 4, -1).transpose(1, 2) for p in (block.q_proj, block.k_proj, block.v_proj))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        keep = masks[i].repeat_interleave(bs, -2).repeat_interleave(bs, -1)[..., :t, :t]
        att = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v
        x = x + block.attn_out(att.transpose(1, 2).reshape(b, t, -1))
        x = x + block.ff(block.norm2(x))
    return tr["ff_out"](tr["ln_f"](x))


def test_sparse_attention_is_the_exact_masked_attention_and_select_one_is_dense():
    model = llada_standin()
    adapter = Adapter(model, mask_token_id=4)
    ids = torch.as_tensor(random_ids(22, 5))[None].repeat(2, 1)
    ratios = keep_ratios(importance_weights(np.random.default_rng(0).uniform(size=(3, 4)), scale=2.0), 0.3)
    sparse = SparseAttention(adapter, ratios, block_size=4, gen_length=8)
    with torch.no_grad():
        dense = model(input_ids=ids)[0]
        with sparse.building():
            built = model(input_ids=ids)[0]
        with sparse.applied():
            out = model(input_ids=ids)[0]
        reference = _llada_reference(model, ids, sparse.masks, 4)
    torch.testing.assert_close(built, dense, rtol=0, atol=0)  # the building pass itself is dense
    assert 0 < sparse.densities.mean() < 0.9 and not torch.allclose(out, dense, atol=1e-4)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse.densities[1], block_density(sparse.masks[1]))
    full = SparseAttention(adapter, keep_ratios(np.ones((3, 4)), 1.0), block_size=4, gen_length=8)
    with torch.no_grad():
        with full.building():
            model(input_ids=ids)
        with full.applied():
            same = model(input_ids=ids)[0]
    torch.testing.assert_close(same, dense, rtol=0, atol=0)
    np.testing.assert_allclose(full.densities, 1.0)


@pytest.mark.parametrize("build", [lambda: tiny_bert(attn="eager"), lambda: tiny_bert(attn="sdpa"), tiny_llama])
def test_eager_and_sdpa_paths_apply_the_same_masks(build):
    """Eager (scores masked before the softmax) and SDPA (mask in attn_mask) agree, GQA included."""
    ids = torch.as_tensor(random_ids(21, 6))[None]
    model = build()
    adapter = Adapter(model, mask_token_id=4)
    ratios = np.full((3, 4), 0.2)
    sparse = SparseAttention(adapter, ratios, block_size=3)
    with torch.no_grad():
        with sparse.building():
            model(input_ids=ids)
        with sparse.applied():
            out = model(input_ids=ids).logits
        eager = build()
        eager.config._attn_implementation = "eager"
        other = SparseAttention(Adapter(eager, mask_token_id=4), ratios, block_size=3)
        other.masks = sparse.masks
        with other.applied():
            reference = eager(input_ids=ids).logits
        dense = model(input_ids=ids).logits
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, dense, atol=1e-3)


def test_flex_attention_equals_the_exact_masked_path_on_cpu():
    """FlexAttention with the block mask (eager on the CPU) and the exact masked SDPA give the same model output."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = llada_standin()  # SDPA without a mask: the calls FlexAttention takes over
    adapter = Adapter(model, mask_token_id=4)
    ids = torch.as_tensor(random_ids(24, 7))[None].repeat(2, 1)
    ratios = keep_ratios(importance_weights(np.random.default_rng(4).uniform(size=(3, 4)), scale=2.0), 0.3)
    exact = SparseAttention(adapter, ratios, block_size=4, gen_length=8, backend="exact")
    flex = SparseAttention(adapter, ratios, block_size=4, gen_length=8, backend="flex")
    with torch.no_grad():
        with exact.building():
            model(input_ids=ids)
        flex.masks = dict(exact.masks)
        with exact.applied():
            want = model(input_ids=ids)[0]
        with flex.applied():
            got = model(input_ids=ids)[0]
    assert len(flex._flex_masks) == 3  # every layer ran through FlexAttention
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="sparse backend"):
        SparseAttention(adapter, ratios, 4, backend="triton")
