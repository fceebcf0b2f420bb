"""The task-specific pruning criterion of a ranking on held-out samples (issue 25 item 5): pruning the least
important quarter keeps >= 90 % of the held-out masked-token accuracy, and pruning the most important tenth drops
it by >= 3x what random orders do at that fraction.

- ``kept_least``: accuracy(least first, ``keep_fraction``) / accuracy(0);
- ``drop_ratio_most``: (accuracy(0) - accuracy(most first, ``drop_fraction``)) / (accuracy(0) - mean over random
  orders of accuracy(``drop_fraction``)); NaN when random orders do not lower the accuracy there;
- ``passes``: kept_least >= ``keep_level`` and drop_ratio_most >= ``drop_ratio``.

The fractions must be among the curves' fractions (the default ``validation.fractions`` hold 0.1 and 0.25).
"""

from __future__ import annotations

import math

import pandas as pd

KEEP_FRACTION, KEEP_LEVEL, DROP_FRACTION, DROP_RATIO = 0.25, 0.9, 0.1, 3.0
CRITERION_COLUMNS = ["kept_least", "drop_ratio_most", "passes"]


def _at(curve: pd.DataFrame, fraction: float) -> float:
    hit = curve[(curve["fraction"] - fraction).abs() < 1e-9]["accuracy"]
    return float(hit.mean()) if len(hit) else math.nan


def pruning_criterion(
    curves: pd.DataFrame,
    keep_fraction: float = KEEP_FRACTION,
    keep_level: float = KEEP_LEVEL,
    drop_fraction: float = DROP_FRACTION,
    drop_ratio: float = DROP_RATIO,
) -> pd.DataFrame:
    """One row per (mode, method) of ranked mean curves (:data:`deletion.CURVE_COLUMNS`) with
    :data:`CRITERION_COLUMNS` (see the module docstring)."""
    rows = []
    for (mode, method), part in curves[curves["method"] != "random"].groupby(["mode", "method"], sort=False):
        random = curves[(curves["method"] == "random") & (curves["mode"] == mode)]
        base = _at(part, 0.0)
        kept = _at(part[part["order"] == "least_first"], keep_fraction) / base if base else math.nan
        random_drop = base - _at(random, drop_fraction)
        drop = base - _at(part[part["order"] == "most_first"], drop_fraction)
        ratio = drop / random_drop if random_drop > 0 else math.nan
        rows.append(
            {
                "mode": mode,
                "method": method,
                "kept_least": kept,
                "drop_ratio_most": ratio,
                "passes": bool(kept >= keep_level and ratio >= drop_ratio),
            }
        )
    return pd.DataFrame(rows, columns=["mode", "method", *CRITERION_COLUMNS])
