# Adaptive block-sparse attention judged by lm-eval tasks (sparse_validation, issue 24): one evaluation per point
# (source, select, task entry, seed), then results/<run>/sparse_validation.csv and sparse_items.csv (per-item
# scores for the report's paired bootstrap). Off while sparse_validation.tasks is empty. In group "summarise" with
# the report, as the task validation's jobs (a method's points need the aggregated dumps).
from headattr.evaluation import sparse_protocol
from headattr.evaluation.tasks import check_task_entries

if workflow.is_main_process:
    for sparse_cfg in {repr(c["sparse_validation"]): c for c in CONFIGS}.values():
        if sparse_protocol.enabled(sparse_cfg):
            check_task_entries(
                sparse_cfg["sparse_validation"]["tasks"],
                Path.cwd(),
                "sparse_validation.tasks",
            )

SPARSE_PLAN = sparse_protocol.sparse_plan(config)
SPARSE_JOBS = sparse_protocol.merged_sparse_plans(
    [SPARSE_PLAN] + [sparse_protocol.sparse_plan(p.config) for p in POINTS]
)


rule sparse_eval:
    input:
        importance=lambda wc: sparse_protocol.importance_inputs(
            SPARSE_JOBS[wc.key], lambda key: path("ig", key, "dump.npz")
        ),
        model=model_inputs(),
        tasks=lambda wc: SPARSE_JOBS[wc.key]["files"],
    output:
        results=f"{RESULTS}/sparse_eval/{{key}}/results.csv",
        item_scores=f"{RESULTS}/sparse_eval/{{key}}/items.csv",
        info=f"{RESULTS}/sparse_eval/{{key}}/info.json",
    log:
        f"{RESULTS}/logs/sparse_eval/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sparse_eval/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/engine.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        spec=lambda wc: SPARSE_JOBS[wc.key],
        model=model_settings(),
    script:
        "../scripts/sparse_eval.py"


rule sparse_validation:
    input:
        results=[f"{RESULTS}/sparse_eval/{k}/results.csv" for k in SPARSE_PLAN],
        item_scores=[f"{RESULTS}/sparse_eval/{k}/items.csv" for k in SPARSE_PLAN],
        info=[f"{RESULTS}/sparse_eval/{k}/info.json" for k in SPARSE_PLAN],
    output:
        table=f"{RESULTS}/reports/{{key}}/sparse_validation.csv",
        item_scores=f"{RESULTS}/reports/{{key}}/sparse_items.csv",
    log:
        f"{RESULTS}/logs/sparse_validation/{{key}}.log",
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        points=list(SPARSE_PLAN),
    script:
        "../scripts/sparse_validation.py"
