"""The tasks of ``validation.tasks.tasks``: lm-eval task names and local task YAML files or directories.

An entry that ends in ``.yaml``/``.yml`` or names an existing directory is local: its YAML files must exist, carry a
``task:`` name, and their ``dataset_kwargs.data_files`` must exist (paths relative to the repository root, as lm-eval
reads them). Any other entry is an lm-eval task or group name, looked up in lm-eval's task index (with the local
directories included). :func:`check_tasks` runs when the Snakefile is parsed, before any job loads a model; every
error names the config key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import ConfigError

KEY = "validation.tasks.tasks"
YAML_SUFFIXES = (".yaml", ".yml")


class _TaskLoader(yaml.SafeLoader):
    """Safe YAML loader that reads lm-eval's ``!function`` tags as plain strings (nothing is imported)."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def is_local(entry: str, root: Path | str = ".") -> bool:
    return entry.endswith(YAML_SUFFIXES) or (Path(root) / entry).is_dir()


def _data_files(doc: dict) -> list[str]:
    files = (doc.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        values = files.values()
    elif isinstance(files, list):
        values = files
    else:
        return []
    return [f for v in values for f in ([v] if isinstance(v, str) else list(v))]


def _field(template) -> str | None:
    """The row field a ``doc_to_choice`` / ``doc_to_target`` names (a plain name or ``{{name}}``), else None."""
    if not isinstance(template, str):
        return None
    name = template.strip()
    if name.startswith("{{") and name.endswith("}}"):
        name = name[2:-2].strip()
    return name if name.isidentifier() else None


def check_choices(doc: dict, data_files: list[Path], where: str) -> None:
    """A multiple-choice task has choices on every row (lm-eval indexes them: an empty list is an IndexError deep
    in the evaluation), and an integer target inside them; checked where the choices are a list in the YAML or a
    row field of the data files. Raises ConfigError naming the task, the file and the row."""
    from ..data.sources import read_table
    from ..errors import DataError

    if doc.get("output_type") != "multiple_choice":
        return
    task, choice = doc["task"], doc.get("doc_to_choice")
    if isinstance(choice, list) and not choice:
        raise ConfigError(f"{where}: multiple-choice task {task!r} has an empty doc_to_choice list")
    field, target = _field(choice), _field(doc.get("doc_to_target"))
    if field is None:
        return
    for data in data_files:
        try:
            rows = read_table(str(data))
        except (ConfigError, DataError):
            continue  # a format read_table does not know: lm-eval reports it
        for at, row in rows:
            choices = row.get(field)
            if choices is None or len(choices) == 0:
                raise ConfigError(
                    f"{where}: multiple-choice task {task!r}: {at} of {str(data)!r} has no choices "
                    f"(field {field!r} is {choices!r}); give every row at least one choice or drop the row"
                )
            label = row.get(target) if target else None
            if isinstance(label, int) and not isinstance(label, bool) and not 0 <= label < len(choices):
                raise ConfigError(
                    f"{where}: multiple-choice task {task!r}: {at} of {str(data)!r} has target {target!r} = {label}, "
                    f"outside its {len(choices)} choices"
                )


def _read_task_file(path: Path, where: str, root: Path) -> tuple[str, list[Path]]:
    """(task name, files it reads) of one local task YAML; errors name ``where``."""
    try:
        doc = yaml.load(path.read_text(), Loader=_TaskLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read task file {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        raise ConfigError(f"{where}: {str(path)!r} has no 'task: NAME' entry (not an lm-eval task YAML)")
    files = [path]
    for data in _data_files(doc):
        data_path = Path(data) if Path(data).is_absolute() else root / data
        if not data_path.is_file():
            raise ConfigError(f"{where}: data file {data!r} of task {doc['task']!r} ({path}) does not exist")
        files.append(data_path)
    check_choices(doc, files[1:], where)
    return doc["task"], files


def resolve_tasks(entries, root: Path | str = ".", key: str = KEY) -> dict:
    """{"names": task names to evaluate, "include_path": local directories, "files": files the local tasks read,
    "lm_eval_names": entries to look up in lm-eval's own index}. Needs no lm-eval import; errors name ``key``."""
    root = Path(root)
    names, include, files, others = [], [], [], []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}] ({entry!r})"
        if not is_local(entry, root):
            names.append(entry)
            others.append(entry)
            continue
        path = root / entry
        if path.is_dir():
            yamls = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES)
            if not yamls:
                raise ConfigError(f"{where}: directory has no task YAML files")
        elif path.is_file():
            yamls = [path]
        else:
            raise ConfigError(f"{where}: task file does not exist")
        for p in yamls:
            name, read = _read_task_file(p, where, root)
            names.append(name)
            files.extend(read)
        directory = str((path if path.is_dir() else path.parent).relative_to(root))
        if directory not in include:
            include.append(directory)
    return {"names": list(dict.fromkeys(names)), "include_path": include, "files": files, "lm_eval_names": others}


def task_manager(resolved: dict, root: Path | str = "."):
    """lm-eval's TaskManager over the local directories; lm-eval's own index only when a name needs it (indexing
    every built-in task takes about 20 s)."""
    from lm_eval.tasks import TaskManager

    paths = [str(Path(root) / p) for p in resolved["include_path"]] or None
    return TaskManager(include_path=paths, include_defaults=bool(resolved["lm_eval_names"]))


def check_tasks(config: dict, root: Path | str = ".") -> dict | None:
    """Raise :class:`ConfigError` naming ``validation.tasks.tasks[i]`` for a missing task file or data file or an
    unknown task name (``validation.tasks.layers`` for a layer range outside the model); None when no tasks are
    configured."""
    entries = config["validation"]["tasks"]["tasks"]
    if not entries:
        return None
    layers = config["validation"]["tasks"]["layers"]
    if layers is not None:
        from ..models.loading import model_shape
        from ..pipeline.config import check_layer_range

        check_layer_range("validation.tasks.layers", layers, model_shape(Path(root) / config["model"]["path"]))
    return check_task_entries(entries, root)


def check_task_entries(entries, root: Path | str = ".", key: str = KEY) -> dict:
    """:func:`resolve_tasks`, then every lm-eval name looked up in lm-eval's index; errors name ``key[i]``."""
    resolved = resolve_tasks(entries, root, key)
    if resolved["lm_eval_names"]:
        known = set(task_manager(resolved, root).all_tasks)
        for i, entry in enumerate(entries):
            if entry in resolved["lm_eval_names"] and entry not in known:
                raise ConfigError(
                    f"{key}[{i}]: {entry!r} is neither an lm-eval task or group name nor a task file "
                    "(local task files end in .yaml/.yml; directories must exist)"
                )
    return resolved
