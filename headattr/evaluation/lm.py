"""An lm-eval-harness (0.4.x) model for every family headattr gates, with a settable head keep-mask.

Registered as ``headattr``: ``lm_eval.simple_evaluate(model="headattr", model_args="pretrained=PATH,...")`` after
``import headattr.evaluation.lm``, or on the command line ``headattr-lm-eval --model headattr ...`` (see
:mod:`headattr.evaluation.__main__`: lm-eval 0.4.x's own CLI cannot import plugins).

The model is loaded by :func:`headattr.models.loading.load_adapter`; pruned heads have gate 0 on the input of the
attention output projection (:class:`headattr.models.gates.HeadGates`), which equals zeroing those weight columns.
:meth:`HeadAttrLM.set_keep_mask` changes the pruning setting without reloading the model.

- ``objective=causal`` (default for LLaMA/Qwen2/Mistral/GPT-2): exact log-likelihoods as lm-eval's ``hf`` model,
  greedy generation with HF ``generate``.
- ``objective=diffusion`` (default for LLaDA, Dream, BERT-family masked LMs): log-likelihood = the Monte-Carlo
  ELBO of :mod:`headattr.evaluation.elbo` with ``mc_num`` rows, deterministic given ``seed``; generation = the
  low-confidence remasking sampler of :mod:`headattr.evaluation.sampler` (``steps``, ``gen_length``,
  ``block_length``), or the checkpoint's own ``diffusion_generate`` (Dream) when it has one and
  ``dream_generate`` is not false. ``is_greedy`` is computed only with ``check_greedy=true`` (it costs one
  forward pass per continuation token, as LLaDA's ``suffix_greedy_prediction``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import lm_eval.models  # noqa: F401  (registers the built-in backends: get_model imports them only into an empty registry)
import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..engine.gate_engine import AUTOCAST_DTYPES, GateEngine, _accepts
from ..errors import ConfigError, NonFiniteError
from ..models.gates import gated
from .elbo import causal_input_length, causal_scored_input, elbo_scored_input
from .keepmask import CONVENTIONS, ORDERS, keep_mask
from .sampler import check_schedule, cut_at_stops, cut_at_token, low_confidence_generate
from .sparse import (
    attention_flops_fraction,
    build_step,
    check_sparse_args,
    elbo_context,
    sparse_ratios,
    step_schedule,
)

CAUSAL_FAMILIES = ("llama", "gpt2")
OBJECTIVES = ("auto", "causal", "diffusion")
DEFAULT_MAX_LENGTH = 2048
MAX_GEN_TOKS = 256
LM_EVAL_EXTRAS = ("max_batch_size",)  # passed by lm-eval's CLI to every model; not used here


def load_matrix(path, key: str) -> np.ndarray:
    """A [n_layers, n_heads] matrix from ``.npy`` (no pickle) or ``.json`` (nested lists); errors name ``key``."""
    p = Path(str(path))
    if not p.exists():
        raise ConfigError(f"{key}: {str(p)!r} does not exist")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".json":
        return np.asarray(json.loads(p.read_text()), dtype=np.float64)
    raise ConfigError(f"{key}: {str(p)!r} is neither .npy nor .json")


def _flag(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{key}: {value!r} is not a boolean")


def _check_prune_args(path, importance, order, fraction, convention) -> None:
    """The pruning model arguments, checked before any model is loaded (files exist, names and ranges valid)."""
    if path is not None and (importance is not None or order is not None):
        raise ConfigError("keep_mask: give either keep_mask or importance/prune_order, not both")
    if order is None:
        if importance is not None or fraction is not None:
            raise ConfigError("prune_order: importance/prune_fraction need prune_order (most, least or random)")
    elif order not in ORDERS:
        raise ConfigError(f"prune_order: {order!r} is not one of {ORDERS}")
    elif fraction is None or not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"prune_fraction: {fraction!r} must be a number in [0, 1] with prune_order")
    elif importance is None and order != "random":
        raise ConfigError(f"importance: prune_order={order} needs an importance file")
    if convention not in CONVENTIONS:
        raise ConfigError(f"prune_convention: {convention!r} is not one of {CONVENTIONS}")
    for key, value in (("keep_mask", path), ("importance", importance)):
        if value is not None and not Path(str(value)).exists():
            raise ConfigError(f"{key}: {str(value)!r} does not exist")


@register_model("headattr")
class HeadAttrLM(TemplateLM):
    """lm-eval model over a headattr adapter.

    Args (all lm-eval ``model_args``; strings from the command line are converted):
        pretrained (str): model path or id (``model.path``); or pass ``model`` and ``tokenizer`` objects instead.
        dtype, device, trust_remote_code, adapter, mask_token_id, attn_implementation, autocast: as the
            workflow's ``model`` settings. Defaults: float32, auto, false, auto-detected, family/tokenizer, None,
            None.
        objective (str): ``auto`` | ``causal`` | ``diffusion``. Default: auto (causal for LLaMA-family and GPT-2).
        batch_size (int | "auto"): rows per forward pass; ``auto`` picks them from a memory budget. Default: 16.
        max_length (int): context length; default from the model config (as lm-eval's ``hf``), else 2048.
        mc_num (int): Monte-Carlo rows per diffusion log-likelihood. Default: 128.
        seed (int): seed of the ELBO masks. Default: 1234.
        check_greedy (bool): compute ``is_greedy`` for diffusion LMs. Default: false.
        gen_length, block_length, steps (int): diffusion sampler; defaults ``max_gen_toks`` of the request
            (else 256), ``gen_length``, ``gen_length``.
        dream_generate (str): ``auto`` (use the checkpoint's ``diffusion_generate`` when present) | true | false.
        dream_alg (str): ``alg`` passed to ``diffusion_generate``. Default: entropy.
        add_bos_token (bool): prepend the BOS/CLS token; default: as the tokenizer does by itself.
        keep_mask (path): ``.npy``/``.json`` bool [n_layers, n_heads], False = pruned.
        importance (path) with prune_order (most|least|random), prune_fraction, prune_convention
            (global|per_layer), prune_seed, keep_at_least_one_head, layer_start, layer_end (inclusive): build
            the keep-mask with :func:`headattr.evaluation.keepmask.keep_mask` (``random`` needs no importance).
        sparse_select (float): adaptive block-sparse attention (:mod:`headattr.evaluation.sparse`) with this mean
            keep ratio; None (default) = dense. sparse_importance (path, ``head_importance.pt`` / ``.npy`` /
            ``.json``; default uniform weights), sparse_skip (0.2), sparse_block_size (32), sparse_min_keep_ratio
            (0.01), sparse_weight_scale (2/3), sparse_increases_keep (true): the users' settings.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        dtype: str = "float32",
        device: str | None = "auto",
        trust_remote_code=False,
        adapter: str | None = None,
        mask_token_id: int | None = None,
        attn_implementation: str | None = None,
        autocast: str | None = None,
        objective: str = "auto",
        batch_size=16,
        max_length: int | None = None,
        mc_num: int = 128,
        seed: int = 1234,
        check_greedy=False,
        gen_length: int | None = None,
        block_length: int | None = None,
        steps: int | None = None,
        dream_generate="auto",
        dream_alg: str = "entropy",
        add_bos_token=None,
        keep_mask=None,
        importance=None,
        prune_order: str | None = None,
        prune_fraction: float | None = None,
        prune_convention: str = "global",
        prune_seed: int = 0,
        keep_at_least_one_head=True,
        layer_start: int | None = None,
        layer_end: int | None = None,
        sparse_select: float | None = None,
        sparse_importance: str | None = None,
        sparse_skip: float = 0.2,
        sparse_block_size: int = 32,
        sparse_min_keep_ratio: float = 0.01,
        sparse_weight_scale: float = 2 / 3,
        sparse_increases_keep=True,
        disable_tqdm=False,
        model=None,
        tokenizer=None,
        **extra,
    ):
        super().__init__()
        unknown = sorted(set(extra) - set(LM_EVAL_EXTRAS))
        if unknown:
            raise ConfigError(f"model_args: unknown argument(s) {unknown} for the headattr model")
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective: {objective!r} is not one of {OBJECTIVES}")
        if autocast not in AUTOCAST_DTYPES:
            raise ConfigError(f"autocast: {autocast!r} is not one of {sorted(k for k in AUTOCAST_DTYPES if k)}")
        if str(dream_generate).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"dream_generate: {dream_generate!r} is not auto, true or false")
        for key, value in (("mc_num", mc_num), ("gen_length", gen_length), ("block_length", block_length)):
            if value is not None and int(value) < 1:
                raise ConfigError(f"{key}: {value} must be >= 1")
        if gen_length is not None:
            try:
                check_schedule(int(gen_length), int(block_length or gen_length), int(steps or gen_length))
            except ValueError as exc:
                raise ConfigError(f"model_args {exc}") from exc
        prune = (keep_mask, importance, prune_order, prune_fraction, prune_convention)
        _check_prune_args(*prune)  # before the model is loaded
        check_sparse_args(sparse_select, sparse_skip, sparse_block_size, sparse_min_keep_ratio, sparse_weight_scale)
        if sparse_importance is not None and not Path(str(sparse_importance)).exists():
            raise ConfigError(f"sparse_importance: {str(sparse_importance)!r} does not exist")
        if model is None:
            if not pretrained:
                raise ConfigError("pretrained: give the model path (model_args pretrained=PATH)")
            from ..models.loading import load_adapter

            model, tokenizer, self.adapter = load_adapter(
                {
                    "path": str(pretrained),
                    "dtype": dtype,
                    "device": device or "auto",
                    "trust_remote_code": _flag(trust_remote_code, "trust_remote_code"),
                    "attn_implementation": attn_implementation,
                    "adapter": adapter,
                    "mask_token_id": mask_token_id,
                }
            )
        else:
            from ..models.adapters import Adapter

            if tokenizer is None:
                raise ConfigError("tokenizer: a model object needs its tokenizer object")
            self.adapter = Adapter(model, adapter, mask_token_id=mask_token_id)
            if self.adapter.mask_token_id is None:
                self.adapter.mask_token_id = getattr(tokenizer, "mask_token_id", None)
        self.model, self.tokenizer = model, tokenizer
        self._device = next(model.parameters()).device
        self.objective = objective
        if objective == "auto":
            self.objective = "causal" if self.adapter.family in CAUSAL_FAMILIES else "diffusion"
        if self.objective == "diffusion" and self.adapter.mask_token_id is None:
            raise ConfigError("mask_token_id: the diffusion objective needs a mask token id (set mask_token_id=N)")
        rows = None if str(batch_size) == "auto" else int(batch_size)
        self.batch_size = rows or 16
        self.engine = GateEngine(
            self.adapter,
            rows_per_pass=rows,
            autocast_dtype=AUTOCAST_DTYPES[autocast],
            prefix_cache=False,
            unique_rows=True,
        )
        self._autocast_dtype = AUTOCAST_DTYPES[autocast]
        self._extra_inputs = {"use_cache": False} if _accepts(model.forward, "use_cache") else {}
        self._max_length = int(max_length) if max_length is not None else None
        self.mc_num, self.seed = int(mc_num), int(seed)
        self.check_greedy = _flag(check_greedy, "check_greedy")
        self.gen_length = None if gen_length is None else int(gen_length)
        self.block_length = None if block_length is None else int(block_length)
        self.steps = None if steps is None else int(steps)
        self.dream_generate = str(dream_generate).lower()
        self.dream_alg = dream_alg
        self.add_bos_token = (
            self._tokenizer_adds_bos() if add_bos_token is None else _flag(add_bos_token, "add_bos_token")
        )
        self.disable_tqdm = _flag(disable_tqdm, "disable_tqdm")
        self._keep: torch.Tensor | None = None
        self._sparse: tuple[np.ndarray, int, float] | None = None
        self.sparse_densities: list[float] = []
        self.sparse_flops: list[float] = []
        at_least_one = _flag(keep_at_least_one_head, "keep_at_least_one_head")
        self.set_keep_mask(self._keep_from_args(*prune, int(prune_seed), at_least_one, layer_start, layer_end))
        if sparse_select is not None:
            shape = (self.adapter.n_layers, self.adapter.n_heads)
            importance = np.ones(shape) if sparse_importance is None else self._importance(sparse_importance)
            n_kv = getattr(getattr(model, "config", None), "num_key_value_heads", None)
            ratios = sparse_ratios(
                importance,
                float(sparse_select),
                float(sparse_min_keep_ratio),
                float(sparse_weight_scale),
                _flag(sparse_increases_keep, "sparse_increases_keep"),
                n_kv if isinstance(n_kv, int) else None,
            )
            self.set_sparse_attention(ratios, int(sparse_block_size), float(sparse_skip))

    # ----- pruning ---------------------------------------------------------------------------------------------

    def _keep_from_args(self, path, importance, order, fraction, convention, seed, at_least_one, start, end):
        if path is not None:
            return load_matrix(path, "keep_mask")
        if order is None:
            return None
        shape = (self.adapter.n_layers, self.adapter.n_heads)
        scores = np.zeros(shape) if importance is None else load_matrix(importance, "importance")
        lo = 0 if start is None else int(start)
        hi = shape[0] - 1 if end is None or int(end) < 0 else int(end)
        return keep_mask(scores, order, float(fraction), convention, seed, at_least_one, range(lo, hi + 1))

    def set_keep_mask(self, keep) -> None:
        """Prune the heads where ``keep`` ([n_layers, n_heads], bool or 0/1) is False; None keeps every head."""
        if keep is None:
            self._keep = None
            return
        keep = np.asarray(keep)
        shape = (self.adapter.n_layers, self.adapter.n_heads)
        if keep.shape != shape:
            raise ConfigError(f"keep_mask: shape {keep.shape} does not match the model's {shape} heads")
        if not np.isin(keep, (0, 1)).all():
            raise ConfigError("keep_mask: entries must be 0/1 or booleans")
        self._keep = torch.as_tensor(keep.astype(bool), dtype=torch.float32, device=self._device)

    @property
    def keep_mask(self) -> np.ndarray:
        """The current keep-mask, bool [n_layers, n_heads] (all True when nothing is pruned)."""
        if self._keep is None:
            return np.ones((self.adapter.n_layers, self.adapter.n_heads), dtype=bool)
        return self._keep.bool().cpu().numpy()

    def _importance(self, path) -> np.ndarray:
        """[n_layers, n_heads] importance from a users' ``head_importance.pt`` or a ``.npy`` / ``.json`` matrix."""
        if str(path).endswith(".pt"):
            from ..pipeline.exports import load_importance_file

            return load_importance_file(path, self.adapter.n_layers, self.adapter.n_heads, "sparse_importance")
        matrix = load_matrix(path, "sparse_importance")
        if matrix.shape != (self.adapter.n_layers, self.adapter.n_heads):
            raise ConfigError(f"sparse_importance: shape {matrix.shape} does not match the model's heads")
        return matrix

    def set_sparse_attention(self, ratios=None, block_size: int = 32, skip: float = 0.2) -> None:
        """Adaptive block-sparse attention with keep ratios [n_layers, n_heads] (see :mod:`headattr.models.sparse`
        and :mod:`headattr.evaluation.sparse`); None = dense. ``sparse_densities`` collects the mean realised
        block density of every sparse generation and likelihood call, ``sparse_flops`` its attention FLOPs relative to
        dense attention (:func:`headattr.evaluation.sparse.attention_flops_fraction`; a likelihood call builds its
        masks from its own dense attention, so 1 + density)."""
        if ratios is None:
            self._sparse = None
            return
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != (self.adapter.n_layers, self.adapter.n_heads):
            raise ConfigError(f"sparse keep ratios: shape {ratios.shape} does not match the model's heads")
        build_step(skip, 1)  # checks the range
        self._sparse = (ratios, int(block_size), float(skip))

    def _sparse_attention(self, gen_length: int):
        from ..models.sparse import SparseAttention

        ratios, block_size, _ = self._sparse
        return SparseAttention(self.adapter, ratios, block_size, gen_length)

    def _gate_rows(self, n: int) -> torch.Tensor:
        keep = self._keep if self._keep is not None else torch.ones(self.adapter.n_layers, self.adapter.n_heads)
        return keep.float().cpu().expand(n, -1, -1)

    # ----- lm-eval plumbing ------------------------------------------------------------------------------------

    @property
    def device(self):
        return self._device

    @property
    def eot_token_id(self) -> int:
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return next(t for t in (tok.bos_token_id, tok.cls_token_id, self.eot_token_id) if t is not None)

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        config = getattr(self.model, "config", None)
        for attr in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit < 10**9 else DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def get_model_info(self) -> dict:
        return {
            "headattr_family": self.adapter.family,
            "headattr_objective": self.objective,
            "headattr_pruned_heads": int((~self.keep_mask).sum()),
        }

    def _template_suffix(self) -> list[int]:
        """Special ids the tokenizer appends after a text (BERT's [SEP]; none for LLaDA / Dream): the masked
        span is generated in front of them, where the model saw answers end in training."""
        with_special = self.tokenizer("a")["input_ids"]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for start in range(len(with_special) - len(bare) + 1):
            if with_special[start : start + len(bare)] == bare:
                return list(with_special[start + len(bare) :])
        return []

    def _tokenizer_adds_bos(self) -> bool:
        with_special = self.tokenizer("a")["input_ids"]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        return len(with_special) > len(bare) and with_special[0] == self.prefix_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids without trailing special tokens; the BOS/CLS token in front when asked (or by default)."""
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if add and (not ids or ids[0] != self.prefix_token_id):
            ids = [self.prefix_token_id, *ids]
        return ids

    def tok_decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ----- log-likelihoods -------------------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p, is_greedy) of each (args, context ids, continuation ids)."""
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        bar = tqdm(total=len(pairs), desc="headattr loglikelihood", disable=disable_tqdm or self.disable_tqdm)
        if self.objective == "causal":
            results = self._causal_scores(pairs, bar)
        else:
            results = [self._elbo_score(i, ctx, cont, bar) for i, (ctx, cont) in enumerate(pairs)]
        bar.close()
        for (args, _, _), result in zip(requests, results, strict=True):
            if args is not None:
                self.cache_hook.add_partial("loglikelihood", args, result)
        return results

    def _causal_scores(self, pairs, bar) -> list[tuple[float, bool]]:
        """Longest inputs first, ``batch_size`` distinct inputs per right-padded pass (as lm-eval's ``hf``);
        requests whose inputs are the same tokens (one-token choices after one context) share one row of the
        pass (``unique_rows``)."""
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-causal_input_length(*pairs[i], self.max_length), inputs[i]))
        chunks, distinct = [], 0  # batch_size distinct inputs per pass (repeats are adjacent in this order)
        for k, i in enumerate(order):
            new = k == 0 or inputs[i] != inputs[order[k - 1]]
            if k == 0 or (new and distinct == self.batch_size):
                chunks.append([])
                distinct = 0
            chunks[-1].append(i)
            distinct += new
        results: list = [None] * len(pairs)
        for chunk in chunks:
            scored = causal_scored_input(
                f"requests {chunk}", [pairs[i] for i in chunk], self.max_length, self.eot_token_id
            )
            loss, acc = self.engine.losses_and_accuracy(
                scored, torch.arange(len(chunk)), self._gate_rows(len(chunk)), describe=lambda r: f"row {r}"
            )
            for i, lp, a in zip(chunk, loss.tolist(), acc.tolist(), strict=True):
                results[i] = (-lp, bool(a == 1.0))
            bar.update(len(chunk))
        return results

    def _elbo_score(self, index: int, context: list[int], continuation: list[int], bar) -> tuple[float, bool]:
        if not continuation:
            raise ValueError(f"request {index}: empty continuation")
        room = self.max_length - len(continuation)
        if room < int(self.adapter.shift_logits):
            raise ValueError(f"request {index}: continuation of {len(continuation)} tokens exceeds max_length")
        context = context[-room:] if room > 0 else []
        scored = elbo_scored_input(
            f"request {index}",
            context,
            continuation,
            self.mc_num,
            self.adapter.mask_token_id,
            self.adapter.shift_logits,
            self.seed,
        )
        sparse = self._sparse_attention(len(continuation)) if self._sparse else None
        with elbo_context(sparse):
            losses = self.engine.losses(
                scored, torch.arange(self.mc_num), self._gate_rows(self.mc_num), describe=lambda r: f"MC row {r}"
            )
        if sparse is not None:
            density = float(sparse.densities.mean())
            self.sparse_densities.append(density)
            self.sparse_flops.append(1.0 + density)  # the masks come from this call's dense attention
        greedy = False
        if self.check_greedy:
            prompt = torch.as_tensor([context], dtype=torch.long, device=self._device)
            n = len(continuation)
            out = self._diffusion_sample(prompt, n, n, n)
            greedy = out[0, len(context) :].tolist() == list(continuation)
        bar.update(1)
        return -float(losses.mean()), greedy

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts over lm-eval's disjoint rolling windows (prefix = BOS/EOS).

        Causal: exact, as lm-eval's ``hf``. Diffusion: the sum of the windows' ELBOs, each conditioned on the
        tokens before it: a lower bound of log p(text) by the chain rule, estimated with ``mc_num`` rows each.
        """
        out = []
        for (string,) in tqdm(
            [r.args for r in requests], desc="headattr rolling", disable=disable_tqdm or self.disable_tqdm
        ):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tok_encode(string, add_special_tokens=False), self.prefix_token_id, self.max_length, 1
                )
            ]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            total = float(sum(lp for lp, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ----- generation ------------------------------------------------------------------------------------------

    def _aligned_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [batch, pos, vocab] with position j scoring token j (Dream's shift undone)."""
        out = self.model(**self.adapter.model_inputs(x), **self._extra_inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if not torch.isfinite(logits).all():
            raise NonFiniteError("non-finite logits during generation")
        if self.adapter.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def _autocast(self):
        from contextlib import nullcontext

        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self._device.type, dtype=self._autocast_dtype)

    def _diffusion_sample(self, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int):
        sparse = self._sparse_attention(gen_length) if self._sparse else None
        schedule = step_schedule(sparse, self._sparse[2], steps) if sparse else None
        with torch.no_grad(), gated(self.adapter, self._keep), self._autocast():
            out = low_confidence_generate(
                self._aligned_logits,
                prompt,
                gen_length,
                block_length,
                steps,
                self.adapter.mask_token_id,
                suffix=self._template_suffix(),
                step_context=schedule,
            )
        if sparse is not None and sparse.masks:
            density = float(sparse.densities.mean())
            self.sparse_densities.append(density)
            self.sparse_flops.append(attention_flops_fraction(density, build_step(self._sparse[2], steps), steps))
        return out

    def _uses_dream_generate(self) -> bool:
        has = callable(getattr(self.model, "diffusion_generate", None))
        if self.dream_generate == "true" and not has:
            raise ConfigError("dream_generate: true, but the model has no diffusion_generate method")
        return has and self.dream_generate != "false"

    def _generate_ids(
        self, prompt: torch.Tensor, max_new: int, until: tuple[str, ...] = (), attention_mask=None
    ) -> torch.Tensor:
        """[batch, P] prompts -> [batch, P + new] ids under the keep-mask (causal: stops early at ``until``, the
        text is cut there afterwards in any case; ``attention_mask`` 0 on left padding). Diffusion prompts share
        one length."""
        if self.objective == "causal":
            stops = {}
            if until:  # lm-eval's own criterion for its hf model: stop once every row has produced a stop sequence
                from lm_eval.models.utils_hf import stop_sequences_criteria

                stops["stopping_criteria"] = stop_sequences_criteria(
                    self.tokenizer, list(until), prompt.shape[1], prompt.shape[0]
                )
            with torch.no_grad(), gated(self.adapter, self._keep), self._autocast():
                return self.model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt) if attention_mask is None else attention_mask,
                    max_new_tokens=max_new,
                    do_sample=False,
                    pad_token_id=self.eot_token_id,
                    **stops,
                )
        gen_length = self.gen_length or max_new
        block_length = self.block_length or gen_length
        steps = self.steps or gen_length
        try:
            check_schedule(gen_length, block_length, steps)
        except ValueError as exc:
            raise ConfigError(f"model_args {exc}") from exc
        if self._uses_dream_generate():
            with torch.no_grad(), gated(self.adapter, self._keep):
                return self.model.diffusion_generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=gen_length,
                    steps=steps,
                    temperature=0.0,
                    alg=self.dream_alg,
                    output_history=False,
                    return_dict_in_generate=True,
                ).sequences
        return self._diffusion_sample(prompt, gen_length, block_length, steps)

    def _left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [batch, longest] padded on the left with the EOT id, attention mask: 0 on the padding)."""
        longest = max(len(p) for p in prompts)
        ids = [[self.eot_token_id] * (longest - len(p)) + list(p) for p in prompts]
        mask = [[0] * (longest - len(p)) + [1] * len(p) for p in prompts]
        return (
            torch.as_tensor(ids, dtype=torch.long, device=self._device),
            torch.as_tensor(mask, dtype=torch.long, device=self._device),
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generated continuations, cut at the first EOS/pad token and at the earliest stop sequence."""
        prepared = []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            new = (self.gen_length or max_new) if self.objective == "diffusion" else max_new
            ids = self.tok_encode(context)[-max(1, self.max_length - new) :]
            prepared.append((ids, until, max_new))
        causal = self.objective == "causal"  # prompts of any length in one left-padded batch, as lm-eval's hf
        groups = defaultdict(list)
        for i in sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0])):
            ids, until, max_new = prepared[i]
            groups[(None if causal else len(ids), max_new, tuple(until))].append(i)
        out: list = [None] * len(prepared)
        stop_ids = [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]
        bar = tqdm(total=len(prepared), desc="headattr generate_until", disable=disable_tqdm or self.disable_tqdm)
        for (_, max_new, until), idx in groups.items():
            for lo in range(0, len(idx), self.batch_size):
                chunk = idx[lo : lo + self.batch_size]
                prompt, mask = self._left_padded([prepared[i][0] for i in chunk])
                generated = self._generate_ids(prompt, max_new, until, mask)[:, prompt.shape[1] :]
                for row, i in enumerate(chunk):
                    text = self.tok_decode(cut_at_token(generated[row].tolist(), stop_ids))
                    out[i] = cut_at_stops(text, prepared[i][1])
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(chunk))
        bar.close()
        return out
