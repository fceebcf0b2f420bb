rule aggregate:
    input:
        shards=lambda wc: [
            path("ig", wc.key, f"shards/{s}.npz")
            for s in unit_for("ig", wc.key).shards
        ],
    output:
        dump=f"{RESULTS}/ig/{{key}}/dump.npz",
        heads=f"{RESULTS}/ig/{{key}}/heads.csv",
        completeness=f"{RESULTS}/ig/{{key}}/completeness.csv",
        importance=f"{RESULTS}/ig/{{key}}/head_importance.pt",
        per_sample=f"{RESULTS}/ig/{{key}}/per_sample_ig.pt",
    log:
        f"{RESULTS}/logs/aggregate/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/engine.yaml"
    params:
        postprocess=config["report"]["postprocess"],
    script:
        "../scripts/aggregate.py"
