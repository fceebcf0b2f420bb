# Pruning judged by lm-eval tasks (validation.tasks): one keep-mask and one task evaluation per point
# (method, order, fraction, random seed), then results/<run>/task_validation.csv (the base config's points; a
# sweep's points are read by sweep_stability instead). Off while validation.tasks.tasks
# is empty. Every job is in group "summarise": the keep-masks need the aggregated dumps and the report needs the
# evaluations, and a group must be closed under dependencies; on SLURM the evaluations of one model therefore share
# one submission (docs/cluster.md).
rule task_keepmask:
    input:
        importance=task_mask_inputs,
        model_config=[p for p in model_inputs() if p.endswith("config.json")],
    output:
        keep=f"{RESULTS}/task_masks/{{key}}/keep.npy",
    log:
        f"{RESULTS}/logs/task_keepmask/{{key}}.log",
    group:
        "summarise"
    conda:
        "../envs/engine.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=lambda wc: TASK_JOBS["masks"][wc.key],
        model=model_settings(),
    script:
        "../scripts/task_keepmask.py"


rule task_eval:
    input:
        keep=lambda wc: f"{RESULTS}/task_masks/{TASK_JOBS['points'][wc.key]['mask']}/keep.npy",
        model=model_inputs(),
        tasks=lambda wc: TASK_JOBS["points"][wc.key]["files"],
    output:
        results=f"{RESULTS}/task_eval/{{key}}/results.csv",
        cost=f"{RESULTS}/task_eval/{{key}}/cost.json",
    log:
        f"{RESULTS}/logs/task_eval/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/task_eval/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/engine.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        spec=lambda wc: TASK_JOBS["points"][wc.key],
        model=model_settings(),
    script:
        "../scripts/task_eval.py"


rule task_validation:
    input:
        results=[f"{RESULTS}/task_eval/{k}/results.csv" for k in TASK_PLAN["points"]],
        costs=[f"{RESULTS}/task_eval/{k}/cost.json" for k in TASK_PLAN["points"]],
    output:
        table=f"{RESULTS}/reports/{{key}}/task_validation.csv",
        cost=f"{RESULTS}/reports/{{key}}/task_eval_cost.csv",
    log:
        f"{RESULTS}/logs/task_validation/{{key}}.log",
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        points=list(TASK_PLAN["points"]),
    script:
        "../scripts/task_validation.py"
