"""Benchmark: IG over head gates with the optimized engine vs a plain loop vs Captum, in one process.

    python bench/bench_ig.py --size minilm            # CPU, a few minutes on 2 cores
    python bench/bench_ig.py --size 8b --device cuda  # LLaDA-8B-shaped LLaMA, bf16 autocast, SDPA
    python bench/bench_ig.py --size tiny --completeness 1e-3   # time to completeness <= 1e-3 (plain vs engine)

Implementations (all give the same attributions; checked to ``--rtol`` of the largest |attribution|):
- ``engine``: :class:`headattr.engine.gate_engine.GateEngine` + :func:`headattr.methods.ig.integrated_gradients`,
  rows per pass from the memory-budget chooser, prefix caching and attention replay on, as the workflow runs it: shared
  rows once, plus the path-start losses of the completeness check, which the others do not compute;
  ``engine-igonly``: the same without those extra forward rows (the like-for-like comparison: IG only);
  ``engine-noprefix``: prefix caching off;
- ``plain``: what the users' scripts do: one row at a time (per mask probability, per layer, per step), full
  model forward and ``loss.backward()`` with parameter gradients ON and vocabulary logits at every position;
- ``plain`` for ``stp`` / ``stp_layer`` (the users' ``compute_loss_attribution_all_heads.py``): per path and step
  k = 1..K, gates alpha(t_k) on the Stochastic Threshold Path, one forward + backward per mask probability
  (``--mask_batch_size 1``, their default), parameters frozen, full logits, mean gradient x (alpha(t_k) -
  alpha(t_{k-1})); ``stp_layer`` runs that for one layer's gates at a time. No Captum row for STP (its rules
  weight every input alike; STP needs a weight per gate and node);
- ``captum``: ``captum.attr.IntegratedGradients`` (method ``riemann_right``, baseline 0, ``internal_batch_size``)
  over a gates -> loss function; per-layer IG is one Captum call per layer whose input is that layer's gates
  (one row per mask probability) with the other gates fixed at 1. Parameters frozen, full logits.

``--completeness TOL`` times instead how long each takes to reach a relative completeness gap <= TOL on every
path (|gap| / max(|dL|, 1e-3), as ``ig.tol``): the plain loop with ``riemann_right`` (the users' rule) rerun at
doubled steps until it gets there (plus the path-start losses it needs to check), against the engine with its
best rule (``gauss_legendre`` under :func:`headattr.methods.adaptive.adaptive_integrated_gradients`, steps
doubled per path); one run, side by side, ratio printed. For ``stp`` / ``stp_layer`` the gap is that of the users'
objective (IG of the loss averaged over mask probabilities, per path): their ``riemann_stieltjes`` loop at doubled
steps against the engine with ``trapezoid_stieltjes`` (the same paths, doubled) and with ``gauss_segments``
(4 levels, nodes per segment doubled from 1: the discretised STP, not the same thresholds); the steps column
is then evaluations per path.

FLOPs: the engine's are its own count of what it ran (``GateEngine.counts``); the references' are derived from
the model config by :mod:`headattr.engine.cost` for what each executes (layer forward 2 x matmul-params x T +
4 T^2 d; head 2 d V per logit position; backward 1x forward for matmuls with frozen parameters, 2x with
parameter gradients, attention backward 2x its forward). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
above the start; on CPU the peak resident set size above the start, sampled every 5 ms from /proc/self/statm
(approximate: allocator caching and sampling miss short spikes).

``--roofline`` also times ``torch.mm`` at the model's matrix shapes and prints, per implementation, its FLOP rate
as a share of the best of them (R) and the ratio to the plain loop it would reach if it ran every counted FLOP at
R: an upper bound at an equal rule, since no implementation of those FLOPs outruns its fastest GEMM.

Size ``8b`` is a ``LlamaForCausalLM`` shaped like LLaDA-8B (32 layers x 32 heads, hidden 4096, intermediate
11008, vocab 126464) with random bf16 weights; it is causal where LLaDA is bidirectional (same matmul FLOPs;
a causal flash kernel skips about half of the attention FLOPs, which the FLOP count does not discount).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headattr.data.samples import Sample  # noqa: E402
from headattr.engine.cost import ModelDims, choose_rows, ig_cost, row_bytes  # noqa: E402
from headattr.engine.gate_engine import GateEngine, default_memory_budget  # noqa: E402
from headattr.methods.adaptive import DEFAULT_GAP_FLOOR, adaptive_integrated_gradients, relative_gap  # noqa: E402
from headattr.methods.ig import integrated_gradients  # noqa: E402
from headattr.methods.paths import make_paths  # noqa: E402
from headattr.methods.stp import stp_layer_paths, stp_paths  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402
from headattr.models.gates import HeadGates  # noqa: E402
from headattr.objective.loss import build_scored_input  # noqa: E402
from headattr.objective.masking import draw_masks  # noqa: E402

SIZES = {
    "tiny": dict(kind="bert", layers=4, heads=4, hidden=64, intermediate=256, vocab=30522, seq_len=64),
    "minilm": dict(kind="bert", layers=6, heads=12, hidden=384, intermediate=1536, vocab=30522, seq_len=128),
    "llama-smoke": dict(kind="llama", layers=3, heads=4, hidden=64, intermediate=172, vocab=2048, seq_len=48),
    "8b": dict(kind="llama", layers=32, heads=32, hidden=4096, intermediate=11008, vocab=126464, seq_len=2048),
}
MASK_ID = {"bert": 103, "llama": 126336}
# dense bf16 tensor-core peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
# (name, prefix caching, path-start losses) of the engine's rows
ENGINE_VARIANTS = (("engine", True, True), ("engine-igonly", True, False), ("engine-noprefix", False, True))
# cost-model options of the references (the engine's FLOPs are its own count of what it ran)
PLAIN_COST = dict(prefix_cache=False, full_logits=True, end_losses=False, shared_rows=False)


def bf16_peak(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s when known (model FLOP utilisation is reported against it)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def build_model(size: str, device: torch.device, dtype: torch.dtype):
    """Random-weight model of ``size`` on ``device`` (SDPA attention), eval mode."""
    import transformers as tf

    s = SIZES[size]
    if s["kind"] == "bert":
        config = tf.BertConfig(
            vocab_size=s["vocab"],
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=max(512, s["seq_len"]),
            attn_implementation="sdpa",
        )
        cls = tf.BertForMaskedLM
    else:
        config = tf.LlamaConfig(
            vocab_size=max(s["vocab"], MASK_ID["llama"] + 128) if size == "8b" else s["vocab"],
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["heads"],
            intermediate_size=s["intermediate"],
            max_position_embeddings=max(4096, s["seq_len"]),
            attn_implementation="sdpa",
        )
        cls = tf.LlamaForCausalLM
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def make_scored(adapter: Adapter, seq_len: int, vocab: int, mask_probs, n_samples: int):
    """Random token sequences (prompt = first 1/8) noised at every mask probability."""
    rng = np.random.default_rng(0)
    low = 1000 if vocab > 2000 else 5
    out = []
    for i in range(n_samples):
        ids = rng.integers(low, min(vocab, 30000), seq_len).astype(np.int64)
        sample = Sample(f"s{i}", ids, seq_len // 8, seq_len, "bench")
        masks = draw_masks([sample], mask_probs, "bernoulli", 0, adapter.shift_logits)[sample.sample_id]
        out.append(build_scored_input(sample, masks, mask_probs, "diffusion", "mean", adapter.mask_token_id, False))
    return out


class PeakMemory:
    """Peak tensor memory allocated above the start of a block.

    CUDA: ``torch.cuda.max_memory_allocated`` (cheap, measured in the timed run). CPU: the running sum of the
    torch profiler's allocation events (``profile_memory=True``), in a separate untimed pass because the
    profiler slows the run down; it counts tensors only, not allocator slack or Python objects.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - start
            return
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        current = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            current += event.nbytes()
            peak = max(peak, current)
        self.peak = peak


def row_loss(logits: torch.Tensor, scored, p: torch.Tensor) -> torch.Tensor:
    """Weighted CE of each row at its scored positions; ``logits`` [rows, pos, V] (full), ``p`` [rows]."""
    losses = []
    for r, pi in enumerate(p.tolist()):
        ce = F.cross_entropy(
            logits[r, scored.pred_pos[pi]].float(), scored.targets[pi].to(logits.device), reduction="sum"
        )
        losses.append(ce * float(scored.token_weight[pi]))
    return torch.stack(losses)


def plain_loop(model, adapter, scored_list, method: str, steps: int, autocast, layers=None) -> list[np.ndarray]:
    """Users' script: one row per (p, layer, step), full forward + backward with parameter gradients."""
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    device = next(model.parameters()).device
    for param in model.parameters():
        param.requires_grad_(True)
    gates_hook = HeadGates(adapter)
    results = []
    try:
        for scored in scored_list:
            ig = np.zeros((scored.n_p, n_layers, n_heads))
            for p in range(scored.n_p):
                ids = scored.input_ids[p : p + 1].to(device)
                for layer in (layers or range(n_layers)) if method == "per_layer" else [None]:
                    for k in range(1, steps + 1):
                        gates = torch.ones(n_layers, n_heads, device=device)
                        if layer is None:
                            gates[:] = k / steps
                        else:
                            gates[layer] = k / steps
                        gates.requires_grad_(True)
                        gates_hook.gates = gates
                        with autocast():
                            logits = model(input_ids=ids).logits
                            loss = row_loss(logits, scored, torch.tensor([p]))[0]
                        loss.backward()
                        grad = gates.grad.double().cpu().numpy() / steps  # riemann_right weight 1/steps
                        if layer is None:
                            ig[p] += grad
                        else:
                            ig[p, layer] += grad[layer]
                        model.zero_grad(set_to_none=True)
            results.append(ig)
    finally:
        gates_hook.remove()
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None
    return results


def make_stp(adapter, scored, method: str, path_samples: int, layers=None, scheme="riemann_stieltjes", levels=None):
    """The STP paths of ``scored`` (path seed 0, baseline 0); ``levels`` for ``gauss_segments``."""
    build = stp_paths if method == "stp" else stp_layer_paths
    return build(adapter.n_layers, adapter.n_heads, scored.sample_id, 0.0, path_samples, 0, layers, scheme, levels)


def plain_stp_paths(model, adapter, scored, paths, steps: int, autocast) -> np.ndarray:
    """The users' loop on each of ``paths``: per step and mask probability one full forward + backward, IG_q =
    sum_k mean_p grad(alpha(t_k)) * (alpha(t_k) - alpha(t_{k-1})): float64 [Q, L, H] (unweighted)."""
    device = next(model.parameters()).device
    gates_hook = HeadGates(adapter)
    ig = np.zeros((paths.n_paths, adapter.n_layers, adapter.n_heads))
    try:
        for q in range(paths.n_paths):
            alpha = paths._alpha(np.arange(steps + 1) / steps)[:, q]  # [K + 1, L, H]
            for k in range(1, steps + 1):
                gates = alpha[k].float().to(device).requires_grad_(True)
                gates_hook.gates = gates
                for p in range(scored.n_p):
                    with autocast():
                        logits = model(input_ids=scored.input_ids[p : p + 1].to(device)).logits
                        loss = row_loss(logits, scored, torch.tensor([p]))[0]
                    loss.backward()
                mean_grad = gates.grad.double().cpu() / scored.n_p
                ig[q] += (mean_grad * (alpha[k] - alpha[k - 1])).numpy()
    finally:
        gates_hook.remove()
    return ig


def plain_stp(model, adapter, scored_list, method: str, steps: int, autocast, path_samples: int, layers=None):
    """The users' all-heads script on STP paths (see :func:`plain_stp_paths`), paths averaged."""
    results = []
    for scored in scored_list:
        paths = make_stp(adapter, scored, method, path_samples, layers)
        ig = np.einsum("qlh,q->lh", plain_stp_paths(model, adapter, scored, paths, steps, autocast), paths.weight)
        results.append(ig[None].repeat(scored.n_p, 0))  # the mean over p, as the engine's per-p mean
    return results


def captum_ig(model, adapter, scored_list, method, steps: int, batch: int, autocast, layers=None) -> list[np.ndarray]:
    """Captum IntegratedGradients over gates (per-layer: one call per layer), full logits, frozen parameters."""
    from captum.attr import IntegratedGradients

    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    device = next(model.parameters()).device
    gates_hook = HeadGates(adapter)
    results = []
    try:
        for scored in scored_list:
            ids_all = scored.input_ids.to(device)

            def forward(layer_gates, p_idx, layer, ids_all=ids_all, scored=scored):
                gates = torch.ones(layer_gates.shape[0], n_layers, n_heads, device=device)
                if layer is None:
                    gates = layer_gates.reshape(-1, n_layers, n_heads).float()
                else:
                    gates = torch.cat([gates[:, :layer], layer_gates[:, None].float(), gates[:, layer + 1 :]], 1)
                gates_hook.gates = gates
                with autocast():
                    logits = model(input_ids=ids_all[p_idx]).logits
                    return row_loss(logits, scored, p_idx.cpu())

            ig = np.zeros((scored.n_p, n_layers, n_heads))
            p_idx = torch.arange(scored.n_p, device=device)
            for layer in (layers or range(n_layers)) if method == "per_layer" else [None]:
                shape = (scored.n_p, n_heads) if layer is not None else (scored.n_p, n_layers * n_heads)
                x = torch.ones(shape, device=device, requires_grad=True)
                attr = IntegratedGradients(forward).attribute(
                    x,
                    baselines=torch.zeros_like(x),
                    additional_forward_args=(p_idx, layer),
                    n_steps=steps,
                    method="riemann_right",
                    internal_batch_size=batch,
                )
                attr = attr.detach().double().cpu().numpy()
                if layer is None:
                    ig += attr.reshape(scored.n_p, n_layers, n_heads)
                else:
                    ig[:, layer] += attr
            results.append(ig)
    finally:
        gates_hook.remove()
    return results


def pick_captum_batch(model, adapter, scored_list, steps, max_batch, autocast, device) -> int:
    """Captum's fastest ``internal_batch_size`` among powers of two up to one call's rows (timed on layer 0).

    On CPU, full-vocabulary logits of many rows leave the caches, so small batches are often faster.
    """
    rows = scored_list[0].n_p * steps
    candidates = sorted({min(b, rows, max_batch) for b in (1, 2, 4, 8, 16, 32, 64, rows)})
    timings = {}
    for batch in candidates:
        captum_ig(model, adapter, scored_list, "per_layer", steps, batch, autocast, [0])
        _, seconds, _, _ = timed(
            lambda batch=batch: captum_ig(model, adapter, scored_list, "per_layer", steps, batch, autocast, [0]),
            device,
        )
        timings[batch] = seconds
    return min(timings, key=timings.get)


@contextmanager
def counted_engine(adapter, prefix: bool, autocast_dtype, budget, counts: dict | None):
    """A GateEngine as the workflow builds it; on exit its FLOP count (what it ran) goes to ``counts["flops"]``."""
    engine = GateEngine(
        adapter, rows_per_pass=None, autocast_dtype=autocast_dtype, prefix_cache=prefix, memory_budget=budget
    )
    try:
        yield engine
        if counts is not None:
            counts["flops"] = engine.counts.flops
    finally:
        engine.close()


def engine_ig(
    adapter, scored_list, method, steps, prefix: bool, autocast_dtype, budget, start_losses=True, counts=None
) -> list[np.ndarray]:
    paths = make_paths(method, adapter.n_layers, adapter.n_heads)
    with counted_engine(adapter, prefix, autocast_dtype, budget, counts) as engine:
        return [
            integrated_gradients(engine, s, paths, "riemann_right", steps, start_losses).ig.astype(np.float64)
            for s in scored_list
        ]


def engine_stp(
    adapter, scored_list, method, steps, prefix, autocast_dtype, budget, path_samples, start_losses=True, counts=None
):
    with counted_engine(adapter, prefix, autocast_dtype, budget, counts) as engine:
        out = []
        for s in scored_list:
            paths = make_stp(adapter, s, method, path_samples)
            ig = integrated_gradients(engine, s, paths, "riemann_stieltjes", steps, start_losses).ig
            out.append(ig.astype(np.float64).mean(0, keepdims=True).repeat(s.n_p, 0))
        return out


def plain_losses(model, adapter, scored, gate_rows, autocast) -> np.ndarray:
    """Loss of every p under each gate matrix in ``gate_rows`` [R, L, H], one full forward each: [n_p, R]."""
    device = next(model.parameters()).device
    hook = HeadGates(adapter)
    out = np.zeros((scored.n_p, len(gate_rows)))
    try:
        with torch.no_grad():
            for p in range(scored.n_p):
                for r, gates in enumerate(gate_rows):
                    hook.gates = gates.to(device)
                    with autocast():
                        logits = model(input_ids=scored.input_ids[p : p + 1].to(device)).logits
                        out[p, r] = float(row_loss(logits, scored, torch.tensor([p]))[0])
    finally:
        hook.remove()
    return out


def plain_to_tolerance(model, adapter, scored_list, method, tol, steps, max_steps, autocast) -> tuple[int, float]:
    """Plain loop with riemann_right at steps, 2 steps, ... until every path's relative gap <= tol: (steps, gap)."""
    paths = make_paths(method, adapter.n_layers, adapter.n_heads)
    ends = [
        plain_losses(model, adapter, s, torch.cat([torch.ones(1, *paths.start.shape[1:]), paths.start]), autocast)
        for s in scored_list
    ]
    while True:
        worst = 0.0
        for scored, losses in zip(scored_list, ends, strict=True):
            ig = plain_loop(model, adapter, [scored], method, steps, autocast)[0]  # [n_p, L, H]
            sums = ig.sum(-1) if method == "per_layer" else ig.sum((1, 2))[:, None]  # [n_p, Q]
            delta = losses[:, :1] - losses[:, 1:]
            worst = max(worst, float(relative_gap(sums - delta, delta, DEFAULT_GAP_FLOOR).max()))
        if worst <= tol or steps >= max_steps:
            return steps, worst
        steps = min(2 * steps, max_steps)


def engine_to_tolerance(adapter, scored_list, method, tol, steps, max_steps, autocast_dtype, budget):
    """The engine's adaptive IG with gauss_legendre: (largest steps used, largest relative gap)."""
    engine = GateEngine(adapter, rows_per_pass=None, autocast_dtype=autocast_dtype, memory_budget=budget)
    paths = make_paths(method, adapter.n_layers, adapter.n_heads)
    used, worst = 0, 0.0
    try:
        for scored in scored_list:
            res = adaptive_integrated_gradients(engine, scored, paths, "gauss_legendre", steps, tol, max_steps)
            delta = res.loss_full[:, None] - res.loss_base
            used = max(used, int(res.extras["steps_used"].max()))
            worst = max(worst, float(relative_gap(res.gap, delta, DEFAULT_GAP_FLOOR).max()))
    finally:
        engine.close()
    return used, worst


def stp_mean_gap(ig_sum, loss_full, loss_base) -> np.ndarray:
    """Relative completeness gap [Q] of the users' objective, the mean loss over mask probabilities: ``ig_sum``
    [Q] of the p-mean IG, ``loss_full`` [n_p], ``loss_base`` [n_p, Q]."""
    delta = np.mean(loss_full) - np.mean(loss_base, 0)
    return relative_gap(np.asarray(ig_sum) - delta, delta, DEFAULT_GAP_FLOOR)


def plain_stp_to_tolerance(model, adapter, scored_list, method, tol, steps, max_steps, autocast, path_samples):
    """The users' riemann_stieltjes loop at steps, 2 steps, ... until every path's gap <= tol: (steps, gap)."""
    paths = [make_stp(adapter, s, method, path_samples) for s in scored_list]
    ends = [
        plain_losses(model, adapter, s, torch.cat([torch.ones(1, *q.start.shape[1:]), q.start.float()]), autocast)
        for s, q in zip(scored_list, paths, strict=True)
    ]
    while True:
        worst = 0.0
        for scored, q, losses in zip(scored_list, paths, ends, strict=True):
            sums = plain_stp_paths(model, adapter, scored, q, steps, autocast).sum((1, 2))
            worst = max(worst, float(stp_mean_gap(sums, losses[:, 0], losses[:, 1:]).max()))
        if worst <= tol or steps >= max_steps:
            return steps, worst
        steps = min(2 * steps, max_steps)


def engine_stp_to_tolerance(
    adapter, scored_list, method, tol, steps, max_steps, autocast_dtype, budget, path_samples, scheme, levels=None
):
    """The engine with ``scheme`` at steps, 2 steps, ... (nodes per segment for gauss_segments) until every
    path's gap <= tol: (evaluations per path, gap)."""
    engine = GateEngine(adapter, rows_per_pass=None, autocast_dtype=autocast_dtype, memory_budget=budget)
    paths = [make_stp(adapter, s, method, path_samples, None, scheme, levels) for s in scored_list]
    try:
        while True:
            worst = 0.0
            for scored, q in zip(scored_list, paths, strict=True):
                res = integrated_gradients(engine, scored, q, scheme, steps)
                gap = stp_mean_gap(res.ig_sum.mean(0), res.loss_full, res.loss_base)
                worst = max(worst, float(gap.max()))
            evals = len(q.quadrature(scheme, steps)[0])
            if worst <= tol or evals >= max_steps:
                return evals, worst
            steps *= 2
    finally:
        engine.close()


def stp_race_runs(args, model, adapter, scored_list, method, autocast, autocast_dtype, budget) -> dict:
    """The STP rows of the completeness race: the users' loop, and the engine's two faster rules."""
    levels = 4

    def engine(scheme, start, levels=None):
        return lambda: engine_stp_to_tolerance(
            adapter,
            scored_list,
            method,
            args.completeness,
            start,
            args.max_steps,
            autocast_dtype,
            budget,
            args.path_samples,
            scheme,
            levels,
        )

    return {
        "plain riemann_stieltjes (doubled)": lambda: plain_stp_to_tolerance(
            model,
            adapter,
            scored_list,
            method,
            args.completeness,
            args.steps,
            args.max_steps,
            autocast,
            args.path_samples,
        ),
        "engine trapezoid_stieltjes (doubled)": engine("trapezoid_stieltjes", args.steps),
        f"engine gauss_segments {levels} levels": engine("gauss_segments", 1, levels),
    }


def completeness_race(args, model, adapter, scored_list, autocast, autocast_dtype, budget, device) -> int:
    """Time to a relative completeness gap <= args.completeness: plain riemann_right doubling vs the engine."""
    clock = args.clock
    print(
        f"\ntime to completeness <= {args.completeness:g} ({clock} time; relative gap |gap| / max(|dL|, "
        f"{DEFAULT_GAP_FLOOR:g}), worst path; start {args.steps} steps, cap {args.max_steps})"
    )
    header = f"{'method':9s} {'impl':36s} {'steps':>6s} {'max rel gap':>12s} {'wall s':>8s} {'cpu s':>8s}"
    print(header + f" {'x plain':>8s}\n" + "-" * (len(header) + 9))
    ok = True
    for method in args.methods:
        runs = {
            "plain riemann_right (steps doubled)": lambda m=method: plain_to_tolerance(
                model, adapter, scored_list, m, args.completeness, args.steps, args.max_steps, autocast
            ),
            "engine gauss_legendre (ig.tol)": lambda m=method: engine_to_tolerance(
                adapter, scored_list, m, args.completeness, args.steps, args.max_steps, autocast_dtype, budget
            ),
        }
        if method in ("stp", "stp_layer"):
            runs = stp_race_runs(args, model, adapter, scored_list, method, autocast, autocast_dtype, budget)
        timings = {name: timed(fn, device) for name, fn in runs.items()}
        plain = next(iter(timings.values()))
        for name, ((steps, gap), wall, cpu, _) in timings.items():
            secs = {"wall": wall, "cpu": cpu}[clock]
            ratio = {"wall": plain[1], "cpu": plain[2]}[clock] / secs
            reached = gap <= args.completeness
            ok &= reached
            print(
                f"{method:9s} {name:36s} {steps:6d} {gap:12.2e} {wall:8.2f} {cpu:8.2f} {ratio:8.2f}"
                + ("" if reached else "  (cap hit)")
            )
    return 0 if ok else 1


def timed(fn, device):
    """(result, wall seconds, process CPU seconds, peak memory bytes: CUDA only, 0 on CPU) of one run of ``fn``.

    On CPU the run is not profiled (see :class:`PeakMemory`): profiling would slow it down.
    """
    gc.collect()
    mem = PeakMemory(device)
    with mem.measure() if device.type == "cuda" else nullcontext():
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return out, seconds, cpu_seconds, mem.peak


def gemm_roofline(dims: ModelDims, seq_len: int, device, dtype, clock: str, seconds: float = 0.3):
    """(best FLOP/s, FLOP/s per shape) of ``torch.mm`` at the model's matrix shapes, timed on ``clock``: X @ W and
    dY @ W^T for the layer weights (d x d, d x intermediate, intermediate x d) and the vocabulary head, at T, 6T
    and 12T rows.

    An upper bound on the rate of the matrix work the FLOP counts count: no implementation of the same FLOPs runs
    faster than its best GEMM, so ``t_plain * R / F_impl`` bounds the ratio to the plain loop at an equal rule."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    d, inter, vocab = dims.hidden, dims.intermediate, dims.vocab
    rates = {}
    for m in (seq_len, 6 * seq_len, 12 * seq_len):
        for k, n in ((d, d), (d, inter), (inter, d), (d, vocab)):
            if m * max(k, n) * 4 > 2**30:
                continue
            x, w, dy = (torch.randn(*shape, device=device, dtype=dtype) for shape in ((m, k), (k, n), (m, n)))
            for name, a, b in (("X@W", x, w), ("dY@W^T", dy, w.T)):
                torch.mm(a, b)
                reps, start = 0, now()
                while now() - start < seconds:
                    torch.mm(a, b)
                    reps += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                rates[f"{name} [{m}x{k}]x[{k}x{n}]"] = 2.0 * m * k * n * reps / (now() - start)
    return max(rates.values()), rates


def print_roofline(rows: list[dict], rate: float, rates: dict, clock: str) -> None:
    """The roofline block: each implementation's FLOP rate against the best GEMM rate, and the bound on its ratio
    to the plain loop if it ran every counted FLOP at that rate."""
    secs = "seconds" if clock == "wall" else "cpu"
    print(f"\nroofline: best single-GEMM rate R = {rate / 1e9:.1f} GFLOP/s ({clock} clock); fastest shapes:")
    for shape, r in sorted(rates.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {shape:34s} {r / 1e9:7.1f} GFLOP/s")
    print(f"{'method':9s} {'impl':16s} {'GFLOP':>9s} {'% of R':>7s} {'x plain':>8s} {'bound x plain (at R)':>21s}")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        plain = next((r for r in mine if r["impl"] == "plain"), None)
        for r in mine:
            bound = plain[secs] * rate / (r["gflop"] * 1e9) if plain else float("nan")
            print(
                f"{method:9s} {r['impl']:16s} {r['gflop']:9.1f} {100 * r['gflops'] * 1e9 / rate:7.1f} "
                f"{r['vs_plain']:8.2f} {bound:21.2f}"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="minilm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mask-probs", type=float, nargs="+", default=[0.15, 0.5])
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument(
        "--methods", nargs="+", default=["per_layer", "joint"], choices=["per_layer", "joint", "stp", "stp_layer"]
    )
    parser.add_argument("--path-samples", type=int, default=2, help="STP paths per sample (stp, stp_layer rows)")
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain loop (slow for big models)")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all implementations; each keeps its best round"
    )
    parser.add_argument("--memory-budget-gib", type=float, help="activation budget per pass (default: engine's)")
    parser.add_argument(
        "--captum-batch", type=int, help="Captum internal_batch_size (default: the fastest of 1, 2, 4, ... that fits)"
    )
    parser.add_argument(
        "--autocast", choices=["auto", "none", "bf16"], default="auto", help="auto: bf16 autocast on CUDA only"
    )
    parser.add_argument("--no-memory", action="store_true", help="CPU: skip the untimed peak-memory passes")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="clock for the ratios: wall, or process CPU time (steadier on a shared machine with --threads 1)",
    )
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak for the MFU column (default: by GPU name)")
    parser.add_argument("--rtol", type=float, help="agreement tolerance relative to max |IG| (1e-5; 3e-2 for bf16)")
    parser.add_argument(
        "--completeness", type=float, help="time to a relative completeness gap <= this instead (plain vs engine)"
    )
    parser.add_argument("--max-steps", type=int, default=4096, help="step cap of --completeness")
    parser.add_argument(
        "--roofline", action="store_true", help="also time the model's GEMM shapes and print the bound at equal rule"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*did not already require gradients.*")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    big = args.size == "8b"
    dtype = torch.bfloat16 if big else torch.float32
    use_bf16 = args.autocast == "bf16" or (args.autocast == "auto" and device.type == "cuda")
    autocast_dtype = torch.bfloat16 if use_bf16 else None
    rtol = args.rtol if args.rtol is not None else (3e-2 if autocast_dtype or dtype != torch.float32 else 1e-5)

    def autocast():
        if autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=autocast_dtype)

    s = SIZES[args.size]
    model = build_model(args.size, device, dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    adapter = Adapter(model, mask_token_id=min(MASK_ID[s["kind"]], model.config.vocab_size - 1))
    scored_list = make_scored(adapter, s["seq_len"], model.config.vocab_size, args.mask_probs, args.samples)
    dims = ModelDims.from_config(model.config, 2 if (big or autocast_dtype) else 4)
    budget = int(args.memory_budget_gib * 2**30) if args.memory_budget_gib else default_memory_budget(device)
    if args.completeness:
        print(f"size={args.size}: {dims.n_layers} layers x {dims.n_heads} heads, T={s['seq_len']}, device={device}")
        return completeness_race(args, model, adapter, scored_list, autocast, autocast_dtype, budget, device)
    t = s["seq_len"]
    n_scored = float(np.mean([n for sc in scored_list for n in sc.n_scored]))
    on_gpu_fused = device.type == "cuda"
    captum_max = choose_rows(budget, row_bytes(dims, t, dims.n_layers, t, True, not on_gpu_fused, True), 256)
    captum_batch = args.captum_batch or pick_captum_batch(
        model, adapter, scored_list[:1], args.steps, captum_max, autocast, device
    )
    print(
        f"size={args.size} ({s['kind']}: {dims.n_layers} layers x {dims.n_heads} heads, hidden {dims.hidden}, "
        f"intermediate {dims.intermediate}, vocab {dims.vocab}, T={t}); device={device} "
        f"dtype={dtype} autocast={autocast_dtype}; steps={args.steps} mask_probs={args.mask_probs} "
        f"samples={args.samples} (mean scored positions {n_scored:.1f}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; memory budget {budget / 2**30:.2f} GiB, captum internal batch "
        f"{captum_batch}",
        flush=True,
    )
    engine = GateEngine(adapter, rows_per_pass=None, memory_budget=budget)
    print(
        "engine rows/pass (grad): "
        + ", ".join(f"{k} layers: {engine.rows_for(scored_list[0], k, True)}" for k in sorted({1, dims.n_layers}))
    )
    engine.close()
    impls, flops, results, ran = {}, {}, {}, {}
    for method in args.methods:
        if method in ("stp", "stp_layer"):
            ran[method] = {name: {} for name in ("engine", "engine-igonly", "engine-noprefix")}
            impls[method] = {
                name: lambda m=method, name=name, prefix=prefix, start=start: engine_stp(
                    adapter,
                    scored_list,
                    m,
                    args.steps,
                    prefix,
                    autocast_dtype,
                    budget,
                    args.path_samples,
                    start_losses=start,
                    counts=ran[m][name],
                )
                for name, prefix, start in ENGINE_VARIANTS
            } | {
                "plain": lambda m=method: plain_stp(
                    model, adapter, scored_list, m, args.steps, autocast, args.path_samples
                ),
            }
            if method == "stp" or args.skip_plain:
                impls[method].pop("engine-noprefix" if method == "stp" else "plain")
            if method == "stp" and args.skip_plain:
                del impls[method]["plain"]
            # the users' loop: P paths of the smooth path with the same prefix structure (joint / per_layer), every
            # node its own row (no shared all-on row)
            cost = dict(
                dims=dims,
                seq_len=t,
                n_samples=args.samples,
                n_p=len(args.mask_probs),
                steps=args.steps * args.path_samples,
            )
            cost.update(method="joint" if method == "stp" else "per_layer", scored_fraction=n_scored / t)
            flops[method] = {"plain": ig_cost(**PLAIN_COST, **cost)["flops"]}
            continue
        ran[method] = {name: {} for name in ("engine", "engine-igonly", "engine-noprefix")}
        impls[method] = {
            name: lambda m=method, name=name, prefix=prefix, start=start: engine_ig(
                adapter, scored_list, m, args.steps, prefix, autocast_dtype, budget, start, counts=ran[m][name]
            )
            for name, prefix, start in ENGINE_VARIANTS
        } | {
            "captum": lambda m=method: captum_ig(model, adapter, scored_list, m, args.steps, captum_batch, autocast),
            "plain": lambda m=method: plain_loop(model, adapter, scored_list, m, args.steps, autocast),
        }
        if method == "joint":
            del impls[method]["engine-noprefix"]  # nothing to cache on the joint path
        for name, skip in (("captum", args.skip_captum), ("plain", args.skip_plain)):
            if skip:
                del impls[method][name]
        cost = dict(dims=dims, seq_len=t, n_samples=args.samples, n_p=len(args.mask_probs), steps=args.steps)
        cost.update(method=method, scored_fraction=n_scored / t)
        flops[method] = {
            "captum": ig_cost(**PLAIN_COST, **cost)["flops"],
            "plain": ig_cost(param_grads=True, **PLAIN_COST, **cost)["flops"],
        }
    peaks = {}
    if device.type == "cpu" and not args.no_memory:
        # untimed memory passes (see PeakMemory)
        for method in args.methods:
            for name, fn in impls[method].items():
                gc.collect()
                mem = PeakMemory(device)
                with mem.measure():
                    fn()
                peaks[method, name] = mem.peak
    # warm-up, so one-off costs (kernel selection, allocator growth) are not timed: the engine runs once as
    # timed; the plain loop and Captum repeat the same shapes for every layer, so one layer warms them
    for method in args.methods:
        if method in ("stp", "stp_layer"):
            engine_stp(adapter, scored_list[:1], method, args.steps, True, autocast_dtype, budget, 1)
            if not args.skip_plain:
                plain_stp(model, adapter, scored_list[:1], method, 1, autocast, 1, [0])
            continue
        for prefix in (True, False):
            engine_ig(adapter, scored_list[:1], method, args.steps, prefix, autocast_dtype, budget)
        if not args.skip_captum:
            captum_ig(model, adapter, scored_list[:1], method, args.steps, captum_batch, autocast, [0])
        if not args.skip_plain:
            plain_loop(model, adapter, scored_list[:1], method, 1, autocast, [0])
    # rounds: every implementation once per round, best of the rounds kept, so a machine that drifts in speed
    # affects all implementations alike
    for _ in range(args.repeats):
        for method in args.methods:
            for name, fn in impls[method].items():
                out, seconds, cpu, peak = timed(fn, device)
                print(f"  {method:9s} {name:16s} {seconds:9.2f} s wall {cpu:9.2f} s cpu", flush=True)
                clock = {"wall": seconds, "cpu": cpu}[args.clock]
                if (method, name) not in results or clock < results[method, name][args.clock]:
                    peak = peaks.get((method, name), peak)
                    results[method, name] = dict(ig=np.stack(out), wall=seconds, cpu=cpu, peak=peak)

    for method, names in ran.items():
        flops[method].update({name: counts["flops"] for name, counts in names.items() if counts})
    rows = []
    for method in args.methods:
        mine = {name: results[method, name] for name in impls[method]}
        ref = mine["plain" if "plain" in mine else "captum" if "captum" in mine else "engine"]["ig"]
        for name, r in mine.items():
            diff = float(np.abs(r["ig"] - ref).max() / np.abs(ref).max())
            secs = r[args.clock]
            rows.append(
                dict(
                    size=args.size,
                    method=method,
                    impl=name,
                    seconds=r["wall"],
                    cpu=r["cpu"],
                    vs_plain=mine["plain"][args.clock] / secs if "plain" in mine else float("nan"),
                    vs_captum=mine["captum"][args.clock] / secs if "captum" in mine else float("nan"),
                    peak_mib=r["peak"] / 2**20,
                    gflop=flops[method][name] / 1e9,
                    gflops=flops[method][name] / secs / 1e9,
                    diff=diff,
                    ok=diff <= rtol,
                )
            )
    mem_note = (
        "CUDA max allocated above the start"
        if device.type == "cuda"
        else "peak tensor bytes above the start from torch profiler allocation events, in an untimed pass"
    )
    peak = args.peak_tflops * 1e12 if args.peak_tflops else bf16_peak(device)
    header = (
        f"{'size':7s} {'method':9s} {'impl':16s} {'wall s':>8s} {'cpu s':>8s} {'x plain':>8s} {'x captum':>8s} "
        f"{'peak MiB':>9s} {'GFLOP':>9s} {'GFLOP/s':>8s} {'MFU %':>6s} {'max|dIG|/max|IG|':>17s}"
    )
    mfu_note = f"MFU = FLOP/s / {peak / 1e12:g} TFLOP/s bf16 peak" if peak else "MFU: no known peak for this device"
    print(
        f"\nspeed-ups and GFLOP/s use {args.clock} time: time(plain or captum) / time(impl); peak memory: {mem_note}; "
        f"{mfu_note}; agreement: max |IG - IG_ref| / max |IG_ref| <= {rtol:g}, reference = plain loop (else Captum)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mfu = f"{100 * r['gflops'] * 1e9 / peak:6.1f}" if peak else "     -"
        print(
            f"{r['size']:7s} {r['method']:9s} {r['impl']:16s} {r['seconds']:8.2f} {r['cpu']:8.2f} {r['vs_plain']:8.2f} "
            f"{r['vs_captum']:8.2f} {r['peak_mib']:9.0f} {r['gflop']:9.1f} {r['gflops']:8.1f} "
            f"{mfu} "
            f"{r['diff']:13.2e} {'ok' if r['ok'] else 'DIFF'}"
        )
    if args.roofline:
        print_roofline(rows, *gemm_roofline(dims, t, device, dtype, args.clock), args.clock)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
