"""The report's artifact key: every attribution, diagnostic and task-validation key plus the report settings."""

from __future__ import annotations

from ..pipeline.keys import diagnostic_groups, dispersion_groups, stage_key, units


def _floor_if_set(config: dict) -> dict:
    """ig.gap_floor changes the report (relative gaps) even without ig.tol; the default keeps existing keys."""
    floor = config["ig"].get("gap_floor", 0.01)
    return {} if floor == 0.01 else {"gap_floor": floor}


def _tasks_if_set(config: dict) -> dict:
    """The task-validation points and tolerance, only when validation.tasks is on (other configs keep their keys)."""
    if not config["validation"]["tasks"]["tasks"]:
        return {}
    from ..evaluation.protocol import task_plan

    points = sorted(task_plan(config)["points"])
    return {"tasks": {"points": points, "tolerance": config["validation"]["tasks"]["tolerance"]}}


# report keys added later: left out of the key while null, so configs that do not set them keep their keys
NULL_DEFAULTS = ("rank_within", "category_groups")


def _report_settings(config: dict) -> dict:
    return {k: v for k, v in config["report"].items() if not (k in NULL_DEFAULTS and v is None)}


def _sparse_if_set(config: dict) -> dict:
    """The sparse-validation points and bootstrap size, only when sparse_validation is on (other configs keep their
    keys)."""
    from ..evaluation.sparse_protocol import enabled, sparse_plan

    if not enabled(config):
        return {}
    return {"sparse": {"points": sorted(sparse_plan(config)), "bootstrap": config["sparse_validation"]["bootstrap"]}}


def report_key(config: dict) -> str:
    """Key of the run's report: every attribution and diagnostic key plus the report settings."""
    groups = diagnostic_groups(config)
    return stage_key(
        config["run"],
        {
            "ig": [u.keys["ig"] for u in units(config)],
            "report": _report_settings(config) | _floor_if_set(config),
            "diagnostics": {k: sorted(v) for k, v in groups.items()},
        }
        | _tasks_if_set(config)
        | _sparse_if_set(config)
        | ({"dispersion": sorted(dispersion_groups(config))} if dispersion_groups(config) else {}),
    )
