SWEEP = sweep_plan(config, POINTS) if POINTS else None
SWEEP_IG = (
    list(dict.fromkeys(k for e in SWEEP["entities"] for k in e["ig"])) if SWEEP else []
)
# each point's resolved config, written beside the sweep report (not in the plan: the sweep key stays)
SWEEP_CONFIGS = resolved_configs(config, POINTS) if SWEEP else None
SWEEP_VALIDATION = [v["key"] for v in SWEEP["validation"]] if SWEEP else []
# task evaluations of every point (validation.tasks), shared points once
SWEEP_TASKS = list(dict.fromkeys(t["key"] for t in SWEEP["tasks"])) if SWEEP else []
SWEEP_BENCHMARKS = (
    list(dict.fromkeys(b for e in SWEEP["entities"] for b in e["benchmarks"]))
    if SWEEP
    else []
)
SWEEP_MANIFESTS = (
    list(dict.fromkeys(m for e in SWEEP["entities"] for m in e["manifests"]))
    if SWEEP
    else []
)


rule sweep_stability:
    input:
        dumps=[path("ig", k, "dump.npz") for k in SWEEP_IG],
        summaries=[path("validation", k, "summary.csv") for k in SWEEP_VALIDATION],
        benchmarks=[f"{RESULTS}/benchmarks/{b}" for b in SWEEP_BENCHMARKS],
        manifests=[f"{RESULTS}/ig/{m}" for m in SWEEP_MANIFESTS],
        task_results=[f"{RESULTS}/task_eval/{k}/results.csv" for k in SWEEP_TASKS],
    output:
        tables=directory(f"{RESULTS}/sweeps/{{key}}/tables"),
    log:
        f"{RESULTS}/logs/sweep_stability/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sweep_stability/{{key}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        plan=SWEEP,
        ig_keys=SWEEP_IG,
        validation_keys=SWEEP_VALIDATION,
        benchmarks=SWEEP_BENCHMARKS,
        manifests=SWEEP_MANIFESTS,
        task_keys=SWEEP_TASKS,
    script:
        "../scripts/sweep_stability.py"


rule sweep_report:
    input:
        tables=f"{RESULTS}/sweeps/{{key}}/tables",
    output:
        report_md=f"{RESULTS}/sweeps/{{key}}/report.md",
        figures=report(
            directory(f"{RESULTS}/sweeps/{{key}}/figures"),
            patterns=["{name}.png"],
            caption="../report/sweep.rst",
            category="Sweep",
        ),
        configs=directory(f"{RESULTS}/sweeps/{{key}}/configs"),
    log:
        f"{RESULTS}/logs/sweep_report/{{key}}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        plan=SWEEP,
        configs=SWEEP_CONFIGS,
    script:
        "../scripts/sweep_report.py"
