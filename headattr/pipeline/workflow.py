"""Side effects shared by the rule scripts: logging to the rule's log, manifests, checksums."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .. import __version__
from .dumps import atomic_write

LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "seaborn", "snakemake")


def log_to(log_path: str | Path):
    """Send stdout and stderr of this process to ``log_path`` (line buffered); returns the start time.

    An uncaught error is also written to the original stderr (Snakemake's output), so it is seen even when
    the log cannot be written (a full disk)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stderr = sys.stdout = handle
    sys.excepthook = report_error(sys.__stderr__, handle, log_path)
    return time.time()


def report_error(terminal, log, log_path):
    """An excepthook writing the traceback to the log and, with the log's name, to ``terminal``."""
    import traceback

    def hook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        try:
            log.write(text)
            log.flush()
        except OSError as exc:
            text += f"(could not write this to {log_path}: {exc})\n"
        terminal.write(f"error (also in {log_path}):\n{text}")
        terminal.flush()

    return hook


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ChecksumCache:
    """sha256 of files, remembered by (path, size, mtime, inode) in a JSON file so unchanged files are not reread.

    Editing a file in place changes its mtime (and usually size), so its checksum is computed again."""

    def __init__(self, cache_file: str | Path | None = None):
        self.path = Path(cache_file) if cache_file else None
        self.entries: dict = {}
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}
        self.dirty = False

    def file(self, path: str | Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(str(path))
        if hit and hit[:3] == stamp:
            return hit[3]
        digest = sha256_file(path)
        self.entries[str(path)] = [*stamp, digest]
        self.dirty = True
        return digest

    def tree(self, path: str | Path, keep=lambda p: True) -> str:
        """One checksum over a file, or over a folder's files that ``keep`` accepts (names and contents)."""
        path = Path(path)
        if path.is_file():
            return self.file(path)
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file() and keep(p)):
            digest.update(str(child.relative_to(path)).encode())
            digest.update(self.file(child).encode())
        return digest.hexdigest()

    def save(self) -> None:
        if self.path and self.dirty:
            text = json.dumps(self.entries, sort_keys=True)
            try:
                atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
            except OSError:
                pass  # a read-only results folder only costs recomputing next time
            self.dirty = False


def checksum(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    return ChecksumCache().tree(path)


_CACHES: dict[str, ChecksumCache] = {}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


def is_weight_file(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES)


def input_checksums(source_path: str | Path | None, model_path: str, cache_file=None) -> dict:
    """Content checksums the artifact keys depend on: the data source, the model's tokenizer/config files
    and all of its files (None for hub names, which have no local files)."""
    cache = _CACHES.setdefault(str(cache_file), ChecksumCache(cache_file))
    model = Path(model_path).expanduser()
    out = {
        "data": cache.tree(source_path) if source_path is not None and Path(source_path).exists() else None,
        "tokenizer": None,
        "model": None,
    }
    if model.exists():
        out["tokenizer"] = cache.tree(model, keep=lambda p: not is_weight_file(p))
        out["model"] = cache.tree(model)
    cache.save()
    return out


def git_commit(root: Path | None = None) -> str | None:
    root = root or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_manifest(path: str | Path, params: dict, inputs, started: float, extra: dict | None = None) -> dict:
    """Write ``manifest.json``: parameters, input checksums, code and library versions, wall time."""
    manifest = {
        "params": params,
        "inputs": {str(p): checksum(p) for p in inputs if Path(p).exists()},
        "headattr_version": __version__,
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "host": platform.node(),
        "wall_time_s": round(time.time() - started, 3),
        **(extra or {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return manifest


def write_json(path: str | Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
