""" "Heads for text" vs "heads for tasks": each group of categories ranked on its own samples, shown when the
groups differ strongly. Groups: ``report.category_groups`` ({name: [categories]}), or by default the demo's
synthetic tasks (headattr.demo.tasks.TASKS) against every other category.

Rule: the view is shown when the groups' importance scales (mean |importance| over heads and samples) differ by
SCALE_RATIO or more, or the Spearman correlation of two groups' head importances is below MIN_SPEARMAN: then the
pooled ranking is mostly one group's ranking, and the other group's heads are listed apart."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..demo.tasks import TASKS
from ..pipeline.aggregate import head_label
from ..stats.consensus import importance_statistic
from ..stats.similarity import spearman

SCALE_RATIO = 3.0
MIN_SPEARMAN = 0.5


def category_groups(categories, configured: dict | None = None) -> dict[str, list[str]]:
    """{group: categories present in the data}; empty when fewer than two groups have samples."""
    present = list(dict.fromkeys(str(c) for c in categories))
    if configured:
        groups = {name: [c for c in cats if c in present] for name, cats in configured.items()}
    else:
        groups = {"tasks": [c for c in present if c in TASKS], "text": [c for c in present if c not in TASKS]}
    groups = {name: cats for name, cats in groups.items() if cats}
    return groups if len(groups) >= 2 else {}


def absent_categories(categories, configured: dict | None) -> list[str]:
    """Categories named in ``report.category_groups`` with no sample in the run: left out of the groups, so the
    report names them (a misspelt category would otherwise vanish silently)."""
    present = {str(c) for c in categories}
    return sorted({str(c) for cats in (configured or {}).values() for c in cats} - present)


def group_view(units: list[dict], groups: dict, k: int = 10, rank_within=None) -> dict:
    """Per group: importance on its samples (mean over units of stats.consensus.importance_statistic), its
    scale, and the top k; ``shown`` and ``reason`` by the module's rule. ``units``: report.answer.unit_inputs."""
    if not groups:
        return {"shown": False, "reason": "fewer than two category groups have samples", "groups": {}}
    imp, scale = {}, {}
    for name, cats in groups.items():
        per_unit, scales = [], []
        for u in units:
            mask = np.isin(np.asarray(u["categories"], dtype=object), cats)
            x = u["x"][mask]
            per_unit.append(importance_statistic(x, np.asarray(u["categories"], dtype=object)[mask], rank_within)[0])
            scales.append(float(np.abs(x).mean()))
        imp[name], scale[name] = np.mean(per_unit, axis=0), float(np.mean(scales))
    names = list(groups)
    ratio = max(scale.values()) / max(min(scale.values()), 1e-300)
    rho = min(spearman(imp[a], imp[b]) for a, b in itertools.combinations(names, 2))
    shown = ratio >= SCALE_RATIO or rho < MIN_SPEARMAN
    reason = (
        f"importance scales {', '.join(f'{n} {scale[n]:.3g}' for n in names)} (ratio {ratio:.1f}; shown from "
        f"{SCALE_RATIO:g}); Spearman between the groups' head importances {rho:.2f} (shown below {MIN_SPEARMAN:g})"
    )
    labels = [head_label(int(a), int(b)) for a, b in zip(units[0]["layers"], units[0]["heads"], strict=True)]
    tops = {n: np.argsort(-imp[n], kind="stable")[:k] for n in names}
    rows = pd.DataFrame({"rank": np.arange(1, k + 1)})
    for n in names:
        rows[f"heads for {n}"] = [f"{labels[h]} ({imp[n][h]:.3g})" for h in tops[n]]
    shared = set.intersection(*(set(t.tolist()) for t in tops.values()))
    return {
        "shown": bool(shown),
        "reason": reason,
        "scale_ratio": float(ratio),
        "spearman": float(rho),
        "groups": {n: {"categories": groups[n], "scale": scale[n], "top": [labels[h] for h in tops[n]]} for n in names},
        "shared_top": sorted(labels[h] for h in shared),
        "table": rows,
    }
