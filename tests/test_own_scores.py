"""Task-specific scores: the pruning criterion (least-25 % keeps >= 90 %, most-10 % drops >= 3x random) on
hand-built curves, and the transfer sweep's sentence per judged-on source (own ranking vs the reference's)."""

import math

import pandas as pd
import pytest

from headattr.analysis.verdicts import pruning_criterion
from headattr.sweeps.own_scores import own_scores_markdown, own_scores_table


def curve(method, order, values, seed=None, mode="one_shot"):
    return pd.DataFrame(
        {"mode": mode, "method": method, "order": order, "seed": seed, "fraction": [0.0, 0.1, 0.25]}
        | {"accuracy": values, "loss": 0.0}
    )


def curves(least, most):
    random = [curve("random", "random", [0.8, v, 0.6], seed=s) for s, v in enumerate((0.78, 0.74))]  # drop 0.04
    return pd.concat([curve("m", "least_first", least), curve("m", "most_first", most), *random])


def test_criterion_on_hand_built_curves():
    good = pruning_criterion(curves(least=[0.8, 0.79, 0.73], most=[0.8, 0.64, 0.3])).iloc[0]
    assert good["kept_least"] == pytest.approx(0.73 / 0.8) and good["drop_ratio_most"] == pytest.approx(0.16 / 0.04)
    assert good["passes"]
    weak = pruning_criterion(curves(least=[0.8, 0.79, 0.73], most=[0.8, 0.72, 0.3])).iloc[0]
    assert weak["drop_ratio_most"] == pytest.approx(2.0) and not weak["passes"]  # drops only 2x random
    lossy = pruning_criterion(curves(least=[0.8, 0.79, 0.71], most=[0.8, 0.64, 0.3])).iloc[0]
    assert lossy["kept_least"] == pytest.approx(0.8875) and not lossy["passes"]  # keeps < 90 %
    flat = curves(least=[0.8, 0.8, 0.8], most=[0.8, 0.7, 0.3])
    flat.loc[flat["method"] == "random", "accuracy"] = 0.8
    assert (
        math.isnan(pruning_criterion(flat).iloc[0]["drop_ratio_most"]) and not pruning_criterion(flat).iloc[0]["passes"]
    )


def test_own_ranking_passes_where_the_reference_fails(tmp_path):
    sources = {"p_tt": ("text", "text"), "p_ct": ("copy", "text"), "p_tc": ("text", "copy"), "p_cc": ("copy", "copy")}
    plan = {
        "reference": "p_tt",
        "entities": [
            {"point": p, "method": "joint", "scores_from": a, "judged_on": b} for p, (a, b) in sources.items()
        ],
        "validation": [],
    }
    summaries = {}
    criterion = {
        "p_tt": (0.95, 4.0, True),
        "p_ct": (0.5, 1.0, False),
        "p_tc": (0.7, 1.5, False),
        "p_cc": (0.93, 5.0, True),
    }
    for p, (kept, ratio, ok) in criterion.items():
        path = tmp_path / f"{p}.csv"
        pd.DataFrame(
            [
                {"mode": "one_shot", "method": "joint", "order": o, "kept_least": kept}
                | {"drop_ratio_most": ratio, "passes": ok}
                for o in ("most_first", "least_first")
            ]
            + [{"mode": "one_shot", "method": "random", "order": "random"}]
        ).to_csv(path, index=False)
        summaries[p] = path
        plan["validation"].append({"point": p, "key": p})
    table = own_scores_table(plan, summaries).set_index(["judged_on", "scores"])
    assert set(table.index) == {("copy", "own"), ("copy", "reference")}  # text judged on text is the reference itself
    assert table.loc[("copy", "own"), "passes"] and not table.loc[("copy", "reference"), "passes"]
    assert (
        table.loc[("copy", "own"), "kept_least"] == 0.93 and table.loc[("copy", "reference"), "scores_from"] == "text"
    )
    text = "\n".join(own_scores_markdown(table.reset_index()))
    assert "`copy` (joint, one_shot): its own ranking passes (least-25 % keeps 93.0%, most-10 % drops 5.00x" in text
    assert (
        "the reference ranking (scores from `text`) fails" in text
        and "passes where the reference ranking fails" in text
    )
    # random orders that never lower the accuracy leave the ratio undefined: said in words, not "nanx"
    flat = table.reset_index()
    flat.loc[flat["scores"] == "own", ["drop_ratio_most", "passes"]] = [float("nan"), False]
    text = "\n".join(own_scores_markdown(flat))
    assert "its own ranking fails (least-25 % keeps 93.0%, most-10 % drop against random undefined" in text
    assert "nanx" not in text
