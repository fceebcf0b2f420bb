rule aggregate:
    input:
        dump=f"{RESULTS}/ig/{{key}}/dump.npz",
    output:
        heads=f"{RESULTS}/ig/{{key}}/heads.csv",
        completeness=f"{RESULTS}/ig/{{key}}/completeness.csv",
    log:
        f"{RESULTS}/logs/aggregate/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/aggregate.py"
