"""Completeness gap of STP IG per scheme against evaluations per path, on the demo model and a tiny random BERT.

    python bench/stp_convergence.py

Prints the median and max over samples, mask probabilities and paths of
|sum IG - (L(all on) - L(path start))| / |L(all on) - L(path start)|, in float64, for ``stp`` (all heads) and
``stp_layer`` (one layer's heads), 4 paths each. Evaluations per path = gradient rows (K for riemann_stieltjes,
K + 1 for trapezoid_stieltjes, levels x K for gauss_segments).
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import random_ids, tiny_bert  # noqa: E402

from headattr.data.samples import Sample  # noqa: E402
from headattr.engine.gate_engine import GateEngine  # noqa: E402
from headattr.methods.ig import integrated_gradients  # noqa: E402
from headattr.methods.stp import stp_layer_paths, stp_paths  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402
from headattr.objective.loss import build_scored_input  # noqa: E402
from headattr.objective.masking import draw_masks  # noqa: E402

PROBS = [0.15, 0.5, 0.9]
N_SAMPLES = 1
LEVELS = 4
SCHEMES = {
    "riemann_stieltjes": [(k, k) for k in (4, 8, 16, 32)],
    "trapezoid_stieltjes": [(k, k + 1) for k in (4, 8, 16, 32)],
    "gauss_segments": [(n, LEVELS * n) for n in (1, 2, 4, 8)],
}


def demo_samples(n: int):
    from headattr.data.sources import read_table, sample_records, to_records
    from headattr.data.tokenize import tokenize_records
    from headattr.models.loading import load_model

    model, tokenizer = load_model(str(ROOT / "resources/demo/model"), "float64", "cpu")
    records = sample_records(to_records(read_table("demo")), n, 47)
    samples, _ = tokenize_records(records, tokenizer, 64)
    return Adapter(model, mask_token_id=tokenizer.mask_token_id), samples


def rel_gaps(engine, scored_list, method, scheme, steps):
    adapter = engine.adapter
    out = []
    for scored in scored_list:
        build = stp_paths if method == "stp" else stp_layer_paths
        paths = build(adapter.n_layers, adapter.n_heads, scored.sample_id, 0.0, 4, 0, None, scheme, LEVELS)
        res = integrated_gradients(engine, scored, paths, scheme, steps)
        out.append(np.abs(res.gap) / np.abs(res.loss_full[:, None] - res.loss_base))
    return np.concatenate([g.ravel() for g in out])


def main() -> None:
    torch.set_num_threads(2)
    tiny = Adapter(tiny_bert(init=0.2).double(), mask_token_id=4)
    tiny_samples = [Sample(f"s{i}", random_ids(18, i), 3, 17) for i in range(N_SAMPLES)]
    demo, demo_list = demo_samples(N_SAMPLES)
    for name, adapter, samples in (
        ("demo (BERT 4x4)", demo, demo_list),
        ("tiny BERT 3x4, init 0.2", tiny, tiny_samples),
    ):
        masks = draw_masks(samples, PROBS, "bernoulli", 7, adapter.shift_logits)
        scored = [
            build_scored_input(s, masks[s.sample_id], PROBS, "diffusion", "mean", adapter.mask_token_id)
            for s in samples
        ]
        engine = GateEngine(adapter, rows_per_pass=64)
        print(f"\n{name}: {len(samples)} samples, p = {PROBS}, 4 paths; median / max relative gap")
        for method in ("stp", "stp_layer"):
            for scheme, grid in SCHEMES.items():
                cells = []
                for steps, evals in grid:
                    g = rel_gaps(engine, scored, method, scheme, steps)
                    cells.append(f"{evals:>3d}: {np.median(g):.1e} / {g.max():.1e}")
                print(f"  {method:10s}{scheme:21s}" + "  ".join(cells), flush=True)
        engine.close()


if __name__ == "__main__":
    main()
