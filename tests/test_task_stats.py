"""Task validation statistics on hand-built tables: task AOPC normalised by (unpruned - chance) and minus random
with an interval, tasks at chance marked uninformative, no correlation from fewer than 4 methods, single-head
ablations, head counts as fractions, and the task figure's names, bands and chance line."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from headattr.errors import ConfigError
from headattr.evaluation.protocol import build_keep_mask, head_count_fractions, single_head_mask
from headattr.evaluation.summary import (
    COLUMNS,
    curve_summary,
    proxy_agreement,
    single_head_table,
    task_table,
)
from headattr.report.tasks import aopc_table, metric_name, task_curves_plot


def row(task, method, order, seed, fraction, value, stderr=0.02):
    return {
        "method": method,
        "task": task,
        "metric": "exact_match,strip",
        "order": order,
        "fraction": fraction,
        "value": value,
        "stderr": stderr,
        "n": 100,
        "seed": seed,
    }


RANDOM = {0: (0.7, 0.6), 1: (0.5, 0.4), 2: (0.6, 0.5)}  # seed: values at fractions 0.1, 0.2


def table():
    rows = []
    for task, base, chance_like in (("gen", 0.8, False), ("mc", 0.12, True)):
        scale = 0.15 if chance_like else 1.0
        rows.append(row(task, "none", "none", None, 0.0, base))
        rows += [row(task, "m", "most", None, f, base - scale * d) for f, d in ((0.1, 0.6), (0.2, 0.7))]
        rows += [row(task, "m", "least", None, f, base - scale * d) for f, d in ((0.1, 0.0), (0.2, 0.1))]
        for seed, values in RANDOM.items():
            rows += [
                row(task, "random", "random", seed, f, base - scale * (0.8 - v))
                for f, v in zip((0.1, 0.2), values, strict=True)
            ]
        rows += [row(task, "m", "single", rank, 0.0, base - scale * d) for rank, d in ((1, 0.5), (2, 0.01))]
    return task_table([pd.DataFrame(rows, columns=COLUMNS)])


def test_task_aopc_normalised_and_minus_random_with_an_interval():
    s = curve_summary(table(), 0.1, chance={"mc": 0.1}).set_index(["task", "method", "order"])
    most = s.loc[("gen", "m", "most")]
    assert most["task_aopc"] == pytest.approx(0.65) and most["chance"] == 0.0
    assert most["task_aopc_norm"] == pytest.approx(0.65 / 0.8)
    seed_aopc = [np.mean([0.8 - v for v in values]) for values in RANDOM.values()]  # 0.15, 0.35, 0.25
    assert most["random_task_aopc"] == pytest.approx(np.mean(seed_aopc)) and most["n_random"] == 3
    assert most["task_aopc_vs_random"] == pytest.approx(0.65 - 0.25)
    half = 1.959963984540054 * math.sqrt((np.std(seed_aopc, ddof=1) / math.sqrt(3)) ** 2 + 0.02**2)
    assert most["task_aopc_vs_random_lo"] == pytest.approx(0.4 - half)
    assert most["task_aopc_vs_random_hi"] == pytest.approx(0.4 + half)
    assert most["task_aopc_vs_random_norm"] == pytest.approx(0.4 / 0.8)
    assert math.isnan(s.loc[("gen", "random", "random"), "task_aopc_vs_random"])


def test_a_task_at_chance_is_marked_uninformative():
    s = curve_summary(table(), 0.1, chance={"mc": 0.1}, min_margin=0.1)
    flags = s.groupby("task")["uninformative"].all()
    assert flags["mc"] and not flags["gen"]  # 0.12 - 0.1 < 0.1; 0.8 - 0 >= 0.1
    # the same task is informative once its margin clears both the threshold and 2 standard errors
    assert (
        not curve_summary(table(), 0.1, chance={"mc": 0.0}, min_margin=0.1).groupby("task")["uninformative"].any()["mc"]
    )
    assert curve_summary(table(), 0.1, chance={"mc": 0.0}, min_margin=0.2).groupby("task")["uninformative"].all()["mc"]
    verdicts = aopc_table(s).set_index(["task", "order"])["verdict"]
    assert verdicts[("mc", "most important first")] == "uninformative (unpruned near chance)"
    assert verdicts[("gen", "most important first")] == "hurts more than random"


def test_no_correlation_from_fewer_than_four_methods():
    summary = pd.DataFrame({"task": "gen", "order": "most", "method": list("abcd"), "task_aopc": [0.1, 0.4, 0.2, 0.3]})
    three = proxy_agreement(summary, {"a": 1.0, "b": 3.0, "c": 2.0})
    assert three["n_methods"].iloc[0] == 3 and math.isnan(three["spearman"].iloc[0])
    four = proxy_agreement(summary, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    assert four["spearman"].iloc[0] == pytest.approx(sps.spearmanr([1, 2, 3, 4], [0.1, 0.4, 0.2, 0.3]).statistic)


def test_single_head_ablations_are_not_curves():
    t = table()
    singles = single_head_table(t).set_index(["task", "rank"])
    assert singles.loc[("gen", 1), "drop"] == pytest.approx(0.5) and singles.loc[("gen", 2), "drop"] == pytest.approx(
        0.01
    )
    s = curve_summary(t, 0.1)
    assert set(s["order"]) == {"most", "least", "random"}


def test_head_counts_name_exact_heads_and_single_head_masks(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"num_hidden_layers": 6, "num_attention_heads": 8}')
    t = {"heads": [1, 2, 3, 5], "layers": None, "convention": "global", "keep_at_least_one_head": True}
    cfg = {"model": {"path": "m"}, "validation": {"tasks": t}}
    fractions = head_count_fractions(cfg, tmp_path)
    assert fractions == pytest.approx([1 / 48, 2 / 48, 3 / 48, 5 / 48])
    importance = np.arange(48.0).reshape(6, 8)
    for k, f in zip(t["heads"], fractions, strict=True):
        spec = {"order": "most", "fraction": f, "seed": None, **{x: t[x] for x in ("layers", "convention")}}
        keep = build_keep_mask(spec | {"keep_at_least_one_head": True}, (6, 8), importance)
        assert (~keep).sum() == k and not keep.reshape(-1)[-k:].any()  # the k largest importances
    keep = single_head_mask(importance, 2)
    assert (~keep).sum() == 1 and not keep[5, 6]  # rank 2 = the second largest
    keep = single_head_mask(importance, 1, layers=(1, 2))
    assert (~keep).sum() == 1 and not keep[2, 7]
    with pytest.raises(ConfigError, match=r"validation.tasks.heads: \[49\] exceed the 48 eligible heads"):
        head_count_fractions({**cfg, "validation": {"tasks": {**t, "heads": [49]}}}, tmp_path)
    with pytest.raises(ConfigError, match="validation.tasks.heads: model.path 'org/model' has no config.json"):
        head_count_fractions({**cfg, "model": {"path": "org/model"}}, tmp_path)


def test_task_figure_names_metrics_plainly_with_bands_and_chance(tmp_path, monkeypatch):
    from headattr.report import plots

    assert metric_name("exact_match,strip") == "exact match (strip)" and metric_name("acc") == "acc"
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    task_curves_plot(table(), tmp_path / "t.png", {"mc": 0.1})
    gen, mc = seen["fig"].axes
    assert gen.get_ylabel() == "exact match (strip)"
    labels = [x.get_text() for x in gen.get_legend().get_texts()]
    assert "m, most important first" in labels and "random, 95 % of 3" in labels and "chance" in labels
    chance = [line.get_ydata()[0] for line in mc.get_lines() if line.get_linestyle() == ":"]
    assert chance == [pytest.approx(0.1)]
    band = gen.collections[0].get_paths()[0].vertices[:, 1]  # random: 2.5 % / 97.5 % quantiles over seeds
    lo = 0.8 - 0.8 + np.quantile([0.6, 0.4, 0.5], 0.025)
    assert band.min() == pytest.approx(lo)


def test_chance_levels_for_tasks_that_did_not_run_are_listed():
    from headattr.report.tasks import unused_chance

    assert unused_chance({"mc": 0.1, "mcc": 0.2}, table()["task"]) == ["mcc"]
    assert unused_chance(None, table()["task"]) == []
