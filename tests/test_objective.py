"""Masks keyed by (seed, sample, p); the diffusion and causal losses against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILY_BUILDERS, N_HEADS, N_LAYERS, random_ids, tiny_gpt2

from headattr.data.samples import Sample, pack_samples, unpack_samples
from headattr.engine.gate_engine import GateEngine
from headattr.errors import ConfigError, DataError
from headattr.models.adapters import Adapter
from headattr.objective.loss import build_scored_input, token_cross_entropy
from headattr.objective.masking import draw_mask, draw_masks, pack_masks, unpack_masks


def _samples(n=12):
    return [Sample(f"id{i}", random_ids(20 + i, seed=i), 4, 18 + i, "c") for i in range(n)]


def test_masks_do_not_depend_on_batching_or_order():
    samples = _samples()
    full = draw_masks(samples, [0.15, 0.5], "bernoulli", 47)
    shuffled = [samples[i] for i in np.random.default_rng(1).permutation(len(samples))]
    parts = {}
    for chunk in (shuffled[:5], shuffled[5:]):
        parts.update(draw_masks(chunk, [0.15, 0.5], "bernoulli", 47))
    for sid, mask in full.items():
        assert np.array_equal(mask, parts[sid])
    other_seed = draw_masks(samples, [0.15, 0.5], "bernoulli", 48)
    assert any(not np.array_equal(full[s], other_seed[s]) for s in full)
    # a p's mask does not depend on which other p are in the list
    alone = draw_masks(samples, [0.5], "bernoulli", 47)
    assert all(np.array_equal(alone[s][0], full[s][1]) for s in full)


@pytest.mark.parametrize("mode", ["bernoulli", "exact"])
def test_target_region_is_respected(mode):
    for s in _samples():
        for shift in (False, True):
            mask = draw_mask(s, 0.9, mode, 3, shift)
            assert not mask[: s.target_start].any() and not mask[s.target_end :].any()
    edge = Sample("edge", random_ids(8), 0, 8)
    assert not any(draw_mask(edge, 1.0, mode, s, shift=True)[0] for s in range(20))
    assert draw_mask(edge, 1.0, mode, 0, shift=False)[0]


def test_exact_mode_masks_round_p_n_tokens():
    for s in _samples():
        for p in (0.1, 0.15, 0.5, 0.9, 1.0):
            assert draw_mask(s, p, "exact", 5).sum() == max(1, round(p * s.target_length))


def test_bernoulli_mode_masks_p_on_average():
    s = Sample("long", random_ids(2000), 0, 2000)
    for p in (0.15, 0.5, 0.9):
        counts = [draw_mask(Sample(f"x{i}", s.input_ids, 0, 2000), p, "bernoulli", 1).sum() for i in range(20)]
        assert abs(np.mean(counts) / 2000 - p) < 4 * np.sqrt(p * (1 - p) / 2000 / 20)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_bad_mask_probability(p):
    with pytest.raises(ConfigError, match="outside"):
        draw_masks(_samples(1), [p], "bernoulli", 0)


def test_empty_target_region_is_an_error():
    with pytest.raises(DataError, match="sample 'e'.*empty target region"):
        draw_mask(Sample("e", random_ids(5), 3, 3), 0.5, "bernoulli", 0)
    with pytest.raises(DataError, match="never scored"):
        draw_mask(Sample("e", random_ids(5), 0, 1), 0.5, "bernoulli", 0, shift=True)


def test_packing_round_trips():
    samples = _samples(4)
    masks = draw_masks(samples, [0.3, 0.6], "exact", 2)
    back = unpack_samples(pack_samples(samples))
    assert [(b.sample_id, b.target_start, b.target_end) for b in back] == [
        (s.sample_id, s.target_start, s.target_end) for s in samples
    ]
    assert all(np.array_equal(b.input_ids, s.input_ids) for b, s in zip(back, samples, strict=True))
    unpacked = unpack_masks(pack_masks(samples, masks, [0.3, 0.6]))
    assert all(np.array_equal(unpacked[k], masks[k]) for k in masks)


@pytest.mark.parametrize("family", ["bert", "dream"])
@pytest.mark.parametrize("weighting", ["mean", "inverse_p"])
def test_diffusion_loss_matches_a_direct_computation(family, weighting):
    model = FAMILY_BUILDERS[family]()
    adapter = Adapter(model, mask_token_id=4)
    s = Sample("a", random_ids(16), 2, 15)
    probs = [0.3, 0.8]
    masks = draw_masks([s], probs, "bernoulli", 11, adapter.shift_logits)["a"]
    scored = build_scored_input(s, masks, probs, "diffusion", weighting, 4, adapter.shift_logits)
    losses = GateEngine(adapter).losses(scored, torch.arange(2), torch.ones(2, N_LAYERS, N_HEADS))
    for i, p in enumerate(probs):
        ids = torch.as_tensor(s.input_ids).clone()
        pos = np.flatnonzero(masks[i])
        ids[pos] = 4
        with torch.no_grad():
            out = model(input_ids=ids[None])
            logits = (out.logits if hasattr(out, "logits") else out[0])[0]
        if adapter.shift_logits:  # Dream: the output at i - 1 scores token i
            logits = torch.cat([logits[:1], logits[:-1]], 0)
        ce = F.cross_entropy(logits[pos].double(), torch.as_tensor(s.input_ids[pos]), reduction="sum").item()
        n_target = s.target_length - (1 if adapter.shift_logits and s.target_start == 0 else 0)
        expected = ce / len(pos) if weighting == "mean" else ce / (p * n_target)
        assert losses[i].item() == pytest.approx(expected, rel=1e-5)


def test_causal_loss_equals_transformers_own_lm_loss():
    model = tiny_gpt2()
    adapter = Adapter(model)
    s = Sample("c", random_ids(14), 0, 14)
    scored = build_scored_input(s, None, [1.0], "causal")
    loss = GateEngine(adapter).losses(scored, torch.tensor([0]), torch.ones(1, N_LAYERS, N_HEADS))
    ids = torch.as_tensor(s.input_ids)[None]
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_objective_errors():
    s = Sample("a", random_ids(10), 2, 8)
    with pytest.raises(ConfigError, match="objective.kind"):
        build_scored_input(s, None, [0.5], "autoregressive")
    with pytest.raises(ConfigError, match="objective.weighting"):
        build_scored_input(s, np.zeros((1, 10), bool), [0.5], "diffusion", "median", 4)
    with pytest.raises(ConfigError, match="mask_token_id"):
        build_scored_input(s, np.zeros((1, 10), bool), [0.5], "diffusion", "mean", None)


def _confident_logits(margin: float, vocab: int = 6000, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits [n, vocab] whose target (a random token) leads the N(0, 1) others by ``margin``."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(n, vocab, generator=gen)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    logits[torch.arange(n), targets] = margin
    return logits, targets


@pytest.mark.parametrize("margin", [0.0, 8.0, 12.0, 16.0])
def test_token_cross_entropy_keeps_fp32_precision_where_the_target_is_certain(margin):
    logits, targets = _confident_logits(margin)
    z = logits.double().numpy()
    top = z.max(1, keepdims=True)
    log_p = z - top - np.log(np.exp(z - top).sum(1, keepdims=True))  # fp64 reference from the formula
    idx = np.arange(len(z)), targets.numpy()
    ref_loss = -log_p[idx]
    ref_grad = np.exp(log_p)
    ref_grad[idx] -= 1.0  # d CE / d logits = softmax - onehot
    x = logits.clone().requires_grad_(True)
    loss = token_cross_entropy(x, targets)
    loss.sum().backward()
    assert loss.dtype == torch.float32
    np.testing.assert_allclose(loss.detach().double().numpy(), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(x.grad.double().numpy()[idx], ref_grad[idx], rtol=2e-6)
    np.testing.assert_allclose(x.grad.double().numpy(), ref_grad, rtol=2e-5, atol=1e-12)
    if margin == 16:  # loss ~1e-3, as on the demo model's copy items: F.cross_entropy in fp32 is 100x worse
        plain = F.cross_entropy(logits, targets, reduction="none").double().numpy()
        assert np.abs(plain / ref_loss - 1).max() > 2e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_cross_entropy_bits_equal_autograd_through_logsumexp(dtype):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(40, 3001, generator=gen) * 6).to(dtype)
    targets = torch.randint(0, 3001, (40,), generator=gen)
    upstream = torch.randn(40, generator=gen).to(dtype)
    ref_in, x = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    others = ref_in.scatter(1, targets[:, None], float("-inf"))  # the composition autograd differentiates itself
    ref = F.softplus(torch.logsumexp(others, 1) - ref_in.gather(1, targets[:, None]).squeeze(1))
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), ref_in)
    loss = token_cross_entropy(x, targets)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), x, retain_graph=True)
    assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)
    with pytest.raises(RuntimeError, match="backward runs once"):
        torch.autograd.grad(loss.sum(), x)  # its one buffer was spent by the first backward
