"""Completeness gaps of IG per quadrature rule and step count on a tiny random BERT (fp32 and fp64).

    python bench/completeness_table.py

Prints max |sum IG - (L(all on) - L(path start))| / |L(all on) - L(path start)| over mask probabilities and paths.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import N_HEADS, N_LAYERS, random_ids, tiny_bert  # noqa: E402

from headattr.data.samples import Sample  # noqa: E402
from headattr.engine.gate_engine import GateEngine  # noqa: E402
from headattr.methods.ig import integrated_gradients  # noqa: E402
from headattr.methods.paths import make_paths  # noqa: E402
from headattr.methods.quadrature import RULES  # noqa: E402
from headattr.models.adapters import Adapter  # noqa: E402
from headattr.objective.loss import build_scored_input  # noqa: E402
from headattr.objective.masking import draw_masks  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    sample = Sample("s0", random_ids(18, 0), 3, 17)
    probs = [0.15, 0.5, 0.9]
    masks = draw_masks([sample], probs, "bernoulli", 7)["s0"]
    scored = build_scored_input(sample, masks, probs, "diffusion", "mean", 4)
    print(f"tiny BERT {N_LAYERS} layers x {N_HEADS} heads (init 0.2), one sample, p = {probs}")
    print(f"{'dtype':8s}{'mode':11s}{'rule':16s}" + "".join(f"{f'm={m}':>11s}" for m in (4, 8, 16, 32, 64)))
    for dtype in (torch.float32, torch.float64):
        model = tiny_bert(init=0.2).to(dtype)
        engine = GateEngine(Adapter(model), rows_per_pass=64)
        for mode in ("per_layer", "joint"):
            paths = make_paths(mode, N_LAYERS, N_HEADS)
            for rule in RULES:
                gaps = []
                for m in (4, 8, 16, 32, 64):
                    res = integrated_gradients(engine, scored, paths, rule, m)
                    delta = res.loss_full[:, None] - res.loss_base
                    gaps.append(np.abs(res.gap / delta).max())
                name = str(dtype).replace("torch.", "")
                print(f"{name:8s}{mode:11s}{rule:16s}" + "".join(f"{g:11.2e}" for g in gaps))


if __name__ == "__main__":
    main()
