"""The integrand dL/dt along the default run's hardest IG paths, and how each refinement converges on them.

    python bench/path_integrand.py    # after `snakemake --cores 2` (reads results/tokens, results/masks)

Loads the demo model and the default run's tokens and masks (seed 1234 and 47), then for
- the hardest per-layer path (layer 0 of ``add-heldout-00362``, seed 1234; the default run's largest step count):
  dL/dt at 401 points of t, and the relative completeness gap against gradient rows for Gauss-Legendre doubled
  (8..128 nodes) and for ``ig.refine: panels`` at tol 1e-2, 1e-3, 1e-4;
- the layer-5 path of ``copy-heldout-00243`` (seed 47), where main's default stalled at 1.1e-3: the gap against
  nodes with fp32 ``F.cross_entropy`` (main's loss) and with :func:`headattr.objective.loss.token_cross_entropy`.
Prints the numbers and writes docs/convergence.png. About a minute on 2 cores.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import headattr.engine.gate_engine as gate_engine  # noqa: E402
from headattr.data.samples import unpack_samples  # noqa: E402
from headattr.engine.gate_engine import GateEngine  # noqa: E402
from headattr.methods.adaptive import adaptive_integrated_gradients, relative_gap  # noqa: E402
from headattr.methods.ig import integrated_gradients  # noqa: E402
from headattr.methods.paths import per_layer_paths  # noqa: E402
from headattr.models.loading import load_adapter  # noqa: E402
from headattr.objective.loss import build_scored_input  # noqa: E402
from headattr.objective.masking import unpack_masks  # noqa: E402
from headattr.pipeline.dumps import load_npz  # noqa: E402

PROBS = [0.15, 0.5, 0.9]
MODEL = {"path": str(ROOT / "resources/demo/model"), "dtype": "float32", "device": "cpu"}


def scored_input(adapter, seed: int, sample_id: str):
    """The default run's scored input of ``sample_id`` under ``seed`` (its tokens and masks from results/)."""
    (tokens,) = glob.glob(str(ROOT / f"results/tokens/seed{seed}-*/tokens.npz"))
    (masks,) = glob.glob(str(ROOT / f"results/masks/seed{seed}-*/masks.npz"))
    sample = {s.sample_id: s for s in unpack_samples(load_npz(tokens))}[sample_id]
    mask = unpack_masks(load_npz(masks))[sample_id]
    return build_scored_input(sample, mask, PROBS, "diffusion", "mean", adapter.mask_token_id, adapter.shift_logits)


def worst_gap(res) -> float:
    return float(relative_gap(res.gap, res.loss_full[:, None] - res.loss_base).max())


def doubling(engine, scored, paths) -> list[tuple[int, float]]:
    """(cumulative gradient rows per p, relative gap) of Gauss-Legendre at 8, 16, ..., 128 nodes, as doubling runs."""
    out, rows = [], 0
    for m in (8, 16, 32, 64, 128):
        rows += m
        out.append((rows, worst_gap(integrated_gradients(engine, scored, paths, "gauss_legendre", m))))
    return out


def panels(adapter, scored, paths) -> list[tuple[int, float]]:
    """(gradient rows per p, relative gap) of ig.refine: panels at tol 1e-2, 1e-3, 1e-4 (cap 512 nodes)."""
    out = []
    for tol in (1e-2, 1e-3, 1e-4):
        engine = GateEngine(adapter, rows_per_pass=None)
        res = adaptive_integrated_gradients(engine, scored, paths, "gauss_legendre", 8, tol, 512, refine="panels")
        out.append((engine.counts.grad_rows // scored.n_p, worst_gap(res)))
    return out


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    _, _, adapter = load_adapter({**MODEL, "trust_remote_code": False, "adapter": None})
    engine = GateEngine(adapter, rows_per_pass=None)

    hard = scored_input(adapter, 1234, "add-heldout-00362")
    path0 = per_layer_paths(adapter.n_layers, adapter.n_heads, layers=[0])
    t = np.linspace(0, 1, 401)
    gates = torch.ones(len(t), adapter.n_layers, adapter.n_heads)
    gates[:, 0] = torch.as_tensor(t, dtype=torch.float32)[:, None]
    _, grads = engine.gradients(hard, torch.zeros(len(t), dtype=torch.long), gates)
    integrand = grads[:, 0].sum(-1).double().numpy()  # dL/dt on the layer-0 path (dg/dt = 1), p = 0.15
    doubled, refined = doubling(engine, hard, path0), panels(adapter, hard, path0)
    print(f"add-heldout-00362 L0 (seed 1234): dL/dt min {integrand.min():.2f} at t = {t[integrand.argmin()]:.3f}")
    print("  doubling  rows/p, rel gap:", ", ".join(f"{r} {g:.2e}" for r, g in doubled))
    print("  panels    rows/p, rel gap:", ", ".join(f"{r} {g:.2e}" for r, g in refined))

    copy = scored_input(adapter, 47, "copy-heldout-00243")
    path5 = per_layer_paths(adapter.n_layers, adapter.n_heads, layers=[5])
    ce_curves = {}
    for name, ce in (
        ("fp32 F.cross_entropy (main)", lambda z, y: F.cross_entropy(z, y, reduction="none")),
        ("token_cross_entropy", None),
    ):
        saved = gate_engine.token_cross_entropy
        gate_engine.token_cross_entropy = ce or saved
        try:
            ce_curves[name] = [
                (m, worst_gap(integrated_gradients(engine, copy, path5, "gauss_legendre", m)))
                for m in (8, 16, 32, 64, 128)
            ]
        finally:
            gate_engine.token_cross_entropy = saved
        print(
            f"copy-heldout-00243 L5 (seed 47), {name}: nodes, rel gap:",
            ", ".join(f"{m} {g:.2e}" for m, g in ce_curves[name]),
        )

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(t, integrand, lw=1)
    axes[0].set(xlabel="t", ylabel="dL/dt", title="add-heldout-00362, layer 0 path, p = 0.15")
    for (label, curve), style in zip(
        (("doubling (Gauss-Legendre)", doubled), ("panels", refined)), ("o-", "s-"), strict=True
    ):
        axes[1].loglog(*np.transpose(curve), style, label=label)
    axes[1].axhline(1e-3, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="gradient rows per mask probability", ylabel="relative gap", title="same path: refinement")
    axes[1].legend(fontsize=8)
    for (label, curve), style in zip(ce_curves.items(), ("o-", "s-"), strict=True):
        axes[2].semilogy(*np.transpose(curve), style, label=label)
    axes[2].axhline(1e-3, color="grey", ls=":", lw=1)
    axes[2].set(xlabel="Gauss-Legendre nodes", ylabel="relative gap", title="copy-heldout-00243, layer 5: the loss")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs/convergence.png", dpi=110)
    print("wrote docs/convergence.png")


if __name__ == "__main__":
    main()
