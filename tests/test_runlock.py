"""Two workflow processes of one run name at once: the second is refused naming the first; the lock goes at exit;
a lock whose process is gone is replaced."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import write_tiny_project
from test_workflow import snakemake

from headattr.errors import ConfigError
from headattr.pipeline.runlock import acquire_run_lock, lock_path, release_run_lock

HOLD = (
    "import sys, time\n"
    "from headattr.pipeline.runlock import acquire_run_lock\n"
    "acquire_run_lock(sys.argv[1], 'tiny', 'reports/other')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def holder(results, seconds):
    """Another process that takes run 'tiny''s lock under ``results`` and holds it for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(results), str(seconds)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_replaced(tmp_path, capsys):
    results = tmp_path / "results"
    proc = holder(results, 60)
    try:
        info = json.loads(lock_path(results, "tiny").read_text())
        assert info["pid"] == proc.pid and info["target"] == "reports/other"
        with pytest.raises(ConfigError) as err:
            acquire_run_lock(results, "tiny", "reports/mine")
        message = str(err.value)
        assert message.startswith(f"run: another snakemake of run 'tiny' is running (pid {proc.pid} on ")
        assert f"started {info['started_utc']}, showing reports/other)" in message
        assert acquire_run_lock(results, "other-run") == lock_path(results, "other-run")  # other names are free
    finally:
        proc.send_signal(signal.SIGKILL)  # no exit handler runs: the lock stays behind, stale
        proc.wait()
    assert json.loads(lock_path(results, "tiny").read_text())["pid"] == proc.pid
    path = acquire_run_lock(results, "tiny", "reports/mine")
    assert "removed the stale lock" in capsys.readouterr().err
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release_run_lock(path)
    assert not path.exists()


def test_the_lock_is_removed_when_its_process_exits(tmp_path):
    results = tmp_path / "results"
    proc = holder(results, 0)
    assert proc.wait(timeout=60) == 0
    assert not lock_path(results, "tiny").exists()


@pytest.mark.slow
def test_snakemake_refuses_a_second_run_of_one_name(tmp_path):
    write_tiny_project(tmp_path, methods=("joint",), seeds=(1,), n_samples=2, extra={"validation": {"enabled": False}})
    results = tmp_path / "results"
    proc = holder(results, 120)
    try:
        second = snakemake(tmp_path, "--cores", "1", "--until", "sample_data")
        out = second.stdout + second.stderr
        assert second.returncode != 0 and f"another snakemake of run 'tiny' is running (pid {proc.pid}" in out, out[
            -2000:
        ]
        assert not (results / "tiny").is_symlink(), "the refused run did not move the view"
        assert snakemake(tmp_path, "-n").returncode == 0, "dry runs take no lock"
    finally:
        proc.terminate()
        proc.wait()
    time.sleep(0.1)
    third = snakemake(tmp_path, "--cores", "1", "--until", "sample_data")
    assert third.returncode == 0, (third.stdout + third.stderr)[-2000:]
    assert (results / "tiny").is_symlink() and not lock_path(results, "tiny").exists()
