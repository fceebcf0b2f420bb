"""The workflow through a real (single-node) SLURM cluster with the snakemake SLURM executor plugin.

Opt-in: needs root (it installs and starts munge, MariaDB, slurmdbd, slurmctld and slurmd via
tests/slurm/setup.sh) and takes minutes:

    HEADATTR_TEST_SLURM=1 python -m pytest -q -m slurm tests/test_slurm.py -s

It runs the tiny project through `--workflow-profile profiles/slurm-ci` and checks that every job ran in a SLURM
allocation (sacct: COMPLETED, account ci), that the attribute shards went as one SLURM job array (one sbatch, one
array id in sacct, each shard's log naming its task), that the IG dumps are bit-identical to a local run's, that a
parameter change resubmits only the jobs that depend on it, and that an attribute job killed with scancel is redone by
the rerun of the same command, to identical results. To save wall time the local reference runs while the SLURM run
does, and the kill test (on a copy of the project) while the parameter-change rerun does. The cluster is stopped
afterwards if this test started it (HEADATTR_SLURM_KEEP=1 keeps it running).
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import job_stats, write_tiny_project

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SETUP = REPO / "tests" / "slurm" / "setup.sh"
PROFILE = REPO / "profiles" / "slurm-ci"
TIMEOUT = 1500  # seconds for one snakemake run: the CPU is shared, be generous

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        os.environ.get("HEADATTR_TEST_SLURM") != "1",
        reason="set HEADATTR_TEST_SLURM=1 to run the SLURM tests (root, installs a local SLURM cluster)",
    ),
]

TIMES: dict[str, float] = {}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")
ARRAY = re.compile(
    r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)\. The individual task IDs are (\d+)-(\d+)\."
)
FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)", re.M)
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _log(msg):
    print(f"[test_slurm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def slurm_cmd(*args):
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--workflow-profile", str(PROFILE), *args]


def run(cmd, cwd, label, timeout=TIMEOUT):
    """Run a command, keep its output in <cwd>/<label>.log, and time it."""
    t0 = time.monotonic()
    result = subprocess.run(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=_env()
    )
    result.wall_s = time.monotonic() - t0
    (Path(cwd) / f"{label}.log").write_text(result.stdout)
    return result


def planned_jobs(output: str) -> dict:
    """Job counts per rule from a dry run's 'Job stats' table ({} when there is nothing to do)."""
    return job_stats(output)


def dry_run(cwd, *targets):
    result = run(slurm_cmd("-n", *targets), cwd, "dry-run")
    assert result.returncode == 0, result.stdout[-3000:]
    return planned_jobs(result.stdout)


def submissions(output: str) -> dict:
    """SLURM job id -> the snakemake SLURM log of each submission of one run."""
    return {jobid: log for jobid, log in SUBMITTED.findall(output)}


def array_submissions(output: str) -> dict:
    """SLURM array job id -> its task ids, for each array submission of one run (plugin 2.8.0's log line)."""
    arrays = {}
    for jobid, first, last in ARRAY.findall(output):
        arrays.setdefault(jobid, []).extend(range(int(first), int(last) + 1))
    return arrays


def sacct(jobids, wait_s=90) -> dict:
    """SLURM job id (``<array id>_<task>`` for an array task) -> {state, comment, account, partition}, waiting until
    all are in a final state."""
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", ",".join(jobids), "-o", "JobID,State,Comment,Account,Partition"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = {}
        for line in out.splitlines():
            jobid, state, comment, account, partition = line.split("|")
            rows[jobid] = {"state": state.split()[0], "comment": comment, "account": account, "partition": partition}
        done = set(rows) == set(jobids) and all(r["state"].startswith(TERMINAL) for r in rows.values())
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def by_kind(subs) -> collections.Counter:
    """Submissions per kind, from the plugin's log path: `<rule>` for a single job, `group:<group>` for a group
    job (.snakemake/slurm_logs/rule_<rule>/... or group_<group>_<its rules>/...)."""
    kinds = collections.Counter()
    for log in subs.values():
        m = re.search(r"slurm_logs/(rule|group)_([^/]+)/", log)
        assert m, log
        kinds[m.group(2) if m.group(1) == "rule" else f"group:{m.group(2).split('_')[0]}"] += 1
    return kinds


def finished_rules(output: str) -> dict:
    return dict(collections.Counter(r for r in FINISHED.findall(output) if r != "all"))


def attribute_logs(root) -> list[Path]:
    return sorted((Path(root) / "results" / "logs" / "attribute").rglob("*.log"))


def dumps(root) -> dict:
    return {p.parent.name: p for p in sorted((Path(root) / "results" / "ig").glob("*/dump.npz"))}


def assert_same_dumps(a: Path, b: Path):
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        assert sorted(x.files) == sorted(y.files), (a, b)
        for name in x.files:
            assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), f"{a}: {name} differs"


def set_steps(root, steps):
    path = Path(root) / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["ig"]["steps"] = steps
    path.write_text(yaml.safe_dump(config))


def check_slurm_run(result, plan, label):
    """Every planned job ran in a SLURM job (none locally but `all`); every submission COMPLETED, account ci; the
    attribute jobs as the tasks of job arrays (profiles/slurm-ci: slurm-array-jobs): the plugin submits the shards
    that become ready together as one array (each seed's, released by its prepare group job; all of them in a
    rerun), a lone one as a plain job. Returns (plain submissions, sacct rows, kinds, arrays)."""
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert set(re.findall(r"^localrule (\w+):", out, re.M)) <= {"all"}, "a job ran outside SLURM"
    expected = {rule: n for rule, n in plan.items() if rule != "all"}
    assert finished_rules(out) == expected
    subs, arrays = submissions(out), array_submissions(out)
    tasks = [f"{jobid}_{task}" for jobid, ids in arrays.items() for task in ids]
    rows = sacct(list(subs) + tasks)
    assert set(rows) == set(subs) | set(tasks), (subs, arrays, rows)
    bad = {j: r for j, r in rows.items() if r["state"] != "COMPLETED" or r["account"] != "ci"}
    assert not bad, f"{label}: SLURM jobs not COMPLETED under account ci: {bad}"
    assert all(rows[t]["comment"].startswith("rule_attribute") for t in tasks), {t: rows[t] for t in tasks}
    kinds = by_kind(subs)
    n_attribute = expected.get("attribute", 0)
    assert kinds.get("attribute", 0) + len(tasks) == n_attribute, (kinds, arrays)
    if n_attribute >= 2:
        assert "attribute" not in kinds and all(len(t) >= 2 for t in arrays.values()), (kinds, arrays)
    _log(
        f"{label}: {len(subs)} plain SLURM jobs {dict(kinds)}, arrays {arrays}; snakemake jobs {expected}; "
        f"{result.wall_s:.0f} s"
    )
    return subs, rows, kinds, arrays


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM test needs root (tests/slurm/setup.sh installs and starts the daemons)")
    was_running = subprocess.run(["bash", str(SETUP), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    result = subprocess.run(["bash", str(SETUP), "start"], capture_output=True, text=True, timeout=1200)
    TIMES["setup"] = time.monotonic() - t0
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _log(f"cluster ready in {TIMES['setup']:.1f} s (already running: {was_running})")
    yield
    if not was_running and os.environ.get("HEADATTR_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, timeout=120)
    _log("wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items()))


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory):
    """The tiny project through SLURM (and, at the same time, locally as the reference)."""
    local = tmp_path_factory.mktemp("local")
    slurm = tmp_path_factory.mktemp("slurm")
    write_tiny_project(local)
    write_tiny_project(slurm)
    t0 = time.monotonic()
    local_cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "2"]
    with open(local / "local-run.log", "w") as log:
        local_proc = subprocess.Popen(local_cmd, cwd=local, stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        plan = dry_run(slurm)
        assert plan.get("attribute", 0) >= 4, plan
        result = run(slurm_cmd(), slurm, "slurm-run")
        TIMES["slurm_run"] = result.wall_s
        local_rc = local_proc.wait(timeout=TIMEOUT)
    finally:
        if local_proc.poll() is None:
            local_proc.kill()
    TIMES["local_run"] = time.monotonic() - t0
    assert local_rc == 0, (local / "local-run.log").read_text()[-3000:]
    assert result.returncode == 0, result.stdout[-4000:]
    # the kill test works on a copy with one (seed, method) unit's IG results removed
    kill_root = tmp_path_factory.mktemp("kill") / "project"
    shutil.copytree(slurm, kill_root, symlinks=True)
    kill_key = sorted(dumps(slurm))[0]
    shutil.rmtree(kill_root / "results" / "ig" / kill_key)
    return {"local": local, "slurm": slurm, "kill": kill_root, "kill_key": kill_key, "plan": plan, "result": result}


def kill_scenario(root: Path, target: str, state: dict):
    """Run `target` through SLURM, scancel its attribute job as soon as it is RUNNING, wait for snakemake to give
    up, then rerun the same command."""
    state["plan"] = dry_run(root, target)
    cmd = slurm_cmd(target)
    t0 = time.monotonic()
    log_path = root / "kill-run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.monotonic() + 900
        while "killed" not in state and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            text = log_path.read_text()
            ids = list(submissions(text)) + list(array_submissions(text))
            if not ids:
                continue
            queue = subprocess.run(
                ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%k"], capture_output=True, text=True
            ).stdout
            running = [ln.split("|")[0] for ln in queue.splitlines() if "|RUNNING|rule_attribute_" in ln]
            if not running:
                continue
            # cancel at once: on an idle machine the tiny job's samples take well under a second after its
            # ~8 s start-up, so waiting for a checkpoint raced with the job's own end (resume from per-sample
            # checkpoints is tested locally in tests/test_resume.py)
            subprocess.run(["scancel", running[0]], check=True)
            state["killed"] = running[0]
            _log(f"kill test: scancel {running[0]}")
        if "killed" in state:
            state["rc"] = proc.wait(timeout=300)  # snakemake must notice the cancelled job by itself
    except subprocess.TimeoutExpired:
        state["rc"] = "hang"  # see profiles/slurm-ci: the sacct status mode of plugin 2.8.0 never notices
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            subprocess.run(cmd + ["--unlock"], cwd=root, capture_output=True, env=_env())
    TIMES["kill_run"] = time.monotonic() - t0
    state["killed_output"] = log_path.read_text()
    if "killed" not in state or state["rc"] == "hang":
        return
    state["rerun"] = run(cmd, root, "kill-rerun")
    TIMES["kill_rerun"] = state["rerun"].wall_s
    state["after"] = dry_run(root, target)


@pytest.fixture(scope="module")
def rerun_and_kill(first_run):
    """ig.steps 2 -> 3, then the same SLURM command again; the kill test runs on its copy meanwhile."""
    kill = {}

    def kill_thread():
        try:
            kill_scenario(first_run["kill"], f"results/ig/{first_run['kill_key']}/dump.npz", kill)
        except BaseException as err:  # reported by the kill test
            kill["error"] = err

    thread = threading.Thread(target=kill_thread, daemon=True)
    thread.start()
    root = first_run["slurm"]
    before = set(dumps(root))
    set_steps(root, 3)
    plan = dry_run(root)
    result = run(slurm_cmd(), root, "slurm-rerun")
    TIMES["slurm_rerun"] = result.wall_s
    after_plan = dry_run(root)
    thread.join(timeout=2 * TIMEOUT)
    return {
        "plan": plan,
        "result": result,
        "new_keys": sorted(set(dumps(root)) - before),
        "after": after_plan,
        "kill": kill,
    }


# ------------------------------------------------------------------------------------------------ tests
def test_every_job_runs_under_slurm_and_dumps_match_a_local_run(first_run):
    root, plan, result = first_run["slurm"], first_run["plan"], first_run["result"]
    subs, rows, kinds, arrays = check_slurm_run(result, plan, "SLURM run")
    # the attribute shards went as job arrays, one per seed here (each seed's prepare group job releases its
    # shards together): sacct lists each array's tasks under its id, and each attribute log (one per shard)
    # names its array and task, every task once
    assert len(arrays) <= len(set(re.findall(r"seed(\d+)", " ".join(dumps(root))))), arrays
    tasks = sorted((array_id, t) for array_id, ids in arrays.items() for t in ids)
    for array_id, task_ids in arrays.items():
        listed = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", array_id, "-o", "JobID,State"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert sorted(listed) == sorted(f"{array_id}_{t}|COMPLETED" for t in task_ids), listed
    logs = attribute_logs(root)
    assert len(logs) == plan["attribute"] == len(tasks)
    seen = []
    for log in logs:
        m = re.search(r"^SLURM_JOB_ID=(\S+) SLURM_ARRAY_JOB_ID=(\S*) SLURM_ARRAY_TASK_ID=(\S*)", log.read_text(), re.M)
        assert m, f"{log}: not run in a SLURM job"
        assert m.group(2) in arrays, f"{log}: ran in SLURM job {m.group(1)}, not a task of the arrays {arrays}"
        seen.append((m.group(2), int(m.group(3))))
    assert sorted(seen) == tasks
    # grouped rules went as group jobs (one sbatch per connected group)
    assert any(k.startswith("group:") for k in kinds), kinds
    # bit-identical to the local run of the same project
    local, remote = dumps(first_run["local"]), dumps(root)
    assert set(local) == set(remote) and len(remote) >= 4, (sorted(local), sorted(remote))
    for key in remote:
        assert_same_dumps(local[key], remote[key])
    assert (root / "results" / "tiny" / "summary.json").exists()


def test_parameter_change_resubmits_only_dependent_jobs(rerun_and_kill):
    plan, result = rerun_and_kill["plan"], rerun_and_kill["result"]
    prepare = {"sample_data", "tokenize", "draw_masks"}
    assert plan.get("attribute", 0) >= 4 and not prepare & set(plan), plan
    subs, rows, kinds, arrays = check_slurm_run(result, plan, "SLURM rerun (ig.steps 2 -> 3)")
    assert not any(k == "group:prepare" or k in prepare for k in kinds), kinds
    assert len(subs) == sum(n for k, n in kinds.items() if k.startswith("group:"))
    assert sum(len(t) for t in arrays.values()) == plan["attribute"]
    assert rerun_and_kill["after"] == {}, f"the dry run after the rerun still plans {rerun_and_kill['after']}"
    assert len(rerun_and_kill["new_keys"]) >= 4


def test_killed_job_is_rerun_to_identical_results(first_run, rerun_and_kill):
    """scancel a RUNNING attribute job: snakemake stops, and the rerun of the same command completes,
    bit-identical to the uninterrupted SLURM run and to the local run."""
    kill = rerun_and_kill["kill"]
    if "error" in kill:
        raise kill["error"]
    killed_output = kill.get("killed_output", "")
    assert "killed" in kill, "no attribute job was seen RUNNING: " + killed_output[-3000:]
    assert kill["rc"] != "hang", "snakemake did not notice the cancelled job within 300 s: " + killed_output[-2000:]
    assert kill["rc"] != 0, "snakemake succeeded although its job was cancelled: " + killed_output[-3000:]
    state = sacct([kill["killed"]])[kill["killed"]]["state"]
    assert state == "CANCELLED", f"the attribute job {kill['killed']} ended {state}: it finished before scancel?"
    _log(f"kill test: snakemake exited {kill['rc']} after the scancel")
    subs, rows, kinds, arrays = check_slurm_run(
        kill["rerun"], remaining(kill["plan"], killed_output), "rerun after scancel"
    )
    assert kinds.get("attribute", 0) + sum(len(t) for t in arrays.values()) >= 1
    assert kill["after"] == {}
    key = first_run["kill_key"]
    for reference in (first_run["slurm"], first_run["local"]):
        assert_same_dumps(dumps(reference)[key], dumps(first_run["kill"])[key])


def remaining(plan, killed_output):
    """What the rerun after the kill must run: the plan less the jobs that finished before the kill."""
    done = collections.Counter(r for r in FINISHED.findall(killed_output) if r != "all")
    return {rule: n - done.get(rule, 0) for rule, n in plan.items() if n - done.get(rule, 0) > 0}
