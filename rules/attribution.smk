rule attribute:
    input:
        tokens=lambda wc: path(
            "tokens", unit_for("ig", wc.key).keys["tokens"], "tokens.npz"
        ),
        masks=lambda wc: path(
            "masks", unit_for("ig", wc.key).keys["masks"], "masks.npz"
        ),
        model=model_inputs(),
    output:
        shard=f"{RESULTS}/ig/{{key}}/shards/{{shard}}.npz",
        manifest=f"{RESULTS}/ig/{{key}}/shards/{{shard}}.manifest.json",
    log:
        f"{RESULTS}/logs/attribute/{{key}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribute/{{key}}/{{shard}}.tsv"
    conda:
        "../envs/engine.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        slice=lambda wc: unit_for("ig", wc.key).slices["ig"],
        settings=ig_settings,
        model=model_settings(),
        engine=engine_settings(),
        checkpoint_dir=lambda wc: f"{RESULTS}/ig/{wc.key}/partial/{wc.shard}",
    script:
        "../scripts/attribute.py"
