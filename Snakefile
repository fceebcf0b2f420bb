# headattr: attention-head importance by Integrated Gradients over per-head gates.
# The DAG: sample data -> tokenize -> draw masks -> attribute (per method and seed) -> aggregate -> report.


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/masks.smk"
include: "rules/attribution.smk"
include: "rules/aggregate.smk"
include: "rules/diagnostics.smk"
include: "rules/validation.smk"
include: "rules/task_validation.smk"
include: "rules/dispersion.smk"
include: "rules/sparse_validation.smk"
include: "rules/report.smk"
include: "rules/sweep.smk"
include: "rules/demo_model.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
