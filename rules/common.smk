"""Config validation and the helpers that turn the config into versioned artifact paths."""

import sys
from pathlib import Path

from headattr.pipeline.checks import check_inputs, validate_config
from headattr.pipeline.origins import inherited
from headattr.pipeline.runlock import acquire_run_lock
from headattr.pipeline.workflow import is_weight_file
from headattr.pipeline.keys import (
    diagnostic_groups,
    dispersion_groups,
    heldout_units,
    heldout_validation,
    stage_key,
    units,
    validation_groups,
)
from headattr.report.keys import report_key
from headattr.sweeps.configs import resolved_configs
from headattr.sweeps.plan import sweep_plan, sweep_points
from headattr.evaluation.protocol import importance_inputs, merged_plans, task_plan
from headattr.evaluation.tasks import check_tasks

validate_config(config, Path.cwd())
POINTS = sweep_points(config, lambda point: validate_config(point, Path.cwd()))
# the configs whose artifacts this run can build: the base config and every sweep point
CONFIGS = [config] + [p.config for p in POINTS]
# keys a --configfile leaves to the embedded config.yaml, named in errors about their values
ORIGINS = inherited(
    ["data.max_samples"],
    workflow.config_settings.overwrite_config,
    workflow.overwrite_configfiles,
    config,
)
# model and input checks, once in the main process (jobs that re-parse the Snakefile skip them)
if workflow.is_main_process:
    for cfg in CONFIGS:
        check_inputs(cfg, Path.cwd(), origins=ORIGINS)
    # validation.tasks: task files and names exist (before any job loads a model), once per distinct setting
    for tasks_cfg in {repr(c["validation"]["tasks"]): c for c in CONFIGS}.values():
        check_tasks(tasks_cfg, Path.cwd())

RESULTS = config["results_dir"]
UNITS = units(config)
REPORT_KEY = report_key(config)


wildcard_constraints:
    key=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard=r"s\d+-\d+_l(\d+-\d+|all)",


HELDOUT = heldout_units(config)
VALIDATION = validation_groups(config)
# validation key -> (group, its config); (stage, key) -> (unit, its config); base config and sweep points
VALIDATION_ALL, UNIT_CONFIG = {}, {}
for cfg in CONFIGS:
    for key, group in validation_groups(cfg).items():
        VALIDATION_ALL.setdefault(key, (group, cfg))
    for u in units(cfg) + heldout_units(cfg):
        for stage, key in u.keys.items():
            UNIT_CONFIG.setdefault((stage, key), (u, cfg))


def _by_key(stage):
    return {k: u for (s, k), (u, _) in UNIT_CONFIG.items() if s == stage}


DATA_UNITS, TOKEN_UNITS, MASK_UNITS, IG_UNITS = (
    _by_key(stage) for stage in ("data", "tokens", "masks", "ig")
)


def config_for(stage, key):
    """The config (base or sweep point) that the `stage` artifact with this key belongs to."""
    unit_for(stage, key)
    return UNIT_CONFIG[(stage, key)][1]


def unit_for(stage, key):
    """The unit whose `stage` artifact has this key (only keys of the current config are buildable)."""
    table = {
        "data": DATA_UNITS,
        "tokens": TOKEN_UNITS,
        "masks": MASK_UNITS,
        "ig": IG_UNITS,
    }[stage]
    if key not in table:
        raise ValueError(f"{stage} key {key!r} does not belong to the current config")
    return table[key]


def model_settings():
    """Everything the scripts need to load the model (device and code trust included)."""
    return dict(config["model"])


def engine_settings():
    """Rows per forward pass and the memory budget that chooses them (knobs that leave results unchanged)."""
    return {k: config["ig"][k] for k in ("rows_per_pass", "memory_budget_gib")}


def model_inputs():
    """Files of a local model directory, so that replacing the checkpoint reruns what depends on it."""
    path = Path(config["model"]["path"])
    return (
        sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    )


def tokenizer_inputs():
    """The model files tokenization reads (config and tokenizer): replacing the weights does not retokenize."""
    return [p for p in model_inputs() if not is_weight_file(Path(p))]


def data_inputs(wildcards):
    """Files of the data source this data artifact reads (the attribution or the validation.data source)."""
    source = unit_for("data", wildcards.key).slices["data"]["source"]
    if source == "demo":
        return ["resources/demo/corpus.jsonl.gz"]
    return [] if source.startswith("hf:") else [source]


def ig_settings(wildcards):
    """AttributionSettings fields of one (seed, method) unit."""
    unit = unit_for("ig", wildcards.key)
    o, ig = config_for("ig", wildcards.key)["objective"], unit.slices["ig"]
    return {
        "method": unit.method,
        **{
            k: ig[k]
            for k in ("rule", "steps", "baseline", "lambdas", "options", "layer_range")
            if k in ig
        },
        "mask_samples": o["mask_samples"],
        "objective": o["kind"],
        "weighting": o["weighting"],
        "mask_probs": [1.0] if o["kind"] == "causal" else o["mask_probs"],
        "mask_mode": o["mask_mode"],
        "mask_seed": unit.slices["masks"]["mask_seed"],
    }


def path(stage, key, name):
    return f"{RESULTS}/{stage}/{key}/{name}"


def get_final_output():
    if POINTS:
        return [f"{RESULTS}/sweeps/{sweep_plan(config, POINTS)['key']}/report.md"]
    return [
        f"{RESULTS}/reports/{REPORT_KEY}/summary.json",
        f"{RESULTS}/reports/{REPORT_KEY}/report.md",
    ]


def run_view():
    """Point results/<run> at the report of this config (a relative symlink), whether or not anything is
    rebuilt; until that report exists the link dangles rather than show another config's report. Holds the run's
    lock (headattr.pipeline.runlock) until this process exits.
    """
    view = Path(RESULTS) / config["run"]
    target = (
        Path("sweeps", sweep_plan(config, POINTS)["key"])
        if POINTS
        else Path("reports") / REPORT_KEY
    )
    # one snakemake per run name at a time: a second would move the view under the first
    acquire_run_lock(RESULTS, config["run"], str(target))
    view.parent.mkdir(parents=True, exist_ok=True)
    if view.is_symlink() or not view.exists():
        tmp = view.with_name(f".{view.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        tmp.replace(view)


def previews_only(argv):
    """True for a dry run or lint (the executor is not known while the Snakefile is parsed)."""
    short = [a for a in argv if a.startswith("-") and not a.startswith("--")]
    long = {
        "--dry-run",
        "--dryrun",
        "--lint",
        "--unlock",
        "--summary",
        "--detailed-summary",
    }
    return bool(long & set(argv)) or any(a[1:].isalpha() and "n" in a for a in short)


# Snakemake runs no hook when nothing is to be done, so the view is set here, before the DAG runs.
if workflow.is_main_process and not previews_only(sys.argv[1:]):
    run_view()


def get_demo_corpus():
    """The shipped corpus, or one rebuilt from the source packages (demo_model.rebuild_corpus)."""
    if config["demo_model"]["rebuild_corpus"]:
        return rules.demo_corpus.output.corpus
    return "resources/demo/corpus.jsonl.gz"


# validation.tasks: the points of this config's task validation (its report's table), and the keep-mask and
# evaluation jobs of every config (base and sweep points; a point shared by several configs is one job)
TASK_PLAN = task_plan(config)
TASK_JOBS = merged_plans([TASK_PLAN] + [task_plan(p.config) for p in POINTS])


def task_mask_inputs(wc):
    """The dumps (all seeds) of a ranked mask's method, or its imported importance file; none for random."""
    return importance_inputs(
        TASK_JOBS["masks"][wc.key], lambda key: path("ig", key, "dump.npz")
    )
