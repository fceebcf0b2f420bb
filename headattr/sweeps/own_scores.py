"""Task-specific scores in a transfer sweep (``data`` x ``validation.data``): for each source pruning is judged on,
does the ranking from that source's own items pass the criterion of :mod:`headattr.analysis.verdicts` where the
reference ranking (scores from the reference point's data, the text corpus in configs/transfer-demo.yaml) fails?"""

from __future__ import annotations

import pandas as pd

from ..analysis.verdicts import CRITERION_COLUMNS

COLUMNS = ["method", "mode", "judged_on", "scores", "scores_from", *CRITERION_COLUMNS, "n_seeds"]


def own_scores_table(plan: dict, summaries: dict) -> pd.DataFrame:
    """Per method, mode and judged-on source: the criterion of its own ranking (scores from the same source) and
    of the reference's ranking, means over seeds (``passes``: every seed passes). Empty without transfer points or
    without criterion columns in the summaries."""
    entities = {(e["point"], e["method"]): e for e in plan["entities"]}
    reference = next((e.get("scores_from") for e in plan["entities"] if e["point"] == plan.get("reference")), None)
    rows = []
    for v in plan["validation"]:
        df = pd.read_csv(summaries[v["key"]])
        if "passes" not in df:
            continue
        for r in df[df["method"] != "random"].drop_duplicates(["mode", "method"]).itertuples(index=False):
            e = entities.get((v["point"], r.method))
            if e is None or e.get("scores_from") is None:
                continue
            own = e["scores_from"] == e["judged_on"]
            role = "own" if own else "reference" if e["scores_from"] == reference else None
            if role is None or (role == "own" and e["judged_on"] == reference):
                continue
            rows.append(
                {"method": r.method, "mode": r.mode, "judged_on": e["judged_on"], "scores": role}
                | {"scores_from": e["scores_from"], **{c: getattr(r, c) for c in CRITERION_COLUMNS}}
            )
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    keys = ["method", "mode", "judged_on", "scores", "scores_from"]
    return (
        df.groupby(keys, sort=False)
        .agg(
            kept_least=("kept_least", "mean"),
            drop_ratio_most=("drop_ratio_most", "mean"),
            passes=("passes", "all"),
            n_seeds=("passes", "size"),
        )
        .reset_index()[COLUMNS]
    )


def own_scores_markdown(table: pd.DataFrame) -> list[str]:
    """One sentence per judged-on source and method: whether its own ranking passes where the reference's fails."""
    if table.empty:
        return []
    text = [
        "## Task-specific scores (own ranking vs the reference ranking)\n",
        "Criterion on the held-out items of each source (held-out masked-token accuracy): pruning the least "
        "important 25 % keeps >= 90 % of it, and pruning the most important 10 % drops it by >= 3x the random "
        "orders' mean drop (`headattr.analysis.verdicts`).\n",
    ]

    def said(row) -> str:
        verdict = "passes" if row["passes"] else "fails"
        ratio = row["drop_ratio_most"]
        drop = (
            f"drops {ratio:.2f}x random"
            if ratio == ratio
            else "drop against random undefined: the random orders do not lower the accuracy"
        )
        return f"{verdict} (least-25 % keeps {row['kept_least']:.1%}, most-10 % {drop})"

    for (method, mode, judged), part in table.groupby(["method", "mode", "judged_on"], sort=False):
        by = {r["scores"]: r for r in part.to_dict("records")}
        if "own" not in by:
            continue
        line = f"- `{judged}` ({method}, {mode}): its own ranking {said(by['own'])}"
        if "reference" in by:
            ref = by["reference"]
            line += f"; the reference ranking (scores from `{ref['scores_from']}`) {said(ref)}"
            if by["own"]["passes"] and not ref["passes"]:
                line += ": **the task's own ranking passes where the reference ranking fails**"
        text.append(line + ".")
    return [*text, ""]
