"""Calibrate the CPU wall-time estimate of :mod:`headattr.engine.cost`: FLOP rate plus a fixed cost per layer call.

    nice -n 10 python bench/calibrate_cost.py            # 2 torch threads, the cpu-2core class

Runs one short per-layer IG job (1 sample, 1 mask probability, 2 riemann_right steps, 16 rows per pass) on
randomly initialised BERT MLMs of a few shapes, times it, and fits ``seconds = flops / R + layer_calls * c`` by
least squares (R FLOP/s sustained, c seconds per layer execution of a model call; FLOPs and layer calls as the
engine counted them, which equal :func:`headattr.engine.cost.ig_cost`, tests/test_cost.py). Prints per shape the
FLOPs-only prediction at ``DEVICE_FLOPS['cpu-2core']``, the fitted prediction, the prediction of the model
fitted without that shape (leave-one-out) and the measured seconds.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import random_ids  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from headattr.data.samples import Sample  # noqa: E402
from headattr.engine.cost import DEVICE_FLOPS  # noqa: E402
from headattr.engine.gate_engine import GateEngine  # noqa: E402
from headattr.methods.ig import integrated_gradients  # noqa: E402
from headattr.methods.paths import make_paths  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402
from headattr.objective.loss import build_scored_input  # noqa: E402
from headattr.objective.masking import draw_masks  # noqa: E402

# (layers, heads, hidden, T): the overhead-bound shape, a FLOP-bound one, one between
SHAPES = [(32, 32, 64, 64), (4, 4, 256, 256), (12, 8, 128, 128)]
VOCAB, PROBS, STEPS, ROWS = 1000, [0.5], 2, 16


def run(layers, heads, hidden, seq_len):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=seq_len + 2,
        attn_implementation="eager",
    )
    adapter = Adapter(BertForMaskedLM(cfg).eval())
    engine = GateEngine(adapter, rows_per_pass=ROWS)
    sample = Sample("s0", random_ids(seq_len, 0, low=5) % VOCAB, 1, seq_len - 1, "x")
    masks = draw_masks([sample], PROBS, "bernoulli", 0, adapter.shift_logits)["s0"]
    scored = build_scored_input(sample, masks, PROBS, "diffusion", "mean", 4, adapter.shift_logits)
    paths = make_paths("per_layer", layers, heads)
    start, cpu = time.perf_counter(), time.process_time()
    integrated_gradients(engine, scored, paths, "riemann_right", STEPS)
    return time.perf_counter() - start, time.process_time() - cpu, engine.counts


def fit(flops, calls, seconds):
    a = np.stack([flops, calls], 1)
    (inv_rate, per_call), *_ = np.linalg.lstsq(a, seconds, rcond=None)
    return inv_rate, per_call


def main():
    torch.set_num_threads(2)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for shape in SHAPES:
        seconds, cpu, counts = run(*shape)
        rows.append((shape, counts.flops, counts.layer_calls, seconds))
        print(
            f"measured {shape}: {seconds:.2f} s wall, {cpu:.2f} s CPU, {counts.flops:.3g} FLOPs, "
            f"{counts.layer_calls} layer calls"
        )
    flops, calls, seconds = (np.array([r[i] for r in rows], dtype=float) for i in (1, 2, 3))
    inv_rate, per_call = fit(flops, calls, seconds)
    print(f"fit: R = {1 / inv_rate:.3g} FLOP/s, c = {per_call * 1e3:.3g} ms per layer call")
    print("| layers x heads, hidden, T | FLOPs-only s | fitted s | leave-one-out s | measured s | errors |")
    print("|---|---|---|---|---|---|")
    for i, (shape, f, c, s) in enumerate(rows):
        keep = np.arange(len(rows)) != i
        loo_inv, loo_call = fit(flops[keep], calls[keep], seconds[keep])
        preds = (f / DEVICE_FLOPS["cpu-2core"], f * inv_rate + c * per_call, f * loo_inv + c * loo_call)
        errs = ", ".join(f"{100 * (p - s) / s:+.0f}%" for p in preds)
        label = f"{shape[0]} x {shape[1]}, {shape[2]}, {shape[3]}"
        print(f"| {label} | {preds[0]:.2f} | {preds[1]:.2f} | {preds[2]:.2f} | {s:.2f} | {errs} |")


if __name__ == "__main__":
    main()
