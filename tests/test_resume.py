"""A killed attribution resumes and ends bit-identical (sharded runs: test_shards.py)."""

import os
import re
import signal
import subprocess
import sys
import time

from helpers import NO_VALIDATION, assert_same_dumps, dumps_of, write_tiny_project
from test_workflow import SNAKEFILE, snakemake


def test_killed_attribution_resumes_to_identical_results(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for root in (killed, reference):
        root.mkdir()
        write_tiny_project(root, methods=("per_layer",), seeds=(3,), n_samples=8, steps=128, extra=NO_VALIDATION)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "1", "--until", "aggregate"],
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            done = list((killed / "results" / "ig").glob("*/partial/*/*.npz"))
            if len(done) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the attribution finished before it could be killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 2 <= len(list((killed / "results" / "ig").glob("*/partial/*/*.npz"))) < 8, "kill must land halfway"
    assert not list((killed / "results" / "ig").glob("*/dump.npz"))
    assert snakemake(killed, "--unlock").returncode == 0
    again = snakemake(killed, "--cores", "1", "--rerun-incomplete", "--until", "aggregate")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    log = next((killed / "results" / "logs" / "attribute").glob("*/*.log")).read_text()
    resumed = [int(x) for x in re.findall(r"resumed (\d+)/8 samples", log)]
    assert resumed and resumed[-1] >= 2
    assert snakemake(reference, "--cores", "1", "--until", "aggregate").returncode == 0
    assert_same_dumps(dumps_of(killed), dumps_of(reference))
