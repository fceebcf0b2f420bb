"""Each sweep point's resolved config (the base config with its axis values merged and the schema defaults filled),
written beside the sweep's results, and the keys in which the points differ from the base config, for the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

from ..pipeline.dumps import atomic_write


def resolved_configs(base: dict, points) -> dict:
    """``{"base": base config, "points": {point name: its config}}``, JSON-ready (a point's ``sweep`` section is
    the empty one of a config that sweeps nothing, so its file runs as that point alone)."""

    def plain(config: dict) -> dict:
        return json.loads(json.dumps(config, default=str))

    return {"base": plain(base), "points": {p.name: plain(p.config) for p in points}}


def flatten(config: dict, prefix: str = "") -> dict:
    """Dotted key -> value (lists and empty sections are values)."""
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _text(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def differing_keys(configs: dict) -> pd.DataFrame:
    """One row per (point, key) whose resolved value differs from the base config's (absent keys count; the
    ``sweep`` section, which only the base config has, is left out)."""

    def settings(config: dict) -> dict:
        return flatten({k: v for k, v in config.items() if k != "sweep"})

    base = settings(configs["base"])
    rows = []
    for name, config in configs["points"].items():
        flat = settings(config)
        for key in sorted(set(flat) | set(base)):
            if _text(flat.get(key)) != _text(base.get(key)):
                rows.append({"point": name, "key": key, "value": _text(flat.get(key)), "base": _text(base.get(key))})
    return pd.DataFrame(rows, columns=["point", "key", "value", "base"])


def config_files(configs: dict) -> dict:
    """Point name -> file name under the sweep's ``configs`` folder (numbered: names may hold any character)."""
    return {
        name: f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name)[:80]}.yaml"
        for i, name in enumerate(configs["points"])
    }


def write_point_configs(configs: dict, out_dir) -> list[Path]:
    """Each point's resolved config as YAML (a config ``snakemake --configfile`` runs as that point alone)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, filename in config_files(configs).items():
        text = f"# sweep point {name}: the resolved config (base config, axis values merged, defaults filled)\n"
        text += yaml.safe_dump(configs["points"][name], sort_keys=False)
        path = out_dir / filename
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
        paths.append(path)
    return paths


def configs_markdown(configs: dict) -> list[str]:
    """The report section: per point, its config file and the keys that differ from the base config."""
    files = config_files(configs)
    table = differing_keys(configs)
    table.insert(1, "file", table["point"].map(lambda n: f"configs/{files[n]}"))
    return [
        "## Point configs (resolved)\n",
        "Each point's full config (the base config with the axis values merged over it, schema defaults filled, as "
        "validated) is in `configs/`; below, every key in which a point's resolved config differs from the base "
        "config (`value` the point's, `base` the base config's).\n",
        table,
    ]
