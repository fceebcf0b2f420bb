"""``sweep:`` -> the points of an ablation sweep, each an ordinary validated config.

A sweep names axes, each a dotted config key with a list of values, combined as a grid (every combination)
or zipped (the i-th value of every axis). Point configs are the base config with the axis values set and
``sweep`` removed; their artifact keys are content-derived, so points share every upstream artifact whose
slice the axes leave alone, and a later sweep containing an earlier point finds its artifacts on disk.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass

from ..errors import ConfigError

FIXED_SECTIONS = ("run", "results_dir", "sweep", "model", "demo_model", "shard")


@dataclass(frozen=True)
class Point:
    """One sweep point: its name, its value and the value's label per axis (in axis order), its validated config."""

    name: str
    values: dict
    config: dict
    labels: dict
    noise_floor: bool = False


NOISE_FLOOR = "noise-floor"


def noise_floor_point(reference: Point, validate) -> Point:
    """The reference point with every seed's mask seed + 1 (data draw kept): how far two runs that differ only in
    the masks agree, the floor each agreement of the sweep is read against."""
    from ..pipeline.keys import seed_entry

    config = copy.deepcopy(reference.config)
    config["seeds"] = [{"data": d, "mask": m + 1} for _, d, m in map(seed_entry, config["seeds"])]
    validate(config)
    return Point(NOISE_FLOOR, dict(reference.values), config, dict(reference.labels), noise_floor=True)


def value_label(value) -> str:
    """Short, path-free text of an axis value (lists as compact JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def axis_labels(axis: dict) -> list[str]:
    """The names of an axis's values: its ``labels``, else each value as :func:`value_label` writes it."""
    return list(axis.get("labels") or [value_label(v) for v in axis["values"]])


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _merged(base, value):
    """``value`` over ``base``: dicts merge key by key (a section value keeps the base config's other keys)."""
    if isinstance(base, dict) and isinstance(value, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in value.items()}}
    return copy.deepcopy(value)


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = _merged(node.get(last), value)


def _same_value(value):
    """A value with integral floats as ints (2.0 and 2 are one value of an axis)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _same_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_value(v) for v in value]
    return value


def check_axes(config: dict) -> dict:
    """``{axis name: (key, values)}``; raises naming ``sweep.axes.<name>`` on an unknown or fixed key, an axis
    with fewer than two values, repeated values, or mismatched lengths in zip mode."""
    sweep = config["sweep"]
    axes = {}
    for name, axis in sweep["axes"].items():
        key, values = axis["key"], axis["values"]
        where = f"sweep.axes.{name}"
        if key.split(".")[0] in FIXED_SECTIONS:
            raise ConfigError(f"{where}.key: {key!r} cannot be swept (sweep attribution, objective, data or seed keys)")
        try:
            _get(config, key)
        except KeyError:
            raise ConfigError(f"{where}.key: {key!r} is not a config key") from None
        if len(values) < 2:
            raise ConfigError(f"{where}.values: an axis needs at least two values, got {values!r}")
        if len({value_label(_same_value(v)) for v in values}) != len(values):
            raise ConfigError(f"{where}.values: repeated values {values!r}")
        labels = axis_labels(axis)
        if len(labels) != len(values) or len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.labels: {labels!r} must be distinct, one per value ({len(values)} values)")
        axes[name] = (key, values)
    if len({key for key, _ in axes.values()}) != len(axes):
        raise ConfigError("sweep.axes: two axes set the same config key")
    if sweep["mode"] == "zip" and len({len(v) for _, v in axes.values()}) > 1:
        lengths = {n: len(v) for n, (_, v) in axes.items()}
        raise ConfigError(f"sweep.axes: zip mode needs axes of equal length, got {lengths}")
    return axes


def point_name(labels: dict) -> str:
    return ",".join(f"{axis}={label}" for axis, label in labels.items())


def sweep_points(config: dict, validate) -> list[Point]:
    """Every point of ``config['sweep']`` (``[]`` without a sweep), each config checked by ``validate(cfg)``;
    a bad value raises naming its axis, value and key."""
    if not config["sweep"]["axes"]:
        return []
    axes = check_axes(config)
    names = list(axes)
    indices = [range(len(v)) for _, v in axes.values()]
    combos = itertools.product(*indices) if config["sweep"]["mode"] == "grid" else zip(*indices, strict=True)
    labels_of = {n: axis_labels(config["sweep"]["axes"][n]) for n in names}
    points = []
    for combo in combos:
        values = {n: axes[n][1][i] for n, i in zip(names, combo, strict=True)}
        labels = {n: labels_of[n][i] for n, i in zip(names, combo, strict=True)}
        point = copy.deepcopy(config)
        point["sweep"] = {}
        for name, value in values.items():
            _set(point, axes[name][0], value)
        try:
            validate(point)
        except ConfigError as exc:
            bad = ", ".join(f"sweep.axes.{n} ({axes[n][0]}={value_label(v)!s})" for n, v in values.items())
            raise ConfigError(f"sweep point {bad}: {exc}") from None
        points.append(Point(point_name(labels), values, point, labels))
    reference = reference_point(config, points)
    if config["sweep"].get("noise_floor", True):
        points.append(noise_floor_point(reference, validate))
    return points


def reference_point(config: dict, points: list[Point]) -> Point:
    """The point named by ``sweep.reference`` ({axis: value or its label}; axes left out take their first value)."""
    axes = config["sweep"]["axes"]
    given = config["sweep"]["reference"] or {}
    unknown = sorted(set(given) - set(axes))
    if unknown:
        raise ConfigError(f"sweep.reference: {unknown} are not axes of the sweep ({sorted(axes)})")

    def matches(point: Point, axis: str) -> bool:
        if axis not in given:
            return point.labels[axis] == axis_labels(axes[axis])[0]
        return value_label(point.values[axis]) == value_label(given[axis]) or point.labels[axis] == given[axis]

    for point in points:
        if not point.noise_floor and all(matches(point, axis) for axis in axes):
            return point
    raise ConfigError(f"sweep.reference: {given!r} is not a point of the sweep")


SETTINGS = ("topk", "layer_topk", "tolerance", "n_boot", "seed")


def sweep_plan(config: dict, points: list[Point]) -> dict:
    """What the comparison of the points needs, JSON-ready, and its artifact key.

    ``entities``: one per (point, method): label, point, method, axis values (as labels), the ig keys of its
    seeds, its attribution benchmark files (under the benchmarks folder) and shard manifests (under the ig
    folder), its postprocess, the data sources of its scores and of its pruning validation (``scores_from``,
    ``judged_on``); ``validation``: (point, pruning-validation key) pairs; ``tasks``: one row per task-validation
    point of each sweep point (point, evaluation key, method, order, fraction, seed, tolerance; empty without
    ``validation.tasks``); ``reference``: the reference point's name; ``axes``: {name: {key, values (labels),
    numeric, order}}.
    """
    from ..evaluation.protocol import task_plan
    from ..pipeline.keys import stage_key, units, validation_groups

    entities = []
    for point in points:
        methods = point.config["ig"]["methods"]
        by_method, benchmarks, manifests = {}, {}, {}
        for unit in units(point.config):
            by_method.setdefault(unit.method, []).append(unit.keys["ig"])
            benchmarks.setdefault(unit.method, []).extend(f"attribute/{unit.keys['ig']}/{s}.tsv" for s in unit.shards)
            manifests.setdefault(unit.method, []).extend(
                f"{unit.keys['ig']}/shards/{s}.manifest.json" for s in unit.shards
            )
        for method in methods:
            entities.append(
                {
                    "label": point.name if len(methods) == 1 else f"{point.name}|{method}",
                    "point": point.name,
                    "method": method,
                    "values": dict(point.labels),
                    "noise_floor": point.noise_floor,
                    "ig": by_method[method],
                    "benchmarks": benchmarks[method],
                    "manifests": manifests[method],
                    "postprocess": point.config["report"]["postprocess"],
                    "scores_from": point.config["data"]["source"],
                    "judged_on": (point.config["validation"].get("data") or point.config["data"])["source"],
                }
            )
    validation = [{"point": p.name, "key": k} for p in points for k in validation_groups(p.config)]
    tasks = [
        {"point": p.name, "key": k, **{f: spec[f] for f in ("method", "order", "fraction", "seed")}}
        | {"tolerance": p.config["validation"]["tasks"]["tolerance"]}
        for p in points
        for k, spec in task_plan(p.config)["points"].items()
    ]
    axes = {
        name: {
            "key": axis["key"],
            "values": axis_labels(axis),
            "numeric": all(isinstance(v, int | float) and not isinstance(v, bool) for v in axis["values"]),
            "order": [float(v) if isinstance(v, int | float) else None for v in axis["values"]],
        }
        for name, axis in config["sweep"]["axes"].items()
    }
    if not any(p.noise_floor for p in points):  # only when it has one, so plans without it keep their keys
        for e in entities:
            del e["noise_floor"]
    plan = {
        "entities": entities,
        "validation": validation,
        "tasks": tasks,
        "reference": reference_point(config, points).name,
        "axes": axes,
        "mode": config["sweep"]["mode"],
        "settings": {k: config["sweep"][k] for k in SETTINGS},
    }
    return plan | {"key": stage_key(f"{config['run']}-sweep", plan)}
