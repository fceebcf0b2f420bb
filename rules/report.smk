rule report:
    input:
        dumps=[path("ig", u.keys["ig"], "dump.npz") for u in UNITS],
        heads=[path("ig", u.keys["ig"], "heads.csv") for u in UNITS],
        completeness=[path("ig", u.keys["ig"], "completeness.csv") for u in UNITS],
        benchmarks=[f"{RESULTS}/benchmarks/attribute/{u.keys['ig']}.tsv" for u in UNITS],
    output:
        report_md=f"{RESULTS}/reports/{{key}}/report.md",
        summary=f"{RESULTS}/reports/{{key}}/summary.json",
        figures=report(
            directory(f"{RESULTS}/reports/{{key}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/report/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        units=[{"seed": u.seed, "method": u.method, "key": u.keys["ig"]} for u in UNITS],
        config=config,
    script:
        "../scripts/report.py"


onsuccess:
    run_view()
