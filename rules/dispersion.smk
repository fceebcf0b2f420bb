DISPERSION = dispersion_groups(config)


rule attention_dispersion:
    input:
        tokens=lambda wc: path(
            "tokens", DISPERSION[wc.key][1].keys["tokens"], "tokens.npz"
        ),
        masks=lambda wc: path("masks", DISPERSION[wc.key][1].keys["masks"], "masks.npz"),
        model=model_inputs(),
    output:
        heads=f"{RESULTS}/dispersion/{{key}}/heads.csv",
    log:
        f"{RESULTS}/logs/attention_dispersion/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attention_dispersion/{{key}}.tsv"
    conda:
        "../envs/engine.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        model=model_settings(),
        objective=config["objective"],
        cfg=config["dispersion"],
    script:
        "../scripts/dispersion.py"
