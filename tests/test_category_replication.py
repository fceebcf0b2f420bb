"""Post-hoc category contrasts (stats.contrasts) and replication of the category test across units."""

import jinja2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, mannwhitneyu

from headattr.analysis.replication import kw_replication
from headattr.report.document import REPORT_DIR, kw_replication_context
from headattr.stats.contrasts import category_contrasts


def planted(rng):
    cats = ["a"] * 6 + ["b"] * 6 + ["c"] * 6
    x = rng.normal(size=(18, 2, 3))
    x[:6, 0, 0] += 5.0  # L0H0: category a only
    x[:, 1, 2] = 0.0  # constant head: not tested
    return x, cats


def test_contrasts_find_the_planted_category_and_equal_scipy():
    rng = np.random.default_rng(0)
    x, cats = planted(rng)
    df = category_contrasts(x, cats)
    assert len(df) == 5 * 3 and "L1H2" not in set(df["label"])
    top = df.iloc[0]
    assert (top["label"], top["category"]) == ("L0H0", "a") and top["diff"] > 4 and top["auc"] == 1.0
    assert top["q_value"] < 0.05
    assert (df["q_value"] < 0.05).sum() >= 1
    cats_arr = np.asarray(cats)
    for row in df.itertuples():
        col = x[:, row.layer, row.head]
        ref = mannwhitneyu(col[cats_arr == row.category], col[cats_arr != row.category], method="exact")
        assert row.p_value == pytest.approx(ref.pvalue) and row.auc == pytest.approx(ref.statistic / 72)
    np.testing.assert_allclose(np.sort(df["q_value"]), np.sort(false_discovery_control(df["p_value"])))


def _table(qs):
    return pd.DataFrame({"label": [f"L0H{i}" for i in range(len(qs))], "q_value": qs})


def test_replication_counts_heads_significant_in_every_unit():
    tests = {
        "per_layer seed 1": _table([0.01, 0.02, 0.2, np.nan]),
        "per_layer seed 2": _table([0.04, 0.3, 0.01, np.nan]),
        "joint seed 1": _table([0.001, 0.01, 0.5, 0.9]),
        "joint seed 2": _table([0.02, 0.04, 0.5, 0.01]),
    }
    methods = {u: u.split()[0] for u in tests}
    rep = kw_replication(tests, methods)
    assert rep["summary"]["every_unit"] == 1 and rep["summary"]["every_unit_heads"] == ["L0H0"]
    assert rep["summary"]["every_seed"] == {"per_layer": 1, "joint": 2}
    assert rep["counts"]["n_significant"].tolist() == [2, 2, 2, 3]
    assert rep["counts"]["n_tested"].tolist() == [3, 3, 4, 4]
    heads = rep["heads"].set_index("label")
    assert heads.loc["L0H1", "n_units"] == 3 and heads.loc["L0H3", "n_units"] == 1
    assert rep["heads"]["label"].tolist()[:2] == ["L0H0", "L0H1"]


def test_report_section_names_the_p_kind_and_the_count():
    tests = {("m", 1): _table([0.01, 0.2]), ("m", 2): _table([0.03, 0.01])}
    ctx = kw_replication_context(tests, "exact permutation p")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPORT_DIR)), undefined=jinja2.StrictUndefined)
    text = env.get_template("kw_replication.md.j2").render(kw_replication=ctx)
    assert "exact permutation p" in text and "every one of the 2 units: **1**" in text and "(L0H0)" in text
    assert kw_replication_context({("m", 1): _table([0.01])}, "p") is None
