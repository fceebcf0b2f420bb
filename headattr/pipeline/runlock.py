"""One workflow process per run name at a time.

``results/<run>`` (the run view) is pointed at the report of the config parsed last, so two ``snakemake``
processes of one run name with disjoint outputs would leave it on whichever started later, showing one run's
report under the other's name. The first process takes ``results/.locks/<run>.json`` (its pid, host and start time)
while the Snakefile is parsed and removes it when it exits; a second one is refused naming the first. A lock
whose process is gone (killed, machine restarted: same host, no process with that pid and start time) is stale and
replaced with a warning.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import ConfigError


def lock_path(results_dir, run: str) -> Path:
    return Path(results_dir) / ".locks" / f"{run}.json"


def process_start(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None when no such process runs."""
    import psutil  # a dependency of Snakemake

    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def holder_alive(info: dict) -> bool:
    """True unless the lock's process is known to be gone (another host's process cannot be checked)."""
    if info.get("host") != socket.gethostname():
        return True
    start = process_start(int(info.get("pid", -1)))
    return start is not None and abs(start - float(info.get("started", 0))) < 1.0


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def acquire_run_lock(results_dir, run: str, target: str = "") -> Path:
    """Take the run's lock for this process (released at exit), or raise ConfigError naming the process that
    holds it; a stale lock is replaced. ``target``: what this process points the run view at (for the message)."""
    path = lock_path(results_dir, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    started = process_start(pid) or time.time()
    mine = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": started,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "target": target,
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(path)
            if other is not None and other.get("pid") == pid and other.get("host") == mine["host"]:
                return path  # this process parsed the Snakefile again
            if other is not None and holder_alive(other):
                raise ConfigError(
                    f"run: another snakemake of run {run!r} is running (pid {other['pid']} on {other['host']}, "
                    f"started {other.get('started_utc', '?')}, showing {other.get('target') or '?'}); "
                    f"{Path(results_dir) / run} points at the report of the config parsed last, so two runs of one "
                    "name at once would show one's report under the other's name. Wait for it to finish, or give "
                    f"this config its own run name (run: NAME); if that process is gone, delete {path}"
                ) from None
            if other is None and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # being written by a process that just started
                continue
            print(f"warning: removed the stale lock {path} of a run that no longer runs ({other})", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        atexit.register(release_run_lock, path, pid)
        return path
    raise ConfigError(f"run: could not take the lock {path} of run {run!r}; delete it if no snakemake of it runs")


def release_run_lock(path, pid: int | None = None) -> None:
    """Remove the lock if this process (``pid``) holds it."""
    path = Path(path)
    info = _read(path)
    if info is not None and info.get("pid") == (pid or os.getpid()) and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
