rule draw_masks:
    input:
        tokens=lambda wc: path(
            "tokens", unit_for("masks", wc.key).keys["tokens"], "tokens.npz"
        ),
    output:
        masks=f"{RESULTS}/masks/{{key}}/masks.npz",
        manifest=f"{RESULTS}/masks/{{key}}/manifest.json",
    log:
        f"{RESULTS}/logs/draw_masks/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/draw_masks/{{key}}.tsv"
    group:
        "prepare"
    conda:
        "../envs/engine.yaml"
    params:
        slice=lambda wc: unit_for("masks", wc.key).slices["masks"],
        seed=lambda wc: unit_for("masks", wc.key).slices["masks"]["mask_seed"],
        model=model_settings(),
        objective=lambda wc: config_for("masks", wc.key)["objective"],
    script:
        "../scripts/draw_masks.py"
