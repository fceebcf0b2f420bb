"""Peak activation memory of one gated gradient pass, measured on CPU, against the engine's memory model.

    python bench/memory_slice.py --seq 512 --dtype bfloat16 --json out.json   # LLaDA-8B-shaped slice, one grid cell
    python bench/memory_slice.py --shape tiny --seq 256 --vocab 8192           # seconds (tests/test_memory_model.py)
    python bench/memory_slice.py --recompute out.json                          # stored rows against the current model

The slice is a randomly initialised LLaMA-architecture model built locally (transformers ``LlamaConfig``, no hub)
with LLaDA-8B's layer shape (d_model 4096, 32 heads without GQA, SwiGLU intermediate 12288) and ``--layers`` layers;
its vocabulary is cut to ``--vocab`` (default 32768, tied embeddings) to keep the weights small: the head's term of
the model scales with the vocabulary and is measured at that size. The script runs with glibc's mmap threshold fixed
at 64 KiB (``MALLOC_MMAP_THRESHOLD_``; it re-executes itself with it), so every tensor above that is its own
mapping, returned to the system when freed, and the resident set tracks the live tensors. Each measurement, one
after the other, builds the model, runs one warm-up pass on a short input, resets its peak resident set
(``/proc/self/clear_refs`` 5), runs ``GateEngine.gradients`` on ``--rows`` rows of one sample (mask probability 0.5,
gates 0.5, every layer gated, prefix caching off) and reports the peak resident set minus the resident set before
the pass (weights, inputs and libraries excluded). The prediction is :func:`headattr.engine.cost.activation_bytes`
for the same rows, scored positions, attention kernel (``sdpa`` on CPU is PyTorch's fused flash kernel; ``eager``
materialises the attention probabilities) and checkpointed layers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

SHAPES = {  # (d_model, heads, intermediate)
    "llada-8b": (4096, 32, 12288),
    "tiny": (256, 8, 1024),
}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(spec: dict):
    """(adapter, scored input of one sample of a given length) for a measurement ``spec``."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from headattr.data.samples import Sample
    from headattr.models.adapters import Adapter
    from headattr.objective.loss import build_scored_input
    from headattr.objective.masking import draw_masks

    d, heads, inter = SHAPES[spec["shape"]]
    cfg = LlamaConfig(
        hidden_size=d,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        num_hidden_layers=spec["layers"],
        vocab_size=spec["vocab"],
        max_position_embeddings=max(spec["seq"], 64),
        tie_word_embeddings=True,
        attn_implementation=spec["attn"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, spec["dtype"])).eval()
    adapter = Adapter(model, mask_token_id=3)

    def scored(seq: int):
        ids = np.random.default_rng(seq).integers(5, spec["vocab"], seq)
        sample = Sample(f"s{seq}", ids, 0, seq, "x")
        masks = draw_masks([sample], [0.5], "bernoulli", 1, adapter.shift_logits)[sample.sample_id]
        return build_scored_input(sample, masks, [0.5], "diffusion", "mean", 3, adapter.shift_logits)

    return adapter, scored


def measure(spec: dict) -> dict:
    """Run one measurement in this process (see the module docstring): peak activation bytes and the prediction."""
    import torch

    from headattr.engine.gate_engine import GateEngine

    torch.set_num_threads(spec["threads"])
    adapter, scored_of = build(spec)
    engine = GateEngine(
        adapter, rows_per_pass=spec["rows"], prefix_cache=False, activation_checkpointing=spec["checkpointing"]
    )
    rows = spec["rows"]

    def run(scored):
        gates = torch.full((rows, adapter.n_layers, adapter.n_heads), 0.5)
        return engine.gradients(scored, torch.zeros(rows, dtype=torch.long), gates)

    run(scored_of(16))
    scored = scored_of(spec["seq"])
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run(scored)
    peak = (_status_kib("VmHWM") - before) * 1024
    row = {**spec, "n_scored": int(scored.n_scored[0]), "measured": peak}
    return row | {"predicted": predict(row)}


def predict(row: dict) -> int:
    """:func:`headattr.engine.cost.activation_bytes` of a measured ``row`` (its shape, rows and scored positions)."""
    from headattr.engine.cost import ModelDims, activation_bytes
    from headattr.models.checkpointing import checkpointed_layers

    d, heads, inter = SHAPES[row["shape"]]
    bytes_per_value = {"float32": 4, "bfloat16": 2}[row["dtype"]]
    dims = ModelDims(row["layers"], heads, d, inter, row["vocab"], heads, True, bytes_per_value)
    n_ckpt = len(checkpointed_layers(row["layers"], row["checkpointing"], 2))
    return activation_bytes(
        dims,
        row["seq"],
        row["layers"],
        row["n_scored"],
        rows=row["rows"],
        fused_attention=row["attn"] == "sdpa",
        checkpointed=n_ckpt,
    )


def format_row(r: dict) -> str:
    mib = 2**20
    return (
        f"{r['shape']:<9} L={r['layers']} T={r['seq']:<5} {r['dtype']:<8} {r['attn']:<5} {r['checkpointing']:<11} "
        f"rows={r['rows']} S={r['n_scored']:<5} measured {r['measured'] / mib:8.1f} MiB  "
        f"predicted {r['predicted'] / mib:8.1f} MiB  ratio {r['predicted'] / r['measured']:.3f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llada-8b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--attn", nargs="+", default=["sdpa"], choices=["sdpa", "eager"])
    parser.add_argument("--checkpointing", nargs="+", default=["none", "whole_layer"])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here as JSON")
    parser.add_argument("--recompute", nargs="+", help="print stored JSON rows against the current model instead")
    args = parser.parse_args(argv)
    if args.recompute:
        for path in args.recompute:
            for row in json.loads(Path(path).read_text()):
                print(format_row(row | {"predicted": predict(row)}))
        return 0
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # glibc reads it at start: run again with it
        if argv is not None:
            raise RuntimeError(f"run the script itself (it sets {MALLOC_ENV} for glibc before starting)")
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **MALLOC_ENV})
    results = []
    for seq in args.seq:
        for dtype in args.dtype:
            for attn in args.attn:
                for mode in args.checkpointing:
                    spec = {
                        "shape": args.shape,
                        "layers": args.layers,
                        "seq": seq,
                        "dtype": dtype,
                        "attn": attn,
                        "checkpointing": mode,
                        "rows": args.rows,
                        "vocab": args.vocab,
                        "threads": args.threads,
                    }
                    results.append(measure(spec))
                    gc.collect()
                    print(format_row(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
