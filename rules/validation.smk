rule validate_pruning:
    input:
        dumps=lambda wc: [
            path("ig", k, "dump.npz") for k in VALIDATION[wc.key][1].values()
        ],
        tokens=lambda wc: path(
            "tokens", VALIDATION[wc.key][2].keys["tokens"], "tokens.npz"
        ),
        masks=lambda wc: path("masks", VALIDATION[wc.key][2].keys["masks"], "masks.npz"),
        model=model_inputs(),
        imported=list(config["compare"]["importance_files"].values()),
    output:
        curves=f"{RESULTS}/validation/{{key}}/curves.csv",
        summary=f"{RESULTS}/validation/{{key}}/summary.csv",
    log:
        f"{RESULTS}/logs/validate_pruning/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_pruning/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/engine.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        methods=lambda wc: list(VALIDATION[wc.key][1]),
        model=model_settings(),
        objective=config["objective"],
        cfg=config["validation"],
        engine=engine_settings(),
        postprocess=config["report"]["postprocess"],
        importance_files=config["compare"]["importance_files"],
    script:
        "../scripts/validate_pruning.py"
