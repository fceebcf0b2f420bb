DEMO_KEY = stage_key("demo", config["demo_model"])


rule demo_corpus:
    output:
        corpus=f"{RESULTS}/demo_model/{DEMO_KEY}/corpus.jsonl.gz",
    log:
        f"{RESULTS}/logs/demo_corpus/{DEMO_KEY}.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_corpus/{DEMO_KEY}.tsv"
    conda:
        "../envs/engine.yaml"
    params:
        per_category=config["demo_model"]["corpus_per_category"],
        seed=config["demo_model"]["corpus_seed"],
    script:
        "../scripts/demo_corpus.py"


rule demo_train:
    input:
        corpus=get_demo_corpus(),
    output:
        model=directory(f"{RESULTS}/demo_model/{DEMO_KEY}/model"),
    log:
        f"{RESULTS}/logs/demo_train/{DEMO_KEY}.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_train/{DEMO_KEY}.tsv"
    conda:
        "../envs/engine.yaml"
    threads: 2
    resources:
        runtime=60,
    params:
        train=config["demo_model"]["train"],
    script:
        "../scripts/demo_train.py"


rule demo_lm_eval_tasks:
    output:
        tasks=directory(f"{RESULTS}/demo_tasks/{DEMO_KEY}"),
    log:
        f"{RESULTS}/logs/demo_lm_eval_tasks/{DEMO_KEY}.log",
    conda:
        "../envs/engine.yaml"
    params:
        n=config["demo_model"]["lm_eval_items"],
        seed=config["demo_model"]["train"].get("seed", 0),
    script:
        "../scripts/demo_lm_eval_tasks.py"


rule retrain_demo:
    default_target: False
    input:
        rules.demo_train.output.model,


rule build_demo_tasks:
    default_target: False
    input:
        rules.demo_lm_eval_tasks.output.tasks,
