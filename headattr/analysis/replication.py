"""Replication of the per-head category test across units (methods x seeds): which heads reach BH q < alpha
in every unit, and per method in every seed, rather than the one unit that passes."""

from __future__ import annotations

import pandas as pd

ALPHA = 0.05


def kw_replication(tests: dict[str, pd.DataFrame], methods: dict[str, str], alpha: float = ALPHA) -> dict:
    """``tests``: unit name -> the unit's full Kruskal-Wallis table (label, q_value: every head);
    ``methods``: unit name -> its method.

    Returns {"heads": DataFrame label, q_<unit> for each unit, n_units (units with q < alpha), every_unit
    (bool), every_seed_<method> (bool per method), sorted by n_units then the largest q;
    "counts": DataFrame unit, method, n_significant, n_tested; "summary": {alpha, n_units, every_unit (count),
    every_unit_heads (labels), every_seed: {method: count}}}.
    """
    qs = pd.concat({u: t.set_index("label")["q_value"] for u, t in tests.items()}, axis=1)
    sig = qs.lt(alpha)
    heads = pd.DataFrame({"label": qs.index})
    for u in tests:
        heads[f"q_{u}"] = qs[u].to_numpy()
    heads["n_units"] = sig.sum(axis=1).to_numpy()
    heads["every_unit"] = sig.all(axis=1).to_numpy()
    per_method = {}
    for m in dict.fromkeys(methods.values()):
        cols = [u for u in tests if methods[u] == m]
        heads[f"every_seed_{m}"] = sig[cols].all(axis=1).to_numpy()
        per_method[m] = int(heads[f"every_seed_{m}"].sum())
    heads["max_q"] = qs.max(axis=1).to_numpy()
    heads = heads.sort_values(["n_units", "max_q"], ascending=[False, True], kind="stable").reset_index(drop=True)
    counts = pd.DataFrame(
        {
            "unit": list(tests),
            "method": [methods[u] for u in tests],
            "n_significant": [int(sig[u].sum()) for u in tests],
            "n_tested": [int(qs[u].notna().sum()) for u in tests],
        }
    )
    every = heads.loc[heads["every_unit"], "label"].tolist()
    summary = {
        "alpha": alpha,
        "n_units": len(tests),
        "every_unit": len(every),
        "every_unit_heads": every,
        "every_seed": per_method,
    }
    return {"heads": heads, "counts": counts, "summary": summary}
