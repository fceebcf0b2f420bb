rule validate_pruning:
    input:
        dumps=lambda wc: [
            path("ig", k, "dump.npz") for k in VALIDATION_ALL[wc.key][0][1].values()
        ],
        tokens=lambda wc: path(
            "tokens", VALIDATION_ALL[wc.key][0][2].keys["tokens"], "tokens.npz"
        ),
        masks=lambda wc: path(
            "masks", VALIDATION_ALL[wc.key][0][2].keys["masks"], "masks.npz"
        ),
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
        methods=lambda wc: list(VALIDATION_ALL[wc.key][0][1]),
        model=model_settings(),
        objective=lambda wc: VALIDATION_ALL[wc.key][1]["objective"],
        cfg=lambda wc: heldout_validation(VALIDATION_ALL[wc.key][1]),
        engine=engine_settings(),
        postprocess=lambda wc: VALIDATION_ALL[wc.key][1]["report"]["postprocess"],
        importance_files=config["compare"]["importance_files"],
    script:
        "../scripts/validate_pruning.py"
