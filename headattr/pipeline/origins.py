"""Where a config value came from when the run names its own config files (``snakemake --configfile my.yaml``).

The Snakefile loads the embedded default ``config.yaml`` (the demo) first and the ``--configfile`` files over it,
so a key the user's files leave out silently keeps the demo's value. :func:`inherited` names those keys, so that
an error about such a value can say where it came from and where to set it.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "the embedded default config.yaml"


def _has(config: dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _shown(path) -> str:
    """``path`` relative to the working directory when it lies below it (Snakemake passes absolute paths)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def inherited(keys, overrides: dict, configfiles, config: dict) -> dict:
    """``{key: {"value", "files"}}`` for each dotted key of ``keys`` that the ``--configfile`` files and
    ``--config`` values (``overrides``, merged) leave unset although config files were given: its value in
    ``config`` is the embedded default's. Empty without ``--configfile`` (then config.yaml is the user's own)."""
    files = [_shown(f) for f in configfiles or []]
    if not files:
        return {}
    return {
        key: {"value": _get(config, key), "files": files}
        for key in keys
        if not _has(overrides or {}, key) and _has(config, key)
    }


def origin_note(origins: dict, key: str, value) -> str:
    """`` (inherited from ...: FILES do not set it)`` when ``key`` holds the inherited ``value``, else ``""``."""
    found = (origins or {}).get(key)
    if found is None or found["value"] != value:
        return ""
    files = found["files"]
    return f" (inherited from {EMBEDDED}: {', '.join(files)} {'does' if len(files) == 1 else 'do'} not set it)"


def where_to_set(origins: dict, key: str, value) -> str:
    """The file to set ``key`` in: the last ``--configfile`` when the value is inherited, else the config."""
    found = (origins or {}).get(key)
    if found is None or found["value"] != value:
        return "the config"
    return found["files"][-1]
