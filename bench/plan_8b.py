"""Rows per pass, passes, FLOPs and hours of the users' seed-2 workload on 80 GB and 141 GB GPUs, from the cost model.

    python bench/plan_8b.py                      # the table of docs/performance-8b.md
    python bench/plan_8b.py --seq 1024 --mfu 0.3

The workload is the users' Dream-Base-7B run (CONTEXT.md, report 002): 50 samples x 5 mask probabilities x 8 IG
steps (riemann_right, their rule), per-layer (prefix-cached, attention replay) and joint, sequences of ``--seq``
tokens (their max length 2048) with half the positions scored. The model: Qwen2.5-7B's layout (28 layers x 28
heads, 4 KV heads, hidden 3584, SwiGLU 18944, vocab 152064) in bf16 weights (model.dtype bfloat16), fused attention
(SDPA flash / memory-efficient on GPU). The activation budget is the engine's default, 80 % of what is free after the
weights; rows per pass are :func:`headattr.engine.cost.choose_rows` of :func:`headattr.engine.cost.activation_bytes`
for the full-depth gradient pass (the largest), at most the engine's 256. FLOPs are :func:`ig_cost`'s (the same count
the engine's ``counts`` keep) plus, with activation checkpointing, one more forward of every layer a gradient row
backpropagates through; hours are FLOPs / (MFU x dense bf16 peak).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from headattr.engine.cost import ModelDims, activation_bytes, choose_rows, ig_cost  # noqa: E402
from headattr.engine.gate_engine import MAX_AUTO_ROWS  # noqa: E402

DREAM_7B = ModelDims(
    n_layers=28, n_heads=28, hidden=3584, intermediate=18944, vocab=152064, n_kv_heads=4, gated_mlp=True, dtype_bytes=2
)
GPUS = {"H100 80GB": (80e9, 989e12), "H200 141GB": (141e9, 989e12)}  # memory bytes, dense bf16 peak FLOP/s
WORKLOAD = {"n_samples": 50, "n_p": 5, "steps": 8, "rule": "riemann_right"}


def weight_bytes(dims: ModelDims) -> int:
    """bf16 weights: every layer's matmuls and the (untied) embedding and head."""
    return (dims.n_layers * dims.layer_params + 2 * dims.vocab * dims.hidden) * dims.dtype_bytes


def plan(dims: ModelDims, gpu_bytes: float, seq: int, method: str, checkpointing: bool) -> dict:
    """Rows per pass, passes, FLOPs (checkpointing's recomputation included) of the workload on one GPU."""
    budget = int(0.8 * (gpu_bytes - weight_bytes(dims)))
    per_row = activation_bytes(
        dims, seq, dims.n_layers, seq // 2, fused_attention=True, checkpointed=dims.n_layers if checkpointing else 0
    )
    rows = choose_rows(budget, per_row, MAX_AUTO_ROWS)
    cost = ig_cost(dims, seq, method=method, rows_per_pass=rows, **WORKLOAD)
    layer_forward = 2.0 * dims.layer_params * seq + 4.0 * seq * seq * dims.hidden
    recompute = cost["layer_backwards"] * layer_forward if checkpointing else 0.0
    return {"rows": rows, "per_row_gib": per_row / 2**30, "passes": cost["passes"], "flops": cost["flops"] + recompute}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (the cost model's 40 %%)")
    args = parser.parse_args(argv)
    print(f"Dream-7B shape, T={args.seq}, weights {weight_bytes(DREAM_7B) / 2**30:.1f} GiB bf16, MFU {args.mfu:.0%}")
    print("| GPU | method | checkpointing | GiB per row | rows per pass | passes | PFLOP | hours |")
    print("|---|---|---|---|---|---|---|---|")
    for gpu, (memory, peak) in GPUS.items():
        for method in ("per_layer", "joint"):
            for ckpt in (False, True):
                p = plan(DREAM_7B, memory, args.seq, method, ckpt)
                hours = p["flops"] / (args.mfu * peak) / 3600
                print(
                    f"| {gpu} | {method} | {'whole_layer' if ckpt else 'none'} | {p['per_row_gib']:.2f} | "
                    f"{p['rows']} | {p['passes']:,} | {p['flops'] / 1e15:,.0f} | {hours:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
