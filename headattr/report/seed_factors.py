"""Which seed moves the ranking: cross-seed pairs grouped by what their two runs change (the data draw, the
masks, or both; ``seeds`` entries {data, mask}), with each pair's global Spearman and its bootstrap interval."""

from __future__ import annotations

import pandas as pd

from ..pipeline.keys import seed_entry


def changed_part(config: dict, seed_a, seed_b) -> str:
    """ "data", "masks" or "data and masks": what differs between two seed labels of ``config['seeds']``."""
    parts = {seed_entry(e)[0]: seed_entry(e)[1:] for e in config["seeds"]}
    (da, ma), (db, mb) = parts[seed_a], parts[seed_b]
    return {(True, False): "data", (False, True): "masks"}.get((da != db, ma != mb), "data and masks")


def seed_factor_table(rows: list[dict]) -> pd.DataFrame:
    """rows: method, seed_a, seed_b, changes, spearman, lo, hi -> the table, one row per pair."""
    return pd.DataFrame(rows, columns=["method", "seed_a", "seed_b", "changes", "spearman", "lo", "hi"])


def seed_factor_verdicts(table: pd.DataFrame) -> list[str]:
    """Per method with both a data-only and a masks-only pair: which one moves the ranking more, said only when
    every interval of one kind lies below every interval of the other; else that the intervals overlap."""
    out = []
    for method, part in table.groupby("method", sort=False):
        data, masks = part[part["changes"] == "data"], part[part["changes"] == "masks"]
        if data.empty or masks.empty:
            continue
        if data["hi"].max() < masks["lo"].min():
            out.append(
                f"{method}: the data draw moves the ranking more than the masks (every data-only pair's "
                f"Spearman interval lies below every masks-only pair's)."
            )
        elif masks["hi"].max() < data["lo"].min():
            out.append(
                f"{method}: the masks move the ranking more than the data draw (every masks-only pair's "
                f"Spearman interval lies below every data-only pair's)."
            )
        else:
            out.append(
                f"{method}: the data-only and masks-only intervals overlap: these runs cannot tell which "
                "seed moves the ranking more."
            )
    return out
