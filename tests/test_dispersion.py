"""Attention dispersion: closed-form values on uniform and one-hot patterns."""

import math

import numpy as np
import pytest
import torch

from headattr.errors import ConfigError
from headattr.stats.dispersion import block_distribution, dispersion


def test_uniform_attention_has_maximal_dispersion():
    attn = np.full((2, 3, 5, 12), 1 / 12)  # every query spreads evenly over 12 keys
    d = dispersion(attn, block_size=4, topk_frac=0.5)  # 3 blocks of mass 1/3
    np.testing.assert_allclose(d["entropy"], math.log(3))
    np.testing.assert_allclose(d["entropy_norm"], 1.0)
    np.testing.assert_allclose(d["effective_blocks"], 3.0)
    np.testing.assert_allclose(d["topk_mass"], 2 / 3)  # ceil(0.5 * 3) = 2 blocks


def test_one_hot_attention_has_none():
    attn = np.zeros((1, 2, 4, 10))
    attn[..., 7] = 1.0  # every query looks at key 7 only
    d = dispersion(attn, block_size=3, topk_frac=0.1)  # 4 blocks (last one padded), all mass in block 2
    np.testing.assert_allclose(block_distribution(attn, 3), [[0, 0, 1, 0]] * 2, atol=1e-12)
    np.testing.assert_allclose(d["entropy"], 0.0, atol=1e-9)
    np.testing.assert_allclose(d["entropy_norm"], 0.0, atol=1e-9)
    np.testing.assert_allclose(d["effective_blocks"], 1.0, atol=1e-9)
    np.testing.assert_allclose(d["topk_mass"], 1.0)


def test_two_point_mixture_and_bad_shapes():
    attn = np.zeros((1, 1, 2, 4))
    attn[0, 0, 0, 0] = attn[0, 0, 1, 3] = 1.0  # the queries' mean puts 1/2 on keys 0 and 3
    d = dispersion(attn, block_size=1, topk_frac=0.25)
    assert d["entropy"][0] == pytest.approx(math.log(2))
    assert d["entropy_norm"][0] == pytest.approx(math.log(2) / math.log(4))
    assert d["topk_mass"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="batch, head, query, key"):
        dispersion(np.ones((2, 3)))


def _planted_uniform_bert():
    """tiny BERT whose queries and keys are zero in every layer: all scores 0, so attention is exactly uniform."""
    import torch
    from helpers import tiny_bert

    model = tiny_bert()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key):
                lin.weight.zero_()
                lin.bias.zero_()
    return model


def _scored(adapter, lengths, probs=(0.3, 0.7)):
    from helpers import random_ids

    from headattr.data.samples import Sample
    from headattr.objective.masking import draw_masks
    from headattr.pipeline.stages import scored_inputs

    samples = [Sample(f"s{i}", random_ids(n, i), 1, n - 1, "x") for i, n in enumerate(lengths)]
    masks = draw_masks(samples, list(probs), "bernoulli", 0, adapter.shift_logits)
    objective = {"kind": "diffusion", "mask_probs": list(probs), "weighting": "mean"}
    return scored_inputs(samples, masks, objective, adapter)


def test_the_pass_gives_closed_form_values_on_planted_uniform_attention():
    from headattr.analysis.dispersion import head_dispersion
    from headattr.models.adapters import Adapter

    adapter = Adapter(_planted_uniform_bert(), mask_token_id=4)
    lengths = (12, 20)  # uniform over T keys: entropy log T, T effective blocks, top ceil(0.1 T) of T
    table = head_dispersion(adapter, _scored(adapter, lengths), block_size=1, topk_frac=0.1)
    assert len(table) == 3 * 4 and list(table["label"][:2]) == ["L0H0", "L0H1"]
    np.testing.assert_allclose(table["entropy"], np.mean([math.log(t) for t in lengths]), rtol=1e-6)
    np.testing.assert_allclose(table["entropy_norm"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(table["effective_blocks"], np.mean(lengths), rtol=1e-6)
    np.testing.assert_allclose(table["topk_mass"], np.mean([2 / 12, 2 / 20]), rtol=1e-6)
    blocks = head_dispersion(adapter, _scored(adapter, (12,)), block_size=4, topk_frac=0.5)
    np.testing.assert_allclose(blocks["effective_blocks"], 3.0, rtol=1e-6)  # 3 blocks of mass 1/3
    np.testing.assert_allclose(blocks["topk_mass"], 2 / 3, rtol=1e-6)


class _SoftmaxElsewhereBlock(torch.nn.Module):
    """A LLaDA-like block computing attention with torch.softmax: a kernel the attention hook does not reach."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def attention(self, q, k, v, *args, **kwargs):
        b, t, _ = q.shape
        q, k, v = (x.view(b, t, 4, -1).transpose(1, 2) for x in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
        return self.block.attn_out(att.transpose(1, 2).reshape(b, t, -1)), None


def test_the_pass_sees_real_attention_on_llada_and_refuses_a_model_without_the_hook():
    from helpers import llada_standin, tiny_bert

    from headattr.analysis.dispersion import head_dispersion
    from headattr.errors import ConfigError
    from headattr.models.adapters import Adapter

    for model in (tiny_bert(), llada_standin()):  # LLaDA has no output_attentions: the hook computes them
        adapter = Adapter(model, mask_token_id=4)
        table = head_dispersion(adapter, _scored(adapter, (16,)))
        assert len(table) == 3 * 4
        assert (table["entropy_norm"] < 1 - 1e-4).all() and (table["entropy_norm"] > 0).all()  # neither extreme
    standin = llada_standin()
    for block in standin.model.transformer["blocks"]:
        block.attention = _SoftmaxElsewhereBlock(block).attention
    adapter = Adapter(standin, mask_token_id=4)
    with pytest.raises(ConfigError, match="dispersion.enabled: layer 0 of the llada model"):
        head_dispersion(adapter, _scored(adapter, (8,)))


def test_query_span_and_per_mask_prob_equal_dispersion_of_output_attentions():
    """Independent reference: the metrics of transformers' own output_attentions, sliced by hand."""
    from helpers import tiny_bert

    from headattr.analysis.dispersion import head_dispersion, query_positions
    from headattr.models.adapters import Adapter

    model = tiny_bert()
    adapter = Adapter(model, mask_token_id=4)
    scored = _scored(adapter, (14, 18), probs=(0.2, 0.6, 0.9))
    targets = [(3, 9), (5, 17)]
    reference = {}
    for i, s in enumerate(scored):
        with torch.no_grad():
            attentions = model(input_ids=s.input_ids, output_attentions=True).attentions
        for span, queries in (("target", slice(*targets[i])), ("last_n", slice(s.input_ids.shape[1] - 4, None))):
            for layer, a in enumerate(attentions):
                a = a[:, :, queries].numpy()
                for p in (None, 0.6):
                    rows = slice(None) if p is None else np.asarray(s.mask_probs) == p
                    d = dispersion(a[rows], 2, 0.25)
                    for m in d:
                        key = (span, m if p is None else f"{m}_p0.6")
                        reference.setdefault(key, np.zeros((3, 4)))[layer] += d[m] / len(scored)
    for span in ("target", "last_n"):
        table = head_dispersion(adapter, scored, 2, 0.25, span, targets, last_n=4, per_mask_prob=True)
        assert {"entropy_p0.2", "entropy_p0.6", "entropy_p0.9"} <= set(table.columns)
        for column in ("entropy", "topk_mass", "entropy_p0.6", "effective_blocks_p0.6"):
            np.testing.assert_allclose(table[column], reference[(span, column)].ravel(), rtol=1e-5, atol=1e-7)
    full = head_dispersion(adapter, scored, 2, 0.25)
    assert not np.allclose(full["entropy"], table["entropy"])  # the span changes what is measured
    assert query_positions("last_n", 5, last_n=9) == slice(0, 5)
    with pytest.raises(ConfigError, match="dispersion.query_span"):
        query_positions("middle", 5)


def test_dispersion_pass_is_planned_only_when_enabled(tmp_path):
    from helpers import write_tiny_project
    from test_workflow import planned_jobs, snakemake

    # off by default: test_workflow.test_tiny_dry_run_plans_every_stage pins the default job list without it
    write_tiny_project(tmp_path, extra={"dispersion": {"enabled": True}})
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    assert jobs["attention_dispersion"] == 2 and jobs["attribute"] == 4  # one pass per seed, beside attribution
    write_tiny_project(tmp_path, extra={"dispersion": {"enabled": True, "block_size": 0}})
    bad = snakemake(tmp_path, "-n")
    assert bad.returncode != 0 and "block_size" in bad.stdout + bad.stderr
