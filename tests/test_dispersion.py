"""Attention dispersion: closed-form values on uniform and one-hot patterns."""

import math

import numpy as np
import pytest

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


def test_the_pass_sees_real_attention_and_refuses_models_without_it():
    from helpers import llada_standin, tiny_bert

    from headattr.analysis.dispersion import head_dispersion
    from headattr.errors import ConfigError
    from headattr.models.adapters import Adapter

    adapter = Adapter(tiny_bert(), mask_token_id=4)
    table = head_dispersion(adapter, _scored(adapter, (16,)))
    assert (table["entropy_norm"] < 1 - 1e-4).all() and (table["entropy_norm"] > 0).all()  # neither extreme
    standin = Adapter(llada_standin())
    with pytest.raises(ConfigError, match="dispersion.enabled"):
        head_dispersion(standin, _scored(standin, (8,)))


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
