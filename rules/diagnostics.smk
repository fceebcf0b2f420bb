DIAG = diagnostic_groups(config)


rule diagnose_unit:
    input:
        dump=lambda wc: path("ig", DIAG["unit"][wc.key], "dump.npz"),
    output:
        tables=directory(f"{RESULTS}/diagnostics/unit/{{key}}"),
    log:
        f"{RESULTS}/logs/diagnose_unit/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnose_unit/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        cfg=config["diagnostics"],
        postprocess=config["report"]["postprocess"],
    script:
        "../scripts/diagnose.py"


rule diagnose_seeds:
    input:
        dump_a=lambda wc: path("ig", DIAG["seeds"][wc.key][3], "dump.npz"),
        dump_b=lambda wc: path("ig", DIAG["seeds"][wc.key][4], "dump.npz"),
    output:
        tables=directory(f"{RESULTS}/diagnostics/seeds/{{key}}"),
    log:
        f"{RESULTS}/logs/diagnose_seeds/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnose_seeds/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        cfg=config["diagnostics"],
        labels=lambda wc: [
            f"seed{DIAG['seeds'][wc.key][1]}",
            f"seed{DIAG['seeds'][wc.key][2]}",
        ],
        postprocess=config["report"]["postprocess"],
    script:
        "../scripts/diagnose.py"


rule diagnose_methods:
    input:
        dumps=lambda wc: [
            path("ig", k, "dump.npz") for k in DIAG["methods"][wc.key][1].values()
        ],
        imported=list(config["compare"]["importance_files"].values()),
    output:
        tables=directory(f"{RESULTS}/diagnostics/methods/{{key}}"),
    log:
        f"{RESULTS}/logs/diagnose_methods/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnose_methods/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        cfg=config["diagnostics"],
        methods=lambda wc: list(DIAG["methods"][wc.key][1]),
        imported=config["compare"]["importance_files"],
        postprocess=config["report"]["postprocess"],
    script:
        "../scripts/diagnose.py"
