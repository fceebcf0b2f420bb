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

from . import __version__
from .dumps import atomic_write

LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "seaborn", "snakemake")


def log_to(log_path: str | Path):
    """Send stdout and stderr of this process to ``log_path`` (line buffered); returns the start time."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stderr = sys.stdout = handle
    return time.time()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(sha256_file(child).encode())
    return digest.hexdigest()


def git_commit(root: Path | None = None) -> str | None:
    root = root or Path(__file__).resolve().parents[1]
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
