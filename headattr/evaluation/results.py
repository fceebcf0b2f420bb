"""lm-eval results as tidy rows: one per (task, metric), with the pruning setting's labels in front."""

from __future__ import annotations

import math

TASK_COLUMNS = ["method", "task", "metric", "order", "fraction", "value", "stderr", "n"]


def tidy_results(results: dict, **labels) -> list[dict]:
    """Rows {**labels, task, metric, value, stderr, n} from what ``lm_eval.simple_evaluate`` returns.

    lm-eval keys metrics ``"<metric>,<filter>"`` with the standard error under ``"<metric>_stderr,<filter>"``;
    the metric is named ``<metric>`` for the ``none`` filter and ``<metric>,<filter>`` otherwise. A standard error
    lm-eval could not compute (``"N/A"``) is NaN; ``n`` is the number of documents scored.
    """
    n_samples = results.get("n-samples", {})
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    **labels,
                    "task": task,
                    "metric": metric if filt == "none" else key,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan,
                    "n": n_samples.get(task, {}).get("effective"),
                }
            )
    return rows
