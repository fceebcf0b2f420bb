"""Sparse attention in the evaluation paths: the users' step schedule in the diffusion sampler, masks rebuilt
per call in the ELBO; select 1 (uniform) or skip 1 is the dense evaluation exactly."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from helpers import llada_standin, make_tokenizer, random_ids, tiny_bert

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from headattr.evaluation.lm import HeadAttrLM  # noqa: E402
from headattr.evaluation.sampler import low_confidence_generate  # noqa: E402
from headattr.evaluation.sparse import build_step, step_schedule  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402
from headattr.models.sparse import SparseAttention, importance_weights, keep_ratios  # noqa: E402

ADAPTIVE = keep_ratios(importance_weights(np.random.default_rng(0).uniform(size=(3, 4)), scale=2.0), 0.3)


class _Recording(SparseAttention):
    """Records which steps built and applied the masks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []

    def building(self):
        self.events.append("build")
        return super().building()

    def applied(self):
        self.events.append("sparse")
        return super().applied()


def _generate(model, sparse=None, skip=0.2, steps=8):
    adapter = Adapter(model, mask_token_id=4)
    prompt = torch.as_tensor(random_ids(6, 1))[None].repeat(2, 1)
    prompt[1] = torch.as_tensor(random_ids(6, 2))

    def logits(x):
        return model(input_ids=x)[0]

    schedule = step_schedule(sparse, skip, steps) if sparse is not None else None
    return low_confidence_generate(logits, prompt, 16, 8, steps, adapter.mask_token_id, step_context=schedule)


def test_the_schedule_is_dense_then_builds_at_int_skip_steps_plus_one_then_sparse():
    assert build_step(0.2, 8) == 2 and build_step(0.25, 10) == 3 and build_step(0.0, 8) == 1
    model = llada_standin()
    sparse = _Recording(Adapter(model, mask_token_id=4), ADAPTIVE, block_size=4, gen_length=16)
    schedule = step_schedule(sparse, 0.2, 8)
    kinds = [type(schedule(i)).__name__ for i in range(8)]
    assert kinds[:2] == [nullcontext.__name__] * 2
    assert sparse.events == ["build"] + ["sparse"] * 5  # step 2 builds, steps 3..7 reuse
    with torch.no_grad():
        dense = _generate(model)
        ran = _Recording(Adapter(model, mask_token_id=4), ADAPTIVE, block_size=4, gen_length=16)
        out = _generate(model, ran)
    assert ran.events == ["build"] + ["sparse"] * 5 and 0 < ran.densities.mean() < 1
    assert out.shape == dense.shape and (out != 4).all()  # every position decoded to a real token


def test_select_one_or_skip_one_is_the_dense_sampler_token_for_token():
    model = llada_standin()
    adapter = Adapter(model, mask_token_id=4)
    with torch.no_grad():
        dense = _generate(model)
        uniform = _generate(model, SparseAttention(adapter, keep_ratios(np.ones((3, 4)), 1.0), 4, 16))
        skipped = _generate(model, SparseAttention(adapter, ADAPTIVE, 4, 16), skip=1.0)
    assert torch.equal(uniform, dense) and torch.equal(skipped, dense)


def _lm(**kw):
    return HeadAttrLM(model=tiny_bert(), tokenizer=make_tokenizer(), mc_num=6, disable_tqdm=True, **kw)


def test_elbo_with_select_one_is_the_dense_elbo_and_sparse_elbo_rebuilds_masks_per_call():
    reqs = [Instance("loglikelihood", {}, ("w1 w2 w3 w4 w5", " w6 w7 w8 w9"), i) for i in range(2)]
    dense = [x for x, _ in _lm().loglikelihood(reqs)]
    lm = _lm()
    lm.set_sparse_attention(np.ones((3, 4)), block_size=2, skip=0.2)
    assert [x for x, _ in lm.loglikelihood(reqs)] == dense
    assert lm.sparse_densities == [1.0, 1.0]
    lm.set_sparse_attention(np.full((3, 4), 0.1), block_size=2)
    sparse = [x for x, _ in lm.loglikelihood(reqs)]
    assert sparse[0] != pytest.approx(dense[0], abs=1e-6)
    assert len(lm.sparse_densities) == 4 and lm.sparse_densities[-1] < 0.6


def test_generation_through_the_lm_with_select_one_or_skip_one_is_dense():
    ctx = [Instance("generate_until", {}, ("w3 w4 w5 w6", {"max_gen_toks": 8}), i) for i in range(2)]
    args = {"gen_length": 8, "block_length": 4, "steps": 8}
    dense = _lm(**args).generate_until(ctx)
    lm = _lm(**args)
    lm.set_sparse_attention(np.ones((3, 4)), block_size=2, skip=0.2)
    assert lm.generate_until(ctx) == dense
    lm.set_sparse_attention(np.full((3, 4), 0.1), block_size=2, skip=1.0)
    assert lm.generate_until(ctx) == dense
    lm.set_sparse_attention(np.full((3, 4), 0.1), block_size=2, skip=0.2)
    lm.generate_until(ctx)
    assert lm.sparse_densities and lm.sparse_densities[-1] < 1


@pytest.mark.parametrize(
    "args, match",
    [
        ({"sparse_select": 0}, "sparse_select"),
        ({"sparse_select": 1.2}, "sparse_select"),
        ({"sparse_select": 0.3, "sparse_skip": 1.0}, "sparse_skip"),
        ({"sparse_select": 0.3, "sparse_block_size": 0}, "sparse_block_size"),
        ({"sparse_select": 0.3, "sparse_min_keep_ratio": 0}, "sparse_min_keep_ratio"),
        ({"sparse_select": 0.3, "sparse_importance": "nope.pt"}, "sparse_importance: 'nope.pt' does not exist"),
    ],
)
def test_bad_sparse_model_args_fail_before_the_model_loads(args, match):
    from headattr.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        HeadAttrLM(pretrained="does/not/exist", **args)


def test_model_args_map_importance_to_keep_ratios_and_leave_absent_layers_dense(tmp_path):
    importance = np.random.default_rng(5).uniform(size=(3, 4))
    path = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {0: torch.tensor(importance[0]), 2: torch.tensor(importance[2])}}, path)
    lm = _lm(sparse_select=0.3, sparse_importance=str(path), sparse_block_size=2)
    ratios = lm._sparse[0]
    np.testing.assert_allclose(ratios[1], 1.0)  # layer 1 is not in the file: dense, as the users' model
    expected = keep_ratios(importance_weights(importance[[0, 2]]), 0.3)
    np.testing.assert_allclose(ratios[[0, 2]], expected)
    uniform = _lm(sparse_select=0.3, sparse_block_size=2)
    np.testing.assert_allclose(uniform._sparse[0], 0.3)
    assert uniform._sparse[1:] == (2, 0.2)
