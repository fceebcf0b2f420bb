"""Sharded runs gather to the unsharded dump; a killed attribution resumes and ends bit-identical."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from helpers import write_tiny_project
from test_workflow import SNAKEFILE, snakemake

NO_VALIDATION = {"validation": {"enabled": False}}


def dumps_of(root):
    out = {}
    for path in sorted((root / "results" / "ig").glob("*/dump.npz")):
        with np.load(path, allow_pickle=False) as data:
            out[path.parent.name] = {k: data[k] for k in data.files}
    return out


def assert_same_dumps(a, b):
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)


def test_sharded_run_gathers_to_the_unsharded_dump(tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    for root, shard in ((plain, {}), (sharded, {"shard": {"samples": 3, "layers": 2}})):
        root.mkdir()
        write_tiny_project(
            root, methods=("per_layer", "joint"), seeds=(5,), n_samples=5, extra={**NO_VALIDATION, **shard}
        )
        result = snakemake(root, "--cores", "2", "--until", "aggregate")
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    shards = sorted(p.name for p in (sharded / "results" / "ig").glob("per_layer-*/shards/*.npz"))
    assert shards == ["s0-3_l0-2.npz", "s0-3_l2-3.npz", "s3-5_l0-2.npz", "s3-5_l2-3.npz"]
    assert_same_dumps(dumps_of(plain), dumps_of(sharded))


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
