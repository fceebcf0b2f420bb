rule sample_data:
    input:
        data_inputs,
    output:
        records=f"{RESULTS}/data/{{key}}/records.jsonl",
        manifest=f"{RESULTS}/data/{{key}}/manifest.json",
    log:
        f"{RESULTS}/logs/sample_data/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_data/{{key}}.tsv"
    group:
        "prepare"
    conda:
        "../envs/engine.yaml"
    params:
        slice=lambda wc: unit_for("data", wc.key).slices["data"],
    script:
        "../scripts/sample_data.py"


rule tokenize:
    input:
        records=lambda wc: path(
            "data", unit_for("tokens", wc.key).keys["data"], "records.jsonl"
        ),
        model=tokenizer_inputs(),
    output:
        tokens=f"{RESULTS}/tokens/{{key}}/tokens.npz",
        manifest=f"{RESULTS}/tokens/{{key}}/manifest.json",
    log:
        f"{RESULTS}/logs/tokenize/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize/{{key}}.tsv"
    group:
        "prepare"
    conda:
        "../envs/engine.yaml"
    params:
        slice=lambda wc: unit_for("tokens", wc.key).slices["tokens"],
        model=model_settings(),
        data=lambda wc: config_for("tokens", wc.key)["data"],
        objective=lambda wc: config_for("tokens", wc.key)["objective"]["kind"],
    script:
        "../scripts/tokenize.py"
